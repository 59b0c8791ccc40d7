"""The virtual farm's sample firmware set: deterministic, in the right places, self-describing."""

from __future__ import annotations

import argparse
import struct
from pathlib import Path
from typing import Any

import pytest
from intelhex import IntelHex

from dfuhil.errors import InputError
from dfuhil.formats.chips import CHIPS, RAM_BASE, UICR_BOOTLOADERADDR, UICR_MBR_PARAMS, Chip
from dfuhil.formats.devpage import BootloaderConfig, device_page_entries
from dfuhil.formats.softdevice import MBR_SIZE, SOFTDEVICES, read_installed_softdevice
from dfuhil.sim import descriptor
from dfuhil.sim.firmware import cli
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


def chip_dir(farm: Path, name: str) -> tuple[Chip, Path]:
    return CHIPS[name.lower()], farm / SHORT[name]


def test_file_set(farm: Path) -> None:
    assert (farm / "README.md").read_text().count("dfuhil firmware generate --out firmware/virtual")
    for name, sd in DEFAULT_SOFTDEVICES.items():
        files = sorted(p.name for p in (farm / SHORT[name]).iterdir())
        assert files == sorted([*FILES, f"softdevice_{sd}.hex"])


def test_deterministic_and_unchanged_files_not_rewritten(farm: Path, tmp_path: Path) -> None:
    written = generate_firmware(tmp_path)
    assert len(written) == 1 + (len(FILES) + 1) * len(SHORT)
    for path in written:
        assert path.read_bytes() == (farm / path.relative_to(tmp_path)).read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in written}
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "nrf52832"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 + 1 and "7 file(s) written" in lines[-1]
    assert args.func(args) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(InputError, match="nRF52820"):
        generate_firmware(tmp_path, ["nRF52820"])
