"""The swap modes' boot (``context_boot_go`` for one image): resume, decide, swap, validate.

The order is MCUboot's: read the status (which logs the trailers and the boot source); if a
swap was interrupted, finish it with the swap type it recorded; otherwise decide from the two
trailers and validate the secondary; then swap (or refuse a downgrade, or mark a failed
request), and finally re-validate the primary. The algorithm that moves sectors around is a
:class:`SwapAlgorithm` (swap_scratch, swap_move).
"""

from __future__ import annotations

from typing import Protocol

from dfuhil.formats.mcuboot_trailer import Magic, SwapType
from dfuhil.sim.mcuboot.area import FlashArea
from dfuhil.sim.mcuboot.core import UPGRADES, Boot, BootResponse
from dfuhil.sim.mcuboot.status import BootStatus, Source
from dfuhil.sim.mcuboot.validate import image_size


class SwapAlgorithm(Protocol):
    def compatible(self) -> bool:
        """``boot_slots_compatible`` (logs ``Cannot upgrade: ...``)."""
        ...

    def read_status(self, bs: BootStatus) -> None:
        """``swap_read_status``: source, records and the recorded swap type into ``bs``."""
        ...

    def run(self, bs: BootStatus, copy_size: int) -> bool:
        """``swap_run`` from where ``bs`` says; False if it refused to start."""
        ...


def boot_go(boot: Boot, algorithm: SwapAlgorithm) -> BootResponse | None:
    bs = BootStatus()
    swap_type = SwapType.NONE
    if algorithm.compatible():
        algorithm.read_status(bs)
        if not bs.is_reset():
            complete_partial_swap(boot, algorithm, bs)
        elif bs.swap_type == SwapType.NONE:
            swap_type = boot.validated_swap_type()
        else:
            # A swap was set up (trailer written) but no step finished before the reset.
            valid = boot.validate_slot(boot.other())
            swap_type = bs.swap_type if valid else SwapType.FAIL
    bs.swap_type = swap_type
    if swap_type in (SwapType.TEST, SwapType.PERM) and boot.downgrade_prevented():
        swap_type = SwapType.NONE
    if swap_type in UPGRADES:
        perform_update(boot, algorithm, bs, swap_type)
    elif swap_type == SwapType.FAIL:
        boot.set_image_ok()  # pretend we just reverted, so the request is not retried
    return boot.primary_response()


def perform_update(
    boot: Boot, algorithm: SwapAlgorithm, bs: BootStatus, swap_type: SwapType
) -> None:
    """``boot_perform_update``: swap, then the flags that end the request."""
    if not swap_image(boot, algorithm, bs):
        return
    if swap_type in (SwapType.REVERT, SwapType.PERM):
        boot.set_image_ok()
    boot.set_copy_done()


def complete_partial_swap(boot: Boot, algorithm: SwapAlgorithm, bs: BootStatus) -> None:
    """``boot_complete_partial_swap``: the swap type comes from swap_info, not the table."""
    swap_image(boot, algorithm, bs)
    if bs.swap_type in (SwapType.REVERT, SwapType.PERM):
        boot.set_image_ok()
    if bs.swap_type in UPGRADES:
        boot.set_copy_done()


def swap_image(boot: Boot, algorithm: SwapAlgorithm, bs: BootStatus) -> bool:
    """``boot_swap_image``: how much to swap (the larger image, or what the status recorded)."""
    if bs.is_reset():
        copy_size = max(image_size(boot.primary), image_size(boot.other()))
        bs.swap_size = copy_size
    else:
        recorded = status_area(boot).trailer().swap_size
        bs.swap_size = boot.primary.layout.status_start if recorded is None else recorded
        copy_size = bs.swap_size
    return algorithm.run(bs, copy_size)


def status_area(boot: Boot) -> FlashArea:
    """``boot_find_status``: the scratch if its magic is good, else the primary."""
    if boot.scratch is not None and boot.scratch.trailer().magic == Magic.GOOD:
        return boot.scratch
    return boot.primary


def scan_forward(area: FlashArea, entries: int, bs: BootStatus, records: int) -> bool:
    """``swap_read_status_bytes`` (scratch flavour): the first erased record after written
    ones is where to resume. Returns False if a written record follows a gap (inconsistent)."""
    found = False
    found_idx = 0
    consistent = True
    for i in range(entries):
        record = area.status_byte(area.layout.status_start + i * area.write_size)
        erased = record == area.layout.erased
        if erased:
            if found and not found_idx:
                found_idx = i
        elif not found:
            found = True
        elif found_idx:
            consistent = False  # a status write failed during the last swap
            break
    if found:
        found_idx = found_idx or entries
        bs.idx = found_idx // records + 1
        bs.state = found_idx % records + 1
    return consistent


def log_swap_state(boot: Boot, name: str, area: FlashArea) -> None:
    boot.log.inf(f"{name}: {area.trailer().describe()}")


def read_swap_info(area: FlashArea, bs: BootStatus, source: Source) -> None:
    bs.source = source
    bs.swap_type = area.trailer().swap_type
