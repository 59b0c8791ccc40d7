"""``dfuhil farm export|places``: a farm spread over lab hosts, through labgrid's coordinator."""

from __future__ import annotations

import argparse

from dfuhil.cli import farm_export, farm_places


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    farm = subparsers.add_parser("farm", help="boards on several lab hosts (labgrid)")
    verbs = farm.add_subparsers(dest="farm_command", metavar="VERB", required=True)
    farm_export.register(verbs)
    farm_places.register(verbs)
