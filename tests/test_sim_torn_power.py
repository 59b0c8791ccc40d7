"""Torn power cuts: a cut *inside* a flash write or erase, and MCUboot v2.1.0 on the torn data.

The flash model (dfuhil.sim.torn) is held to what NOR can do: a torn write only clears bits the
write was clearing, word by word in order; a torn erase only sets bits; the result is fixed by
the seed. The virtual MCUboot is held to what v2.1.0 reads on torn data (a torn magic is BAD,
not GOOD; a torn copy_done is BAD and rewritten by direct-xip-revert), and a bounded sample of
the power-cut campaigns (tests/powercut_campaign.py; the full ones are bench/power_cuts.py)
must recover on every mode, except where MCUboot v2.1.0 itself bricks: that cut is counted as
bricked, never as recovered.
"""

from __future__ import annotations

from typing import Any

import pytest
from imgtool import keys as imgtool_keys
from mcuboot_trace import SWAP_PERM, Mcuboot, swap_scratch
from mcubootrig import (
    GEOMETRIES,
    MAX_SECTORS,
    WAIT_S,
    app_image,
    build_for,
    fault_port,
    mcuboot_board,
)
from powercut_campaign import CAMPAIGNS, Campaign, Replay, Tally, cut_once, replay, run_cuts
from pynrfjprog.APIError import APIError
from simfarm import wait_until

from dfuhil.errors import InputError
from dfuhil.formats.chips import NRF52_TIMING
from dfuhil.formats.mcuboot_holes import (
    OVERWRITE_TORN_HEADER_DOWNGRADE,
    SCRATCH_FORWARD_ERASE,
    SWAP_MOVE_TORN_REVERT_MAGIC,
    explain_brick,
)
from dfuhil.formats.mcuboot_trailer import (
    Flag,
    Magic,
    SwapType,
    TrailerLayout,
    decide_swap,
    field_write,
    read_trailer,
)
from dfuhil.sim.clock import PowerLoss, VirtualClock
from dfuhil.sim.debugport import PortError, _power_cut
from dfuhil.sim.flash import NorFlash
from dfuhil.sim.lowlevel import VirtualLowLevelAPI

PAGE = 0x1000


@pytest.fixture(scope="module")
def key() -> Any:
    return imgtool_keys.ECDSA256P1.generate()


def flash() -> NorFlash:
    return NorFlash(
        base=0,
        size=4 * PAGE,
        page_size=PAGE,
        timing=NRF52_TIMING,
        clock=VirtualClock(0.0001),
    )


def cut_during_next(f: NorFlash, seed: int | None) -> None:
    def hook(kind: str, address: int) -> None:
        f.fault_hook = None
        f.tear_interrupted()
        raise PowerLoss(f"cut in {kind} at {address:#x}")

    f.fault_hook = hook
    f.tear_next_cut(seed)


def words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


# --- the flash model ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_a_torn_write_clears_only_bits_it_was_clearing_in_word_order(seed: int) -> None:
    f = flash()
    old = bytes(range(256)) * 4  # 1 KiB, some bits already programmed
    f.write(0x100, old)
    data = bytes((i * 37) & 0xFF for i in range(1024))
    cut_during_next(f, seed)
    with pytest.raises(PowerLoss):
        f.write(0x100, data)
    got = words(f.read(0x100, 1024))
    full = [o & d for o, d in zip(words(old), words(data), strict=True)]
    k = next(i for i, (g, w) in enumerate(zip(got, full, strict=True)) if g != w)
    assert got[:k] == full[:k]  # programmed before the cut
    assert got[k + 1 :] == words(old)[k + 1 :]  # never reached
    o, w = words(old)[k], full[k]
    assert got[k] & ~o == 0 and got[k] & w == w  # no bit set; only bits being cleared cleared
    assert got[k] not in (o, w)  # torn: strictly between old and new
    assert f.is_torn(0x100, 4) and f.last_tear is not None and f.last_tear.done == k


