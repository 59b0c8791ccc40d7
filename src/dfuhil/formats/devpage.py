"""Mesh DFU device page ("bootloader info" page) builder.

The mesh bootloader refuses to run without FLAGS, VERSION and the three SEGMENT entries on the
last flash page, and a board flashed with a page that differs from what Nordic's
tools/dfu/device_page_generator.py writes would not be the board the product ships on. So this
module reproduces that generator byte for byte (shared/specs/mesh-dfu.md section 1.4): metadata
``04 01 08 08``, then [PUBLIC_KEY], SEGMENT_APP, SEGMENT_SD, SEGMENT_BL, VERSION, FLAGS and the
``FF FF FF 7F`` terminator.

It also reads pages back the way the bootloader does (bootloader_info.c): an append-only log of
``{u16 len_words, u16 type}`` entries where dead entries have type 0 and the backup page stands in
when the main page has lost its terminator, so a board's page can be shown and checked.
"""

from __future__ import annotations

import difflib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from intelhex import IntelHex

from dfuhil.errors import InputError, Problem
from dfuhil.formats.chips import Chip
from dfuhil.formats.hexfile import DEVICE_PAGE_BYTES_PER_LINE, hex_text
from dfuhil.formats.meshkeys import public_key_from_hex
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
    SIGNATURE_SD = 0x001A
    SIGNATURE_BL = 0x001B
    SIGNATURE_APP = 0x001C
    SIGNATURE_BL_INFO = 0x001D
    BANK_BASE = 0x0020  # offset only: bank entry type = BANK_BASE + dfu type
    BANK_SD = 0x0021
    BANK_BL = 0x0022
    BANK_APP = 0x0024
    BANK_BL_INFO = 0x0028
    TEST = 0x0100
    LAST = 0x7FFF
    UNUSED = 0xFFFF  # erased flash


TERMINATOR = struct.pack("<HH", 0xFFFF, EntryType.LAST)
HEADER_SIZE = 4
ERASED = 0xFF

# FLAGS entry bits: set = intact. Before rewriting a part the bootloader appends a FLAGS entry
# with that bit cleared (flags &= ~dfu_type), and one with it set once the part is complete.
FLAG_SD_INTACT = 1
FLAG_BL_INTACT = 2
FLAG_APP_INTACT = 4
FLAG_PAGE_IS_INVALID = 8  # defined by the firmware, never used
_FLAG_NAMES = {
    FLAG_SD_INTACT: "sd_intact",
    FLAG_BL_INTACT: "bl_intact",
    FLAG_APP_INTACT: "app_intact",
    FLAG_PAGE_IS_INVALID: "page_is_invalid",
}

# Without these the bootloader ends every transfer with DFU_END_ERROR_INVALID_PERSISTENT_STORAGE.
REQUIRED_ENTRIES = (
    EntryType.FLAGS,
    EntryType.VERSION,
    EntryType.SEGMENT_APP,
    EntryType.SEGMENT_SD,
    EntryType.SEGMENT_BL,
)
SEGMENT_TYPES = (EntryType.SEGMENT_SD, EntryType.SEGMENT_BL, EntryType.SEGMENT_APP)
SIGNATURE_TYPES = (
    EntryType.SIGNATURE_SD,
    EntryType.SIGNATURE_BL,
    EntryType.SIGNATURE_APP,
    EntryType.SIGNATURE_BL_INFO,
)
BANK_TYPES = (EntryType.BANK_SD, EntryType.BANK_BL, EntryType.BANK_APP, EntryType.BANK_BL_INFO)
SIGNATURE_LENGTH = 64
FWID_UNION_LENGTH = 10  # fwid_union_t: the APP variant (company u32, app id u16, version u32)
# bl_info_bank_t with --short-enums (the SDK's build flag): the state enum is one byte.
_BANK_HEAD = struct.Struct(f"<II{FWID_UNION_LENGTH}sBB")  # addr, length, fwid, has_sig, state
BANK_STATES = {0xFF: "IDLE", 0xFE: "FLASH_FW", 0xFC: "FLASH_META", 0xF8: "FLASHED"}

