"""The SDK's tools/dfu/bootloader_verify.py as a library call (shared/specs/mesh-dfu.md §6).

Nordic's guide has people run that script after flashing SoftDevice, serial bootloader, app and
device page, because each of those can be missing or in the wrong order and the board then just
stays silent. The same four checks here, over dfuhil's probe and mesh serial link:

1. UICR.BOOTLOADERADDR is set, and the bootloader's vector table starts with a RAM address
   (its initial stack pointer);
2. the device page (FICR.CODEPAGESIZE × (FICR.CODESIZE − 1)) starts with ``04 01 08 08``;
3. after a reset the firmware sends DEVICE_STARTED: application mode, or else bootloader mode;
4. an Echo ``AA BB`` comes back as ``AA BB``.

Unlike the script, every check runs and the report lists them all, so one run shows everything
that is wrong. Probe and port problems are the rig's and raise as such; failed checks are the
product's (``report.raise_for_failures()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dfuhil.errors import ProductError
from dfuhil.formats.chips import (
    ERASED_WORD,
    FICR_CODEPAGESIZE,
    FICR_CODESIZE,
    RAM_BASE,
    UICR_BOOTLOADERADDR,
    Chip,
)
from dfuhil.formats.meshdfu import Frame, Opcode, OperatingMode
from dfuhil.links.mesh_serial import MeshSerialLink

__all__ = ["CheckResult", "VerifyReport", "verify_bootloader"]

DEVICE_PAGE_MAGIC = 0x08080104  # metadata bytes 04 01 08 08 read as a little-endian word
VERIFY_ECHO = bytes([0xAA, 0xBB])
STARTED_TIMEOUT_S = 2.0  # device seconds for the firmware to boot and say so
ECHO_TIMEOUT_S = 1.0
HOST_FLOOR_S = 0.2  # host seconds: a pty round trip does not speed up with the virtual clock
_FLASH_ORDER = (
    "flash in the guide's order: chip erase, SoftDevice, serial bootloader, application, "
    "device page (dfuhil provision does)"
)


class VerifyProbe(Protocol):
    """What the checks need of a :class:`dfuhil.links.probe.Probe`."""

    @property
    def board(self) -> str: ...
    @property
    def chip(self) -> Chip: ...
    def read_u32(self, address: int) -> int: ...
    def reset(self) -> None: ...


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name + ':':<28} {'OK' if self.ok else 'FAILED'} ({self.detail})"


@dataclass(frozen=True)
class VerifyReport:
    board: str
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def lines(self) -> list[str]:
        verdict = "Bootloader verification OK." if self.ok else "Bootloader verification FAILED."
        return [str(c) for c in self.checks] + [verdict]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def raise_for_failures(self) -> None:
        if self.ok:
            return
        listed = "\n".join(f"  - {c}" for c in self.failures)
        raise ProductError(f"board {self.board}: bootloader verification failed:\n{listed}")


def _uicr(probe: VerifyProbe) -> CheckResult:
    name = "UICR.BOOTLOADERADDR"
    address = probe.read_u32(UICR_BOOTLOADERADDR)
    if address == ERASED_WORD:
        return CheckResult(
            name,
            False,
            "not set (0xFFFFFFFF): no bootloader was flashed, or the SoftDevice was flashed "
            f"after it and erased the UICR; {_FLASH_ORDER}",
        )
    sp = probe.read_u32(address)
    ram_end = RAM_BASE + probe.chip.ram_size
    where = f"0x{address:08X}, initial SP 0x{sp:08X}"
    if sp == ERASED_WORD:
        return CheckResult(name, False, f"{where}: no bootloader at that address; {_FLASH_ORDER}")
    if not RAM_BASE <= sp <= ram_end:
        return CheckResult(
            name,
            False,
            f"{where}: not a RAM address (0x{RAM_BASE:08X}..0x{ram_end:08X}); erase the chip "
            f"before programming; {_FLASH_ORDER}",
        )
    return CheckResult(name, True, where)


def _device_page(probe: VerifyProbe) -> CheckResult:
    name = "device page"
    page_size = probe.read_u32(FICR_CODEPAGESIZE)
    pages = probe.read_u32(FICR_CODESIZE)
    address = page_size * (pages - 1)
    word = probe.read_u32(address)
    where = f"0x{address:X}, first word 0x{word:08X}"
    if word == ERASED_WORD:
        return CheckResult(name, False, f"{where}: not present; flash the device page")
    if word != DEVICE_PAGE_MAGIC:
        return CheckResult(
            name,
            False,
            f"{where}: invalid (expected 0x{DEVICE_PAGE_MAGIC:08X}); erase the chip before "
            f"programming all the hex files",
        )
    return CheckResult(name, True, where)


def _started(probe: VerifyProbe, link: MeshSerialLink, timeout: float) -> CheckResult:
    name = "reset, DEVICE_STARTED"
    link.clear()
    probe.reset()
    item = link.wait_for(lambda f: f.opcode == Opcode.DEVICE_STARTED, timeout)
    if item is None:
        return CheckResult(
            name,
            False,
            f"nothing on {link.url} after the reset: is the bootloader built with serial, are "
            f"{link.baud} baud and flow control right?",
        )
    return _started_result(name, item)


def _started_result(name: str, item: Frame) -> CheckResult:
    shown = item.encode()[1:].hex(" ").upper()
    mode, hw_error = (item.payload + b"\xff\xff")[:2]
    if hw_error == 0 and mode == OperatingMode.APPLICATION:
        return CheckResult(name, True, f"{shown}: in application")
    if hw_error == 0 and mode == OperatingMode.BOOTLOADER:
        return CheckResult(name, True, f"{shown}: in bootloader")
    return CheckResult(
        name,
        False,
        f"{shown}: invalid start sequence (expected 81 02 00 or 81 01 00); does the bootloader "
        "have serial communication enabled?",
    )


def _echo(link: MeshSerialLink, timeout: float) -> CheckResult:
    name = "serial echo"
    link.send(Opcode.ECHO, VERIFY_ECHO)
    item = link.wait_for(lambda f: f.opcode == Opcode.ECHO_RSP, timeout)
    if item is None:
        return CheckResult(name, False, f"no answer to 03 02 AA BB on {link.url}")
    if item.payload != VERIFY_ECHO:
        return CheckResult(name, False, f"answered {item.encode().hex(' ').upper()}")
    return CheckResult(name, True, "03 82 AA BB")


def verify_bootloader(
    probe: VerifyProbe, link: MeshSerialLink, *, time_scale: float = 1.0
) -> VerifyReport:
    """Run the four checks; ``link`` must be open (it has to hear the boot after the reset)."""
    started = max(STARTED_TIMEOUT_S * time_scale, HOST_FLOOR_S)
    echo = max(ECHO_TIMEOUT_S * time_scale, HOST_FLOOR_S)
    checks = (
        _uicr(probe),
        _device_page(probe),
        _started(probe, link, started),
        _echo(link, echo),
    )
    return VerifyReport(probe.board, checks)
