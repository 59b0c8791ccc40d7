"""Single application slot (``single_loader.c``): validate the primary and boot it, nothing else.

Updates reach such a board only through serial recovery (dfuhil.sim.mcuboot.recovery), which
writes the primary directly.
"""

from __future__ import annotations

from dfuhil.formats.mcuboot import ERASED_MAGIC, IMAGE_MAGIC
from dfuhil.sim.mcuboot.core import Boot, BootResponse
from dfuhil.sim.mcuboot.validate import image_problem, max_image_size, read_header


def boot_go(boot: Boot) -> BootResponse | None:
    """``boot_image_load_header`` then ``boot_image_validate``."""
    area, log = boot.primary, boot.log
    header = read_header(area)
    if header is None or header.magic != IMAGE_MAGIC:
        log.err(f"Bad image magic 0x{ERASED_MAGIC if header is None else header.magic:x}")
        return None
    if not header.bootable:
        log.err("Image not bootable")
        return None
    size = header.hdr_size + header.img_size + header.protect_tlv_size
    if size >= area.size:
        log.err(f"Image size bigger than designated area: {size} > {area.size}")
        return None
    if boot.build.validate_primary:
        problem = image_problem(area, boot.key, max_image_size(boot.geometry, area))
        if problem is not None:
            log.note(f"primary slot at 0x{area.start:X}: {problem}")
            return None
    return BootResponse(area, header)
