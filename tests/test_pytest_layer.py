"""The pytest layer as a user meets it: `python -m pytest suites/...` in a subprocess.

Each run gets its own boards file, reports directory, JUnit XML and allure directory in tmp, so
nothing here writes into the repository's reports/.
"""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from farmgen import pytest_command
from provisionfarm import (
    NRF51422,
    NRF52832,
    PROCESS_TIMEOUT_S,
    REPO,
    BoardEntry,
    FirmwareSpec,
    app_start,
    dfu_app_bytes,
    processes_mentioning,
    running_farm,
    sample_set,
    snapshot,
    stop_processes,
    write_boards,
    write_hex,
)

from dfuhil.farm.rig import Rig
from dfuhil.formats.meshdfu import STARTED_APPLICATION_PATTERN
from dfuhil.procedures.provision import STEPS

SUITE = "suites/test_provisioning.py"
SUITE_TESTS = (
    "test_provisioned_board_prints_its_boot_banner",
    "test_dfu_capable_app_leaves_every_led_off_after_reset",
    "test_second_provisioning_skips_every_unchanged_step",
)
# The sample DFU app speaks mesh serial: the console renders its boot as DEVICE_STARTED.
BANNER_LINE = re.compile(STARTED_APPLICATION_PATTERN)


@dataclass
class Run:
    workdir: Path
    boards: Path
    result: subprocess.CompletedProcess[str]

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def testcases(self) -> dict[str, ET.Element]:
        root = ET.parse(self.workdir / "junit.xml").getroot()
        return {case.attrib["name"]: case for case in root.iter("testcase")}

    def allure_results(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in (self.workdir / "allure").glob("*-result.json")]

    def allure_attachments(self, result: dict[str, Any]) -> dict[str, Path]:
        """Attachment name -> file of one test: its own and its fixtures' (set up, tear down)."""
        found = list(result.get("attachments", []))
        for path in (self.workdir / "allure").glob("*-container.json"):
            container = json.loads(path.read_text())
            if result["uuid"] in container.get("children", []):
                for fixture in container.get("befores", []) + container.get("afters", []):
                    found += fixture.get("attachments", [])
        return {a["name"]: self.workdir / "allure" / a["source"] for a in found}


def run_suite(workdir: Path, boards: Path, *options: str) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    command = pytest_command(workdir, boards, SUITE, *options)
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=False
    )
    # The farm pytest starts publishes its state under --reports-dir: nothing else names it.
    leftovers = processes_mentioning(str(workdir / "reports"))
    stop_processes(leftovers)  # never leave a farm behind, even when the check below fails
    assert not leftovers, f"processes still running for {boards}: {leftovers}"
    return Run(workdir, boards, result)


def two_boards(path: Path, *, second_roles: tuple[str, ...] = ("provisioning", "mesh")) -> Path:
    sets = {
        "dfu52": FirmwareSpec(NRF52832, sample_set(NRF52832)),
        "dfu51": FirmwareSpec(NRF51422, sample_set(NRF51422)),
    }
    boards = [
        BoardEntry("vdk-a", "dfu52", roles=("provisioning", "mesh", "mesh-root")),
        BoardEntry("vdk-b", "dfu51", chip=NRF51422, roles=second_roles),
    ]
    return write_boards(path, sets, boards)[0]


# --- a full run on two boards ------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("full-run")
    return run_suite(workdir, two_boards(workdir / "boards.yaml"))


def test_suite_passes_on_every_board(full_run: Run) -> None:
    assert full_run.result.returncode == 0, full_run.output
    expected = {f"{test}[{board}]" for test in SUITE_TESTS for board in ("vdk-a", "vdk-b")}
    cases = full_run.testcases()
    assert set(cases) == expected
    for name, case in cases.items():
        assert not [c.tag for c in case if c.tag in ("failure", "error", "skipped")], name


def test_junit_carries_board_chip_and_flash_steps(full_run: Run) -> None:
    chips = {"vdk-a": "nRF52832_xxAA", "vdk-b": "nRF51422_xxAC"}
    for name, case in full_run.testcases().items():
        board = name.split("[")[1].rstrip("]")
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        assert props["board"] == board
        assert props["chip"] == chips[board]
        steps = props["flash_steps"].split("; ")
        assert steps[:6] == [f"{s}={a}" for s, a in zip(STEPS, first_actions(name), strict=True)]


def first_actions(test: str) -> list[str]:
    """The first test on a fresh virtual board flashes everything; every later one skips."""
    if test.startswith(SUITE_TESTS[0]):
        return ["skipped", "done", "done", "done", "done", "done"]
    return ["skipped"] * 5 + ["done"]


def test_allure_results_have_board_label_and_console_attachment(full_run: Run) -> None:
    results = full_run.allure_results()
    assert len(results) == 2 * len(SUITE_TESTS)
    for result in results:
        assert result["status"] == "passed", result["name"]
        (board,) = [lb["value"] for lb in result["labels"] if lb["name"] == "board"]
        assert result["name"].endswith(f"[{board}]"), (board, result["name"])
        attachments = full_run.allure_attachments(result)
        assert f"{board} console" in attachments, (result["name"], list(attachments))
        assert f"{board} flash steps" in attachments, (result["name"], list(attachments))
        steps = attachments[f"{board} flash steps"].read_text()
        assert f"{board}: reset: done" in steps
        if result["name"].startswith(SUITE_TESTS[0]):
            console = attachments[f"{board} console"].read_text()
            assert BANNER_LINE.search(console), console


