"""``dfuhil firmware generate``: (re)build the virtual farm's sample firmware set."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfuhil.sim.firmware.generate import DEFAULT_SOFTDEVICES, generate_firmware

DEFAULT_OUT = Path("firmware/virtual")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``firmware`` command group to the top-level parser."""
    firmware = subparsers.add_parser("firmware", help="sample firmware for the virtual farm")
    commands = firmware.add_subparsers(dest="firmware_command", metavar="COMMAND", required=True)
    generate = commands.add_parser(
        "generate",
        help="write the deterministic sample images (SoftDevice, bootloader, apps, device page)",
    )
    generate.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"output directory (default: {DEFAULT_OUT})",
    )
    generate.add_argument(
        "--chip",
        action="append",
        metavar="NAME",
        help=f"only this chip, repeatable (default: all of {', '.join(DEFAULT_SOFTDEVICES)})",
    )
    generate.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Print each file that changed; unchanged files keep their timestamps for make."""
    out: Path = args.out
    written = generate_firmware(out, args.chip)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    if written:
        print(f"{len(written)} file(s) written to {out}; unchanged files left as they were")
    else:
        print(f"{out} is up to date, nothing written")
    return 0
