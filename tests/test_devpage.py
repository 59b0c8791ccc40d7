"""Device page builder against shared/specs/mesh-dfu.md section 1.4 (device_page_generator.py)."""

from __future__ import annotations

import struct

import pytest

from dfuhil.errors import InputError
from dfuhil.formats.chips import CHIPS, Chip
from dfuhil.formats.devpage import (
    BootloaderConfig,
    EntryType,
    device_page_entries,
    device_page_hex,
)
from dfuhil.formats.softdevice import SOFTDEVICES

SPEC_NRF52832_S132_7_2_0 = bytes.fromhex(
    "04 01 08 08"
    "03 00 12 00 00 60 02 00 00 10 05 00"
    "03 00 10 00 00 10 00 00 00 60 02 00"
    "03 00 11 00 00 80 07 00 00 60 00 00"
    "05 00 02 00 01 01 01 01 59 00 00 00 01 00 01 00 00 00 FF FF"
    "02 00 04 00 FF FF FF FF"
    "FF FF FF 7F"
)


def chip(name: str) -> Chip:
    return CHIPS[name.lower()]


def entries(page: bytes) -> list[tuple[int, int, bytes]]:
    """(len_words, type, payload) for each entry up to the terminator."""
    assert page[:4] == bytes([4, 1, 8, 8])
    out: list[tuple[int, int, bytes]] = []
    offset = 4
    while True:
        length, kind = struct.unpack_from("<HH", page, offset)
        if kind == EntryType.LAST:
            assert length == 0xFFFF
            assert offset + 4 == len(page)
            return out
        out.append((length, kind, page[offset + 4 : offset + length * 4]))
        offset += length * 4


def segment(page: bytes, kind: EntryType) -> tuple[int, int]:
    payload = next(p for _, t, p in entries(page) if t == kind)
    start, length = struct.unpack("<II", payload)
    return start, length


def test_worked_example_nrf52832_s132_byte_for_byte() -> None:
    page = device_page_entries(chip("nRF52832_xxAA"), SOFTDEVICES["s132_7.2.0"], BootloaderConfig())
    assert len(SPEC_NRF52832_S132_7_2_0) == 72
    assert page == SPEC_NRF52832_S132_7_2_0


def test_hex_places_page_at_last_flash_page() -> None:
    c = chip("nRF52832_xxAA")
    ih = device_page_hex(c, SOFTDEVICES["s132_7.2.0"], BootloaderConfig())
    assert ih.minaddr() == 0x7F000 == c.device_page_address
    assert ih.tobinstr(start=0x7F000, size=72) == SPEC_NRF52832_S132_7_2_0
    assert ih.maxaddr() == 0x7F000 + 71


def test_nrf51422_s130() -> None:
    c = chip("nRF51422_xxAC")
    page = device_page_entries(c, SOFTDEVICES["s130_2.0.1"], BootloaderConfig())
    assert segment(page, EntryType.SEGMENT_APP) == (0x1B000, 0x1F000)
    assert segment(page, EntryType.SEGMENT_SD) == (0x1000, 0x1B000)
    assert segment(page, EntryType.SEGMENT_BL) == (0x3A000, 0x5800)
    version = next(p for _, t, p in entries(page) if t == EntryType.VERSION)
    assert struct.unpack_from("<H", version)[0] == 0x0087
    assert device_page_hex(c, SOFTDEVICES["s130_2.0.1"], BootloaderConfig()).minaddr() == 0x3FC00


@pytest.mark.parametrize(
    ("sd_name", "app_length"),
    [("s140_6.1.1", 0xD1000), ("s140_7.0.1", 0xD0000), ("s140_7.2.0", 0xD0000)],
)
def test_nrf52840_s140_app_length(sd_name: str, app_length: int) -> None:
    sd = SOFTDEVICES[sd_name]
    page = device_page_entries(chip("nRF52840_xxAA"), sd, BootloaderConfig())
    assert segment(page, EntryType.SEGMENT_APP) == (sd.flash_size, app_length)
    assert segment(page, EntryType.SEGMENT_BL) == (0xF8000, 0x6000)


def test_public_key_entry_first_with_len_17() -> None:
    key = bytes(range(64))
    config = BootloaderConfig(public_key=key)
    page = device_page_entries(chip("nRF52832_xxAA"), SOFTDEVICES["s132_7.2.0"], config)
    parsed = entries(page)
    assert parsed[0] == (17, EntryType.ECDSA_PUBLIC_KEY, key)
    assert [t for _, t, _ in parsed] == [
        EntryType.ECDSA_PUBLIC_KEY,
        EntryType.SEGMENT_APP,
        EntryType.SEGMENT_SD,
        EntryType.SEGMENT_BL,
        EntryType.VERSION,
        EntryType.FLAGS,
    ]
    # Everything after the key entry is the keyless page.
    assert page[:4] + page[4 + 68 :] == SPEC_NRF52832_S132_7_2_0


def test_config_values_land_in_version_entry() -> None:
    config = BootloaderConfig(
        bootloader_id=2,
        bootloader_version=3,
        company_id=0x12345678,
        application_id=0xABCD,
        application_version=0x01020304,
    )
    page = device_page_entries(chip("nRF52833_xxAA"), SOFTDEVICES["s140_7.2.0"], config)
    version = next(p for _, t, p in entries(page) if t == EntryType.VERSION)
    assert version == struct.pack("<HBBIHI", 0x0100, 2, 3, 0x12345678, 0xABCD, 0x01020304) + (
        b"\xff\xff"
    )


def test_bad_config_and_pairing_rejected() -> None:
    with pytest.raises(InputError, match="public_key"):
        BootloaderConfig(public_key=b"\x01" * 63)
    with pytest.raises(InputError, match="bootloader_id"):
        BootloaderConfig(bootloader_id=256)
    with pytest.raises(InputError, match=r"s130_2\.0\.1 is not a SoftDevice for nRF52832_xxAA"):
        device_page_entries(chip("nRF52832_xxAA"), SOFTDEVICES["s130_2.0.1"], BootloaderConfig())
