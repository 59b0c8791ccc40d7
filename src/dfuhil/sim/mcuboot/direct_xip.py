"""Direct-XIP (``MCUBOOT_DIRECT_XIP`` [+ ``_REVERT``]): run the newest valid slot in place.

Nothing is copied. Each boot picks the slot with the highest version (the primary wins a tie),
skips an image linked for the other slot (ROM_FIXED load address), and validates it; a slot that
fails validation is erased and the other one is tried. With revert, ``copy_done`` marks a slot
as "selected once": a selected slot whose ``image_ok`` is still unset at the next boot was never
confirmed by its application and is erased, as is one without a trailer magic.
"""

from __future__ import annotations

from dfuhil.formats.mcuboot import ImageHeader
from dfuhil.formats.mcuboot_trailer import Flag, Magic
from dfuhil.sim.mcuboot.area import FlashArea
from dfuhil.sim.mcuboot.core import Boot, BootResponse
from dfuhil.sim.mcuboot.validate import header_valid, read_header, version_key


def boot_go(boot: Boot, *, revert: bool) -> BootResponse | None:
    log = boot.log
    available: dict[str, tuple[FlashArea, ImageHeader]] = {}
    for area in (boot.primary, boot.other()):
        header = read_header(area)
        if header is not None and header_valid(header, area):
            v = header.version
            log.inf(
                f"{area.name.capitalize():<9} slot: "
                f"version={v.major}.{v.minor}.{v.revision}+{v.build}"
            )
            available[area.name] = (area, header)
        else:
            log.inf(f"Image 0 {area.name.capitalize()} slot: Image not found")
    while True:
        if not available:
            log.inf("No slot to load for image 0")
            return None
        area, header = newest(available)
        del available[area.name]
        if header.rom_fixed and header.load_addr != area.start:
            log.wrn(
                f"Image in {area.name} slot at 0x{area.start:x} has been built for offset "
                f"0x{header.load_addr:x}, skipping"
            )
            continue
        if revert and not select_or_erase(area):
            continue
        if boot.validate_slot(area):
            log.inf(f"Image 0 loaded from the {area.name} slot")
            return BootResponse(area, header)


def newest(available: dict[str, tuple[FlashArea, ImageHeader]]) -> tuple[FlashArea, ImageHeader]:
    """``find_slot_with_highest_version``: strictly greater replaces, so the primary wins ties."""
    best: tuple[FlashArea, ImageHeader] | None = None
    for candidate in available.values():
        if best is None or version_key(candidate[1]) > version_key(best[1]):
            best = candidate
    assert best is not None
    return best


def select_or_erase(area: FlashArea) -> bool:
    """``boot_select_or_erase``: erase an unconfirmed or unmarked slot, else mark it selected."""
    state = area.trailer()
    if state.magic != Magic.GOOD or (state.copy_done == Flag.SET and state.image_ok != Flag.SET):
        area.scramble()
        return False
    if state.copy_done != Flag.SET:  # UNSET, or BAD (torn): rewritten (loader.c:2611-2622)
        area.write_field("copy_done", 0x01)
    return True
