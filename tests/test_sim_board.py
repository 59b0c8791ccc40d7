"""Virtual boards in their own ``dfuhil sim serve`` process, reached only the way a test rig
reaches hardware: the debug port (VirtualLowLevelAPI) and the board's pty (Console, pyserial).

The behaviour descriptor, which decides what a board can run, is unit-tested in-process first.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from pynrfjprog.APIError import APIError, NrfjprogdllErr
from simfarm import (
    WAIT_S,
    RunningFarm,
    SimBoard,
    chip,
    program_hex,
    running_farm,
    sample_firmware,
    wait_cpu_status,
    wait_until,
)

from dfuhil.formats.chips import (
    FICR_CODEPAGESIZE,
    FICR_CODESIZE,
    FICR_INFO_PART,
    GPIO_P0_BASE,
    RAM_BASE,
    UICR_BOOTLOADERADDR,
)
from dfuhil.formats.chips import GPIO_DIR as DIR
from dfuhil.formats.chips import GPIO_OUT as OUT
from dfuhil.formats.meshdfu import STARTED_APPLICATION_PATTERN
from dfuhil.links.console import Console
from dfuhil.procedures.leds import LedObserver
from dfuhil.sim import descriptor
from dfuhil.sim.descriptor import DESCRIPTOR_OFFSET, Behaviour, DescriptorError
from dfuhil.sim.firmware.generate import ram_end, sample_image
from dfuhil.sim.lowlevel import VirtualLowLevelAPI

NRF52832 = chip("nRF52832_xxAA")
APP_START = 0x26000  # end of s132_7.2.0: where the MBR and the bootloader start the app
BOOTLOADER_START = 0x78000
DK_LEDS = (17, 18, 19, 20)  # PCA10040, active low
LED_MASK = sum(1 << pin for pin in DK_LEDS)
DFU_BOOTED = STARTED_APPLICATION_PATTERN  # the DFU example speaks mesh serial, prints no text
PACED_BAUD = 4800
BOOTLOADER_JUMPED = "application found at 0x26000, starting it"

BOARDS = [
    SimBoard("v52832", "nRF52832_xxAA", "PCA10040", 910000101),
    SimBoard("v51422", "nRF51422_xxAC", "PCA10028", 910000102),
    SimBoard("v52840", "nRF52840_xxAA", "PCA10056", 910000103),
    SimBoard("vpaced", "nRF52832_xxAA", "PCA10040", 910000104, baud=PACED_BAUD),
]


# --- the behaviour descriptor, in-process ------------------------------------------------------


def test_descriptor_round_trips_every_field() -> None:
    original = Behaviour("blinky", "blinky", "2.1.0", "hello", {"led": 2, "period_ms": 250})
    assert descriptor.decode(original.encode()) == original


@pytest.mark.parametrize(
    "raw", [b"", b"\xff" * 64, b"DFUHILV", bytes(64)], ids=["empty", "erased", "short", "zeros"]
)
def test_bytes_without_the_magic_have_no_descriptor(raw: bytes) -> None:
    assert descriptor.decode(raw) is None


def test_descriptor_with_a_flipped_payload_byte_is_refused() -> None:
    raw = bytearray(Behaviour("mesh_dfu_app", "dfu example").encode())
    raw[descriptor.HEADER.size + 3] ^= 0x01
    with pytest.raises(DescriptorError, match="CRC"):
        descriptor.decode(bytes(raw))


def test_descriptor_of_an_unknown_format_version_is_refused() -> None:
    raw = bytearray(Behaviour("mesh_dfu_app", "dfu example").encode())
    struct.pack_into("<H", raw, 8, descriptor.FORMAT_VERSION + 1)
    with pytest.raises(DescriptorError, match="format"):
        descriptor.decode(bytes(raw))


def test_oversized_descriptor_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="max"):
        Behaviour("blinky", "x", banner="b" * (descriptor.MAX_PAYLOAD + 1)).encode()


# --- virtual boards in a farm process ----------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory.mktemp("sim-board"), BOARDS) as farm:
        yield farm


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated nRF52832 sample set: softdevice, bootloader (+UICR), blinky, dfu_app and
    the device page (the mesh bootloader starts nothing without one)."""
    return sample_firmware(tmp_path_factory.mktemp("firmware"), ["nRF52832_xxAA"])["nRF52832_xxAA"]


@pytest.fixture
def dk(sim: RunningFarm) -> Iterator[VirtualLowLevelAPI]:
    """A debug session to the nRF52832 board, chip-erased (flash and UICR) first."""
    with sim.api("v52832") as api:
        api.erase_all()
        yield api


def softdevice(images: Path) -> Path:
    return images / "softdevice_s132_7.2.0.hex"


def mesh_console(sim: RunningFarm, board: str) -> Console:
    """The board's UART read as mesh serial frames (one text line per frame)."""
    return Console(sim.serial(board), name=board, protocol="mesh-serial")


def run(api: VirtualLowLevelAPI) -> None:
    """Reset as a debugger does (core halted), then let it run."""
    api.sys_reset()
    api.go()


