"""SMP servers on the virtual farm: the Zephyr-style app and the wire codec they share."""
