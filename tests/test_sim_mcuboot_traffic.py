"""The virtual MCUboot's flash traffic is MCUboot v2.1.0's own, operation for operation.

A power cut's outcome depends on which operation it interrupts, so order, addresses and lengths
all matter. Each test records every NVMC operation (erase page / write, address, length) the
virtual board's flash performs during one upgrade boot, and holds it against the trace derived
from MCUboot's C source in ``mcuboot_trace.py`` (which never looks at the plug-in).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from imgtool import keys as imgtool_keys
from mcuboot_trace import (
    SWAP_PERM,
    SWAP_REVERT,
    SWAP_TEST,
    Mcuboot,
    Op,
    direct_xip_erase_unconfirmed,
    direct_xip_select,
    overwrite_only,
    swap_move,
    swap_scratch,
)
from mcubootrig import (
    GEOMETRIES,
    MAX_SECTORS,
    WAIT_S,
    McubootRig,
    app_image,
    build_for,
    fault_port,
    mcuboot_board,
)
from simfarm import wait_until

from dfuhil.formats.mcuboot_build import Slot

FLASH_IN_USE = 0x20000  # MCUboot, both slots and the scratch of every test geometry


@pytest.fixture(scope="module")
def key() -> Any:
    return imgtool_keys.ECDSA256P1.generate()


@contextmanager
def traffic(rig: McubootRig) -> Iterator[list[Op]]:
    """Every erase and write the board's flash performs meanwhile (they still happen)."""
    flash = rig.board.flash
    ops: list[Op] = []
    write, erase_page = flash.write, flash.erase_page

    def recording_write(address: int, data: bytes) -> None:
        ops.append(("write", address, len(data)))
        write(address, data)

    def recording_erase(address: int) -> None:
        ops.append(("erase", address, flash.page_size))
        erase_page(address)

    flash.write = recording_write  # type: ignore[method-assign]
    flash.erase_page = recording_erase  # type: ignore[method-assign]
    try:
        yield ops
    finally:
        del flash.write, flash.erase_page


def boot_traffic(rig: McubootRig) -> tuple[list[Op], str]:
    """The operations of one boot, up to the application running, and its version."""
    with traffic(rig) as ops:
        running = rig.boot()[1]
    return list(ops), running


def slots(mode: str) -> tuple[Slot, Slot]:
    g = GEOMETRIES[mode]
    assert g.secondary is not None
    return g.primary, g.secondary


def mcuboot() -> Mcuboot:
    return Mcuboot(sector=0x1000, write_sz=4, max_align=8, max_sectors=MAX_SECTORS)


# --- overwrite-only: the fast overwrite ---------------------------------------------------------


