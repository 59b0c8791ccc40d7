"""bench/smp_upload.py part 2: SMP uploads against the stock Zephyr UART transport geometry.

A bare virtual smp_svr (tests/smpfarm.py: NOR flash, a real pty, no MCUboot) built like
Zephyr's sample: MCUmgr params 384 / 4, 2 RX line buffers of 128 bytes, MTU 256. Each way gets a
fresh board. Figures are device seconds (wall / time_scale) for the upload alone (smpmgr: its
whole command net of its own start-up, an ``os echo`` through the same command line).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import smpfarm  # noqa: E402  (tests/ helpers: the in-process virtual smp_svr)

from dfuhil.errors import DfuhilError  # noqa: E402
from dfuhil.formats.mcuboot_build import FlashGeometry, Slot  # noqa: E402
from dfuhil.formats.smp_uart import Delivery, SmpUart  # noqa: E402
from dfuhil.links.console import Console  # noqa: E402
from dfuhil.links.smp_link import SmpLink  # noqa: E402
from dfuhil.sim.mcuboot.config import SmpAppBuild  # noqa: E402

SMPMGR = ROOT / ".venv" / "bin" / "smpmgr"
SLOT = 0x40000
GEOMETRY = FlashGeometry(
    mode="swap-move",
    primary=Slot(0xC000, SLOT + 0x1000),
    secondary=Slot(0xC000 + SLOT + 0x1000, SLOT),
)
STOCK = SmpAppBuild(geometry=GEOMETRY, buf_size=384, buf_count=4)
EIGHT_LINES = SmpAppBuild(geometry=GEOMETRY, buf_size=384, buf_count=4, uart_rx_buf_count=8)


@dataclass(frozen=True)
class Way:
    name: str
    build: SmpAppBuild
    run: Callable[[str, Path, bytes], tuple[float, str]]  # (port, image file, image) -> s, note


@dataclass(frozen=True)
class Result:
    delivery: Delivery
    way: str
    wall_s: float
    ok: bool
    note: str


def smpmgr_way(port: str, image_file: Path, _image: bytes) -> tuple[float, str]:
    def command(*args: str) -> float:
        started = time.monotonic()
        done = subprocess.run(
            [str(SMPMGR), "--port", port, "--timeout", "10", *args],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"smpmgr {' '.join(args)}: {done.stdout[-300:]}{done.stderr[-300:]}")
        return time.monotonic() - started

    startup = command("os", "echo", "hi")
    return command("image", "upload", str(image_file)) - startup, "2 lines of 128 per message"


def dfuhil_way(uart: SmpUart | None) -> Callable[[str, Path, bytes], tuple[float, str]]:
    def run(port: str, _image_file: Path, image: bytes) -> tuple[float, str]:
        started = time.monotonic()
        link = SmpLink.over_console(Console(port), owns_console=True, timeout_s=2.5, uart=uart)
        try:
            with link as smp:
                params = smp.params
                started = time.monotonic()
                result = smp.upload(image)
        except DfuhilError as exc:
            raise _Failed(time.monotonic() - started, str(exc).splitlines()[0]) from None
        return result.seconds, f"{params}; {result.requests} requests"

    return run


class _Failed(Exception):
    """dfuhil refused: how long it took (host wall seconds) and the message's first line."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.message = message


def ways(delivery: Delivery) -> list[Way]:
    """The ways for one delivery; boards.yaml states the delivery with the buffers."""
    stated = SmpUart(rx_buf_count=8, delivery=delivery)
    netbuf_only = SmpUart(delivery="paced")  # the old default: only buf_size bounds messages
    return [
        Way("smpmgr CLI, defaults", STOCK, smpmgr_way),
        Way("dfuhil default (stock line buffers)", STOCK, dfuhil_way(None)),
        Way("dfuhil 380 B x 4 (old default; paced stated)", STOCK, dfuhil_way(netbuf_only)),
        Way("dfuhil, 8 line buffers stated+built", EIGHT_LINES, dfuhil_way(stated)),
    ]


def one(
    way: Way, delivery: Delivery, running: bytes, image: bytes, image_file: Path, scale: float
) -> Result:
    with smpfarm.smp_board(running, way.build, time_scale=scale, delivery=delivery) as dut:
        try:
            seconds, note = way.run(dut.serial, image_file, image)
        except _Failed as failed:
            said = f"FAILED, said so after {failed.seconds:.1f} s host time: {failed.message}"
            return Result(delivery, way.name, 0.0, False, said[:160])
        except RuntimeError as exc:
            return Result(delivery, way.name, 0.0, False, f"FAILED: {exc}")
        secondary = way.build.geometry.secondary
        assert secondary is not None
        landed = dut.slot_bytes(secondary, len(image)) == image
    return Result(delivery, way.name, seconds, landed, note if landed else "WRONG BYTES")


def stock_geometry(image_kib: int, scale: float) -> list[Result]:
    logging.getLogger("smpclient").setLevel(logging.CRITICAL)  # lost requests are the point
    with tempfile.TemporaryDirectory(prefix="dfuhil-bench-uart-") as tmp:
        work = Path(tmp)
        key = smpfarm.make_key(work)
        signed: dict[str, bytes] = {}
        for build, tag in ((STOCK, "stock"), (EIGHT_LINES, "8-lines")):
            body = smpfarm.app_body(build, "1.0.0", 6 * 1024, seed=tag)
            signed[tag] = smpfarm.sign(
                work, body, "1.0.0", key, slot_size=SLOT, name=f"run-{tag}"
            ).read_bytes()
        body = smpfarm.app_body(STOCK, "2.0.0", image_kib * 1024 - 0x300, seed="update")
        image = smpfarm.sign(work, body, "2.0.0", key, slot_size=SLOT, name="update").read_bytes()
        image_file = work / "update.bin"
        image_file.write_bytes(image)
        results: list[Result] = []
        deliveries: tuple[Delivery, ...] = ("paced", "burst")
        for delivery in deliveries:
            for way in ways(delivery):
                running = signed["8-lines" if way.build is EIGHT_LINES else "stock"]
                results.append(one(way, delivery, running, image, image_file, scale))
    report(results, len(image), scale)
    return results


def report(results: list[Result], size: int, scale: float) -> None:
    print(
        f"stock Zephyr UART geometry: {size} B signed image, bare virtual smp_svr, params 384/4, "
        f"2 RX line buffers x 128 B (8 where stated), 115200 baud, time_scale {scale}"
    )
    print(f"{'delivery':8} {'way':46} {'device s':>9} {'B/s':>7}  note")
    for r in results:
        device = r.wall_s / scale
        if r.ok and device > 0:
            print(f"{r.delivery:8} {r.way:46} {device:>9.2f} {size / device:>7.0f}  {r.note}")
        else:
            print(f"{r.delivery:8} {r.way:46} {'-':>9} {'-':>7}  {r.note}")
