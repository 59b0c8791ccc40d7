"""The mesh DFU zip that ``nrfutil dfu genpkg --mesh`` writes, and reading it back.

A lab that already ships packages made by nrfutil (pc-nrfutil branch ``mesh_dfu``) must be able
to hand them to dfuhil, and packages dfuhil makes must work with ``nrfutil dfu serial --mesh``.
So the layout follows shared/specs/mesh-dfu.md section 2 and nrfutil's package.py/init_packet.py/
manifest.py: a flat zip with ``manifest.json``, ``<name>.bin`` and ``<name>.dat`` (the mesh init
packet). Reading checks everything the transfer later relies on, so a broken zip is refused with
a message naming the member before any board is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

from intelhex import IntelHex

from dfuhil.errors import InputError, Problem
from dfuhil.formats.hexfile import read_hex
from dfuhil.formats.meshkeys import SIGNATURE_LENGTH, SigningKey, sign

MANIFEST_NAME = "manifest.json"
DFU_VERSION = 0.8  # --mesh forces 0.8, with or without a key
UNKNOWN_START = 0xFFFFFFFF  # "use the segment start from the device page"
SD_ANY = 0xFFFE  # --sd-req default: no SoftDevice requirement
SD_NONE_FWID = 0xFFFF  # SD package fwid when --sd-req none
DEFAULT_BOOTLOADER_ID = 0xFF00
DEFAULT_DEVICE_TYPE = 0xFFFF
DEFAULT_DEVICE_REVISION = 0xFFFF
EXT_PACKET_ID_ECDS = 2  # INIT_PACKET_EXT_USES_ECDS: what dfu_version 0.8 writes
SEGMENT_SIZE = 16  # bytes of image per DFU DATA packet
WORD_SIZE = 4
UICR_START = 0x10000000
MBR_END = 0x1000
MAX_FLASH_SPAN = 1 << 20  # nRF52840, the largest nRF5 flash
# nrfhex.py: a hex carrying a SoftDevice information structure at 0x4000..0x7000 (old S132
# layout) has a 0x3000-byte MBR area. Only SoftDevice images carry that structure.
OLD_S132_MBR_END = 0x3000
SD_INFO_MAGIC = 0x51B1E5DB
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # zip timestamps: same bytes on every run


class DfuType(IntEnum):
    """The ``dfu_type`` byte (DFU_TYPE_* in dfu_types_mesh.h, nrfutil's HexType)."""

    SD = 1
    BL = 2
    APP = 4


MANIFEST_KEYS = {DfuType.APP: "application", DfuType.BL: "bootloader", DfuType.SD: "softdevice"}
_FWID_FORMATS = {DfuType.APP: "<IHI", DfuType.BL: "<H", DfuType.SD: "<H"}
_HEAD = struct.Struct("<BIIB")  # dfu_type, start_addr, length, signature length


def _fits(value: int, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits


# --- hex -> bin ------------------------------------------------------------------------------


def _has_sd_magic(ih: IntelHex, address: int) -> bool:
    try:
        word = bytes(ih.gets(address, WORD_SIZE))
    except Exception:  # intelhex raises NotEnoughDataError when any byte is missing
        return False
    magic: int = struct.unpack("<I", word)[0]
    return magic == SD_INFO_MAGIC


def mbr_end(ih: IntelHex) -> int:
    """Where the image may start: nrfhex.py's get_mbr_end_address().

    nrfutil detected the old S132 layout with ``unpack('L', ...)``, which only worked where a C
    long is 4 bytes (Windows); this is the rule it meant. Applications never trigger it.
    """
    if _has_sd_magic(ih, 0x3004):
        return MBR_END
    if any(_has_sd_magic(ih, 0x3004 + k * 0x1000) for k in range(1, 5)):
        return OLD_S132_MBR_END
    return MBR_END


def hex_to_bin(source: str | Path | IntelHex, *, file: str | None = None) -> tuple[int, bytes]:
    """(start address, image) as nrfutil's nRFHex.tobinfile() makes the .bin.

    From the lowest address (at least the MBR end) to the highest, UICR and everything above
    0x10000000 dropped, gaps filled with 0xFF, padded with 0xFF to a multiple of 4 bytes.
    """
    if isinstance(source, str | Path):
        file = str(source)
        ih = read_hex(source)
    else:
        ih = source
        file = file or "hex image"
    ranges = [(start, min(end, UICR_START)) for start, end in ih.segments() if start < UICR_START]
    if not ranges:
        raise InputError(Problem(file, None, "", "holds no flash data (nothing below 0x10000000)"))
    low = max(min(start for start, _ in ranges), mbr_end(ih))
    high = max(end for _, end in ranges)
    if low >= high:
        raise InputError(
            Problem(file, None, "", f"holds only MBR data below 0x{low:X}; nothing to transfer")
        )
    if high - low > MAX_FLASH_SPAN:
        raise InputError(
            Problem(
                file,
                None,
                "",
                f"data from 0x{low:X} to 0x{high:X} spans more than the 1 MiB of the largest "
                "nRF5 flash; is an extended address record (type 02/04) wrong?",
            )
        )
    image = bytearray(b"\xff" * (-(high - low) % WORD_SIZE + (high - low)))
    for start, end in ranges:
        start = max(start, low)
        if start < end:
            image[start - low : end - low] = bytes(ih.gets(start, end - start))
    return low, bytes(image)


def check_fits(
    image_start: int,
    image_len: int,
    app_segment: tuple[int, int],
    file: str,
    *,
    at_segment_start: bool = True,
) -> None:
    """Refuse an image the bootloader would place wrongly or refuse.

    A transfer with start_addr 0xFFFFFFFF is written at the device page's SEGMENT_APP start, so
    an image linked elsewhere would land at the wrong address (``at_segment_start``), and one
    longer than the segment is refused by the device after minutes of transfer.
    """
    seg_start, seg_len = app_segment
    seg_end = seg_start + seg_len
    end = image_start + image_len
    segment = f"application segment 0x{seg_start:X}-0x{seg_end - 1:X} (length 0x{seg_len:X})"
    if image_start < seg_start or end > seg_end:
        raise InputError(
            Problem(
                file,
                None,
                "",
                f"data at 0x{image_start:X}-0x{end - 1:X} lies outside the {segment}; "
                "link the application for this chip and SoftDevice",
            )
        )
    if at_segment_start and image_start != seg_start:
        raise InputError(
            Problem(
                file,
                None,
                "",
                f"image starts at 0x{image_start:X} but the bootloader writes it at the start of "
                f"the {segment}; link the application to start at 0x{seg_start:X}",
            )
        )


# --- the .dat init packet --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InitPacket:
    """The mesh init packet (nrfutil PacketMesh): ``<B I I`` + sig length + sig + fwid."""

    dfu_type: DfuType
    length: int  # image bytes
    start_addr: int = UNKNOWN_START
    signature: bytes = b""  # empty or 64 bytes r || s
    company_id: int = 0  # APP fwid
    application_id: int = 0
    application_version: int = 0
    bootloader_id: int = DEFAULT_BOOTLOADER_ID  # BL fwid: LSB = bl id, MSB = bl version
    sd_fwid: int = SD_NONE_FWID  # SD fwid: the first --sd-req value

    def __post_init__(self) -> None:
        widths = {
            "length": 32,
            "start_addr": 32,
            "company_id": 32,
            "application_id": 16,
            "application_version": 32,
            "bootloader_id": 16,
            "sd_fwid": 16,
        }
        problems = [
            Problem("init packet", None, name, f"{getattr(self, name)} does not fit in {bits} bits")
            for name, bits in widths.items()
            if not _fits(getattr(self, name), bits)
        ]
        if len(self.signature) not in (0, SIGNATURE_LENGTH):
            problems.append(
                Problem("init packet", None, "signature", f"{len(self.signature)} bytes, not 64")
            )
        if problems:
            raise InputError(problems)

    @property
    def signed(self) -> bool:
        return bool(self.signature)

    @property
    def bl_id(self) -> int:
        return self.bootloader_id & 0xFF

    @property
    def bl_version(self) -> int:
        return self.bootloader_id >> 8

    @property
    def segments(self) -> int:
        """DATA segments the transfer takes: the image in 16-byte pieces, then the signature."""
        return math.ceil(self.length / SEGMENT_SIZE) + len(self.signature) // SEGMENT_SIZE

    def fwid_bytes(self) -> bytes:
        """The FWID of the new image, as the STATE packet and the signed message carry it."""
        if self.dfu_type == DfuType.APP:
            return struct.pack(
                "<IHI", self.company_id, self.application_id, self.application_version
            )
        if self.dfu_type == DfuType.BL:
            return struct.pack("<H", self.bootloader_id)
        return struct.pack("<H", self.sd_fwid)

    def encode(self) -> bytes:
        head = _HEAD.pack(self.dfu_type, self.start_addr, self.length, len(self.signature))
        return head + self.signature + self.fwid_bytes()

    def unsigned(self) -> InitPacket:
        return replace(self, signature=b"")

    @classmethod
    def decode(cls, data: bytes, file: str = "init packet") -> InitPacket:
        def bad(what: str, message: str) -> InputError:
            return InputError(Problem(file, None, what, message))

        if len(data) < _HEAD.size:
            raise bad("", f"too short: {len(data)} bytes, a mesh init packet has at least 10")
        kind, start, length, sig_len = _HEAD.unpack_from(data)
        try:
            dfu_type = DfuType(kind)
        except ValueError:
            raise bad(
                "dfu_type", f"unknown value {kind} (1 SoftDevice, 2 bootloader, 4 app)"
            ) from None
        if sig_len not in (0, SIGNATURE_LENGTH):
            raise bad("signature length", f"{sig_len}, expected 0 (unsigned) or 64")
        fwid = data[_HEAD.size + sig_len :]
        fwid_format = _FWID_FORMATS[dfu_type]
        if len(data) < _HEAD.size + sig_len or len(fwid) != struct.calcsize(fwid_format):
            expected = _HEAD.size + sig_len + struct.calcsize(fwid_format)
            raise bad(
                "",
                f"{len(data)} bytes, but a {'signed' if sig_len else 'unsigned'} "
                f"{MANIFEST_KEYS[dfu_type]} init packet has {expected}",
            )
        signature = data[_HEAD.size : _HEAD.size + sig_len]
        common: dict[str, Any] = {
            "dfu_type": dfu_type,
            "length": length,
            "start_addr": start,
            "signature": signature,
        }
        values = struct.unpack(fwid_format, fwid)
        if dfu_type == DfuType.APP:
            company, app_id, version = values
            return cls(
                **common, company_id=company, application_id=app_id, application_version=version
            )
        if dfu_type == DfuType.BL:
            return cls(**common, bootloader_id=values[0])
        return cls(**common, sd_fwid=values[0])


def signed_message(init: InitPacket, image: bytes) -> bytes:
    """What the signature covers: the unsigned .dat followed by the whole .bin (spec 2.4)."""
    return init.unsigned().encode() + image


# --- the zip ---------------------------------------------------------------------------------


def _option_problems(values: dict[str, tuple[int, int]]) -> list[Problem]:
    return [
        Problem("", None, option, f"{value} does not fit in {bits} bits (0..{(1 << bits) - 1})")
        for option, (value, bits) in values.items()
        if not _fits(value, bits)
    ]


def manifest_text(manifest: dict[str, Any]) -> str:
    """manifest.json as nrfutil writes it: sorted keys, 4-space indent, no final newline."""
    return json.dumps(manifest, sort_keys=True, indent=4, separators=(",", ": "))


def _manifest(
    init: InitPacket, image: bytes, bin_name: str, dat_name: str, sd_req: Sequence[int]
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "application_id": init.application_id,
        "application_version": init.application_version,
        "bootloader_id": DEFAULT_BOOTLOADER_ID,
        "company_id": init.company_id,
        "device_revision": DEFAULT_DEVICE_REVISION,
        "device_type": DEFAULT_DEVICE_TYPE,
        "ext_packet_id": EXT_PACKET_ID_ECDS,
        "firmware_hash": hashlib.sha256(image).hexdigest(),
        "firmware_length": len(image),
        "softdevice_req": list(sd_req),
        "start_addr": init.start_addr,
    }
    if init.signed:
        data["init_packet_ecds"] = init.signature.hex()
    entry = {"bin_file": bin_name, "dat_file": dat_name, "init_packet_data": data}
    return {"manifest": {MANIFEST_KEYS[init.dfu_type]: entry, "dfu_version": DFU_VERSION}}


@dataclass(frozen=True)
class MeshPackage:
    """One image with its init packet and manifest: what one mesh DFU transfer sends."""

    image: bytes
    init: InitPacket
    bin_name: str
    dat_name: str
    sd_req: tuple[int, ...]
    manifest: dict[str, Any] = field(hash=False)

    @property
    def kind(self) -> str:
        return MANIFEST_KEYS[self.init.dfu_type]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()

    @classmethod
    def build(
        cls,
        application_hex: str | Path,
        company_id: int,
        application_id: int,
        application_version: int,
        sd_req: Sequence[int] | None = None,
        key: SigningKey | None = None,
        name: str | None = None,
        app_segment: tuple[int, int] | None = None,
    ) -> MeshPackage:
        """``nrfutil dfu genpkg --mesh --application ...``; sd_req None means [0xFFFE]."""
        sd_list = list(sd_req) if sd_req is not None else [SD_ANY]
        options = {
            "--company-id": (company_id, 32),
            "--application-id": (application_id, 16),
            "--application-version": (application_version, 32),
        }
        options |= {f"--sd-req[{i}]": (v, 16) for i, v in enumerate(sd_list)}
        problems = _option_problems(options)
        stem = name if name is not None else Path(application_hex).stem
        if not stem or "/" in stem or "\\" in stem or stem == Path(MANIFEST_NAME).stem:
            problems.append(Problem("", None, "name", f"{stem!r} is not usable as a file name"))
        if problems:
            raise InputError(problems)
        start, image = hex_to_bin(application_hex)
        if app_segment is not None:
            check_fits(start, len(image), app_segment, str(application_hex))
        init = InitPacket(
            dfu_type=DfuType.APP,
            length=len(image),
            company_id=company_id,
            application_id=application_id,
            application_version=application_version,
        )
        if key is not None:
            init = replace(init, signature=sign(key, signed_message(init, image)))
        bin_name, dat_name = f"{stem}.bin", f"{stem}.dat"
        manifest = _manifest(init, image, bin_name, dat_name, sd_list)
        return cls(image, init, bin_name, dat_name, tuple(sd_list), manifest)

    def write(self, zip_path: str | Path) -> None:
        """A flat, uncompressed zip (like nrfutil's) with fixed timestamps: same input, same
        bytes."""
        members = [
            (MANIFEST_NAME, manifest_text(self.manifest).encode()),
            (self.bin_name, self.image),
            (self.dat_name, self.init.encode()),
        ]
        try:
            with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as out:
                for member, data in members:
                    info = zipfile.ZipInfo(member, date_time=_FIXED_DATE)
                    info.external_attr = 0o644 << 16
                    out.writestr(info, data)
        except OSError as exc:
            raise InputError(
                Problem(str(zip_path), None, "", f"cannot write: {exc.strerror}")
            ) from None


# OSError/ValueError: a local header offset that points outside the file (seek fails).
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
    struct.error,
)
# No member of a mesh package comes near this (the largest nRF5 flash is 1 MiB); a zip whose
# directory announces more is damaged or a zip bomb, and is not unpacked.
MAX_MEMBER_SIZE = 4 << 20


def _member(archive: zipfile.ZipFile, file: str, member: str, why: str) -> bytes:
    if member not in archive.namelist():
        raise InputError(Problem(file, None, member, f"missing from the zip ({why})"))
    size = archive.getinfo(member).file_size
    if size > MAX_MEMBER_SIZE:
        raise InputError(
            Problem(file, None, member, f"{size} bytes unpacked: not a mesh DFU member")
        )
    try:
        return archive.read(member)
    except _ZIP_READ_ERRORS as exc:
        raise InputError(
            Problem(file, None, member, f"corrupt member ({exc}); rebuild the package")
        ) from None


def _string_field(entry: dict[str, Any], key: str, file: str, kind: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(
            Problem(file, None, MANIFEST_NAME, f"manifest.{kind}.{key} missing or not a file name")
        )
    return value


def read_package(zip_path: str | Path) -> MeshPackage:
    """Open and check a mesh DFU zip (nrfutil's or ours)."""
    file = str(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise InputError(Problem(file, None, "", "package not found")) from None
    except IsADirectoryError:
        raise InputError(Problem(file, None, "", "is a directory, not a DFU zip")) from None
    except OSError as exc:
        raise InputError(Problem(file, None, "", f"cannot read: {exc.strerror}")) from None
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise InputError(
            Problem(file, None, "", f"not a zip file or truncated ({exc}); rebuild the package")
        ) from None
    with archive:
        return _read_archive(archive, file)


def _read_archive(archive: zipfile.ZipFile, file: str) -> MeshPackage:
    raw = _member(archive, file, MANIFEST_NAME, "every DFU package has one")
    try:
        manifest: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # also a number of over 4300 digits
        raise InputError(Problem(file, None, MANIFEST_NAME, f"not valid JSON ({exc})")) from None
    except RecursionError:
        raise InputError(
            Problem(file, None, MANIFEST_NAME, "not valid JSON (nested too deeply)")
        ) from None
    body = manifest.get("manifest") if isinstance(manifest, dict) else None
    if not isinstance(body, dict):
        raise InputError(Problem(file, None, MANIFEST_NAME, 'no top-level "manifest" object'))
    if "softdevice_bootloader" in body:
        raise InputError(
            Problem(
                file,
                None,
                MANIFEST_NAME,
                "holds a combined softdevice_bootloader image, which mesh DFU cannot transfer; "
                "package the SoftDevice and the bootloader separately",
            )
        )
    kinds = [k for k in MANIFEST_KEYS.values() if k in body]
    if not kinds:
        raise InputError(
            Problem(file, None, MANIFEST_NAME, "no application, bootloader or softdevice entry")
        )
    if len(kinds) > 1:
        raise InputError(
            Problem(
                file,
                None,
                MANIFEST_NAME,
                f"holds {len(kinds)} images ({', '.join(kinds)}); dfuhil transfers one image per "
                "package: make one package per image",
            )
        )
    kind = kinds[0]
    entry = body[kind]
    if not isinstance(entry, dict):
        raise InputError(Problem(file, None, MANIFEST_NAME, f"manifest.{kind} is not an object"))
    bin_name = _string_field(entry, "bin_file", file, kind)
    dat_name = _string_field(entry, "dat_file", file, kind)
    image = _member(archive, file, bin_name, f"manifest.{kind}.bin_file names it")
    dat = _member(archive, file, dat_name, f"manifest.{kind}.dat_file names it")
    try:
        init = InitPacket.decode(dat, file=dat_name)
    except InputError as exc:
        raise InputError(
            [
                Problem(file, None, dat_name, f"{p.field}: {p.message}" if p.field else p.message)
                for p in exc.problems
            ]
        ) from None
    return _checked(file, kind, entry, image, init, bin_name, dat_name, manifest)


def _checked(
    file: str,
    kind: str,
    entry: dict[str, Any],
    image: bytes,
    init: InitPacket,
    bin_name: str,
    dat_name: str,
    manifest: dict[str, Any],
) -> MeshPackage:
    """Cross-check manifest, .dat and .bin; every mismatch would break the transfer later."""
    problems: list[Problem] = []
    if MANIFEST_KEYS[init.dfu_type] != kind:
        problems.append(
            Problem(
                file,
                None,
                dat_name,
                f"dfu_type {int(init.dfu_type)} ({MANIFEST_KEYS[init.dfu_type]}) but the "
                f"manifest lists it as {kind}",
            )
        )
    if len(image) % WORD_SIZE:
        problems.append(
            Problem(
                file,
                None,
                bin_name,
                f"{len(image)} bytes, not a multiple of 4; the device counts the image in words",
            )
        )
    if init.length != len(image):
        problems.append(
            Problem(
                file,
                None,
                dat_name,
                f"length field says {init.length} bytes but {bin_name} has {len(image)} bytes",
            )
        )
    data = entry.get("init_packet_data", {})
    if not isinstance(data, dict):
        data = {}
        problems.append(Problem(file, None, MANIFEST_NAME, "init_packet_data is not an object"))
    digest = hashlib.sha256(image).hexdigest()
    if "firmware_hash" in data and str(data["firmware_hash"]).lower() != digest:
        problems.append(
            Problem(
                file,
                None,
                bin_name,
                f"SHA-256 is {digest} but manifest.json's firmware_hash says "
                f"{data['firmware_hash']}",
            )
        )
    if "firmware_length" in data and data["firmware_length"] != len(image):
        problems.append(
            Problem(
                file,
                None,
                bin_name,
                f"{len(image)} bytes but manifest.json's firmware_length says "
                f"{data['firmware_length']}",
            )
        )
    ecds = data.get("init_packet_ecds")
    if ecds is not None and str(ecds).lower() != init.signature.hex():
        problems.append(
            Problem(
                file,
                None,
                dat_name,
                "signature differs from manifest.json's init_packet_ecds",
            )
        )
    sd_req = data.get("softdevice_req", [])
    if not isinstance(sd_req, list) or not all(_fits(v, 16) for v in sd_req):
        problems.append(
            Problem(file, None, MANIFEST_NAME, f"softdevice_req {sd_req!r} is not a list of u16")
        )
        sd_req = []
    if problems:
        raise InputError(problems)
    return MeshPackage(image, init, bin_name, dat_name, tuple(sd_req), manifest)


# --- describing a package --------------------------------------------------------------------


def _sd_req_text(sd_req: Sequence[int]) -> str:
    if not sd_req:
        return "none"
    return ", ".join(f"0x{v:04X}" + (" (any)" if v == SD_ANY else "") for v in sd_req)


def describe(pkg: MeshPackage) -> str:
    """Human-readable text for ``dfuhil mesh show``."""
    init = pkg.init
    lines = [f"type:        {pkg.kind} (dfu_type {int(init.dfu_type)})"]
    if init.dfu_type == DfuType.APP:
        lines += [
            f"company id:  0x{init.company_id:08X} ({init.company_id})",
            f"app id:      0x{init.application_id:04X} ({init.application_id})",
            f"app version: {init.application_version} (0x{init.application_version:08X})",
        ]
    elif init.dfu_type == DfuType.BL:
        lines.append(f"bootloader:  id {init.bl_id}, version {init.bl_version}")
    else:
        lines.append(f"sd fwid:     0x{init.sd_fwid:04X}")
    start = (
        "0xFFFFFFFF (the device page's segment start)"
        if init.start_addr == UNKNOWN_START
        else f"0x{init.start_addr:X}"
    )
    data_segments = math.ceil(init.length / SEGMENT_SIZE)
    sig_segments = len(init.signature) // SEGMENT_SIZE
    lines += [
        f"start:       {start}",
        f"length:      {init.length} bytes (0x{init.length:X})",
        f"segments:    {init.segments} ({data_segments} data + {sig_segments} signature)",
        f"sd_req:      {_sd_req_text(pkg.sd_req)}",
        f"signed:      {'yes, ' + init.signature.hex() if init.signed else 'no'}",
        f"sha256:      {pkg.sha256}",
        f"files:       {pkg.bin_name}, {pkg.dat_name}",
    ]
    return "\n".join(lines)
