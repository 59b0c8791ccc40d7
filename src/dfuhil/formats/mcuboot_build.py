"""What an MCUboot build is configured with: its slots, upgrade mode, trailer geometry and
serial recovery options, and the image size limit that follows from them.

The farm model (boards.yaml), ``dfuhil image check``, the firmware generator and the virtual
MCUboot all ask the same questions of a build ("where is the secondary?", "how big may an
image be?"), so the answers live here, in one place, below all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dfuhil.formats.mcuboot_trailer import MODES, Mode, TrailerLayout


@dataclass(frozen=True)
class Slot:
    """A flash partition ``[start, start + size)``."""

    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def to_params(self) -> list[int]:
        return [self.start, self.size]

    @classmethod
    def from_params(cls, value: Any) -> Slot | None:
        if value is None:
            return None
        start, size = value
        return cls(int(start), int(size))


@dataclass(frozen=True)
class FlashGeometry:
    """The image slots and trailer geometry shared by MCUboot and the app (one build config)."""

    mode: Mode
    primary: Slot
    secondary: Slot | None  # None for single-slot
    scratch: Slot | None = None  # swap-scratch only
    sector_size: int = 4096
    max_align: int = 8  # BOOT_MAX_ALIGN
    write_size: int = 4
    max_sectors: int = 128

    def layout(self, slot: Slot) -> TrailerLayout:
        return TrailerLayout.for_mode(
            self.mode,
            slot.size,
            max_align=self.max_align,
            write_size=self.write_size,
            max_sectors=self.max_sectors,
        )

    def max_image_size(self, slot: Slot) -> int:
        """``bootutil_max_image_size``: the most bytes (header + body + TLVs) an image may take
        in ``slot`` under this build (uniform sectors; loader.c, swap_move.c, swap_scratch.c).
        """
        layout = self.layout(slot)
        sector = self.sector_size
        if self.mode == "single-slot":
            return slot.size - layout.info_size  # boot_status_off: no status area
        if self.mode in ("overwrite-only", "direct-xip", "direct-xip-revert"):
            return layout.swap_info
        if self.secondary is None:
            raise ValueError(f"a {self.mode} build needs a secondary slot")
        trailer = layout.size
        if self.mode == "swap-move":
            trailer_sectors = -(-trailer // sector) * sector
            primary = self.primary.size // sector * sector - trailer_sectors - sector
            secondary = self.secondary.size // sector * sector - trailer_sectors
            return min(primary, secondary)
        # swap-scratch: app_max_size_adjust_to_trailer (the scratch must hold the last
        # sector's image bytes and its own trailer when the image reaches into the first
        # trailer sector)
        size = min(self.primary.size, self.secondary.size)
        trailer_off = size - trailer
        first_trailer_sector_end = trailer_off // sector * sector + sector
        in_first_sector = first_trailer_sector_end - trailer_off
        scratch_trailer = layout.status_records * layout.write_size + layout.info_size
        return trailer_off - max(0, scratch_trailer - in_first_sector)

    def to_params(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "primary": self.primary.to_params(),
            "secondary": self.secondary.to_params() if self.secondary else None,
            "scratch": self.scratch.to_params() if self.scratch else None,
            "sector_size": self.sector_size,
            "max_align": self.max_align,
            "write_size": self.write_size,
            "max_sectors": self.max_sectors,
        }

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> FlashGeometry:
        mode = str(p["mode"])
        if mode not in MODES:
            raise ValueError(f"unknown MCUboot mode {mode!r} (known: {', '.join(MODES)})")
        primary = Slot.from_params(p["primary"])
        assert primary is not None
        return cls(
            mode=mode,
            primary=primary,
            secondary=Slot.from_params(p.get("secondary")),
            scratch=Slot.from_params(p.get("scratch")),
            sector_size=int(p.get("sector_size", 4096)),
            max_align=int(p.get("max_align", 8)),
            write_size=int(p.get("write_size", 4)),
            max_sectors=int(p.get("max_sectors", 128)),
        )


@dataclass(frozen=True)
class SerialRecovery:
    """MCUboot's serial recovery (boot_serial): an SMP server in the bootloader.

    Entered when GPREGRET holds 0x01 (the app's SMP reset with ``boot_mode: 1``), when no
    bootable image is in the primary slot (BOOT_SERIAL_NO_APPLICATION), or when an SMP frame
    arrives within ``wait_ms`` of boot (BOOT_SERIAL_WAIT_FOR_DFU).
    """

    wait_ms: int = 0
    buf_size: int = 1024  # BOOT_SERIAL_MAX_RECEIVE_SIZE
    echo: bool = True  # BOOT_MGMT_ECHO
    mcumgr_params: bool = True  # BOOT_MGMT_MCUMGR_PARAMS
    image_state: bool = True  # BOOT_SERIAL_IMG_GRP_IMAGE_STATE
