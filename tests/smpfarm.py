"""An MCUboot-less virtual board running the ``smp_app`` plug-in, in-process, for SMP tests.

The board is a real VirtualBoard (NOR flash, a UART on a real pty, a UDP socket on loopback).
Its app images are signed with imgtool's Python API (header 0x200, pad_header) from a body made
like the firmware generator's sample images (vector table, behaviour descriptor at body+0x200).
At 0x0 sits a one-line stub plug-in that jumps to primary + header size, where MCUboot would
jump; the real MCUboot plug-in is tested elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from imgtool import keys as imgtool_keys
from imgtool.image import Image
from imgtool.version import decode_version
from simfarm import chip, wait_until

from dfuhil.formats.mcuboot_build import FlashGeometry, Slot
from dfuhil.formats.smp_uart import Delivery
from dfuhil.sim.board import BoardWiring, VirtualBoard
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import ram_end, sample_image
from dfuhil.sim.mcuboot.config import SmpAppBuild
from dfuhil.sim.runtime import Firmware, behaviour

CHIP = chip("nRF52840_xxAA")
DK_LEDS = (13, 14, 15, 16)  # PCA10056, active low
HDR = 0x200
SLOT_SIZE = 0x10000  # small slots keep erases quick
GEOMETRY = FlashGeometry(
    mode="swap-move",
    primary=Slot(0xC000, SLOT_SIZE + 0x1000),  # swap-move: one spare sector in the primary
    secondary=Slot(0x1D000, SLOT_SIZE),
)
TIME_SCALE = 0.05


@behaviour("test_jump_to_primary")
class JumpToPrimary(Firmware):
    """What MCUboot does once it chose the primary slot, and nothing else."""

    def run(self) -> None:
        self.ctx.jump(int(self.ctx.behaviour.params["to"]))


def app_build(**changes: object) -> SmpAppBuild:
    return replace(SmpAppBuild(geometry=GEOMETRY, buf_size=1024), **changes)  # type: ignore[arg-type]


def app_body(build: SmpAppBuild, version: str, size: int, seed: str = "app") -> bytes:
    """An app image body linked for the primary slot (what west build makes, before signing)."""
    start = build.geometry.primary.start + HDR
    described = Behaviour("smp_app", build.name, version, "", build.to_params())
    return sample_image(start, size, described, f"smpfarm/{seed}/{version}", ram_end(CHIP))


def make_key(directory: Path, name: str = "key.pem") -> Path:
    path = directory / name
    if not path.exists():
        imgtool_keys.ECDSA256P1.generate().export_private(str(path))
    return path


def sign(
    directory: Path,
    body: bytes,
    version: str,
    key: Path,
    *,
    slot_size: int = SLOT_SIZE,
    name: str | None = None,
) -> Path:
    """``imgtool sign --header-size 0x200 --pad-header`` through imgtool's library."""
    stem = name or f"app-{version}"
    raw = directory / f"{stem}.bin"
    raw.write_bytes(body)
    image = Image(
        version=decode_version(version),
        header_size=HDR,
        pad_header=True,
        slot_size=slot_size,
        max_sectors=32,
    )
    image.load(str(raw))
    image.create(imgtool_keys.load(str(key)), "hash", None)
    out = directory / f"{stem}.signed.bin"
    image.save(str(out))
    return out


@dataclass
class SmpBoard:
    board: VirtualBoard
    build: SmpAppBuild

    @property
    def serial(self) -> str:
        return self.board.uart.path

    @property
    def udp_port(self) -> int:
        return self.board.udp.port

    def slot_bytes(self, slot: Slot, length: int) -> bytes:
        return self.board.flash.read(slot.start, length)

    def reboot(self) -> None:
        self.board.cpu.reset(halt=False, reason="test reset")
        self.wait_running()

    def wait_running(self) -> None:
        wait_until(
            lambda: self.board.cpu.status,
            lambda s: s.startswith("running smp_svr"),
            "the app should run",
        )

    def boots(self) -> int:
        return self.board.cpu.boots


def load_primary(board: VirtualBoard, signed: bytes, geometry: FlashGeometry = GEOMETRY) -> None:
    """Flash an image into the primary slot (as a programmer would) and the stub at 0."""
    stub = Behaviour(
        "test_jump_to_primary", "jump", "1.0.0", "", {"to": geometry.primary.start + HDR}
    )
    board.flash.load(0, sample_image(0, 0x1000, stub, "smpfarm/stub", ram_end(CHIP)))
    board.flash.load(geometry.primary.start, signed)


@contextmanager
def smp_board(
    signed: bytes,
    build: SmpAppBuild,
    name: str = "smp",
    time_scale: float = TIME_SCALE,
    delivery: Delivery = "paced",
) -> Iterator[SmpBoard]:
    """``delivery`` "burst": the board's UART is USB CDC-ACM (a request arrives at once)."""
    wiring = BoardWiring(name, 920000001, CHIP, 115200, DK_LEDS, True, delivery)
    board = VirtualBoard(wiring, VirtualClock(time_scale), logging.getLogger(f"smpfarm.{name}"))
    try:
        load_primary(board, signed, build.geometry)
        board.power_on()
        handle = SmpBoard(board, build)
        handle.wait_running()
        yield handle
    finally:
        board.shutdown()
