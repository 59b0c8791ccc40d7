"""MCUboot on the virtual farm: the bootloader plug-in and what it was built with."""
