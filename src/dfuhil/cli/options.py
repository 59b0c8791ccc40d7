"""Options every verb for boards takes: the farm file, the running virtual farm, one board.

They are the same for provisioning, mesh and MCUboot verbs, so a board is named the same way
everywhere (and as pytest's ``--boards`` names the farm).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.rig import Rig
from dfuhil.sim.state import DEFAULT_STATE_FILE, load_state


def add_farm_options(parser: argparse.ArgumentParser) -> None:
    """``--boards`` and ``--sim-state``: where the farm is described and where it runs."""
    parser.add_argument("--boards", type=Path, default=Path("boards.yaml"), metavar="FILE")
    parser.add_argument(
        "--sim-state",
        type=Path,
        default=DEFAULT_STATE_FILE,
        metavar="STATE.json",
        help="state file of a running `dfuhil sim serve` (for virtual boards)",
    )


def add_board_options(parser: argparse.ArgumentParser) -> None:
    """``--board NAME`` plus the farm options: what every verb for one board takes."""
    parser.add_argument("--board", required=True, metavar="NAME", help="board name in the farm")
    add_farm_options(parser)


def open_rig(args: argparse.Namespace) -> tuple[Rig, BoardSpec]:
    farm = load_farm(args.boards)
    board = farm.board(args.board)
    sim = load_state(args.sim_state) if board.is_virtual else None
    return Rig(farm, sim), board
