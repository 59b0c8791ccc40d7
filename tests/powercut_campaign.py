"""Power-cut campaigns on the virtual MCUboot: every flash operation of one upgrade boot cut,
whole (MCUboot's simulator's way) or torn (dfuhil.sim.torn), and what the board does next.

A campaign restores the flash as it was before the upgrade boot, arms a cut at operation i
through the debug port (FaultInjector), powers on, waits for the cut, powers on again and sorts
the outcome: **recovered** (the expected image runs, both slots hold the expected bytes and the
boot after runs what it must: the same image, or v1 after an unconfirmed direct-xip select),
**wrong image** (another image runs, or the right one with the other slot not as expected: the
way back is lost), **bricked** (MCUboot finds no bootable image) or **crashed** (the virtual
MCUboot raised: a bug of this project, never MCUboot's). A cut that lands in one of MCUboot
v2.1.0's own holes (dfuhil.formats.mcuboot_holes) is counted with its outcome and also as
"known", naming the hole. Used by tests/test_sim_torn_power.py
(a bounded sample) and bench/power_cuts.py (every operation, several seeds, with a budget).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mcubootrig import (
    GEOMETRIES,
    WAIT_S,
    McubootRig,
    app_image,
    build_for,
    fault_port,
    mcuboot_board,
)
from simfarm import wait_until

from dfuhil.formats.mcuboot_build import FlashGeometry, Slot
from dfuhil.formats.mcuboot_holes import (
    OVERWRITE_TORN_HEADER_DOWNGRADE,
    SCRATCH_FORWARD_ERASE,
    SWAP_MOVE_TORN_REVERT_MAGIC,
    KnownHole,
)
from dfuhil.sim.faults import FaultInjector

Outcome = Literal["recovered", "wrong image", "bricked", "crashed"]
OUTCOMES: tuple[Outcome, ...] = ("recovered", "wrong image", "bricked", "crashed")
FLASH_IN_USE = 0x20000  # MCUboot, both slots and the scratch of every campaign geometry
NO_IMAGE = "Unable to find bootable image"


@dataclass(frozen=True)
class Campaign:
    """One upgrade boot to cut: the flash before it, and what it must end with."""

    name: str
    mode: str
    kind: Literal["upgrade", "revert", "xip-select", "xip-erase"] = "upgrade"
    permanent: bool = True
    v2_size: int = 0x2400
    geometry: FlashGeometry | None = None
    downgrade_prevention: bool = False
    # MCUboot v2.1.0's own holes in this boot: the hole, and the cut locations (as the cut
    # status prints them, "erase_page at 0x..."), at which a cut falls into it
    known: tuple[tuple[KnownHole, tuple[str, ...]], ...] = ()

    def hole(self, outcome: str, where: str) -> KnownHole | None:
        for hole, places in self.known:
            if hole.outcome == outcome and any(place in where for place in places):
                return hole
        return None


CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("swap-scratch perm", "swap-scratch", v2_size=0x3A00),
    Campaign(
        "swap-scratch perm, 2-sector scratch",
        "swap-scratch",
        v2_size=0x3A00,
        geometry=replace(GEOMETRIES["swap-scratch"], scratch=Slot(0x18000, 0x2000)),
        # the scratch's pages (0x18000, 0x19000) erased after the first operation
        known=((SCRATCH_FORWARD_ERASE, ("erase_page at 0x00018000", "erase_page at 0x00019000")),),
    ),
    Campaign("swap-scratch revert", "swap-scratch", kind="revert", permanent=False),
    Campaign("swap-move perm", "swap-move"),
    Campaign(
        "swap-move revert",
        "swap-move",
        kind="revert",
        permanent=False,
        known=((SWAP_MOVE_TORN_REVERT_MAGIC, ("write at 0x00018FF0",)),),  # secondary's magic
    ),
    Campaign("overwrite-only", "overwrite-only", permanent=False),
    Campaign(
        "overwrite-only, downgrade prevention",
        "overwrite-only",
        permanent=False,
        downgrade_prevention=True,
        # the primary's first sector (its header), erased first
        known=((OVERWRITE_TORN_HEADER_DOWNGRADE, ("erase_page at 0x00010000",)),),
    ),
    Campaign("direct-xip-revert select", "direct-xip-revert", kind="xip-select", permanent=False),
    Campaign("direct-xip-revert erase", "direct-xip-revert", kind="xip-erase", permanent=False),
)


@dataclass
class Tally:
    """Per campaign and cut kind: how many cuts ended how (and which, for the report)."""

    tried: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    known: dict[KnownHole, int] = field(default_factory=dict)  # of those, MCUboot's own holes
    cases: list[str] = field(default_factory=list)  # every cut that did not recover

    def add(self, outcome: Outcome, what: str, hole: KnownHole | None = None) -> None:
        self.tried += 1
        self.counts[outcome] += 1
        if hole is not None:
            self.known[hole] = self.known.get(hole, 0) + 1
        if outcome != "recovered":
            self.cases.append(f"{outcome}: {what}" + ("" if hole is None else " [known]"))

    def unexplained(self) -> int:
        """Cuts that did not recover and are no known hole of MCUboot v2.1.0."""
        return self.tried - self.counts["recovered"] - sum(self.known.values())


@dataclass
class Replay:
    rig: McubootRig
    faults: FaultInjector
    before: bytes
    expect_version: str
    expect: dict[str, bytes]  # slot name -> image it must hold
    then_version: str = ""  # what the boot after runs (default: the same image)

    def restore(self) -> None:
        self.faults.cut_power_now()
        self.rig.board.flash.load(0, self.before)
        self.faults.reset_stats()

    def count(self) -> int:
        """N: the flash operations of the whole boot, uninterrupted."""
        self.restore()
        self.faults.power_on()
        running = self.rig.running()
        assert running == self.expect_version, f"uninterrupted, {running} runs"
        return self.faults.flash_ops()

    def cut(self, i: int, torn_seed: int | None) -> tuple[Outcome, str]:
        """Cut at operation ``i`` (torn with ``torn_seed`` if given); the outcome and why."""
        rig = self.rig
        self.restore()
        self.faults.cut_power_after(i, torn_seed=torn_seed)
        self.faults.power_on()
        cut = wait_until(
            lambda: rig.board.cpu.status,
            lambda s: s.startswith("power cut") or s.startswith("running app"),
            f"the power cut at operation {i}",
            WAIT_S,
        )
        assert cut.startswith("power cut"), f"operation {i} never came: {cut}"
        where = cut.removeprefix("power cut ")
        if torn_seed is not None:
            where += f"; {self.faults.last_tear()}"
        assert rig.board.uart.wait_tx_idle(WAIT_S)
        rig.console.skip_to_end()
        start = len(rig.console.text())
        self.faults.power_on()
        status = self._settle(start)
        if status.startswith("crashed"):
            return "crashed", f"{where}: {rig.notes().splitlines()[-1:]}"
        if not status.startswith("running app"):
            return "bricked", f"{where}: {NO_IMAGE}"
        version = status.split()[2]
        if version != self.expect_version:
            return "wrong image", f"{where}: v{version} runs, not v{self.expect_version}"
        for name, image in self.expect.items():
            slot = getattr(rig.geometry, name)
            if rig.slot_bytes(slot, len(image)) != image:
                return "wrong image", f"{where}: v{version} runs, {name} slot not as expected"
        then = self.then_version or self.expect_version
        start = len(rig.console.text())
        rig.board.cpu.reset(halt=False, reason="the boot after")  # it must settle there
        status = self._settle(start)
        if not status.startswith("running app"):
            return "crashed" if status.startswith("crashed") else "bricked", f"{where}: {status}"
        if (after := status.split()[2]) != then:
            return "wrong image", f"{where}: v{version} runs, then v{after}, not v{then}"
        return "recovered", where

    def _settle(self, start: int) -> str:
        """Wait until an app runs, MCUboot gives up, or the plug-in crashed."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            status = self.rig.board.cpu.status
            if status.startswith(("running app", "crashed")):
                return status
            if NO_IMAGE in self.rig.console.text()[start:]:
                return "bricked"
            time.sleep(0.02)
        raise AssertionError(f"no app, no verdict after {WAIT_S} s: {self.rig.board.cpu.status}")


