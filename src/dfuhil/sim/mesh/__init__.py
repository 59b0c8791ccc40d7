"""The nRF5 SDK for Mesh firmwares of the virtual farm: the serial bootloader and the DFU example.

Importing the package registers both behaviour plug-ins (``mesh_bootloader``, ``mesh_dfu_app``).
Module map: dfu_core (the shared DFU state machine), transfer (segments in flash), transport
(radio TX slots), bootinfo (device page writes), bank (installing a bank), fwid (firmware id
rules), flashport (direct or queued flash), node (the firmware main loop), and the two firmwares.
"""

from dfuhil.sim.mesh import bootloader, dfu_example

__all__ = ["bootloader", "dfu_example"]
