"""Benchmark: a 200 KiB MCUboot image over SMP at 115200 baud: dfuhil, smpmgr and smpclient.

Part 1 (``--part farm``). One virtual nRF52840 (the shipped swap-move board: MCUboot + a Zephyr
smp_svr-like app, ``buf_count`` 4 and ``buf_size`` 2475 as its Bluetooth overlay sets it (the
figures print what params said), its UART a paced J-Link VCOM, which
the bench's boards file states as ``mcuboot.smp_uart: {delivery: paced}``) is provisioned afresh
before every way, so each starts from
the same state (empty secondary slot). The same signed 200 KiB image goes up each way; the clock
covers the upload only (port open and MCUmgr params excluded) except for the smpmgr command,
timed whole and also net of its own start-up (an ``os echo`` through the same command line).
Figures are in device seconds (wall / time_scale; at the default time_scale 1.0 they are wall
seconds) with goodput in image bytes per device second.

  (a) smpmgr CLI, its defaults: `smpmgr --port PTY image upload FILE` (2 x 128-byte lines)
  (b) smpmgr CLI, tuned: `--line-buffers 8` (its encoded budget = the server's 1024 bytes)
  (c) smpclient's SMPClient.upload() in-process (the loop smpmgr runs), messages of buf_size-4
  (d) dfuhil, one request at a time (--window 1)
  (e) dfuhil, default: up to buf_count requests in flight

The framing bound: every request of the upload, base64-framed as on the wire (frame markers,
newlines, length and CRC, SMP header and CBOR keys, at the negotiated buffer size), shifted at
115200 baud 8N1, the answers travelling on the other wire at the same time (full duplex); the
stop-and-wait bound adds each answer's time too.

Goal: (e) within 10 % of the framing bound, and no slower than any smpmgr way.

Part 2 (``--part stock``): the stock Zephyr UART transport geometry (issue 12 item 8). A bare
virtual smp_svr (tests/smpfarm.py, no MCUboot) built like Zephyr's sample: params answer
``buf_size`` 384 / ``buf_count`` 4, 2 RX line buffers of 128 bytes, MTU 256; its UART either
paced at 115200 baud (a hardware UART) or delivering each write in one burst (USB CDC-ACM). Per
delivery: smpmgr's defaults (2 lines of 128), dfuhil's default (what the stock line buffers
hold), dfuhil sending what the netbuf holds (380-byte messages, 4 in flight: the old default),
and a build with 8 line buffers stated in boards.yaml (``mcuboot.smp_uart.rx_buf_count: 8``,
given to the link as the loader would). A way that fails shows how long it took to say so.

Part 3 (``--part ble``, bench/ble_upload.py): the same image over the virtual farm's Bluetooth
LE link at connection intervals 7.5, 15, 30 and 50 ms, with and without nRF Desktop's latency
request, against the link's bound (ATT payload per connection event x events per second):
dfuhil one request at a time, dfuhil's default, and smpclient's own bumble transport.
Goal: dfuhil within 10 % of the link bound at every interval.

Run: `make bench-smp` / `make bench-ble` or `.venv/bin/python bench/smp_upload.py
[--time-scale 0.2] [--image-kib 100] [--part farm|stock|ble|all]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from smpclient import SMPClient
from smpclient.requests.image_management import ImageUploadWrite
from smpclient.transport.serial import SMPSerialTransport

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.rig import Rig
from dfuhil.formats.smp import SmpHeader, encode_frames
from dfuhil.links.console import Console
from dfuhil.links.smp_link import SmpLink
from dfuhil.procedures.image_sign import sign_for_board
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.state import FarmProcess, SimState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from simfarm import shipped_subset  # noqa: E402  (tests/simfarm.py)

SMPMGR = ROOT / ".venv" / "bin" / "smpmgr"
BOARD = "vdk52840-swap-move"
BAUD = 115200
BITS_PER_BYTE = 10  # 8N1
IMAGE_SIZE = 200 * 1024
BANNER = "Booting Zephyr OS build"


@dataclass(frozen=True)
class Row:
    way: str
    device_s: float
    note: str = ""


def boards_file(path: Path, time_scale: float) -> Path:
    """The shipped boards.yaml with the one board, paths absolute, its paced UART stated."""

    def paced(data: Any) -> None:
        firmware = data["firmware_sets"][data["boards"][0]["firmware"]]
        firmware["mcuboot"]["smp_uart"] = {"delivery": "paced"}

    return shipped_subset(path, [BOARD], time_scale, paced)


def grown_image(board: BoardSpec, size: int) -> bytes:
    """The board's update build grown to ``size`` (the virtual app reads only its descriptor),
    signed with the board's key for its secondary slot."""
    assert board.mcuboot is not None
    body = board.mcuboot.build("update").read_bytes()
    body += bytes((i * 31 + 7) & 0xFF for i in range(max(0, size - 0x300 - len(body))))
    return sign_for_board(body, board, "1.1.0")