def test_each_board_has_a_console_log_with_its_banner(full_run: Run) -> None:
    logs = full_run.reports / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["vdk-a.log", "vdk-b.log"]
    for log in logs.iterdir():
        assert any(BANNER_LINE.search(line) for line in log.read_text().splitlines()), log


def test_virtual_farm_process_is_gone_and_its_state_file_removed(full_run: Run) -> None:
    sim = full_run.reports / "sim"
    # The farm did run (it wrote its per-board logs) ...
    assert {"vdk-a.sim.log", "vdk-b.sim.log"} <= {p.name for p in sim.iterdir()}
    # ... and is gone (run_suite checks for leftover processes), its state file with it.
    assert not (sim / "state.json").exists()
    assert processes_mentioning(str(full_run.reports)) == []


# --- usage errors --------------------------------------------------------------------------------


def test_unknown_board_is_a_usage_error_naming_the_boards(tmp_path: Path) -> None:
    run = run_suite(tmp_path, two_boards(tmp_path / "boards.yaml"), "--board", "nosuchboard")
    assert run.result.returncode == pytest.ExitCode.USAGE_ERROR, run.output
    assert "no board named 'nosuchboard'; boards there: vdk-a, vdk-b" in run.result.stderr
    assert not (run.reports / "sim").exists(), "a usage error must not start the farm"


def test_malformed_boards_file_is_a_usage_error_with_file_and_line(tmp_path: Path) -> None:
    boards = two_boards(tmp_path / "boards.yaml")
    text = boards.read_text().replace(
        "chip: nRF51422_xxAC\n    board_type", "chip: nRF5X\n    board_type"
    )
    boards.write_text(text)
    line = text.splitlines().index("    chip: nRF5X") + 1
    run = run_suite(tmp_path, boards, "--board", "vdk-a")
    assert run.result.returncode == pytest.ExitCode.USAGE_ERROR, run.output
    assert f"{boards}:{line}: boards[vdk-b].chip: unknown chip 'nRF5X'" in run.result.stderr
    assert "Traceback" not in run.output


# --- a board with a bad firmware set -------------------------------------------------------------


def test_board_whose_app_overlaps_the_softdevice_fails_alone_untouched(tmp_path: Path) -> None:
    early = app_start(NRF52832) - 0x1000
    app = write_hex(tmp_path / "early.hex", (early, dfu_app_bytes(NRF52832, start=early)))
    sets = {
        "dfu52": FirmwareSpec(NRF52832, sample_set(NRF52832)),
        "early52": FirmwareSpec(NRF52832, {**sample_set(NRF52832), "application": app}),
    }
    mesh = ("provisioning", "mesh")
    boards = [BoardEntry("good", "dfu52", roles=mesh), BoardEntry("overlap", "early52", roles=mesh)]
    path, farm = write_boards(tmp_path / "boards.yaml", sets, boards)
    # The farm runs outside pytest (--sim-state), so the board can be read back afterwards.
    with running_farm(path, tmp_path / "farm") as state:
        rig = Rig(farm, state)
        with rig.probe(farm.board("overlap")) as probe:
            before = snapshot(probe)
        run = run_suite(tmp_path / "run", path, "--sim-state", str(state.path))
        with rig.probe(farm.board("overlap")) as probe:
            after = snapshot(probe)
    assert run.result.returncode == pytest.ExitCode.TESTS_FAILED, run.output
    assert after == before, "a refused provisioning changed the board"
    for name, case in run.testcases().items():
        failures = [c for c in case if c.tag in ("failure", "error")]
        if name.endswith("[overlap]"):
            assert failures, f"{name} passed on a board with a bad firmware set"
            message = failures[0].attrib.get("message", "") + (failures[0].text or "")
            assert "refusing to provision overlap" in message
            assert f"{app}: firmware_sets.early52.application" in message
            assert "overlaps softdevice" in message
        else:
            assert name.endswith("[good]") and not failures, name


# --- selection by role ------------------------------------------------------------------------


def test_role_selects_only_the_boards_that_have_it(tmp_path: Path) -> None:
    boards = two_boards(tmp_path / "boards.yaml", second_roles=("provisioning",))
    run = run_suite(tmp_path, boards, "--role", "mesh-root")
    assert run.result.returncode == 0, run.output
    assert set(run.testcases()) == {f"{test}[vdk-a]" for test in SUITE_TESTS}
    assert not (run.reports / "logs" / "vdk-b.log").exists()


def test_role_no_board_has_skips_with_the_reason(tmp_path: Path) -> None:
    run = run_suite(tmp_path, two_boards(tmp_path / "boards.yaml"), "--role", "gateway", "-rs")
    assert run.result.returncode == 0, run.output
    cases = run.testcases()
    assert set(cases) == {f"{test}[no-matching-board]" for test in SUITE_TESTS}
    assert all(case.find("skipped") is not None for case in cases.values())
    assert "matches roles ['gateway']" in run.result.stdout


def test_a_second_run_in_the_same_folder_reports_only_its_own_results(tmp_path: Path) -> None:
    """Allure results of last night's run must not show in tonight's report as tonight's."""
    boards = two_boards(tmp_path / "boards.yaml", second_roles=("provisioning",))
    first = run_suite(tmp_path, boards, "--role", "mesh-root")
    assert first.result.returncode == 0, first.output
    second = run_suite(tmp_path, boards, "--role", "gateway")
    assert second.result.returncode == 0, second.output
    results = [json.loads(p.read_text()) for p in (tmp_path / "allure").glob("*-result.json")]
    assert len(results) == len(second.testcases()), [r["name"] for r in results]
    assert all(r["status"] == "skipped" for r in results), [r["name"] for r in results]
