"""Infrastructure faults on the virtual farm: retried, never a product failure, quarantined.

Each run is a real ``python -m pytest suites/test_provisioning.py`` on two shipped boards (fast
time scale), with tests/infra_fault.py closing one board's console port on the host side (the
console's own "serial port vanished" InfrastructureError follows). What the tests read is the
run's own evidence: exit code, JUnit properties, allure results, the lease record, the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from farmgen import pytest_command
from provisionfarm import REPO
from ruamel.yaml import YAML
from test_parallel import PROVISIONING, Run, farm, finish

from dfuhil.errors import InfrastructureError, ProductError
from dfuhil.report.taxonomy import INFRASTRUCTURE, PRODUCT, infrastructure_cause, kind_of
from fixtures.retry import Pool

FAULTY = "vdk52840-swap-move"  # a text console: its banner test reads the port
OTHER = "vdk52832"
BANNER = "test_provisioned_board_prints_its_boot_banner"


def run(workdir: Path, boards: Path, fault: str, *args: str) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "DFUHIL_TEST_PORT_FAULT": fault}
    process = subprocess.Popen(
        pytest_command(workdir, boards, PROVISIONING, "-p", "infra_fault", *args),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return finish(process, workdir)


def allure_results(run: Run, name: str) -> list[dict[str, Any]]:
    results = [json.loads(p.read_text()) for p in (run.workdir / "allure").glob("*-result.json")]
    return sorted((r for r in results if r["name"].startswith(name)), key=lambda r: r["start"])


def test_a_port_lost_once_is_retried_and_the_retry_passes(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", FAULTY, OTHER)
    run_ = run(tmp_path, boards, f"{FAULTY}:1", "-k", BANNER)
    assert run_.returncode == 0, run_.output
    props = {name: p for name, p, _ in run_.cases()}
    retried = props[f"{BANNER}[{FAULTY}]"]["infra_retry"]
    assert f"attempt 1: [infrastructure] board {FAULTY}: serial port" in retried, retried
    assert "infra_retry" not in props[f"{BANNER}[{OTHER}]"]
    assert "failure" not in props[f"{BANNER}[{FAULTY}]"]  # the first attempt's label is not kept
    # Allure: two tries of one test (same history id), the failed one labelled infrastructure.
    tries = [t for t in allure_results(run_, BANNER) if FAULTY in json.dumps(t["parameters"])]
    assert [t["status"] for t in tries] == ["broken", "passed"], tries
    assert len({t["historyId"] for t in tries}) == 1
    assert {"name": "failure", "value": "infrastructure"} in tries[0]["labels"]
    # The lease and the console were let go between the attempts and taken afresh.
    assert [lease["board"] for lease in run_.leases()].count(FAULTY) == 2
    assert f"retried: {FAULTY}: 1 attempt(s) after an infrastructure fault" in run_.output


def test_a_product_failure_is_not_retried(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", FAULTY)
    yaml = YAML(typ="safe", pure=True)
    data = yaml.load(boards.read_text())
    firmware = next(b["firmware"] for b in data["boards"] if b["name"] == FAULTY)
    data["firmware_sets"][firmware]["application"]["banner"] = "a banner this firmware never prints"
    with boards.open("w") as out:
        yaml.dump(data, out)
    run_ = run(tmp_path, boards, "", "-k", BANNER, "--infra-retries", "3")
    assert run_.returncode == 1, run_.output
    [(_, props, failures)] = run_.cases()
    assert failures and "infra_retry" not in props
    assert props["failure"] == "product"
    assert len(allure_results(run_, BANNER)) == 1
    assert [lease["board"] for lease in run_.leases()] == [FAULTY]


# A run in which FAULTY fails every time: its banner test, then its next test, beside OTHER's two.
QUARANTINE_RUN = ("-k", f"{BANNER} or second_provisioning", "--quarantine-after", "1", "-n", "2")


def assert_quarantined_while_the_other_passes(run_: Run) -> None:
    """FAULTY's banner test failed as infrastructure after its retry and the board is
    quarantined; both of OTHER's tests passed (shared by every fault kind's quarantine test)."""
    assert run_.returncode == 1, run_.output
    cases = {name: (props, failed) for name, props, failed in run_.cases()}
    props, failed = cases[f"{BANNER}[{FAULTY}]"]
    assert failed and props["failure"] == "infrastructure" and "infra_retry" in props
    others = [(name, failed) for name, (_, failed) in cases.items() if OTHER in name]
    assert len(others) == 2 and not [name for name, failed in others if failed], others
    assert f"QUARANTINED: board {FAULTY} quarantined" in run_.output


def test_a_board_that_keeps_failing_is_quarantined_and_the_other_carries_on(
    tmp_path: Path,
) -> None:
    boards = farm(tmp_path / "boards.yaml", FAULTY, OTHER)
    run_ = run(
        tmp_path,
        boards,
        f"{FAULTY}:99",
        *QUARANTINE_RUN,
    )
    assert_quarantined_while_the_other_passes(run_)
    root = ET.parse(run_.workdir / "junit.xml")
    skipped = [
        s.attrib["message"]
        for case in root.iter("testcase")
        if FAULTY in case.attrib["name"] and "second" in case.attrib["name"]
        for s in case.iter("skipped")
    ]
    assert skipped and f"board {FAULTY} quarantined after 1 infrastructure failures" in skipped[0]
    assert "serial port" in skipped[0]
    assert f"QUARANTINED: board {FAULTY} quarantined" in run_.output
    [skip] = [r for r in allure_results(run_, "test_second") if r["status"] == "skipped"]
    labels = {(label["name"], label["value"]) for label in skip["labels"]}
    assert {("quarantined", FAULTY), ("board", FAULTY)} <= labels


def test_quarantine_counts_failures_per_board_and_blames_the_named_board() -> None:
    pool = Pool(retries=1, quarantine_after=2)
    error = InfrastructureError("serial port /dev/pts/9 vanished", "replug it", board="a")
    assert pool.fault(frozenset({"a", "b"}), error) == {}
    assert set(pool.fault(frozenset({"a"}), error)) == {"a"}
    assert "b" not in pool.quarantined and "b" not in pool.faults
    unnamed = InfrastructureError("the farm died", "restart it")
    assert pool.fault(frozenset({"c", "d"}), unnamed) == {}
    assert Pool(retries=1, quarantine_after=0).fault(frozenset({"a"}), error) == {}


@pytest.mark.parametrize("value", ["-1", "two"])
def test_bad_retry_options_are_usage_errors(tmp_path: Path, value: str) -> None:
    command = pytest_command(tmp_path, REPO / "boards.yaml", "--co", "-q")
    out = subprocess.run(
        [*command, "-o", f"infra_retries={value}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 4, out.stdout + out.stderr
    assert "infra_retries" in out.stderr or "give 0 or more" in out.stderr


def caused(outer: type[BaseException]) -> BaseException:
    try:
        try:
            raise InfrastructureError("probe 682000001 gone", "replug it", board="a")
        except InfrastructureError as rig:
            raise outer("what the test saw") from rig
    except BaseException as exc:
        return exc
    raise AssertionError("unreachable")


def test_an_error_caused_by_the_rig_is_the_rigs_but_a_product_failure_never_is() -> None:
    assert kind_of(caused(RuntimeError)) == INFRASTRUCTURE
    assert infrastructure_cause(caused(RuntimeError)) is not None
    assert kind_of(caused(AssertionError)) == PRODUCT  # an assertion about the board: product
    assert infrastructure_cause(caused(ProductError)) is None
    assert infrastructure_cause(RuntimeError("[infrastructure] looks like it")) is None


def test_retrying_the_runs_last_test_keeps_the_runs_farm(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", FAULTY, OTHER)
    run_ = run(tmp_path, boards, f"{OTHER}:1", "-k", BANNER)  # OTHER's test is the last one
    assert run_.returncode == 0, run_.output
    assert f"retried: {OTHER}: 1 attempt(s)" in run_.output
    # One farm for the run: a farm started again for the retry would have begun the boards'
    # logs afresh, without the provisioning of the board tested first.
    log = (run_.reports / "sim" / f"{FAULTY}.sim.log").read_text()
    assert "reset (system reset by debugger)" in log, log
