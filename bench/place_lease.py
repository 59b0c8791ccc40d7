"""Benchmark: what leasing a labgrid place costs, through dfuhil's agent vs ``labgrid-client``.

A loopback ``labgrid-coordinator`` and one ``labgrid-exporter`` publishing one board's group
(console, probe); the place exists and matches it. Figures (median of --rounds, milliseconds):

  agent acquire+release   one AcquirePlace + ReleasePlace through the long-lived JSON-lines
                          agent (farm/labgrid_agent.py): what a lease costs on the wire
  agent start             starting the agent (Python + grpc import + session), once per process
  PlaceLease cycle        dfuhil's whole lease: acquire, holder/heartbeat tags, resolving the
                          endpoints, release, clearing the tags
  CLI acquire+release     ``labgrid-client -p PLACE acquire`` then ``release``: two processes

Run: `.venv/bin/python bench/place_lease.py [--rounds 10]`
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dfuhil.farm.labgrid_client import LabgridClient, labgrid_python  # noqa: E402
from dfuhil.farm.loader import load_farm  # noqa: E402
from dfuhil.farm.place_lease import PlaceLease  # noqa: E402
from dfuhil.farm.places import sync_places  # noqa: E402
from tests.farmgen import subset, write_farm  # noqa: E402

BOARD = "vdk52832"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:8.1f}"


def measure(rounds: int) -> dict[str, list[float]]:
    """Seconds per sample of each figure (bench/remote_farm.py reuses it)."""
    bindir = labgrid_python().parent
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        address = f"127.0.0.1:{_port()}"
        (tmp / "exporter.yaml").write_text(
            f"{BOARD}:\n  console: {{cls: NetworkSerialPort, host: 127.0.0.1, port: 4000}}\n"
            "  probe: {cls: NetworkService, address: 127.0.0.1, port: 5000, username: ''}\n"
        )
        entries = subset(BOARD)
        entries[0].update(place="bench", lab_host="lab-a")
        path = write_farm(tmp / "boards.yaml", entries, time_scale=0.1)
        path.write_text(f"coordinator: {address}\n{path.read_text()}")
        farm = load_farm(path)

        def start(*argv: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp
            )

        coordinator = start(str(bindir / "labgrid-coordinator"), "-l", address)
        exporter = None
        try:
            time.sleep(1.5)
            config = str(tmp / "exporter.yaml")
            exporter = start(str(bindir / "labgrid-exporter"), "-c", address, "-n", "lab-a", config)
            starts, raw, cycle, cli = [], [], [], []
            for _ in range(3):
                t = time.perf_counter()
                LabgridClient(address).close()
                starts.append(time.perf_counter() - t)
            with LabgridClient(address) as client:
                sync_places(farm, client)
                while not any(r["path"][1] == BOARD for r in client.call("resources")):
                    time.sleep(0.1)
                for _ in range(rounds):
                    t = time.perf_counter()
                    client.call("acquire", place="bench")
                    client.call("release", place="bench", fromuser=client.name)
                    raw.append(time.perf_counter() - t)
                for _ in range(rounds):
                    t = time.perf_counter()
                    with PlaceLease(farm.board(BOARD), client):
                        pass
                    cycle.append(time.perf_counter() - t)
            env = {**os.environ, "LG_COORDINATOR": address}
            for _ in range(rounds):
                t = time.perf_counter()
                for verb in ("acquire", "release"):
                    subprocess.run(
                        [str(bindir / "labgrid-client"), "-p", "bench", verb],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                cli.append(time.perf_counter() - t)
        finally:
            for proc in (exporter, coordinator):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=10)
    return {
        "agent acquire+release": raw,
        "agent start": starts,
        "PlaceLease cycle": cycle,
        "CLI acquire+release": cli,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    figures = measure(args.rounds)
    print(f"median of {args.rounds} rounds, ms")
    for name, samples in figures.items():
        print(f"{name:22} {_ms(samples)}")


if __name__ == "__main__":
    main()
