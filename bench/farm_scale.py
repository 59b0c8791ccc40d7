"""Benchmark: a whole farm at once. Generated virtual farms of N boards, one parallel run each.

Per N (default 1, 4, 8, 16, 32) a boards file of N virtual boards cycling through shipped kits
(nRF51422/52832/52833/52840 mesh-DFU kits and MCUboot kits in four upgrade modes; no mesh roles,
so each board is its own scheduling group) is served by one farm process this bench starts, and
`pytest -n W` (W = min(N, --max-workers)) runs on every board the provisioning suite and, on the
MCUboot boards, one upgrade-and-confirm. Figures per N:

  wall s          the pytest run, start to exit (collection and worker start-up included)
  ratio           wall / wall at N=1 (goal: <= 1.3 at N=32)
  slowdown        median wall time of one board's test at N / at N=1 (1.0: each board runs as
                  fast as alone; > 1: boards slow each other down)
  farm cpu/board  the farm process's CPU seconds / N
  farm cpu %      the farm process's CPU seconds / wall (100 % = one core: the farm is one
                  process, its Python threads share one GIL)
  dev-s/wall-s    device seconds the boards were leased and driven, summed over boards, per wall
                  second (leases.jsonl / time_scale): the farm's useful throughput. With a
                  virtual clock keeping up it grows like N x 1/time_scale x (busy fraction)
  run cpu/board   CPU seconds of the whole run (pytest controller, workers, farm) / N
  cpu floor s     run CPU / cores: no schedule on this machine finishes sooner
  first lease s   run start to the first board leased: interpreter, collection, worker and
                  farm start-up, paid once per run whatever N
  host busy %     all CPUs of the machine busy during the run (/proc/stat; other users' load
                  included: on a shared machine the figures above are not the farm's alone)
  limit           what bounds the scaling at that N (see `limit()`)

Then the shipped farm (boards.yaml, `make regression`'s suites): wall time serial (-n 0) and
parallel (-n JOBS). Full-size runs take a while and want a quiet machine.

Run: `make bench-farm` or `.venv/bin/python bench/farm_scale.py [--sizes 1,4] [--max-workers 8]
[--jobs 4] [--no-regression] [--time-scale 0.1]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from farmgen import generated, pytest_command, write_farm  # noqa: E402

from dfuhil.sim.state import FarmProcess  # noqa: E402

SUITES = (
    "suites/test_provisioning.py",
    "suites/test_mcuboot_dfu.py::test_upgrade_then_confirm_keeps_the_new_version_over_more_resets",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    boards: int
    workers: int
    wall_s: float
    test_s: float  # median wall time of one test
    farm_cpu_s: float
    run_cpu_s: float  # controller + workers (reaped children) + farm
    host_busy: float  # fraction of all CPUs busy
    first_lease_s: float
    device_s: float  # device seconds of leased boards, summed
    passed: int
    failed: list[str]  # "test: first line of its failure"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_s() -> float:
    """CPU of reaped children and theirs: the pytest controller and the workers it waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def junit(work: Path) -> tuple[list[float], int, list[str]]:
    durations, failed = [], []
    for case in ET.parse(work / "junit.xml").getroot().iter("testcase"):
        durations.append(float(case.attrib.get("time", 0)))
        for problem in (c for c in case if c.tag in ("failure", "error")):
            first = (problem.attrib.get("message") or problem.text or "").strip().splitlines()
            failed.append(f"{case.attrib['name']}: {first[0] if first else problem.tag}")
    return durations, len(durations) - len(failed), failed