def fresh(rig: Rig, board: BoardSpec) -> None:
    """Provision (chip erase when anything is left over), reset, wait for the app."""
    with rig.console(board, open_timeout=5.0) as console, rig.probe(board) as probe:
        Provisioner(ProvisioningPlan.for_board(board), probe).run(STEPS)
        console.expect(BANNER, timeout=60)
        time.sleep(0.2 * rig.time_scale(board))


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def dfuhil_way(rig: Rig, board: BoardSpec, image: bytes, window: int | None) -> tuple[float, str]:
    console = rig.console(board, open_timeout=5.0)
    assert board.mcuboot is not None
    uart = board.mcuboot.uart
    with SmpLink.over_console(console, owns_console=True, timeout_s=10.0, uart=uart) as smp:
        params = smp.params
        result = smp.upload(image, window=window)
    return result.seconds, f"{params}; {result.requests} requests, window {result.window}"


def smpclient_way(url: str, image: bytes) -> tuple[float, str]:
    async def run() -> tuple[float, str]:
        client = SMPClient(SMPSerialTransport(), url, timeout_s=10.0)
        await client.connect()
        try:
            started = time.monotonic()
            count = 0
            async for _ in client.upload(image):
                count += 1
            return time.monotonic() - started, f"{count} requests"
        finally:
            await client.disconnect()

    return asyncio.run(run())


def smpmgr(url: str, *args: str) -> float:
    command = [str(SMPMGR), "--port", url, "--timeout", "10", *args]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"smpmgr failed: {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    return elapsed


def framing_bound(image: bytes, buf_size: int) -> tuple[float, float, int, int]:
    """(full-duplex seconds, stop-and-wait seconds, request wire bytes, answer wire bytes)."""

    class Sized:
        max_unencoded_size = buf_size - 4

    client = SMPClient(Sized(), "bound")  # type: ignore[arg-type]  # sizing only, no I/O
    sha = hashlib.sha256(image).digest()
    off, requests, answers, seq = 0, 0, 0, 0
    while off < len(image):
        fields: dict[str, object] = {"off": off}
        if off == 0:
            fields.update(len=len(image), image=0, upgrade=False, sha=sha)
        _, room = client.get_max_cbor_and_data_size(ImageUploadWrite(data=b"", **fields))
        request = ImageUploadWrite(data=image[off : off + room], **fields)
        requests += len(encode_frames(request.BYTES))
        off += len(request.data)
        payload = cbor2.dumps({"off": off})
        answer = SmpHeader(3, 1, 0, len(payload), 1, seq & 0xFF, 1).pack() + payload
        answers += len(encode_frames(answer))
        seq += 1
    byte_s = BITS_PER_BYTE / BAUD
    return requests * byte_s, (requests + answers) * byte_s, requests, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument(
        "--image-kib", type=int, default=IMAGE_SIZE // 1024, help="image size (smoke tests: 32)"
    )
    parser.add_argument("--part", choices=("farm", "stock", "ble", "all"), default="all")
    parser.add_argument(
        "--intervals", default="7.5,15,30,50", help="BLE: connection intervals in ms"
    )
    args = parser.parse_args()
    scale = args.time_scale
    if args.part == "ble":
        return ble_part(args.image_kib, scale, args.intervals)
    if args.part in ("stock", "all"):
        from stock_uart import stock_geometry  # bench/stock_uart.py

        stock_geometry(args.image_kib, scale)
        if args.part == "stock":
            return 0
        print()
    if not (ROOT / "firmware" / "virtual" / "keys").is_dir():
        print("no sample firmware: run `make firmware` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dfuhil-bench-smp-") as tmp:
        work = Path(tmp)
        path = boards_file(work / "boards.yaml", scale)
        board = load_farm(path).board(BOARD)
        image = grown_image(board, args.image_kib * 1024)
        image_file = work / f"update-{args.image_kib}k.bin"
        image_file.write_bytes(image)
        with FarmProcess(path, work / "state.json", log_dir=work / "sim") as state:
            rows, buf_size = run_ways(state, load_farm(path), board, image, image_file)
    report(rows, image, buf_size, scale)
    return 0


