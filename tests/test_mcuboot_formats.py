"""dfuhil's MCUboot image and trailer readers against imgtool, the tool that writes them.

Images come from imgtool's own command line (a peer no one here wrote): what imgtool says
about an image (``imgtool verify``) and what dfuhil says must agree, for every key type MCUboot
verifies, and for the damaged images a QA engineer meets (flipped bit, truncated file, wrong
magic, TLV area that lies about its size).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from imgtool import image as imgtool_image
from imgtool import keys as imgtool_keys

from dfuhil.formats.mcuboot import (
    ImageFormatError,
    ImageVersion,
    PublicKey,
    TlvType,
    load_public_key,
    parse_image,
    read_slot_image,
    verify_signature,
)
from dfuhil.formats.mcuboot_trailer import (
    Flag,
    Magic,
    SwapType,
    TrailerLayout,
    TrailerState,
    decide_swap,
    field_write,
    read_trailer,
    trailer_magic,
)

IMGTOOL = str(Path(sys.executable).with_name("imgtool"))
SLOT = 0x20000
BODY = bytes((i * 7 + 3) & 0xFF for i in range(3000))


def imgtool(*args: str | Path) -> str:
    done = subprocess.run(
        [IMGTOOL, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcuboot")
    (path / "body.bin").write_bytes(BODY)
    for kind in ("ecdsa-p256", "ed25519", "rsa-2048", "ecdsa-p384"):
        imgtool("keygen", "-k", path / f"{kind}.pem", "-t", kind)
    return path


def sign(work: Path, key: str | None, out: str, *extra: str, version: str = "1.2.3+4") -> Path:
    args: list[str | Path] = ["sign", "-H", "0x200", "--pad-header", "-v", version, "-S", hex(SLOT)]
    if key:
        args += ["-k", work / f"{key}.pem"]
    imgtool(*args, *extra, work / "body.bin", work / out)
    return work / out


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519", "rsa-2048", "ecdsa-p384"])
def test_imgtool_signed_images_parse_and_verify_with_their_key(work: Path, kind: str) -> None:
    path = sign(work, kind, f"{kind}.bin", "-s", "auto")
    img = parse_image(path.read_bytes(), source=path.name)
    assert img.version == ImageVersion(1, 2, 3, 4)
    assert str(img.version) == "1.2.3.4"  # SMP's form
    assert img.body == BODY
    assert img.header.hdr_size == 0x200 and img.header.img_size == len(BODY)
    assert img.size == path.stat().st_size  # nothing after the TLVs (no --pad)
    assert img.security_counter == (1 << 24) | (2 << 16) | 3
    assert img.hash_ok
    key = load_public_key(work / f"{kind}.pem")
    assert key.type == kind
    assert verify_signature(img, key) is None
    # imgtool's own verdict on the same file agrees.
    result, version, digest, _sig = imgtool_image.Image.verify(
        str(path), imgtool_keys.load(str(work / f"{kind}.pem"))
    )
    assert result == imgtool_image.VerifyResult.OK
    assert digest == img.image_hash
    assert tuple(version) == (1, 2, 3, 4)


def test_key_hash_equals_what_imgtool_embeds(work: Path) -> None:
    path = sign(work, "ecdsa-p256", "kh.bin")
    img = parse_image(path.read_bytes())
    assert img.key_hash == load_public_key(work / "ecdsa-p256.pem").key_hash
    # imgtool getpubhash -e raw writes the same 32 bytes.
    raw = work / "hash.raw"
    imgtool("getpubhash", "-k", work / "ecdsa-p256.pem", "-e", "raw", "-o", raw)
    assert raw.read_bytes() == img.key_hash


def test_other_key_unsigned_and_corrupted_images_are_refused_with_a_reason(work: Path) -> None:
    signed = sign(work, "ecdsa-p256", "good.bin")
    p256 = load_public_key(work / "ecdsa-p256.pem")
    ed = load_public_key(work / "ed25519.pem")
    img = parse_image(signed.read_bytes())
    assert "not with the key this MCUboot trusts" in (verify_signature(img, ed) or "")
    unsigned = parse_image(sign(work, None, "unsigned.bin").read_bytes())
    assert unsigned.signature_tlv is None
    assert "unsigned" in (verify_signature(unsigned, p256) or "")
    flipped = bytearray(signed.read_bytes())
    flipped[0x200 + 100] ^= 0x01
    broken = parse_image(bytes(flipped))
    assert not broken.hash_ok
    assert "does not match its contents" in (verify_signature(broken, p256) or "")
    result, *_ = imgtool_image.Image.verify(str(_write(work, "flip.bin", flipped)), None)
    assert result == imgtool_image.VerifyResult.INVALID_HASH


def test_a_signature_that_does_not_verify_is_named_as_such(work: Path) -> None:
    raw = bytearray(sign(work, "ed25519", "sig.bin").read_bytes())
    sig = parse_image(bytes(raw)).signature_tlv
    assert sig is not None and sig.type == TlvType.ED25519
    raw[sig.offset + 4] ^= 0xFF
    verdict = verify_signature(parse_image(bytes(raw)), load_public_key(work / "ed25519.pem"))
    assert verdict is not None and verdict.startswith("bad signature")


def test_sample_key_hashes_name_the_mcuboot_key_file() -> None:
    # KEYHASH of root-ec-p256.pem as published in the spec (§1.8); an image carrying it was
    # signed with a key anyone can download.
    img_hash = bytes.fromhex("e30466f6b8470c1f29070b17f1e2d3e94d445e3f608087fdc711e4382bb538b6")
    key = PublicKey("ecdsa-p256", b"not-a-real-der")
    assert key.sample_key is None
    from dfuhil.formats.mcuboot import SAMPLE_KEY_HASHES

    assert SAMPLE_KEY_HASHES[img_hash] == "root-ec-p256.pem"


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda b: b[:20], "shorter than the 32-byte"),
        (lambda b: b[:0x400], "truncated"),
        (lambda b: b"\x00\x00\x00\x00" + b[4:], "magic is 0x00000000"),
        (lambda b: b"\xff\xff\xff\xff" + b[4:], "erased flash"),
        (lambda b: b"\x3c\xb8\xf3\x96" + b[4:], "legacy v1 magic"),
    ],
)
def test_damaged_files_get_a_clear_error(work: Path, cut: object, message: str) -> None:
    data = sign(work, "ecdsa-p256", "dmg.bin").read_bytes()
    with pytest.raises(ImageFormatError, match=message):
        parse_image(cut(data), source="dmg.bin")  # type: ignore[operator]


def test_a_tlv_area_that_lies_about_its_size_is_refused(work: Path) -> None:
    data = bytearray(sign(work, "ecdsa-p256", "lie.bin").read_bytes())
    info = 0x200 + len(BODY)
    magic, total = struct.unpack_from("<HH", data, info)
    struct.pack_into("<HH", data, info, magic, total + 64)
    with pytest.raises(ImageFormatError, match="lies about its size"):
        parse_image(bytes(data), source="lie.bin")
    struct.pack_into("<HH", data, info, 0x1234, total)
    with pytest.raises(ImageFormatError, match="TLV info magic 0x6907"):
        parse_image(bytes(data), source="lie.bin")
    # A TLV entry whose length runs past its area.
    struct.pack_into("<HH", data, info, magic, total)
    struct.pack_into("<HH", data, info + 4, TlvType.SHA256, 0x400)
    with pytest.raises(ImageFormatError, match="runs past"):
        parse_image(bytes(data), source="lie.bin")


def test_slot_reader_stops_at_the_tlvs_and_knows_an_erased_slot(work: Path) -> None:
    data = sign(work, "ecdsa-p256", "slot.bin", "--pad").read_bytes()
    assert len(data) == SLOT
    flash = bytearray(b"\xff" * 0x1000) + data

    def read(addr: int, n: int) -> bytes:
        return bytes(flash[addr : addr + n])

    img = read_slot_image(read, 0x1000, SLOT)
    assert img is not None and img.hash_ok and img.size < SLOT
    assert read_slot_image(read, 0, 0x1000) is None


def test_padded_images_carry_the_trailer_imgtool_writes(work: Path) -> None:
    layout = TrailerLayout(SLOT)
    test = sign(work, "ecdsa-p256", "test.bin", "--pad").read_bytes()
    perm = sign(work, "ecdsa-p256", "perm.bin", "--confirm").read_bytes()

    def state(data: bytes) -> TrailerState:
        return read_trailer(lambda a, n: data[a : a + n], 0, layout)

    t = state(test)
    assert (t.magic, t.image_ok, t.copy_done) == (Magic.GOOD, Flag.UNSET, Flag.UNSET)
    p = state(perm)
    assert (p.magic, p.image_ok) == (Magic.GOOD, Flag.SET)
    assert test[-16:] == trailer_magic(8)
    # imgtool writes no swap_info: the table alone decides (spec §2.4).
    erased = state(b"\xff" * SLOT)
    assert erased.magic == Magic.UNSET
    assert decide_swap(erased, t) == SwapType.TEST
    assert decide_swap(erased, p) == SwapType.PERM


def test_trailer_offsets_match_mcuboot_for_align_8_and_32() -> None:
    # A real log (smpclient #60, slot 0x6c000): magic 0x6bff0, image_ok 0x6bfe8, swap_info 0x6bfd8.
    layout = TrailerLayout(0x6C000)
    assert (layout.magic, layout.image_ok, layout.swap_info) == (0x6BFF0, 0x6BFE8, 0x6BFD8)
    assert layout.size == 1584  # 128 sectors x 3 records x 4 bytes + 48
    assert layout.size == imgtool_image.Image()._trailer_size(4, 128, False, None, False, 0)
    wide = TrailerLayout(SLOT, max_align=32)
    assert [SLOT - o for o in (wide.image_ok, wide.copy_done, wide.swap_info, wide.swap_size)] == [
        0x40,
        0x60,
        0x80,
        0xA0,
    ]
    assert trailer_magic(32)[:2] == b"\x20\x00"
    overwrite = TrailerLayout.for_mode("overwrite-only", SLOT)
    assert overwrite.size == imgtool_image.Image()._trailer_size(4, 128, True, None, False, 0)


def test_status_records_start_with_the_first_swap_step() -> None:
    # boot_status_internal_off: (idx - IDX_0) * records * write_size + (state - STATE_0) * ...
    layout = TrailerLayout(SLOT)
    assert layout.status_offset(1, 1) == layout.status_start
    assert layout.status_offset(1, 3) == layout.status_start + 8
    assert layout.status_offset(2, 1) == layout.status_start + 12
    assert layout.status_offset(128, 3) == layout.status_start + layout.status_size - 4
    assert layout.status_offset(128, 3) < layout.swap_size
    with pytest.raises(ValueError):
        layout.status_offset(0, 1)


def _state(magic: Magic, ok: Flag, done: Flag) -> TrailerState:
    return TrailerState(magic, SwapType.NONE, 0, done, ok, None)


@pytest.mark.parametrize(
    ("primary", "secondary", "expected"),
    [
        # row II: secondary GOOD, image_ok unset -> TEST, whatever the primary says
        (
            _state(Magic.UNSET, Flag.UNSET, Flag.UNSET),
            _state(Magic.GOOD, Flag.UNSET, Flag.UNSET),
            SwapType.TEST,
        ),
        (
            _state(Magic.GOOD, Flag.UNSET, Flag.SET),
            _state(Magic.GOOD, Flag.UNSET, Flag.UNSET),
            SwapType.TEST,
        ),
        # row III: secondary GOOD, image_ok set -> PERM
        (
            _state(Magic.UNSET, Flag.UNSET, Flag.UNSET),
            _state(Magic.GOOD, Flag.SET, Flag.UNSET),
            SwapType.PERM,
        ),
        # row IV: primary GOOD, unconfirmed, copy done -> REVERT
        (
            _state(Magic.GOOD, Flag.UNSET, Flag.SET),
            _state(Magic.UNSET, Flag.UNSET, Flag.UNSET),
            SwapType.REVERT,
        ),
        # confirmed, or never swapped, or a BAD magic -> NONE
        (
            _state(Magic.GOOD, Flag.SET, Flag.SET),
            _state(Magic.UNSET, Flag.UNSET, Flag.UNSET),
            SwapType.NONE,
        ),
        (
            _state(Magic.GOOD, Flag.UNSET, Flag.UNSET),
            _state(Magic.UNSET, Flag.UNSET, Flag.UNSET),
            SwapType.NONE,
        ),
        (
            _state(Magic.UNSET, Flag.UNSET, Flag.UNSET),
            _state(Magic.BAD, Flag.UNSET, Flag.UNSET),
            SwapType.NONE,
        ),
        (
            _state(Magic.UNSET, Flag.UNSET, Flag.UNSET),
            _state(Magic.GOOD, Flag.BAD, Flag.UNSET),
            SwapType.NONE,
        ),
    ],
)
def test_swap_table(primary: TrailerState, secondary: TrailerState, expected: SwapType) -> None:
    assert decide_swap(primary, secondary) == expected


def test_field_writes_are_whole_aligned_blocks_that_decode_back() -> None:
    layout = TrailerLayout(SLOT)
    flash = bytearray(b"\xff" * SLOT)
    for field, value in (("magic", 0), ("image_ok", 1), ("swap_info", 0x12), ("swap_size", 0x3000)):
        offset, data = field_write(layout, field, value)  # type: ignore[arg-type]
        assert offset % 8 == 0 and len(data) % 4 == 0
        flash[offset : offset + len(data)] = data
    got = read_trailer(lambda a, n: bytes(flash[a : a + n]), 0, layout)
    assert got.magic == Magic.GOOD and got.image_ok == Flag.SET and got.copy_done == Flag.UNSET
    assert (got.swap_type, got.image_num, got.swap_size) == (SwapType.TEST, 1, 0x3000)
    assert got.describe() == "magic=good, swap_type=0x2, copy_done=0x3, image_ok=0x1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3", (1, 2, 3, 0)),
        ("1.2.3+4", (1, 2, 3, 4)),
        ("1.2.3.4", (1, 2, 3, 4)),
        ("2", (2, 0, 0, 0)),
    ],
)
def test_versions_parse_like_imgtool_and_compare_like_mcuboot(
    text: str, expected: tuple[int, ...]
) -> None:
    v = ImageVersion.parse(text)
    assert (v.major, v.minor, v.revision, v.build) == expected
    assert ImageVersion(1, 2, 3, 9).key() == ImageVersion(1, 2, 3, 0).key()
    assert ImageVersion(1, 2, 3, 9).key(use_build=True) > ImageVersion(1, 2, 3, 0).key(
        use_build=True
    )
    with pytest.raises(ValueError, match="not a version"):
        ImageVersion.parse("v1.x")
    with pytest.raises(ValueError, match="255"):
        ImageVersion.parse("256.0.0")


def _write(work: Path, name: str, data: bytes | bytearray) -> Path:
    path = work / name
    path.write_bytes(bytes(data))
    return path
