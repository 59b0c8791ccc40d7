"""The virtual MCUboot in every upgrade mode: boot log, swap decisions, validation, trailers,
and serial recovery driven by the real peer (smpclient over the board's pty).

Each test builds a fresh in-process board (tests/mcubootrig.py) with MCUboot at 0x0 and signed
blinky apps (imgtool); the test plays the programmer and the application's trailer writes.
What runs is read from the virtual CPU (the app's descriptor version), what MCUboot printed
from the board's real pty, and flash byte for byte. The farm runs 20x faster than the bench;
nothing here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from imgtool import keys as imgtool_keys
from mcubootrig import (
    GEOMETRIES,
    HDR,
    WAIT_S,
    McubootRig,
    app_body,
    app_image,
    build_for,
    mcuboot_board,
    public_key,
    recovery_build,
    sign,
)
from simfarm import wait_until
from smp.error import ErrorV1
from smpclient import SMPClient
from smpclient.generics import success
from smpclient.requests.image_management import ImageStatesRead
from smpclient.requests.os_management import EchoWrite, MCUMgrParametersRead, ResetWrite
from smpclient.transport.serial import SMPSerialTransport

from dfuhil.formats.mcuboot import parse_image
from dfuhil.formats.mcuboot_build import Slot
from dfuhil.formats.mcuboot_trailer import Flag, TrailerState
from dfuhil.procedures.boot_diagnosis import diagnose
from dfuhil.sim.descriptor import RESET_OFFSET

T = TypeVar("T")
SWAP_MODES = ("swap-scratch", "swap-move")
ALGORITHM = {"swap-scratch": "scratch", "swap-move": "move"}
NOT_VALID = "E: Image in the secondary slot is not valid!"
IMGTOOL = str(Path(sys.executable).with_name("imgtool"))


@pytest.fixture(scope="module")
def key() -> Any:
    return imgtool_keys.ECDSA256P1.generate()


@pytest.fixture(scope="module")
def other_key() -> Any:
    return imgtool_keys.ECDSA256P1.generate()


def flags(state: TrailerState) -> tuple[str, str, str]:
    """(magic, image_ok, copy_done) as §2.6 and §7 write them."""
    return state.magic.name, state.image_ok.name, state.copy_done.name


ERASED_TRAILER = ("UNSET", "UNSET", "UNSET")


def secondary(rig: McubootRig) -> Slot:
    slot = rig.geometry.secondary
    assert slot is not None
    return slot


def images(mode: str, key: Any, v2_size: int = 0x2400) -> tuple[bytes, bytes]:
    primary = GEOMETRIES[mode].primary
    return app_image(primary, "1.0.0", key), app_image(primary, "2.0.0", key, size=v2_size)


# --- the boot log ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "area"), [("swap-move", "Secondary image"), ("swap-scratch", "Scratch")]
)
def test_normal_boot_prints_mcuboot_s_lines_in_order_and_jumps_to_the_body(
    mode: str, area: str, key: Any
) -> None:
    v1, _ = images(mode, key)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        log, running = rig.boot()
        source = "none" if mode == "swap-move" else "primary slot"  # row 4: never swapped
        assert log.lines() == [
            "*** Booting MCUboot v2.1.0 ***",
            "*** Using Zephyr OS build v3.7.99-ncs1 ***",
            "I: Starting bootloader",
            "I: Primary image: magic=unset, swap_type=0x1, copy_done=0x3, image_ok=0x3",
            f"I: {area}: magic=unset, swap_type=0x1, copy_done=0x3, image_ok=0x3",
            f"I: Boot source: {source}",
            "I: Image index: 0, Swap type: none",
            "I: Bootloader chainload address offset: 0x10000",
            "I: Image version: v1.0.0",
            "I: Jumping to the first image slot",
        ]
        assert running == "1.0.0"
        assert rig.board.cpu.status == "running app 1.0.0 at 0x00010200"


# --- swap modes: test, confirm, revert, permanent ----------------------------------------------


@pytest.mark.parametrize("mode", SWAP_MODES)
def test_upgrade_then_confirm_keeps_the_new_image(mode: str, key: Any) -> None:
    v1, v2 = images(mode, key)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(secondary(rig), v2)
        rig.set_pending()
        log, running = rig.boot()
        if mode == "swap-move":
            assert (
                "I: Secondary image: magic=good, swap_type=0x2, copy_done=0x3, image_ok=0x3"
            ) in log.lines()
        assert "I: Image index: 0, Swap type: test" in log.lines()
        assert f"I: Starting swap using {ALGORITHM[mode]} algorithm." in log.lines()
        assert running == "2.0.0"
        assert rig.slot_bytes(rig.geometry.primary, len(v2)) == v2
        assert rig.slot_bytes(secondary(rig), len(v1)) == v1
        # §2.6 step 3: the next boot would revert unless the new image confirms itself.
        assert flags(rig.trailer(rig.geometry.primary)) == ("GOOD", "UNSET", "SET")
        assert flags(rig.trailer(secondary(rig))) == ERASED_TRAILER

        rig.confirm()
        for _ in range(2):
            log, running = rig.boot()
            assert "I: Image index: 0, Swap type: none" in log.lines()
            assert not any("Starting swap" in line for line in log.lines())
            assert running == "2.0.0"
        assert flags(rig.trailer(rig.geometry.primary)) == ("GOOD", "SET", "SET")


@pytest.mark.parametrize("mode", SWAP_MODES)
def test_a_test_image_never_confirmed_is_reverted_at_the_next_reset(mode: str, key: Any) -> None:
    v1, v2 = images(mode, key)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(secondary(rig), v2)
        rig.set_pending()
        assert rig.boot()[1] == "2.0.0"
        log, running = rig.boot()
        assert "I: Primary image: magic=good, swap_type=0x2, copy_done=0x1, image_ok=0x3" in (
            log.lines()
        )
        assert "I: Image index: 0, Swap type: revert" in log.lines()
        assert f"I: Starting swap using {ALGORITHM[mode]} algorithm." in log.lines()
        assert running == "1.0.0"
        assert rig.slot_bytes(rig.geometry.primary, len(v1)) == v1
        assert rig.slot_bytes(secondary(rig), len(v2)) == v2
        assert flags(rig.trailer(rig.geometry.primary)) == ("GOOD", "SET", "SET")
        assert flags(rig.trailer(secondary(rig))) == ERASED_TRAILER
        log, running = rig.boot()
        assert "I: Image index: 0, Swap type: none" in log.lines() and running == "1.0.0"


@pytest.mark.parametrize("mode", SWAP_MODES)
def test_a_permanent_request_swaps_once_and_marks_the_primary_confirmed(
    mode: str, key: Any
) -> None:
    v1, v2 = images(mode, key)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(secondary(rig), v2)
        rig.set_pending(permanent=True)
        log, running = rig.boot()
        assert "I: Image index: 0, Swap type: perm" in log.lines() and running == "2.0.0"
        assert flags(rig.trailer(rig.geometry.primary)) == ("GOOD", "SET", "SET")
        assert flags(rig.trailer(secondary(rig))) == ERASED_TRAILER
        log, running = rig.boot()
        assert "I: Image index: 0, Swap type: none" in log.lines() and running == "2.0.0"


def test_swap_status_records_sit_where_mcuboot_writes_them(key: Any) -> None:
    """swap-scratch: operation idx, step s at status_start + ((idx-1)*3 + s-1) * write_size,
    value s (TrailerLayout.status_offset(idx, s)); swap-move: one "move" record
    per sector, then two "swap" records per sector after max_sectors move records."""
    for mode, expected in (
        ("swap-scratch", bytes([1, 255, 255, 255, 2, 255, 255, 255, 3, 255, 255, 255]) * 3),
        (
            "swap-move",
            bytes([1, 255, 255, 255]) * 3
            + b"\xff" * 4 * 5
            + bytes([1, 255, 255, 255, 2, 255, 255, 255]) * 3,
        ),
    ):
        v1, v2 = images(mode, key)  # v2 spans 3 sectors
        with mcuboot_board(build_for(mode, key), primary=v1) as rig:
            rig.program(secondary(rig), v2)
            rig.set_pending()
            assert rig.boot()[1] == "2.0.0"
            layout = rig.geometry.layout(rig.geometry.primary)
            area = rig.slot_bytes(rig.geometry.primary)[layout.status_start : layout.swap_size]
            assert area[: len(expected)] == expected, mode
            assert area[len(expected) :] == b"\xff" * (len(area) - len(expected)), mode
            if mode == "swap-scratch":
                for idx in (1, 2, 3):
                    for step in (1, 2, 3):
                        off = layout.status_offset(idx, step)
                        assert rig.slot_bytes(rig.geometry.primary)[off] == step


def test_an_image_reaching_into_the_trailer_sector_swaps_through_the_scratch_trailer(
    key: Any,
) -> None:
    v1, big = images("swap-scratch", key, v2_size=0x3A00)  # into the last sector
    with mcuboot_board(build_for("swap-scratch", key), primary=v1) as rig:
        rig.program(secondary(rig), big)
        rig.set_pending()
        assert rig.boot()[1] == "2.0.0"
        assert rig.slot_bytes(rig.geometry.primary, len(big)) == big
        assert flags(rig.trailer(rig.geometry.primary)) == ("GOOD", "UNSET", "SET")
        assert rig.boot()[1] == "1.0.0"  # and back
        assert rig.slot_bytes(rig.geometry.primary, len(v1)) == v1
        assert rig.slot_bytes(secondary(rig), len(big)) == big


# --- invalid images in the secondary -----------------------------------------------------------


def _flip(image: bytes, offset: int) -> bytes:
    out = bytearray(image)
    out[offset] ^= 0x01
    return bytes(out)


def bad_images(mode: str, key: Any, other_key: Any) -> dict[str, Callable[[], bytes]]:
    primary = GEOMETRIES[mode].primary
    good = app_image(primary, "2.0.0", key)
    sig = parse_image(good).signature_tlv
    assert sig is not None
    # Bodies that end the image just past the mode's limit (swap-move 0x3000, swap-scratch
    # 0x3F70 for these slots) yet leave the trailer's last 48 bytes free.
    body = 0x3000 if mode == "swap-move" else 0x3D0A
    return {
        "bad-signature": lambda: _flip(good, sig.offset + 4 + 10),
        "wrong-key": lambda: app_image(primary, "2.0.0", other_key),
        "corrupted": lambda: _flip(good, HDR + 0x1000),
        "unsigned": lambda: sign(app_body(primary.start + HDR, "2.0.0", 0x1800), "2.0.0", None),
        "too-large": lambda: app_image(primary, "2.0.0", key, size=body, slot_size=0x8000),
    }


WHY_INVALID = {
    "bad-signature": "bad signature",
    "wrong-key": "not with the key this MCUboot trusts",
    "corrupted": "the image hash does not match its contents",
    "unsigned": "unsigned: no signature TLV",
    "too-large": "past the 0x",
}


@pytest.mark.parametrize("mode", SWAP_MODES)
@pytest.mark.parametrize("case", list(WHY_INVALID))
def test_an_invalid_secondary_is_erased_and_never_booted(
    mode: str, case: str, key: Any, other_key: Any
) -> None:
    bad = bad_images(mode, key, other_key)[case]()
    assert len(bad) <= 0x4000 - 48, "the image must leave room for the trailer fields"
    v1, _ = images(mode, key)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(secondary(rig), bad)
        rig.set_pending(permanent=case in ("wrong-key", "too-large"))  # test or permanent alike
        log, running = rig.boot()
        assert NOT_VALID in log.lines()
        assert WHY_INVALID[case] in rig.notes()  # refused for the right reason
        assert not any("Starting swap" in line for line in log.lines())
        assert running == "1.0.0"
        assert rig.slot_bytes(rig.geometry.primary, len(v1)) == v1
        assert rig.slot_bytes(secondary(rig)) == b"\xff" * secondary(rig).size
        log, running = rig.boot()
        assert "I: Image index: 0, Swap type: none" in log.lines() and NOT_VALID not in log.text
        assert running == "1.0.0"


def imgtool_cli(tmp_path: Path, key: Any, body: bytes, version: str, *extra: str) -> bytes:
    """``imgtool sign`` on its command line (the peer tool), header 0x200, these tiny slots."""
    pem = tmp_path / "key.pem"
    key.export_private(str(pem))
    (tmp_path / "body.bin").write_bytes(body)
    out = tmp_path / "signed.bin"
    args = ["sign", "-H", hex(HDR), "--pad-header", "--align", "4", "-S", "0x4000", "-M", "8"]
    args += ["-v", version, "-k", str(pem), *extra, str(tmp_path / "body.bin"), str(out)]
    done = subprocess.run([IMGTOOL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def enc_public_pem(tmp_path: Path) -> str:
    """An ECIES-P256 encryption key's public half (imgtool --encrypt takes a public PEM)."""
    private = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "enc.pub.pem"
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


