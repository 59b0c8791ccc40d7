"""`image check` rules: every reason a board's MCUboot would refuse an image, with both values."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from intelhex import IntelHex

from dfuhil.errors import InputError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.formats.mcuboot import F_NON_BOOTABLE, ImageVersion, TlvType, parse_image
from dfuhil.procedures.image_check import (
    CheckReport,
    check_image,
    check_image_file,
    max_image_size,
    shipped_version,
)
from dfuhil.procedures.image_sign import (
    SignParams,
    generate_key,
    sign_build,
    sign_for_board,
    sign_image,
)
from dfuhil.sim.firmware.generate import sample_image

BODY = bytes(range(256)) * 16  # 4 KiB: small images keep the tests fast
IMGTOOL = str(Path(sys.executable).with_name("imgtool"))
SAMPLE_P256_HASH = bytes.fromhex("e30466f6b8470c1f29070b17f1e2d3e94d445e3f608087fdc711e4382bb538b6")

FARM = textwrap.dedent(
    """
    version: 1
    flash_layouts:
      small:
        chip: nRF52840_xxAA
        regions:
          mcuboot: {start: 0x0, size: 0xC000}
          mcuboot_primary: {start: 0xC000, size: 0x10000}
          mcuboot_secondary: {start: 0x1C000, size: 0x10000}
          mcuboot_scratch: {start: 0x2C000, size: 0x2000}
    firmware_sets:
      move:
        chip: nRF52840_xxAA
        application: {file: app.hex}
        mcuboot: {mode: swap-move, key: k.pem, builds: {update: update.bin}}
      scratch:
        chip: nRF52840_xxAA
        application: {file: app.hex}
        mcuboot: {mode: swap-scratch, key: k.pem, downgrade_prevention: true}
      over:
        chip: nRF52840_xxAA
        mcuboot: {mode: overwrite-only, key: k.pem, downgrade_prevention: true}
      xip:
        chip: nRF52840_xxAA
        application: {file: app.hex}
        mcuboot: {mode: direct-xip, key: ed.pem}
      dev:
        chip: nRF52840_xxAA
        mcuboot: {mode: swap-move, key: k.pem, allow_sample_keys: true}
      single:
        chip: nRF52840_xxAA
        mcuboot: {mode: single-slot, key: k.pem, serial_recovery: {wait_ms: 0}}
    boards:
    """
).lstrip()
BOARD = """  - {{name: {name}, chip: nRF52840_xxAA, probe: {{backend: virtual}}, firmware: {name},
     flash_layout: small}}
