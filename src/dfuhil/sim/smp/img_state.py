"""Zephyr's img_mgmt image state over virtual flash: what SMP reports and what state-write writes.

One image, two slots (slot 0 = primary, slot 1 = secondary). Follows Zephyr's
``img_mgmt_state.c`` (``img_mgmt_get_next_boot_slot``, ``img_mgmt_state_read``,
``img_mgmt_set_next_boot_slot``, ``img_mgmt_slot_in_use``) and MCUboot's ``boot_set_next``
(bootutil_public.c; the swap variant, and the ``MCUBOOT_BOOTLOADER_MODE_DIRECT_XIP`` variant the
app links for direct-xip), spec §2.5-§2.6 and §4.4:

- swap modes: the next boot comes from MCUboot's swap table over the two trailers (NONE: slot 0;
  PERM: slot 1; TEST / REVERT: the other slot, for one boot / back);
- direct-xip: the slot with the higher version boots next; with revert, the slot states
  (magic, copy_done, image_ok) decide as in ``img_mgmt_get_next_boot_slot``;
- the running ("active") slot is ``active`` and ``confirmed`` unless the next boot reverts it;
  the other slot is ``pending`` (+``permanent``) or ``confirmed`` (a revert target).

Every flash change goes through the FlashPort (``flash_write`` / ``flash_erase_page``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from dfuhil.formats.mcuboot import ImageFormatError, ImageVersion, McubootImage, read_slot_image
from dfuhil.formats.mcuboot_build import FlashGeometry, Slot
from dfuhil.formats.mcuboot_trailer import (
    FLAG_SET,
    Flag,
    Magic,
    SwapType,
    TrailerField,
    TrailerState,
    decide_swap,
    field_write,
    read_trailer,
)
from dfuhil.formats.smp import Group, ImgMgmtErr
from dfuhil.sim.smp.server import SmpError
from dfuhil.sim.smp.upload import FlashPort

HASH_LEN = 32  # IMAGE_HASH_LEN


class NextBoot(Enum):
    NORMAL = "normal"  # for good
    TEST = "test"  # for one boot; the image must confirm itself or be reverted
    REVERT = "revert"  # back to the other slot (the running one was never confirmed)


@dataclass(frozen=True)
class SlotImage:
    """What ``img_mgmt_read_info`` gets from a slot: a header, its version and its hash."""

    number: int
    slot: Slot
    image: McubootImage

    @property
    def version(self) -> ImageVersion:
        return self.image.version

    @property
    def hash(self) -> bytes:
        return self.image.image_hash or b""


def image_error(code: ImgMgmtErr, why: str | None = None) -> SmpError:
    return SmpError(code, group=Group.IMAGE, rsn=why)


class ImageState:
    """The image management state of a running app (single image)."""

    def __init__(
        self, flash: FlashPort, geometry: FlashGeometry, active_slot: int, *, page_size: int
    ) -> None:
        self.flash = flash
        self.page_size = page_size
        self.geometry = geometry
        self.active = active_slot
        self.slots: list[Slot] = [geometry.primary]
        if geometry.secondary is not None:
            self.slots.append(geometry.secondary)

    @property
    def direct_xip(self) -> bool:
        return self.geometry.mode in ("direct-xip", "direct-xip-revert")

    @property
    def writable(self) -> bool:
        """Zephyr registers no state-write handler for plain direct-xip."""
        return self.geometry.mode != "direct-xip"

    def opposite(self, number: int) -> int:
        return 1 - number

    def slot(self, number: int) -> Slot | None:
        return self.slots[number] if 0 <= number < len(self.slots) else None

    # --- reading -----------------------------------------------------------------------------

    def read_info(self, number: int) -> SlotImage | None:
        """The slot's image if its header and TLVs read back with a 32-byte hash, else None."""
        slot = self.slot(number)
        if slot is None:
            return None
        try:
            image = read_slot_image(self.flash.read, slot.start, slot.size, source=f"slot {number}")
        except (ImageFormatError, ValueError):
            return None
        if image is None or image.image_hash is None or len(image.image_hash) != HASH_LEN:
            return None
        return SlotImage(number, slot, image)

    def trailer(self, number: int) -> TrailerState:
        slot = self.slots[number]
        return read_trailer(self.flash.read, slot.start, self.geometry.layout(slot))

    def running_version(self) -> ImageVersion | None:
        info = self.read_info(self.active)
        return info.version if info is not None else None

    def swap_type(self) -> SwapType:
        """``mcuboot_swap_type_multi``: the swap table over both trailers, no validation."""
        if len(self.slots) < 2:
            return SwapType.NONE
        return decide_swap(self.trailer(0), self.trailer(1))

    def next_boot(self) -> tuple[int, NextBoot]:
        """``img_mgmt_get_next_boot_slot``."""
        if self.direct_xip:
            return self._next_boot_direct_xip()
        swap = self.swap_type()
        if swap == SwapType.PERM:
            return 1, NextBoot.NORMAL
        if swap == SwapType.TEST:
            return self.opposite(self.active), NextBoot.TEST
        if swap == SwapType.REVERT:
            return self.opposite(self.active), NextBoot.REVERT
        return 0, NextBoot.NORMAL

    def _next_boot_direct_xip(self) -> tuple[int, NextBoot]:
        other = self.opposite(self.active)
        mine, theirs = self.read_info(self.active), self.read_info(other)
        if self.geometry.mode == "direct-xip":
            if mine and theirs and mine.version.key() < theirs.version.key():
                return other, NextBoot.NORMAL
            return self.active, NextBoot.NORMAL
        if mine is None or theirs is None:
            return self.active, NextBoot.NORMAL
        my_state, their_state = self._xip_state(self.active), self._xip_state(other)
        if my_state == "revert":
            return other, NextBoot.REVERT
        if their_state == "unset":
            return self.active, NextBoot.TEST if my_state == "once" else NextBoot.NORMAL
        if mine.version.key() < theirs.version.key():
            if their_state == "forever":
                return other, NextBoot.NORMAL
            if their_state == "once":
                return other, NextBoot.TEST
        return self.active, NextBoot.NORMAL

    def _xip_state(self, number: int) -> str:
        """``read_directxip_state``: unset, once, revert or forever."""
        state = self.trailer(number)
        if state.magic != Magic.GOOD:
            return "unset"
        if state.image_ok == Flag.SET:
            return "forever"
        if state.copy_done == Flag.SET:
            return "revert"
        return "once"

    def state_list(self) -> dict[str, Any]:
        """``img_mgmt_state_read`` with the default (non-frugal) encoding."""
        next_slot, kind = self.next_boot()
        flags = {self.active: {"active"}}
        if kind != NextBoot.REVERT:
            flags[self.active].add("confirmed")
        other = self.opposite(self.active)
        flags[other] = set()
        if next_slot != self.active:
            flags[other] = {
                NextBoot.NORMAL: {"pending", "permanent"},
                NextBoot.REVERT: {"confirmed"},
                NextBoot.TEST: {"pending"},
            }[kind]
        images = []
        for number in (0, 1):
            info = self.read_info(number)
            if info is None:
                continue
            mine = flags.get(number, set())
            images.append(
                {
                    "slot": number,
                    "version": str(info.version),
                    "hash": info.hash,
                    "bootable": info.image.header.bootable,
                    "pending": "pending" in mine,
                    "confirmed": "confirmed" in mine,
                    "active": "active" in mine,
                    "permanent": "permanent" in mine,
                }
            )
        return {"images": images, "splitStatus": 0}

    def find_by_hash(self, digest: bytes) -> int | None:
        for number in (0, 1):
            info = self.read_info(number)
            if info is not None and info.hash == digest:
                return number
        return None

    def slot_in_use(self, number: int) -> bool:
        """``img_mgmt_slot_in_use``: running, or the pending/revert target of the next boot."""
        if not self.direct_xip:
            next_slot, kind = self.next_boot()
            if number == next_slot and kind in (NextBoot.REVERT, NextBoot.TEST):
                return True
            if self.active != next_slot and kind == NextBoot.NORMAL:
                return True
        return number == self.active

    def upload_slot(self) -> Slot:
        """``img_mgmt_get_unused_slot_area_id``: the slot not running, unless it is in use."""
        number = self.opposite(self.active)
        slot = self.slot(number)
        if slot is None or self.slot_in_use(number):
            raise image_error(ImgMgmtErr.NO_FREE_SLOT, "no slot to upload to")
        return slot

    # --- writing -----------------------------------------------------------------------------

    def set_next_boot_slot(self, number: int, confirm: bool) -> None:
        """``img_mgmt_set_next_boot_slot`` (raises SmpError with the IMAGE group's code)."""
        if self.geometry.mode == "direct-xip-revert":
            if number == self.active and not confirm:
                raise image_error(ImgMgmtErr.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED)
            self.boot_set_next(number, number == self.active, confirm)
            return
        next_slot, kind = self.next_boot()
        if not confirm and number == self.active:
            raise image_error(ImgMgmtErr.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED)
        if kind == NextBoot.TEST:
            if not confirm and number == next_slot:
                return  # already set for test
            raise image_error(ImgMgmtErr.IMAGE_ALREADY_PENDING)
        if kind == NextBoot.NORMAL:
            if confirm and number == next_slot:
                return
            if (number == self.active and self.active != next_slot) or (
                not confirm and number != self.active and number == next_slot
            ):
                raise image_error(ImgMgmtErr.IMAGE_ALREADY_PENDING)
        if kind == NextBoot.REVERT:
            if confirm and number == next_slot:
                return
            if not confirm:
                raise image_error(ImgMgmtErr.IMAGE_ALREADY_PENDING)
        self.boot_set_next(number, number == self.active, confirm)

    def boot_set_next(self, number: int, active: bool, confirm: bool) -> None:
        """MCUboot's ``boot_set_next`` on one slot's trailer; bootutil errors as IMAGE codes."""
        if active:
            confirm = True
        state = self.trailer(number)
        if self.direct_xip:
            self._set_next_direct_xip(number, state, confirm)
            return
        if state.magic == Magic.GOOD:
            if active and state.image_ok == Flag.UNSET:
                self._write(number, "image_ok", FLAG_SET)
        elif state.magic == Magic.UNSET:
            if not active:
                self._write(number, "magic", 0)  # 0: the build's magic
                if confirm:
                    self._write(number, "image_ok", FLAG_SET)
                swap = SwapType.PERM if confirm else SwapType.TEST
                self._write(number, "swap_info", int(swap))  # image 0 in bits 4-7
        elif active:
            raise image_error(ImgMgmtErr.INVALID_IMAGE_VECTOR_TABLE, "BOOT_EBADVECT")
        else:
            self.erase_slot(number)  # a corrupt trailer: MCUboot wipes the slot
            raise image_error(ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC, "BOOT_EBADIMAGE")

    def _set_next_direct_xip(self, number: int, state: TrailerState, confirm: bool) -> None:
        if state.magic == Magic.BAD:
            raise image_error(ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC, "BOOT_EBADIMAGE")
        if state.magic == Magic.UNSET:
            self._write(number, "magic", 0)  # 0: the build's magic
        if confirm:
            if state.copy_done == Flag.UNSET:
                self._write(number, "copy_done", FLAG_SET)
            if state.image_ok == Flag.UNSET:
                self._write(number, "image_ok", FLAG_SET)

    def confirm_running(self) -> None:
        """``boot_write_img_confirmed``: confirm the slot this app runs from."""
        self.boot_set_next(self.active, True, True)

    def erase_slot(self, number: int) -> None:
        """``img_mgmt_erase_slot``: erase the whole slot unless it is blank already."""
        slot = self.slots[number]
        if self.flash.read(slot.start, slot.size) == b"\xff" * slot.size:
            return
        for address in range(slot.start, slot.end, self.page_size):
            self.flash.flash_erase_page(address)

    def _write(self, number: int, field: TrailerField, value: int | bytes) -> None:
        slot = self.slots[number]
        offset, data = field_write(self.geometry.layout(slot), field, value)
        self.flash.flash_write(slot.start + offset, data)
