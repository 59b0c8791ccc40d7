"""labgrid places and place leases against a real labgrid-coordinator on loopback.

A tiny starter here runs ``labgrid-coordinator`` and ``labgrid-exporter`` from .venv-labgrid (the
full lab harness is tests/labgrid_lab.py); every process is stopped by its pid. The exporter
publishes each board's group with a ``NetworkSerialPort`` named console and a ``NetworkService``
named probe (what a lab host's exporter publishes for it), so no ser2net is needed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.farm.labgrid_client import LabgridClient
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import Farm
from dfuhil.farm.place_lease import HEARTBEAT, HOLDER, PlaceLease
from dfuhil.farm.places import check_places, sync_places
from tests.farmgen import pytest_command, subset, write_farm
from tests.labgrid_lab import free_port, labgrid_bin

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 30.0  # bound for a process to come up; never a speed claim
BOARDS = ("vdk52840-swap-move", "vdk52832")

pytestmark = pytest.mark.timeout(120)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _process(args: list[str], cwd: Path, log: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    with (cwd / log).open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    try:
        yield proc
    finally:
        _stop(proc)


class Lab:
    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp = tmp
        self.address = f"127.0.0.1:{port}"
        self._stack = contextlib.ExitStack()

    def exporter(self, host: str, boards: list[str]) -> subprocess.Popen[bytes]:
        """A lab host publishing ``boards``' groups (console, probe) on loopback."""
        lines = []
        for index, board in enumerate(boards):
            lines += [
                f"{board}:",
                "  console:",
                "    cls: NetworkSerialPort",
                "    host: 127.0.0.1",
                f"    port: {4000 + index}",
                "  probe:",
                "    cls: NetworkService",
                "    address: 127.0.0.1",
                f"    port: {5000 + index}",
                "    username: ''",
            ]
        config = self.tmp / f"exporter-{host}.yaml"
        config.write_text("\n".join(lines) + "\n")
        proc = self._stack.enter_context(
            _process(
                [labgrid_bin("labgrid-exporter"), "-c", self.address, "-n", host, str(config)],
                self.tmp,
                f"exporter-{host}.log",
            )
        )
        with LabgridClient(self.address) as client:
            _wait(lambda: {r["path"][1] for r in client.call("resources")} >= set(boards))
        return proc

    def close(self) -> None:
        self._stack.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within the wait bound"
        time.sleep(0.1)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    port = free_port()
    with _process(
        [labgrid_bin("labgrid-coordinator"), "-l", f"127.0.0.1:{port}"], tmp_path, "coordinator.log"
    ):
        _wait(lambda: _listening(port))
        lab = Lab(tmp_path, port)
        try:
            yield lab
        finally:
            lab.close()


def _farm(tmp: Path, lab: Lab, **changes: dict[str, Any]) -> Farm:
    boards = subset(*BOARDS)
    for entry in boards:
        entry["place"] = f"place-{entry['name']}"
        entry["lab_host"] = "lab-a"
        entry.update(changes.get(entry["name"], {}))
    path = write_farm(tmp / "boards.yaml", boards, time_scale=0.1)
    text = path.read_text()
    path.write_text(f"coordinator: {lab.address}\n{text}")
    return load_farm(path)


def _dfuhil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfuhil", *args], capture_output=True, text=True, timeout=60
    )


def _places(lab: Lab) -> dict[str, Any]:
    with LabgridClient(lab.address) as client:
        places: dict[str, Any] = client.call("places")
        return places


# -- dfuhil farm places ----------------------------------------------------------------------


