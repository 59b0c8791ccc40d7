"""A run seeded with one result of each kind, for tests/test_report_html.py (not collected on
its own: the file name does not start with test_). On the virtual farm, through the real pytest
layer: board fixture, evidence, LED observer, report plugin."""

from __future__ import annotations

from dfuhil.errors import InfrastructureError
from dfuhil.farm.model import BoardSpec
from dfuhil.procedures.leds import LedObserver


def test_leds_are_watched(board: BoardSpec, leds: LedObserver) -> None:
    readings = leds.sample(window_s=0.5, interval_s=0.05)
    assert len(readings) == len(board.leds.pins)


def test_the_product_misbehaves(board: BoardSpec) -> None:
    assert board.name == "another board", "seeded product failure: the board said the wrong name"


def test_the_rig_fails(board: BoardSpec) -> None:
    raise InfrastructureError(
        "seeded: the probe does not answer", "replug the J-Link", board=board.name
    )