@pytest.mark.parametrize("seed", range(12))
def test_a_torn_erase_sets_only_bits_and_the_page_stays_torn_until_erased(seed: int) -> None:
    f = flash()
    programmed = bytes((i * 11) & 0xFF for i in range(PAGE))
    f.write(PAGE, programmed)
    f.write(2 * PAGE, programmed)
    cut_during_next(f, seed)
    with pytest.raises(PowerLoss):
        f.erase_page(PAGE + 8)
    got = f.read(PAGE, PAGE)
    assert all(g | p == g for g, p in zip(got, programmed, strict=True))  # only 0 -> 1
    assert got not in (programmed, b"\xff" * PAGE)
    assert f.read(2 * PAGE, PAGE) == programmed  # the neighbour page is untouched
    assert f.torn_pages == {PAGE}
    f.erase_page(PAGE)
    assert f.torn_pages == set() and f.read(PAGE, PAGE) == b"\xff" * PAGE


def test_the_seed_fixes_the_tear_and_without_one_the_operation_never_starts() -> None:
    results = []
    for seed in (7, 7, 8, None):
        f = flash()
        f.write(0, b"\x00" * PAGE)
        cut_during_next(f, seed)
        with pytest.raises(PowerLoss):
            f.erase_page(0)
        results.append(f.read(0, PAGE))
    assert results[0] == results[1] != results[2]
    assert results[3] == b"\x00" * PAGE  # a whole-operation cut: not performed at all


# --- the lever on the debug port ---------------------------------------------------------------


def test_a_torn_cut_through_the_debug_port_tears_a_debugger_write(key: Any) -> None:
    g = GEOMETRIES["swap-move"]
    v1 = app_image(g.primary, "1.0.0", key)
    with mcuboot_board(build_for("swap-move", key), primary=v1) as rig, fault_port(rig) as faults:
        faults.cut_power_now()
        with pytest.raises(InputError, match="torn_seed must be an int"):
            faults.cut_power_after(1, torn_seed="x")  # type: ignore[arg-type]
        faults.cut_power_after(1, torn_seed=3)
        with VirtualLowLevelAPI("AUTO", endpoint=faults.endpoint) as api:
            api.connect_to_emu_with_snr(rig.board.snr)
            with pytest.raises(APIError, match=r"during flash operation 1 .*torn with seed 3"):
                api.write(0x30000, [0x00] * 64, True)
        got = rig.board.read(0x30000, 64)
        assert got not in (b"\x00" * 64, b"\xff" * 64)
        tear = faults.last_tear()
        assert tear is not None and tear.startswith("torn write at 0x00030000 (seed 3)")


def test_the_debug_port_refuses_a_torn_cut_now_and_a_bad_seed(key: Any) -> None:
    g = GEOMETRIES["swap-move"]
    v1 = app_image(g.primary, "1.0.0", key)
    with mcuboot_board(build_for("swap-move", key), primary=v1) as rig:
        with pytest.raises(PortError, match="a torn cut needs after_ops"):
            _power_cut(rig.board, {"now": True, "torn": True})
        with pytest.raises(PortError, match="seed must be an int"):
            _power_cut(rig.board, {"after_ops": 1, "torn": True, "seed": "1"})
        with pytest.raises(PortError, match="torn must be true or false"):
            _power_cut(rig.board, {"after_ops": 1, "torn": 1})
        assert rig.board.flash.fault_hook is None  # nothing armed by a refused request


# --- MCUboot v2.1.0 on torn data ---------------------------------------------------------------


def torn_magic(layout: TrailerLayout) -> bytes:
    off, block = field_write(layout, "magic", 0)
    image = bytearray(b"\xff" * layout.slot_size)
    image[off : off + len(block)] = block
    image[layout.magic + 9] |= 0x30  # two bits of one byte never cleared
    return bytes(image)