# Field widths of the VERSION entry ("<HBBIHI"): what struct.pack would otherwise reject late.
_CONFIG_FIELD_BITS = {
    "bootloader_id": 8,
    "bootloader_version": 8,
    "company_id": 32,
    "application_id": 16,
    "application_version": 32,
}


def _range_problem(name: str, value: int, file: str, line: int | None) -> Problem | None:
    """The one range check for config fields, shared by the dataclass and the JSON loader."""
    bits = _CONFIG_FIELD_BITS[name]
    if 0 <= value < 1 << bits:
        return None
    return Problem(file, line, name, f"{value} does not fit in {bits} bits (0..{(1 << bits) - 1})")


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
        for name in _CONFIG_FIELD_BITS:
            problem = _range_problem(name, getattr(self, name), "bootloader config", None)
            if problem:
                problems.append(problem)
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


_FWID = struct.Struct("<HBBIHI")


@dataclass(frozen=True)
class Fwid:
    """The VERSION entry (fwid_t): what the bootloader compares an offered transfer against."""

    sd: int
    bl_id: int
    bl_version: int
    company_id: int
    app_id: int
    app_version: int

    SIZE = _FWID.size  # 14; the entry pads it to 16

    def encode(self) -> bytes:
        return _FWID.pack(
            self.sd, self.bl_id, self.bl_version, self.company_id, self.app_id, self.app_version
        )

    @classmethod
    def decode(cls, data: bytes, file: str = "device page") -> Fwid:
        if len(data) < _FWID.size:
            raise InputError(
                Problem(file, None, "VERSION", f"{len(data)} bytes, expected {_FWID.size}")
            )
        return cls(*_FWID.unpack_from(data))


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
    version = Fwid(
        sd=sd.fwid,
        bl_id=config.bootloader_id,
        bl_version=config.bootloader_version,
        company_id=config.company_id,
        app_id=config.application_id,
        app_version=config.application_version,
    )
    entries.append(encode_entry(EntryType.VERSION, version.encode()))
    entries.append(encode_entry(EntryType.FLAGS, struct.pack("<I", FLAGS_ALL_SET)))
    return METADATA + b"".join(entries) + TERMINATOR


def device_page_hex(chip: Chip, sd: SoftDevice, config: BootloaderConfig) -> IntelHex:
    """The page as the generator's hex file holds it: only these bytes, at the last flash page."""
    ih = IntelHex()
    ih.frombytes(device_page_entries(chip, sd, config), offset=chip.device_page_address)
    return ih


def device_page_hex_text(chip: Chip, sd: SoftDevice, config: BootloaderConfig) -> str:
    """The generator's output file, byte for byte (16 data bytes per record, LF line ends)."""
    return hex_text(device_page_hex(chip, sd, config), DEVICE_PAGE_BYTES_PER_LINE)


# --- reading a page back ---------------------------------------------------------------------


def entry_type_name(entry_type: int) -> str:
    try:
        return EntryType(entry_type).name
    except ValueError:
        return f"0x{entry_type:04X}"


@dataclass(frozen=True)
class Entry:
    """One entry as found on the page; ``offset`` is page-relative and points at the header."""

    offset: int
    type: int
    length_words: int  # including the header word
    payload: bytes  # the bytes after the header, padding included

    @property
    def valid(self) -> bool:
        """False for an entry the bootloader invalidated (type rewritten to 0)."""
        return self.type != EntryType.INVALID

    @property
    def size(self) -> int:
        return self.length_words * WORD_SIZE

    @property
    def name(self) -> str:
        return entry_type_name(self.type)


@dataclass(frozen=True)
class Bank:
    """A BANK_* entry: a received image parked in flash, waiting to be copied into place."""

    type: int  # the entry type, BANK_BASE + dfu type
    address: int
    length: int
    fwid_bytes: bytes  # fwid_union_t, 10 bytes; only the type's own part is meaningful
    has_signature: bool
    state: int
    signature: bytes  # 64 bytes when has_signature, else empty

    @property
    def dfu_type(self) -> int:
        return self.type - EntryType.BANK_BASE

    @property
    def state_name(self) -> str:
        return BANK_STATES.get(self.state, f"0x{self.state:02X}")

    @classmethod
    def decode(cls, entry_type: int, payload: bytes) -> Bank | None:
        """None when the payload is too short for what its has_signature byte promises."""
        if len(payload) < _BANK_HEAD.size:
            return None
        address, length, fwid, signed, state = _BANK_HEAD.unpack_from(payload)
        signature = b""
        if signed:
            signature = payload[_BANK_HEAD.size : _BANK_HEAD.size + SIGNATURE_LENGTH]
            if len(signature) != SIGNATURE_LENGTH:
                return None
        return cls(entry_type, address, length, fwid, bool(signed), state, signature)


