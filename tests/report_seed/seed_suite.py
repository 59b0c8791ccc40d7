"""A run seeded with one result of each kind, for tests/test_report_html.py (not collected on
its own: the file name does not start with test_). On the virtual farm, through the real pytest
layer: board fixture, evidence, LED observer, report plugin. The single-board tests run on the
board with role ``seed``; one test uses every board, as a mesh test does."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dfuhil.errors import InfrastructureError
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.procedures.leds import LedObserver
from fixtures.boards import BoardLinks
from fixtures.farm import multi_board_fixture


@pytest.mark.roles("seed")
def test_leds_are_watched(board: BoardSpec, leds: LedObserver) -> None:
    readings = leds.sample(window_s=0.5, interval_s=0.05)
    assert len(readings) == len(board.leds.pins)


@pytest.mark.roles("seed")
def test_the_product_misbehaves(board: BoardSpec) -> None:
    assert board.name == "another board", "seeded product failure: the board said the wrong name"


@pytest.mark.roles("seed")
def test_the_rig_fails(board: BoardSpec) -> None:
    raise InfrastructureError(
        "seeded: the probe does not answer", "replug the J-Link", board=board.name
    )


@dataclass
class Group:
    """Several boards in one test, shaped like the mesh fixture (``boards`` and ``links``)."""

    boards: tuple[BoardSpec, ...]
    links: BoardLinks


def _every_board(farm: Farm, config: pytest.Config) -> list[BoardSpec]:
    return list(farm.boards)


multi_board_fixture("group", _every_board)


@pytest.fixture
def group(farm: Farm, board_links: BoardLinks) -> Group:
    board_links.lease(farm.boards)  # all at once, consoles open, as the mesh fixture does
    return Group(tuple(farm.boards), board_links)


def test_every_board_answers_its_probe(group: Group) -> None:
    for board in group.boards:
        assert group.links.probe(board).read_u32(0x10000100) != 0  # FICR INFO.PART
