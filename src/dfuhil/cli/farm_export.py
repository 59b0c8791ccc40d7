"""``dfuhil farm export``: the labgrid exporter file of one lab host (see export.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfuhil.farm.export import build_export
from dfuhil.farm.loader import load_farm
from dfuhil.sim.state import DEFAULT_STATE_FILE


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = verbs.add_parser(
        "export", help="write the labgrid exporter file of one lab host's boards"
    )
    export.add_argument("file", type=Path, metavar="BOARDS.yaml", help="the farm description")
    export.add_argument(
        "--host", required=True, metavar="NAME", help="the lab host (boards' lab_host)"
    )
    export.add_argument("--out", type=Path, metavar="FILE", help="write it here (else stdout)")
    export.add_argument(
        "--sim-state",
        type=Path,
        default=DEFAULT_STATE_FILE,
        metavar="STATE.json",
        help="state file of the running virtual farm (for virtual boards; default: "
        f"{DEFAULT_STATE_FILE})",
    )
    export.set_defaults(func=export_command)


def export_command(args: argparse.Namespace) -> int:
    export = build_export(load_farm(args.file), args.host, args.sim_state)
    if args.out is None:
        print(export.yaml(), end="")
    else:
        args.out.write_text(export.yaml())
        print(f"wrote {len(export.boards)} board(s) of lab host {args.host} to {args.out}")
    for note in export.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
