"""Device page builder against shared/specs/mesh-dfu.md section 1.4 (device_page_generator.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ecdsa
import pytest

from dfuhil.errors import InputError
from dfuhil.formats.chips import CHIPS, Chip
from dfuhil.formats.devpage import (
    FLAG_APP_INTACT,
    METADATA,
    TERMINATOR,
    Bank,
    BootloaderConfig,
    DevicePage,
    EntryType,
    Fwid,
    device_page_entries,
    device_page_hex,
    load_bootloader_config,
    read_device_page,
)
from dfuhil.formats.devpage import describe as describe_page
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


# --- reading pages back (bootloader_info.c semantics) -----------------------------------------

PAGE_ADDRESS = 0x7F000
PAGE_SIZE = 4096
SPEC_OFFSETS = [0x04, 0x10, 0x1C, 0x28, 0x3C]  # entry headers in the worked example
SPEC_TERMINATOR = 0x44


def erased_page(content: bytes) -> bytearray:
    return bytearray(content + b"\xff" * (PAGE_SIZE - len(content)))


def nor_write(page: bytearray, offset: int, data: bytes) -> None:
    """Program NOR flash: a write can only clear bits (new = old AND data)."""
    for i, byte in enumerate(data):
        page[offset + i] &= byte


def p256_public_key() -> bytes:
    return ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).get_verifying_key().to_string()


def test_parse_round_trips_the_worked_example() -> None:
    page = DevicePage.parse(bytes(erased_page(SPEC_NRF52832_S132_7_2_0)), PAGE_ADDRESS)
    assert page is not None
    assert page.terminated and not page.from_backup
    assert page.address == PAGE_ADDRESS and page.page_size == PAGE_SIZE
    assert [e.offset for e in page.entries] == SPEC_OFFSETS
    assert [e.type for e in page.entries] == [0x12, 0x10, 0x11, 0x02, 0x04]
    assert [e.length_words for e in page.entries] == [3, 3, 3, 5, 2]
    assert page.end_offset == SPEC_TERMINATOR
    assert page.segment(EntryType.SEGMENT_APP) == (0x26000, 0x51000)
    assert page.segment(EntryType.SEGMENT_SD) == (0x1000, 0x26000)
    assert page.segment(EntryType.SEGMENT_BL) == (0x78000, 0x6000)
    assert page.version == Fwid(
        sd=0x0101, bl_id=1, bl_version=1, company_id=89, app_id=1, app_version=1
    )
    assert page.flags == 0xFFFFFFFF
    assert page.public_key is None
    assert page.banks == []
    assert page.missing_required() == []
    assert page.free_bytes == PAGE_SIZE - 72


def test_parse_round_trips_builder_output_with_a_key() -> None:
    key = p256_public_key()
    config = BootloaderConfig(
        bootloader_id=7,
        bootloader_version=9,
        company_id=0xFEDCBA98,
        application_id=0x4321,
        application_version=0x00010203,
        public_key=key,
    )
    sd = SOFTDEVICES["s140_7.2.0"]
    built = device_page_entries(chip("nRF52840_xxAA"), sd, config)
    page = DevicePage.parse(bytes(erased_page(built)), 0xFF000)
    assert page is not None and page.terminated
    assert page.public_key == key
    assert page.entries[0].length_words == 17
    assert page.version == Fwid(0x0100, 7, 9, 0xFEDCBA98, 0x4321, 0x00010203)
    assert page.segment(EntryType.SEGMENT_APP) == (0x27000, 0xD0000)
    assert page.end_offset == len(built) - 4


def test_fwid_encode_decode_matches_the_version_layout() -> None:
    fwid = Fwid(
        sd=0x00CB,
        bl_id=2,
        bl_version=3,
        company_id=0x12345678,
        app_id=0xABCD,
        app_version=0x01020304,
    )
    raw = bytes.fromhex("CB00 02 03 78563412 CDAB 04030201")
    assert fwid.encode() == raw
    assert Fwid.decode(raw + b"\xff\xff") == fwid
    with pytest.raises(InputError, match="VERSION: 13 bytes, expected 14"):
        Fwid.decode(raw[:13])


def test_appended_version_after_an_invalidated_one() -> None:
    """What the bootloader does after an update: append, then clear the old entry's type."""
    flash = erased_page(SPEC_NRF52832_S132_7_2_0)
    new_version = bytes.fromhex("05 00 02 000101 01 01 59000000 0100 02000000 FFFF")
    nor_write(flash, SPEC_TERMINATOR, new_version + bytes.fromhex("FF FF FF 7F"))
    nor_write(flash, 0x28, bytes.fromhex("FF FF 00 00"))  # m_invalid_header {0xFFFF, 0x0000}
    page = DevicePage.parse(bytes(flash), PAGE_ADDRESS)
    assert page is not None and page.terminated
    dead = page.entries[3]
    assert (dead.offset, dead.type, dead.length_words, dead.valid) == (0x28, 0, 5, False)
    found = page.entry(EntryType.VERSION)
    assert found is not None and found.offset == SPEC_TERMINATOR
    assert page.version is not None and page.version.app_version == 2
    assert page.end_offset == SPEC_TERMINATOR + 20
    assert page.missing_required() == []
    assert "+0x028 (invalidated, 5 words)" in describe_page(page)


