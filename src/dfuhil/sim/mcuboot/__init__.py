"""MCUboot on the virtual farm: the bootloader plug-in and what it was built with.

Importing the package registers the ``mcuboot`` behaviour plug-in. Module map: config (the build
params shared with the firmware generator and the app), area (flash partitions, the only way to
flash), bootlog (console lines), validate (image checks and size limits), core (one boot's
state and the shared steps), status (swap status), swap (the swap modes' boot), swap_scratch and
swap_move (the algorithms), overwrite, direct_xip, single_slot, loader (mode dispatch), recovery
(serial recovery's SMP server), bootloader (the plug-in: Zephyr's main).
"""

from dfuhil.sim.mcuboot import bootloader

__all__ = ["bootloader"]
