"""One boot's view of the flash: the build's areas, its key, its log, and the steps every upgrade
mode shares (``boot_validate_slot``, the logged swap decision, downgrade prevention).

Names, order and log lines follow MCUboot v2.1.0's ``loader.c`` and ``bootutil_public.c`` (the
release the virtual MCUboot claims to be) so each step can be checked against its source; the
code is this project's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfuhil.formats.mcuboot import IMAGE_MAGIC, ImageHeader, PublicKey
from dfuhil.formats.mcuboot_build import FlashGeometry, Slot
from dfuhil.formats.mcuboot_trailer import Flag, SwapType, TrailerLayout, decide_swap
from dfuhil.sim.mcuboot.area import FlashArea, FlashPort
from dfuhil.sim.mcuboot.bootlog import BootLog
from dfuhil.sim.mcuboot.config import McubootBuild
from dfuhil.sim.mcuboot.validate import (
    header_problem,
    image_problem,
    max_image_size,
    read_header,
    version_key,
)

SWAP_NAMES = {
    SwapType.NONE: "none",
    SwapType.TEST: "test",
    SwapType.PERM: "perm",
    SwapType.REVERT: "revert",
}
UPGRADES = (SwapType.TEST, SwapType.PERM, SwapType.REVERT)  # BOOT_IS_UPGRADE
SWAP_MODES = ("swap-scratch", "swap-move")
EQUIVALENT_SLOTS = ("direct-xip", "direct-xip-revert")  # ARE_SLOTS_EQUIVALENT()


@dataclass(frozen=True)
class BootResponse:
    """``struct boot_rsp``: where the chosen image is and what its header says."""

    area: FlashArea
    header: ImageHeader

    @property
    def entry(self) -> int:
        """Where the CPU goes: the image body (vector table) after the MCUboot header."""
        return self.area.start + self.header.hdr_size


def make_area(port: FlashPort, name: str, slot: Slot, geometry: FlashGeometry) -> FlashArea:
    return FlashArea(
        port,
        name,
        slot.start,
        slot.size,
        geometry.sector_size,
        geometry.write_size,
        geometry.layout(slot),
    )


def scratch_area(port: FlashPort, slot: Slot, geometry: FlashGeometry) -> FlashArea:
    """The scratch keeps one sector's status records and a trailer (``boot_scratch_trailer_sz``)."""
    layout = TrailerLayout(
        slot.size, geometry.max_align, geometry.write_size, max_sectors=1, status_records=3
    )
    return FlashArea(
        port, "scratch", slot.start, slot.size, geometry.sector_size, geometry.write_size, layout
    )


class Boot:
    """The loader state of one boot (``struct boot_loader_state``), single image."""

    def __init__(self, port: FlashPort, build: McubootBuild, log: BootLog) -> None:
        self.build = build
        self.geometry = build.geometry
        self.log = log
        self.key = PublicKey(build.key_type, build.key_der)
        g = self.geometry
        self.primary = make_area(port, "primary", g.primary, g)
        self.secondary = make_area(port, "secondary", g.secondary, g) if g.secondary else None
        self.scratch = scratch_area(port, g.scratch, g) if g.scratch else None

    @property
    def mode(self) -> str:
        return self.geometry.mode

    def other(self) -> FlashArea:
        assert self.secondary is not None, "this upgrade mode has a secondary slot"
        return self.secondary

    # --- decisions -----------------------------------------------------------------------------

    def swap_type(self) -> SwapType:
        """``boot_swap_type_multi``: the table on the two trailers, logged every time."""
        decided = decide_swap(self.primary.trailer(), self.other().trailer())
        self.log.inf(f"Image index: 0, Swap type: {SWAP_NAMES[decided]}")
        return decided

    def validated_swap_type(self) -> SwapType:
        """``boot_validated_swap_type`` (loader.c:1136-1158): an upgrade needs a valid image
        in the secondary (every refusal is FIH_NO_BOOTABLE_IMAGE, hence NONE)."""
        swap_type = self.swap_type()
        if swap_type in UPGRADES and not self.validate_slot(self.other()):
            return SwapType.NONE
        return swap_type

    def validate_slot(self, area: FlashArea) -> bool:
        """``boot_validate_slot`` (loader.c:962-1094): True if bootable; flash side effects
        exactly as MCUboot v2.1.0's."""
        header = read_header(area)
        secondary = area is not self.primary
        if header is None or not header.bootable:
            if self.mode in SWAP_MODES and secondary:
                # An erased image with a trailer left behind must not block later uploads.
                area.scramble_trailer_sectors()
            return False
        if self.mode == "overwrite-only" and self.build.downgrade_prevention and secondary:
            primary_header = read_header(self.primary)
            if primary_header is not None and version_key(header) < version_key(primary_header):
                self.log.err("insufficient version in secondary slot")  # loader.c:1010
                area.scramble()
                return False
        problem = header_problem(area, header) or image_problem(
            area, self.key, max_image_size(self.geometry, area)
        )
        if problem is None:
            return True
        self.log.err(f"Image in the {area.name} slot is not valid!")
        self.log.note(f"{area.name} slot at 0x{area.start:X}: {problem}")
        if secondary or self.mode in EQUIVALENT_SLOTS:
            area.scramble()  # never try it again
        return False

    def downgrade_prevented(self) -> bool:
        """``check_downgrade_prevention`` (swap modes): a lower secondary version is erased."""
        if not self.build.downgrade_prevention or self.mode not in SWAP_MODES:
            return False
        secondary = self.other()
        if version_key(read_header(secondary)) >= version_key(read_header(self.primary)):
            return False
        self.log.inf("Image 0 in slot 1 erased due to downgrade prevention")
        secondary.scramble()
        return True

    # --- trailer writes shared by the swap modes ------------------------------------------------

    def set_image_ok(self) -> None:
        """``swap_set_image_ok``: only if it is still unset."""
        if self.primary.trailer().image_ok == Flag.UNSET:
            self.primary.write_field("image_ok", 0x01)

    def set_copy_done(self) -> None:
        """``swap_set_copy_done``."""
        self.primary.write_field("copy_done", 0x01)

    # --- the last step of every mode ------------------------------------------------------------

    def primary_response(self) -> BootResponse | None:
        """Re-validate the primary (``VALIDATE_PRIMARY_SLOT``) or at least check its magic."""
        header = read_header(self.primary)
        if self.build.validate_primary:
            if not self.validate_slot(self.primary) or header is None:
                return None
        elif header is None or header.magic != IMAGE_MAGIC:
            magic = 0xFFFFFFFF if header is None else header.magic
            self.log.err(f"bad image magic 0x{magic:x}; Image=0")  # loader.c:2320
            return None
        return BootResponse(self.primary, header)
