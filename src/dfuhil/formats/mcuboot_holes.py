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

OVERWRITE_TORN_HEADER_DOWNGRADE = KnownHole(
    "bricked",
    "loader.c:1003-1017",
    "overwrite-only with downgrade prevention: a cut inside the erase of the primary's first "
    "sector leaves its header torn, magic not erased and version bytes partly erased (read "
    "higher); the next boot takes the update for a downgrade, erases the secondary "
    "(insufficient version in secondary slot) and the torn primary fails validation (only a "
    "torn cut shows it; MCUboot's simulator cuts between operations)",
    "unchanged on mcu-tools/mcuboot main at 2d4bacc3 (loader.c:617-633)",
)

INSUFFICIENT = "insufficient version in secondary slot"
PRIMARY_INVALID = "Image in the primary slot is not valid!"


def explain_brick(mode: str, boot_log: Iterable[str]) -> KnownHole | None:
    """The known hole a board that found no bootable image after a power cut fell into, if its
    boot log shows one."""
    lines = list(boot_log)

    def logged(text: str) -> bool:
        return any(text in line for line in lines)

    if mode == "swap-scratch" and logged("Boot source: scratch"):
        return SCRATCH_FORWARD_ERASE
    if mode == "overwrite-only" and logged(INSUFFICIENT) and logged(PRIMARY_INVALID):
        return OVERWRITE_TORN_HEADER_DOWNGRADE
    return None
