"""A flash partition as MCUboot's ``flash_area`` sees it: offsets from the partition start.

Every flash operation of the virtual MCUboot goes through here and from here only through the
firmware context's NVMC calls, so a power cut injected at the Nth operation lands exactly where
it would on the chip. Writes follow MCUboot's simulator rules (spec §7): aligned to the write
size, a whole number of write units, and never onto a location not erased since its last write
(a violation is a bug of this plug-in, raised as :class:`FlashMisuse`). The one exception is
a page a power cut left torn: MCUboot checks nothing before ``flash_area_write``, so when a
resumed step writes onto a half-written word (a torn magic rewritten, say), NOR ANDs the
bits in, as on the chip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dfuhil.formats.mcuboot_trailer import (
    TrailerField,
    TrailerLayout,
    TrailerState,
    field_write,
    read_trailer,
)

BUF_SZ = 1024  # boot_copy_region's buffer: one flash write per KiB copied
ERASED = 0xFF


class FlashPort(Protocol):
    """What the bootloader needs from the chip (FirmwareContext provides exactly this)."""

    def read(self, address: int, length: int) -> bytes: ...

    def flash_write(self, address: int, data: bytes) -> None: ...

    def flash_erase_page(self, address: int) -> None: ...

    def flash_torn(self, address: int, length: int) -> bool: ...


class FlashMisuse(RuntimeError):
    """The plug-in tried what MCUboot never does (unaligned or non-erased write)."""


@dataclass(frozen=True)
class FlashArea:
    port: FlashPort
    name: str  # "primary", "secondary", "scratch"
    start: int
    size: int
    sector_size: int
    write_size: int
    layout: TrailerLayout

    @property
    def sectors(self) -> int:
        return self.size // self.sector_size

    def read(self, off: int, length: int) -> bytes:
        self._check(off, length)
        return self.port.read(self.start + off, length)

    def write(self, off: int, data: bytes, *, unerased_tail: int = 0) -> None:
        """``flash_area_write``. ``unerased_tail``: that many last bytes may land on flash
        that is not erased (NOR ANDs them in), for the one place MCUboot does so."""
        self._check(off, len(data))
        if off % self.write_size or len(data) % self.write_size:
            raise FlashMisuse(f"{self.name}: write 0x{off:X}+{len(data)} is not write-aligned")
        checked = len(data) - unerased_tail
        if self.read(off, checked).count(ERASED) != checked and not self.port.flash_torn(
            self.start + off, checked
        ):
            raise FlashMisuse(f"{self.name}: write at 0x{off:X} onto flash that is not erased")
        self.port.flash_write(self.start + off, data)

    def erase(self, off: int, length: int, *, backwards: bool = False) -> None:
        """``boot_erase_region``: every sector touching ``[off, off + length)``."""
        if length <= 0:
            return
        self._check(off, length)
        first = off // self.sector_size
        last = (off + length - 1) // self.sector_size
        order = range(last, first - 1, -1) if backwards else range(first, last + 1)
        for sector in order:
            self.port.flash_erase_page(self.start + sector * self.sector_size)

    def scramble(self) -> None:
        """``flash_area_erase(fap, 0, size)`` (v2.1.0's refusals): the whole area, in order."""
        self.erase(0, self.size)

    def scramble_trailer_sectors(self) -> None:
        """``swap_erase_trailer_sectors`` (swap_misc.c:34-80): the sectors holding
        ``boot_trailer_sz``, back to front."""
        off = (self.size - self.layout.size) // self.sector_size * self.sector_size
        self.erase(off, self.size - off, backwards=True)

    def copy_from(
        self, src: FlashArea, src_off: int, dst_off: int, length: int, *, unerased_tail: int = 0
    ) -> None:
        """``boot_copy_region``: read a buffer, write it, one KiB at a time."""
        done = 0
        while done < length:
            chunk = min(BUF_SZ, length - done)
            tail = min(chunk, unerased_tail) if done + chunk == length else 0
            self.write(dst_off + done, src.read(src_off + done, chunk), unerased_tail=tail)
            done += chunk

    # --- trailer -------------------------------------------------------------------------------

    def trailer(self) -> TrailerState:
        return read_trailer(self.port.read, self.start, self.layout)

    def write_field(self, field: TrailerField, value: int | bytes = 0) -> None:
        off, data = field_write(self.layout, field, value)
        self.write(off, data)

    def write_status(self, off: int, state: int) -> None:
        """One swap-status record: the state byte padded to the write size."""
        self.write(off, bytes([state]) + bytes([ERASED]) * (self.write_size - 1))

    def status_byte(self, off: int) -> int:
        return self.read(off, 1)[0]

    def _check(self, off: int, length: int) -> None:
        if off < 0 or length < 0 or off + length > self.size:
            raise FlashMisuse(
                f"{self.name}: 0x{off:X}+{length} is outside the 0x{self.size:X} area"
            )
