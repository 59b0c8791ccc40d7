"""Swap using move (``swap_move.c``): shift the primary up one sector, then swap down.

Phase "move": from the image's last sector down to the first, each primary sector is copied one
sector up (one status record each). Phase "swap": for each sector, bottom up, the secondary's
sector goes to the primary and the moved-up primary sector goes to the secondary (two records
each). The primary therefore needs one spare sector; all status lives in the primary's trailer,
which is (re)written, with the swap type and size, before the first sector moves.
"""

from __future__ import annotations

from dfuhil.formats.mcuboot_trailer import Flag, Magic, SwapType
from dfuhil.sim.mcuboot.area import FlashArea
from dfuhil.sim.mcuboot.core import Boot
from dfuhil.sim.mcuboot.status import SOURCE_NAMES, BootStatus, Source, init_status
from dfuhil.sim.mcuboot.swap import log_swap_state, read_swap_info

MOVE_RECORDS = 1  # BOOT_STATUS_MOVE_STATE_COUNT
SWAP_RECORDS = 2  # BOOT_STATUS_SWAP_STATE_COUNT


class MoveSwap:
    def __init__(self, boot: Boot) -> None:
        assert boot.secondary is not None
        self.boot = boot
        self.primary = boot.primary
        self.secondary: FlashArea = boot.secondary
        self.sector = boot.geometry.sector_size

    def compatible(self) -> bool:
        primary, secondary = self.primary.sectors, self.secondary.sectors
        if primary not in (secondary, secondary + 1):
            self.boot.log.wrn("Cannot upgrade: not a compatible amount of sectors")
            return False
        if primary > self.primary.layout.max_sectors:
            self.boot.log.wrn("Cannot upgrade: more sectors than allowed")
            return False
        return True

    # --- status -------------------------------------------------------------------------------

    def status_source(self) -> Source:
        primary, secondary = self.primary.trailer(), self.secondary.trailer()
        log_swap_state(self.boot, "Primary image", self.primary)
        log_swap_state(self.boot, "Secondary image", self.secondary)
        source = Source.NONE
        if (
            primary.magic == Magic.GOOD
            and primary.copy_done == Flag.UNSET
            and secondary.magic != Magic.GOOD
        ):
            source = Source.PRIMARY
        self.boot.log.inf(f"Boot source: {SOURCE_NAMES[source]}")
        return source

    def read_status(self, bs: BootStatus) -> None:
        """``swap_read_status_bytes`` (move flavour): the last written record, scanning back."""
        source = self.status_source()
        if source == Source.NONE:
            return
        area = self.primary
        layout = area.layout
        entries = layout.status_records * layout.max_sectors
        found = next(
            (
                i
                for i in range(entries, 0, -1)
                if area.status_byte(layout.status_start + (i - 1) * area.write_size)
                != layout.erased
            ),
            -1,
        )
        move_entries = layout.max_sectors * MOVE_RECORDS
        if found == -1:
            pass  # no status written yet
        elif found < move_entries:
            bs.op, bs.idx, bs.state = "move", found // MOVE_RECORDS + 1, found % MOVE_RECORDS + 1
        else:
            done = found - move_entries
            bs.op, bs.idx, bs.state = "swap", done // SWAP_RECORDS + 1, done % SWAP_RECORDS + 1
        read_swap_info(area, bs, source)

    def write_status(self, bs: BootStatus) -> None:
        """Move records first (one per sector), then swap records (two per sector)."""
        ws = self.primary.write_size
        layout = self.primary.layout
        if bs.op == "move":
            off = (bs.idx - 1) * MOVE_RECORDS * ws
        else:
            off = layout.max_sectors * MOVE_RECORDS * ws + (bs.idx - 1) * SWAP_RECORDS * ws
        off += (bs.state - 1) * ws
        self.primary.write_status(layout.status_start + off, bs.state)

    # --- the swap -----------------------------------------------------------------------------

    def run(self, bs: BootStatus, copy_size: int) -> bool:
        log = self.boot.log
        log.inf("Starting swap using move algorithm.")
        last_idx = max(1, -(-copy_size // self.sector))  # find_last_idx
        if bs.is_reset():
            trailer_sectors = -(-self.primary.layout.size // self.sector)
            first_trailer_idx = self.primary.sectors - trailer_sectors
            if last_idx >= first_trailer_idx:
                log.wrn("Not enough free space to run swap upgrade")
                log.wrn(
                    f"required {(last_idx + 1) * self.sector} bytes but only "
                    f"{first_trailer_idx * self.sector} are available"
                )
                bs.swap_type = SwapType.NONE
                return False
        self.fixup_revert(bs)
        if bs.op == "move":
            for idx in range(last_idx, 0, -1):
                if idx <= last_idx - bs.idx + 1:
                    self.move_sector_up(idx, bs)
            bs.idx = 1
        bs.op = "swap"
        for idx in range(1, last_idx + 1):
            if idx >= bs.idx:
                self.swap_sectors(idx, bs)
        return True

    def fixup_revert(self, bs: BootStatus) -> None:
        """A revert about to start: give the secondary a confirmed trailer, so that a reset
        before the primary's status exists still swaps back (as a permanent swap)."""
        if bs.swap_type != SwapType.REVERT or bs.op != "move" or bs.idx != 1:
            return
        log_swap_state(self.boot, "Secondary image", self.secondary)
        if self.secondary.trailer().magic == Magic.UNSET:
            self.secondary.scramble_trailer_sectors()
            self.secondary.write_field("image_ok", 0x01)
            self.secondary.write_field("swap_size", bs.swap_size)
            self.secondary.write_field("magic")

    def move_sector_up(self, idx: int, bs: BootStatus) -> None:
        if bs.idx == 1:
            if bs.source != Source.PRIMARY:
                self.primary.scramble_trailer_sectors()
                init_status(self.primary, bs, self.secondary)
            self.secondary.scramble_trailer_sectors()
        new_off, old_off = idx * self.sector, (idx - 1) * self.sector
        self.primary.erase(new_off, self.sector)
        self.primary.copy_from(self.primary, old_off, new_off, self.sector)
        self.write_status(bs)
        bs.idx += 1

    def swap_sectors(self, idx: int, bs: BootStatus) -> None:
        up_off, off = idx * self.sector, (idx - 1) * self.sector
        if bs.state == 1:
            self.primary.erase(off, self.sector)
            self.primary.copy_from(self.secondary, off, off, self.sector)
            self.write_status(bs)
            bs.state = 2
        if bs.state == 2:
            self.secondary.erase(off, self.sector)
            self.secondary.copy_from(self.primary, up_off, off, self.sector)
            self.write_status(bs)
            bs.idx += 1
            bs.state = 1
