"""Swap using scratch (``swap_scratch.c``, MCUboot v2.1.0): sector ranges swapped last-first
through a scratch.

Each operation (status index ``idx`` from 1, starting at the image's last sectors) has three
steps, each ending with one status record: 1) secondary -> scratch, 2) primary -> secondary,
3) scratch -> primary. Before the first step of the first operation the swap trailer (swap
type, swap size, magic) is written to the scratch, then to the primary. When the first
operation covers the sector holding the trailer, the primary's trailer cannot be rewritten
before step 3 erases that sector: its first two records then live in the scratch, and the third
step moves them and the trailer over (``use_scratch``). Otherwise step 2 rewrites the
secondary's image sectors first and erases the secondary's trailer sectors after
(swap_scratch.c:593-607).
"""

from __future__ import annotations

from dfuhil.formats.mcuboot_trailer import Flag, Magic, SwapType
from dfuhil.sim.mcuboot.area import FlashArea
from dfuhil.sim.mcuboot.core import Boot
from dfuhil.sim.mcuboot.status import SOURCE_NAMES, BootStatus, Source, init_status
from dfuhil.sim.mcuboot.swap import log_swap_state, read_swap_info, scan_forward

RECORDS = 3  # BOOT_STATUS_STATE_COUNT


class ScratchSwap:
    def __init__(self, boot: Boot) -> None:
        assert boot.scratch is not None and boot.secondary is not None
        self.boot = boot
        self.primary = boot.primary
        self.secondary: FlashArea = boot.secondary
        self.scratch: FlashArea = boot.scratch
        self.sector = boot.geometry.sector_size

    def compatible(self) -> bool:
        log = self.boot.log
        if max(self.primary.sectors, self.secondary.sectors) > self.primary.layout.max_sectors:
            log.wrn("Cannot upgrade: more sectors than allowed")
            return False
        if self.sector > self.scratch.size:
            log.wrn("Cannot upgrade: not all sectors fit inside scratch")
            return False
        if self.primary.size != self.secondary.size:
            log.wrn("Cannot upgrade: slots are not compatible")
            return False
        return True

    # --- status -------------------------------------------------------------------------------

    def status_source(self) -> Source:
        """``swap_status_source`` with ``boot_status_tables`` (first matching row wins)."""
        primary, scratch = self.primary.trailer(), self.scratch.trailer()
        log_swap_state(self.boot, "Primary image", self.primary)
        log_swap_state(self.boot, "Scratch", self.scratch)
        source = Source.NONE
        if primary.magic == Magic.GOOD and scratch.magic != Magic.GOOD:
            source = Source.PRIMARY if primary.copy_done == Flag.UNSET else Source.NONE
        elif scratch.magic == Magic.GOOD:
            source = Source.SCRATCH
        elif primary.magic == Magic.UNSET and primary.copy_done == Flag.UNSET:
            source = Source.PRIMARY  # never swapped, or mid-revert
        self.boot.log.inf(f"Boot source: {SOURCE_NAMES[source]}")
        return source

    def read_status(self, bs: BootStatus) -> None:
        source = self.status_source()
        if source == Source.NONE:
            return
        area = self.scratch if source == Source.SCRATCH else self.primary
        entries = RECORDS if area is self.scratch else RECORDS * area.layout.max_sectors
        if not scan_forward(area, entries, bs, RECORDS):
            self.boot.log.err("Detected inconsistent status!")
        read_swap_info(area, bs, source)

    def write_status(self, bs: BootStatus) -> None:
        """``boot_write_status``: record ``bs.state`` of operation ``bs.idx``."""
        if bs.use_scratch:
            area = self.scratch
            off = area.layout.status_start + (bs.state - 1) * area.write_size
        else:
            area = self.primary
            # TrailerLayout numbers the operations from the area's far end (design.md's
            # "sector 127 first"): operation idx sits where "sector" max_sectors - idx does.
            off = area.layout.status_offset(bs.idx, bs.state)
        area.write_status(off, bs.state)

    # --- the swap -----------------------------------------------------------------------------

    def run(self, bs: BootStatus, copy_size: int) -> bool:
        """``swap_run`` (swap_scratch.c:686-743)."""
        self.boot.log.inf("Starting swap using scratch algorithm.")
        per_operation = self.scratch.size // self.sector
        last = max(0, -(-copy_size // self.sector) - 1)  # at least sector 0 is swapped
        operation = 0
        while last >= 0:
            first = max(0, last - per_operation + 1)  # boot_copy_sz
            if operation >= bs.idx - 1:
                self.swap_sectors(first, (last - first + 1) * self.sector, bs)
            last = first - 1
            operation += 1
        return True

    def swap_sectors(self, idx: int, size: int, bs: BootStatus) -> None:
        """``boot_swap_sectors`` (swap_scratch.c:484-684) for the sectors starting at ``idx``."""
        primary, secondary, scratch = self.primary, self.secondary, self.scratch
        img_off = idx * self.sector
        trailer_size = primary.layout.size  # boot_trailer_sz(BOOT_WRITE_SZ)
        first_trailer_off = (primary.size - trailer_size) // self.sector * self.sector
        copy_size = size
        if img_off + size > first_trailer_off:
            copy_size -= trailer_size
        bs.use_scratch = bs.idx == 1 and copy_size != size

        if bs.state == 1:
            scratch.erase(0, scratch.size)
            if bs.idx == 1:
                # The scratch keeps the swap type while the primary trailer is erased.
                init_status(scratch, bs, secondary)
                if not bs.use_scratch:
                    primary.scramble_trailer_sectors()
                    init_status(primary, bs, secondary)
                    scratch.erase(0, scratch.size)
            scratch.copy_from(secondary, img_off, 0, copy_size)
            self.write_status(bs)
            bs.state = 2

        if bs.state == 2:
            secondary.erase(img_off, size)
            secondary.copy_from(primary, img_off, img_off, copy_size)
            if bs.idx == 1 and not bs.use_scratch:
                # Only the primary may hold the state of a swap under way.
                secondary.scramble_trailer_sectors()
            self.write_status(bs)
            bs.state = 3

        if bs.state == 3:
            primary.erase(img_off, size)
            primary.copy_from(scratch, 0, img_off, copy_size)
            if bs.use_scratch:
                self.move_trailer_to_primary(img_off + copy_size, bs)
            erase_scratch = bs.use_scratch
            bs.use_scratch = False
            self.write_status(bs)
            bs.idx += 1
            bs.state = 1
            if erase_scratch:
                # Only now, so a reset never finds a stale status in the scratch.
                scratch.erase(0, scratch.size)

    def move_trailer_to_primary(self, status_off: int, bs: BootStatus) -> None:
        """The records and trailer kept in the scratch during the first operation."""
        scratch, primary = self.scratch, self.primary
        primary.copy_from(
            scratch, scratch.layout.status_start, status_off, (RECORDS - 1) * scratch.write_size
        )
        state = scratch.trailer()
        if state.image_ok == Flag.SET:
            primary.write_field("image_ok", 0x01)
        if state.swap_type != SwapType.NONE:
            primary.write_field("swap_info", int(state.swap_type))
        primary.write_field("swap_size", bs.swap_size)
        primary.write_field("magic")
