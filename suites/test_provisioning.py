"""Provisioning regression: every board of the farm, flashed over SWD in the guide's order.

Runs unchanged on a real lab (`pytest --boards boards.lab.yaml`) and on the virtual farm.
"""

from __future__ import annotations

import pytest

from dfuhil.farm.model import BoardSpec
from dfuhil.links.console import Console
from dfuhil.procedures.leds import LedObserver
from dfuhil.procedures.provision import STEPS, Provisioner, StepResult

BOOT_TIMEOUT_S = 15.0


def test_provisioned_board_prints_its_boot_banner(
    board: BoardSpec, provisioned: list[StepResult], console: Console
) -> None:
    assert [r.step for r in provisioned] == list(STEPS), "steps ran out of the guide's order"
    app = board.firmware.application if board.firmware else None
    if app is None or app.boot_pattern is None:
        pytest.skip(f"firmware set of {board.name} names no application banner to expect")
    console.expect(app.boot_pattern, timeout=BOOT_TIMEOUT_S, not_matching=[r"(?i)hard ?fault"])


@pytest.mark.roles("mesh")
def test_dfu_capable_app_leaves_every_led_off_after_reset(
    board: BoardSpec, provisioned: list[StepResult], leds: LedObserver
) -> None:
    """The mesh DFU guide: after flashing and reset, all LEDs on every kit are off."""
    leds.wait_for(["off"] * len(board.leds.pins), timeout_s=10.0, window_s=1.0)


def test_second_provisioning_skips_every_unchanged_step(
    board: BoardSpec, provisioned: list[StepResult], provisioner: Provisioner
) -> None:
    again = [provisioner.step(step) for step in STEPS if step != "reset"]
    changed = [str(r) for r in again if r.action != "skipped"]
    assert not changed, "re-provisioning an unchanged board touched flash:\n" + "\n".join(changed)
    assert sum(r.bytes_written + r.pages_erased for r in again) == 0