@pytest.mark.parametrize("mode", SWAP_MODES)
@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("full-public-key", "looks only for KEYHASH, skips the signature"),
        (
            "encrypted",
            "encrypted (flag IMAGE_F_ENCRYPTED_AES128, TLV ENC_EC256), but this "
            "MCUboot has no decryption key configured",
        ),
    ],
)
def test_an_update_mcuboot_cannot_verify_is_refused_for_its_real_reason(
    mode: str, case: str, why: str, key: Any, tmp_path: Path
) -> None:
    """imgtool --public-key-format full: MCUboot without MCUBOOT_HW_KEY reads only KEYHASH, so
    the signature is never checked and the image is not valid (image_validate.c). imgtool
    --encrypt: without MCUBOOT_ENC_IMAGES boot_check_header_valid refuses the header."""
    primary = GEOMETRIES[mode].primary
    body = app_body(primary.start + HDR, "2.0.0", 0x1800)
    extra = ["--public-key-format", "full"] if case == "full-public-key" else []
    if case == "encrypted":
        extra = ["--encrypt", enc_public_pem(tmp_path)]
    update = imgtool_cli(tmp_path, key, body, "2.0.0", *extra)
    v1, _ = images(mode, key)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(secondary(rig), update)
        rig.set_pending()
        log, running = rig.boot()
        assert NOT_VALID in log.lines() and running == "1.0.0"
        assert why in rig.notes()
        assert "does not match its contents" not in rig.notes()
        assert rig.slot_bytes(secondary(rig)) == b"\xff" * secondary(rig).size


