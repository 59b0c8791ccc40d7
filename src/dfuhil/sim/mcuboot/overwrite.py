"""Overwrite-only (``MCUBOOT_OVERWRITE_ONLY``): the secondary is copied over the primary.

No swap status, no revert: the whole primary is erased and the whole secondary slot copied over
it (its trailer included), then the secondary's first and last sectors are erased so the
request is not seen again (``boot_copy_image``). A power cut before that last erase simply
repeats the copy on the next boot, because the secondary still asks for it.
"""

from __future__ import annotations

from dfuhil.formats.mcuboot_trailer import SwapType
from dfuhil.sim.mcuboot.core import UPGRADES, Boot, BootResponse


def boot_go(boot: Boot) -> BootResponse | None:
    if boot.validated_swap_type(SwapType.NONE) in UPGRADES:
        copy_image(boot)
    return boot.primary_response()


def copy_image(boot: Boot) -> None:
    primary, secondary = boot.primary, boot.other()
    log = boot.log
    log.inf("Image 0 upgrade secondary slot -> primary slot")
    log.inf("Erasing the primary slot")
    for sector in range(primary.sectors):
        primary.erase(sector * primary.sector_size, primary.sector_size)
    size = min(primary.size, secondary.size)
    log.inf(f"Image 0 copying the secondary slot to the primary slot: 0x{size:x} bytes")
    primary.copy_from(secondary, 0, 0, size)
    # The header, so the image is gone, and the trailer, so the request is gone.
    secondary.erase(0, secondary.sector_size)
    secondary.erase((secondary.sectors - 1) * secondary.sector_size, secondary.sector_size)