def ble_part(image_kib: int, scale: float, intervals: str) -> int:
    import logging

    from ble_upload import report_ble, run_ble  # bench/ble_upload.py

    # bumble warns that the farm's virtual controller has no Data Length command: noise here
    logging.getLogger("bumble").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="dfuhil-bench-smp-") as tmp:
        board = load_farm(boards_file(Path(tmp) / "boards.yaml", scale)).board(BOARD)
        image = grown_image(board, image_kib * 1024)
    chosen = tuple(float(i) for i in intervals.split(","))
    runs = run_ble(image, scale, fresh, chosen)
    report_ble(runs, len(image), scale)
    return 0


def run_ways(
    state: SimState, farm: Farm, board: BoardSpec, image: bytes, image_file: Path
) -> tuple[list[Row], int]:
    rig = Rig(farm, state)
    scale = rig.time_scale(board)
    url = rig.serial_url(board)
    rows: list[Row] = []

    fresh(rig, board)
    startup = smpmgr(url, "os", "echo", "hi")
    with Console(url) as probe_console, SmpLink.over_console(probe_console) as smp:
        assert smp.params is not None and smp.params.buf_size is not None
        buf_size = smp.params.buf_size
    whole = smpmgr(url, "image", "upload", str(image_file))
    rows.append(Row("(a) smpmgr CLI, defaults", (whole - startup) / scale,
                    f"whole command {whole / scale:.1f} s incl. start-up"))  # fmt: skip

    fresh(rig, board)
    lines = str(max(2, buf_size // 128))
    whole = smpmgr(url, "--line-buffers", lines, "image", "upload", str(image_file))
    rows.append(Row(f"(b) smpmgr CLI, --line-buffers {lines}", (whole - startup) / scale,
                    f"whole command {whole / scale:.1f} s incl. start-up"))  # fmt: skip

    fresh(rig, board)
    seconds, note = smpclient_way(url, image)
    rows.append(Row("(c) smpclient upload() API", seconds / scale, note))

    fresh(rig, board)
    seconds, note = dfuhil_way(rig, board, image, window=1)
    rows.append(Row("(d) dfuhil --window 1", seconds / scale, note))

    fresh(rig, board)
    seconds, note = dfuhil_way(rig, board, image, window=None)
    rows.append(Row("(e) dfuhil (default)", seconds / scale, note))
    return rows, buf_size


def report(rows: list[Row], image: bytes, buf_size: int, time_scale: float) -> None:
    bound, stop_and_wait, req_bytes, rsp_bytes = framing_bound(image, buf_size)
    size = len(image)
    print(
        f"{size} B signed image, virtual nRF52840 ({BOARD}), {BAUD} baud 8N1, "
        f"server buf_size {buf_size}, time_scale {time_scale}"
    )
    print(
        f"framing bound (requests {req_bytes} B on the wire, answers {rsp_bytes} B on the other "
        f"wire): {bound:.2f} s = {size / bound:.0f} B/s; stop-and-wait bound "
        f"{stop_and_wait:.2f} s = {size / stop_and_wait:.0f} B/s "
        f"(framing efficiency {size / req_bytes:.1%})"
    )
    print(f"{'way':34} {'device s':>9} {'B/s':>7} {'x bound':>8} {'vs (a)':>7}  note")
    base = rows[0].device_s
    for r in rows:
        print(
            f"{r.way:34} {r.device_s:>9.2f} {size / r.device_s:>7.0f} {r.device_s / bound:>8.3f} "
            f"{base / r.device_s:>7.2f}  {r.note}"
        )
    ours = rows[-1].device_s
    fastest_smpmgr = min(r.device_s for r in rows if "smpmgr" in r.way)
    print(
        f"goal: dfuhil within 10 % of the framing bound: {ours / bound - 1:+.1%} "
        f"({'met' if ours <= bound * 1.1 else 'NOT met'}); no slower than smpmgr: "
        f"{fastest_smpmgr / ours:.2f}x ({'met' if ours <= fastest_smpmgr else 'NOT met'})"
    )


if __name__ == "__main__":
    sys.exit(main())
