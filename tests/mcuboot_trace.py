"""The flash operations MCUboot v2.1.0 performs for one upgrade boot, derived from its source.

Each function below walks the C code of mcu-tools/mcuboot at tag v2.1.0 for one single-image
upgrade that starts from a clean state (no swap under way) and returns the NVMC operations an
nRF52 sees, in order: ``("erase", page address, page size)`` and ``("write", address, length)``.
Line numbers cite that tag (``loader.c`` = boot/bootutil/src/loader.c, and so on). It is written
from the C code, with its own arithmetic, so that a test can hold the virtual MCUboot's
recorded traffic against it; it does not import the plug-in.

A swap resumed after a power cut redoes the step it was in, from that step's first operation
(its status record is the last thing a step writes, and the next boot resumes at the first
step without one): ``step_ends`` marks where each step ends in ``ops``.

Platform facts (Zephyr on an nRF52): ``flash_area_erase`` erases page by page, lowest first;
``flash_area_write`` is one NVMC write of the whole buffer; ``flash_area_align`` is 4 (the
NVMC's word), so ``BOOT_WRITE_SZ`` is 4; ``BOOT_MAX_ALIGN`` is 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dfuhil.formats.mcuboot_build import Slot

Op = tuple[Literal["erase", "write"], int, int]

BUF_SZ = 1024  # loader.c:85-89
MAGIC_SZ = 16  # bootutil_public.h:84
# swap_type values written to swap_info (bootutil_public.h)
SWAP_TEST, SWAP_PERM, SWAP_REVERT = 2, 3, 4


def align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def align_down(n: int, a: int) -> int:
    return n // a * a


@dataclass
class Mcuboot:
    """Flash primitives of bootutil, recording what they do."""

    sector: int = 0x1000
    write_sz: int = 4  # BOOT_WRITE_SZ = flash_area_align(primary) (loader.c:585-604)
    max_align: int = 8  # BOOT_MAX_ALIGN
    max_sectors: int = 128  # BOOT_MAX_IMG_SECTORS = BOOT_STATUS_MAX_ENTRIES (bootutil_priv.h:196)
    state_count: int = 3  # BOOT_STATUS_STATE_COUNT (bootutil_priv.h:188-193), 1 + 2 for move
    ops: list[Op] = field(default_factory=list)
    step_ends: list[int] = field(default_factory=list)  # len(ops) after each status record

    # --- sizes and offsets (bootutil_misc.c, bootutil_misc.h) ----------------------------------

    @property
    def magic_align_size(self) -> int:
        return align_up(MAGIC_SZ, self.max_align)  # BOOT_MAGIC_ALIGN_SIZE

    def trailer_info_sz(self) -> int:
        return 4 * self.max_align + self.magic_align_size  # bootutil_misc.c:57-71

    def trailer_sz(self) -> int:
        """``boot_trailer_sz`` (bootutil_misc.c:85-89)."""
        return self.max_sectors * self.state_count * self.write_sz + self.trailer_info_sz()

    def scratch_trailer_sz(self) -> int:
        return self.state_count * self.write_sz + self.trailer_info_sz()  # bootutil_misc.c:92

    def status_off(self, area: Slot, scratch: bool = False) -> int:
        """``boot_status_off`` (bootutil_misc.c:113-135)."""
        return area.size - (self.scratch_trailer_sz() if scratch else self.trailer_sz())

    @staticmethod
    def magic_off(area: Slot) -> int:
        return area.size - MAGIC_SZ  # bootutil_misc.h:28-32

    def image_ok_off(self, area: Slot) -> int:
        return align_down(self.magic_off(area) - self.max_align, self.max_align)  # misc.h:35-38

    def copy_done_off(self, area: Slot) -> int:
        return self.image_ok_off(area) - self.max_align  # bootutil_misc.h:41-44

    def swap_info_off(self, area: Slot) -> int:
        return self.copy_done_off(area) - self.max_align  # bootutil_public.c:142-145

    def swap_size_off(self, area: Slot) -> int:
        return self.swap_info_off(area) - self.max_align  # bootutil_misc.h:47-50

    # --- primitives ----------------------------------------------------------------------------

    def erase_region(self, area: Slot, off: int, sz: int) -> None:
        """``boot_erase_region`` (loader.c:1172-1176) -> flash_area_erase: page by page."""
        for page in range(align_down(off, self.sector), off + sz, self.sector):
            self.ops.append(("erase", area.start + page, self.sector))

    def copy_region(self, src: Slot, dst: Slot, off_src: int, off_dst: int, sz: int) -> None:
        """``boot_copy_region`` (loader.c:1208-1320): read then write, BUF_SZ at a time."""
        del src, off_src  # reads are not flash operations
        copied = 0
        while copied < sz:
            chunk = min(BUF_SZ, sz - copied)
            self.ops.append(("write", dst.start + off_dst + copied, chunk))
            copied += chunk

    def write_trailer(self, area: Slot, off: int, inlen: int) -> None:
        """``boot_write_trailer`` (bootutil_public.c:321-346): ALIGN_UP(inlen, align) bytes."""
        self.ops.append(("write", area.start + off, align_up(inlen, self.write_sz)))

    def write_magic(self, area: Slot) -> None:
        """``boot_write_magic`` (bootutil_public.c:279-315): the aligned block ending the area."""
        pad_off = align_down(self.magic_off(area), self.max_align)
        self.ops.append(("write", area.start + pad_off, self.magic_align_size))

    def write_image_ok(self, area: Slot) -> None:
        self.write_trailer(area, self.image_ok_off(area), 1)  # bootutil_public.c:356-366

    def write_copy_done(self, area: Slot) -> None:
        self.write_trailer(area, self.copy_done_off(area), 1)  # bootutil_public.c:461-471

    def write_swap_info(self, area: Slot) -> None:
        self.write_trailer(area, self.swap_info_off(area), 1)  # bootutil_public.c:379-396

    def write_swap_size(self, area: Slot) -> None:
        self.write_trailer(area, self.swap_size_off(area), 4)  # bootutil_misc.c:238-248

    def write_status(self, area: Slot, internal_off: int, scratch: bool = False) -> None:
        """``boot_write_status`` (loader.c:719-773): one record of flash_area_align bytes."""
        off = self.status_off(area, scratch) + internal_off
        self.ops.append(("write", area.start + off, self.write_sz))
        self.step_ends.append(len(self.ops))

    def erase_trailer_sectors(self, area: Slot) -> None:
        """``swap_erase_trailer_sectors`` (swap_misc.c:34-80): last sector first, until the
        erased sectors hold ``boot_trailer_sz``."""
        sector, total = area.size // self.sector - 1, 0
        while True:
            self.erase_region(area, sector * self.sector, self.sector)
            sector -= 1
            total += self.sector
            if total >= self.trailer_sz():
                break

    def status_init(self, area: Slot, swap_type: int, secondary_image_ok: bool) -> None:
        """``swap_status_init`` (swap_misc.c:82-128)."""
        if swap_type != 1:  # BOOT_SWAP_TYPE_NONE
            self.write_swap_info(area)
        if secondary_image_ok:
            self.write_image_ok(area)
        self.write_swap_size(area)
        self.write_magic(area)


# --- overwrite-only (CONFIG_BOOT_UPGRADE_ONLY: OVERWRITE_ONLY + OVERWRITE_ONLY_FAST) ------------


def overwrite_only(m: Mcuboot, primary: Slot, secondary: Slot, src_size: int) -> list[Op]:
    """``boot_copy_image`` (loader.c:1332-1482) for an image of ``src_size`` bytes."""
    size = 0
    for _ in range(primary.size // m.sector):  # loader.c:1373-1388
        m.erase_region(primary, size, m.sector)
        if size + m.sector >= src_size:
            size = src_size
            size += m.write_sz - size % m.write_sz
            break
        size += m.sector
    sector, sz = primary.size // m.sector - 1, 0  # loader.c:1390-1401
    while True:
        sz += m.sector
        off = sector * m.sector
        sector -= 1
        if sz >= m.trailer_sz():
            break
    m.erase_region(primary, off, sz)
    m.copy_region(secondary, primary, 0, 0, size)  # loader.c:1421
    m.write_magic(primary)  # loader.c:1426-1431
    m.erase_region(secondary, 0, m.sector)  # loader.c:1459-1464: the header
    m.erase_region(secondary, secondary.size - m.sector, m.sector)  # 1466-1473: the trailer
    return m.ops


# --- swap using scratch -------------------------------------------------------------------------


def swap_scratch(
    m: Mcuboot,
    primary: Slot,
    secondary: Slot,
    scratch: Slot,
    copy_size: int,
    swap_type: int,
    secondary_image_ok: bool,
) -> list[Op]:
    """``boot_swap_image`` -> ``swap_run`` (swap_scratch.c:686-743), then
    ``boot_perform_update``'s flags (loader.c:1629-1702). ``copy_size``: the larger image."""
    last = 0  # swap_scratch.c:710-730
    while (last + 1) * m.sector < copy_size:
        last += 1
    status_idx = 0  # bs->idx - BOOT_STATUS_IDX_0
    while last >= 0:
        first, sz = last, m.sector  # boot_copy_sz (swap_scratch.c:441-471)
        while first > 0 and sz + m.sector <= scratch.size:
            first -= 1
            sz += m.sector
        _scratch_swap_sectors(
            m, primary, secondary, scratch, first, sz, status_idx, swap_type, secondary_image_ok
        )
        status_idx += 1
        last = first - 1
    if swap_type in (SWAP_REVERT, SWAP_PERM) and not secondary_image_ok:
        m.write_image_ok(primary)  # swap_set_image_ok (swap_misc.c:205-231): only if unset
    m.write_copy_done(primary)  # swap_set_copy_done (swap_misc.c:188-203)
    return m.ops


