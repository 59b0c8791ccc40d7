"""``dfuhil boards check|list``: look at a farm file before a night of runs depends on it.

(``boards discover`` lives in boards_discover.py, ``import-hwmap``/``export-hwmap`` in
boards_hwmap.py.)

``list`` also says where each board lives (local, or lab host and labgrid place) and who holds
it now (the local lock's holder, or the place's; the coordinator is asked only when the file has
boards with places).

``check`` is what CI and a lab engineer run after editing boards.yaml: every problem, one per
line, in the ``FILE:LINE: field: message`` form editors jump to. ``list`` shows what the file
resolves to (defaults filled in, virtual serial numbers assigned), as a table or as JSON for
scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dfuhil.cli import boards_discover, boards_hwmap
from dfuhil.errors import DfuhilError, InputError
from dfuhil.farm.labgrid_client import client_for, coordinator_address
from dfuhil.farm.lease import local_holder
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.place_lease import place_holder
from dfuhil.farm.places import placed_boards

DEFAULT_FILE = "boards.yaml"
COLUMNS = ("name", "chip", "board type", "roles", "probe", "serial port", "lives", "held by")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``boards check|list|discover|import-hwmap|export-hwmap``."""
    boards = subparsers.add_parser(
        "boards", help="check, list or discover the boards of a farm file; twister hardware maps"
    )
    verbs = boards.add_subparsers(dest="boards_command", metavar="VERB", required=True)
    check = verbs.add_parser(
        "check", help="report every problem of the file (and missing firmware files)"
    )
    _file_argument(check)
    check.set_defaults(func=check_command)
    listing = verbs.add_parser("list", help="show the boards as the file resolves them")
    listing.add_argument("--json", action="store_true", help="print a JSON list of objects")
    _file_argument(listing)
    listing.set_defaults(func=list_command)
    boards_discover.register(verbs, DEFAULT_FILE)
    boards_hwmap.register(verbs, DEFAULT_FILE)


def _file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        default=DEFAULT_FILE,
        metavar="FILE",
        help=f"the farm description (default: {DEFAULT_FILE})",
    )


def check_command(args: argparse.Namespace) -> int:
    """Print ``FILE: N boards OK`` or every problem; exit 2 on problems."""
    try:
        farm = load_farm(args.file, check_files=True)
    except InputError as exc:
        for problem in exc.problems:
            print(problem)
        return InputError.exit_code
    count = len(farm.boards)
    print(f"{args.file}: {count} board{'s' if count != 1 else ''} OK")
    return 0


def list_command(args: argparse.Namespace) -> int:
    """Print the boards as a table (rich on a terminal, plain text otherwise) or as JSON."""
    farm = load_farm(args.file)
    holders = holders_of(farm)
    if args.json:
        print(json.dumps([board_json(b, holders[b.name]) for b in farm.boards], indent=2))
    elif sys.stdout.isatty():
        _print_rich([table_row(b, holders[b.name]) for b in farm.boards])
    else:
        print(plain_table([table_row(b, holders[b.name]) for b in farm.boards]))
    return 0


def lives(board: BoardSpec) -> str:
    """Where the board is: ``local``, or its lab host and labgrid place."""
    if board.place is None:
        return "local"
    return f"{board.lab_host or 'any lab host'}, place {board.place}"


def holders_of(farm: Farm) -> dict[str, str | None]:
    """Who holds each board now: its local lock's holder, or its place's. The coordinator is
    asked only if some board has a place; one that does not answer is said, not raised."""
    found: dict[str, str | None] = {b.name: local_holder(b) for b in farm.boards if b.place is None}
    placed = placed_boards(farm)
    if not placed:
        return found
    try:
        places: dict[str, Any] = client_for(coordinator_address(farm)).call("places")
    except DfuhilError as exc:
        why = str(exc).splitlines()[0].removeprefix("[infrastructure] ")
        return found | {b.name: f"unknown: {why}" for b in placed}
    for board in placed:
        place = places.get(board.place or "")
        if place is None:
            found[board.name] = "unknown: no such place (run `dfuhil farm places`)"
        else:
            found[board.name] = place_holder(place)[0] if place["acquired"] else None
    return found


def table_row(board: BoardSpec, holder: str | None = None) -> tuple[str, ...]:
    """One board as the table's cells, in COLUMNS order."""
    return (
        board.name,
        board.chip.name,
        board.board_type.pca if board.board_type else "-",
        ", ".join(board.roles) or "-",
        str(board.probe),
        board.serial.port,
        lives(board),
        holder or "-",
    )


def board_json(board: BoardSpec, holder: str | None = None) -> dict[str, Any]:
    """A board for scripts: resolved values, absolute firmware paths."""
    firmware = board.firmware
    return {
        "name": board.name,
        "chip": board.chip.name,
        "board_type": board.board_type.pca if board.board_type else None,
        "roles": list(board.roles),
        "probe": {
            "backend": board.probe.backend,
            "chosen": board.probe.chosen,
            "snr": board.probe.snr,
            "ip": board.probe.ip,
            "remote": board.probe.remote,
            "speed_khz": board.probe.speed_khz,
            "allow_recover": board.probe.allow_recover,
        },
        "serial": {
            "port": board.serial.port,
            "baud": board.serial.baud,
            "rtscts": board.serial.rtscts,
        },
        "leds": {"pins": list(board.leds.pins), "active_low": board.leds.active_low},
        "firmware": None
        if firmware is None
        else {
            "name": firmware.name,
            "images": {
                i.role: {"file": str(i.file), "banner": i.banner} for i in firmware.images()
            },
        },
        "flash_layout": board.layout.name,
        "mcuboot": _mcuboot_json(board),
        "smp_udp": board.smp_udp,
        "place": board.place,
        "lab_host": board.lab_host,
        "held_by": holder,
        "line": board.line,
    }


def _mcuboot_json(board: BoardSpec) -> dict[str, Any] | None:
    """How the board's MCUboot was built, for scripts that pick boards by upgrade mode."""
    spec = board.mcuboot
    if spec is None:
        return None
    return {
        "mode": spec.mode,
        "key": str(spec.key),
        "header_size": spec.header_size,
        "downgrade_prevention": spec.downgrade_prevention,
        "confirm": spec.confirm,
        "transports": list(spec.transports),
        "serial_recovery": spec.serial_recovery is not None,
    }


def plain_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns separated by two spaces; stable for grep and diff."""
    table = [COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(line.rstrip() for line in lines)


def _print_rich(rows: list[tuple[str, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*COLUMNS)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