def test_page_without_terminator_uses_the_valid_backup() -> None:
    backup = erased_page(SPEC_NRF52832_S132_7_2_0)
    # Interrupted compaction: metadata and two entries, then erased flash.
    main = erased_page(SPEC_NRF52832_S132_7_2_0[: SPEC_OFFSETS[2]])
    page = DevicePage.parse(bytes(main), PAGE_ADDRESS, bytes(backup))
    assert page is not None
    assert page.from_backup and page.terminated
    assert page.address == PAGE_ADDRESS
    assert [e.offset for e in page.entries] == SPEC_OFFSETS
    assert "restored from the backup page" in describe_page(page)
    alone = DevicePage.parse(bytes(main), PAGE_ADDRESS)
    assert alone is not None
    assert not alone.terminated and not alone.from_backup
    assert alone.end_offset == SPEC_OFFSETS[2]
    assert alone.missing_required() == ["FLAGS", "VERSION", "SEGMENT_BL"]
    assert "NOT TERMINATED" in describe_page(alone)


def test_terminated_main_page_wins_over_the_backup() -> None:
    main = erased_page(SPEC_NRF52832_S132_7_2_0)
    other = BootloaderConfig(application_version=5)
    backup = erased_page(
        device_page_entries(chip("nRF52832_xxAA"), SOFTDEVICES["s132_7.2.0"], other)
    )
    page = DevicePage.parse(bytes(main), PAGE_ADDRESS, bytes(backup))
    assert page is not None and not page.from_backup
    assert page.version is not None and page.version.app_version == 1


def test_erased_pages_give_none() -> None:
    erased = b"\xff" * PAGE_SIZE
    assert DevicePage.parse(erased, PAGE_ADDRESS) is None
    assert DevicePage.parse(erased, PAGE_ADDRESS, erased) is None
    backup_only = DevicePage.parse(
        erased, PAGE_ADDRESS, bytes(erased_page(SPEC_NRF52832_S132_7_2_0))
    )
    assert backup_only is not None and backup_only.from_backup and backup_only.terminated


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("00 00 02 00", "len 0"),
        ("00 04 02 00", "len 0x400 words = the whole page"),
        ("FF FF 02 00", "len 0xFFFF"),
    ],
)
def test_corrupt_length_ends_the_walk_without_raising(header: str, why: str) -> None:
    flash = erased_page(SPEC_NRF52832_S132_7_2_0)
    flash[0x28:0x2C] = bytes.fromhex(header)  # the VERSION header
    page = DevicePage.parse(bytes(flash), PAGE_ADDRESS)
    assert page is not None, why
    assert not page.terminated
    assert page.end_offset == 0x28
    assert [e.offset for e in page.entries] == SPEC_OFFSETS[:3]
    assert page.missing_required() == ["FLAGS", "VERSION"]


def test_walk_stops_at_the_page_end_without_a_terminator() -> None:
    # Entries of 0x3FC bytes fill the page exactly after the metadata: no room for a header.
    flash = bytearray(METADATA + struct.pack("<HH", 0xFF, EntryType.TEST) + b"\x00" * 0x3F8)
    flash += b"\x00" * (PAGE_SIZE - len(flash))
    for offset in range(0x400, PAGE_SIZE, 0x3FC):
        if offset + 4 <= PAGE_SIZE:
            flash[offset : offset + 4] = struct.pack("<HH", 0xFF, EntryType.TEST)
    page = DevicePage.parse(bytes(flash), PAGE_ADDRESS)
    assert page is not None and not page.terminated
    assert all(e.type == EntryType.TEST for e in page.entries)
    assert page.end_offset <= PAGE_SIZE


