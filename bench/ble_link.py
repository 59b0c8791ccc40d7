"""Benchmark: SMP over the virtual farm's Bluetooth LE link against the link's own bound.

One farm process serves the shipped swap-move board with its Bluetooth stack as smp_svr builds
it, its app built without the UDP transport (the shipped one has it, and with it 2 netbufs: one
request at a time), and asking for no connection parameters of its own (``mcuboot.ble_link:
{smp_conn_param_control: false, auto_update: false}``), so the connection keeps the interval the
central asks for. A plain bumble central
(no dfuhil host code) connects at 7.5, 15, 30 and 50 ms, exchanges a 247-byte ATT MTU and sends
SMP echo requests as writes without response, ``--window`` of them in flight (Zephyr's netbuf
count is 4, one of them kept for the answer: 3), each of 384 bytes (two writes). Per interval it
prints the request bytes per device second the board took in, and the link's bound for one direction
(full ATT values in every LL packet of every event: ``ble_link.bound_bytes_per_s``) with the
link state the board logged. Figures, not a pass/fail: the echo's answers share the events
with the requests, so the ratio says how much of the air the pacing gives SMP.

Run: `.venv/bin/python bench/ble_link.py [--time-scale 1.0] [--kib 32] [--window 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import cbor2  # noqa: E402
from bumble.device import ConnectionParametersPreferences, Device, Peer  # noqa: E402
from bumble.hci import Address, Phy  # noqa: E402
from bumble.transport import open_transport  # noqa: E402
from simfarm import shipped_subset, use_ble_only_build  # noqa: E402
from test_mcuboot_cli import BANNER, BOARD  # noqa: E402
from test_sim_ble import NAME, find, request, smp_answers, smp_characteristic  # noqa: E402

from dfuhil.farm.loader import load_farm  # noqa: E402
from dfuhil.farm.rig import Rig  # noqa: E402
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan  # noqa: E402
from dfuhil.sim.ble_link import LinkState, bound_bytes_per_s  # noqa: E402
from dfuhil.sim.state import FarmProcess  # noqa: E402

INTERVALS_MS = (7.5, 15.0, 30.0, 50.0)
MTU = 247
NETBUF = 384


def echo_request(seq: int) -> bytes:
    """An OS echo whose packet fills the netbuf (header 8 + CBOR {"d": text})."""
    text = "x" * (NETBUF - 8 - 8)
    packet = request(0, 0, 2, cbor2.dumps({"d": text}), seq & 0xFF)
    assert len(packet) <= NETBUF
    return packet


async def run_interval(hci: str, interval_ms: float, total: int, window: int) -> tuple[int, float]:
    """Bytes written and the wall seconds from the first write to the last answer."""
    async with await open_transport(hci) as (source, sink):
        device = Device.with_hci("bench", Address("F0:BE:4C:00:00:01"), source, sink)
        await device.power_on()
        address = await find(device, NAME)
        prefs = ConnectionParametersPreferences(
            connection_interval_min=interval_ms, connection_interval_max=interval_ms
        )
        connection = await device.connect(
            address, connection_parameters_preferences={Phy.LE_1M: prefs}
        )
        peer = Peer(connection)
        await peer.request_mtu(MTU)
        characteristic = await smp_characteristic(peer)
        answers, on_notification = smp_answers()
        await peer.subscribe(characteristic, on_notification)
        sent = answered = seq = 0
        start = time.monotonic()
        while answered * len(echo_request(0)) < total:
            while sent - answered < window and sent * len(echo_request(0)) < total:
                packet = echo_request(seq)
                seq += 1
                for i in range(0, len(packet), MTU - 3):
                    await peer.write_value(
                        characteristic, packet[i : i + MTU - 3], with_response=False
                    )
                sent += 1
            await asyncio.wait_for(answers.get(), 60)
            answered += 1
        elapsed = time.monotonic() - start
        await connection.disconnect()
        return answered * len(echo_request(0)), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--kib", type=int, default=32)
    parser.add_argument("--window", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfuhil-ble-bench-") as tmp:
        work = Path(tmp)

        def fixed_interval(data: Any) -> None:
            board = data["boards"][0]
            use_ble_only_build(data, board, work)  # 4 netbufs: 3 requests in flight
            data["firmware_sets"][board["firmware"]]["mcuboot"]["ble_link"] = {
                "smp_conn_param_control": False,
                "auto_update": False,
            }

        boards = shipped_subset(work / "boards.yaml", [BOARD], args.time_scale, fixed_interval)
        with FarmProcess(
            boards, work / "state.json", log_dir=work / "sim", time_scale=args.time_scale
        ) as state:
            farm = load_farm(boards)
            spec = farm.board(BOARD)
            with Rig(farm, state).console(spec, open_timeout=5.0) as console:
                with Rig(farm, state).probe(spec) as probe:
                    Provisioner(ProvisioningPlan.for_board(spec), probe).run(STEPS)
                console.expect(BANNER, timeout=60)
            assert state.ble_hci is not None
            print(
                f"SMP echo over the virtual BLE link: {args.kib} KiB of requests per interval, "
                f"{args.window} in flight, ATT MTU {MTU}, time scale {args.time_scale}"
            )
            print(f"{'interval':>9}  {'measured B/s':>12}  {'bound B/s':>10}  {'ratio':>6}")
            for interval_ms in INTERVALS_MS:
                done, wall = asyncio.run(
                    run_interval(state.ble_hci, interval_ms, args.kib * 1024, args.window)
                )
                rate = done / (wall / args.time_scale)
                link = LinkState(
                    interval=round(interval_ms / 1.25),
                    latency=0,
                    timeout=42,
                    att_mtu=MTU,
                    data_length=251,
                )
                bound = bound_bytes_per_s(link)
                print(f"{interval_ms:>7g}ms  {rate:>12.0f}  {bound:>10.0f}  {rate / bound:>6.2f}")
            log = (work / "sim" / f"{BOARD}.sim.log").read_text()
            print("\nwhat the board logged:")
            for line in log.splitlines():
                if "BLE: connected" in line or "ATT MTU exchange" in line:
                    print("  " + line.split("] ", 1)[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
