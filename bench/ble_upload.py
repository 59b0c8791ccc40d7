"""bench/smp_upload.py part 3 (``--part ble``): one image over the virtual farm's BLE link.

The shipped swap-move board (MCUboot + smp_svr with its Bluetooth overlay: ATT MTU 498, data
length 251, the SoftDevice Controller's 7.5 ms event length), its app built without the UDP
transport (Zephyr's stock 4 MCUmgr netbufs: 3 requests in flight; the shipped build has UDP too,
so 2 netbufs and one request at a time, which is what ``dfuhil w1`` measures), and asking for no
connection parameters of its own (``mcuboot.ble_link: {smp_conn_param_control: false,
auto_update: false}``) so the connection keeps the interval the central asks for: 7.5, 15, 30
and 50 ms. Per interval, three links: peripheral latency 0 (smp_svr's preferred parameters);
latency 99 (nRF Desktop's CONFIG_BT_PERIPHERAL_PREF_LATENCY) without nRF Desktop's latency
request; and with it, the board lowering the latency to 0 while an upload runs (its ble_latency
module).

Ways, each on a freshly provisioned board (empty secondary slot):
  dfuhil w1   dfuhil's SmpLink over BLE, one request at a time (--window 1)
  dfuhil      dfuhil's default over BLE
  smpclient   smpclient 7.3.0's own bumble transport (SMPBumbleTransport, adopting a connection
              made at the interval, ``use_connection``) and SMPClient.upload(), preferred MTU 498

Figures are device seconds (wall / time_scale). ``stream`` is the rate after the first chunk's
answer (which waits for the server to erase the slot: a flash figure, not the link's); ``bound``
is the link's ceiling for one direction (ATT payload per connection event x events per second:
``sim.ble_link.bound_bytes_per_s``), ``x bound`` the stream rate over it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bumble.device import ConnectionParametersPreferences, Device
from bumble.hci import Address, Phy
from bumble.transport import open_transport
from smpclient import SMPClient
from smpclient.transport.bumble import SMPBumbleTransport

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.rig import Rig
from dfuhil.formats.chips import NRF52_TIMING
from dfuhil.links.smp_ble import PREFERRED_MTU, host_address
from dfuhil.links.smp_ble_scan import BleTarget, find_device
from dfuhil.links.smp_link import SmpLink
from dfuhil.sim.ble_link import LinkState, bound_bytes_per_s
from dfuhil.sim.state import FarmProcess, SimState

INTERVALS_MS = (7.5, 15.0, 30.0, 50.0)
ATT_MTU = 498  # what the board's build takes (CONFIG_BT_L2CAP_TX_MTU)
DATA_LENGTH = 251


@dataclass(frozen=True)
class Run:
    interval_ms: float
    latency: int
    latency_request: bool
    way: str
    total_s: float  # device seconds, the whole upload
    stream_s: float  # device seconds after the first chunk's answer
    streamed: int  # image bytes after the first chunk
    note: str

    @property
    def label(self) -> str:
        request = ", request" if self.latency_request else ""
        return f"{self.interval_ms:g} ms, latency {self.latency}{request}"

    @property
    def stream_rate(self) -> float:
        return self.streamed / self.stream_s if self.stream_s > 0 else 0.0


class Clock:
    """A progress callback that notes when the first chunk was acknowledged."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def __call__(self, done: int, _total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        self.last = (now, done)


def bound(interval_ms: float) -> float:
    link = LinkState(
        interval=round(interval_ms / 1.25),
        latency=0,
        timeout=42,
        att_mtu=ATT_MTU,
        data_length=DATA_LENGTH,
    )
    return bound_bytes_per_s(link)


def dfuhil_way(
    state: SimState, board: BoardSpec, image: bytes, interval_ms: float, latency: int, window: int
) -> tuple[float, Clock, str]:
    assert board.ble is not None and state.ble_hci is not None
    clock = Clock()
    link = SmpLink.over_ble(
        board.ble.name,
        state.ble_hci,
        name=board.name,
        timeout_s=30.0,
        interval_ms=interval_ms,
        latency=latency,
    )
    with link:
        result = link.upload(image, progress=clock, window=window or None)
        params = link.params
        size = params.buf_size if params is not None else "?"
        note = f"{result.requests} requests of <= {size} B, window {result.window}"
    return result.seconds, clock, note


def smpclient_way(
    state: SimState, board: BoardSpec, image: bytes, interval_ms: float, latency: int
) -> tuple[float, Clock, str]:
    """smpclient's bumble transport on a connection the bench makes at the interval."""
    assert board.ble is not None and state.ble_hci is not None
    hci = state.ble_hci

    async def run() -> tuple[float, Clock, str]:
        async with await open_transport(hci) as (source, sink):
            device = Device.with_hci("smpclient", Address(host_address()), source, sink)
            await device.power_on()
            found = await find_device(device, BleTarget(name=board.ble.name), 10.0)  # type: ignore[union-attr]
            prefs = ConnectionParametersPreferences(
                connection_interval_min=interval_ms,
                connection_interval_max=interval_ms,
                max_latency=latency,
                supervision_timeout=int(min(32000, (1 + latency) * interval_ms * 2 + 100)),
            )
            connection = await device.connect(
                found, connection_parameters_preferences={Phy.LE_1M: prefs}
            )
            transport = SMPBumbleTransport(hci=hci, preferred_mtu=PREFERRED_MTU)
            await transport.use_connection(connection)
            client = SMPClient(transport, str(found), timeout_s=30.0)
            await client._initialize(30.0)  # what connect() does after the transport: MCUmgr params
            clock = Clock()
            count = 0
            started = time.monotonic()
            async for off in client.upload(image):
                clock(int(off), len(image))
                count += 1
            seconds = time.monotonic() - started
            note = f"{count} requests of <= {transport.max_unencoded_size} B, window 1"
            await transport.disconnect()
            await connection.disconnect()
            return seconds, clock, note

    return asyncio.run(run())