"""
NAMES = ("move", "scratch", "over", "xip", "dev", "single")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Farm:
    d = tmp_path_factory.mktemp("farm")
    generate_key(d / "k.pem", "ecdsa-p256")
    generate_key(d / "ed.pem", "ed25519")
    generate_key(d / "other.pem", "ecdsa-p256")
    (d / "update.bin").write_bytes(BODY)
    text = FARM + "".join(BOARD.format(name=n) for n in NAMES)
    (d / "boards.yaml").write_text(text)
    # The shipped application: version 1.2.0 in the primary slot.
    app = sign_image(BODY, d / "k.pem", "1.2.0", params=SignParams(slot_size=0x10000))
    ih = IntelHex()
    ih.frombytes(app, offset=0xC000)
    ih.write_hex_file(str(d / "app.hex"))
    return load_farm(d / "boards.yaml", check_files=True)


def key(farm: Farm, name: str) -> Path:
    return farm.path.parent / name


def verdicts(report: CheckReport) -> dict[str, str]:
    """rule -> status of its last finding."""
    return {f.rule: f.status for f in report.findings}


def failure(report: CheckReport, rule: str) -> str:
    found = [f for f in report.failures if f.rule == rule]
    assert found, report.text()
    return f"{found[0].message} | fix: {found[0].fix}"


def test_a_good_image_passes_every_rule(farm: Farm) -> None:
    board = farm.board("move")
    report = check_image(sign_build(board, "update", "1.3.0"), board, source="up.bin")
    assert report.ok, report.text()
    assert list(verdicts(report)) == [
        "format",
        "flags",
        "header size",
        "size",
        "load address",
        "signature",
        "sample key",
        "version",
    ]
    assert report.slot is not None and report.slot.name == "mcuboot_secondary"
    assert report.refusal() is None
    assert report.lines()[-1].startswith("OK: move would accept")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: b[:100], "a TLV area must follow (truncated file?)"),
        (lambda b: b[:20], "shorter than the 32-byte"),
        (lambda b: b"\x00" + b[1:], "magic is 0x96F3B800"),
        (lambda b: b"\xff" * 4 + b[4:], "erased flash"),
    ],
)
def test_unreadable_images(farm: Farm, damage: object, words: str) -> None:
    board = farm.board("move")
    signed = sign_for_board(BODY, board, "1.3.0")
    report = check_image(damage(signed), board, source="bad.bin")  # type: ignore[operator]
    assert [f.rule for f in report.findings] == ["format"] and not report.ok
    assert words in failure(report, "format")
    assert "upload the signed image" in failure(report, "format")
    error = report.refusal()
    assert error is not None and "bad.bin: format:" in str(error)


def test_a_tlv_area_that_lies_about_its_size(farm: Farm) -> None:
    board = farm.board("move")
    signed = bytearray(sign_for_board(BODY, board, "1.3.0"))
    tlv = 0x200 + len(BODY)
    struct.pack_into("<H", signed, tlv + 2, 0x4000)  # it_tlv_tot far past the end
    report = check_image(bytes(signed), board)
    assert "lies about its size" in failure(report, "format")


def test_signed_with_another_key(farm: Farm) -> None:
    board = farm.board("move")
    signed = sign_for_board(BODY, board, "1.3.0", key_path=key(farm, "other.pem"))
    report = check_image(signed, board)
    assert verdicts(report)["signature"] == "fail"
    assert "not with the key this MCUboot trusts" in failure(report, "signature")
    assert "k.pem" in failure(report, "signature")
    assert [f.rule for f in report.failures] == ["signature"]


def forged_sample_key(signed: bytes) -> bytes:
    """The image with its KEYHASH TLV replaced by the hash of MCUboot's root-ec-p256.pem."""
    image = parse_image(signed)
    keyhash = image.find(TlvType.KEYHASH)
    assert keyhash is not None
    at = keyhash.offset + 4
    return signed[:at] + SAMPLE_P256_HASH + signed[at + 32 :]


def test_signed_with_a_published_sample_key(farm: Farm) -> None:
    board = farm.board("move")
    report = check_image(forged_sample_key(sign_for_board(BODY, board, "1.3.0")), board)
    text = failure(report, "sample key")
    assert "MCUboot's published sample key root-ec-p256.pem" in text
    assert "allow_sample_keys: true" in text
    assert "sample key root-ec-p256.pem" in failure(report, "signature")
    # A development board may allow them: a note, not a refusal (the signature still decides).
    dev = farm.board("dev")
    report = check_image(forged_sample_key(sign_for_board(BODY, dev, "1.3.0")), dev)
    assert verdicts(report)["sample key"] == "note"


def test_too_large_for_the_slot_with_the_modes_trailer(farm: Farm) -> None:
    move, scratch = farm.board("move"), farm.board("scratch")
    spec_move, spec_scratch = move.mcuboot, scratch.mcuboot
    assert spec_move is not None and spec_scratch is not None
    slot = move.layout.region("mcuboot_secondary")
    # swap-move: 16 sectors, one for the trailer, one spare for the move.
    assert max_image_size(spec_move, move, slot) == 14 * 4096
    assert max_image_size(spec_scratch, scratch, slot) == 0x10000 - (128 * 3 * 4 + 48)
    body = bytes(0xE800 - 0x200)  # fits swap-scratch's budget, not swap-move's
    unchecked = SignParams(slot_size=0)
    image = sign_image(body, key(farm, "k.pem"), "1.3.0", params=unchecked)
    report = check_image(image, move)
    text = failure(report, "size")
    assert "too large" in text and "0xE000" in text and "spare sector" in text
    assert "enlarge the slots" in text
    assert check_image(image, scratch, current=ImageVersion(1, 0, 0)).ok
    with pytest.raises(InputError, match="takes at most 0xE000"):
        sign_for_board(body, move, "1.3.0")


