"""``dfuhil boards import-hwmap`` / ``export-hwmap``: twister hardware maps (see hwmap.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfuhil.farm.hwmap import dump_hwmap, export_hwmap, import_hwmap
from dfuhil.farm.loader import load_farm


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser], default: str) -> None:
    imp = verbs.add_parser(
        "import-hwmap", help="draft boards.yaml entries from a twister hardware map"
    )
    imp.add_argument("map", type=Path, metavar="MAP.yml")
    imp.add_argument("--out", type=Path, metavar="FILE", help="write the draft here (else stdout)")
    imp.set_defaults(func=import_command)
    exp = verbs.add_parser("export-hwmap", help="write a twister hardware map of the real boards")
    exp.add_argument("file", nargs="?", default=default, metavar="FILE")
    exp.add_argument("--out", type=Path, required=True, metavar="MAP.yml")
    exp.set_defaults(func=export_command)


def import_command(args: argparse.Namespace) -> int:
    imported = import_hwmap(args.map)  # InputError (exit 2) lists every problem of the map
    if args.out is None:
        print(imported.text, end="")
    else:
        args.out.write_text(imported.text)
        print(f"wrote {args.out}")
    for line in imported.guesses:
        print(f"# {line}")
    for line in imported.skipped:
        print(f"# skipped {line}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    entries, notes = export_hwmap(load_farm(args.file))
    dump_hwmap(entries, args.out)
    print(f"wrote {len(entries)} board(s) to {args.out}")
    for note in notes:
        print(f"# left out {note}")
    return 0
