"""Mesh DFU zip (`nrfutil dfu genpkg --mesh`) against shared/specs/mesh-dfu.md section 2.

Expected bytes are written out by hand from the spec's tables, never computed with the code
under test; signatures are checked with python-ecdsa, which nrfutil signed with.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import ecdsa
import pytest
from intelhex import IntelHex

from dfuhil.errors import InputError
from dfuhil.formats.meshkeys import load_key
from dfuhil.formats.meshpkg import (
    DfuType,
    InitPacket,
    MeshPackage,
    check_fits,
    describe,
    hex_to_bin,
    read_package,
    signed_message,
)

APP_START = 0x26000
# 1001 bytes of application: not a multiple of 4, so the .bin gets 3 bytes of 0xFF padding.
APP_BYTES = bytes((i * 7 + 3) & 0xFF for i in range(1001))
APP_BIN = APP_BYTES + b"\xff\xff\xff"  # 1004 = 0x3EC bytes

# Spec 2.3 for an application: dfu_type 4 | start 0xFFFFFFFF | length | sig length | fwid
# (company u32, app id u16, app version u32), all little-endian.
UNSIGNED_DAT = bytes.fromhex(
    "04"  # dfu_type APP
    "FF FF FF FF"  # start_addr: use the device page's segment start
    "EC 03 00 00"  # length 1004
    "00"  # signature length: unsigned
    "59 00 00 00"  # company_id 0x59
    "34 12"  # application_id 0x1234
    "02 00 00 00"  # application_version 2
)


def write_hex(path: Path, chunks: dict[int, bytes]) -> Path:
    ih = IntelHex()
    for address, data in chunks.items():
        ih.frombytes(data, offset=address)
    ih.write_hex_file(str(path))
    return path


@pytest.fixture
def app_hex(tmp_path: Path) -> Path:
    # UICR record as a real application hex may carry one (it must not reach the .bin).
    return write_hex(tmp_path / "app.hex", {APP_START: APP_BYTES, 0x10001014: b"\x00\x80\x07\x00"})


@pytest.fixture
def nrfutil_key_file(tmp_path: Path) -> tuple[Path, ecdsa.SigningKey]:
    sk = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p)
    path = tmp_path / "private_key.txt"
    path.write_bytes(sk.to_pem())
    return path, sk


def build(app_hex: Path, **kwargs: object) -> MeshPackage:
    options: dict[str, object] = {
        "company_id": 0x59,
        "application_id": 0x1234,
        "application_version": 2,
    }
    options.update(kwargs)
    return MeshPackage.build(app_hex, **options)  # type: ignore[arg-type]


# --- hex -> bin (nrfhex.py rules) -----------------------------------------------------------


def test_hex_to_bin_fills_gaps_drops_uicr_and_pads_to_words(tmp_path: Path) -> None:
    path = write_hex(
        tmp_path / "gaps.hex",
        {
            0x26000: b"\xaa" * 16,
            0x26020: b"\xbb\xcc\xdd",
            0x10001014: b"\x00\x80\x07\x00",  # UICR: dropped
        },
    )
    start, image = hex_to_bin(path)
    assert start == 0x26000
    assert image == b"\xaa" * 16 + b"\xff" * 16 + b"\xbb\xcc\xdd" + b"\xff"


def test_hex_to_bin_clamps_at_the_mbr_end(tmp_path: Path) -> None:
    path = write_hex(tmp_path / "straddle.hex", {0xFF8: bytes(range(16))})
    assert hex_to_bin(path) == (0x1000, bytes(range(8, 16)))
    # Like nrfutil, MBR bytes are skipped but still move the start down to 0x1000: a merged
    # hex gives a .bin from 0x1000 (what check_fits then refuses for an application).
    merged = write_hex(tmp_path / "merged.hex", {0x0: b"\x11" * 16, 0x26000: b"\xaa" * 4})
    start, image = hex_to_bin(merged)
    assert start == 0x1000
    assert image == b"\xff" * 0x25000 + b"\xaa" * 4


def test_hex_to_bin_old_s132_layout_starts_at_0x3000(tmp_path: Path) -> None:
    magic = b"\xdb\xe5\xb1\x51"  # 0x51B1E5DB little-endian
    old = write_hex(tmp_path / "old.hex", {0x1000: b"\x01" * 0x3010, 0x4004: magic})
    start, image = hex_to_bin(old)
    assert start == 0x3000 and image[:4] == b"\x01" * 4 and len(image) == 0x1010
    # Information structure at 0x3000 (every current SoftDevice): the MBR ends at 0x1000.
    new = write_hex(tmp_path / "new.hex", {0x1000: b"\x01" * 0x2010, 0x3004: magic})
    assert hex_to_bin(new)[0] == 0x1000


def test_hex_to_bin_accepts_an_intelhex_object_without_changing_it() -> None:
    ih = IntelHex()
    ih.frombytes(b"\x01\x02\x03\x04\x05", offset=0x27000)
    ih.frombytes(b"\x99", offset=0x10001000)
    assert hex_to_bin(ih) == (0x27000, b"\x01\x02\x03\x04\x05\xff\xff\xff")
    assert ih.maxaddr() == 0x10001000


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ({}, "holds no flash data"),
        ({0x10001014: b"\x00\x80\x07\x00"}, "holds no flash data"),
        ({0x0: b"\x11" * 64}, "holds only MBR data below 0x1000"),
    ],
)
def test_hex_without_an_image_is_an_input_error(
    tmp_path: Path, chunks: dict[int, bytes], message: str
) -> None:
    path = write_hex(tmp_path / "x.hex", chunks)
    with pytest.raises(InputError, match=f"^{path}: {message}"):
        hex_to_bin(path)


def test_unreadable_hex_names_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "app.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(InputError, match=rf"^{binary}: not a valid Intel HEX file"):
        hex_to_bin(binary)
    broken = tmp_path / "broken.hex"
    broken.write_text(":10000000FFFF\n")
    with pytest.raises(InputError, match=rf"^{broken}: not a valid Intel HEX file"):
        hex_to_bin(broken)
    with pytest.raises(InputError, match="not found"):
        hex_to_bin(tmp_path / "missing.hex")


# --- the .dat init packet -------------------------------------------------------------------


def test_unsigned_app_init_packet_byte_for_byte() -> None:
    init = InitPacket(
        dfu_type=DfuType.APP,
        length=1004,
        company_id=0x59,
        application_id=0x1234,
        application_version=2,
    )
    assert len(UNSIGNED_DAT) == 20
    assert init.encode() == UNSIGNED_DAT
    assert init.fwid_bytes() == UNSIGNED_DAT[10:]
    assert InitPacket.decode(UNSIGNED_DAT) == init


def test_signed_app_init_packet_layout() -> None:
    signature = bytes(range(64))
    init = InitPacket(
        dfu_type=DfuType.APP,
        length=1004,
        company_id=0x59,
        application_id=0x1234,
        application_version=2,
        signature=signature,
    )
    expected = UNSIGNED_DAT[:9] + b"\x40" + signature + UNSIGNED_DAT[10:]
    assert len(expected) == 84
    assert init.encode() == expected
    assert InitPacket.decode(expected) == init
    assert init.unsigned().encode() == UNSIGNED_DAT
    assert signed_message(init, APP_BIN) == UNSIGNED_DAT + APP_BIN


def test_bootloader_and_softdevice_init_packets() -> None:
    bl = InitPacket(dfu_type=DfuType.BL, length=0x5000, bootloader_id=0x0201)
    assert bl.encode() == bytes.fromhex("02 FFFFFFFF 00500000 00 0102")
    assert (bl.bl_id, bl.bl_version) == (1, 2)
    sd = InitPacket(dfu_type=DfuType.SD, length=0x25000, sd_fwid=0x0101)
    assert sd.encode() == bytes.fromhex("01 FFFFFFFF 00500200 00 0101")
    for packet in (bl, sd):
        assert InitPacket.decode(packet.encode()) == packet


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (UNSIGNED_DAT[:5], "too short: 5 bytes"),
        (b"\x03" + UNSIGNED_DAT[1:], "dfu_type: unknown value 3"),
        (UNSIGNED_DAT[:9] + b"\x20" + bytes(32) + UNSIGNED_DAT[10:], "signature length: 32"),
        (UNSIGNED_DAT[:12], "12 bytes, but a unsigned application init packet has 20"),
        (UNSIGNED_DAT[:9] + b"\x40" + bytes(30), "40 bytes, but a signed application"),
        (bytes.fromhex("02 FFFFFFFF 00500000 00 010203"), "bootloader init packet has 12"),
    ],
)
def test_decode_rejects_malformed_init_packets(data: bytes, message: str) -> None:
    with pytest.raises(InputError) as caught:
        InitPacket.decode(data, file="app.dat")
    assert str(caught.value).startswith("app.dat: ")
    assert message in str(caught.value)


# --- building and writing the zip -------------------------------------------------------------


def expected_manifest(sha256: str, length: int, sd_req: str, ecds: str = "") -> str:
    """manifest.json as nrfutil's ManifestGenerator prints it (sorted, indent 4)."""
    signature = f'                "init_packet_ecds": "{ecds}",\n' if ecds else ""
    return (
        "{\n"
        '    "manifest": {\n'
        '        "application": {\n'
        '            "bin_file": "app.bin",\n'
        '            "dat_file": "app.dat",\n'
        '            "init_packet_data": {\n'
        '                "application_id": 4660,\n'
        '                "application_version": 2,\n'
        '                "bootloader_id": 65280,\n'
        '                "company_id": 89,\n'
        '                "device_revision": 65535,\n'
        '                "device_type": 65535,\n'
        '                "ext_packet_id": 2,\n'
        f'                "firmware_hash": "{sha256}",\n'
        f'                "firmware_length": {length},\n'
        f"{signature}"
        f'                "softdevice_req": {sd_req},\n'
        '                "start_addr": 4294967295\n'
        "            }\n"
        "        },\n"
        '        "dfu_version": 0.8\n'
        "    }\n"
        "}"
    )


