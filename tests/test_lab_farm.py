"""The lab end to end, on loopback: boards on two lab hosts, leased through labgrid's coordinator.

One virtual farm process (``dfuhil sim serve``) plays the boards; a ``labgrid-coordinator`` and
two ``labgrid-exporter`` processes (lab hosts ``lab-a`` and ``lab-b``) each publish half of it
from the file ``dfuhil farm export --host`` writes; ``dfuhil farm places`` creates the places.
The "CI side" is a real ``python -m pytest suites/... -n 2`` on a boards file that names the
coordinator and, per board, its place and lab host: it starts no farm of its own and reaches
every board through its place's RFC 2217 port and the farm's TCP debug port. The mesh's root
is on lab-a and its nodes on lab-b, so the mesh DFU crosses both exporters.

What the tests read is the run's own evidence (JUnit XML, ``reports/leases.jsonl``, its log
files and output) and the coordinator's places. Every process is stopped by its pid (the lab
harness, FarmProcess, test_parallel's ``finish``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ser2netproc
from farmgen import pytest_command, subset, write_farm
from labgrid_lab import LabgridLab, labgrid_lab
from provisionfarm import PROCESS_TIMEOUT_S
from test_parallel import (
    MCUBOOT,
    MESH,
    MESH_HAPPY,
    PROVISIONING,
    TIME_SCALE,
    UPGRADE,
    Run,
    assert_no_two_holders_at_once,
    finish,
    message,
)

from dfuhil.farm.labgrid_client import LabgridClient
from dfuhil.farm.loader import load_farm
from dfuhil.farm.place_lease import PlaceLease
from dfuhil.sim.state import FarmProcess

REPO = Path(__file__).resolve().parent.parent
ROOT, NODE_B, NODE_C = MESH
HOSTS = {ROOT: "lab-a", MCUBOOT: "lab-a", NODE_B: "lab-b", NODE_C: "lab-b"}
BANNER = f"{PROVISIONING}::test_provisioned_board_prints_its_boot_banner"
STALE_S = 3.0  # the heartbeat bound of these runs (DFUHIL_PLACE_STALE_S)

pytestmark = [
    pytest.mark.skipif(
        ser2netproc.ser2net_binary() is None, reason="ser2net missing: run `make lab-setup`"
    ),
    pytest.mark.skipif(
        not (REPO / "firmware" / "virtual" / "keys").is_dir(),
        reason="no sample firmware: run `make firmware`",
    ),
]


def place_of(board: str) -> str:
    return f"e2e-{board}"


@dataclass
class Lab:
    """The lab hosts' side (farm, coordinator, exporters) and the CI side's boards file."""

    labgrid: LabgridLab
    boards: Path  # the CI side's boards file
    exporter_files: dict[str, Path]

    def observer(self) -> LabgridClient:
        """A client of our own to look at (or hold) places, as another labgrid user."""
        return LabgridClient(self.labgrid.address, identity="dfuhil-e2e-observer")


def ci_boards(path: Path, coordinator: str) -> Path:
    """The shipped entries of the four boards, each with its place and lab host, and the
    coordinator; the lab hosts' farm serves the same file (``sim serve`` ignores places)."""
    entries = subset(*HOSTS)
    for entry in entries:
        entry["place"] = place_of(entry["name"])
        entry["lab_host"] = HOSTS[entry["name"]]
    write_farm(path, entries, time_scale=TIME_SCALE)
    path.write_text(f"coordinator: {coordinator}\n{path.read_text()}")
    return path


