"""dfuhil: hardware-in-the-loop testing for Nordic nRF5 boards, on a real or a virtual farm."""

__version__ = "0.1.0"
