"""The MCUboot image trailer at the end of each slot, and the swap decision it drives.

Offsets, magic values, flag decoding and the swap table are MCUboot's (``bootutil_public.c``,
``bootutil_misc.h``, ``bootutil_area.c`` at snapshot 2d4bacc3; spec §2). The host reads
trailers to explain a board's state; the virtual MCUboot and the virtual Zephyr app write them
with :func:`field_write`, so all three agree on every byte.

Offsets below are relative to the start of the slot (``S`` = slot size, ``A`` = BOOT_MAX_ALIGN)::

    S-16            magic (16 bytes; written as one ALIGN_UP(16, A) block ending at S)
    S-16-A (aligned) image_ok        (S-24 for A=8)
    image_ok - A    copy_done        (S-32)
    copy_done - A   swap_info        (S-40)  bits 0-3 swap type, 4-7 image number
    swap_info - A   swap_size (u32)  (S-48)
    S - trailer_size ...             swap status records (3 per sector for scratch/move)

Fields sit ``A`` apart, but each is *written* padded only to the flash's write unit
(``boot_write_trailer``: ``ALIGN_UP(len, flash_area_align)``, 4 bytes on an nRF52's NVMC);
only the magic block is ``A`` long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

MAGIC_ALIGN8 = bytes.fromhex("77c295f360d2ef7f3552500f2cb67980")
_MAGIC_TAIL = bytes.fromhex("2de15d29410b8d77679c110f1f8a")

Mode = Literal[
    "swap-scratch", "swap-move", "overwrite-only", "direct-xip", "direct-xip-revert", "single-slot"
]
MODES: tuple[Mode, ...] = (
    "swap-scratch",
    "swap-move",
    "overwrite-only",
    "direct-xip",
    "direct-xip-revert",
    "single-slot",
)
# enum mcuboot_mode (boot_status.h), as the OS group's bootloader-info "mode" query reports it.
MODE_NUMBERS: dict[Mode, int] = {
    "single-slot": 0,
    "swap-scratch": 1,
    "overwrite-only": 2,
    "swap-move": 3,
    "direct-xip": 4,
    "direct-xip-revert": 5,
}
# Swap-status records per sector (BOOT_STATUS_STATE_COUNT); 0: no status area at all.
STATUS_RECORDS: dict[Mode, int] = {
    "swap-scratch": 3,
    "swap-move": 3,
    "overwrite-only": 0,
    "direct-xip": 0,
    "direct-xip-revert": 0,
    "single-slot": 0,
}


class Magic(IntEnum):
    GOOD = 1
    BAD = 2
    UNSET = 3


class Flag(IntEnum):
    SET = 1
    BAD = 2
    UNSET = 3


class SwapType(IntEnum):
    NONE = 1
    TEST = 2
    PERM = 3
    REVERT = 4
    FAIL = 5
    PANIC = 0xFF


FLAG_SET = 0x01


def trailer_magic(max_align: int = 8) -> bytes:
    """``boot_img_magic``: fixed for BOOT_MAX_ALIGN 8, else the alignment then a fixed tail."""
    if max_align == 8:
        return MAGIC_ALIGN8
    return max_align.to_bytes(2, "little") + _MAGIC_TAIL


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _align_down(value: int, align: int) -> int:
    return value // align * align


@dataclass(frozen=True)
class TrailerLayout:
    """Where each trailer field lives in a slot of ``slot_size`` bytes."""

    slot_size: int
    max_align: int = 8  # BOOT_MAX_ALIGN
    write_size: int = 4  # flash program unit (nRF52 NVMC: one word)
    max_sectors: int = 128  # BOOT_MAX_IMG_SECTORS
    status_records: int = 3  # per sector; 0 for overwrite-only, direct-xip, single slot
    erased: int = 0xFF

    @classmethod
    def for_mode(
        cls,
        mode: Mode,
        slot_size: int,
        *,
        max_align: int = 8,
        write_size: int = 4,
        max_sectors: int = 128,
    ) -> TrailerLayout:
        return cls(slot_size, max_align, write_size, max_sectors, STATUS_RECORDS[mode])

    @property
    def magic_block(self) -> int:
        """Start of the block written with the magic (erased padding, then the 16 bytes)."""
        return self.slot_size - _align_up(16, self.max_align)

    @property
    def magic(self) -> int:
        return self.slot_size - 16

    @property
    def image_ok(self) -> int:
        return _align_down(self.slot_size - 16 - self.max_align, self.max_align)

    @property
    def copy_done(self) -> int:
        return self.image_ok - self.max_align

    @property
    def swap_info(self) -> int:
        return self.copy_done - self.max_align

    @property
    def swap_size(self) -> int:
        return self.swap_info - self.max_align

    @property
    def info_size(self) -> int:
        """``trailer_info_sz``: swap_size through magic."""
        return 4 * self.max_align + _align_up(16, self.max_align)

    @property
    def status_size(self) -> int:
        return self.max_sectors * self.status_records * self.write_size

    @property
    def size(self) -> int:
        """The whole trailer (status area plus info): the part of a slot an image cannot use."""
        if self.status_records == 0:
            # overwrite-only: magic, image_ok and copy_done only (imgtool --overwrite-only).
            return self.max_align * 2 + _align_up(16, self.max_align)
        return self.status_size + self.info_size

    @property
    def status_start(self) -> int:
        return self.slot_size - self.size

    def status_offset(self, idx: int, state: int) -> int:
        """Where record ``state`` (1..records) of swap step ``idx`` lives.

        ``idx`` is MCUboot's ``bs->idx``: 1 (BOOT_STATUS_IDX_0) for the first step of a swap,
        counting up as the swap works through the sectors, so the first step is recorded at
        the start of the status area (``boot_status_internal_off``).
        """
        if not 1 <= idx <= self.max_sectors:
            raise ValueError(f"swap step {idx} outside 1..{self.max_sectors}")
        if not 1 <= state <= self.status_records:
            raise ValueError(f"status state {state} outside 1..{self.status_records}")
        index = (idx - 1) * self.status_records + (state - 1)
        return self.status_start + index * self.write_size


TrailerField = Literal["magic", "image_ok", "copy_done", "swap_info", "swap_size"]


def field_write(
    layout: TrailerLayout, field: TrailerField, value: int | bytes
) -> tuple[int, bytes]:
    """(offset in slot, bytes) to program one trailer field, as MCUboot v2.1.0 writes it.

    Flags and swap_info (one byte) and swap_size (a u32) go through ``boot_write_trailer``
    (bootutil_public.c:322-346): the value, then erased padding up to a whole flash write unit,
    ``ALIGN_UP(inlen, flash_area_align(fap))`` (4 on an nRF52), not up to BOOT_MAX_ALIGN. The
    magic goes through ``boot_write_magic`` (bootutil_public.c:280-316): the whole
    ALIGN_UP(16, BOOT_MAX_ALIGN) block ending at the slot's end.
    """
    erased = bytes([layout.erased])
    if field == "magic":
        block = _align_up(16, layout.max_align)
        magic = value if isinstance(value, bytes) else trailer_magic(layout.max_align)
        return layout.magic_block, erased * (block - 16) + magic
    assert isinstance(value, int)
    if field == "swap_size":
        offset, raw = layout.swap_size, value.to_bytes(4, "little")
    else:
        offset = {
            "image_ok": layout.image_ok,
            "copy_done": layout.copy_done,
            "swap_info": layout.swap_info,
        }[field]
        raw = bytes([value])
    padded = _align_up(len(raw), layout.write_size)
    if padded > layout.max_align:
        # boot_write_trailer returns -1: a write unit wider than BOOT_MAX_ALIGN is a bad build.
        raise ValueError(
            f"flash write size {layout.write_size} exceeds BOOT_MAX_ALIGN {layout.max_align}"
        )
    return offset, raw + erased * (padded - len(raw))


@dataclass(frozen=True)
class TrailerState:
    """A slot's trailer, decoded the way ``boot_read_swap_state`` decodes it."""

    magic: Magic
    swap_type: SwapType  # from swap_info; erased or out of range reads as NONE
    image_num: int
    copy_done: Flag
    image_ok: Flag
    swap_size: int | None  # None if erased

    def describe(self) -> str:
        """MCUboot's own log form (``BOOT_LOG_SWAP_STATE``)."""
        return (
            f"magic={self.magic.name.lower()}, swap_type=0x{self.swap_type:x}, "
            f"copy_done=0x{self.copy_done:x}, image_ok=0x{self.image_ok:x}"
        )


