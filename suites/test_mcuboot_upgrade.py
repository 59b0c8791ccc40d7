"""MCUboot upgrades that end with the truth: ``mcuboot.upgrade()`` on every mode the farm has.

One call does what ``dfuhil mcuboot upgrade`` does (check, upload, test, reset, boot, confirm,
re-check, probe read-back); these tests hold its verdict against what the board does next (one
more reset) and against the build's known fault.
"""

from __future__ import annotations

import pytest

from fixtures.mcuboot import McubootUnderTest

pytestmark = pytest.mark.roles("mcuboot")

OLD, NEW = "1.0.0", "1.1.0"


@pytest.mark.modes(
    "swap-move", "swap-scratch", "overwrite-only", "direct-xip", "direct-xip-revert", "single-slot"
)
def test_upgrade_runs_the_new_image_for_good(mcuboot: McubootUnderTest) -> None:
    image = mcuboot.sign("update", NEW)
    result = mcuboot.upgrade(image)
    assert result.ok, result.text()
    assert result.readback is not None and result.readback.ok, result.text()
    again = mcuboot.reset_and_wait_boot()  # the verdict must hold at the next boot too
    assert again.booted, again.diagnosis
    assert mcuboot.active().hash == image.image_hash


@pytest.mark.modes("swap-move", "swap-scratch", "direct-xip-revert")
def test_an_update_that_crashes_at_boot_is_not_passed(mcuboot: McubootUnderTest) -> None:
    image = mcuboot.sign("crash-at-boot", NEW)
    result = mcuboot.upgrade(image)
    assert not result.ok, result.text()
    assert result.verdict in ("reverted", "erased"), result.text()
    assert mcuboot.active().version.startswith(OLD)
