"""The virtual farm's sample firmware set: deterministic, in the right places, self-describing."""

from __future__ import annotations

import argparse
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from imgtool import keys as imgtool_keys
from imgtool.image import Image, VerifyResult
from intelhex import IntelHex

from dfuhil.cli import firmware as cli
from dfuhil.errors import InputError
from dfuhil.farm.loader import load_farm
from dfuhil.formats.chips import CHIPS, RAM_BASE, UICR_BOOTLOADERADDR, UICR_MBR_PARAMS, Chip
from dfuhil.formats.devpage import BootloaderConfig, device_page_entries
from dfuhil.formats.mcuboot import McubootImage, PublicKey, parse_image, verify_signature
from dfuhil.formats.mcuboot_trailer import Flag, Magic, TrailerLayout, read_trailer
from dfuhil.formats.softdevice import MBR_SIZE, SOFTDEVICES, read_installed_softdevice
from dfuhil.procedures.provision import ProvisioningPlan
from dfuhil.sim import descriptor
from dfuhil.sim.firmware.generate import (
    BLINKY_BEHAVIOUR,
    BOOTLOADER_BEHAVIOUR,
    DEFAULT_SOFTDEVICES,
    DFU_APP_BEHAVIOUR,
    MESH_APPLICATION_IDS,
    filler,
    generate_firmware,
    sample_image,
    vector_table,
)
from dfuhil.sim.firmware.mcuboot_sets import (
    BUILDS,
    KEYS,
    MCUBOOT_SETS,
    SECONDARY,
    McubootSet,
    find_set,
)
from dfuhil.sim.mcuboot.config import McubootBuild, SmpAppBuild

REPO = Path(__file__).resolve().parents[1]
SHORT = {
    "nRF51422_xxAC": "nrf51422",
    "nRF52832_xxAA": "nrf52832",
    "nRF52833_xxAA": "nrf52833",
    "nRF52840_xxAA": "nrf52840",
}
FILES = ["blinky.hex", "bootloader.hex", "device_page.hex", "dfu_app.hex", "dfu_blinky.hex"]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("firmware")
    generate_firmware(out)
    return out


def load(path: Path) -> Any:
    ih = IntelHex()
    ih.loadhex(str(path))
    return ih


def span(ih: Any, lo: int = 0, hi: int = 0x10000000) -> tuple[int, int]:
    """(first, last+1) of the addresses the hex holds inside [lo, hi)."""
    addresses = [a for a in ih.addresses() if lo <= a < hi]
    return min(addresses), max(addresses) + 1


def word(ih: Any, address: int) -> int:
    value: int = struct.unpack("<I", ih.tobinstr(start=address, size=4))[0]
    return value


def signed_app(path: Path) -> McubootImage:
    ih = load(path)
    return parse_image(ih.tobinstr(start=ih.minaddr(), size=ih.maxaddr() - ih.minaddr() + 1))


def chip_dir(farm: Path, name: str) -> tuple[Chip, Path]:
    return CHIPS[name.lower()], farm / SHORT[name]


def test_file_set(farm: Path) -> None:
    assert (farm / "README.md").read_text().count("dfuhil firmware generate --out firmware/virtual")
    for name, sd in DEFAULT_SOFTDEVICES.items():
        files = sorted(p.name for p in (farm / SHORT[name]).iterdir() if p.is_file())
        assert files == sorted([*FILES, f"softdevice_{sd}.hex"])
        sets = sorted(p.name for p in (farm / SHORT[name]).iterdir() if p.is_dir())
        assert sets == sorted(f"mcuboot-{m.mode}" for m in MCUBOOT_SETS if m.chip == name)
        for directory in sets:
            mset = find_set(name, directory.removeprefix("mcuboot-"))  # type: ignore[arg-type]
            builds = [file for file, _slot in mset.builds().values()]
            assert sorted(p.name for p in (farm / SHORT[name] / directory).iterdir()) == sorted(
                [f"mcuboot_{mset.mode}.hex", "smp_app.hex", *builds]
            )
    assert sorted(p.name for p in (farm / "keys").iterdir()) == sorted(
        k.file for k in KEYS.values()
    )