def _flag(byte: int, erased: int) -> Flag:
    if byte == erased:
        return Flag.UNSET
    return Flag.SET if byte == FLAG_SET else Flag.BAD


def read_trailer(
    read: Callable[[int, int], bytes], slot_start: int, layout: TrailerLayout
) -> TrailerState:
    """Decode the trailer of the slot at ``slot_start`` through ``read(address, length)``."""
    tail = read(slot_start + layout.swap_size, layout.slot_size - layout.swap_size)
    base = layout.swap_size

    def at(offset: int, length: int = 1) -> bytes:
        return tail[offset - base : offset - base + length]

    magic_raw = at(layout.magic, 16)
    if magic_raw == bytes([layout.erased]) * 16:
        magic = Magic.UNSET
    elif magic_raw == trailer_magic(layout.max_align):
        magic = Magic.GOOD
    else:
        magic = Magic.BAD
    info = at(layout.swap_info)[0]
    swap_type = SwapType.NONE
    image_num = 0
    if info != layout.erased and 1 <= (info & 0x0F) <= SwapType.REVERT:
        swap_type = SwapType(info & 0x0F)
        image_num = info >> 4
    size_raw = at(layout.swap_size, 4)
    return TrailerState(
        magic=magic,
        swap_type=swap_type,
        image_num=image_num,
        copy_done=_flag(at(layout.copy_done)[0], layout.erased),
        image_ok=_flag(at(layout.image_ok)[0], layout.erased),
        swap_size=None
        if size_raw == bytes([layout.erased]) * 4
        else int.from_bytes(size_raw, "little"),
    )


def decide_swap(primary: TrailerState, secondary: TrailerState) -> SwapType:
    """``boot_swap_type_multi``: the first matching row of ``boot_swap_tables`` (spec §2.4;
    MCUboot v2.1.0 bootutil_public.c:102-127, the revert row wants the secondary's magic UNSET).

    Only the trailers decide; validating the secondary image (which can turn TEST/PERM into
    NONE or FAIL) is the caller's next step.
    """
    if secondary.magic == Magic.GOOD and secondary.image_ok == Flag.UNSET:
        return SwapType.TEST
    if secondary.magic == Magic.GOOD and secondary.image_ok == Flag.SET:
        return SwapType.PERM
    if (
        primary.magic == Magic.GOOD
        and secondary.magic == Magic.UNSET  # not BAD: a torn secondary trailer blocks a revert
        and primary.image_ok == Flag.UNSET
        and primary.copy_done == Flag.SET
    ):
        return SwapType.REVERT
    return SwapType.NONE