UNSIGNED_BANK = bytes.fromhex(
    "06 00 24 00"  # header: 6 words, BANK_APP
    "00 A0 03 00"  # bank address 0x3A000
    "EC 03 00 00"  # length 1004
    "59 00 00 00 34 12 02 00 00 00"  # fwid union: company 0x59, app id 0x1234, version 2
    "00"  # has_signature
    "FF"  # state IDLE
)
SIGNATURE = bytes(range(0x80, 0xC0))
SIGNED_BANK = (
    bytes.fromhex("16 00 21 0000 00 05 0000 50 02 0001 01 FF FF FF FF FF FF FF FF")
    + bytes.fromhex("01 FC")
    + SIGNATURE
)


def test_bank_entries_unsigned_and_signed() -> None:
    assert len(UNSIGNED_BANK) == 24 and len(SIGNED_BANK) == 88
    flash = erased_page(SPEC_NRF52832_S132_7_2_0[:SPEC_TERMINATOR] + UNSIGNED_BANK + SIGNED_BANK)
    flash[SPEC_TERMINATOR + 112 : SPEC_TERMINATOR + 116] = TERMINATOR
    page = DevicePage.parse(bytes(flash), PAGE_ADDRESS)
    assert page is not None and page.terminated
    app, sd = page.banks
    assert app == Bank(
        type=EntryType.BANK_APP,
        address=0x3A000,
        length=1004,
        fwid_bytes=bytes.fromhex("59000000 3412 02000000"),
        has_signature=False,
        state=0xFF,
        signature=b"",
    )
    assert (app.dfu_type, app.state_name) == (4, "IDLE")
    assert (sd.type, sd.address, sd.length) == (EntryType.BANK_SD, 0x50000, 0x25000)
    assert sd.fwid_bytes[:2] == b"\x01\x01" and sd.has_signature
    assert (sd.state_name, sd.signature) == ("FLASH_META", SIGNATURE)
    text = describe_page(page)
    assert "BANK_APP          bank at 0x3A000, length 0x3EC" in text
    assert f"state FLASH_META, signed {SIGNATURE.hex()}" in text


def test_signature_entry_lookup() -> None:
    entry = bytes.fromhex("11 00 1C 00") + SIGNATURE
    flash = erased_page(SPEC_NRF52832_S132_7_2_0[:SPEC_TERMINATOR] + entry + TERMINATOR)
    page = DevicePage.parse(bytes(flash), PAGE_ADDRESS)
    assert page is not None
    assert page.signature(EntryType.SIGNATURE_APP) == SIGNATURE
    assert page.signature(EntryType.SIGNATURE_SD) is None


def test_missing_required_names_what_the_bootloader_needs() -> None:
    only_app = METADATA + bytes.fromhex("03 00 12 00 00 60 02 00 00 10 05 00") + TERMINATOR
    page = DevicePage.parse(bytes(erased_page(only_app)), PAGE_ADDRESS)
    assert page is not None and page.terminated
    assert page.missing_required() == ["FLAGS", "VERSION", "SEGMENT_SD", "SEGMENT_BL"]
    assert "missing required entries: FLAGS, VERSION, SEGMENT_SD, SEGMENT_BL" in describe_page(page)


def test_read_device_page_reads_page_and_backup_through_the_probe_function() -> None:
    c = chip("nRF51422_xxAC")
    flash = bytearray(b"\xff" * c.flash_size)
    built = device_page_entries(c, SOFTDEVICES["s130_2.0.1"], BootloaderConfig())
    flash[0x3F800 : 0x3F800 + len(built)] = built  # only the backup page holds a page
    reads: list[tuple[int, int]] = []

    def read(address: int, length: int) -> bytes:
        reads.append((address, length))
        return bytes(flash[address : address + length])

    page = read_device_page(read, c)
    assert sorted(reads) == [(0x3F800, 0x400), (0x3FC00, 0x400)]
    assert page is not None and page.from_backup and page.address == 0x3FC00
    assert page.page_size == 0x400
    assert page.segment(EntryType.SEGMENT_APP) == (0x1B000, 0x1F000)