@contextmanager
def replay(campaign: Campaign, key: Any) -> Iterator[Replay]:
    """The board set up just before the boot the campaign cuts, powered off."""
    g = campaign.geometry or GEOMETRIES[campaign.mode]
    assert g.secondary is not None
    xip = campaign.kind.startswith("xip")
    # direct-xip: a confirmed v1 (magic + image_ok), v2 linked for the secondary slot
    v1 = app_image(g.primary, "1.0.0", key, pad=xip, confirm=xip)
    v2 = app_image(g.secondary if xip else g.primary, "2.0.0", key, size=campaign.v2_size)
    build = build_for(
        campaign.mode, key, geometry=g, downgrade_prevention=campaign.downgrade_prevention
    )
    with mcuboot_board(build, primary=v1) as rig, fault_port(rig) as faults:
        if xip:
            rig.program(g.secondary, v2)
            rig.write_field(g.secondary, "magic")  # the direct-xip "test"
            if campaign.kind == "xip-erase":
                # v2 selected on an earlier boot, never confirmed: this boot erases it
                # (boot_select_or_erase, loader.c:2595-2609) and boots v1.
                rig.write_field(g.secondary, "copy_done", 0x01)
            faults.cut_power_now()
            before = rig.board.flash.read(0, FLASH_IN_USE)
            if campaign.kind == "xip-erase":
                yield Replay(rig, faults, before, "1.0.0", {})
            else:  # v2 selected, never confirmed: the boot after reverts to v1
                yield Replay(rig, faults, before, "2.0.0", {}, then_version="1.0.0")
            return
        rig.program(g.secondary, v2)
        rig.set_pending(permanent=campaign.permanent)
        if campaign.kind == "revert":
            faults.power_on()
            assert rig.running() == "2.0.0"
        faults.cut_power_now()
        before = rig.board.flash.read(0, FLASH_IN_USE)
        swap = campaign.mode != "overwrite-only"
        if campaign.kind == "revert":
            yield Replay(rig, faults, before, "1.0.0", {"primary": v1, "secondary": v2})
        else:
            expect = {"primary": v2} | ({"secondary": v1} if swap else {})
            yield Replay(rig, faults, before, "2.0.0", expect)


def run_cuts(
    campaign: Campaign, run: Replay, points: list[int], seeds: list[int | None]
) -> dict[str, Tally]:
    """Cut at each point, once per seed (None: a whole-operation cut); tallies per cut kind."""
    tallies = {"whole": Tally(), "torn": Tally()}
    for i in points:
        for seed in seeds:
            cut_once(campaign, run, i, seed, tallies)
    return tallies


def cut_once(
    campaign: Campaign, run: Replay, i: int, seed: int | None, tallies: dict[str, Tally]
) -> None:
    outcome, what = run.cut(i, seed)
    hole = campaign.hole(outcome, what)
    tallies["whole" if seed is None else "torn"].add(outcome, f"op {i}: {what}", hole)
