"""SMP servers on the virtual farm: the Zephyr-style app and the pieces MCUboot's serial recovery
shares with it.

Importing the package registers the ``smp_app`` behaviour plug-in. Module map: server (the SMP
dispatcher), serial_port (SMP over the console UART), uart_lines (Zephyr's UART line
buffers in front of the app's SMP server), upload (the image-upload receiver),
img_state (Zephyr's image state over flash), dfu_lock (nRF Desktop's DFU lock), app (the plug-in).
"""

from dfuhil.sim.smp import app

__all__ = ["app"]