@pytest.mark.parametrize(
    ("v1_size", "v2_size"),
    [
        pytest.param(0x1800, 0x2400, id="larger-update"),
        pytest.param(0x3400, 0x0C00, id="smaller-update-leaves-old-sectors"),
    ],
)
def test_overwrite_only_erases_and_copies_only_the_image_then_writes_the_magic(
    v1_size: int, v2_size: int, key: Any
) -> None:
    primary, secondary = slots("overwrite-only")
    v1 = app_image(primary, "1.0.0", key, size=v1_size)
    v2 = app_image(primary, "2.0.0", key, size=v2_size)
    with mcuboot_board(build_for("overwrite-only", key), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.set_pending()
        ops, running = boot_traffic(rig)
        assert running == "2.0.0"
        assert ops == overwrite_only(mcuboot(), primary, secondary, len(v2))
        assert len(ops) < primary.size // 0x1000 + primary.size // 1024  # not the whole slot
        assert rig.trailer(primary).magic.name == "GOOD"
        ops, running = boot_traffic(rig)
        assert (ops, running) == ([], "2.0.0")


def test_overwrite_only_of_an_image_ending_on_a_sector_boundary_writes_one_unit_past_it() -> None:
    """MCUboot rounds the copy up past a whole write unit even when the image is aligned
    (loader.c:1379-1383), so its last write reaches a sector nothing erased; it does so all
    the same, and the board must boot the image rather than the plug-in refusing the write."""
    primary, secondary = slots("overwrite-only")
    ed = imgtool_keys.Ed25519.generate()  # fixed-size signature: a predictable image size
    overhead = len(app_image(primary, "2.0.0", ed, size=0x1000)) - 0x1000
    v1 = app_image(primary, "1.0.0", ed, size=0x2C00)
    v2 = app_image(primary, "2.0.0", ed, size=0x2000 - overhead)
    assert len(v2) == 0x2000
    with mcuboot_board(build_for("overwrite-only", ed), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.set_pending()
        ops, running = boot_traffic(rig)
        assert running == "2.0.0" and rig.slot_bytes(primary, len(v2)) == v2
        assert ops == overwrite_only(mcuboot(), primary, secondary, len(v2))
        assert ops[-4] == ("write", primary.start + 0x2000, 4)  # into sector 2, not erased


# --- swap using scratch -------------------------------------------------------------------------


def test_swap_scratch_test_swap_and_its_revert_are_mcuboots_traffic(key: Any) -> None:
    primary, secondary = slots("swap-scratch")
    scratch = GEOMETRIES["swap-scratch"].scratch
    assert scratch is not None
    v1 = app_image(primary, "1.0.0", key)
    v2 = app_image(primary, "2.0.0", key, size=0x2400)
    copy_size = max(len(v1), len(v2))
    with mcuboot_board(build_for("swap-scratch", key), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.set_pending()
        ops, running = boot_traffic(rig)
        assert running == "2.0.0"
        want = swap_scratch(mcuboot(), primary, secondary, scratch, copy_size, SWAP_TEST, False)
        assert ops == want
        ops, running = boot_traffic(rig)  # never confirmed: MCUboot swaps back
        assert running == "1.0.0"
        want = swap_scratch(mcuboot(), primary, secondary, scratch, copy_size, SWAP_REVERT, False)
        assert ops == want


def test_swap_scratch_into_the_trailer_sector_keeps_its_status_in_the_scratch(key: Any) -> None:
    primary, secondary = slots("swap-scratch")
    scratch = GEOMETRIES["swap-scratch"].scratch
    assert scratch is not None
    v1 = app_image(primary, "1.0.0", key)
    v2 = app_image(primary, "2.0.0", key, size=0x3A00)
    with mcuboot_board(build_for("swap-scratch", key), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.set_pending(permanent=True)
        ops, running = boot_traffic(rig)
        assert running == "2.0.0"
        copy_size = max(len(v1), len(v2))
        want = swap_scratch(mcuboot(), primary, secondary, scratch, copy_size, SWAP_PERM, True)
        assert ops == want


def test_swap_scratch_rewrites_the_secondary_before_erasing_its_trailer(key: Any) -> None:
    """The last step of state 1 (swap_scratch.c:601-607), not the first: a cut between them
    leaves a secondary whose sectors are rewritten and whose trailer still stands."""
    primary, secondary = slots("swap-scratch")
    v1 = app_image(primary, "1.0.0", key)
    v2 = app_image(primary, "2.0.0", key, size=0x2400)
    with mcuboot_board(build_for("swap-scratch", key), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.set_pending()
        ops, _ = boot_traffic(rig)
    trailer_page = secondary.end - 0x1000
    rewrite = next(
        i
        for i, (kind, address, _) in enumerate(ops)
        if kind == "write" and secondary.start <= address < trailer_page
    )
    assert ops.index(("erase", trailer_page, 0x1000)) > rewrite


# --- swap using move ----------------------------------------------------------------------------


def test_swap_move_test_swap_and_its_revert_are_mcuboots_traffic(key: Any) -> None:
    primary, secondary = slots("swap-move")
    v1 = app_image(primary, "1.0.0", key)
    v2 = app_image(primary, "2.0.0", key, size=0x2400)
    copy_size = max(len(v1), len(v2))
    with mcuboot_board(build_for("swap-move", key), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.set_pending()
        ops, running = boot_traffic(rig)
        assert running == "2.0.0"
        assert ops == swap_move(mcuboot(), primary, secondary, copy_size, SWAP_TEST, False)
        ops, running = boot_traffic(rig)
        assert running == "1.0.0"
        assert ops == swap_move(mcuboot(), primary, secondary, copy_size, SWAP_REVERT, False)


def test_swap_move_permanent_swap_is_mcuboots_traffic(key: Any) -> None:
    primary, secondary = slots("swap-move")
    v1 = app_image(primary, "1.0.0", key, size=0x2C00)
    v2 = app_image(primary, "2.0.0", key)
    with mcuboot_board(build_for("swap-move", key), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.set_pending(permanent=True)
        ops, running = boot_traffic(rig)
        assert running == "2.0.0"
        copy_size = max(len(v1), len(v2))
        assert ops == swap_move(mcuboot(), primary, secondary, copy_size, SWAP_PERM, True)


# --- a swap resumed after a power cut ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["swap-scratch", "swap-move"])
def test_a_swap_resumed_after_a_power_cut_redoes_the_interrupted_step_and_goes_on(
    mode: str, key: Any
) -> None:
    """For a cut in each step after the first (before the step's second operation), the
    resumed boot's traffic is MCUboot's from the start of that step (boot_complete_partial_swap
    -> swap_run from the status read back, loader.c:1713-1757)."""
    primary, secondary = slots(mode)
    v1 = app_image(primary, "1.0.0", key)
    v2 = app_image(primary, "2.0.0", key, size=0x2400)
    copy_size = max(len(v1), len(v2))
    m = mcuboot()
    if mode == "swap-scratch":
        scratch = GEOMETRIES[mode].scratch
        assert scratch is not None
        fresh = swap_scratch(m, primary, secondary, scratch, copy_size, SWAP_TEST, False)
    else:
        fresh = swap_move(m, primary, secondary, copy_size, SWAP_TEST, False)
    assert len(m.step_ends) == 9  # three sectors: 3 x 3 steps (scratch), 3 + 3 x 2 (move)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig, fault_port(rig) as faults:
        rig.program(secondary, v2)
        rig.set_pending()
        faults.cut_power_now()
        before = rig.board.flash.read(0, FLASH_IN_USE)
        for done in m.step_ends[:-1]:  # a cut in the step after each finished one
            cut = done + 2  # the step's first operation done, its second one cut
            rig.board.flash.load(0, before)
            faults.reset_stats()
            faults.cut_power_after(cut)
            faults.power_on()
            status = wait_until(
                lambda: rig.board.cpu.status,
                lambda s: s.startswith("power cut") or s.startswith("running app"),
                f"the power cut before operation {cut}",
                WAIT_S,
            )
            assert status.startswith(f"power cut before flash operation {cut} ("), status
            with traffic(rig) as ops:
                faults.power_on()
                assert rig.running() == "2.0.0"
            assert ops == fresh[done:], f"resumed after a cut before operation {cut}"
            faults.cut_power_now()


# --- direct-xip ---------------------------------------------------------------------------------


def test_direct_xip_revert_marks_the_selected_slot_then_erases_it_unconfirmed(key: Any) -> None:
    primary, secondary = slots("direct-xip-revert")
    v1 = app_image(primary, "1.0.0", key, pad=True, confirm=True)
    v2 = app_image(secondary, "2.0.0", key)
    with mcuboot_board(build_for("direct-xip-revert", key), primary=v1) as rig:
        rig.program(secondary, v2)
        rig.write_field(secondary, "magic")
        ops, running = boot_traffic(rig)
        assert running == "2.0.0"
        assert ops == direct_xip_select(mcuboot(), secondary)  # copy_done, one write unit
        ops, running = boot_traffic(rig)
        assert running == "1.0.0"
        m = mcuboot()
        direct_xip_erase_unconfirmed(m, secondary)
        assert ops == direct_xip_select(m, primary)  # imgtool --confirm sets no copy_done


def test_direct_xip_logs_an_empty_slot_as_mcuboot_does(key: Any) -> None:
    primary, _ = slots("direct-xip")
    with mcuboot_board(
        build_for("direct-xip", key), primary=app_image(primary, "1.0.0", key)
    ) as rig:
        log, running = rig.boot()
        # BOOT_LOG_INF("Image %d %s slot: Image not found", ..., "Primary" : "Secondary")
        # (loader.c:2485-2488)
        assert "I: Image 0 Secondary slot: Image not found" in log.lines()
        assert running == "1.0.0"