@pytest.mark.parametrize("mode", SWAP_MODES)
def test_a_non_bootable_secondary_is_not_swapped_and_its_request_is_cleared(
    mode: str, key: Any
) -> None:
    v1, _ = images(mode, key)
    non_bootable = app_image(GEOMETRIES[mode].primary, "2.0.0", key, non_bootable=True)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(secondary(rig), non_bootable)
        rig.set_pending()
        log, running = rig.boot()
        assert NOT_VALID not in log.text and running == "1.0.0"
        assert flags(rig.trailer(secondary(rig))) == ERASED_TRAILER  # trailer scrambled
        assert rig.slot_bytes(secondary(rig), len(non_bootable)) == non_bootable


def test_a_corrupted_primary_is_not_booted(key: Any) -> None:
    v1, _ = images("swap-move", key)
    with mcuboot_board(build_for("swap-move", key), primary=_flip(v1, HDR + 0x800)) as rig:
        log = rig.reset()
        assert log.lines()[-2:] == [
            "E: Image in the primary slot is not valid!",
            "E: Unable to find bootable image",
        ]
        wait_until(lambda: rig.board.cpu.status, lambda s: "mcuboot" in s, "MCUboot stays")
        assert rig.board.cpu.status.startswith("running mcuboot")


# --- downgrade prevention ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", SWAP_MODES)
def test_downgrade_prevention_erases_a_lower_version_but_allows_an_equal_one(
    mode: str, key: Any
) -> None:
    primary = GEOMETRIES[mode].primary
    v1 = app_image(primary, "1.2.0", key)
    older = app_image(primary, "1.1.9", key, seed="older")
    same = app_image(primary, "1.2.0", key, size=0x2000, seed="same")
    with mcuboot_board(build_for(mode, key, downgrade_prevention=True), primary=v1) as rig:
        rig.program(secondary(rig), older)
        rig.set_pending(permanent=True)
        log, running = rig.boot()
        assert "I: Image 0 in slot 1 erased due to downgrade prevention" in log.lines()
        assert running == "1.2.0" and rig.slot_bytes(primary, len(v1)) == v1
        assert rig.slot_bytes(secondary(rig)) == b"\xff" * secondary(rig).size

        rig.program(secondary(rig), same)
        rig.set_pending(permanent=True)
        log, running = rig.boot()
        assert "Starting swap" in log.text and rig.slot_bytes(primary, len(same)) == same