def sample_app(behaviour: Behaviour | None, seed: str, start: int = APP_START) -> bytes:
    return sample_image(start, 0x2000, behaviour, seed, ram_end(NRF52832))


def test_erased_board_reports_no_firmware(dk: VirtualLowLevelAPI) -> None:
    assert dk.read(0, 16) == [0xFF] * 16
    run(dk)
    status = wait_cpu_status(dk, "halted: no firmware")
    assert "0x00000000" in status


def test_softdevice_bootloader_and_app_boot_through_the_bootloader_to_the_app(
    sim: RunningFarm, dk: VirtualLowLevelAPI, images: Path
) -> None:
    for name in (softdevice(images).name, "bootloader.hex", "dfu_app.hex", "device_page.hex"):
        program_hex(dk, images / name)
    assert dk.read_u32(UICR_BOOTLOADERADDR) == BOOTLOADER_START
    jumps_before = sim.log_text("v52832").count(BOOTLOADER_JUMPED)
    with mesh_console(sim, "v52832") as console:
        run(dk)
        console.expect(DFU_BOOTED, timeout=WAIT_S)
    assert dk.sim_status()["cpu"] == "running dfu example 1.0.0 at 0x00026000"
    assert sim.log_text("v52832").count(BOOTLOADER_JUMPED) == jumps_before + 1


def test_mbr_starts_the_app_directly_once_uicr_bootloaderaddr_is_erased(
    sim: RunningFarm, dk: VirtualLowLevelAPI, images: Path
) -> None:
    for name in (softdevice(images).name, "bootloader.hex", "dfu_app.hex", "device_page.hex"):
        program_hex(dk, images / name)
    dk.erase_uicr()
    assert dk.read_u32(UICR_BOOTLOADERADDR) == 0xFFFFFFFF
    assert dk.read_u32(BOOTLOADER_START) != 0xFFFFFFFF  # the bootloader is still in flash
    jumps_before = sim.log_text("v52832").count(BOOTLOADER_JUMPED)
    with mesh_console(sim, "v52832") as console:
        run(dk)
        console.expect(DFU_BOOTED, timeout=WAIT_S)
    assert dk.sim_status()["cpu"] == "running dfu example 1.0.0 at 0x00026000"
    assert sim.log_text("v52832").count(BOOTLOADER_JUMPED) == jumps_before


def test_mbr_follows_bootloaderaddr_and_otherwise_the_softdevice_end(
    dk: VirtualLowLevelAPI, images: Path
) -> None:
    program_hex(dk, softdevice(images))
    program_hex(dk, images / "bootloader.hex")  # no application
    run(dk)
    wait_cpu_status(dk, "running mesh serial bootloader 1.0.0 at 0x00078000")
    dk.erase_uicr()
    run(dk)
    wait_cpu_status(dk, "halted: no firmware at 0x00026000")


def test_image_without_a_behaviour_descriptor_cannot_run_and_prints_nothing(
    sim: RunningFarm, dk: VirtualLowLevelAPI, images: Path
) -> None:
    program_hex(dk, softdevice(images))
    arm_code = sample_app(None, "real arm code")
    assert arm_code[:4] == ram_end(NRF52832).to_bytes(4, "little")  # it has a vector table
    dk.write(APP_START, arm_code, True)
    with sim.console("v52832") as console:
        run(dk)
        status = wait_cpu_status(dk, "cannot run on a virtual board")
        time.sleep(0.5)  # ten device seconds: far more than a banner needs
        assert console.text() == ""
    assert "0x00026000" in status
    assert "real ARM code" in status


def test_image_with_a_damaged_descriptor_halts_naming_the_crc(
    dk: VirtualLowLevelAPI, images: Path
) -> None:
    program_hex(dk, softdevice(images))
    image = bytearray(sample_app(Behaviour("blinky", "damaged", banner="x"), "damaged"))
    image[DESCRIPTOR_OFFSET + descriptor.HEADER.size + 1] ^= 0x40
    dk.write(APP_START, bytes(image), True)
    run(dk)
    status = wait_cpu_status(dk, "halted: image at 0x00026000")
    assert "CRC mismatch" in status


def test_blinky_blinks_led1_and_leaves_the_other_leds_off(
    sim: RunningFarm, dk: VirtualLowLevelAPI, images: Path
) -> None:
    program_hex(dk, softdevice(images))
    program_hex(dk, images / "blinky.hex")
    with sim.console("v52832") as console:
        run(dk)
        console.expect(r"blinky 1\.0\.0 started", timeout=WAIT_S)
    leds = LedObserver(dk.read_u32, NRF52832, DK_LEDS, True, time_scale=dk.sim_time_scale())
    readings = leds.wait_for(["blinking", "off", "off", "off"], timeout_s=200, window_s=4)
    # period_ms=500 in the image: 1 Hz in device time; only a slower blink is plausible.
    assert readings[0].frequency_hz is not None
    assert 0.3 <= readings[0].frequency_hz <= 1.5