def test_header_size_and_flags(farm: Farm) -> None:
    board = farm.board("move")
    params = SignParams(header_size=0x100, slot_size=0x10000)
    report = check_image(sign_image(BODY, key(farm, "k.pem"), "1.3.0", params=params), board)
    assert "0x100, but the board's application is linked behind a 0x200" in failure(
        report, "header size"
    )
    report = check_image(sign_for_board(BODY, board, "1.3.0", non_bootable=True), board)
    assert "NON_BOOTABLE" in failure(report, "flags")
    assert parse_image(sign_for_board(BODY, board, "1.3.0", non_bootable=True)).header.flags == (
        F_NON_BOOTABLE
    )


def test_downgrade_prevention(farm: Farm) -> None:
    scratch = farm.board("scratch")
    assert shipped_version(scratch) == ImageVersion(1, 2, 0)
    report = check_image(sign_for_board(BODY, scratch, "1.1.9"), scratch)
    text = failure(report, "version")
    assert "1.1.9 is lower than the current 1.2.0" in text
    assert "Image 0 in slot 1 erased due to downgrade prevention" in text
    assert "at least 1.2.0" in text
    equal = check_image(sign_for_board(BODY, scratch, "1.2.0"), scratch)
    assert equal.ok and "equal is allowed" in equal.text()
    # The caller's view of the board wins over the shipped application.
    later = check_image(
        sign_for_board(BODY, scratch, "1.2.0"), scratch, current=ImageVersion(2, 0, 0)
    )
    assert "lower than the current 2.0.0" in failure(later, "version")
    over = farm.board("over")
    report = check_image(sign_for_board(BODY, over, "0.9.0"), over, current=ImageVersion(1, 0, 0))
    assert "Insufficient version in secondary slot" in failure(report, "version")
    unknown = check_image(sign_for_board(BODY, over, "0.9.0"), over)
    assert verdicts(unknown)["version"] == "note" and unknown.ok


def test_direct_xip_slots_and_versions(farm: Farm) -> None:
    xip = farm.board("xip")
    with pytest.raises(InputError, match="pass --slot primary or --slot secondary"):
        sign_for_board(BODY, xip, "1.3.0")
    secondary = sign_for_board(BODY, xip, "1.3.0", slot="secondary")
    assert parse_image(secondary).header.load_addr == 0x1C000
    report = check_image(secondary, xip)
    assert report.ok and report.slot is not None and report.slot.name == "mcuboot_secondary"
    primary = sign_for_board(BODY, xip, "1.3.0", slot="primary")
    assert check_image(primary, xip).slot.name == "mcuboot_primary"  # type: ignore[union-attr]
    # Meant for the secondary but linked for the primary: MCUboot would skip it.
    report = check_image(primary, xip, slot="secondary")
    assert "ROM_FIXED 0xC000, but mcuboot_secondary starts at 0x1C000" in failure(
        report, "load address"
    )
    same = check_image(sign_for_board(BODY, xip, "1.2.0", slot="secondary"), xip)
    assert "would never run" in failure(same, "version")
    plain = sign_image(BODY, key(farm, "ed.pem"), "1.3.0", params=SignParams(slot_size=0x10000))
    report = check_image(plain, xip)
    assert verdicts(report)["load address"] == "note" and report.ok


