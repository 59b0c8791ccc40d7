"""Chip and board catalogue: the numbers every other layer looks up instead of hard-coding.

Register addresses are from Nordic's nrfx MDK headers (nrf51.h, nrf52.h, nrf52840.h); LED pins
from the DK board files (Zephyr devicetrees); mesh bootloader and device page addresses from the
nRF5 SDK for Mesh linker scripts and device_page_generator.py (see shared/specs/mesh-dfu.md 1.1).
Flash timings are the product specifications' maximum values (nRF52 page erase 89.7 ms is
Zephyr's FLASH_PAGE_ERASE_MAX_TIME_US); the virtual farm uses them to model device time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FICR_BASE = 0x10000000
UICR_BASE = 0x10001000
GPIO_P0_BASE = 0x50000000
GPIO_P1_BASE = 0x50000300

# Offsets inside a GPIO port block (identical on nRF51 and nRF52).
GPIO_OUT = 0x504
GPIO_OUTSET = 0x508
GPIO_OUTCLR = 0x50C
GPIO_IN = 0x510
GPIO_DIR = 0x514

FICR_CODEPAGESIZE = FICR_BASE + 0x010
FICR_CODESIZE = FICR_BASE + 0x014
FICR_CONFIGID = FICR_BASE + 0x05C
FICR_DEVICEID0 = FICR_BASE + 0x060
FICR_DEVICEID1 = FICR_BASE + 0x064
FICR_DEVICEADDR0 = FICR_BASE + 0x0A4
FICR_DEVICEADDR1 = FICR_BASE + 0x0A8
FICR_INFO_PART = FICR_BASE + 0x100
FICR_INFO_VARIANT = FICR_BASE + 0x104
FICR_INFO_PACKAGE = FICR_BASE + 0x108
FICR_INFO_RAM = FICR_BASE + 0x10C
FICR_INFO_FLASH = FICR_BASE + 0x110

UICR_BOOTLOADERADDR = UICR_BASE + 0x014  # NRFFW[0]
UICR_MBR_PARAMS = UICR_BASE + 0x018  # NRFFW[1], nRF52 only
UICR_PSELRESET0 = UICR_BASE + 0x200
UICR_APPROTECT = UICR_BASE + 0x208

RAM_BASE = 0x20000000
ERASED_WORD = 0xFFFFFFFF


@dataclass(frozen=True)
class FlashTiming:
    """Maximum NVMC operation times from the product specification, in seconds."""

    write_word_s: float
    erase_page_s: float
    erase_all_s: float


NRF51_TIMING = FlashTiming(write_word_s=46.3e-6, erase_page_s=22.3e-3, erase_all_s=22.3e-3)
NRF52_TIMING = FlashTiming(write_word_s=41e-6, erase_page_s=89.7e-3, erase_all_s=169e-3)


@dataclass(frozen=True)
class GpioPort:
    """One GPIO port: its register block base and how many pins it bonds out."""

    base: int
    pins: int

    @property
    def out(self) -> int:
        return self.base + GPIO_OUT

    @property
    def dir(self) -> int:
        return self.base + GPIO_DIR


@dataclass(frozen=True)
class Chip:
    """One nRF5 variant as a test rig needs it."""

    name: str  # e.g. "nRF52832_xxAA", the spelling Nordic's tools use
    family: str  # pynrfjprog DeviceFamily name: "NRF51" or "NRF52"
    part: int  # FICR.INFO.PART (nRF52) / marketing part number
    flash_size: int
    page_size: int
    ram_size: int
    uicr_size: int
    timing: FlashTiming
    gpio_ports: tuple[GpioPort, ...]
    device_version: str  # pynrfjprog DeviceVersion member name a real probe reports
    mesh_bootloader_start: int
    mesh_bootloader_size: int
    has_mbr_params_page: bool  # nRF52: UICR.NRFFW[1] points at the MBR parameter page
    aliases: tuple[str, ...] = field(default=())

    @property
    def pages(self) -> int:
        return self.flash_size // self.page_size

    @property
    def device_page_address(self) -> int:
        """Mesh device page: the last flash page (FICR.CODEPAGESIZE * (CODESIZE - 1))."""
        return self.flash_size - self.page_size

    @property
    def device_page_backup_address(self) -> int:
        return self.flash_size - 2 * self.page_size

    @property
    def gpio_pin_count(self) -> int:
        return sum(p.pins for p in self.gpio_ports)

    def gpio_port_of(self, pin: int) -> tuple[GpioPort, int]:
        """Map a flat pin number (P1.03 = 35) to its port and the bit within that port."""
        index, bit = divmod(pin, 32)
        if pin < 0 or index >= len(self.gpio_ports) or bit >= self.gpio_ports[index].pins:
            raise ValueError(f"{self.name} has no GPIO pin {pin}")
        return self.gpio_ports[index], bit

    def page_of(self, address: int) -> int:
        return address - address % self.page_size

    def is_flash(self, address: int) -> bool:
        return 0 <= address < self.flash_size

    def is_uicr(self, address: int) -> bool:
        return UICR_BASE <= address < UICR_BASE + self.uicr_size


CHIPS: dict[str, Chip] = {
    c.name.lower(): c
    for c in (
        Chip(
            name="nRF51422_xxAC",
            family="NRF51",
            part=0x51422,
            flash_size=256 * 1024,
            page_size=1024,
            ram_size=32 * 1024,
            uicr_size=1024,
            timing=NRF51_TIMING,
            gpio_ports=(GpioPort(GPIO_P0_BASE, 32),),
            device_version="NRF51xxx_xxAC_REV3",
            mesh_bootloader_start=0x3A000,
            mesh_bootloader_size=0x5800,
            has_mbr_params_page=False,
            aliases=("nrf51422",),
        ),
        Chip(
            name="nRF52832_xxAA",
            family="NRF52",
            part=0x52832,
            flash_size=512 * 1024,
            page_size=4096,
            ram_size=64 * 1024,
            uicr_size=4096,
            timing=NRF52_TIMING,
            gpio_ports=(GpioPort(GPIO_P0_BASE, 32),),
            device_version="NRF52832_xxAA_REV2",
            mesh_bootloader_start=0x78000,
            mesh_bootloader_size=0x6000,
            has_mbr_params_page=True,
            aliases=("nrf52832",),
        ),
        Chip(
            name="nRF52833_xxAA",
            family="NRF52",
            part=0x52833,
            flash_size=512 * 1024,
            page_size=4096,
            ram_size=128 * 1024,
            uicr_size=4096,
            timing=NRF52_TIMING,
            gpio_ports=(GpioPort(GPIO_P0_BASE, 32), GpioPort(GPIO_P1_BASE, 10)),
            device_version="NRF52833_xxAA_REV1",
            mesh_bootloader_start=0x78000,
            mesh_bootloader_size=0x6000,
            has_mbr_params_page=True,
            aliases=("nrf52833",),
        ),
        Chip(
            name="nRF52840_xxAA",
            family="NRF52",
            part=0x52840,
            flash_size=1024 * 1024,
            page_size=4096,
            ram_size=256 * 1024,
            uicr_size=4096,
            timing=NRF52_TIMING,
            gpio_ports=(GpioPort(GPIO_P0_BASE, 32), GpioPort(GPIO_P1_BASE, 16)),
            device_version="NRF52840_xxAA_REV2",
            mesh_bootloader_start=0xF8000,
            mesh_bootloader_size=0x6000,
            has_mbr_params_page=True,
            aliases=("nrf52840",),
        ),
    )
}

_CHIP_ALIASES = {alias: chip for chip in CHIPS.values() for alias in chip.aliases}


def find_chip(name: str) -> Chip | None:
    """Look a chip up by Nordic's name, case-insensitively (``nrf52832_xxaa`` or ``nRF52832``)."""
    key = name.strip().lower()
    return CHIPS.get(key) or _CHIP_ALIASES.get(key)


def chip_names() -> list[str]:
    return [c.name for c in CHIPS.values()]


@dataclass(frozen=True)
class BoardType:
    """A development kit: which chip it carries and where its LEDs and buttons are."""

    pca: str
    title: str
    chips: tuple[str, ...]
    leds: tuple[int, ...]
    buttons: tuple[int, ...]
    leds_active_low: bool = True


BOARD_TYPES: dict[str, BoardType] = {
    b.pca: b
    for b in (
        BoardType("PCA10028", "nRF51 DK", ("nRF51422_xxAC",), (21, 22, 23, 24), (17, 18, 19, 20)),
        BoardType("PCA10040", "nRF52 DK", ("nRF52832_xxAA",), (17, 18, 19, 20), (13, 14, 15, 16)),
        BoardType(
            "PCA10100", "nRF52833 DK", ("nRF52833_xxAA",), (13, 14, 15, 16), (11, 12, 24, 25)
        ),
        BoardType(
            "PCA10056", "nRF52840 DK", ("nRF52840_xxAA",), (13, 14, 15, 16), (11, 12, 24, 25)
        ),
    )
}


def find_board_type(pca: str) -> BoardType | None:
    return BOARD_TYPES.get(pca.strip().upper())
