"""A virtual board with the ``mcuboot`` plug-in at 0x0, in-process, for MCUboot's own tests.

The board is a real VirtualBoard (NOR flash, a UART on a real pty read with the project's
Console). MCUboot's "build" is a behaviour descriptor (McubootBuild params) in a sample image
at 0x0; the applications are blinky sample bodies (descriptor name ``app``, the version tells
old from new) signed with imgtool's Python API. The test plays the programmer and the
application: it loads images with the flash's ``load`` and writes "test"/"confirm" trailer
fields with ``field_write`` exactly as ``boot_set_pending`` / ``boot_set_confirmed`` do.
Slots are tiny (4 KiB sectors, 16-20 KiB slots) so every swap is a handful of flash operations.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imgtool.image import Image
from imgtool.version import decode_version
from simfarm import chip, wait_until

from dfuhil.formats.mcuboot import PublicKey
from dfuhil.formats.mcuboot_build import FlashGeometry, SerialRecovery, Slot
from dfuhil.formats.mcuboot_trailer import (
    Magic,
    SwapType,
    TrailerField,
    TrailerState,
    field_write,
    read_trailer,
)
from dfuhil.links.console import Console
from dfuhil.sim.board import BoardWiring, VirtualBoard
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.debugport import DebugPortServer
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.firmware.generate import ram_end, sample_image
from dfuhil.sim.mcuboot.config import McubootBuild

CHIP = chip("nRF52840_xxAA")
DK_LEDS = (13, 14, 15, 16)  # PCA10056, active low
SNR = 930000001
HDR = 0x200
SECTOR = 0x1000
TIME_SCALE = 0.05
WAIT_S = 30.0  # generous bound for anything the board does; never a speed claim
MAX_SECTORS = 8

_A, _B, _C = 0x10000, 0x14000, 0x18000
GEOMETRIES: dict[str, FlashGeometry] = {
    "swap-scratch": FlashGeometry(
        "swap-scratch", Slot(_A, 0x4000), Slot(_B, 0x4000), Slot(_C, SECTOR), SECTOR
    ),
    # swap-move: the primary has one spare sector.
    "swap-move": FlashGeometry("swap-move", Slot(_A, 0x5000), Slot(0x15000, 0x4000), None, SECTOR),
    "overwrite-only": FlashGeometry("overwrite-only", Slot(_A, 0x4000), Slot(_B, 0x4000)),
    "direct-xip": FlashGeometry("direct-xip", Slot(_A, 0x4000), Slot(_B, 0x4000)),
    "direct-xip-revert": FlashGeometry("direct-xip-revert", Slot(_A, 0x4000), Slot(_B, 0x4000)),
    "single-slot": FlashGeometry("single-slot", Slot(_A, 0x8000), None),
}
GEOMETRIES = {k: replace(g, max_sectors=MAX_SECTORS) for k, g in GEOMETRIES.items()}

BOOT_END = re.compile(
    r"(Jumping to the (first )?image slot|Unable to find bootable image"
    r"|Enter the serial recovery mode)\r?\n"
)


# --- keys and images ---------------------------------------------------------------------------


def public_key(key: Any) -> PublicKey:
    return PublicKey.from_crypto(key.key.public_key())


def build_for(mode: str, key: Any, **changes: Any) -> McubootBuild:
    pub = public_key(key)
    build = McubootBuild(geometry=GEOMETRIES[mode], key_type=pub.type, key_der=pub.der)
    return replace(build, **changes)


def app_body(start: int, version: str, size: int, *, led: int = 0, seed: str = "") -> bytes:
    """A blinky body linked for ``start`` (slot start + header), named ``app``."""
    described = Behaviour("blinky", "app", version, "", {"led": led, "period_ms": 500})
    return sample_image(start, size, described, f"mcubootrig/{seed}{version}", ram_end(CHIP))


def sign(
    body: bytes,
    version: str,
    key: Any,
    *,
    slot_size: int = 0x4000,
    **options: Any,
) -> bytes:
    """``imgtool sign --header-size 0x200 --pad-header`` through imgtool's library."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "app.bin", Path(tmp) / "app.signed.bin"
        raw.write_bytes(body)
        image = Image(
            version=decode_version(version),
            header_size=HDR,
            pad_header=True,
            slot_size=slot_size,
            max_sectors=MAX_SECTORS,
            **options,
        )
        image.load(str(raw))
        image.create(key, "hash", None)
        image.save(str(out))
        return out.read_bytes()


def app_image(
    slot: Slot, version: str, key: Any, *, size: int = 0x1800, seed: str = "", **options: Any
) -> bytes:
    """A signed app linked for ``slot`` (body ``size`` bytes)."""
    body = app_body(slot.start + HDR, version, size, seed=seed)
    return sign(body, version, key, slot_size=options.pop("slot_size", slot.size), **options)


def mcuboot_image(build: McubootBuild) -> bytes:
    described = Behaviour("mcuboot", "mcuboot", "2.1.0", "", build.to_params())
    return sample_image(0, 0x3000, described, "mcubootrig/mcuboot", ram_end(CHIP))


# --- the board ---------------------------------------------------------------------------------


@dataclass
class BootLog:
    text: str  # from the MCUboot banner to the last line of the boot

    def lines(self) -> list[str]:
        return [line.rstrip("\r") for line in self.text.splitlines() if line.strip()]