@contextmanager
def ble_farm(
    work: Path, time_scale: float, latency_request: bool, latency: int
) -> Iterator[tuple[SimState, Rig, BoardSpec]]:
    # tests/simfarm.py (smp_upload.py put tests/ on the path)
    from simfarm import shipped_subset, use_ble_only_build

    board_name = "vdk52840-swap-move"

    def fixed_interval(data: Any) -> None:
        use_ble_only_build(data, data["boards"][0], work)
        firmware = data["firmware_sets"][data["boards"][0]["firmware"]]
        firmware["mcuboot"]["ble_link"] = {
            "smp_conn_param_control": False,
            "auto_update": False,
            "latency_request": latency_request,
            "default_latency": latency,
        }

    path = shipped_subset(work / "boards.yaml", [board_name], time_scale, fixed_interval)
    with FarmProcess(path, work / "state.json", log_dir=work / "sim") as state:
        farm = load_farm(path)
        yield state, Rig(farm, state), farm.board(board_name)


# (central's peripheral latency, nRF Desktop's latency request): smp_svr as shipped (latency 0),
# an nRF Desktop link (latency 99) without the latency module, and with it.
CONFIGS = ((0, False), (99, False), (99, True))


WAYS = ("dfuhil w1", "dfuhil", "smpclient")


def one_way(
    way: str, state: SimState, board: BoardSpec, image: bytes, interval_ms: float, latency: int
) -> tuple[float, Clock, str]:
    if way == "smpclient":
        return smpclient_way(state, board, image, interval_ms, latency)
    return dfuhil_way(state, board, image, interval_ms, latency, 1 if way == "dfuhil w1" else 0)


def run_ble(
    image: bytes,
    time_scale: float,
    fresh: Callable[[Rig, BoardSpec], None],
    intervals: tuple[float, ...] = INTERVALS_MS,
    configs: tuple[tuple[int, bool], ...] = CONFIGS,
) -> list[Run]:
    runs: list[Run] = []
    for latency, request in configs:
        with (
            tempfile.TemporaryDirectory(prefix="dfuhil-bench-ble-") as tmp,
            ble_farm(Path(tmp), time_scale, request, latency) as (state, rig, board),
        ):
            for interval_ms in intervals:
                for way in WAYS:
                    fresh(rig, board)
                    seconds, clock, note = one_way(way, state, board, image, interval_ms, latency)
                    assert clock.first is not None and clock.last is not None
                    run = Run(
                        interval_ms,
                        latency,
                        request,
                        way,
                        seconds / time_scale,
                        (clock.last[0] - clock.first[0]) / time_scale,
                        clock.last[1] - clock.first[1],
                        note,
                    )
                    runs.append(run)
                    print(f"  {run.label}: {way}: {run.stream_rate:.0f} B/s", flush=True)
    return runs


def flash_bound(chip_write_word_s: float = NRF52_TIMING.write_word_s) -> float:
    """Image bytes per second the board's flash takes (NVMC word writes, one after another)."""
    return 4 / chip_write_word_s


def report_ble(runs: list[Run], size: int, time_scale: float) -> None:
    print(
        f"\nSMP upload over the virtual BLE link: {size} B signed image, ATT MTU {ATT_MTU}, data "
        f"length {DATA_LENGTH}, time_scale {time_scale}; the board's flash takes "
        f"{flash_bound():.0f} B/s (nRF52840 NVMC word writes)"
    )
    head = f"{'link':28} {'way':10} {'total s':>8} {'stream B/s':>10} "
    print(head + f"{'bound B/s':>9} {'x bound':>7}  note")
    for r in runs:
        b = bound(r.interval_ms)
        print(
            f"{r.label:28} {r.way:10} {r.total_s:>8.2f} {r.stream_rate:>10.0f} {b:>9.0f} "
            f"{r.stream_rate / b:>7.2f}  {r.note}"
        )
    for latency, request in sorted({(r.latency, r.latency_request) for r in runs}):
        ours = [
            r
            for r in runs
            if r.way == "dfuhil" and (r.latency, r.latency_request) == (latency, request)
        ]
        worst = min(ours, key=lambda r: r.stream_rate / bound(r.interval_ms))
        ratio = worst.stream_rate / bound(worst.interval_ms)
        print(
            f"goal, latency {latency}, latency request {'on' if request else 'off'}: dfuhil "
            f"within 10 % of the link bound at every interval: worst {ratio:.2f} at "
            f"{worst.interval_ms:g} ms ({'met' if ratio >= 0.9 else 'NOT met'})"
        )