def test_deterministic_and_unchanged_files_not_rewritten(farm: Path, tmp_path: Path) -> None:
    written = generate_firmware(tmp_path)
    mcuboot = len(KEYS) + sum(2 + len(m.builds()) for m in MCUBOOT_SETS)
    assert len(written) == 1 + (len(FILES) + 1) * len(SHORT) + mcuboot
    for path in written:
        other = farm / path.relative_to(tmp_path)
        if path.name == "smp_app.hex":
            # ECDSA signatures are randomised: same signed bytes, another (valid) signature.
            mine, theirs = signed_app(path), signed_app(other)
            assert mine.raw[: mine.signed_size] == theirs.raw[: theirs.signed_size]
            continue
        assert path.read_bytes() == other.read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in written}
    for _ in range(3):  # ECDSA signature lengths vary (70-72 bytes): keep must not depend on it
        assert generate_firmware(tmp_path) == []
    assert {p: p.stat().st_mtime_ns for p in written} == mtimes


@pytest.mark.parametrize("name", list(SHORT))
def test_images_sit_in_their_regions(farm: Path, name: str) -> None:
    chip, d = chip_dir(farm, name)
    sd = SOFTDEVICES[DEFAULT_SOFTDEVICES[name]]
    assert span(load(d / f"softdevice_{sd.name}.hex")) == (0, sd.flash_size)
    for app, size in (("blinky.hex", 8192), ("dfu_blinky.hex", 8192), ("dfu_app.hex", 12288)):
        assert span(load(d / app)) == (sd.flash_size, sd.flash_size + size)
    bl_start, bl_end = span(load(d / "bootloader.hex"), hi=chip.flash_size)
    assert bl_start == chip.mesh_bootloader_start
    assert bl_end <= chip.mesh_bootloader_start + chip.mesh_bootloader_size
    page = load(d / "device_page.hex")
    assert span(page)[0] == chip.device_page_address == chip.flash_size - chip.page_size
    # The SDK's default config, except that each chip runs its own application ID.
    config = BootloaderConfig(application_id=MESH_APPLICATION_IDS[chip.name])
    assert config.application_id == 1 or chip.name != "nRF52832_xxAA"
    expected = device_page_entries(chip, sd, config)
    assert page.tobinstr(start=chip.device_page_address, size=len(expected)) == expected


@pytest.mark.parametrize("name", list(SHORT))
def test_softdevice_info_struct_and_vector_tables(farm: Path, name: str) -> None:
    chip, d = chip_dir(farm, name)
    sd = SOFTDEVICES[DEFAULT_SOFTDEVICES[name]]
    ih = load(d / f"softdevice_{sd.name}.hex")
    installed = read_installed_softdevice(lambda a, n: ih.tobinstr(start=a, size=n))
    assert installed is not None
    assert (installed.fwid, installed.size, installed.known) == (sd.fwid, sd.flash_size, sd)
    for base, end in ((0, MBR_SIZE), (MBR_SIZE, sd.flash_size)):
        assert word(ih, base) == RAM_BASE + chip.ram_size
        reset = word(ih, base + 4)
        assert reset & 1 and base < reset < end
        # No behaviour descriptor: the board must recognise MBR+SoftDevice by the info struct.
        raw = ih.tobinstr(start=base + descriptor.DESCRIPTOR_OFFSET, size=16)
        assert descriptor.decode(raw) is None


@pytest.mark.parametrize("name", list(SHORT))
def test_descriptors_decode(farm: Path, name: str) -> None:
    chip, d = chip_dir(farm, name)
    app_start = SOFTDEVICES[DEFAULT_SOFTDEVICES[name]].flash_size
    for file, start, behaviour in (
        ("blinky.hex", app_start, BLINKY_BEHAVIOUR),
        ("dfu_app.hex", app_start, DFU_APP_BEHAVIOUR),
        ("bootloader.hex", chip.mesh_bootloader_start, BOOTLOADER_BEHAVIOUR),
    ):
        ih = load(d / file)
        raw = ih.tobinstr(start=start + descriptor.DESCRIPTOR_OFFSET, size=1024)
        assert descriptor.decode(raw) == behaviour
        assert word(ih, start) == RAM_BASE + chip.ram_size
        reset = word(ih, start + 4)
        assert reset & 1 and start < reset < span(ih, hi=chip.flash_size)[1]
    assert BLINKY_BEHAVIOUR.params == {"led": 0, "period_ms": 500}


@pytest.mark.parametrize("name", list(SHORT))
def test_bootloader_uicr_words(farm: Path, name: str) -> None:
    chip, d = chip_dir(farm, name)
    ih = load(d / "bootloader.hex")
    assert word(ih, UICR_BOOTLOADERADDR) == chip.mesh_bootloader_start
    if chip.has_mbr_params_page:
        assert word(ih, UICR_MBR_PARAMS) == chip.mesh_bootloader_start - 0x1000
    else:
        assert UICR_MBR_PARAMS not in ih.addresses()