class _Notes(logging.Handler):
    """The board's farm log as a list (what MCUboot knows but does not print)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class McubootRig:
    def __init__(
        self, board: VirtualBoard, build: McubootBuild, console: Console, notes: _Notes
    ) -> None:
        self.board = board
        self.build = build
        self.console = console
        self.geometry = build.geometry
        self._notes = notes

    def notes(self) -> str:
        return "\n".join(self._notes.lines)

    # --- the programmer ------------------------------------------------------------------------

    def program(self, slot: Slot, image: bytes) -> None:
        self.board.flash.load(slot.start, image)

    def erase_slot(self, slot: Slot) -> None:
        self.board.flash.load(slot.start, b"\xff" * slot.size)

    def slot_bytes(self, slot: Slot, length: int | None = None) -> bytes:
        return self.board.flash.read(slot.start, slot.size if length is None else length)

    def trailer(self, slot: Slot) -> TrailerState:
        return read_trailer(self.board.flash.read, slot.start, self.geometry.layout(slot))

    def write_field(self, slot: Slot, field: TrailerField, value: int | bytes = 0) -> None:
        off, data = field_write(self.geometry.layout(slot), field, value)
        address = slot.start + off
        old = self.board.flash.read(address, len(data))
        assert old == b"\xff" * len(data), f"{field} at 0x{address:X} is not erased"
        self.board.flash.load(address, data)

    # --- the application's side of the trailer (bootutil_public.c) -----------------------------

    def set_pending(self, permanent: bool = False, slot: Slot | None = None) -> None:
        """``boot_set_pending``: magic, image_ok if permanent, then swap_info."""
        target = slot or self.geometry.secondary
        assert target is not None
        if self.trailer(target).magic != Magic.UNSET:
            return
        self.write_field(target, "magic")
        if permanent:
            self.write_field(target, "image_ok", 0x01)
        self.write_field(target, "swap_info", SwapType.PERM if permanent else SwapType.TEST)

    def confirm(self, slot: Slot | None = None) -> None:
        """``boot_set_confirmed``: image_ok in the primary, if its magic is good."""
        target = slot or self.geometry.primary
        state = self.trailer(target)
        if state.magic == Magic.GOOD and state.image_ok.name == "UNSET":
            self.write_field(target, "image_ok", 0x01)

    # --- running it ----------------------------------------------------------------------------

    def reset(self) -> BootLog:
        """A pin reset; returns MCUboot's boot log of the boot it starts."""
        # The UART is paced at the baud rate: the previous boot's last lines may still be on
        # their way, and must not be read as this boot's log.
        assert self.board.uart.wait_tx_idle(WAIT_S), "the UART never drained"
        _drain(self.console)
        self.console.skip_to_end()
        self.board.cpu.reset(halt=False, reason="test reset")
        return self.boot_log()

    def boot_log(self) -> BootLog:
        banner = self.console.expect(r"\*\*\* Booting MCUboot [^\n]*\n", WAIT_S)
        end = self.console.expect(BOOT_END, WAIT_S)
        return BootLog(banner.group(0) + end.string[: end.end()])

    def running(self) -> str:
        """The version of the app that runs (waits until one does)."""
        status = wait_until(
            lambda: self.board.cpu.status,
            lambda s: s.startswith("running app "),
            "an application should run",
            WAIT_S,
        )
        return status.split()[2]

    def boot(self) -> tuple[BootLog, str]:
        """Reset, and the boot log plus the version that ends up running."""
        log = self.reset()
        return log, self.running()


def _drain(console: Console) -> None:
    """Let the console's reader take in what the pty already holds (it polls every 50 ms)."""
    seen = -1
    while len(console.text()) != seen:
        seen = len(console.text())
        time.sleep(0.15)


@contextmanager
def mcuboot_board(
    build: McubootBuild,
    *,
    primary: bytes | None = None,
    time_scale: float = TIME_SCALE,
    name: str = "mcuboot",
) -> Iterator[McubootRig]:
    """A board with this MCUboot build at 0 (and ``primary`` in the primary slot), powered off
    until the test resets it."""
    wiring = BoardWiring(name, SNR, CHIP, 115200, DK_LEDS, True)
    logger = logging.getLogger(f"mcubootrig.{name}")
    logger.setLevel(logging.INFO)
    notes = _Notes()
    logger.addHandler(notes)
    board = VirtualBoard(wiring, VirtualClock(time_scale), logger)
    board.flash.load(0, mcuboot_image(build))
    if primary is not None:
        board.flash.load(build.geometry.primary.start, primary)
    console = Console(board.uart.path, baud=115200, name=name)
    try:
        with console:
            yield McubootRig(board, build, console, notes)
    finally:
        board.shutdown()
        logger.removeHandler(notes)


@contextmanager
def fault_port(rig: McubootRig) -> Iterator[FaultInjector]:
    """The board's debug port on a Unix socket, and a FaultInjector client on it."""
    sock_dir = tempfile.mkdtemp(prefix="dfuhil-mcuboot-")
    server = DebugPortServer(
        os.path.join(sock_dir, "debug.sock"), {rig.board.snr: rig.board}, TIME_SCALE
    )
    server.start()
    try:
        with FaultInjector(server.endpoint, rig.board.snr) as injector:
            yield injector
    finally:
        server.close()
        os.rmdir(sock_dir)


def recovery_build(key: Any, **options: Any) -> McubootBuild:
    return build_for("single-slot", key, serial_recovery=SerialRecovery(**options))