def test_overwrite_only_downgrade_prevention_says_insufficient_version(key: Any) -> None:
    slot = GEOMETRIES["overwrite-only"].primary
    v1, older = app_image(slot, "1.2.0", key), app_image(slot, "1.0.0", key)
    build = build_for("overwrite-only", key, downgrade_prevention=True)
    with mcuboot_board(build, primary=v1) as rig:
        rig.program(secondary(rig), older)
        rig.set_pending()
        log, running = rig.boot()
        # v2.1.0 spells it in lower case (loader.c:1010)
        assert "E: insufficient version in secondary slot" in log.lines() and running == "1.2.0"
        assert rig.slot_bytes(secondary(rig)) == b"\xff" * secondary(rig).size


# --- overwrite-only ----------------------------------------------------------------------------


def test_overwrite_only_copies_and_can_never_revert(key: Any) -> None:
    v1, v2 = images("overwrite-only", key)
    with mcuboot_board(build_for("overwrite-only", key), primary=v1) as rig:
        rig.program(secondary(rig), v2)
        rig.set_pending()  # a test request: overwrite-only cannot honour "test"
        log, running = rig.boot()
        # The fast overwrite copies the image only, rounded up past a whole write unit
        # (loader.c:1379-1383), not the slot.
        copied = len(v2) + 4 - len(v2) % 4
        assert log.lines()[3:8] == [
            "I: Image index: 0, Swap type: test",
            "I: Image 0 upgrade secondary slot -> primary slot",
            "I: Erasing the primary slot",
            f"I: Image 0 copying the secondary slot to the primary slot: 0x{copied:x} bytes",
            "I: Bootloader chainload address offset: 0x10000",
        ]
        assert "Primary image:" not in log.text  # no swap status in this mode
        assert running == "2.0.0" and rig.slot_bytes(rig.geometry.primary, len(v2)) == v2
        sec = rig.slot_bytes(secondary(rig))
        assert sec[:0x1000] == b"\xff" * 0x1000 and sec[-0x1000:] == b"\xff" * 0x1000
        for _ in range(2):  # never confirmed, never reverted
            log, running = rig.boot()
            assert "I: Image index: 0, Swap type: none" in log.lines() and running == "2.0.0"


