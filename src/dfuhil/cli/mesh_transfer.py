"""``dfuhil mesh check`` and ``dfuhil mesh dfu``: the mesh DFU verbs a person types at the rig.

``dfu`` replaces ``nrfutil dfu serial -pkg PKG.zip -p PORT -b 115200 -fc --mesh`` (nrfutil's
short options are accepted as they were). Given ``--board`` instead of ``--port`` it takes the
port, baud rate, flow control and the virtual farm's time scale from boards.yaml, and checks
first that the board would install the package at all, because a refused mesh DFU only shows
after the whole transfer.

Unlike nrfutil it ends with the truth: a table with one row per expected node (what is known:
confirmed, refused with the reason, relayed only, still requesting, received but not installed,
never heard) and exit 0 only when every row is confirmed. Over ``--port`` the only node the host
can hear is the serial node (its DFU END event); with ``--board`` every node of the mesh (the
root and the boards with role ``mesh``, or ``--nodes``) is confirmed by its device page over
the probe.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfuhil.cli.options import add_board_options, add_farm_options
from dfuhil.cli.report_plot import plot_option

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
        "--nodes",
        metavar="NAME,...",
        help="with --board: the nodes that must install (default: the board and, if it has role "
        "mesh-root, every board with role mesh)",
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
    from dfuhil.cli.options import open_rig
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
    mesh: _MeshNodes | None = None
    if args.board is not None:
        url, baud, rtscts, scale, name, mesh = _board_link(args, package)
    else:
        if args.nodes:
            from dfuhil.errors import InputError, Problem

            raise InputError(
                Problem("", None, "--nodes", "needs --board (nodes are read by probe)")
            )
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
    from dfuhil.cli.progress_bar import ProgressBar
    from dfuhil.cli.report_plot import recording
    from dfuhil.procedures.mesh_dfu import TransferPlan
    from dfuhil.report.mesh_trace import observed

    segments = TransferPlan.from_package(package).segments
    with (
        recording(args.plot),
        MeshSerialLink(url, baud=baud, rtscts=rtscts, log_path=log_path, name=name) as link,
        ProgressBar(who, unit="segments", unit_bytes=16) as bar,
        observed(link, who, segments, {}, bar) as (seen, progress),
    ):
        result = MeshDfuTransfer(package, seen, pacing, time_scale=scale, progress=progress).run()
    print(f"{who}: all segments acknowledged: {result.summary()}")
    print(f"{who}: frame log {log_path}")
    if mesh is None:
        rows = result.outcomes(who)
    else:
        print(f"{who}: reading the device pages of {', '.join(mesh.names)} ...", flush=True)
        rows = mesh.outcomes(result, package)
    return _verdict(who, rows, port_only=mesh is None)


def _verdict(who: str, rows: list[Any], *, port_only: bool) -> int:
    """Print the table; 0 only when every expected node is confirmed (else a ProductError)."""
    from dfuhil.errors import ProductError
    from dfuhil.procedures.mesh_outcome import table

    print(f"{who}: mesh DFU outcome per node:")
    for line in table(rows):
        print(line)
    if port_only:
        print(
            "  (over a port only the serial node is heard; nodes behind it are confirmed with "
            "--board NAME, which reads every node's device page over its probe)"
        )
    confirmed = sum(1 for row in rows if row.confirmed)
    if confirmed == len(rows):
        print(f"{who}: mesh DFU confirmed on {confirmed} of {len(rows)} expected nodes")
        return 0
    failed = [f"{row.node} {row.verdict.value}" for row in rows if not row.confirmed]
    raise ProductError(
        f"{who}: mesh DFU confirmed on {confirmed} of {len(rows)} expected nodes; "
        + "; ".join(failed)
        + " (the table above has the evidence and the fix)"
    )


def _preflight(rig: Rig, board: BoardSpec, package: MeshPackage) -> list[Mismatch]:
    """Read the board once, print the notes, return what stops the package."""
    from dfuhil.procedures.mesh_check import check_package, preflight_notes, read_board_state

    with rig.probe(board) as probe:
        page, installed = read_board_state(probe, board.chip)
    for note in preflight_notes(package, page, installed):
        print(f"note: {note}")
    return check_package(package, page, installed, board.name)


class _MeshNodes:
    """The nodes a ``--board`` transfer must reach, read back over their probes afterwards."""

    def __init__(self, rig: Rig, root: BoardSpec, nodes: list[BoardSpec]) -> None:
        self.rig, self.root, self.nodes = rig, root, nodes

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.nodes]

    def outcomes(self, result: Any, package: Any) -> list[Any]:
        import contextlib

        from dfuhil.formats.meshdfu import DfuType
        from dfuhil.procedures.mesh_outcome import (
            NodeOutcome,
            PageWatch,
            Verdict,
            app_version_fwid,
            confirm_mesh,
        )

        init = package.init
        serial = result.serial_outcome(self.root.name)
        if init.dfu_type != DfuType.APPLICATION:
            # The device page records a new bootloader or SoftDevice only as its VERSION
            # fields; this reader compares applications. Say so rather than guess.
            other = "device page not compared (only application transfers are read back)"
            return [serial] + [
                NodeOutcome(b.name, Verdict.UNCONFIRMED, other) for b in self.nodes[1:]
            ]
        fwid = app_version_fwid(init.company_id, init.application_id, init.application_version)
        with contextlib.ExitStack() as probes:
            watches = [
                PageWatch(b.name, probes.enter_context(self.rig.probe(b)).read, b.chip)
                for b in self.nodes
            ]
            return confirm_mesh(
                serial,
                watches,
                fwid,
                result.open_requests,
                result.last_request_age,
                time_scale=self.rig.time_scale(self.root),
            )


def _mesh_nodes(args: argparse.Namespace, rig: Rig, board: BoardSpec) -> list[BoardSpec]:
    from dfuhil.errors import InputError, Problem

    farm = rig.farm
    if args.nodes:
        names = [n.strip() for n in args.nodes.split(",") if n.strip()]
        unknown = [n for n in names if n not in {b.name for b in farm.boards}]
        if unknown:
            raise InputError(
                Problem(str(farm.path), None, "--nodes", f"no board {', '.join(unknown)}")
            )
        return farm.select(names=names)
    if "mesh-root" in board.roles:
        mesh = farm.select(roles=["mesh"])
        return [board] + [b for b in mesh if b != board]
    return [board]


def _board_link(
    args: argparse.Namespace, package: Any
) -> tuple[str, int, bool, float, str, _MeshNodes]:
    """Port, baud, flow control, time scale, name and the mesh from boards.yaml; pre-flight
    first (of the serial node)."""
    from dfuhil.cli.options import open_rig
    from dfuhil.procedures.mesh_check import (
        PreflightError,
    )

    rig, board = open_rig(args)
    nodes = _mesh_nodes(args, rig, board)
    if not args.no_check:
        mismatches = _preflight(rig, board, package)
        if mismatches:
            raise PreflightError(board.name, str(args.package), mismatches)
    baud = args.baudrate or board.serial.baud
    rtscts = board.serial.rtscts if args.flow_control is None else args.flow_control
    scale = args.time_scale or rig.time_scale(board)
    mesh = _MeshNodes(rig, board, nodes)
    return rig.serial_url(board), baud, rtscts, scale, board.name, mesh
