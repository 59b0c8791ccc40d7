"""`dfuhil report build` (what `make report` runs): the report from allure results with the
project's pinned Allure 3, history kept between runs, and one clear line for each thing that
is missing or wrong. Runs the real command and the real Allure in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfuhil.errors import InfrastructureError, InputError, ProductError
from dfuhil.report.build import MARKER, marker_content
from dfuhil.report.taxonomy import INFRASTRUCTURE, PRODUCT, TEST, category_rules, kind_of

REPO = Path(__file__).resolve().parents[1]
ALLURE = REPO / "node_modules" / ".bin" / "allure"
needs_allure = pytest.mark.skipif(
    not ALLURE.exists(), reason="Allure 3 is not installed: run `make report-setup`"
)

PLAIN_TESTS = """
def test_passes():
    pass

def test_{name}():
    assert {ok}
"""


def results(tmp: Path, *, ok: bool = True, marker: bool = True, name: str = "varies") -> Path:
    """Allure results of a two-test run (allure-pytest itself, no farm), like a suite's."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "test_plain.py").write_text(PLAIN_TESTS.format(name=name, ok=ok))
    folder = tmp / "allure-results"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--alluredir={folder}"],
        cwd=tmp,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert list(folder.glob("*-result.json")), "allure-pytest wrote no results"
    if marker:
        (folder / MARKER).write_text(json.dumps(marker_content()))
    return folder


def report(
    *args: str | Path, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfuhil", "report", "build", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_a_missing_results_folder_is_bad_input_naming_it(tmp_path: Path) -> None:
    done = report("--results", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert str(tmp_path / "nowhere") in line and "run the suites first" in line
    assert not (tmp_path / "out").exists(), "a refused build leaves nothing behind"


def test_an_empty_results_folder_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = report("--results", tmp_path / "empty", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert "holds no test results" in one_line(done.stderr)


def test_without_allure_installed_the_line_says_how_to_get_it(tmp_path: Path) -> None:
    folder = results(tmp_path)
    done = report("--results", folder, "--out", tmp_path / "out", cwd=tmp_path)  # no node_modules
    assert done.returncode == 3
    line = one_line(done.stderr)
    assert "Allure 3 is not installed" in line and "make report-setup" in line


def test_without_node_the_line_says_how_to_get_it(tmp_path: Path) -> None:
    folder = results(tmp_path)
    env = dict(os.environ, PATH=str(tmp_path / "bin-without-node"))
    done = report("--results", folder, "--out", tmp_path / "out", env=env)
    assert done.returncode == 3
    line = one_line(done.stderr)
    assert "Node.js is not installed" in line and "apt-get install -y nodejs npm" in line


@needs_allure
def test_a_run_builds_one_file_and_the_site_and_keeps_history_between_runs(
    tmp_path: Path,
) -> None:
    history = tmp_path / "cache" / "allure-history.jsonl"  # where a CI cache would keep it
    first = report(
        "--results",
        results(tmp_path / "night1"),
        "--out",
        tmp_path / "out",
        env=dict(os.environ, DFUHIL_REPORT_HISTORY=str(history)),
    )
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert f"report: {tmp_path / 'out' / 'report.html'}" in first.stdout
    single = (tmp_path / "out" / "report.html").read_text()
    assert "<script" in single and len(single) > 100_000, "one file with the app inside"
    assert (tmp_path / "out" / "allure-report" / "awesome" / "index.html").exists()
    second = report(
        "--results",
        results(tmp_path / "night2", ok=False),
        "--out",
        tmp_path / "out",
        "--history",
        history,
    )
    assert second.returncode == 0, second.stderr
    nights = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    assert len(nights) == 2, "each build adds its run to the history"
    data = tmp_path / "out" / "allure-report" / "awesome" / "data" / "test-results"
    by_name = {r["name"]: r for r in (json.loads(p.read_text()) for p in data.glob("*.json"))}
    assert by_name["test_varies"]["status"] == "failed"
    assert by_name["test_varies"]["transition"] == "regressed", "a new failure since last night"
    assert by_name["test_passes"].get("transition") in (None, "", "fixed")


@needs_allure
def test_results_from_an_older_dfuhil_build_with_one_warning(tmp_path: Path) -> None:
    done = report("--results", results(tmp_path, marker=False), "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    line = one_line(done.stderr)
    assert "older dfuhil" in line and "make regression" in line
    assert (tmp_path / "out" / "report.html").exists()


@needs_allure
def test_a_corrupt_history_is_set_aside_and_the_report_still_built(tmp_path: Path) -> None:
    history = tmp_path / "out" / "history.jsonl"
    history.parent.mkdir()
    history.write_text('{"uuid": "a"}\n{not json at all\n')
    done = report("--results", results(tmp_path), "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    line = one_line(done.stderr)
    assert "corrupt history file" in line and "moved to" in line
    aside = list((tmp_path / "out").glob("history.jsonl.corrupt-*"))
    assert len(aside) == 1 and "not json" in aside[0].read_text()
    assert all(json.loads(x) for x in history.read_text().splitlines() if x.strip())


def test_failures_are_categorised_by_the_error_taxonomy_not_by_their_words() -> None:
    assert kind_of(InfrastructureError("probe 682000001 gone", "replug it")) == INFRASTRUCTURE
    assert kind_of(ProductError("the board booted the old image")) == PRODUCT
    assert kind_of(AssertionError("[infrastructure] looks like the rig")) == PRODUCT
    assert kind_of(InputError("boards.yaml: bad")) == "input"
    assert kind_of(RuntimeError("probe unplugged")) == TEST
    with pytest.raises(pytest.fail.Exception) as failed:
        pytest.fail("no device page")
    assert kind_of(failed.value) == PRODUCT
    names = [rule["name"] for rule in category_rules()]
    assert names[0].startswith("Flaky") and any(n.startswith("Infrastructure") for n in names)
    assert all(
        rule["matchers"] == {"labels": {"failure": rule["id"].removeprefix("dfuhil-")}}
        for rule in category_rules()[1:]
    ), "each kind's category matches the label the pytest layer sets, never a message"