# --- direct-xip --------------------------------------------------------------------------------


def test_direct_xip_boots_the_higher_version_in_place_without_a_confirm(key: Any) -> None:
    g = GEOMETRIES["direct-xip"]
    assert g.secondary is not None
    v1 = app_image(g.primary, "1.0.0", key)
    v2 = app_image(g.secondary, "2.0.0", key)  # linked for the secondary slot
    with mcuboot_board(build_for("direct-xip", key), primary=v1) as rig:
        rig.program(g.secondary, v2)
        for _ in range(2):
            ops = rig.board.flash.stats.operations
            log, running = rig.boot()
            assert log.lines()[2:] == [
                "I: Starting Direct-XIP bootloader",
                "I: Primary   slot: version=1.0.0+0",
                "I: Secondary slot: version=2.0.0+0",
                "I: Image 0 loaded from the secondary slot",
                "I: Bootloader chainload address offset: 0x14000",
                "I: Image version: v2.0.0",
                "I: Jumping to the image slot",
            ]
            assert running == "2.0.0" and rig.board.cpu.status.endswith("at 0x00014200")
            assert rig.board.flash.stats.operations == ops  # nothing copied, nothing written


def test_direct_xip_skips_an_image_linked_for_the_other_slot_and_erases_an_invalid_one(
    key: Any, other_key: Any
) -> None:
    g = GEOMETRIES["direct-xip"]
    assert g.secondary is not None
    v1 = app_image(g.primary, "1.0.0", key)
    misplaced = app_image(g.primary, "3.0.0", key, rom_fixed=g.primary.start)
    with mcuboot_board(build_for("direct-xip", key), primary=v1) as rig:
        rig.program(g.secondary, misplaced)
        log, running = rig.boot()
        assert (
            "W: Image in secondary slot at 0x14000 has been built for offset 0x10000, skipping"
        ) in log.lines()
        assert "I: Image 0 loaded from the primary slot" in log.lines() and running == "1.0.0"
        rig.program(g.secondary, app_image(g.secondary, "3.0.0", other_key))
        log, running = rig.boot()
        assert NOT_VALID in log.lines() and running == "1.0.0"
        assert rig.slot_bytes(g.secondary) == b"\xff" * g.secondary.size


