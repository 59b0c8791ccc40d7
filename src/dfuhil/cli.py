"""The ``dfuhil`` command line: what a person at the rig types.

Every verb works against real boards and against a virtual farm started by ``dfuhil sim serve``
alike. Errors dfuhil raises on purpose are printed as one clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dfuhil import __version__
from dfuhil.errors import DfuhilError


def build_parser() -> argparse.ArgumentParser:
    from dfuhil import board_cli, image_cli, mcuboot_cli, mesh_cli
    from dfuhil.farm import cli as farm_cli
    from dfuhil.report import cli as report_cli
    from dfuhil.sim import cli as sim_cli
    from dfuhil.sim.firmware import cli as firmware_cli

    parser = argparse.ArgumentParser(
        prog="dfuhil",
        description="Hardware-in-the-loop testing for Nordic nRF5 boards, real or virtual.",
    )
    parser.add_argument("--version", action="version", version=f"dfuhil {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    farm_cli.register(commands)
    board_cli.register(commands)
    mesh_cli.register(commands)
    image_cli.register(commands)
    mcuboot_cli.register(commands)
    firmware_cli.register(commands)
    sim_cli.register(commands)
    report_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except DfuhilError as exc:
        print(f"dfuhil: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