def test_a_torn_magic_is_bad_and_a_bad_secondary_magic_blocks_a_revert() -> None:
    """boot_magic_decode is a memcmp of all 16 bytes (bootutil_misc.h:20-26), and the revert row
    of boot_swap_tables wants the secondary's magic UNSET (bootutil_public.c:118-125)."""
    layout = TrailerLayout(0x4000)
    secondary = read_trailer(lambda a, n: torn_magic(layout)[a : a + n], 0, layout)
    assert secondary.magic == Magic.BAD
    primary = read_trailer(lambda a, n: b"\xff" * n, 0, layout)
    primary = type(primary)(Magic.GOOD, SwapType.NONE, 0, Flag.SET, Flag.UNSET, None)
    erased = read_trailer(lambda a, n: b"\xff" * n, 0, layout)
    assert decide_swap(primary, erased) == SwapType.REVERT
    assert decide_swap(primary, secondary) == SwapType.NONE


def test_direct_xip_revert_rewrites_a_torn_copy_done_so_the_revert_still_happens(
    key: Any,
) -> None:
    """boot_select_or_erase rewrites copy_done unless it is SET (loader.c:2611-2622): a copy_done
    torn by a cut reads BAD, is rewritten, and the unconfirmed image is still reverted."""
    g = GEOMETRIES["direct-xip-revert"]
    assert g.secondary is not None
    v1 = app_image(g.primary, "1.0.0", key, pad=True, confirm=True)
    v2 = app_image(g.secondary, "2.0.0", key)
    with (
        mcuboot_board(build_for("direct-xip-revert", key), primary=v1) as rig,
        fault_port(rig) as faults,
    ):
        rig.program(g.secondary, v2)
        rig.write_field(g.secondary, "magic")  # the direct-xip "test"
        faults.cut_power_now()
        faults.cut_power_after(1, torn_seed=4)  # the boot's first operation: copy_done
        faults.power_on()
        cut = wait_until(
            lambda: rig.board.cpu.status, lambda s: s.startswith("power cut"), "the cut", WAIT_S
        )
        assert "during flash operation 1 (write at" in cut
        assert rig.trailer(g.secondary).copy_done == Flag.BAD
        faults.power_on()
        assert rig.running() == "2.0.0"
        assert rig.trailer(g.secondary).copy_done == Flag.SET
        _, running = rig.boot()  # never confirmed: reverted
        assert running == "1.0.0"


# --- the campaigns, a bounded sample ------------------------------------------------------------


