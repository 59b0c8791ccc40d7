"""Mesh DFU device page ("bootloader info" page) builder.

The mesh bootloader refuses to run without FLAGS, VERSION and the three SEGMENT entries on the
last flash page, and a board flashed with a page that differs from what Nordic's
tools/dfu/device_page_generator.py writes would not be the board the product ships on. So this
module reproduces that generator byte for byte (shared/specs/mesh-dfu.md section 1.4): metadata
``04 01 08 08``, then [PUBLIC_KEY], SEGMENT_APP, SEGMENT_SD, SEGMENT_BL, VERSION, FLAGS and the
``FF FF FF 7F`` terminator.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from intelhex import IntelHex

from dfuhil.errors import InputError, Problem
from dfuhil.formats.chips import Chip
from dfuhil.formats.softdevice import CHIP_SOFTDEVICES, MBR_SIZE, SoftDevice

WORD_SIZE = 4
# metadata_len=4, entry_header_length=1 word, entry_len_length=8, entry_type_length=8 bits.
METADATA = bytes([4, 1, 8, 8])
PUBLIC_KEY_LENGTH = 64  # P-256 Qx || Qy, 32 bytes each, big-endian
MBR_SCRATCH_SIZE = 4 * 1024  # nRF52 MBR parameter page, taken from the top of the app area
FLAGS_ALL_SET = 0xFFFFFFFF
SD_FLASH_START = MBR_SIZE  # softdevices.json "flash_start" for every SoftDevice


class EntryType(IntEnum):
    """Device page entry types (the firmware's bl_info_type_t)."""

    INVALID = 0x0000
    ECDSA_PUBLIC_KEY = 0x0001
    VERSION = 0x0002
    JOURNAL = 0x0003
    FLAGS = 0x0004
    SEGMENT_SD = 0x0010
    SEGMENT_BL = 0x0011
    SEGMENT_APP = 0x0012
    LAST = 0x7FFF


TERMINATOR = struct.pack("<HH", 0xFFFF, EntryType.LAST)

# Field widths of the VERSION entry ("<HBBIHI"): what struct.pack would otherwise reject late.
_CONFIG_FIELD_BITS = {
    "bootloader_id": 8,
    "bootloader_version": 8,
    "company_id": 32,
    "application_id": 16,
    "application_version": 32,
}


@dataclass(frozen=True)
class BootloaderConfig:
    """The SDK's ``bootloader_config`` JSON (bootloader_config_default.json values by default)."""

    bootloader_id: int = 1
    bootloader_version: int = 1
    company_id: int = 89
    application_id: int = 1
    application_version: int = 1
    public_key: bytes | None = None  # 64 bytes Qx || Qy; present => signed transfers only

    def __post_init__(self) -> None:
        problems: list[Problem] = []
        for name, bits in _CONFIG_FIELD_BITS.items():
            value = getattr(self, name)
            if not 0 <= value < 1 << bits:
                problems.append(
                    Problem("bootloader config", None, name, f"{value} does not fit in {bits} bits")
                )
        if self.public_key and len(self.public_key) != PUBLIC_KEY_LENGTH:
            problems.append(
                Problem(
                    "bootloader config",
                    None,
                    "public_key",
                    f"{len(self.public_key)} bytes, expected {PUBLIC_KEY_LENGTH} (Qx || Qy)",
                )
            )
        if problems:
            raise InputError(problems)


def encode_entry(entry_type: int, payload: bytes) -> bytes:
    """One entry: ``{u16 len_words incl. header, u16 type}`` + payload padded with 0xFF."""
    padded = payload + b"\xff" * (-len(payload) % WORD_SIZE)
    return struct.pack("<HH", len(padded) // WORD_SIZE + 1, entry_type) + padded


def mbr_scratch_size(chip: Chip) -> int:
    """The generator reserves the MBR parameter page for names starting "nrf52" only."""
    return MBR_SCRATCH_SIZE if chip.name.lower().startswith("nrf52") else 0


def app_segment(chip: Chip, sd: SoftDevice) -> tuple[int, int]:
    """(start, length) of the application area, as deviceutil.get_application_limits has it."""
    start = sd.flash_size
    return start, chip.mesh_bootloader_start - start - mbr_scratch_size(chip)


def _check_pairing(chip: Chip, sd: SoftDevice) -> None:
    allowed = CHIP_SOFTDEVICES.get(chip.name, ())
    if sd.name not in allowed:
        raise InputError(
            Problem(
                "",
                None,
                "softdevice",
                f"{sd.name} is not a SoftDevice for {chip.name} (allowed: {', '.join(allowed)})",
            )
        )
    if app_segment(chip, sd)[1] <= 0:
        raise InputError(f"{sd.name} leaves no application space on {chip.name}")


def device_page_entries(chip: Chip, sd: SoftDevice, config: BootloaderConfig) -> bytes:
    """The device page content: metadata, entries in the generator's order, terminator."""
    _check_pairing(chip, sd)
    entries: list[bytes] = []
    if config.public_key:
        entries.append(encode_entry(EntryType.ECDSA_PUBLIC_KEY, config.public_key))
    entries.append(encode_entry(EntryType.SEGMENT_APP, struct.pack("<II", *app_segment(chip, sd))))
    entries.append(
        encode_entry(EntryType.SEGMENT_SD, struct.pack("<II", SD_FLASH_START, sd.flash_size))
    )
    entries.append(
        encode_entry(
            EntryType.SEGMENT_BL,
            struct.pack("<II", chip.mesh_bootloader_start, chip.mesh_bootloader_size),
        )
    )
    version = struct.pack(
        "<HBBIHI",
        sd.fwid,
        config.bootloader_id,
        config.bootloader_version,
        config.company_id,
        config.application_id,
        config.application_version,
    )
    entries.append(encode_entry(EntryType.VERSION, version))
    entries.append(encode_entry(EntryType.FLAGS, struct.pack("<I", FLAGS_ALL_SET)))
    return METADATA + b"".join(entries) + TERMINATOR


def device_page_hex(chip: Chip, sd: SoftDevice, config: BootloaderConfig) -> IntelHex:
    """The page as the generator's hex file holds it: only these bytes, at the last flash page."""
    ih = IntelHex()
    ih.frombytes(device_page_entries(chip, sd, config), offset=chip.device_page_address)
    return ih