def _scratch_swap_sectors(
    m: Mcuboot,
    primary: Slot,
    secondary: Slot,
    scratch: Slot,
    idx: int,
    sz: int,
    status_idx: int,
    swap_type: int,
    secondary_image_ok: bool,
) -> None:
    """``boot_swap_sectors`` (swap_scratch.c:484-684), all three states in one go."""
    img_off = idx * m.sector
    copy_sz = sz
    trailer_sz = m.trailer_sz()
    last_sector = primary.size // m.sector - 1  # swap_scratch.c:517-531
    trailer_sectors_sz = m.sector
    while trailer_sectors_sz < trailer_sz:
        last_sector -= 1
        trailer_sectors_sz += m.sector
    if img_off + sz > last_sector * m.sector:  # swap_scratch.c:533-536
        copy_sz -= trailer_sz
    use_scratch = status_idx == 0 and copy_sz != sz  # swap_scratch.c:538

    def status(state: int, in_scratch: bool) -> None:
        # boot_status_internal_off (swap_scratch.c:153-162)
        internal = status_idx * m.state_count * m.write_sz + state * m.write_sz
        area = scratch if in_scratch else primary
        m.write_status(area, internal, scratch=in_scratch)

    # state 0 (swap_scratch.c:553-591)
    m.erase_region(scratch, 0, scratch.size)
    if status_idx == 0:
        m.status_init(scratch, swap_type, secondary_image_ok)
        if not use_scratch:
            m.erase_trailer_sectors(primary)
            m.status_init(primary, swap_type, secondary_image_ok)
            m.erase_region(scratch, 0, scratch.size)
    m.copy_region(secondary, scratch, img_off, 0, copy_sz)
    status(0, use_scratch)
    # state 1 (swap_scratch.c:593-612): the secondary's sectors first, its trailer after
    m.erase_region(secondary, img_off, sz)
    m.copy_region(primary, secondary, img_off, img_off, copy_sz)
    if status_idx == 0 and not use_scratch:
        m.erase_trailer_sectors(secondary)
    status(1, use_scratch)
    # state 2 (swap_scratch.c:614-679)
    m.erase_region(primary, img_off, sz)
    m.copy_region(scratch, primary, 0, img_off, copy_sz)
    if use_scratch:
        # the records kept in the scratch so far (swap_scratch.c:625-632)
        records = (m.state_count - 1) * m.write_sz
        m.copy_region(scratch, primary, m.status_off(scratch, True), img_off + copy_sz, records)
        if secondary_image_ok:  # the scratch's image_ok, written by status_init
            m.write_image_ok(primary)
        if swap_type != 1:
            m.write_swap_info(primary)
        m.write_swap_size(primary)
        m.write_magic(primary)
    status(2, False)  # use_scratch is cleared before this write (swap_scratch.c:667-670)
    if use_scratch:
        m.erase_region(scratch, 0, scratch.size)


