"""Parallel runs (pytest-xdist) against the virtual farm, as a user starts them: `pytest -n N`.

Every run is a real `python -m pytest suites/...` with its own boards file (a few shipped boards,
fast time scale), reports folder, JUnit XML and allure results in tmp. What the tests read is the
run's own evidence: JUnit properties (the worker of each test), ``reports/leases.jsonl`` (who
held which board when), the per-board console logs; and the lease files themselves to find the
worker that holds a board at a given moment.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from farmgen import pytest_command, subset, write_farm
from provisionfarm import (
    PROCESS_TIMEOUT_S,
    REPO,
    processes_mentioning,
    running_farm,
    stop_processes,
)

from dfuhil.errors import InfrastructureError
from dfuhil.farm.lease import LOCK_DIR, BoardLease, lease_order
from dfuhil.farm.loader import load_farm

PROVISIONING = "suites/test_provisioning.py"
MESH_HAPPY = (
    "suites/test_mesh_dfu.py::test_guide_happy_path_ends_with_one_led_blinking_on_every_node"
)
UPGRADE = (
    "suites/test_mcuboot_dfu.py::test_upgrade_then_confirm_keeps_the_new_version_over_more_resets"
)
MESH = ("vdk52832", "vdk52832-b", "vdk52832-c")  # the root and two nodes: one mesh
MCUBOOT = "vdk52840-swap-move"
# The shipped time scale: the mesh test paces its radio by it (0.05 is too tight under load).
TIME_SCALE = 0.1
RUN_TIMEOUT_S = 2 * PROCESS_TIMEOUT_S


def farm(path: Path, *names: str) -> Path:
    return write_farm(path, subset(*names), time_scale=TIME_SCALE)


def start(workdir: Path, boards: Path, *args: str) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        pytest_command(workdir, boards, *args),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], workdir: Path) -> Run:
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        # Nothing of the run may outlive it: workers, the shared farm.
        leftovers = processes_mentioning(str(workdir / "reports"))
        stop_processes(leftovers)
    assert not leftovers, f"processes still running after the run: {leftovers}"
    return Run(workdir, process.returncode, out + err)


class Run:
    def __init__(self, workdir: Path, returncode: int, output: str) -> None:
        self.workdir = workdir
        self.returncode = returncode
        self.output = output

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    def cases(self) -> list[tuple[str, dict[str, str], list[ET.Element]]]:
        """(name, properties, failures and errors) per JUnit testcase, repeats kept."""
        root = ET.parse(self.workdir / "junit.xml").getroot()
        return [
            (
                case.attrib["name"],
                {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")},
                [c for c in case if c.tag in ("failure", "error")],
            )
            for case in root.iter("testcase")
        ]

    def leases(self) -> list[dict[str, Any]]:
        path = self.reports / "leases.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def run(workdir: Path, boards: Path, *args: str) -> Run:
    return finish(start(workdir, boards, *args), workdir)


def assert_no_two_holders_at_once(leases: list[dict[str, Any]]) -> None:
    by_board: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lease in leases:
        by_board[lease["board"]].append(lease)
    for board, held in by_board.items():
        held.sort(key=lambda lease: lease["taken"])
        for before, after in itertools.pairwise(held):
            assert before["released"] <= after["taken"], (board, before, after)


def message(elements: list[ET.Element]) -> str:
    return "\n".join(e.attrib.get("message", "") + (e.text or "") for e in elements)


# --- one parallel run: provisioning on four boards and the mesh test on three of them ----------


@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("parallel")
    boards = farm(workdir / "boards.yaml", *MESH, MCUBOOT)
    return run(workdir, boards, PROVISIONING, MESH_HAPPY, "-n", "3")


def test_parallel_run_passes_with_every_test_once(parallel_run: Run) -> None:
    assert parallel_run.returncode == 0, parallel_run.output
    cases = parallel_run.cases()
    names = [name for name, _, _ in cases]
    assert len(names) == len(set(names)) == 3 * 3 + 2 + 1, names  # LED test: mesh boards only
    assert not [name for name, _, failed in cases if failed]
    # Three workers, two board groups (the mesh, the MCUboot board): one had nothing to do.
    assert "3 workers for 2 board group(s): 1 worker(s) had nothing to do" in parallel_run.output


def test_each_board_stays_on_one_worker_and_the_mesh_with_its_boards(parallel_run: Run) -> None:
    workers: dict[str, set[str]] = defaultdict(set)
    for name, props, _ in parallel_run.cases():
        assert props["worker"].startswith("gw"), (name, props)
        workers[props.get("board", "mesh")].add(props["worker"])
    assert all(len(w) == 1 for w in workers.values()), workers
    mesh_workers = {w for board in (*MESH, "mesh") for w in workers[board]}
    assert len(mesh_workers) == 1, workers  # the mesh test and its boards' tests: one worker
    assert workers[MCUBOOT] != mesh_workers, "two groups, two workers: they ran in parallel"


def test_no_two_workers_ever_held_one_board(parallel_run: Run) -> None:
    leases = parallel_run.leases()
    assert {lease["board"] for lease in leases} == {*MESH, MCUBOOT}
    assert_no_two_holders_at_once(leases)
    for board in (*MESH, MCUBOOT):
        assert len({lease["worker"] for lease in leases if lease["board"] == board}) == 1, board


def test_evidence_of_a_parallel_run_is_whole(parallel_run: Run) -> None:
    reports = parallel_run.reports
    results = [
        json.loads(p.read_text()) for p in (parallel_run.workdir / "allure").glob("*-result.json")
    ]
    assert len(results) == len(parallel_run.cases())
    for result in results:
        assert [lb["value"] for lb in result["labels"] if lb["name"] == "worker"], result["name"]
    # Per-board console logs: each holder's open ... close, never two holders interleaved.
    for board in (*MESH, MCUBOOT):
        lines = (reports / "logs" / f"{board}.log").read_text().splitlines()
        markers = [m for line in lines for m in ("opened", "closed") if f"--- {m}" in line]
        assert markers and markers == ["opened", "closed"] * (len(markers) // 2), (board, markers)
    # The owner's log and each worker's own log, none shared.
    assert (parallel_run.workdir / "pytest.log").exists()
    assert sorted(p.name for p in parallel_run.workdir.glob("pytest.gw*.log"))
    # One farm for the run, stopped at its end (finish() checked no process is left).
    assert not (reports / "sim" / "state.json").exists()
    assert len(list(reports.glob("sim/*.sim.log"))) == len(MESH) + 1


# --- faults ------------------------------------------------------------------------------------


def held_by(lock: Path) -> int | None:
    """The pid holding the lease file right now, or None when nobody does."""
    if not lock.exists():
        return None
    with lock.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            words = handle.read().split()
            return int(words[words.index("pid") + 1]) if "pid" in words else None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def wait_for_farm(process: subprocess.Popen[str], workdir: Path) -> int:
    state = workdir / "reports" / "sim" / "state.json"
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists():
            return int(json.loads(state.read_text())["pid"])
        time.sleep(0.05)
    raise AssertionError(f"the run's farm never came up: {process.poll()}")


def lease_file(boards: Path, board: str, farm_pid: int) -> Path:
    lease = BoardLease(load_farm(boards, check_files=False).board(board), scope=farm_pid)
    return lease.path


def wait_for_holder(process: subprocess.Popen[str], lock: Path) -> int:
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        pid = held_by(lock)
        if pid is not None:
            return pid
        time.sleep(0.02)
    raise AssertionError(f"nobody took {lock}")


def test_worker_killed_mid_test_is_an_infrastructure_error_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    victim, other = "vdk52832-b", MCUBOOT
    boards = farm(tmp_path / "boards.yaml", victim, other)
    process = start(tmp_path, boards, PROVISIONING, "-n", "2")
    try:
        farm_pid = wait_for_farm(process, tmp_path)
        worker = wait_for_holder(process, lease_file(boards, victim, farm_pid))
        os.kill(worker, signal.SIGKILL)
    finally:
        result = finish(process, tmp_path)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.output
    cases = result.cases()
    crashed = [(name, failed) for name, _, failed in cases if failed]
    assert len(crashed) == 1, cases
    name, failed = crashed[0]
    assert name.endswith(f"[{victim}]")
    assert "[infrastructure]" in message(failed) and "died while running" in message(failed)
    # Its lease was freed at once: the board's tests, the interrupted one too, ran and passed.
    passed = {name for name, _, failed in cases if not failed}
    for test in (
        "test_provisioned_board_prints_its_boot_banner",
        "test_second_provisioning_skips_every_unchanged_step",
    ):
        assert f"{test}[{victim}]" in passed and f"{test}[{other}]" in passed, passed
    assert_no_two_holders_at_once(result.leases())


def test_farm_dying_mid_run_makes_infrastructure_errors_naming_the_farm(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", "vdk52832-b", MCUBOOT)
    process = start(tmp_path, boards, PROVISIONING, "-n", "2")
    try:
        farm_pid = wait_for_farm(process, tmp_path)
        wait_for_holder(process, lease_file(boards, "vdk52832-b", farm_pid))
        os.kill(farm_pid, signal.SIGKILL)
    finally:
        result = finish(process, tmp_path)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.output
    failed = [(name, message(f)) for name, _, f in result.cases() if f]
    assert failed, result.output
    for name, text in failed:
        assert "[infrastructure]" in text and f"the virtual farm (pid {farm_pid}" in text, name
    assert not (tmp_path / "reports" / "sim" / "state.json").exists()


def test_run_killed_with_kill_9_leaves_no_farm_and_no_lease_behind(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", "vdk52832-b", MCUBOOT)
    process = start(tmp_path, boards, PROVISIONING, UPGRADE, "-n", "2")
    try:
        farm_pid = wait_for_farm(process, tmp_path)
        lock = lease_file(boards, "vdk52832-b", farm_pid)
        wait_for_holder(process, lock)
        process.kill()  # SIGKILL to the run's owner: no cleanup of its own runs
        process.communicate(timeout=PROCESS_TIMEOUT_S)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            Path(f"/proc/{farm_pid}").exists() or held_by(lock) is not None
        ):
            time.sleep(0.1)
        assert not Path(f"/proc/{farm_pid}").exists(), "the farm outlived the run (--watch-pid)"
        assert held_by(lock) is None, "a worker of the killed run still holds its board"
    finally:
        stop_processes(processes_mentioning(str(tmp_path / "reports")))


# --- two runs on one machine --------------------------------------------------------------------


def test_second_run_in_the_same_reports_folder_refuses_and_writes_nothing(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", "vdk52832-b", MCUBOOT)
    # One worker through both boards and an MCUboot upgrade: still running when refused.
    first = start(tmp_path / "first", boards, PROVISIONING, UPGRADE, "-n", "1")
    try:
        farm_pid = wait_for_farm(first, tmp_path / "first")
        second = tmp_path / "second"
        args = pytest_command(second, boards, PROVISIONING, "-n", "2")
        args[args.index("--reports-dir") + 1] = str(tmp_path / "first" / "reports")
        refused = subprocess.run(
            args, cwd=REPO, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=False
        )
        # The refused run touched nothing of the first: its farm still serves.
        assert first.poll() is None, "the first run ended too early to tell"
        assert Path(f"/proc/{farm_pid}").exists()
        assert (tmp_path / "first" / "reports" / "sim" / "state.json").exists()
    finally:
        result = finish(first, tmp_path / "first")
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
    assert f"is in use by another test run (pid {first.pid} " in refused.stderr
    assert "--reports-dir DIR" in refused.stderr and "Traceback" not in refused.stderr
    assert not second.exists(), sorted(second.rglob("*"))  # no junit, allure, log
    assert result.returncode == 0, result.output


def test_two_runs_sharing_one_farm_wait_for_each_others_boards(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", "vdk52832-b", MCUBOOT)
    with running_farm(boards, tmp_path / "farm") as state:
        sim = ("--sim-state", str(state.path))
        runs = [start(tmp_path / n, boards, PROVISIONING, "-n", "2", *sim) for n in ("a", "b")]
        results = [finish(p, tmp_path / n) for p, n in zip(runs, ("a", "b"), strict=True)]
    for result in results:
        assert result.returncode == 0, result.output
    assert_no_two_holders_at_once([lease for r in results for lease in r.leases()])
    waits = [
        line
        for r in results
        for log in r.workdir.glob("pytest.gw*.log")
        for line in log.read_text().splitlines()
        if "is leased by pytest run in" in line
    ]
    assert waits, "two runs on the same boards at once: one must have waited for the other"
    # ... and said so on its terminal at once, not only in its logs.
    assert any("is leased by pytest run in" in r.output for r in results)
    other = {str((tmp_path / n / "reports").resolve()) for n in ("a", "b")}
    assert all(any(f"leased by pytest run in {o}, worker gw" in w for o in other) for w in waits)


def test_lease_held_by_another_run_times_out_naming_the_holder(tmp_path: Path) -> None:
    board = load_farm(farm(tmp_path / "boards.yaml", "vdk52832-b"), check_files=False).board(
        "vdk52832-b"
    )
    lease = BoardLease(board, scope=os.getpid(), timeout_s=0.5)
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(lease.path)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.seek(0); f.truncate(); f.write('run elsewhere, worker gw7, pid 1'); f.flush()\n"
            "print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(InfrastructureError) as raised:
            lease.acquire()
    finally:
        holder.kill()
        holder.wait()
    text = str(raised.value)
    assert "board vdk52832-b: board still leased after 0 s by run elsewhere, worker gw7" in text
    assert str(lease.path) in text
    lease.acquire()  # the holder died: the kernel dropped its lock
    lease.release()


def test_several_boards_are_leased_in_one_global_order(tmp_path: Path) -> None:
    loaded = load_farm(farm(tmp_path / "boards.yaml", *MESH, MCUBOOT), check_files=False)
    boards = [loaded.board(n) for n in (MCUBOOT, *reversed(MESH))]
    orders = {
        tuple(lease.key for lease in lease_order(BoardLease(b, scope=7) for b in shuffled))
        for shuffled in (boards, list(reversed(boards)), boards[1:] + boards[:1])
    }
    assert len(orders) == 1


# --- bad input -------------------------------------------------------------------------------


def test_sim_state_of_a_farm_not_running_is_a_usage_error(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", "vdk52832-b")
    result = run(
        tmp_path, boards, PROVISIONING, "-n", "2", "--sim-state", str(tmp_path / "no.json")
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.output
    assert f"--sim-state {tmp_path / 'no.json'}: [infrastructure] no virtual farm is running" in (
        result.output
    )
    assert "Traceback" not in result.output
    assert not (tmp_path / "junit.xml").exists() and not (tmp_path / "reports").exists()


def test_unknown_board_with_workers_is_one_usage_error_not_a_worker_crash(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", "vdk52832-b")
    result = run(tmp_path, boards, PROVISIONING, "-n", "2", "--board", "nosuchboard")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.output
    assert "no board named 'nosuchboard'; boards there: vdk52832-b" in result.output
    assert "INTERNALERROR" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "junit.xml").exists() and not (tmp_path / "reports").exists()


# --- the farm under parallel workers ------------------------------------------------------------

REGISTRY_RACE = """
import threading
from dfuhil.sim import runtime
start = threading.Barrier(8)
seen = []
def boot():
    start.wait()
    seen.append(sorted(runtime.registry()))
threads = [threading.Thread(target=boot) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(1 for kinds in seen if 'mcuboot' not in kinds))
"""


def test_boards_booting_at_once_all_find_every_firmware_behaviour() -> None:
    """Parallel workers reset several virtual boards at the same moment; the first boots of a
    farm load the behaviour plug-ins, and no board may see half a registry ("no behaviour
    plug-in 'mcuboot'" while another board is still importing it)."""
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", REGISTRY_RACE], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == "0", "boards saw a registry without mcuboot: " + done.stdout