def imgtool_sign(farm: Farm, key_file: str, out: str, *extra: str, body: bytes = BODY) -> bytes:
    """``imgtool sign`` on its command line (the peer tool), for this farm's 0x10000 slots."""
    d = farm.path.parent
    (d / "body.bin").write_bytes(body)
    args = ["sign", "-H", "0x200", "--pad-header", "--align", "4", "-S", "0x10000"]
    args += ["-v", "1.3.0", "-k", str(d / key_file), *extra, str(d / "body.bin"), str(d / out)]
    done = subprocess.run([IMGTOOL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return (d / out).read_bytes()


@pytest.mark.parametrize("mode", ["move", "scratch", "over"])
def test_rom_fixed_is_checked_only_where_mcuboot_checks_it(farm: Farm, mode: str) -> None:
    """MCUboot reads ROM_FIXED only under MCUBOOT_DIRECT_XIP (loader.c boot_rom_address_check):
    a swap or overwrite build copies the image to the primary and boots it whatever it says."""
    board = farm.board(mode)
    image = imgtool_sign(farm, "k.pem", f"rom-{mode}.bin", "--rom-fixed", "0x1C000")
    report = check_image(image, board, current=ImageVersion(1, 0, 0))
    assert report.ok, report.text()
    note = next(f for f in report.findings if f.rule == "load address")
    assert note.status == "note"
    assert "checks ROM_FIXED only in direct-xip builds" in note.message
    assert "runs the image from mcuboot_primary at 0xC000" in note.message
    # In direct-xip the same address is a slot and must be the right one.
    xip = farm.board("xip")
    rom = imgtool_sign(farm, "ed.pem", "rom-xip.bin", "--rom-fixed", "0xC000")
    report = check_image(rom, xip, slot="secondary", current=ImageVersion(1, 0, 0))
    assert "ROM_FIXED 0xC000, but mcuboot_secondary starts at 0x1C000" in failure(
        report, "load address"
    )


def test_the_reset_vector_must_lie_in_the_slot_the_image_runs_from(farm: Farm) -> None:
    """A non-relocatable image runs only where it was linked: its vector table's reset vector
    says where. Direct-xip runs an image in the slot it sits in; the other modes in the
    primary. ROM_FIXED is only what the signer claimed."""
    xip = farm.board("xip")
    sp = 0x20000000 + xip.chip.ram_size

    def build(linked_at: int) -> bytes:
        return sample_image(linked_at + 0x200, 0x1000, None, f"build@{linked_at:X}", sp)

    for_primary = imgtool_sign(
        farm, "ed.pem", "p.bin", "--rom-fixed", "0x1C000", body=build(0xC000)
    )
    report = check_image(for_primary, xip, current=ImageVersion(1, 0, 0))
    text = failure(report, "link address")
    assert "reset vector 0x0000CC81 (in mcuboot_primary)" in text
    assert "runs from mcuboot_secondary 0x1C000..0x2C000" in text and "faults" in text
    assert [f.rule for f in report.failures] == ["link address"]
    right = imgtool_sign(farm, "ed.pem", "s.bin", "--rom-fixed", "0x1C000", body=build(0x1C000))
    report = check_image(right, xip, current=ImageVersion(1, 0, 0))
    assert report.ok and verdicts(report)["link address"] == "ok"
    # Swap modes run every image from the primary, wherever it was uploaded.
    move = farm.board("move")
    assert check_image(imgtool_sign(farm, "k.pem", "m.bin", body=build(0xC000)), move).ok
    report = check_image(imgtool_sign(farm, "k.pem", "m2.bin", body=build(0x1C000)), move)
    assert "the image runs from mcuboot_primary" in failure(report, "link address")


def test_a_full_public_key_instead_of_its_hash_is_refused(farm: Farm) -> None:
    """Without MCUBOOT_HW_KEY, bootutil_img_validate only reads the KEYHASH TLV: a PUBKEY TLV
    leaves the signature unchecked and the image not valid (image_validate.c)."""
    board = farm.board("move")
    image = imgtool_sign(farm, "k.pem", "full.bin", "--public-key-format", "full")
    parsed = parse_image(image)
    assert parsed.find(TlvType.PUBKEY) is not None and parsed.find(TlvType.KEYHASH) is None
    report = check_image(image, board)
    text = failure(report, "signature")
    assert "--public-key-format full" in text and "looks only for KEYHASH" in text
    assert "sign with the key hash, imgtool's default" in text
    assert [f.rule for f in report.failures] == ["signature"]
    hashed = imgtool_sign(farm, "k.pem", "hash.bin", "--public-key-format", "hash")
    assert check_image(hashed, board).ok


def test_an_encrypted_image_is_refused_as_encrypted(farm: Farm) -> None:
    """imgtool --encrypt: the hash covers the plaintext; an MCUboot without MCUBOOT_ENC_IMAGES
    refuses the header (boot_check_header_valid). Say that, not "corrupted, re-sign"."""
    d = farm.path.parent
    enc = generate_key(d / "enc.pem", "ecdsa-p256")
    (d / "enc.pub.pem").write_bytes(
        serialization.load_der_public_key(enc.der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    board = farm.board("move")
    image = imgtool_sign(farm, "k.pem", "enc.bin", "--encrypt", str(d / "enc.pub.pem"))
    report = check_image(image, board)
    assert [f.rule for f in report.failures] == ["flags"], report.text()
    text = failure(report, "flags")
    assert "encrypted (flag IMAGE_F_ENCRYPTED_AES128, TLV ENC_EC256)" in text
    assert "no decryption key configured" in text and "signed without --encrypt" in text
    assert "corrupted" not in report.text() and "does not match" not in report.text()
    signature = next(f for f in report.findings if f.rule == "signature")
    assert signature.status == "ok" and "covers the plaintext" in signature.message
    # `image show` says the same: a hash it cannot check, not a corrupted image.
    (d / "enc.signed.bin").write_bytes(image)
    shown = subprocess.run(
        [sys.executable, "-m", "dfuhil", "image", "show", str(d / "enc.signed.bin")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "hash not checked: encrypted (flag IMAGE_F_ENCRYPTED_AES128" in shown.stdout
    assert "MISMATCH" not in shown.stdout
    # imgtool 2.5.0's --clear leaves the body plain but still sets the flag: still refused.
    clear = imgtool_sign(farm, "k.pem", "clear.bin", "--encrypt", str(d / "enc.pub.pem"), "--clear")
    assert parse_image(clear).hash_ok
    assert [f.rule for f in check_image(clear, board).failures] == ["flags"]


def test_padded_images(farm: Farm) -> None:
    board = farm.board("move")
    padded = sign_for_board(BODY, board, "1.3.0", pad=True)
    assert len(padded) == 0x10000
    report = check_image(padded, board)
    assert report.ok and "a test request" in report.text()
    confirmed = check_image(sign_for_board(BODY, board, "1.3.0", confirm=True), board)
    assert "a permanent request" in confirmed.text()
    # Made for BOOT_MAX_ALIGN 32: a magic this board does not recognise.
    params = SignParams(slot_size=0x10000, max_align=32)
    wrong = check_image(
        sign_image(BODY, key(farm, "k.pem"), "1.3.0", params=params, pad=True), board
    )
    assert "not this board's" in failure(wrong, "trailer") and "--max-align 8" in failure(
        wrong, "trailer"
    )
    big = SignParams(slot_size=0x20000)
    report = check_image(sign_image(BODY, key(farm, "k.pem"), "1.3.0", params=big, pad=True), board)
    assert "padded to 0x20000" in failure(report, "size")


def test_single_slot_images_go_to_the_primary(farm: Farm) -> None:
    single = farm.board("single")
    image = sign_for_board(BODY, single, "1.3.0")
    report = check_image(image, single)
    assert report.ok and report.slot is not None and report.slot.name == "mcuboot_primary"
    assert "no secondary slot" in failure(check_image(image, single, slot="secondary"), "slot")


def test_hex_files_must_sit_at_the_slot(farm: Farm, tmp_path: Path) -> None:
    board = farm.board("move")
    image = sign_for_board(BODY, board, "1.3.0")
    for address, ok in ((0x1C000, True), (0xC000, False)):
        ih = IntelHex()
        ih.frombytes(image, offset=address)
        path = tmp_path / f"at_{address:x}.hex"
        ih.write_hex_file(str(path))
        report = check_image_file(path, board)
        assert report.ok == ok, report.text()
    assert "the .hex places the image at 0xC000" in failure(report, "load address")


def test_boards_without_mcuboot_and_missing_files(tmp_path: Path, farm: Farm) -> None:
    (tmp_path / "boards.yaml").write_text(
        "version: 1\nboards:\n  - name: x\n    chip: nRF52840_xxAA\n    probe: {backend: virtual}\n"
        "    flash_layout: {chip: nRF52840_xxAA, regions: {a: {start: 0, size: 4096}}}\n"
    )
    plain: BoardSpec = load_farm(tmp_path / "boards.yaml").board("x")
    with pytest.raises(InputError, match="no MCUboot"):
        check_image(b"", plain)
    with pytest.raises(InputError, match="image file not found"):
        check_image_file(tmp_path / "nope.bin", farm.board("move"))
