"""``dfuhil farm places BOARDS.yaml``: one labgrid place per board that has ``place``.

Creates missing places, sets their match and tags (see places.py), changes nothing that is
already right (so it is safe to run before every nightly job), and prints what it did.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfuhil.farm.labgrid_client import client_for, coordinator_address
from dfuhil.farm.loader import load_farm
from dfuhil.farm.places import placed_boards, sync_places


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    places = verbs.add_parser(
        "places", help="create or update a labgrid place per board that has `place`"
    )
    places.add_argument("file", type=Path, metavar="BOARDS.yaml", help="the farm description")
    places.set_defaults(func=places_command)


def places_command(args: argparse.Namespace) -> int:
    farm = load_farm(args.file)
    boards = placed_boards(farm)
    if not boards:
        print(f"{args.file}: no board has a `place`; nothing to do")
        return 0
    address = coordinator_address(farm)
    done = sync_places(farm, client_for(address))
    for line in done:
        print(line)
    count = len(boards)
    print(
        f"{address}: {count} place{'s' if count != 1 else ''} "
        + ("up to date" if not done else "created or updated")
    )
    return 0
