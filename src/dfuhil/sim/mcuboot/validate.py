"""Is there a bootable image in a slot? MCUboot's header checks, size limit and signature check.

``boot_check_header_valid`` (loader), ``bootutil_img_validate`` (hash, key hash, signature and
"image larger than the slot allows") and ``bootutil_max_image_size`` per upgrade mode, applied to
the bytes in flash with :mod:`dfuhil.formats.mcuboot`, the parser the host uses too.
"""

from __future__ import annotations

from dfuhil.formats.mcuboot import (
    ERASED_MAGIC,
    HEADER_SIZE,
    IMAGE_MAGIC,
    TLV_INFO,
    TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
    ImageFormatError,
    ImageHeader,
    McubootImage,
    PublicKey,
    read_slot_image,
    verify_signature,
)
from dfuhil.formats.mcuboot_build import FlashGeometry, Slot
from dfuhil.sim.mcuboot.area import FlashArea

COMPRESSED = 0x200 | 0x400 | 0x800
ERASED_VERSION_KEY = (0xFF, 0xFF, 0xFFFF)  # what an erased header's version compares as


def read_header(area: FlashArea) -> ImageHeader | None:
    """The slot's header; None when its magic is erased (``boot_check_header_erased``)."""
    raw = area.read(0, HEADER_SIZE)
    if int.from_bytes(raw[:4], "little") == ERASED_MAGIC:
        return None
    return ImageHeader.unpack(raw)


def version_key(header: ImageHeader | None) -> tuple[int, ...]:
    """``boot_compare_version`` on the raw header (an erased one reads as 255.255.65535)."""
    return ERASED_VERSION_KEY if header is None else header.version.key()


def header_problem(area: FlashArea, header: ImageHeader) -> str | None:
    """``boot_check_header_valid`` (bootutil_loader.c): why the header is refused, or None.

    Magic, sizes inside the area, and neither encryption nor compression: this MCUboot is built
    without ``MCUBOOT_ENC_IMAGES`` (no decryption key) and without ``MCUBOOT_DECOMPRESS_IMAGES``.
    MCUboot itself only prints "not valid" or "image not found"; the reason goes to the farm log.
    """
    size = header.hdr_size + header.img_size + header.protect_tlv_size
    if header.magic != IMAGE_MAGIC:
        return f"image header magic 0x{header.magic:08X} is not 0x{IMAGE_MAGIC:08X}"
    if size >= area.size:
        return f"header, body and protected TLVs (0x{size:X} bytes) do not fit the slot"
    if header.encrypted:
        return (
            f"the image is encrypted ({_encryption(area, header)}), but this MCUboot has no "
            "decryption key configured (built without MCUBOOT_ENC_IMAGES / "
            "CONFIG_BOOT_ENCRYPT_IMAGE)"
        )
    if header.flags & COMPRESSED:
        return "the image is compressed, and this MCUboot does not decompress"
    return None


def _encryption(area: FlashArea, header: ImageHeader) -> str:
    """The flag and ENC TLV names of an encrypted image, as far as the slot can be parsed."""
    try:
        image = read_slot_image(area.read, 0, area.size, source=f"{area.name} slot")
    except ImageFormatError:
        image = None
    described = image.encryption() if image is not None else None
    return described or f"flags 0x{header.flags:08X}"


def header_valid(header: ImageHeader, area: FlashArea) -> bool:
    """``boot_check_header_valid`` as a yes/no."""
    return header_problem(area, header) is None


def inspect_image(
    area: FlashArea, key: PublicKey, max_size: int
) -> tuple[McubootImage | None, str | None]:
    """``bootutil_img_validate``: (the image, None) if it verifies, else (None, why not)."""
    try:
        image = read_slot_image(area.read, 0, area.size, source=f"{area.name} slot")
    except ImageFormatError as exc:
        return None, str(exc)
    if image is None:
        return None, "no image (erased header)"
    if image.size > max_size:
        return None, (
            f"image ends at 0x{image.size:X}, past the 0x{max_size:X} bytes this upgrade mode "
            "leaves for an image in the slot"
        )
    problem = verify_signature(image, key)
    return (None, problem) if problem else (image, None)


def image_problem(area: FlashArea, key: PublicKey, max_size: int) -> str | None:
    """Why the image in ``area`` does not verify (farm log only); None if it does."""
    return inspect_image(area, key, max_size)[1]


def image_size(area: FlashArea) -> int:
    """``boot_read_image_size``: header, body and both TLV areas; 0 if no sound image."""
    header = read_header(area)
    if header is None or header.magic != IMAGE_MAGIC:
        return 0
    off = header.hdr_size + header.img_size
    if off + TLV_INFO.size > area.size:
        return 0
    magic, total = TLV_INFO.unpack(area.read(off, TLV_INFO.size))
    prot = header.protect_tlv_size
    if magic == TLV_PROT_INFO_MAGIC:
        if total != prot or off + prot + TLV_INFO.size > area.size:
            return 0
        magic, total = TLV_INFO.unpack(area.read(off + prot, TLV_INFO.size))
    elif prot:
        return 0
    return off + prot + total if magic == TLV_INFO_MAGIC else 0


def max_image_size(geometry: FlashGeometry, area: FlashArea) -> int:
    """``bootutil_max_image_size`` of ``area`` for this build's mode."""
    return geometry.max_image_size(Slot(area.start, area.size))