def dfuhil(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LG_COORDINATOR"}
    result = subprocess.run(
        [sys.executable, "-m", "dfuhil", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("lab")
    with labgrid_lab(work / "labgrid") as labgrid:
        boards = ci_boards(work / "ci.yaml", labgrid.address)
        state = work / "farm" / "state.json"
        with FarmProcess(boards, state, log_dir=work / "farm"):
            files = {}
            for host in sorted(set(HOSTS.values())):
                files[host] = work / f"{host}.yaml"
                dfuhil(
                    "farm",
                    "export",
                    str(boards),
                    "--host",
                    host,
                    "--sim-state",
                    str(state),
                    "--out",
                    str(files[host]),
                )
                labgrid.start_exporter(host, files[host])
            dfuhil("farm", "places", str(boards))
            yield Lab(labgrid, boards, files)
    assert labgrid.leftovers() == [], "a labgrid process or its ser2net outlived the lab"


def start(workdir: Path, lab: Lab, *args: str, **env: str) -> subprocess.Popen[str]:
    """``python -m pytest ARGS`` on the CI side's boards file, as a CI job starts it."""
    workdir.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k != "LG_COORDINATOR"}
    return subprocess.Popen(
        pytest_command(workdir, lab.boards, *args),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**environ, "DFUHIL_PLACE_STALE_S": str(STALE_S), **env},
    )


def logs(run: Run) -> str:
    """The run's output and every log file it wrote (owner's and workers')."""
    return run.output + "".join(p.read_text(errors="replace") for p in run.workdir.glob("*.log"))


def outcomes(run: Run) -> dict[str, str]:
    """JUnit test name -> passed / skipped / failed (the last repeat wins)."""
    root = ET.parse(run.workdir / "junit.xml").getroot()
    found = {}
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        verdict = "skipped" if "skipped" in tags else "passed"
        found[case.attrib["name"]] = "failed" if tags & {"failure", "error"} else verdict
    return found


def holder_pid(client: LabgridClient, place: str, process: subprocess.Popen[str]) -> int:
    """The pid of the dfuhil process that acquired ``place`` (its labgrid user names it)."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        acquired = client.call("places")[place]["acquired"]
        found = re.search(r"-dfuhil-(\d+)$", acquired or "")
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"nobody acquired {place}: {process.poll()}")


def console_opened(log: Path, process: subprocess.Popen[str]) -> None:
    """Wait until the run has opened this board's console (its console log says so)."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and "--- opened" in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never opened the console logged in {log}: {process.poll()}")


# --- a run across both lab hosts -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_run(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("lab-run")
    return finish(start(workdir, lab, PROVISIONING, UPGRADE, MESH_HAPPY, "-n", "2"), workdir)


def test_suites_pass_through_places_on_two_lab_hosts(lab_run: Run) -> None:
    assert lab_run.returncode == 0, lab_run.output
    found = outcomes(lab_run)
    assert set(found.values()) == {"passed"}, found
    expected = (
        [f"test_provisioned_board_prints_its_boot_banner[{b}]" for b in HOSTS]
        + [f"test_second_provisioning_skips_every_unchanged_step[{b}]" for b in HOSTS]
        + [f"test_dfu_capable_app_leaves_every_led_off_after_reset[{b}]" for b in MESH]
        # The MCUboot board's upgrade over serial (RFC 2217) and over Bluetooth LE (its lab
        # host's radio, published by the place as ble-hci).
        + [UPGRADE.split("::")[1] + f"[{MCUBOOT}-{way}]" for way in ("serial", "ble")]
        + [MESH_HAPPY.split("::")[1]]
    )
    assert sorted(found) == sorted(expected), found


def test_every_board_was_leased_through_its_place_one_holder_at_a_time(lab_run: Run) -> None:
    leases = lab_run.leases()
    assert {(lease["board"], lease["place"]) for lease in leases} == {
        (board, place_of(board)) for board in HOSTS
    }
    assert_no_two_holders_at_once(leases)
    # The run started no virtual farm of its own: every board was reached on its lab host.
    sim = lab_run.reports / "sim"
    assert not (sim / "state.json").exists() and not list(sim.glob("*.sim.log"))


def test_every_place_is_released_and_its_heartbeat_cleared_after_the_run(
    lab: Lab, lab_run: Run
) -> None:
    with lab.observer() as client:
        places = client.call("places")
    for board in HOSTS:
        place = places[place_of(board)]
        assert not place["acquired"], place
        assert not place["tags"].get("dfuhil_holder"), place


# --- faults ------------------------------------------------------------------------------------


def test_a_place_held_by_a_live_dfuhil_holder_waits_then_names_it(lab: Lab, tmp_path: Path) -> None:
    board = load_farm(lab.boards).board(MCUBOOT)
    with (
        lab.observer() as client,
        PlaceLease(board, client, holder="another CI job", stale_after_s=STALE_S),
    ):
        process = start(tmp_path, lab, BANNER, "--board", MCUBOOT, "--lease-timeout", "3")
        result = finish(process, tmp_path)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.output
    said = f"board {MCUBOOT} (labgrid place {place_of(MCUBOOT)}) is held by another CI job"
    assert said in result.output, result.output  # told while waiting, not only at the end
    failed = [e for name, _, errs in result.cases() for e in errs]
    assert failed, result.cases()
    text = message(failed)
    assert "[infrastructure]" in text and "still held after 3 s by another CI job" in text, text
    # A live heartbeat is never taken over, however small the bound.
    assert f"taking over labgrid place {place_of(MCUBOOT)}" not in logs(result)
    assert not (result.reports / "leases.jsonl").exists()  # nothing ran on the board


def test_a_worker_killed_holding_a_place_is_taken_over_after_the_bound(
    lab: Lab, tmp_path: Path
) -> None:
    victim = NODE_B
    process = start(tmp_path, lab, PROVISIONING, "--board", victim, "-n", "1")
    try:
        with lab.observer() as client:
            worker = holder_pid(client, place_of(victim), process)
        os.kill(worker, signal.SIGKILL)
    finally:
        result = finish(process, tmp_path)
    said = logs(result)
    assert re.search(
        rf"taking over labgrid place {place_of(victim)} from [^\n]*pid {worker} on [^\n]*"
        rf"heartbeat is \d+ s old \(bound {STALE_S:.0f} s\)",
        said,
    ), said
    cases = result.cases()
    crashed = [name for name, _, failed in cases if failed]
    assert len(crashed) == 1 and "died while running" in message(
        [e for _, _, failed in cases for e in failed]
    ), cases
    passed = {name for name, _, failed in cases if not failed}
    assert f"test_second_provisioning_skips_every_unchanged_step[{victim}]" in passed, cases
    assert_no_two_holders_at_once(result.leases())


def test_a_stopped_exporter_leaves_the_listing_and_the_other_hosts_resources_stay(
    lab: Lab,
) -> None:
    """labgrid's client session keeps a deleted resource as an entry without data: the agent
    must list the others, not fail on it (it did: ``KeyError: 'cls'`` broke every lease)."""
    with lab.observer() as client:
        before = {tuple(r["path"]) for r in client.call("resources")}
        assert {path[0] for path in before} == {"lab-a", "lab-b"}
        try:
            lab.labgrid.stop_exporter("lab-b")
            deadline = time.monotonic() + PROCESS_TIMEOUT_S
            while time.monotonic() < deadline:
                after = {tuple(r["path"]) for r in client.call("resources")}
                if all(path[0] == "lab-a" for path in after):
                    break
                time.sleep(0.1)
        finally:
            lab.labgrid.start_exporter("lab-b", lab.exporter_files["lab-b"])
    assert after == {path for path in before if path[0] == "lab-a"}


def test_an_exporter_stopped_mid_test_is_an_infrastructure_error_naming_the_host(
    lab: Lab, tmp_path: Path
) -> None:
    process = start(tmp_path, lab, PROVISIONING, "-n", "2")
    try:
        console_opened(tmp_path / "reports" / "logs" / f"{NODE_B}.log", process)
        lab.labgrid.stop_exporter("lab-b")  # its ser2net too: the console drops mid-test
    finally:
        try:
            result = finish(process, tmp_path)
        finally:
            lab.labgrid.start_exporter("lab-b", lab.exporter_files["lab-b"])
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.output
    cases = result.cases()
    for name, _, failed in cases:
        board = name.split("[")[1].rstrip("]")
        if HOSTS[board] == "lab-a":
            assert not failed, (name, message(failed))  # the other host's boards carry on
    errors = [(name, message(failed)) for name, _, failed in cases if failed]
    assert errors, cases
    for name, text in errors:
        assert "[infrastructure]" in text and "lab host lab-b" in text, (name, text)
    # The attempt the exporter's stop interrupted (retried, then the place had no resources).
    retried = [v for _, props, _ in cases for k, v in props.items() if k.startswith("infra_retry")]
    dropped = [t for t in retried + [t for _, t in errors] if place_of(NODE_B) in t]
    assert any(re.search(r"127\.0\.0\.1:\d+", t) and "lab host lab-b" in t for t in dropped), (
        retried
    )
