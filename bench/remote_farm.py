"""Benchmark: the same suite on N virtual boards, local vs on two lab hosts through labgrid.

One invocation measures what reaching boards through a coordinator, RFC 2217 and the TCP debug
port costs against reaching them on this host:

  suite wall s      `pytest -n W` of farm_scale.py's suites (provisioning on every board, an
                    upgrade-and-confirm on the MCUboot ones) on N generated boards, start to
                    exit: local (this host's farm, ptys, unix debug port) and remote (the same
                    farm published by two loopback `labgrid-exporter`s, lab-a and lab-b, half
                    each; every board leased through its place, console over ser2net/RFC 2217,
                    probe over TCP); the ratio remote / local
  SMP upload B/s    bench/rfc2217_upload.py's measure(): one image over the local pty and over
                    ser2net/RFC 2217 (device seconds); goal: within 5 %
  lease ms          bench/place_lease.py's measure(): a place acquire+release through dfuhil's
                    agent, a whole PlaceLease cycle (tags, endpoints), labgrid-client's
  coordinator       its CPU seconds over the remote run and its RSS at the end, with N places
                    (and exporters publishing N groups) vs 1: the cost of one more board

All on loopback; every process is stopped by its pid. Figures vary with the machine's load (the
shared 2-core box): read ratios, not absolutes.

Run: `make bench-remote` or `.venv/bin/python bench/remote_farm.py [--boards 8] [--workers 2]
[--time-scale 0.1] [--image-kib 64] [--upload-rounds 2] [--lease-rounds 10]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import farm_scale
import place_lease
import rfc2217_upload
from farm_scale import SUITES, cpu_seconds, junit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from farmgen import generated, pytest_command, write_farm  # noqa: E402
from labgrid_lab import labgrid_lab  # noqa: E402

from dfuhil.farm.export import build_export  # noqa: E402
from dfuhil.farm.labgrid_client import LabgridClient  # noqa: E402
from dfuhil.farm.loader import load_farm  # noqa: E402
from dfuhil.farm.places import sync_places  # noqa: E402
from dfuhil.sim.state import FarmProcess  # noqa: E402

HOSTS = ("lab-a", "lab-b")


@dataclass
class RemoteRun:
    boards: int
    wall_s: float
    passed: int
    failed: list[str]
    coordinator_cpu_s: float  # over the whole lab: exporters joining, places, the run
    coordinator_rss_kib: int  # at the end of the run


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def remote_boards(path: Path, n: int, time_scale: float, coordinator: str) -> Path:
    """farm_scale's N generated boards, alternately on lab-a and lab-b, each in a place."""
    entries = generated(n)
    for index, entry in enumerate(entries):
        entry["place"] = f"bench-{entry['name']}"
        entry["lab_host"] = HOSTS[index % len(HOSTS)]
    write_farm(path, entries, time_scale=time_scale)
    path.write_text(f"coordinator: {coordinator}\n{path.read_text()}")
    return path


def remote(n: int, workers: int, time_scale: float, root: Path) -> RemoteRun:
    """The suites on N boards reached through places on two loopback lab hosts."""
    work = root / f"remote-n{n}"
    work.mkdir(parents=True)
    with labgrid_lab(work / "labgrid") as lab:
        assert lab.coordinator is not None
        coordinator = lab.coordinator.pid
        cpu_before = cpu_seconds(coordinator)
        boards = remote_boards(work / "boards.yaml", n, time_scale, lab.address)
        farm = load_farm(boards)
        with FarmProcess(boards, work / "sim" / "state.json", log_dir=work / "sim") as state:
            for host in sorted({b.lab_host for b in farm.boards if b.lab_host}):
                config = work / f"{host}.yaml"
                config.write_text(build_export(farm, host, state.path).yaml())
                lab.start_exporter(host, config)
            with LabgridClient(lab.address, identity="bench") as client:
                sync_places(farm, client)
            start = time.monotonic()
            command = pytest_command(work, boards, *SUITES, "-q", "-n", str(min(n, workers)))
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            wall = time.monotonic() - start
            cpu = cpu_seconds(coordinator) - cpu_before
            rss = rss_kib(coordinator)
    if done.returncode not in (0, 1):
        raise SystemExit(f"remote N={n}: pytest exited {done.returncode}\n{done.stdout}")
    _, passed, failed = junit(work)
    return RemoteRun(n, wall, passed, failed, cpu, rss)


def show_failures(what: str, failed: list[str]) -> None:
    for failure in failed:  # a figure from a run that failed is no figure
        print(f"      {what} failed: {failure[:160]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--image-kib", type=int, default=64)
    parser.add_argument("--upload-rounds", type=int, default=2)
    parser.add_argument("--upload-time-scale", type=float, default=1.0)
    parser.add_argument("--lease-rounds", type=int, default=10)
    args = parser.parse_args()
    missing = rfc2217_upload.missing_tools()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    n, workers = args.boards, min(args.boards, args.workers)
    with tempfile.TemporaryDirectory(prefix="dfuhil-bench-remote-") as tmp:
        root = Path(tmp)
        local = farm_scale.measure(n, workers, args.time_scale, root)
        far = remote(n, workers, args.time_scale, root)
        one = remote(1, 1, args.time_scale, root)
    uploads = rfc2217_upload.measure(args.upload_time_scale, args.image_kib, args.upload_rounds)
    leases = place_lease.measure(args.lease_rounds)

    print(
        f"remote farm: {n} virtual boards, {workers} workers, time_scale {args.time_scale}, "
        "loopback (2 lab hosts: labgrid coordinator + exporters, ser2net RFC 2217, TCP debug port)"
    )
    print(f"{'figure':44} {'local':>10} {'remote':>10} {'ratio':>7}")
    print("-" * 74)
    print(
        f"{'tests passed':44} {f'{local.passed}/{local.passed + len(local.failed)}':>10} "
        f"{f'{far.passed}/{far.passed + len(far.failed)}':>10}"
    )
    print(
        f"{'suite wall s':44} {local.wall_s:>10.1f} {far.wall_s:>10.1f} "
        f"{far.wall_s / local.wall_s:>7.2f}"
    )
    size = uploads.size
    up_local = size / uploads.median(rfc2217_upload.LOCAL)
    up_remote = size / uploads.median(rfc2217_upload.REMOTE)
    print(
        f"{f'SMP upload B/s ({size} B image, device s)':44} {up_local:>10.0f} "
        f"{up_remote:>10.0f} {up_remote / up_local:>7.3f}"
    )
    for name, samples in leases.items():
        print(f"{'lease ms: ' + name:44} {'':>10} {statistics.median(samples) * 1000:>10.1f}")
    print(f"{'coordinator':44} {'1 place':>10} {f'{n} places':>10} {'/board':>7}")
    per_cpu = (far.coordinator_cpu_s - one.coordinator_cpu_s) / max(n - 1, 1)
    per_rss = (far.coordinator_rss_kib - one.coordinator_rss_kib) / max(n - 1, 1)
    print(
        f"{'  CPU s over the run':44} {one.coordinator_cpu_s:>10.2f} "
        f"{far.coordinator_cpu_s:>10.2f} {per_cpu:>7.3f}"
    )
    print(
        f"{'  RSS KiB at the end':44} {one.coordinator_rss_kib:>10} "
        f"{far.coordinator_rss_kib:>10} {per_rss:>7.0f}"
    )
    print(f"{'  suite wall s (1 board, remote)':44} {one.wall_s:>10.1f} {far.wall_s:>10.1f}")
    show_failures("local", local.failed)
    show_failures("remote", far.failed)
    show_failures("remote N=1", one.failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
