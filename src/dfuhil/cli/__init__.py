"""The ``dfuhil`` command line: what a person at the rig types.

One module per verb group (``boards``, ``farm``, ``board``: provision/leds/console, ``mesh``,
``image``, ``mcuboot``, ``firmware``, ``sim``, ``report``), each with a ``register`` that adds its
verbs; ``options`` holds what they share. They are the only face besides the pytest layer.

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
    from dfuhil.cli import board, boards, farm, firmware, image, mcuboot, mesh, report, sim

    parser = argparse.ArgumentParser(
        prog="dfuhil",
        description="Hardware-in-the-loop testing for Nordic nRF5 boards, real or virtual.",
    )
    parser.add_argument("--version", action="version", version=f"dfuhil {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (farm, boards, board, mesh, image, mcuboot, firmware, sim, report):
        group.register(commands)
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
