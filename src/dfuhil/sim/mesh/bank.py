"""Installing a banked image (the SDK's dfu_bank.c), as the bootloader does it after a reset.

A BANK entry walks through states by clearing bits, so a power cut at any point resumes where
it stopped: IDLE 0xFF (stored by the target) -> FLASH_FW 0xFE (the application marks this before
resetting into the bootloader) -> the bootloader clears the intact flag, erases the destination
and copies the bank -> FLASH_META 0xFC -> VERSION with the new fwid, SIGNATURE_* if signed and
FLAGS with the part intact again -> FLASHED 0xF8 -> the entry is invalidated.

The destination is the start of the part's device page segment. For the application that is
what the bootloader copies itself; SoftDevice and bootloader banks are copied by the MBR on a
real chip (SD_MBR_COMMAND_COPY_SD / COPY_BL), which here is the same copy.
"""

from __future__ import annotations

import dataclasses
import struct

from dfuhil.formats.devpage import Bank, EntryType
from dfuhil.formats.meshdfu import DfuType
from dfuhil.sim.mesh import fwid as ids
from dfuhil.sim.mesh.bootinfo import (
    BANK_STATE_FLASH_FW,
    BANK_STATE_FLASH_META,
    BANK_STATE_FLASHED,
    BANK_STATE_IDLE,
    BootInfo,
    bank_payload,
)
from dfuhil.sim.mesh.dfu_core import SEGMENT_ENTRY, SIGNATURE_ENTRY, with_fwid
from dfuhil.sim.mesh.flashport import FlashPort

BANK_ORDER = (DfuType.SOFTDEVICE, DfuType.BOOTLOADER, DfuType.APPLICATION)  # dfu_bank_scan


def find_bank(info: BootInfo, dfu_type: int) -> Bank | None:
    page = info.page()
    if page is None:
        return None
    return next((b for b in page.banks if b.dfu_type == dfu_type), None)


def set_state(info: BootInfo, bank: Bank, state: int) -> Bank:
    """Move a bank entry to ``state`` in place (each state only clears bits)."""
    payload = bank_payload(
        bank.address,
        bank.length,
        bank.fwid_bytes,
        bank.signature if bank.has_signature else None,
        state,
    )
    info.overwrite(bank.type, payload)
    return dataclasses.replace(bank, state=state)


def resume_started(info: BootInfo, flash: FlashPort) -> bool:
    """dfu_bank_scan: finish a bank whose installation has begun; True if there was one."""
    for dfu_type in BANK_ORDER:
        bank = find_bank(info, dfu_type)
        if bank is not None and bank.state != BANK_STATE_IDLE:
            install(info, flash, bank)
            return True
    return False


def install(info: BootInfo, flash: FlashPort, bank: Bank) -> None:
    """flash_bank_entry: run the bank through every remaining state."""
    dfu_type = DfuType(bank.dfu_type)
    if bank.state == BANK_STATE_IDLE:
        bank = set_state(info, bank, BANK_STATE_FLASH_FW)
    if bank.state == BANK_STATE_FLASH_FW:
        _copy(info, flash, bank, dfu_type)
        bank = set_state(info, bank, BANK_STATE_FLASH_META)
    if bank.state == BANK_STATE_FLASH_META:
        _write_metadata(info, bank, dfu_type)
        bank = set_state(info, bank, BANK_STATE_FLASHED)
    info.invalidate(bank.type)


def _copy(info: BootInfo, flash: FlashPort, bank: Bank, dfu_type: DfuType) -> None:
    page = info.page()
    segment = page.segment(SEGMENT_ENTRY[dfu_type]) if page is not None else None
    if segment is None:
        raise ValueError(f"no {SEGMENT_ENTRY[dfu_type].name} entry to install a bank to")
    destination = segment[0]
    # The part is not intact while it is being rewritten.
    info.overwrite(EntryType.FLAGS, struct.pack("<I", 0xFFFFFFFF & ~ids.INTACT_FLAG[dfu_type]))
    image = flash.read(bank.address, bank.length)
    flash.erase(destination, bank.length)
    flash.write(destination, image)


def _write_metadata(info: BootInfo, bank: Bank, dfu_type: DfuType) -> None:
    page = info.page()
    if page is None or page.version is None:
        raise ValueError("device page has no VERSION entry")
    version = with_fwid(page.version, dfu_type, ids.from_union(dfu_type, bank.fwid_bytes))
    flags = (page.flags if page.flags is not None else 0xFFFFFFFF) | ids.INTACT_FLAG[dfu_type]
    info.put(EntryType.VERSION, version.encode())
    if bank.has_signature:
        info.put(SIGNATURE_ENTRY[dfu_type], bank.signature)
    info.put(EntryType.FLAGS, struct.pack("<I", flags))