def test_helpers() -> None:
    assert filler("x", 100) == filler("x", 100) != filler("y", 100)
    assert filler("x", 100)[:40] == filler("x", 40)
    table = vector_table(0x20010000, 0x2A81)
    assert len(table) == 64 and struct.unpack_from("<II", table) == (0x20010000, 0x2A81)
    with pytest.raises(ValueError, match="Thumb"):
        vector_table(0x20010000, 0x2A80)
    v2 = descriptor.Behaviour(kind="blinky", name="blinky", version="2.0.0")
    image = sample_image(0x26000, 8192, v2, "blinky-2.0.0", 0x20010000)
    assert len(image) == 8192
    assert descriptor.decode(image[descriptor.DESCRIPTOR_OFFSET :]) == v2


def test_chip_selection_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="dfuhil")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["firmware", "generate", "--out", str(tmp_path), "--chip", "nrf52832"])
    assert args.func(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "keys", "nrf52832"]
    lines = capsys.readouterr().out.splitlines()
    # README, six mesh files, the keys and the nRF52832's single-slot MCUboot set.
    count = 7 + len(KEYS) + 2 + len(BUILDS)
    assert len(lines) == count + 1 and f"{count} file(s) written" in lines[-1]
    assert args.func(args) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(InputError, match="nRF52820"):
        generate_firmware(tmp_path, ["nRF52820"])


# --- the MCUboot sets -------------------------------------------------------------------------


def image_at(ih: Any, start: int) -> McubootImage:
    return parse_image(ih.tobinstr(start=start, size=ih.maxaddr() + 1 - start))


@pytest.mark.parametrize("mset", MCUBOOT_SETS, ids=lambda m: m.directory)
def test_mcuboot_image_carries_its_build(farm: Path, mset: McubootSet) -> None:
    chip, d = chip_dir(farm, mset.chip)
    ih = load(d / mset.directory / mset.mcuboot_file)
    assert span(ih) == (0, 16 * 1024)
    found = descriptor.decode(ih.tobinstr(start=descriptor.DESCRIPTOR_OFFSET, size=2048))
    assert found is not None and found.kind == "mcuboot"
    build = McubootBuild.from_params(found.params)
    assert build == mset.mcuboot_build(chip)
    assert build.geometry.mode == mset.mode and build.geometry.sector_size == chip.page_size
    key = PublicKey.from_pem((farm / "keys" / KEYS[mset.key].file).read_bytes())
    assert (build.key_type, build.key_der) == (key.type, key.der)
    assert (build.serial_recovery is not None) == (mset.mode == "single-slot")


@pytest.mark.parametrize("mset", MCUBOOT_SETS, ids=lambda m: m.directory)
def test_smp_app_is_signed_into_the_primary_slot(farm: Path, mset: McubootSet) -> None:
    chip, d = chip_dir(farm, mset.chip)
    path = d / mset.directory / "smp_app.hex"
    ih = load(path)
    start = mset.primary[0]
    image = image_at(ih, start)
    if mset.mode == "direct-xip-revert":
        # That mode erases a slot without a good magic: the factory image is confirmed, and
        # marked selected (copy_done) as MCUboot's first boot would, so re-provisioning is free.
        assert span(ih) == (start, start + mset.primary[1])
        layout = TrailerLayout(mset.primary[1], status_records=0)
        state = read_trailer(lambda a, n: ih.tobinstr(start=a, size=n), start, layout)
        assert (state.magic, state.image_ok, state.copy_done) == (Magic.GOOD, Flag.SET, Flag.SET)
        assert len(ih) < image.size + 64  # the erased gap is not in the file
    else:
        assert span(ih) == (start, start + image.size)
    assert (str(image.version), image.header.hdr_size, image.header.img_size) == (
        "1.0.0",
        0x200,
        16 * 1024,
    )
    key = PublicKey.from_pem((farm / "keys" / KEYS[mset.key].file).read_bytes())
    assert verify_signature(image, key) is None
    xip = mset.mode.startswith("direct-xip")
    assert image.header.rom_fixed == xip and image.header.load_addr == (start if xip else 0)
    # imgtool itself agrees (its Image.verify reads the hex from its lowest address).
    key_file = str(farm / "keys" / KEYS[mset.key].file)
    result, version, _digest, _sig = Image.verify(str(path), imgtool_keys.load(key_file))
    assert (result, tuple(version)) == (VerifyResult.OK, (1, 0, 0, 0))
    body = image.body
    app = descriptor.decode(body[descriptor.DESCRIPTOR_OFFSET :])
    assert app is not None and app.kind == "smp_app" and app.banner == ""
    assert SmpAppBuild.from_params(app.params) == mset.app_build(chip)
    assert struct.unpack_from("<II", body) == (RAM_BASE + chip.ram_size, start + 0x200 + 0xA81)