def leases(work: Path) -> list[dict[str, float]]:
    path = work / "reports" / "leases.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def measure(n: int, max_workers: int, time_scale: float, root: Path) -> Figures:
    work = root / f"n{n}"
    boards = write_farm(work / "boards.yaml", generated(n), time_scale=time_scale)
    workers = min(n, max_workers)
    # The bench starts the farm itself (--sim-state) to read its CPU time before it stops.
    farm = FarmProcess(boards, work / "sim" / "state.json", log_dir=work / "sim")
    state = farm.start()
    try:
        busy_before, total_before = cpu_ticks()
        children_before = children_cpu_s()
        farm_before = cpu_seconds(state.pid)
        started = time.time()
        start = time.monotonic()
        command = pytest_command(
            work, boards, *SUITES, "-q", "-n", str(workers), "--sim-state", str(state.path)
        )
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.monotonic() - start
        farm_cpu = cpu_seconds(state.pid) - farm_before
        busy_after, total_after = cpu_ticks()
        run_cpu = children_cpu_s() - children_before + farm_cpu  # the farm is not reaped yet
    finally:
        farm.stop()
    if done.returncode not in (0, 1):
        raise SystemExit(f"N={n}: pytest exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    durations, passed, failed = junit(work)
    held = leases(work)
    return Figures(
        boards=n,
        workers=workers,
        wall_s=wall,
        test_s=statistics.median(durations) if durations else 0.0,
        farm_cpu_s=farm_cpu,
        run_cpu_s=run_cpu,
        host_busy=(busy_after - busy_before) / max(total_after - total_before, 1),
        first_lease_s=min((h["taken"] for h in held), default=started) - started,
        device_s=sum(h["released"] - h["taken"] for h in held) / time_scale,
        passed=passed,
        failed=failed,
    )


def limit(f: Figures, cores: int) -> str:
    """The first bound that is (nearly) reached, in the order they bite on a small host."""
    if f.farm_cpu_s / f.wall_s >= 0.8:
        return "farm CPU (one process, one GIL)"
    if f.host_busy >= 0.8:
        return f"host CPU ({cores} cores busy: workers' start-up and SMP/serial work, other load)"
    if f.workers < f.boards:
        return f"pytest workers ({f.workers} for {f.boards} boards)"
    if f.first_lease_s >= 0.5 * f.wall_s:
        return "start-up (interpreters, collection, farm)"
    return "none saturated: paced I/O"


def scale_table(sizes: list[int], max_workers: int, time_scale: float, root: Path) -> None:
    cores = os.cpu_count() or 1
    print(f"farm scale: time_scale {time_scale}, up to {max_workers} workers, {cores} cores")
    header = (
        f"{'N':>3} {'workers':>7} {'tests':>9} {'wall s':>7} {'ratio':>6} {'slowdown':>8} "
        f"{'farm cpu/board':>14} {'farm cpu %':>10} {'dev-s/wall-s':>12} {'run cpu/board':>13} "
        f"{'cpu floor s':>11} {'first lease s':>13} {'host busy %':>11}  limit"
    )
    print(header)
    print("-" * len(header))
    base: Figures | None = None
    for n in sizes:
        f = measure(n, max_workers, time_scale, root)
        base = base or f
        tests = f"{f.passed}/{f.passed + len(f.failed)}"
        print(
            f"{f.boards:>3} {f.workers:>7} {tests:>9} {f.wall_s:>7.1f} "
            f"{f.wall_s / base.wall_s:>6.2f} {f.test_s / max(base.test_s, 1e-9):>8.2f} "
            f"{f.farm_cpu_s / f.boards:>14.2f} {100 * f.farm_cpu_s / f.wall_s:>9.0f}% "
            f"{f.device_s / f.wall_s:>12.1f} {f.run_cpu_s / f.boards:>13.2f} "
            f"{f.run_cpu_s / cores:>11.1f} {f.first_lease_s:>13.1f} {100 * f.host_busy:>10.0f}%  "
            f"{limit(f, cores)}",
            flush=True,
        )
        for failure in f.failed:  # a scale figure from a run that failed is no figure
            print(f"      failed: {failure[:160]}")


def regression(jobs: int, root: Path) -> None:
    """The shipped farm, `make regression`'s run, serial and parallel."""
    print(f"\nshipped farm (boards.yaml, suites/): make regression, serial vs -n {jobs}")
    for workers in (0, jobs):
        work = root / f"regression-n{workers}"
        start = time.monotonic()
        done = subprocess.run(
            pytest_command(work, ROOT / "boards.yaml", "suites", "-q", "-n", str(workers)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - start
        _, passed, failed = junit(work) if (work / "junit.xml").exists() else ([], 0, [])
        label = "serial (-n 0)" if workers == 0 else f"parallel (-n {workers})"
        print(
            f"  {label:<16} {wall:>7.1f} s  {passed} passed, {len(failed)} failed "
            f"(exit {done.returncode})",
            flush=True,
        )
        for failure in failed:
            print(f"      failed: {failure[:160]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,8,16,32", help="board counts, comma-separated")
    parser.add_argument("--max-workers", type=int, default=16, help="pytest-xdist workers cap")
    parser.add_argument("--time-scale", type=float, default=0.1, help="virtual farm time scale")
    parser.add_argument("--jobs", type=int, default=4, help="workers of the parallel regression")
    parser.add_argument(
        "--no-regression", action="store_true", help="skip the shipped farm's serial/parallel run"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="dfuhil-farm-scale-") as tmp:
        scale_table(sizes, args.max_workers, args.time_scale, Path(tmp))
        if not args.no_regression:
            regression(args.jobs, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