@pytest.mark.parametrize("mode", ["direct-xip", "direct-xip-revert"])
def test_a_direct_xip_image_linked_for_the_other_slot_faults_where_it_runs(
    mode: str, key: Any, tmp_path: Path
) -> None:
    """MCUboot jumps to the reset vector of the vector table it finds in the secondary; a
    build linked for the primary sends the CPU into the primary slot's flash, and faults
    (boot/zephyr/arch/arm.c do_boot: vt->reset). ROM_FIXED only says what the signer claimed."""
    g = GEOMETRIES[mode]
    assert g.secondary is not None
    revert = mode == "direct-xip-revert"
    v1 = app_image(g.primary, "1.0.0", key, pad=revert, confirm=revert)
    linked_for_primary = app_body(g.primary.start + HDR, "2.0.0", 0x1800)
    v2 = imgtool_cli(
        tmp_path, key, linked_for_primary, "2.0.0", "--rom-fixed", hex(g.secondary.start)
    )
    reset_handler = g.primary.start + HDR + RESET_OFFSET
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(g.secondary, v2)
        if revert:
            rig.write_field(g.secondary, "magic")  # the direct-xip "test"
        log = rig.reset()
        assert "I: Image 0 loaded from the secondary slot" in log.lines()
        fault = rig.console.expect(r"Resetting system\r?\n", WAIT_S).string
        assert f"E: Faulting instruction address (r15/pc): 0x{reset_handler:08x}" in fault
        assert "E: >>> ZEPHYR FATAL ERROR 0: CPU exception on CPU 0" in fault
        diagnosis = diagnose(log.text + fault)
        assert diagnosis.has("wrong-link-address"), str(diagnosis)
        assert "below the slot at 0x14000" in str(diagnosis)
        # The fault resets the chip: plain direct-xip picks the same image again (a boot loop);
        # with revert the unconfirmed image is erased and the old one runs.
        rig.boot_log()
        if revert:
            assert rig.running() == "1.0.0"
            assert rig.slot_bytes(g.secondary) == b"\xff" * g.secondary.size
        else:
            rig.console.expect(r"Resetting system\r?\n", WAIT_S)
            assert rig.board.cpu.boots >= 3
    # The same build linked for the secondary runs there.
    v2_right = app_image(g.secondary, "2.0.0", key)
    with mcuboot_board(build_for(mode, key), primary=v1) as rig:
        rig.program(g.secondary, v2_right)
        if revert:
            rig.write_field(g.secondary, "magic")
        assert rig.boot()[1] == "2.0.0"


