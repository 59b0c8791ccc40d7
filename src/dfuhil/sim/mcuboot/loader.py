"""``boot_go``: the upgrade mode the build was made with decides what happens to the slots."""

from __future__ import annotations

from dfuhil.sim.mcuboot import direct_xip, overwrite, single_slot, swap
from dfuhil.sim.mcuboot.core import Boot, BootResponse
from dfuhil.sim.mcuboot.swap_move import MoveSwap
from dfuhil.sim.mcuboot.swap_scratch import ScratchSwap


def boot_go(boot: Boot) -> BootResponse | None:
    """The image to jump to, or None when there is no bootable image."""
    mode = boot.mode
    if mode == "swap-scratch":
        return swap.boot_go(boot, ScratchSwap(boot))
    if mode == "swap-move":
        return swap.boot_go(boot, MoveSwap(boot))
    if mode == "overwrite-only":
        return overwrite.boot_go(boot)
    if mode in ("direct-xip", "direct-xip-revert"):
        return direct_xip.boot_go(boot, revert=mode == "direct-xip-revert")
    return single_slot.boot_go(boot)