@dataclass(frozen=True)
class DevicePage:
    """A parsed device page; ``address`` is the main page's, also when restored from backup."""

    address: int
    entries: tuple[Entry, ...]
    end_offset: int  # offset of the terminator, or of where the walk stopped
    terminated: bool
    from_backup: bool
    page_size: int = 4096
    metadata: bytes = METADATA

    @classmethod
    def parse(cls, page: bytes, address: int, backup: bytes | None = None) -> DevicePage | None:
        """Read the page as bootloader_info_init() would; None if neither page is usable.

        The firmware uses the main page if it has a terminator; otherwise it restores the backup
        page, if that one has a terminator. When neither is terminated, the page that is not
        erased is returned (``terminated`` False) so a person can still see what is there.
        """
        main = _walk(page, address, from_backup=False)
        if main is not None and main.terminated:
            return main
        spare = _walk(backup, address, from_backup=True) if backup is not None else None
        if spare is not None and spare.terminated:
            return spare
        return main or spare

    def entry(self, entry_type: int) -> Entry | None:
        """The first valid entry of this type: the one the bootloader's lookup finds."""
        return next((e for e in self.entries if e.valid and e.type == entry_type), None)

    @property
    def version(self) -> Fwid | None:
        found = self.entry(EntryType.VERSION)
        if found is None or len(found.payload) < Fwid.SIZE:
            return None
        return Fwid.decode(found.payload)

    def segment(self, entry_type: int) -> tuple[int, int] | None:
        """(start, length) of SEGMENT_SD/BL/APP."""
        found = self.entry(entry_type)
        if found is None or len(found.payload) < 8:
            return None
        start, length = struct.unpack_from("<II", found.payload)
        return start, length

    @property
    def flags(self) -> int | None:
        found = self.entry(EntryType.FLAGS)
        if found is None or len(found.payload) < WORD_SIZE:
            return None
        value: int = struct.unpack_from("<I", found.payload)[0]
        return value

    @property
    def public_key(self) -> bytes | None:
        found = self.entry(EntryType.ECDSA_PUBLIC_KEY)
        if found is None or len(found.payload) < PUBLIC_KEY_LENGTH:
            return None
        return found.payload[:PUBLIC_KEY_LENGTH]

    def signature(self, entry_type: int) -> bytes | None:
        """The SIGNATURE_SD/BL/APP/BL_INFO payload (64 bytes)."""
        found = self.entry(entry_type)
        if found is None or len(found.payload) < SIGNATURE_LENGTH:
            return None
        return found.payload[:SIGNATURE_LENGTH]

    @property
    def banks(self) -> list[Bank]:
        banks = []
        for e in self.entries:
            if e.valid and e.type in BANK_TYPES:
                bank = Bank.decode(e.type, e.payload)
                if bank is not None:
                    banks.append(bank)
        return banks

    def missing_required(self) -> list[str]:
        """Names of the entries the bootloader needs but cannot find (or cannot read)."""
        readable = {
            EntryType.FLAGS: self.flags is not None,
            EntryType.VERSION: self.version is not None,
            EntryType.SEGMENT_APP: self.segment(EntryType.SEGMENT_APP) is not None,
            EntryType.SEGMENT_SD: self.segment(EntryType.SEGMENT_SD) is not None,
            EntryType.SEGMENT_BL: self.segment(EntryType.SEGMENT_BL) is not None,
        }
        return [t.name for t in REQUIRED_ENTRIES if not readable[t]]

    @property
    def free_bytes(self) -> int:
        """Room left for new entries after the terminator word."""
        return max(0, self.page_size - self.end_offset - HEADER_SIZE)