def test_dfu_app_drives_every_led_off(
    sim: RunningFarm, dk: VirtualLowLevelAPI, images: Path
) -> None:
    program_hex(dk, softdevice(images))
    program_hex(dk, images / "dfu_app.hex")
    run(dk)
    # Driven off, not merely undriven: every LED pin is an output at its inactive (high) level.
    wait_until(
        lambda: dk.read_u32(GPIO_P0_BASE + DIR) & LED_MASK,
        lambda d: d == LED_MASK,
        "LED pins configured as outputs",
    )
    assert dk.read_u32(GPIO_P0_BASE + OUT) & LED_MASK == LED_MASK
    leds = LedObserver(dk.read_u32, NRF52832, DK_LEDS, True, time_scale=dk.sim_time_scale())
    assert [r.state for r in leds.sample(window_s=2)] == ["off"] * 4


def test_sys_reset_keeps_the_core_halted_until_go(
    sim: RunningFarm, dk: VirtualLowLevelAPI, images: Path
) -> None:
    program_hex(dk, softdevice(images))
    program_hex(dk, images / "dfu_app.hex")
    with mesh_console(sim, "v52832") as console:
        dk.sys_reset()
        assert dk.is_halted()
        time.sleep(0.5)  # ten device seconds halted
        assert console.text() == ""
        assert dk.read_u32(GPIO_P0_BASE + DIR) == 0
        assert dk.sim_status()["cpu"].startswith("reset: halted")
        dk.go()
        console.expect(DFU_BOOTED, timeout=WAIT_S)
    assert not dk.is_halted()


def test_uart_output_is_paced_no_faster_than_the_configured_baud(sim: RunningFarm) -> None:
    banner = "".join(chr(ord("a") + i % 26) for i in range(1500))
    image = sample_image(
        0, 0x2000, Behaviour("blinky", "pacer", banner=banner), "pacer", ram_end(NRF52832)
    )
    expected = banner.encode() + b"\r\n"
    with sim.api("vpaced") as api, serial.Serial(sim.serial("vpaced"), PACED_BAUD) as port:
        api.erase_all()
        api.write(0, image, True)
        scale = api.sim_time_scale()
        port.timeout = 0.05
        port.reset_input_buffer()
        received = b""
        start = time.monotonic()
        run(api)
        deadline = start + WAIT_S
        while len(received) < len(expected) and time.monotonic() < deadline:
            received += port.read(len(expected) - len(received))
        elapsed = time.monotonic() - start
    assert received == expected
    line_rate = PACED_BAUD / 10 / scale  # 8N1 bytes per wall second at this time scale
    assert len(received) / elapsed <= 1.5 * line_rate


@pytest.mark.parametrize(
    ("board_name", "page_size", "device_page"),
    [("v52832", 0x1000, 0x7F000), ("v51422", 0x400, 0x3FC00), ("v52840", 0x1000, 0xFF000)],
)
def test_ficr_codepagesize_and_codesize_give_the_device_page_address(
    sim: RunningFarm, board_name: str, page_size: int, device_page: int
) -> None:
    with sim.api(board_name) as api:
        codepagesize = api.read_u32(FICR_CODEPAGESIZE)
        codesize = api.read_u32(FICR_CODESIZE)
    assert codepagesize == page_size
    assert codepagesize * (codesize - 1) == device_page


def test_ficr_info_part_names_the_chip(sim: RunningFarm) -> None:
    with sim.api("v52840") as api:
        assert api.read_u32(FICR_INFO_PART) == 0x52840


def test_flash_write_without_nvmc_control_is_nvmc_error_and_changes_nothing(
    dk: VirtualLowLevelAPI,
) -> None:
    dk.write(0x1000, [0x78, 0x56, 0x34, 0x12], True)
    for address in (0x1000, 0x2000):
        with pytest.raises(APIError) as caught:
            dk.write(address, [0, 0, 0, 0], False)
        assert caught.value.err_code == NrfjprogdllErr.NVMC_ERROR == -20
    assert dk.read(0x1000, 4) == [0x78, 0x56, 0x34, 0x12]
    assert dk.read(0x2000, 4) == [0xFF] * 4
    dk.write(RAM_BASE, [1, 2, 3, 4], False)  # a plain bus write is fine where there is RAM
    assert dk.read(RAM_BASE, 4) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("address", "data"),
    [(0x1002, [0] * 4), (0x1001, [0] * 8), (0x1000, [0] * 3), (0x1000, [0] * 6)],
    ids=["address+2", "address+1", "length-3", "length-6"],
)
def test_unaligned_flash_write_is_invalid_parameter_and_changes_nothing(
    dk: VirtualLowLevelAPI, address: int, data: list[int]
) -> None:
    with pytest.raises(APIError) as caught:
        dk.write(address, data, True)
    assert caught.value.err_code == NrfjprogdllErr.INVALID_PARAMETER == -3
    assert dk.read(0x1000, 16) == [0xFF] * 16