def test_unsigned_package_zip_contents(app_hex: Path, tmp_path: Path) -> None:
    pkg = build(app_hex)
    out = tmp_path / "dfu.zip"
    pkg.write(out)
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["app.bin", "app.dat", "manifest.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        assert archive.read("app.bin") == APP_BIN
        assert archive.read("app.dat") == UNSIGNED_DAT
        manifest = archive.read("manifest.json").decode()
    sha = hashlib.sha256(APP_BIN).hexdigest()
    assert manifest == expected_manifest(
        sha, 1004, "[\n                    65534\n                ]"
    )


def test_signed_package_verifies_with_ecdsa(
    app_hex: Path, tmp_path: Path, nrfutil_key_file: tuple[Path, ecdsa.SigningKey]
) -> None:
    key_path, sk = nrfutil_key_file
    pkg = build(app_hex, key=load_key(key_path), sd_req=[0x0101, 0x00CB])
    out = tmp_path / "signed.zip"
    pkg.write(out)
    with zipfile.ZipFile(out) as archive:
        dat = archive.read("app.dat")
        image = archive.read("app.bin")
        manifest = archive.read("manifest.json").decode()
    assert len(dat) == 84 and dat[9] == 64
    signature = dat[10:74]
    assert dat[:9] + b"\x00" + dat[74:] == UNSIGNED_DAT
    vk = sk.get_verifying_key()
    assert vk.verify(signature, UNSIGNED_DAT + image, hashfunc=hashlib.sha256)
    sd_req = "[\n                    257,\n                    203\n                ]"
    sha = hashlib.sha256(APP_BIN).hexdigest()
    assert manifest == expected_manifest(sha, 1004, sd_req, signature.hex())


def test_sd_req_none_is_an_empty_list_and_never_in_the_app_dat(app_hex: Path) -> None:
    pkg = build(app_hex, sd_req=[])
    assert pkg.manifest["manifest"]["application"]["init_packet_data"]["softdevice_req"] == []
    assert pkg.init.encode() == UNSIGNED_DAT
    assert build(app_hex, sd_req=[0x101]).init.encode() == UNSIGNED_DAT


def test_writing_twice_gives_the_same_bytes(app_hex: Path, tmp_path: Path) -> None:
    pkg = build(app_hex)
    pkg.write(tmp_path / "a.zip")
    pkg.write(tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"company_id": 1 << 32}, "--company-id: 4294967296 does not fit in 32 bits"),
        ({"application_id": 0x10000}, "--application-id: 65536 does not fit in 16 bits"),
        ({"application_version": -1}, "--application-version: -1 does not fit in 32 bits"),
        ({"sd_req": [0x101, 0x10000]}, r"--sd-req\[1\]: 65536 does not fit in 16 bits"),
    ],
)
def test_out_of_range_options_name_the_option(
    app_hex: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        build(app_hex, **options)


def test_image_outside_the_application_segment_is_refused(app_hex: Path) -> None:
    nrf52832_s132 = (0x26000, 0x51000)
    assert build(app_hex, app_segment=nrf52832_s132).init.length == 1004
    nrf52840_s140 = (0x27000, 0xD0000)
    with pytest.raises(InputError) as caught:
        build(app_hex, app_segment=nrf52840_s140)
    message = str(caught.value)
    assert message.startswith(f"{app_hex}: data at 0x26000-0x263EB lies outside")
    assert "application segment 0x27000-0xF6FFF (length 0xD0000)" in message


def test_check_fits_end_and_start() -> None:
    check_fits(0x26000, 0x51000, (0x26000, 0x51000), "a.hex")
    with pytest.raises(InputError, match="0x26000-0x77003 lies outside"):
        check_fits(0x26000, 0x51004, (0x26000, 0x51000), "a.hex")
    with pytest.raises(InputError, match="starts at 0x27000 but the bootloader writes it"):
        check_fits(0x27000, 0x100, (0x26000, 0x51000), "a.hex")
    check_fits(0x27000, 0x100, (0x26000, 0x51000), "a.hex", at_segment_start=False)


# --- reading packages back --------------------------------------------------------------------


def test_read_package_round_trip(
    app_hex: Path, tmp_path: Path, nrfutil_key_file: tuple[Path, ecdsa.SigningKey]
) -> None:
    pkg = build(app_hex, key=load_key(nrfutil_key_file[0]), sd_req=[0x0101])
    pkg.write(tmp_path / "p.zip")
    back = read_package(tmp_path / "p.zip")
    assert back == pkg
    assert back.init.signed and back.sd_req == (0x0101,)


def test_describe_lists_what_a_tester_checks(
    app_hex: Path, nrfutil_key_file: tuple[Path, ecdsa.SigningKey]
) -> None:
    text = describe(build(app_hex))
    assert "type:        application (dfu_type 4)" in text
    assert "company id:  0x00000059 (89)" in text
    assert "app id:      0x1234 (4660)" in text
    assert "app version: 2 (0x00000002)" in text
    assert "length:      1004 bytes (0x3EC)" in text
    assert "segments:    63 (63 data + 0 signature)" in text  # ceil(1004 / 16)
    assert "sd_req:      0xFFFE (any)" in text
    assert "signed:      no" in text
    assert f"sha256:      {hashlib.sha256(APP_BIN).hexdigest()}" in text
    signed = describe(build(app_hex, key=load_key(nrfutil_key_file[0])))
    assert "segments:    67 (63 data + 4 signature)" in signed
    assert "signed:      yes, " in signed


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def good_members() -> dict[str, bytes]:
    sha = hashlib.sha256(APP_BIN).hexdigest()
    manifest = expected_manifest(sha, 1004, "[65534]")
    return {"manifest.json": manifest.encode(), "app.bin": APP_BIN, "app.dat": UNSIGNED_DAT}


def with_manifest(change: dict[str, object]) -> dict[str, bytes]:
    members = good_members()
    manifest = json.loads(members["manifest.json"])
    manifest["manifest"]["application"]["init_packet_data"].update(change)
    members["manifest.json"] = json.dumps(manifest).encode()
    return members


def test_hand_made_zip_in_nrfutil_layout_reads(tmp_path: Path) -> None:
    pkg = read_package(make_zip(tmp_path / "nrfutil.zip", good_members()))
    assert pkg.image == APP_BIN and pkg.init.encode() == UNSIGNED_DAT
    assert (pkg.bin_name, pkg.dat_name, pkg.sd_req) == ("app.bin", "app.dat", (0xFFFE,))


BAD_PACKAGES: dict[str, tuple[dict[str, bytes], str]] = {
    "no manifest": (
        {k: v for k, v in good_members().items() if k != "manifest.json"},
        "manifest.json: missing from the zip",
    ),
    "manifest not json": (
        {**good_members(), "manifest.json": b"{nope"},
        "manifest.json: not valid",
    ),
    "no image entry": (
        {**good_members(), "manifest.json": b'{"manifest": {"dfu_version": 0.8}}'},
        "manifest.json: no application, bootloader or softdevice entry",
    ),
    "bin missing": (
        {k: v for k, v in good_members().items() if k != "app.bin"},
        "app.bin: missing from the zip (manifest.application.bin_file names it)",
    ),
    "dat missing": (
        {k: v for k, v in good_members().items() if k != "app.dat"},
        "app.dat: missing from the zip (manifest.application.dat_file names it)",
    ),
    "dat length": (
        {**good_members(), "app.dat": UNSIGNED_DAT[:5] + b"\xf0\x03" + UNSIGNED_DAT[7:]},
        "app.dat: length field says 1008 bytes but app.bin has 1004 bytes",
    ),
    "dat type": ({**good_members(), "app.dat": b"\x07" + UNSIGNED_DAT[1:]}, "app.dat: dfu_type"),
    "dat for a bootloader": (
        {**good_members(), "app.dat": bytes.fromhex("02 FFFFFFFF EC030000 00 0102")},
        "app.dat: dfu_type 2 (bootloader) but the manifest lists it as application",
    ),
    "hash": (
        with_manifest({"firmware_hash": "00" * 32}),
        f"app.bin: SHA-256 is {hashlib.sha256(APP_BIN).hexdigest()} but manifest.json's "
        "firmware_hash says " + "00" * 32,
    ),
    "odd length": (
        {
            **with_manifest(
                {"firmware_hash": hashlib.sha256(APP_BYTES).hexdigest(), "firmware_length": 1001}
            ),
            "app.bin": APP_BYTES,
            "app.dat": UNSIGNED_DAT[:5] + (1001).to_bytes(4, "little") + UNSIGNED_DAT[9:],
        },
        "app.bin: 1001 bytes, not a multiple of 4",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PACKAGES))
def test_broken_packages_name_the_zip_and_the_member(tmp_path: Path, case: str) -> None:
    members, message = BAD_PACKAGES[case]
    path = make_zip(tmp_path / "bad.zip", members)
    with pytest.raises(InputError) as caught:
        read_package(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_not_a_zip_truncated_or_missing(tmp_path: Path, app_hex: Path) -> None:
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    with pytest.raises(InputError, match=rf"^{text}: not a zip file or truncated"):
        read_package(text)
    good = tmp_path / "good.zip"
    build(app_hex).write(good)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputError, match=rf"^{truncated}: not a zip file or truncated"):
        read_package(truncated)
    with pytest.raises(InputError, match="package not found"):
        read_package(tmp_path / "absent.zip")


def test_corrupt_member_is_reported_by_name(tmp_path: Path, app_hex: Path) -> None:
    good = tmp_path / "good.zip"
    build(app_hex).write(good)
    data = bytearray(good.read_bytes())
    at = data.index(APP_BIN[:64])  # stored, so the image bytes are in the file as they are
    data[at + 10] ^= 0xFF
    corrupt = tmp_path / "crc.zip"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(InputError) as caught:
        read_package(corrupt)
    assert str(caught.value).startswith(f"{corrupt}: app.bin: corrupt member")
    assert "CRC" in str(caught.value)


def test_two_images_in_one_package_are_refused(tmp_path: Path) -> None:
    members = good_members()
    manifest = json.loads(members["manifest.json"])
    manifest["manifest"]["bootloader"] = manifest["manifest"]["application"]
    members["manifest.json"] = json.dumps(manifest).encode()
    path = make_zip(tmp_path / "two.zip", members)
    with pytest.raises(InputError, match="holds 2 images"):
        read_package(path)
