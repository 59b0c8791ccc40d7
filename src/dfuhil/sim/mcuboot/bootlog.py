"""MCUboot's console as a Zephyr build with ``CONFIG_LOG_MODE_MINIMAL`` prints it (spec §3)."""

from __future__ import annotations

from typing import Protocol


class Console(Protocol):
    def print(self, line: str) -> None: ...

    def log(self, message: str) -> None: ...


class BootLog:
    """``I: ...``, ``W: ...``, ``E: ...`` lines on the UART; ``note`` goes to the farm log only
    (what MCUboot knows but does not print, e.g. why a signature check failed)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def inf(self, text: str) -> None:
        self.console.print(f"I: {text}")

    def wrn(self, text: str) -> None:
        self.console.print(f"W: {text}")

    def err(self, text: str) -> None:
        self.console.print(f"E: {text}")

    def note(self, text: str) -> None:
        self.console.log(text)
