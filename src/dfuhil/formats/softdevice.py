"""SoftDevice table and the SoftDevice information structure.

The table is the nRF5 SDK for Mesh's tools/configuration/softdevices.json (FWID and flash size,
i.e. the application start address); the information structure layout is nrf_sdm.h's
SOFTDEVICE_INFO_STRUCT_OFFSET (0x2000 past the SoftDevice base, which sits right above the
1 KiB/4 KiB MBR at 0x1000): size byte, magic 0x51B1E5DB, SoftDevice size, FWID, ID, version.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

MBR_SIZE = 0x1000
SD_INFO_STRUCT_ADDRESS = MBR_SIZE + 0x2000
SD_MAGIC = 0x51B1E5DB
SD_INFO_STRUCT_SIZE = 0x18  # up to and including the version word
SD_NO_REQUIREMENT = 0xFFFE  # --sd-req default: "any SoftDevice"


@dataclass(frozen=True)
class SoftDevice:
    name: str  # e.g. "s132_7.2.0"
    fwid: int
    flash_size: int  # end address of the SoftDevice = application start

    @property
    def family_id(self) -> int:
        """The number in the name: 132 for s132 (nrf_sdm.h SD_ID)."""
        return int(self.name[1:4])

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        core = self.name.split("_", 1)[1].split("-", 1)[0]
        major, minor, patch = (int(x) for x in core.split("."))
        return major, minor, patch

    @property
    def version_word(self) -> int:
        """SD_VERSION encoding: MMMmmmppp (7.2.0 -> 7002000)."""
        major, minor, patch = self.version_tuple
        return major * 1_000_000 + minor * 1_000 + patch


SOFTDEVICES: dict[str, SoftDevice] = {
    sd.name: sd
    for sd in (
        SoftDevice("s110_8.0.0", 0x0064, 0x18000),
        SoftDevice("s130_2.0.1", 0x0087, 0x1B000),
        SoftDevice("s132_3.1.0", 0x0091, 0x1F000),
        SoftDevice("s132_4.0.4", 0x009E, 0x1F000),
        SoftDevice("s132_5.0.0", 0x009D, 0x23000),
        SoftDevice("s140_5.0.0-3.alpha", 0x00FE, 0x24000),
        SoftDevice("s112_6.0.0", 0x00A7, 0x19000),
        SoftDevice("s112_6.1.0", 0x00B0, 0x19000),
        SoftDevice("s112_6.1.1", 0x00B8, 0x19000),
        SoftDevice("s112_7.0.1", 0x00CD, 0x19000),
        SoftDevice("s112_7.2.0", 0x0103, 0x19000),
        SoftDevice("s113_7.0.0", 0x00C3, 0x1C000),
        SoftDevice("s113_7.0.1", 0x00CC, 0x1C000),
        SoftDevice("s113_7.2.0", 0x0102, 0x1C000),
        SoftDevice("s132_6.0.0", 0x00A8, 0x26000),
        SoftDevice("s132_6.1.0", 0x00AF, 0x26000),
        SoftDevice("s132_6.1.1", 0x00B7, 0x26000),
        SoftDevice("s132_7.0.1", 0x00CB, 0x26000),
        SoftDevice("s132_7.2.0", 0x0101, 0x26000),
        SoftDevice("s140_6.0.0", 0x00A9, 0x26000),
        SoftDevice("s140_6.1.0", 0x00AE, 0x26000),
        SoftDevice("s140_6.1.1", 0x00B6, 0x26000),
        SoftDevice("s140_7.0.1", 0x00CA, 0x27000),
        SoftDevice("s140_7.2.0", 0x0100, 0x27000),
    )
}

# Which SoftDevices the SDK's platforms.json allows per chip (v5.0.0).
CHIP_SOFTDEVICES: dict[str, tuple[str, ...]] = {
    "nRF51422_xxAC": ("s110_8.0.0", "s130_2.0.1"),
    "nRF52832_xxAA": (
        "s132_3.1.0",
        "s132_4.0.4",
        "s132_5.0.0",
        "s132_6.0.0",
        "s132_6.1.0",
        "s132_6.1.1",
        "s132_7.0.1",
        "s132_7.2.0",
        "s113_7.0.1",
        "s113_7.2.0",
        "s112_7.2.0",
    ),
    "nRF52833_xxAA": ("s140_7.0.1", "s140_7.2.0", "s113_7.0.1", "s113_7.2.0"),
    "nRF52840_xxAA": (
        "s140_5.0.0-3.alpha",
        "s140_6.0.0",
        "s140_6.1.0",
        "s140_6.1.1",
        "s140_7.0.1",
        "s140_7.2.0",
        "s113_7.0.1",
        "s113_7.2.0",
    ),
}


def find_softdevice(name: str) -> SoftDevice | None:
    return SOFTDEVICES.get(name.strip().lower())


def softdevice_by_fwid(fwid: int) -> SoftDevice | None:
    return next((sd for sd in SOFTDEVICES.values() if sd.fwid == fwid), None)


def build_info_struct(sd: SoftDevice) -> bytes:
    """The 0x18-byte information structure a real SoftDevice carries at 0x3000."""
    head = bytes([SD_INFO_STRUCT_SIZE, 0xFF, 0xFF, 0xFF])
    return head + struct.pack(
        "<IIHHII", SD_MAGIC, sd.flash_size, sd.fwid, 0xFFFF, sd.family_id, sd.version_word
    )


class MemoryReader(Protocol):
    def __call__(self, address: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class InstalledSoftDevice:
    """What the information structure in flash says, whether or not the FWID is in our table."""

    size: int
    fwid: int
    family_id: int
    version_word: int

    @property
    def known(self) -> SoftDevice | None:
        return softdevice_by_fwid(self.fwid)

    def describe(self) -> str:
        sd = self.known
        name = sd.name if sd else f"unknown SoftDevice (FWID 0x{self.fwid:04X})"
        return f"{name}, ends at 0x{self.size:X}"


def read_installed_softdevice(read: MemoryReader) -> InstalledSoftDevice | None:
    """Parse the information structure from flash; None when no SoftDevice is installed."""
    raw = read(SD_INFO_STRUCT_ADDRESS, SD_INFO_STRUCT_SIZE)
    magic, size, fwid, _pad, family_id, version = struct.unpack("<IIHHII", raw[4:24])
    if magic != SD_MAGIC:
        return None
    return InstalledSoftDevice(size=size, fwid=fwid, family_id=family_id, version_word=version)