@pytest.mark.parametrize("campaign", CAMPAIGNS, ids=[c.name for c in CAMPAIGNS])
def test_a_sample_of_torn_and_whole_cuts_recovers_unless_mcuboot_itself_would_not(
    campaign: Campaign, key: Any
) -> None:
    with replay(campaign, key) as run:
        n = run.count()
        points = sorted({p for p in (1, 2, n // 3, n // 2, 2 * n // 3, n - 1, n) if p >= 1})
        points = [p for p in points if p <= n]
        tallies = run_cuts(campaign, run, points, [None, 11, 12])
    for kind, tally in tallies.items():
        assert tally.tried == len(points) * (1 if kind == "whole" else 2)
        assert tally.counts["crashed"] == 0, tally.cases
        assert tally.unexplained() == 0, (kind, tally.cases)


def test_v2_1_0s_forward_scratch_erase_bricks_on_whole_and_torn_cuts_and_is_counted(
    key: Any,
) -> None:
    """swap_scratch.c:675-678: the 2-sector scratch erased front to back after the first
    operation. A whole cut before its second page, or a torn cut in its first page (the
    trailer page still intact), bricks the board; the campaign counts it as bricked, known."""
    campaign = next(c for c in CAMPAIGNS if c.known and c.known[0][0] is SCRATCH_FORWARD_ERASE)
    g = campaign.geometry
    assert g is not None and g.secondary is not None and g.scratch is not None
    m = Mcuboot(sector=0x1000, max_sectors=MAX_SECTORS)
    v2 = app_image(g.primary, "2.0.0", key, size=campaign.v2_size)  # as replay() signs it
    swap_scratch(m, g.primary, g.secondary, g.scratch, len(v2), SWAP_PERM, True)
    erase = m.step_ends[2] + 1  # the first operation's last status record, then the erase
    assert m.ops[erase - 1 : erase + 1] == [("erase", 0x18000, 0x1000), ("erase", 0x19000, 0x1000)]
    tallies = {"whole": Tally(), "torn": Tally()}
    with replay(campaign, key) as run:
        cut_once(campaign, run, erase + 1, None, tallies)  # first page erased, not the second
        for seed in (1, 2):
            cut_once(campaign, run, erase, seed, tallies)  # the first page's erase torn
    for tally in tallies.values():
        assert tally.counts["bricked"] == tally.tried, tally.cases
        assert tally.known == {SCRATCH_FORWARD_ERASE: tally.tried}
        assert tally.unexplained() == 0


def test_a_torn_secondary_magic_in_swap_move_fixup_revert_loses_the_revert_for_good(
    key: Any,
) -> None:
    """swap_move.c:482-493 writes the secondary's magic last; torn, it reads BAD and the revert
    row (bootutil_public.c:118-125) never matches again: the unconfirmed v2 keeps running. A
    whole-operation cut at the same place recovers (MCUboot's simulator cannot see this)."""
    campaign = next(
        c for c in CAMPAIGNS if c.known and c.known[0][0] is SWAP_MOVE_TORN_REVERT_MAGIC
    )
    with replay(campaign, key) as run:
        run.count()
        magic = next(i for i in range(1, 20) if "write at 0x00018FF0" in whole_cut_site(run, i))
        assert run.cut(magic, None)[0] == "recovered"
        outcome, what = run.cut(magic, 7)
        assert outcome == "wrong image" and "v2.0.0 runs, not v1.0.0" in what, what
        assert campaign.hole(outcome, what) is SWAP_MOVE_TORN_REVERT_MAGIC
        log, running = run.rig.boot()
        assert running == "2.0.0"  # and on every boot after
        assert "I: Image index: 0, Swap type: none" in log.lines()


def test_overwrite_only_with_downgrade_prevention_bricks_on_a_torn_header_erase(
    key: Any,
) -> None:
    """loader.c:1003-1017: the primary's header torn by a cut in its erase reads as a higher
    version; the update is erased as a downgrade and the torn primary is invalid. A whole cut
    there recovers. The boot log names the hole."""
    campaign = next(c for c in CAMPAIGNS if c.downgrade_prevention)
    with replay(campaign, key) as run:
        run.count()
        assert "erase_page at 0x00010000" in whole_cut_site(run, 1)
        assert run.cut(1, None)[0] == "recovered"
        tallies = {"whole": Tally(), "torn": Tally()}
        for seed in range(1, 13):  # some tears leave the version below v2's, some above
            cut_once(campaign, run, 1, seed, tallies)
        torn = tallies["torn"]
        assert torn.counts["bricked"] > 0 and torn.unexplained() == 0, torn.cases
        assert torn.known == {OVERWRITE_TORN_HEADER_DOWNGRADE: torn.counts["bricked"]}
        bricked = int(torn.cases[-1].split("(seed ")[1].split(")")[0])
        run.cut(1, bricked)
        log = run.rig.console.text().splitlines()
    assert explain_brick("overwrite-only", log) is OVERWRITE_TORN_HEADER_DOWNGRADE
    assert explain_brick("swap-move", log) is None


def whole_cut_site(run: Replay, i: int) -> str:
    """Where operation ``i`` of the boot is (from the cut's own status line)."""
    run.restore()
    run.faults.cut_power_after(i)
    run.faults.power_on()
    return str(
        wait_until(
            lambda: run.rig.board.cpu.status,
            lambda s: s.startswith("power cut"),
            f"operation {i}",
            WAIT_S,
        )
    )
