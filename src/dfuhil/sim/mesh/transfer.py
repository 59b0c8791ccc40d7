"""One transfer's image bytes in flash: where each segment goes and which ones are missing.

This is dfu_transfer_mesh.c's job. Segment k of a transfer starting at ``start`` belongs at
``start`` (k = 1) or ``(start & ~0xF) + (k - 1) * 16``; it is written once, at the same offset in
the bank (the bank is the destination itself in direct mode). NOR flash can be written only
once per erase, so a segment that is already there is refused, never rewritten.

Which segments are missing is a 64-bit window below the highest segment seen so far. A segment
that would push a still-missing one out of the window ends the transfer with
DFU_END_ERROR_PACKET_LOSS: the node can no longer know what it lacks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

from dfuhil.formats.meshdfu import SEGMENT_SIZE
from dfuhil.sim.mesh.flashport import FlashPort

WINDOW = 64  # MISSING_BITFIELD_WIDTH


def segment_address(segment: int, start: int) -> int:
    """addr_from_seg: the first segment starts at ``start``, the others on 16-byte bounds."""
    if segment == 1:
        return start
    return (start & ~0xF) + (segment - 1) * SEGMENT_SIZE


def address_segment(address: int, start: int) -> int:
    """ADDR_SEGMENT: the segment an address belongs to."""
    return ((address - (start & ~0xF)) >> 4) + 1


class Outcome(Enum):
    """What happened to one segment's data."""

    STORED = "stored"
    HAVE_IT = "already have it"
    BAD_ADDRESS = "outside the transfer or misaligned"
    BAD_LENGTH = "not a whole number of words, or more than a segment"
    PACKET_LOSS = "a missing segment fell out of the window"
    ENDED = "no transfer in progress"


@dataclass
class Transfer:
    """The flash side of a transfer between dfu_transfer_start() and dfu_transfer_end()."""

    flash: FlashPort
    start: int
    bank: int
    size: int  # bytes

    def __post_init__(self) -> None:
        self.segment_max = 0
        self.missing = 0  # bit i set: segment (segment_max - i) is missing
        self.active = True

    @classmethod
    def begin(cls, flash: FlashPort, start: int, bank: int, size: int) -> Transfer | None:
        """Erase the bank's pages and start; None if start or bank is not page aligned."""
        if start % flash.page_size or bank % flash.page_size:
            return None
        flash.erase(bank, size)
        return cls(flash, start, bank, size)

    def is_missing(self, segment: int) -> bool:
        if segment > self.segment_max:
            return True
        if self.segment_max - segment > WINDOW:
            return False
        return bool((1 << (self.segment_max - segment)) & self.missing)

    def store(self, address: int, data: bytes) -> Outcome:
        """dfu_transfer_data: write one segment's bytes at its place in the bank."""
        if not self.active:
            return Outcome.ENDED
        if address % SEGMENT_SIZE or address < self.start or address + len(data) > self.end:
            return Outcome.BAD_ADDRESS
        if len(data) > SEGMENT_SIZE or len(data) % 4:
            return Outcome.BAD_LENGTH
        segment = address_segment(address, self.start)
        if not self.is_missing(segment):
            return Outcome.HAVE_IT
        if segment > self.segment_max:
            shift = segment - self.segment_max
            if shift > WINDOW or self.missing >> (WINDOW - shift):
                self.active = False
                return Outcome.PACKET_LOSS
            skipped = (1 << shift) - 1
            self.missing = ((self.missing << shift) | skipped) & ~1 & ((1 << WINDOW) - 1)
            self.segment_max = segment
        else:
            self.missing &= ~(1 << (self.segment_max - segment))
        self.flash.write(self.bank + (address - self.start), data)
        return Outcome.STORED

    def held(self, segment: int) -> bytes | None:
        """dfu_transfer_has_entry: the segment's 16 bytes from the bank, if we have it."""
        if not self.active or segment > self.segment_max or self.is_missing(segment):
            return None
        offset = segment_address(segment, self.start) - self.start
        return self.flash.read(self.bank + offset, SEGMENT_SIZE)

    def oldest_missing(self, not_before: int) -> int | None:
        """The oldest missing segment at or after address ``not_before``."""
        if not self.active:
            return None
        for i in range(WINDOW - 1, -1, -1):
            if self.missing & (1 << i):
                segment = self.segment_max - i
                if segment_address(segment, self.start) >= not_before:
                    return segment
        return None

    def image(self) -> bytes:
        """The received bytes as they sit in the bank (what the signature covers)."""
        return self.flash.read(self.bank, self.size)

    def sha256(self) -> bytes:
        return hashlib.sha256(self.image()).digest()

    @property
    def end(self) -> int:
        return self.start + self.size

    def finish(self) -> None:
        self.active = False
