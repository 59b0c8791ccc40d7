"""The device page as the mesh bootloader writes it (bootloader_info.c), through flash calls only.

Reading uses the parser of formats/devpage.py, so the simulated firmware and dfuhil's own tools
agree on what a page says. Writing follows the firmware's rules, which exist because the page is
NOR flash that can only clear bits until erased:

* put: the new entry goes where the terminator was, with a fresh terminator after it (a header
  can be written over ``FF FF FF 7F`` because LAST = 0x7FFF has every bit a real type has); then
  the old entry of that type gets ``{0xFFFF, 0x0000}`` written over its header: type INVALID,
  length kept so readers can skip it.
* overwrite: rewrite an entry in place; only bits that go 1 -> 0 change (FLAGS, bank state).
* compaction (bootloader_info_reset): copy the live entries to the backup page, erase the device
  page, copy them back. It runs after a transfer is finalised and whenever fewer than
  HEADER + INFO_ENTRY_MAX_LEN bytes are left after a put.
* init: a device page without a terminator (power lost during compaction) is restored from the
  backup page.
"""

from __future__ import annotations

import struct

from dfuhil.formats.devpage import (
    HEADER_SIZE,
    TERMINATOR,
    DevicePage,
    Entry,
    EntryType,
    encode_entry,
)
from dfuhil.sim.mesh.flashport import FlashPort

INFO_ENTRY_MAX_LEN = 0x54  # bootloader_info.h: the largest entry (a signed BANK)
INVALIDATED_HEADER = struct.pack("<HH", 0xFFFF, EntryType.INVALID)
BANK_HEAD = struct.Struct("<II10sBB")  # bank address, length, fwid union, has_signature, state
BANK_STATE_IDLE = 0xFF
BANK_STATE_FLASH_FW = 0xFE
BANK_STATE_FLASH_META = 0xFC
BANK_STATE_FLASHED = 0xF8


class DevicePageError(Exception):
    """The page cannot take what the firmware wants to write (no terminator, no room)."""


def bank_payload(
    address: int, length: int, fwid_union: bytes, signature: bytes | None, state: int
) -> bytes:
    """A BANK_* entry's payload: 20 bytes, or 84 with the signature."""
    head = BANK_HEAD.pack(address, length, fwid_union, 1 if signature else 0, state)
    return head + (signature or b"")


class BootInfo:
    """Read and write one board's device page (and its backup page)."""

    def __init__(self, flash: FlashPort, address: int, backup_address: int) -> None:
        self.flash = flash
        self.address = address
        self.backup_address = backup_address
        self.page_size = flash.page_size

    # --- reading ----------------------------------------------------------------------------------

    def page(self) -> DevicePage | None:
        """The device page as it is now (not the backup), None when it is erased."""
        return DevicePage.parse(self.flash.read(self.address, self.page_size), self.address, None)

    def entry(self, entry_type: int) -> Entry | None:
        page = self.page()
        return page.entry(entry_type) if page is not None else None

    # --- boot -------------------------------------------------------------------------------------

    def init(self) -> bool:
        """bootloader_info_init: make sure the device page is terminated; False if it cannot be."""
        page = self.page()
        if page is not None and page.terminated:
            return True
        backup_bytes = self.flash.read(self.backup_address, self.page_size)
        backup = DevicePage.parse(backup_bytes, self.backup_address, None)
        if backup is None or not backup.terminated:
            return False
        self.flash.erase(self.address, self.page_size)
        self.flash.write(self.address, backup_bytes[: backup.end_offset + HEADER_SIZE])
        return True

    # --- writing ----------------------------------------------------------------------------------

    def put(self, entry_type: int, payload: bytes) -> None:
        """Append a new entry of ``entry_type``, then invalidate the old one."""
        encoded = encode_entry(entry_type, payload)
        page = self._writable()
        if page.end_offset + len(encoded) + HEADER_SIZE >= self.page_size:
            self.compact()
            page = self._writable()
            if page.end_offset + len(encoded) + HEADER_SIZE >= self.page_size:
                raise DevicePageError(f"no room for a {len(encoded)}-byte entry")
        old = page.entry(entry_type)
        self.flash.write(self.address + page.end_offset, encoded + TERMINATOR)
        if old is not None:
            self.flash.write(self.address + old.offset, INVALIDATED_HEADER)
        end = page.end_offset + len(encoded)
        if end + HEADER_SIZE + INFO_ENTRY_MAX_LEN >= self.page_size:
            self.compact()

    def overwrite(self, entry_type: int, payload: bytes) -> bool:
        """Rewrite an existing entry in place (NOR: only clears bits); False if there is none."""
        page = self._writable()
        old = page.entry(entry_type)
        if old is None:
            return False
        room = old.size - HEADER_SIZE
        body = payload[:room].ljust(room, b"\xff")
        self.flash.write(self.address + old.offset, encode_entry(entry_type, body))
        return True

    def invalidate(self, entry_type: int) -> bool:
        page = self._writable()
        old = page.entry(entry_type)
        if old is None:
            return False
        self.flash.write(self.address + old.offset, INVALIDATED_HEADER)
        return True

    def compact(self) -> None:
        """bootloader_info_reset: live entries to the backup page and back, dead ones dropped."""
        live = self._live_bytes(self._writable())
        self._rewrite(self.backup_address, live)
        self._rewrite(self.address, live)

    # --- helpers ----------------------------------------------------------------------------------

    def _writable(self) -> DevicePage:
        page = self.page()
        if page is None or not page.terminated:
            raise DevicePageError(f"device page at 0x{self.address:X} has no end-of-entries mark")
        return page

    @staticmethod
    def _live_bytes(page: DevicePage) -> bytes:
        parts = [page.metadata]
        for entry in page.entries:
            if entry.valid:
                parts.append(struct.pack("<HH", entry.length_words, entry.type) + entry.payload)
        parts.append(TERMINATOR)
        return b"".join(parts)

    def _rewrite(self, address: int, content: bytes) -> None:
        self.flash.erase(address, self.page_size)
        self.flash.write(address, content)