def test_farm_places_creates_then_changes_nothing_then_updates(lab: Lab, tmp_path: Path) -> None:
    farm = _farm(tmp_path, lab)
    first = _dfuhil("farm", "places", str(farm.path))
    assert first.returncode == 0, first.stderr
    assert "place-vdk52832: created (board vdk52832)" in first.stdout
    assert "place-vdk52832: matches lab-a/vdk52832/*" in first.stdout
    place = _places(lab)["place-vdk52840-swap-move"]
    assert place["matches"] == ["lab-a/vdk52840-swap-move/*"]
    assert place["tags"]["chip"] == "nRF52840_xxAA"
    assert place["tags"]["roles"] == ",".join(farm.board("vdk52840-swap-move").roles)
    # labgrid's own client sees the same place (interop, not just our agent's view).
    shown = subprocess.run(
        [labgrid_bin("labgrid-client"), "-x", lab.address, "-p", "place-vdk52832", "show"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "lab-a/vdk52832/*" in shown.stdout and "chip=nRF52832_xxAA" in shown.stdout

    again = _dfuhil("farm", "places", str(farm.path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines() == [f"{lab.address}: 2 places up to date"]

    moved = _farm(tmp_path, lab, vdk52832={"lab_host": "lab-b", "roles": ["provisioning"]})
    third = _dfuhil("farm", "places", str(moved.path))
    assert "place-vdk52832: match lab-a/vdk52832/* removed" in third.stdout
    assert "place-vdk52832: matches lab-b/vdk52832/*" in third.stdout
    assert "place-vdk52832: tags roles=provisioning" in third.stdout
    assert "vdk52840-swap-move" not in third.stdout
    assert _places(lab)["place-vdk52832"]["matches"] == ["lab-b/vdk52832/*"]


def test_farm_places_coordinator_down_is_a_clear_error(tmp_path: Path) -> None:
    dead = Lab(tmp_path, free_port())
    farm = _farm(tmp_path, dead)
    result = _dfuhil("farm", "places", str(farm.path))
    assert result.returncode == InfrastructureError.exit_code
    assert f"labgrid coordinator at {dead.address} does not answer" in result.stderr
    assert "labgrid-coordinator -l" in result.stderr and "Traceback" not in result.stderr


# -- checks before any board is touched ------------------------------------------------------


def test_check_names_missing_place_no_resources_and_wrong_tags(lab: Lab, tmp_path: Path) -> None:
    farm = _farm(tmp_path, lab)
    with LabgridClient(lab.address) as client:
        with pytest.raises(InputError) as missing:
            check_places(farm, list(farm.boards), client)
        text = str(missing.value)
        assert "place 'place-vdk52832' does not exist" in text
        assert f"run `dfuhil farm places {farm.path}`" in text
        assert "boards[vdk52840-swap-move].place" in text and missing.value.exit_code == 2

        sync_places(farm, client)
        with pytest.raises(InputError) as unmatched:  # no exporter of lab-a is up
            check_places(farm, list(farm.boards), client)
        assert "'place-vdk52832' matches no resources (lab-a/vdk52832/*)" in str(unmatched.value)
        assert "no exporter of lab host 'lab-a' publishes group 'vdk52832'" in str(unmatched.value)

        lab.exporter("lab-a", list(BOARDS))
        check_places(farm, list(farm.boards), client)  # all well now: no error

        client.call("set_tags", place="place-vdk52832", tags={"chip": "nRF52833_xxAA"})
        with pytest.raises(InputError) as tags:
            check_places(farm, list(farm.boards), client)
        text = str(tags.value)
        assert "boards[vdk52832].place" in text and "'place-vdk52832' tags disagree" in text
        assert "chip='nRF52833_xxAA' (boards.yaml: 'nRF52832_xxAA')" in text
        assert "vdk52840-swap-move" not in text


# -- leases ----------------------------------------------------------------------------------


def _lease(farm: Farm, client: LabgridClient, **kwargs: Any) -> PlaceLease:
    return PlaceLease(farm.board("vdk52832"), client, **kwargs)


def test_acquire_renews_heartbeat_resolves_endpoints_and_release_clears(
    lab: Lab, tmp_path: Path
) -> None:
    farm = _farm(tmp_path, lab)
    lab.exporter("lab-a", list(BOARDS))
    with LabgridClient(lab.address) as client:
        sync_places(farm, client)
        lease = _lease(farm, client, holder="test run", stale_after_s=1.5)
        with lease:
            place = client.call("places")["place-vdk52832"]
            assert place["acquired"] == client.name
            assert place["tags"][HOLDER].startswith(f"test run, pid {os.getpid()} on ")
            first = float(place["tags"][HEARTBEAT])
            _wait(lambda: float(client.call("places")["place-vdk52832"]["tags"][HEARTBEAT]) > first)
            assert lease.endpoints is not None
            assert lease.endpoints.host == "lab-a" and lease.endpoints.place == "place-vdk52832"
            assert lease.endpoints.serial_url == "rfc2217://127.0.0.1:4001"
            assert lease.endpoints.probe == "127.0.0.1:5001"
        assert not lease.held
        place = client.call("places")["place-vdk52832"]
        assert place["acquired"] is None
        assert HOLDER not in place["tags"] and HEARTBEAT not in place["tags"]
        assert place["tags"]["chip"] == "nRF52832_xxAA"  # the board's own tags stay


HOLDER_SCRIPT = """
import sys, time
from dfuhil.farm.labgrid_client import LabgridClient
from dfuhil.farm.loader import load_farm
from dfuhil.farm.place_lease import PlaceLease
farm = load_farm(sys.argv[1])
client = LabgridClient(farm.coordinator)
lease = PlaceLease(farm.board("vdk52832"), client, holder="other run", stale_after_s=2.0)
lease.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_live_holder_blocks_past_the_bound_and_a_killed_one_is_taken_over(
    lab: Lab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    farm = _farm(tmp_path, lab)
    lab.exporter("lab-a", list(BOARDS))
    with LabgridClient(lab.address) as client:
        sync_places(farm, client)
    other = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(farm.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == "held\n"
        told: list[str] = []
        with LabgridClient(lab.address) as client:
            # Alive, it renews its heartbeat: waiting twice the bound does not take it over.
            lease = _lease(farm, client, timeout_s=4.0, stale_after_s=2.0, on_wait=told.append)
            with pytest.raises(InfrastructureError) as waited:
                lease.acquire()
            assert f"other run, pid {other.pid} on " in str(waited.value)
            assert "still held after 4 s" in str(waited.value)
            assert len(told) == 1 and f"held by other run, pid {other.pid}" in told[0]

            other.send_signal(signal.SIGKILL)
            other.wait()
            with caplog.at_level("WARNING", logger="dfuhil.farm.place_lease"):
                lease = _lease(farm, client, timeout_s=30.0, stale_after_s=2.0)
                with lease:
                    assert client.call("places")["place-vdk52832"]["acquired"] == client.name
            takeover = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
            assert len(takeover) == 1
            assert f"from other run, pid {other.pid} on " in takeover[0]
            assert "heartbeat is" in takeover[0] and "(bound 2 s)" in takeover[0]
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_place_held_by_a_person_is_never_taken_over(lab: Lab, tmp_path: Path) -> None:
    farm = _farm(tmp_path, lab)
    lab.exporter("lab-a", list(BOARDS))
    with LabgridClient(lab.address) as client:
        sync_places(farm, client)
        human = subprocess.run(
            [labgrid_bin("labgrid-client"), "-x", lab.address, "-p", "place-vdk52832", "acquire"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "LG_USERNAME": "alice", "LG_HOSTNAME": "desk"},
        )
        assert human.returncode == 0, human.stderr
        told: list[str] = []
        lease = _lease(farm, client, timeout_s=3.0, stale_after_s=0.5, on_wait=told.append)
        with pytest.raises(InfrastructureError) as waited:
            lease.acquire()
        assert "desk/alice (no dfuhil heartbeat: a labgrid-client user)" in str(waited.value)
        assert "never taken over" in told[0]
        assert client.call("places")["place-vdk52832"]["acquired"] == "desk/alice"


def test_coordinator_gone_mid_session_is_an_infrastructure_error(tmp_path: Path) -> None:
    port = free_port()
    coordinator = subprocess.Popen(
        [labgrid_bin("labgrid-coordinator"), "-l", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        address = f"127.0.0.1:{port}"
        _wait(lambda: _listening(port))
        with LabgridClient(address) as client:
            client.call("places")
            _stop(coordinator)
            with pytest.raises(InfrastructureError) as gone:
                client.call("places")
            assert f"labgrid coordinator at {address} does not answer" in str(gone.value)
    finally:
        _stop(coordinator)


# -- the pytest layer and `dfuhil boards list` -----------------------------------------------


def test_a_run_stops_before_any_board_when_a_place_is_missing(lab: Lab, tmp_path: Path) -> None:
    farm = _farm(tmp_path, lab)
    work = tmp_path / "run"
    result = subprocess.run(
        pytest_command(work, farm.path, "suites/test_provisioning.py", "--board", "vdk52832"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "labgrid place 'place-vdk52832' does not exist" in out
    assert "dfuhil farm places" in out
    assert "place-vdk52840-swap-move" not in out  # only the selected board's place is checked
    # Nothing was started or leased: no virtual farm state, no lease record.
    assert not (work / "reports" / "sim" / "state.json").exists()
    assert not (work / "reports" / "leases.jsonl").exists()


def test_boards_list_says_where_boards_live_and_who_holds_them(lab: Lab, tmp_path: Path) -> None:
    farm = _farm(tmp_path, lab)
    lab.exporter("lab-a", list(BOARDS))
    with LabgridClient(lab.address) as client:
        sync_places(farm, client)
        with _lease(farm, client, holder="nightly run"):
            listed = _dfuhil("boards", "list", "--json", str(farm.path))
        assert listed.returncode == 0, listed.stderr
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert rows["vdk52832"]["lab_host"] == "lab-a"
        assert rows["vdk52832"]["place"] == "place-vdk52832"
        assert rows["vdk52832"]["held_by"].startswith(f"nightly run, pid {os.getpid()} on ")
        assert rows["vdk52840-swap-move"]["held_by"] is None
        table = _dfuhil("boards", "list", str(farm.path)).stdout
        assert "lab-a, place place-vdk52832" in table
    dead = Lab(tmp_path, free_port())
    moved = _farm(tmp_path, dead)
    listed = _dfuhil("boards", "list", str(moved.path))
    assert listed.returncode == 0, listed.stderr
    assert f"unknown: labgrid coordinator at {dead.address} does not answer" in listed.stdout


def test_a_place_taken_while_held_is_noticed_and_an_infrastructure_error(
    lab: Lab, tmp_path: Path
) -> None:
    farm = _farm(tmp_path, lab)
    lab.exporter("lab-a", list(BOARDS))
    with LabgridClient(lab.address) as client:
        sync_places(farm, client)
        lease = _lease(farm, client, holder="test run", stale_after_s=1.5)
        lease.acquire()
        try:
            kick = ["-p", "place-vdk52832", "release", "--kick"]
            kicked = subprocess.run(
                [labgrid_bin("labgrid-client"), "-x", lab.address, *kick],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "LG_USERNAME": "bob", "LG_HOSTNAME": "desk"},
            )
            assert kicked.returncode == 0, kicked.stderr
            _wait(lambda: lease.lost is not None)
            with pytest.raises(InfrastructureError) as lost:
                lease.check_held()
            assert "place place-vdk52832 was taken from this run (now: nobody)" in str(lost.value)
        finally:
            lease.release()
        assert client.call("places")["place-vdk52832"]["acquired"] is None


def test_a_coordinator_that_never_answers_is_an_error_not_a_hang() -> None:
    with socket.socket() as silent:  # accepts TCP (kernel backlog), never speaks gRPC
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(InfrastructureError) as silence:
            LabgridClient(address)
    assert f"labgrid coordinator at {address} does not answer" in str(silence.value)
    assert "remedy: start it (labgrid-coordinator -l HOST:PORT)" in str(silence.value)


def test_a_stopped_coordinator_mid_session_is_an_error_not_a_hang(tmp_path: Path) -> None:
    port = free_port()
    with _process(
        [labgrid_bin("labgrid-coordinator"), "-l", f"127.0.0.1:{port}"], tmp_path, "coordinator.log"
    ) as coordinator:
        lab = Lab(tmp_path, port)
        _wait(lambda: _listening(port))
        with LabgridClient(lab.address) as client:
            client.call("places")
            coordinator.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(InfrastructureError) as silence:
                    client.call("add_place", place="x")
            finally:
                coordinator.send_signal(signal.SIGCONT)
        assert f"labgrid coordinator at {lab.address} does not answer" in str(silence.value)