def test_describe_shows_decoded_entries() -> None:
    flash = erased_page(SPEC_NRF52832_S132_7_2_0)
    nor_write(flash, 0x3C + 4, struct.pack("<I", ~FLAG_APP_INTACT & 0xFFFFFFFF))
    page = DevicePage.parse(bytes(flash), PAGE_ADDRESS)
    assert page is not None
    text = describe_page(page)
    assert text.splitlines()[0] == "device page at 0x7F000, 4096 bytes"
    assert "+0x004 SEGMENT_APP       start 0x26000, length 0x51000 (end 0x77000)" in text
    assert "company 0x00000059 (89)" in text
    assert "FLAGS             0xFFFFFFFB (sd_intact=1, bl_intact=1, app_intact=0)" in text
    assert f"free: {PAGE_SIZE - 72} bytes" in text
    assert "missing required entries: none" in text


# --- bootloader_config JSON ---------------------------------------------------------------------

SDK_DEFAULT_JSON = """{
    "bootloader_config": {
        "bootloader_id": 1,
        "bootloader_version": 1,
        "company_id": 89,
        "application_id": 1,
        "application_version": 1
    }
}
"""


def test_sdk_default_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "bootloader_config_default.json"
    path.write_text(SDK_DEFAULT_JSON)
    assert load_bootloader_config(path) == BootloaderConfig()


def test_config_with_public_key(tmp_path: Path) -> None:
    key = p256_public_key()
    document = json.loads(SDK_DEFAULT_JSON)
    document["bootloader_config"]["public_key"] = key.hex()
    path = tmp_path / "signed.json"
    path.write_text(json.dumps(document, indent=4))
    config = load_bootloader_config(path)
    assert config.public_key == key


def config_errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "cfg.json"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_bootloader_config(path)
    prefix = f"{path}:"
    lines = str(caught.value).splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix) :] for line in lines]


def test_readme_field_names_get_a_suggestion(tmp_path: Path) -> None:
    text = SDK_DEFAULT_JSON.replace('"application_id"', '"app_id"').replace(
        '"bootloader_version"', '"bootloader_verison"'
    )
    errors = config_errors(tmp_path, text)
    assert "6: app_id: unknown field; did you mean 'application_id'?" in errors
    assert "4: bootloader_verison: unknown field; did you mean 'bootloader_version'?" in errors
    assert " application_id: missing (the SDK generator requires it)" in errors
    assert " bootloader_version: missing (the SDK generator requires it)" in errors


def test_values_must_be_integers_in_range(tmp_path: Path) -> None:
    text = (
        SDK_DEFAULT_JSON.replace('"company_id": 89', '"company_id": "0x59"')
        .replace('"bootloader_id": 1', '"bootloader_id": 256')
        .replace('"application_version": 1', '"application_version": 1.5')
        .replace('"application_id": 1', '"application_id": true')
    )
    errors = config_errors(tmp_path, text)
    assert '5: company_id: must be a JSON integer, got "0x59"' in errors
    assert "3: bootloader_id: 256 does not fit in 8 bits (0..255)" in errors
    assert "7: application_version: must be a JSON integer, got 1.5" in errors
    assert "6: application_id: must be a JSON integer, got true" in errors


def test_ranges_are_one_source_of_truth(tmp_path: Path) -> None:
    too_big = SDK_DEFAULT_JSON.replace('"application_id": 1', '"application_id": 65536')
    assert config_errors(tmp_path, too_big) == [
        "6: application_id: 65536 does not fit in 16 bits (0..65535)"
    ]
    with pytest.raises(InputError, match=r"application_id: 65536 does not fit in 16 bits \(0"):
        BootloaderConfig(application_id=65536)


def test_bad_public_key_and_structure(tmp_path: Path) -> None:
    short = SDK_DEFAULT_JSON.replace(
        '"application_version": 1', '"application_version": 1,\n        "public_key": "abcd"'
    )
    (error,) = config_errors(tmp_path, short)
    assert error.startswith("8: public_key: must be 128 hex characters")
    assert config_errors(tmp_path, '{"config": {}}') == [
        ' bootloader_config: missing: the file must be {"bootloader_config": '
        '{"bootloader_id": ..., ...}}'
    ]
    (syntax,) = config_errors(
        tmp_path, '{\n  "bootloader_config": {\n    "bootloader_id": 1,\n  }\n}'
    )
    assert syntax.startswith("4: invalid JSON")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.json: bootloader config file not found"):
        load_bootloader_config(tmp_path / "nope.json")