# --- swap using move ----------------------------------------------------------------------------


def swap_move(
    m: Mcuboot,
    primary: Slot,
    secondary: Slot,
    copy_size: int,
    swap_type: int,
    secondary_image_ok: bool,
    secondary_magic_unset: bool = True,
) -> list[Op]:
    """``swap_run`` (swap_move.c:497-576), then ``boot_perform_update``'s flags."""
    m.state_count = 3  # BOOT_STATUS_MOVE_STATE_COUNT + BOOT_STATUS_SWAP_STATE_COUNT
    last_idx = max(1, -(-copy_size // m.sector))  # find_last_idx (swap_move.c:50-69)
    if swap_type == SWAP_REVERT and secondary_magic_unset:  # fixup_revert (swap_move.c:459-495)
        m.erase_trailer_sectors(secondary)
        m.write_image_ok(secondary)
        m.write_swap_size(secondary)
        m.write_magic(secondary)
        secondary_image_ok = True  # swap_status_init reads it from the secondary next
    # boot_move_sector_up (swap_move.c:366-407), bs_idx = bs->idx - BOOT_STATUS_IDX_0
    for bs_idx, idx in enumerate(range(last_idx, 0, -1)):
        if bs_idx == 0:
            m.erase_trailer_sectors(primary)  # the source is not the primary (fresh swap)
            m.status_init(primary, swap_type, secondary_image_ok)
            m.erase_trailer_sectors(secondary)
        m.erase_region(primary, idx * m.sector, m.sector)
        m.copy_region(primary, primary, (idx - 1) * m.sector, idx * m.sector, m.sector)
        m.write_status(primary, bs_idx * 1 * m.write_sz)  # swap_move.c:220-235, op MOVE
    swap_base = m.max_sectors * 1 * m.write_sz  # the swap records follow the move records
    for idx in range(1, last_idx + 1):  # boot_swap_sectors (swap_move.c:409-447)
        off = (idx - 1) * m.sector
        m.erase_region(primary, off, m.sector)
        m.copy_region(secondary, primary, off, off, m.sector)
        m.write_status(primary, swap_base + (idx - 1) * 2 * m.write_sz)
        m.erase_region(secondary, off, m.sector)
        m.copy_region(primary, secondary, idx * m.sector, off, m.sector)
        m.write_status(primary, swap_base + (idx - 1) * 2 * m.write_sz + m.write_sz)
    if swap_type in (SWAP_REVERT, SWAP_PERM) and not secondary_image_ok:
        m.write_image_ok(primary)
    m.write_copy_done(primary)
    return m.ops


# --- direct-xip with revert ---------------------------------------------------------------------


def direct_xip_select(m: Mcuboot, slot: Slot) -> list[Op]:
    """``boot_select_or_erase`` (loader.c:2574-2634) on a slot with a good magic and no
    copy_done: the slot is marked "selected once"."""
    m.write_copy_done(slot)
    return m.ops


def direct_xip_erase_unconfirmed(m: Mcuboot, slot: Slot) -> list[Op]:
    """``boot_select_or_erase`` on a slot selected once and never confirmed: the whole slot
    (loader.c:2596-2609)."""
    m.erase_region(slot, 0, slot.size)
    return m.ops
