"""What the flash says after an MCUboot upgrade, read over SWD, independent of the SMP server.

An SMP server reports what its own code believes (``image list``); a buggy or confused one can
say "active, confirmed" for an image that is not where MCUboot will look at the next reset. The
probe reads the slots themselves: the bytes of the image file where the mode runs it from, and
the trailers that decide the next boot (``decide_swap``, MCUboot's table), so a green upgrade
means the board will boot the new image again, not just that the server said so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dfuhil.formats.mcuboot import ImageFormatError, ImageVersion, read_slot_image
from dfuhil.formats.mcuboot_build import FlashGeometry, Slot
from dfuhil.formats.mcuboot_trailer import Flag, Magic, SwapType, TrailerState, decide_swap
from dfuhil.formats.mcuboot_trailer import read_trailer as read_slot_trailer

__all__ = ["Readback", "SlotReadback", "read_back"]

SWAP_MODES = ("swap-scratch", "swap-move")
XIP_MODES = ("direct-xip", "direct-xip-revert")
Read = Callable[[int, int], bytes]


@dataclass(frozen=True)
class SlotReadback:
    """One slot as the probe read it."""

    number: int
    slot: Slot
    holds_new: bool  # the slot starts with the image file's bytes, byte for byte
    version: ImageVersion | None  # the version in the slot's image header (None: no image)
    trailer: TrailerState

    @property
    def name(self) -> str:
        return "primary" if self.number == 0 else "secondary"

    def __str__(self) -> str:
        what = (
            "the new image"
            if self.holds_new
            else (f"v{self.version}" if self.version is not None else "no image")
        )
        return (
            f"slot {self.number} ({self.name}, 0x{self.slot.start:X}): {what}; "
            f"trailer {self.trailer.describe()}"
        )


@dataclass(frozen=True)
class Readback:
    """The slots as read over SWD, and what in them contradicts "the new image runs for good"."""

    slots: tuple[SlotReadback, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f"  {s}" for s in self.slots]
        lines += [f"  problem: {p}" for p in self.problems]
        return "probe read-back:\n" + "\n".join(lines)


def _slot(
    read: Read, geometry: FlashGeometry, number: int, slot: Slot, data: bytes
) -> SlotReadback:
    holds_new = read(slot.start, len(data)) == data if len(data) <= slot.size else False
    try:
        image = read_slot_image(read, slot.start, slot.size, source=f"slot {number}")
    except (ImageFormatError, ValueError):
        image = None
    trailer = read_slot_trailer(read, slot.start, geometry.layout(slot))
    return SlotReadback(number, slot, holds_new, image.version if image else None, trailer)


def read_back(read: Read, geometry: FlashGeometry, data: bytes) -> Readback:
    """Read both slots through ``read(address, length)`` and judge them for ``geometry.mode``.

    The new image must be where MCUboot runs it (the primary, or in direct-xip the slot it
    chooses: the highest version, the primary on a tie) and nothing may change that at the next
    reset: no pending request in the swap table; a swap's primary trailer with image_ok set (else
    the next boot reverts); a direct-xip-revert slot marked confirmed (else it is erased).
    """
    slots = [_slot(read, geometry, 0, geometry.primary, data)]
    if geometry.secondary is not None:
        slots.append(_slot(read, geometry, 1, geometry.secondary, data))
    mode = geometry.mode
    problems: list[str] = []
    holders = [s for s in slots if s.holds_new]
    if not holders:
        problems.append("no slot holds the image file's bytes")
        return Readback(tuple(slots), tuple(problems))
    runs = holders[0]
    if mode in XIP_MODES:
        others = [s for s in slots if s is not runs and s.version is not None]
        for other in others:
            theirs, mine = other.version, runs.version
            assert theirs is not None
            if (
                mine is None
                or theirs.key() > mine.key()
                or (theirs.key() == mine.key() and other.number == 0)
            ):
                problems.append(
                    f"the {other.name} slot holds v{theirs}, which MCUboot prefers to the new "
                    f"image in the {runs.name} slot (the highest version wins, the primary a tie)"
                )
        if mode == "direct-xip-revert" and not (
            runs.trailer.magic == Magic.GOOD and runs.trailer.image_ok == Flag.SET
        ):
            problems.append(
                f"the {runs.name} slot's trailer is not confirmed ({runs.trailer.describe()}): "
                "MCUboot erases it at the next reset"
            )
        return Readback(tuple(slots), tuple(problems))
    if runs.number != 0:
        problems.append(
            f"the new image is in the {runs.name} slot, not in the primary that MCUboot runs"
        )
    if len(slots) == 2:
        pending = decide_swap(slots[0].trailer, slots[1].trailer)
        if pending != SwapType.NONE:
            problems.append(
                f"the trailers ask MCUboot for a {pending.name.lower()} swap at the next reset"
            )
    primary = slots[0].trailer
    if mode in SWAP_MODES and primary.magic == Magic.GOOD and primary.image_ok != Flag.SET:
        # A swap left the trailer: image_ok unset means not confirmed (a programmer-flashed
        # primary has no magic and nothing to revert to).
        problems.append(
            f"the primary trailer's image_ok is not set ({primary.describe()}): the image is "
            "not confirmed"
        )
    return Readback(tuple(slots), tuple(problems))
