"""Firmware IDs as a transfer carries them, and the rules that compare them (dfu_util.c).

A STATE packet names the new firmware with a type-specific fwid: APP ``<I H I`` (company id,
application id, application version, 10 bytes), SD ``<H`` (SoftDevice fwid), BL two bytes
(bootloader id, bootloader version). A node compares it with its VERSION entry.
"""

from __future__ import annotations

import struct

from dfuhil.formats.devpage import FLAG_APP_INTACT, FLAG_BL_INTACT, FLAG_SD_INTACT, Fwid
from dfuhil.formats.meshdfu import DfuType, app_fwid, decode_app_fwid

UNION_LENGTH = 10  # fwid_union_t, as serial events and BANK entries carry it
SD_NO_REQUIREMENT = 0xFFFE  # FWID beacon: "this app needs no particular SoftDevice"
INTACT_FLAG = {
    DfuType.SOFTDEVICE: FLAG_SD_INTACT,
    DfuType.BOOTLOADER: FLAG_BL_INTACT,
    DfuType.APPLICATION: FLAG_APP_INTACT,
}


def current(version: Fwid, dfu_type: int) -> bytes:
    """This node's fwid for ``dfu_type``, in the transfer's layout."""
    if dfu_type == DfuType.APPLICATION:
        return app_fwid(version.company_id, version.app_id, version.app_version)
    if dfu_type == DfuType.BOOTLOADER:
        return bytes([version.bl_id, version.bl_version])
    return struct.pack("<H", version.sd)


def same_id(dfu_type: int, a: bytes, b: bytes) -> bool:
    """fwid_union_id_cmp: same product (company and app id / bootloader id / SoftDevice)."""
    if dfu_type == DfuType.APPLICATION:
        return decode_app_fwid(a)[:2] == decode_app_fwid(b)[:2]
    if dfu_type == DfuType.BOOTLOADER:
        return a[:1] == b[:1]
    if dfu_type == DfuType.SOFTDEVICE:
        return a[:2] == b[:2]
    return False


def version(dfu_type: int, fwid: bytes) -> int:
    """The number a newer firmware has more of."""
    if dfu_type == DfuType.APPLICATION:
        return decode_app_fwid(fwid)[2]
    if dfu_type == DfuType.BOOTLOADER:
        return fwid[1]
    return int(struct.unpack_from("<H", fwid)[0])


def union(fwid: bytes) -> bytes:
    """The 10-byte fwid_union_t (shorter fwids padded with zeros, as a C union would read)."""
    return fwid[:UNION_LENGTH].ljust(UNION_LENGTH, b"\x00")


def from_union(dfu_type: int, raw: bytes) -> bytes:
    """The type's own part of a fwid_union_t."""
    return raw[: 10 if dfu_type == DfuType.APPLICATION else 2]


def is_upgrade(dfu_type: int, offered: bytes, mine: Fwid, flags: int | None) -> bool:
    """dfu_util.c is_upgrade (bootloader mode): a newer version of what we run, or any version
    of it when ours is not intact; a SoftDevice only when ours is broken."""
    broken = flags is not None and not flags & INTACT_FLAG.get(DfuType(dfu_type), 0)
    have = current(mine, dfu_type)
    if dfu_type == DfuType.SOFTDEVICE:
        return offered[:2] == have and broken
    if dfu_type in (DfuType.APPLICATION, DfuType.BOOTLOADER):
        newer = version(dfu_type, offered) > version(dfu_type, have)
        return same_id(dfu_type, offered, have) and (newer or broken)
    return False