def _walk(page: bytes, address: int, *, from_backup: bool) -> DevicePage | None:
    """Follow the entry chain; stop (not terminated) on an erased header, a length of 0 or a
    length running past the page. Never loops: every step moves forward by at least a word."""
    if not page or page[0] == ERASED:
        return None
    offset = page[0]  # metadata_len, as the firmware reads it
    entries: list[Entry] = []
    terminated = False
    while offset + HEADER_SIZE <= len(page):
        length, kind = struct.unpack_from("<HH", page, offset)
        if kind == EntryType.LAST:
            terminated = True
            break
        if kind == EntryType.UNUSED or length == 0 or offset + length * WORD_SIZE > len(page):
            break
        entries.append(
            Entry(offset, kind, length, page[offset + HEADER_SIZE : offset + length * 4])
        )
        offset += length * WORD_SIZE
    return DevicePage(
        address=address,
        entries=tuple(entries),
        end_offset=min(offset, len(page)),
        terminated=terminated,
        from_backup=from_backup,
        page_size=len(page),
        metadata=page[:HEADER_SIZE],
    )


def read_device_page(read: Callable[[int, int], bytes], chip: Chip) -> DevicePage | None:
    """Read the device page and its backup through a probe's ``read(address, length)``."""
    page = read(chip.device_page_address, chip.page_size)
    backup = read(chip.device_page_backup_address, chip.page_size)
    return DevicePage.parse(bytes(page), chip.device_page_address, bytes(backup))


# --- describing a page -----------------------------------------------------------------------


def describe_flags(flags: int) -> str:
    """``0xFFFFFFFB (sd_intact=1, bl_intact=1, app_intact=0)``: the bits the bootloader uses."""
    parts = [
        f"{name}={1 if flags & bit else 0}"
        for bit, name in _FLAG_NAMES.items()
        if bit != FLAG_PAGE_IS_INVALID
    ]
    return f"0x{flags:08X} ({', '.join(parts)})"


def _describe_payload(entry: Entry) -> str:
    payload = entry.payload
    kind = entry.type
    short = f"payload too short ({len(payload)} bytes)"
    if kind == EntryType.VERSION:
        if len(payload) < Fwid.SIZE:
            return short
        v = Fwid.decode(payload)
        return (
            f"sd 0x{v.sd:04X}, bootloader id {v.bl_id} version {v.bl_version}, "
            f"company 0x{v.company_id:08X} ({v.company_id}), app id 0x{v.app_id:04X} "
            f"({v.app_id}), app version {v.app_version} (0x{v.app_version:08X})"
        )
    if kind in SEGMENT_TYPES:
        if len(payload) < 8:
            return short
        start, length = struct.unpack_from("<II", payload)
        if kind == EntryType.SEGMENT_SD:  # the generator stores the SD's end address as length
            return f"start 0x{start:X}, length 0x{length:X} (SoftDevice end address)"
        return f"start 0x{start:X}, length 0x{length:X} (end 0x{start + length:X})"
    if kind == EntryType.FLAGS:
        if len(payload) < WORD_SIZE:
            return short
        return describe_flags(struct.unpack_from("<I", payload)[0])
    if kind == EntryType.ECDSA_PUBLIC_KEY:
        if len(payload) < PUBLIC_KEY_LENGTH:
            return short
        key = payload[:PUBLIC_KEY_LENGTH].hex()
        return f"Qx {key[:64]} Qy {key[64:]}"
    if kind in SIGNATURE_TYPES:
        return payload[:SIGNATURE_LENGTH].hex()
    if kind in BANK_TYPES:
        bank = Bank.decode(kind, payload)
        if bank is None:
            return short
        signed = f"signed {bank.signature.hex()}" if bank.has_signature else "unsigned"
        return (
            f"bank at 0x{bank.address:X}, length 0x{bank.length:X}, fwid "
            f"{bank.fwid_bytes.hex()}, state {bank.state_name}, {signed}"
        )
    return payload.hex()


