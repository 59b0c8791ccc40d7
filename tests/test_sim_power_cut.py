"""Power cuts: the fault-injection levers of the debug port, and MCUboot's power-fail safety.

The property is MCUboot's own simulator's (``perm_with_fails``, ``revert_with_fails``, spec §7):
count the N flash operations of an upgrade, then for every i in 1..N restore the flash as it was
before the upgrade, cut the power instead of performing operation i, switch the board on again
and let it finish. Whatever i was, the board must boot (never neither image), the slots must
hold the expected images byte for byte and the trailers must end as §7 says. The levers are
driven through the board's debug port by :class:`dfuhil.sim.faults.FaultInjector`, over a real
Unix socket; the boards are in-process (tests/mcubootrig.py) with 16-20 KiB slots so a swap is
a few dozen operations. Nothing here asserts how long anything took.

The operations are MCUboot v2.1.0's own (tests/test_sim_mcuboot_traffic.py holds them against
its source), so each cut lands where it would on a real board. N per campaign: permanent
swap-move 61, permanent swap-scratch into the trailer sector 83, swap-move revert 65,
swap-scratch revert 65, overwrite-only 17 (the fast overwrite; 22 when the whole slot was
copied).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
from imgtool import keys as imgtool_keys
from mcuboot_trace import SWAP_PERM, Mcuboot, swap_scratch
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
from pynrfjprog.APIError import APIError
from simfarm import wait_until

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.formats.chips import GPIO_DIR, GPIO_P0_BASE, RAM_BASE
from dfuhil.formats.mcuboot_build import Slot
from dfuhil.formats.mcuboot_trailer import TrailerState
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.lowlevel import VirtualLowLevelAPI

FLASH_IN_USE = 0x20000  # MCUboot, both slots and the scratch of every test geometry
ERASED_TRAILER = ("UNSET", "UNSET", "UNSET")
CONFIRMED = ("GOOD", "SET", "SET")


@pytest.fixture(scope="module")
def key() -> Any:
    return imgtool_keys.ECDSA256P1.generate()


def flags(state: TrailerState) -> tuple[str, str, str]:
    return state.magic.name, state.image_ok.name, state.copy_done.name


@dataclass
class Upgrade:
    """One upgrade boot, replayable: the flash before it and what it must end with."""

    rig: McubootRig
    faults: FaultInjector
    before: bytes
    expect_version: str
    expect_primary: bytes
    expect_secondary: bytes | None  # swap modes keep the other image in the secondary

    @property
    def primary(self) -> Slot:
        return self.rig.geometry.primary

    @property
    def secondary(self) -> Slot:
        slot = self.rig.geometry.secondary
        assert slot is not None
        return slot

    def restore(self) -> None:
        """Power off and put the flash back as it was before the upgrade."""
        self.faults.cut_power_now()
        self.rig.board.flash.load(0, self.before)
        self.faults.reset_stats()

    def count(self) -> int:
        """N: the flash operations of the whole upgrade boot, uninterrupted."""
        self.restore()
        self.faults.power_on()
        assert self.rig.running() == self.expect_version
        return self.faults.flash_ops()

    def cut_at(self, i: int) -> str:
        """Cut the power instead of operation ``i``, power on, and what ends up running."""
        self.restore()
        self.faults.cut_power_after(i)
        self.faults.power_on()
        cut = wait_until(
            lambda: self.rig.board.cpu.status,
            lambda s: s.startswith("power cut") or s.startswith("running app"),
            f"the power cut before operation {i}",
            WAIT_S,
        )
        assert cut.startswith(f"power cut before flash operation {i} ("), cut
        self.faults.power_on()
        return self.rig.running()

    def check_outcome(self, running: str, why: str) -> None:
        rig = self.rig
        assert running == self.expect_version, why
        assert rig.slot_bytes(self.primary, len(self.expect_primary)) == self.expect_primary, why
        if self.expect_secondary is not None:
            got = rig.slot_bytes(self.secondary, len(self.expect_secondary))
            assert got == self.expect_secondary, why

    def check_trailers(self, primary: tuple[str, str, str], why: str) -> None:
        assert flags(self.rig.trailer(self.primary)) == primary, why
        assert flags(self.rig.trailer(self.secondary)) == ERASED_TRAILER, why

    def check_settled(self, swap_type: str = "none") -> None:
        """A further boot changes nothing and writes nothing."""
        self.faults.reset_stats()
        log, running = self.rig.boot()
        assert f"I: Image index: 0, Swap type: {swap_type}" in log.lines()
        self.check_outcome(running, "the boot after")
        assert self.faults.flash_ops() == 0


@contextmanager
def upgrade(
    mode: str, key: Any, *, permanent: bool, v2_size: int = 0x2400, revert: bool = False
) -> Iterator[Upgrade]:
    """v1 in the primary and v2 requested; with ``revert``, the state after the test swap (v2
    running unconfirmed), so the replayed boot is the revert."""
    g = GEOMETRIES[mode]
    assert g.secondary is not None
    v1 = app_image(g.primary, "1.0.0", key)
    v2 = app_image(g.primary, "2.0.0", key, size=v2_size)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig, fault_port(rig) as faults:
        rig.program(g.secondary, v2)
        rig.set_pending(permanent=permanent)
        if revert:
            faults.power_on()
            assert rig.running() == "2.0.0"
        faults.cut_power_now()
        before = rig.board.flash.read(0, FLASH_IN_USE)
        swap_mode = mode != "overwrite-only"
        if revert:
            yield Upgrade(rig, faults, before, "1.0.0", v1, v2)
        else:
            yield Upgrade(rig, faults, before, "2.0.0", v2, v1 if swap_mode else None)


# --- the levers --------------------------------------------------------------------------------


def test_cut_power_now_stops_the_board_and_loses_ram_gpregret_and_gpio(key: Any) -> None:
    g = GEOMETRIES["swap-move"]
    with (
        mcuboot_board(build_for("swap-move", key), primary=app_image(g.primary, "1.0.0", key)) as (
            rig
        ),
        fault_port(rig) as faults,
    ):
        faults.power_on()
        assert rig.running() == "1.0.0"
        wait_until(
            lambda: rig.board.read_u32(GPIO_P0_BASE + GPIO_DIR),
            lambda v: v != 0,
            "the app drives its LEDs",
        )
        rig.board.gpregret = 0x5A
        rig.board.write(RAM_BASE, b"\x12\x34\x56\x78", False)
        faults.cut_power_now()
        status = rig.board.status()
        assert (status["cpu"], status["powered"]) == ("power cut by the host", False)
        assert rig.board.gpregret == 0
        assert rig.board.read(RAM_BASE, 4) == bytes(4)
        assert rig.board.read_u32(GPIO_P0_BASE + GPIO_DIR) == 0
        with VirtualLowLevelAPI("AUTO", endpoint=faults.endpoint) as api:
            api.connect_to_emu_with_snr(rig.board.snr)
            with pytest.raises(APIError, match="power_on first"):
                api.pin_reset()
        faults.power_on()
        assert rig.running() == "1.0.0"


def test_an_armed_cut_skips_the_nth_operation_and_a_debugger_write_counts_too(key: Any) -> None:
    g = GEOMETRIES["swap-move"]
    with (
        mcuboot_board(build_for("swap-move", key), primary=app_image(g.primary, "1.0.0", key)) as (
            rig
        ),
        fault_port(rig) as faults,
    ):
        faults.power_on()
        assert rig.running() == "1.0.0"
        faults.reset_stats()
        address = 0x30000
        with VirtualLowLevelAPI("AUTO", endpoint=faults.endpoint) as api:
            api.connect_to_emu_with_snr(rig.board.snr)
            api.write(address, [0x11] * 8, True)  # operation 1: performed
            faults.cut_power_after(2)
            api.write(address + 8, [0x22] * 8, True)  # operation 2 of the count: performed
            with pytest.raises(APIError, match=r"power cut before flash operation 2 \(write at"):
                api.write(address + 16, [0x33] * 8, True)  # operation 2 after arming: not
        assert rig.board.read(address, 24) == b"\x11" * 8 + b"\x22" * 8 + b"\xff" * 8
        assert faults.flash_ops() == 3  # counted, though the power failed before it
        assert rig.board.status()["powered"] is False
        assert rig.board.cpu.status.startswith("power cut before flash operation 2 (write at")


def test_fault_injector_refuses_bad_counts_and_reports_a_missing_farm(tmp_path: Any) -> None:
    with FaultInjector(f"unix:{tmp_path}/nothing.sock", 1) as faults:
        with pytest.raises(InputError, match="from 1"):
            faults.cut_power_after(0)
        with pytest.raises(InfrastructureError, match="not reachable"):
            faults.flash_ops()


# --- MCUboot's power-fail property -------------------------------------------------------------


def every_operation(
    run: Upgrade, trailers: tuple[str, str, str] | None, *, settle: bool = True
) -> int:
    """Cut at each of the N operations of the upgrade; returns N. With ``settle``, a boot
    after the last resumed upgrade must change nothing (a third boot, as in §7)."""
    n = run.count()
    assert n > 10, "an upgrade takes more than a handful of flash operations"
    for i in range(1, n + 1):
        why = f"power cut before operation {i} of {n}"
        run.check_outcome(run.cut_at(i), why)
        if trailers is not None:
            run.check_trailers(trailers, why)
    if settle:
        run.check_settled()
    return n


@pytest.mark.parametrize(
    ("mode", "v2_size"),
    [
        pytest.param("swap-move", 0x2400, id="swap-move"),
        # into the sector holding the trailer: the first operation keeps its status in the scratch
        pytest.param("swap-scratch", 0x3A00, id="swap-scratch-into-trailer-sector"),
    ],
)
def test_a_power_cut_at_any_operation_of_a_permanent_swap_still_completes_it(
    mode: str, v2_size: int, key: Any
) -> None:
    with upgrade(mode, key, permanent=True, v2_size=v2_size) as run:
        every_operation(run, CONFIRMED)


@pytest.mark.parametrize("mode", ["swap-move", "swap-scratch"])
def test_a_power_cut_at_any_operation_of_a_revert_still_restores_the_old_image(
    mode: str, key: Any
) -> None:
    with upgrade(mode, key, permanent=False, revert=True) as run:
        every_operation(run, CONFIRMED)


def test_a_power_cut_at_any_operation_of_an_overwrite_ends_with_the_new_image(key: Any) -> None:
    with upgrade("overwrite-only", key, permanent=False) as run:
        n = every_operation(run, None, settle=False)
        # MCUboot's own quirk: a cut before the last operation (erasing the secondary's trailer
        # sector) leaves the request behind; each boot still decides "test", finds the header
        # erased and boots the primary, writing nothing.
        assert run.cut_at(n) == "2.0.0"
        run.check_settled("test")


def test_several_power_cuts_in_one_swap_still_complete_it(key: Any) -> None:
    """``perm_with_random_fails``: three interruptions in a row, each at a random operation of
    whatever the resumed boot still has to do."""
    rng = random.Random(20240607)
    with upgrade("swap-scratch", key, permanent=True, v2_size=0x3A00) as run:
        n = run.count()
        for trial in range(5):
            run.restore()
            fired = []
            for _ in range(3):
                after = rng.randint(1, n // 2)
                run.faults.cut_power_after(after)
                run.faults.power_on()
                status = wait_until(
                    lambda: run.rig.board.cpu.status,
                    lambda s: s.startswith("power cut") or s.startswith("running app"),
                    "a cut or the app",
                    WAIT_S,
                )
                fired.append(after if status.startswith("power cut") else None)
                run.faults.cut_power_now()  # also disarms a cut that never came due
            assert fired[0] is not None, "the first cut lands inside the swap"
            run.faults.power_on()
            why = f"trial {trial}: cuts {fired} (N = {n})"
            run.check_outcome(run.rig.running(), why)
            run.check_trailers(CONFIRMED, why)


def test_v2_1_0_swap_scratch_bricks_on_a_cut_in_its_forward_scratch_erase(key: Any) -> None:
    """MCUboot v2.1.0's own power-fail hole, reproduced because the traffic is its own: after
    the first operation of a swap into the trailer sector it erases a multi-sector scratch
    front to back (swap_scratch.c:675-678). A cut after the first page leaves the scratch's
    trailer (and stale status) standing; the next boot resumes from the scratch and copies its
    erased pages over the primary. v2.2.0 erases backwards (mcu-tools/mcuboot f76fba70)."""
    g = replace(GEOMETRIES["swap-scratch"], scratch=Slot(0x18000, 0x2000))
    assert g.secondary is not None and g.scratch is not None
    v1 = app_image(g.primary, "1.0.0", key)
    v2 = app_image(g.primary, "2.0.0", key, size=0x3A00)
    m = Mcuboot(sector=0x1000, max_sectors=MAX_SECTORS)
    swap_scratch(m, g.primary, g.secondary, g.scratch, len(v2), SWAP_PERM, True)
    first_op_done = m.step_ends[2]  # its third status record, then the scratch erase
    assert m.ops[first_op_done : first_op_done + 2] == [
        ("erase", 0x18000, 0x1000),
        ("erase", 0x19000, 0x1000),
    ]
    with (
        mcuboot_board(build_for("swap-scratch", key, geometry=g), primary=v1) as rig,
        fault_port(rig) as faults,
    ):
        rig.program(g.secondary, v2)
        rig.set_pending(permanent=True)
        faults.cut_power_now()
        faults.cut_power_after(first_op_done + 2)  # the scratch's first page erased, not its last
        faults.power_on()
        cut = wait_until(
            lambda: rig.board.cpu.status,
            lambda s: s.startswith("power cut") or s.startswith("running app"),
            "the power cut in the scratch erase",
            WAIT_S,
        )
        assert cut.startswith(f"power cut before flash operation {first_op_done + 2} ("), cut
        assert rig.board.uart.wait_tx_idle(WAIT_S)
        rig.console.skip_to_end()
        faults.power_on()
        log = rig.boot_log().lines()
        assert "I: Boot source: scratch" in log
        assert log[-1] == "E: Unable to find bootable image"
        assert rig.slot_bytes(g.primary, len(v2)) != v2
