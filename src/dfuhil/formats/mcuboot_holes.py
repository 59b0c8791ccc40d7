"""Power-fail holes of MCUboot v2.1.0 itself: where a cut leaves a real board bricked or on the
wrong image, with the source lines, so a suite or campaign names them instead of hiding them.

Both were found by the virtual farm running v2.1.0's own flash traffic (tests/mcuboot_trace.py)
with whole-operation and torn power cuts (bench/power_cuts.py). A board that hits one is a
product failure of MCUboot (exit 1), never a rig fault and never a pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownHole:
    outcome: str  # "bricked" or "wrong image"
    where: str  # the source lines, tag v2.1.0
    why: str
    fixed: str  # where upstream fixed it, or that it has not

    def describe(self) -> str:
        return f"{self.outcome}: MCUboot v2.1.0 {self.where}: {self.why} ({self.fixed})"


SCRATCH_FORWARD_ERASE = KnownHole(
    "bricked",
    "swap_scratch.c:675-678",
    "after the first operation of a swap into the trailer sector it erases a multi-sector "
    "scratch front to back; a cut before the last page leaves the scratch's trailer and stale "
    "status, the next boot resumes from the scratch (Boot source: scratch) and copies erased "
    "pages over the primary",
    "fixed in v2.2.0 by mcu-tools/mcuboot f76fba70, which erases it backwards",
)

SWAP_MOVE_TORN_REVERT_MAGIC = KnownHole(
    "wrong image",
    "swap_move.c:482-493 with bootutil_public.c:118-125",
    "fixup_revert writes the secondary's magic last; a cut inside that write leaves a torn "
    "magic, which boot_magic_decode reads as BAD (bootutil_misc.h:20-26), and the revert row "
    "of boot_swap_tables wants the secondary's magic UNSET: every later boot decides 'none' and "
    "the unconfirmed image keeps running (only a torn cut shows it; MCUboot's simulator cuts "
    "between operations)",
    "unchanged on mcu-tools/mcuboot main at 2d4bacc3",
)


def explain_brick(mode: str, boot_log: Iterable[str]) -> KnownHole | None:
    """The known hole a board that found no bootable image after a power cut fell into, if its
    boot log shows one."""
    if mode == "swap-scratch" and any("Boot source: scratch" in line for line in boot_log):
        return SCRATCH_FORWARD_ERASE
    return None