def describe(page: DevicePage) -> str:
    """Human-readable text for ``dfuhil devpage --show``."""
    source = " (restored from the backup page)" if page.from_backup else ""
    lines = [f"device page at 0x{page.address:X}, {page.page_size} bytes{source}"]
    if page.metadata != METADATA:
        lines.append(f"  metadata {page.metadata.hex(' ')} (expected {METADATA.hex(' ')})")
    for entry in page.entries:
        where = f"  +0x{entry.offset:03X}"
        if not entry.valid:
            lines.append(f"{where} (invalidated, {entry.length_words} words)")
            continue
        lines.append(f"{where} {entry.name:<17} {_describe_payload(entry)}")
    if page.terminated:
        lines.append(f"  +0x{page.end_offset:03X} end of entries")
        lines.append(f"free: {page.free_bytes} bytes")
    else:
        lines.append(
            f"  +0x{page.end_offset:03X} NOT TERMINATED: no end-of-entries marker; the bootloader"
            " restores the backup page or refuses to run"
        )
    missing = page.missing_required()
    lines.append(f"missing required entries: {', '.join(missing) if missing else 'none'}")
    return "\n".join(lines)


# --- the SDK's bootloader_config JSON --------------------------------------------------------

_CONFIG_FIELDS = (*_CONFIG_FIELD_BITS, "public_key")
# The SDK's tools/dfu/README.md documents short names the generator never reads.
_README_NAMES = {
    "app_id": "application_id",
    "app_version": "application_version",
    "bl_id": "bootloader_id",
    "bl_version": "bootloader_version",
}


def _line_of(text: str, key: str) -> int | None:
    """First line mentioning ``"key"``: good enough to put an editor on the field."""
    needle = json.dumps(key)
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return None


def _suggest(name: str) -> str:
    guess = _README_NAMES.get(name) or next(
        iter(difflib.get_close_matches(name, _CONFIG_FIELDS, n=1, cutoff=0.5)), None
    )
    return f"; did you mean {guess!r}?" if guess else ""


def load_bootloader_config(path: str | Path) -> BootloaderConfig:
    """Read ``{"bootloader_config": {...}}`` as device_page_generator.py's -c option does.

    Stricter than the SDK script: unknown fields are errors (a misspelt field would otherwise be
    silently replaced by nothing and the script would crash with a KeyError, or worse, a README
    name would be ignored), and every problem is reported at once with its line.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(Problem(file, None, "", "bootloader config file not found")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(Problem(file, None, "", f"cannot read: {exc}")) from None
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(Problem(file, exc.lineno, "", f"invalid JSON: {exc.msg}")) from None
    except RecursionError:
        raise InputError(Problem(file, None, "", "invalid JSON: nested too deeply")) from None
    except ValueError as exc:  # a number of more than 4300 digits
        raise InputError(Problem(file, None, "", f"invalid JSON: {exc}")) from None
    if not isinstance(document, dict) or "bootloader_config" not in document:
        raise InputError(
            Problem(
                file,
                None,
                "bootloader_config",
                'missing: the file must be {"bootloader_config": {"bootloader_id": ..., ...}}',
            )
        )
    body = document["bootloader_config"]
    if not isinstance(body, dict):
        raise InputError(
            Problem(file, _line_of(text, "bootloader_config"), "bootloader_config", "not an object")
        )
    problems: list[Problem] = []
    values: dict[str, int] = {}
    for name in body:
        if name not in _CONFIG_FIELDS:
            problems.append(
                Problem(file, _line_of(text, name), name, f"unknown field{_suggest(name)}")
            )
    for name in _CONFIG_FIELD_BITS:
        line = _line_of(text, name)
        if name not in body:
            problems.append(Problem(file, None, name, "missing (the SDK generator requires it)"))
            continue
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(
                Problem(file, line, name, f"must be a JSON integer, got {json.dumps(value)}")
            )
            continue
        problem = _range_problem(name, value, file, line)
        if problem:
            problems.append(problem)
        else:
            values[name] = value
    public_key: bytes | None = None
    if "public_key" in body:
        raw = body["public_key"]
        if not isinstance(raw, str):
            problems.append(
                Problem(file, _line_of(text, "public_key"), "public_key", "must be a hex string")
            )
        else:
            try:
                public_key = public_key_from_hex(raw, file=file)
            except InputError as exc:
                line = _line_of(text, "public_key")
                problems += [Problem(p.file, line, p.field, p.message) for p in exc.problems]
    if problems:
        raise InputError(problems)
    return BootloaderConfig(**values, public_key=public_key)