def test_direct_xip_revert_erases_an_unconfirmed_image_at_the_next_boot(key: Any) -> None:
    g = GEOMETRIES["direct-xip-revert"]
    assert g.secondary is not None
    v1 = app_image(g.primary, "1.0.0", key, pad=True, confirm=True)  # magic + image_ok
    v2 = app_image(g.secondary, "2.0.0", key)
    with mcuboot_board(build_for("direct-xip-revert", key), primary=v1) as rig:
        rig.program(g.secondary, v2)
        rig.write_field(g.secondary, "magic")  # the direct-xip "test": magic only
        assert rig.boot()[1] == "2.0.0"
        assert rig.trailer(g.secondary).copy_done == Flag.SET  # selected once
        log, running = rig.boot()  # v2 never confirmed itself
        assert "I: Image 0 loaded from the primary slot" in log.lines() and running == "1.0.0"
        assert rig.slot_bytes(g.secondary) == b"\xff" * g.secondary.size

        rig.program(g.secondary, v2)
        rig.write_field(g.secondary, "magic")
        assert rig.boot()[1] == "2.0.0"
        rig.write_field(g.secondary, "image_ok", 0x01)  # the app confirms (boot_set_next)
        for _ in range(2):
            assert rig.boot()[1] == "2.0.0"


# --- single slot, and the signature types ------------------------------------------------------


KEY_TYPES: dict[str, Callable[[], Any]] = {
    "ecdsa-p256": imgtool_keys.ECDSA256P1.generate,
    "ed25519": imgtool_keys.Ed25519.generate,
    "rsa-2048": lambda: imgtool_keys.RSA.generate(2048),
}


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_single_slot_boots_an_image_signed_with_its_key_type_and_refuses_another_key(
    key_type: str, key: Any
) -> None:
    own = KEY_TYPES[key_type]()
    build = build_for("single-slot", own)
    assert build.key_type == key_type == public_key(own).type
    slot = build.geometry.primary
    with mcuboot_board(build, primary=app_image(slot, "1.0.0", own)) as rig:
        assert rig.boot()[1] == "1.0.0"
        rig.erase_slot(slot)
        rig.program(slot, app_image(slot, "1.0.0", key if key_type != "ecdsa-p256" else None))
        log = rig.reset()
        assert log.lines()[-1] == "E: Unable to find bootable image"


# --- serial recovery ---------------------------------------------------------------------------


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def connect(rig: McubootRig) -> SMPClient:
    client = SMPClient(SMPSerialTransport(), rig.board.uart.path, timeout_s=5.0)
    await client.connect()
    return client


@pytest.fixture
def recovery_images(key: Any) -> tuple[bytes, bytes]:
    slot = GEOMETRIES["single-slot"].primary
    return app_image(slot, "1.0.0", key), app_image(slot, "2.0.0", key, size=0x5000)


def test_serial_recovery_writes_the_single_slot_with_smpclient(
    key: Any, recovery_images: tuple[bytes, bytes]
) -> None:
    _, v2 = recovery_images
    with mcuboot_board(recovery_build(key)) as rig:
        log = rig.reset()
        assert log.lines()[-2:] == [
            "E: Bad image magic 0xffffffff",
            "E: Unable to find bootable image",
        ]
        rig.console.expect_exact("I: Enter the serial recovery mode\n", WAIT_S)

        async def session() -> None:
            client = await connect(rig)
            try:
                assert client._transport.max_unencoded_size == 1020  # type: ignore[attr-defined]
                params = await client.request(MCUMgrParametersRead())
                assert success(params) and (params.buf_size, params.buf_count) == (1024, 1)
                echo = await client.request(EchoWrite(d="recovery"))
                assert success(echo) and echo.r == "recovery"
                state = await client.request(ImageStatesRead())
                assert success(state) and state.images == []  # nothing valid yet
                async for _off in client.upload(v2):
                    pass
                state = await client.request(ImageStatesRead())
                assert success(state)
                [entry] = state.images
                assert (entry.slot, entry.version) == (0, "2.0.0")
                assert entry.hash == parse_image(v2).image_hash
                reset = await client.request(ResetWrite())
                assert isinstance(reset, ErrorV1) and reset.rc == 0  # MCUboot's {"rc": 0}
            finally:
                await client.disconnect()

        with rig.console.released():
            run(session())
        assert rig.running() == "2.0.0"
        assert rig.slot_bytes(rig.geometry.primary, len(v2)) == v2


