"""``dfuhil mesh check`` and ``dfuhil mesh dfu``: the mesh DFU verbs a person types at the rig.

``dfu`` replaces ``nrfutil dfu serial -pkg PKG.zip -p PORT -b 115200 -fc --mesh`` (nrfutil's
short options are accepted as they were). Given ``--board`` instead of ``--port`` it takes the
port, baud rate, flow control and the virtual farm's time scale from boards.yaml, and checks
first that the board would install the package at all, because a refused mesh DFU only shows
after the whole transfer.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfuhil.board_cli import add_board_options, add_farm_options
from dfuhil.report.plot_cli import plot_option

if TYPE_CHECKING:
    from dfuhil.farm.model import BoardSpec
    from dfuhil.farm.rig import Rig
    from dfuhil.formats.meshpkg import MeshPackage
    from dfuhil.procedures.mesh_check import Mismatch

DEFAULT_BAUD = 115200
DEFAULT_INTERVAL_MS = 500
REPORTS_DIR = Path("reports")


def register(mesh_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``check`` and ``dfu`` to the ``dfuhil mesh`` verbs."""
    check = mesh_commands.add_parser(
        "check", help="would this board install this package? (reads the board, sends nothing)"
    )
    check.add_argument("package", type=Path, metavar="PKG.zip")
    add_board_options(check)
    check.set_defaults(func=run_check)

    dfu = mesh_commands.add_parser(
        "dfu", help="send a mesh DFU package through a serial node (nrfutil dfu serial --mesh)"
    )
    dfu.add_argument("-pkg", "--package", type=Path, required=True, metavar="PKG.zip")
    target = dfu.add_mutually_exclusive_group(required=True)
    target.add_argument("-p", "--port", help="device path or pyserial URL (rfc2217://...)")
    target.add_argument("--board", metavar="NAME", help="board in the farm (port from boards.yaml)")
    add_farm_options(dfu)
    dfu.add_argument(
        "-b",
        "--baudrate",
        type=int,
        metavar="BAUD",
        help=f"default {DEFAULT_BAUD}, or the board's from boards.yaml",
    )
    dfu.add_argument(
        "-fc",
        "--flow-control",
        action=argparse.BooleanOptionalAction,
        help="RTS/CTS (default off, or the board's from boards.yaml)",
    )
    dfu.add_argument(
        "--pacing",
        choices=("adaptive", "fixed"),
        default="adaptive",
        help="adaptive: as fast as the mesh keeps up (default); fixed: nrfutil's sleep per frame",
    )
    dfu.add_argument(
        "-i",
        "--interval",
        type=int,
        metavar="MS",
        help=f"fixed: the sleep after each frame; adaptive: the longest gap (default "
        f"{DEFAULT_INTERVAL_MS})",
    )
    dfu.add_argument(
        "--time-scale",
        type=float,
        metavar="X",
        help="host seconds per device second (default 1, or the virtual farm's)",
    )
    dfu.add_argument(
        "--no-check", action="store_true", help="with --board: skip the pre-flight check"
    )
    dfu.add_argument(
        "--frame-log",
        type=Path,
        metavar="FILE",
        help="every frame both ways (default reports/<board or port>-mesh-dfu.log)",
    )
    plot_option(dfu, "the root's acknowledged segments over time, DATA_REQ repairs marked")
    dfu.set_defaults(func=run_dfu)


# --- check -----------------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    from dfuhil.board_cli import open_rig
    from dfuhil.formats.meshpkg import read_package

    package = read_package(args.package)
    rig, board = open_rig(args)
    mismatches = _preflight(rig, board, package)
    if mismatches:
        print(f"package {args.package} does not fit board {board.name}:")
        for mismatch in mismatches:
            print(f"  - {mismatch}")
        return 2
    print(f"package {args.package} fits board {board.name}")
    return 0


# --- dfu -------------------------------------------------------------------------------------


def _log_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit("/", 1)[-1]) or "port"


def _pacing(args: argparse.Namespace) -> Any:
    from dfuhil.errors import InputError, Problem
    from dfuhil.procedures.mesh_pacing import Adaptive, FixedInterval

    interval_ms = DEFAULT_INTERVAL_MS if args.interval is None else args.interval
    if interval_ms < 0:
        raise InputError(Problem("", None, "--interval", f"{interval_ms} ms is negative"))
    if args.pacing == "fixed":
        return FixedInterval(interval_ms / 1000)
    return Adaptive(ceiling=interval_ms / 1000)


def run_dfu(args: argparse.Namespace) -> int:
    from dfuhil.formats.meshpkg import read_package
    from dfuhil.links.mesh_serial import MeshSerialLink
    from dfuhil.procedures.mesh_dfu import MeshDfuTransfer

    package = read_package(args.package)  # a bad zip is refused before any port is opened
    pacing = _pacing(args)
    if args.board is not None:
        url, baud, rtscts, scale, name = _board_link(args, package)
    else:
        url = args.port
        baud = args.baudrate or DEFAULT_BAUD
        rtscts = bool(args.flow_control)
        scale = args.time_scale or 1.0
        name = ""
    log_path = args.frame_log or REPORTS_DIR / f"{_log_name(name or url)}-mesh-dfu.log"
    who = name or url
    print(
        f"{who}: mesh DFU of {args.package} ({package.kind}, {len(package.image)} bytes) on "
        f"{url} at {baud} baud, flow control {'on' if rtscts else 'off'}, pacing {pacing.name}"
        + (f", time scale {scale}" if scale != 1.0 else ""),
        flush=True,
    )
    from dfuhil.procedures.mesh_dfu import TransferPlan
    from dfuhil.progress_bar import ProgressBar
    from dfuhil.report.mesh_trace import observed
    from dfuhil.report.plot_cli import recording

    segments = TransferPlan.from_package(package).segments
    with (
        recording(args.plot),
        MeshSerialLink(url, baud=baud, rtscts=rtscts, log_path=log_path, name=name) as link,
        ProgressBar(who, unit="segments", unit_bytes=16) as bar,
        observed(link, who, segments, {}, bar) as (seen, progress),
    ):
        result = MeshDfuTransfer(package, seen, pacing, time_scale=scale, progress=progress).run()
    print(f"{who}: mesh DFU done: {result.summary()}")
    print(f"{who}: frame log {log_path}")
    return 0


def _preflight(rig: Rig, board: BoardSpec, package: MeshPackage) -> list[Mismatch]:
    """Read the board once, print the notes, return what stops the package."""
    from dfuhil.procedures.mesh_check import check_package, preflight_notes, read_board_state

    with rig.probe(board) as probe:
        page, installed = read_board_state(probe, board.chip)
    for note in preflight_notes(package, page, installed):
        print(f"note: {note}")
    return check_package(package, page, installed, board.name)


def _board_link(args: argparse.Namespace, package: Any) -> tuple[str, int, bool, float, str]:
    """Port, baud, flow control, time scale and name from boards.yaml; pre-flight first."""
    from dfuhil.board_cli import open_rig
    from dfuhil.procedures.mesh_check import (
        PreflightError,
    )

    rig, board = open_rig(args)
    if not args.no_check:
        mismatches = _preflight(rig, board, package)
        if mismatches:
            raise PreflightError(board.name, str(args.package), mismatches)
    baud = args.baudrate or board.serial.baud
    rtscts = board.serial.rtscts if args.flow_control is None else args.flow_control
    scale = args.time_scale or rig.time_scale(board)
    return rig.serial_url(board), baud, rtscts, scale, board.name
