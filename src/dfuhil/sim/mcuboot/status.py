"""The swap status of an interrupted swap (``struct boot_status``), shared by the swap modes.

``idx`` counts swap operations from 1 and ``state`` is the next step of that operation (from 1);
a status that is still at (1, 1) in the "move" phase is *reset*: no swap is under way. Each
finished step writes one record, the step's number, into the status area; after a power cut the
records tell the next boot where to resume (spec §2.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from dfuhil.formats.mcuboot_trailer import Flag, SwapType
from dfuhil.sim.mcuboot.area import FlashArea

Op = Literal["move", "swap"]  # swap-move's two phases; swap-scratch stays at "move"


class Source(IntEnum):
    """BOOT_STATUS_SOURCE_*: which area holds the status of a swap under way."""

    NONE = 0
    SCRATCH = 1
    PRIMARY = 2


SOURCE_NAMES = {Source.NONE: "none", Source.SCRATCH: "scratch", Source.PRIMARY: "primary slot"}


@dataclass
class BootStatus:
    idx: int = 1
    state: int = 1
    op: Op = "move"
    swap_type: SwapType = SwapType.NONE
    swap_size: int = 0
    source: Source = Source.NONE
    use_scratch: bool = False

    def is_reset(self) -> bool:
        return self.op == "move" and self.idx == 1 and self.state == 1


def init_status(area: FlashArea, bs: BootStatus, secondary: FlashArea) -> None:
    """``swap_status_init``: the trailer that says a swap is under way, magic written last."""
    if bs.swap_type != SwapType.NONE:
        area.write_field("swap_info", int(bs.swap_type))  # image 0 in bits 4-7
    if secondary.trailer().image_ok == Flag.SET:
        area.write_field("image_ok", 0x01)
    area.write_field("swap_size", bs.swap_size)
    area.write_field("magic")
