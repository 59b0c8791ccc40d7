"""Overwrite-only as Zephyr builds it: ``CONFIG_BOOT_UPGRADE_ONLY`` defines both
``MCUBOOT_OVERWRITE_ONLY`` and ``MCUBOOT_OVERWRITE_ONLY_FAST`` (boot/zephyr/include/
mcuboot_config/mcuboot_config.h:63-66), so the secondary's image is copied over the primary.

The fast overwrite (``boot_copy_image``, loader.c:1332-1482 in v2.1.0) erases only the primary
sectors the image needs, then the sectors holding the primary's trailer, copies the image
(rounded up past a whole write unit), writes the primary's magic, and erases the secondary's
first and last sectors so the request is not seen again. No swap status, no revert: a power cut
before that last erase repeats the copy on the next boot, because the secondary still asks.
"""

from __future__ import annotations

from dfuhil.formats.mcuboot_trailer import TrailerLayout
from dfuhil.sim.mcuboot.core import UPGRADES, Boot, BootResponse
from dfuhil.sim.mcuboot.validate import image_size


def boot_go(boot: Boot) -> BootResponse | None:
    if boot.validated_swap_type() in UPGRADES:
        copy_image(boot)
    return boot.primary_response()


def copy_image(boot: Boot) -> None:
    primary, secondary = boot.primary, boot.other()
    sector, write_sz = primary.sector_size, primary.write_size  # BOOT_WRITE_SZ
    src_size = image_size(secondary)  # boot_read_image_size
    log = boot.log
    log.inf("Image 0 upgrade secondary slot -> primary slot")
    log.inf("Erasing the primary slot")
    size = 0
    for _ in range(primary.sectors):
        primary.erase(size, sector)
        if size + sector >= src_size:
            # Rounded up past the write unit: a whole unit more when already aligned.
            size = src_size + write_sz - src_size % write_sz
            break
        size += sector
    trailer_off, trailer_len = trailer_sectors(boot)
    primary.erase(trailer_off, trailer_len)
    log.inf(f"Image 0 copying the secondary slot to the primary slot: 0x{size:x} bytes")
    # An image ending on a sector boundary: the extra write unit lands on the next sector,
    # which nothing erased (MCUboot writes it all the same; NOR ANDs it into the old bytes).
    erased_end = max(1, -(-src_size // sector)) * sector
    unerased = max(0, min(size, trailer_off) - erased_end)
    primary.copy_from(secondary, 0, 0, size, unerased_tail=unerased)
    primary.write_field("magic")
    secondary.erase(0, secondary.sector_size)  # the header, so the image is gone
    # the trailer, so the request is gone
    secondary.erase((secondary.sectors - 1) * secondary.sector_size, secondary.sector_size)


def trailer_sectors(boot: Boot) -> tuple[int, int]:
    """(offset, length) of the primary's last sectors that hold ``boot_trailer_sz``: v2.1.0
    counts a status area (BOOT_STATUS_MAX_ENTRIES x 3 records) even in overwrite-only."""
    primary = boot.primary
    trailer = TrailerLayout(
        primary.size,
        boot.geometry.max_align,
        primary.write_size,
        boot.geometry.max_sectors,
        status_records=3,
    ).size
    sectors = -(-trailer // primary.sector_size)
    return primary.size - sectors * primary.sector_size, sectors * primary.sector_size