def test_serial_recovery_answers_in_mcuboot_s_flavour(key: Any) -> None:
    build = recovery_build(key, echo=False, mcumgr_params=False)
    with mcuboot_board(build) as rig:
        rig.reset()
        rig.console.expect_exact("I: Enter the serial recovery mode\n", WAIT_S)

        async def session() -> None:
            client = await connect(rig)  # no params: smpclient falls back after its timeout
            try:
                echo = await client.request(EchoWrite(d="x"))
                assert isinstance(echo, ErrorV1) and echo.rc == 8  # ENOTSUP, v1 even for v2
                bad = await client.request(ImageStatesRead())
                assert success(bad) and bad.images == []
            finally:
                await client.disconnect()

        with rig.console.released():
            run(session())


def test_boot_mode_in_gpregret_enters_recovery_even_with_a_valid_image(
    key: Any, recovery_images: tuple[bytes, bytes]
) -> None:
    v1, _ = recovery_images
    with mcuboot_board(recovery_build(key), primary=v1) as rig:
        rig.board.gpregret = 0x01  # what the app's SMP reset with boot_mode 1 leaves
        log = rig.reset()
        assert log.lines()[-1] == "I: Enter the serial recovery mode"
        assert rig.board.gpregret == 0  # bootmode_clear()

        async def session() -> None:
            client = await connect(rig)
            try:
                state = await client.request(ImageStatesRead())
                assert success(state) and [i.version for i in state.images] == ["1.0.0"]
                await client.request(ResetWrite())
            finally:
                await client.disconnect()

        with rig.console.released():
            run(session())
        assert rig.running() == "1.0.0"  # the cleared boot mode does not trap it again


def test_the_wait_for_dfu_window_boots_the_app_unless_a_frame_arrives(
    key: Any, recovery_images: tuple[bytes, bytes]
) -> None:
    v1, v2 = recovery_images
    # 40 device seconds: 2 wall seconds at this time scale, ample for a client to connect.
    with mcuboot_board(recovery_build(key, wait_ms=40_000), primary=v1) as rig:
        assert rig.boot()[1] == "1.0.0"  # nobody talked: the window closed

        async def session() -> None:
            rig.board.cpu.reset(halt=False, reason="test reset")
            client = await connect(rig)  # its params request lands inside the window
            try:
                async for _off in client.upload(v2):
                    pass
                await client.request(ResetWrite())
            finally:
                await client.disconnect()

        with rig.console.released():
            run(session())
        assert rig.running() == "2.0.0"


def test_a_reset_in_the_middle_of_a_recovery_upload_leaves_recovery_to_finish_it(
    key: Any, recovery_images: tuple[bytes, bytes]
) -> None:
    v1, v2 = recovery_images
    with mcuboot_board(recovery_build(key), primary=v1) as rig:
        rig.board.gpregret = 0x01
        rig.reset()

        async def interrupted() -> None:
            client = await connect(rig)
            try:
                async for off in client.upload(v2):
                    if off > len(v2) // 2:
                        rig.board.cpu.reset(halt=False, reason="pin reset mid-upload")
                        break
            finally:
                await client.disconnect()

        async def complete() -> None:
            client = await connect(rig)
            try:
                async for _off in client.upload(v2):
                    pass
                await client.request(ResetWrite())
            finally:
                await client.disconnect()

        async def nothing_valid() -> list[Any]:
            client = await connect(rig)  # half an image is not bootable: recovery again
            try:
                state = await client.request(ImageStatesRead())
                assert success(state)
                return list(state.images)
            finally:
                await client.disconnect()

        with rig.console.released():
            run(interrupted())
            assert run(nothing_valid()) == []
            run(complete())
        assert rig.running() == "2.0.0"
        assert rig.slot_bytes(rig.geometry.primary, len(v2)) == v2