@pytest.mark.parametrize("mset", MCUBOOT_SETS, ids=lambda m: m.directory)
def test_builds_are_unsigned_bodies_with_their_behaviour(farm: Path, mset: McubootSet) -> None:
    chip, d = chip_dir(farm, mset.chip)
    for name, (file, slot) in mset.builds().items():
        build = name.removesuffix(SECONDARY)
        body = (d / mset.directory / file).read_bytes()
        assert len(body) == 16 * 1024 and body[:4] != b"\x3d\xb8\xf3\x96"  # not signed
        # Linked behind the header of the slot it is for: the reset vector says so.
        assert descriptor.link_address(struct.unpack_from("<I", body, 4)[0]) == slot.start + 0x200
        found = descriptor.decode(body[descriptor.DESCRIPTOR_OFFSET :])
        assert found is not None and found.kind == "smp_app"
        params = SmpAppBuild.from_params(found.params)
        assert params == mset.app_build(chip, build)
        assert params.led == (1 if build == "update" else 0)
        assert params.fault == (None if build == "update" else build)
        assert params.confirm_at_boot == mset.confirm_at_boot


def test_keys_are_deterministic_and_of_both_kinds(farm: Path) -> None:
    kinds = {}
    for key in KEYS.values():
        pem = (farm / "keys" / key.file).read_bytes()
        assert pem == key.pem() and b"PRIVATE KEY" in pem
        kinds[key.file] = PublicKey.from_pem(pem).type
        assert imgtool_keys.load(str(farm / "keys" / key.file)) is not None
    assert set(kinds.values()) == {"ecdsa-p256", "ed25519"}
    used = {KEYS[m.key].file for m in MCUBOOT_SETS}
    assert "rogue-p256.pem" not in used and "mcuboot-ed25519.pem" in used


def test_a_damaged_signed_app_is_signed_again(tmp_path: Path) -> None:
    generate_firmware(tmp_path, ["nRF52832_xxAA"])
    path = tmp_path / "nrf52832" / "mcuboot-single-slot" / "smp_app.hex"
    ih = load(path)
    image = image_at(ih, 0x10000)
    sig = image.signature_tlv
    assert sig is not None
    address = 0x10000 + sig.offset + 8
    ih[address] ^= 0xFF  # a flipped signature byte: the file no longer verifies
    ih.write_hex_file(str(path), write_start_addr=False, byte_count=32)
    written = generate_firmware(tmp_path, ["nRF52832_xxAA"])
    assert written == [path]
    key = PublicKey.from_pem((tmp_path / "keys" / "mcuboot-p256.pem").read_bytes())
    assert verify_signature(image_at(load(path), 0x10000), key) is None
    assert generate_firmware(tmp_path, ["nRF52832_xxAA"]) == []


def test_shipped_boards_describe_the_generated_sets(tmp_path: Path) -> None:
    """boards.yaml and the generator are two descriptions of one farm: they must agree."""
    shutil.copy(REPO / "boards.yaml", tmp_path / "boards.yaml")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    generate_firmware(tmp_path / "firmware" / "virtual")
    farm = load_farm(tmp_path / "boards.yaml", check_files=True)
    boards = [b for b in farm.boards if b.mcuboot is not None]
    assert sorted(b.mcuboot.mode for b in boards if b.mcuboot) == sorted(
        m.mode for m in MCUBOOT_SETS
    )
    for board in boards:
        spec = board.mcuboot
        assert spec is not None and board.firmware is not None
        mset = find_set(board.chip.name, spec.mode)
        assert {"mcuboot", spec.mode} <= set(board.roles) and "provisioning" not in board.roles
        assert spec.geometry(board.layout) == mset.geometry(board.chip)
        assert spec.public_key() == KEYS[mset.key].public() and spec.can_sign
        app = mset.app_build(board.chip)
        assert (spec.confirm == "app") == app.confirm_at_boot
        assert ("udp" in spec.transports) == app.udp == (board.smp_udp == "virtual")
        assert ("ble" in spec.transports) == app.ble == (board.ble is not None)
        assert spec.dfu_lock_timeout_ms == app.dfu_lock_timeout_ms
        assert spec.downgrade_prevention == mset.downgrade_prevention
        assert spec.serial_recovery == mset.serial_recovery
        assert spec.build_names == tuple(mset.builds())
        assert board.firmware.application is not None
        assert board.firmware.application.banner == "Booting Zephyr OS build"
        plan = ProvisioningPlan.for_board(board)  # every image sits in its region
        assert sorted(plan.images) == ["application", "bootloader"]
