"""The built report as a person sees it: a run seeded with one passing LED test, one product
failure, one rig failure and one test on two boards, on the virtual farm, through the real
pytest layer; the report built with the project's Allure 3 and opened in headless Chromium.

Set DFUHIL_SCREENS=<folder> to keep screenshots of what the browser showed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from headless import MISSING, Browser, chromium_path
from provisionfarm import (
    NRF52832,
    PROCESS_TIMEOUT_S,
    REPO,
    BoardEntry,
    FirmwareSpec,
    processes_mentioning,
    sample_set,
    stop_processes,
    write_boards,
)

SEED = "tests/report_seed/seed_suite.py"
ALLURE = REPO / "node_modules" / ".bin" / "allure"


@dataclass
class Seeded:
    workdir: Path
    run: subprocess.CompletedProcess[str]
    build: subprocess.CompletedProcess[str]

    @property
    def report(self) -> Path:
        return self.workdir / "out" / "report.html"

    def results(self) -> dict[str, dict[str, object]]:
        found = (json.loads(p.read_text()) for p in (self.workdir / "allure").glob("*-result.json"))
        return {r["name"]: r for r in found}

    def test_id(self, name: str) -> str:
        index = json.loads(
            (self.workdir / "out" / "allure-report" / "test-results.json").read_text()
        )
        return next(i for i, r in index["byId"].items() if r["name"] == name)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    if not ALLURE.exists():
        pytest.skip("Allure 3 is not installed: run `make report-setup`")
    workdir = tmp_path_factory.mktemp("seeded")
    sets = {"dfu52": FirmwareSpec(NRF52832, sample_set(NRF52832))}
    boards = [
        BoardEntry("vdk-a", "dfu52", roles=("seed",)),
        BoardEntry("vdk-b", "dfu52", roles=("other",)),
    ]
    boards_file = write_boards(workdir / "boards.yaml", sets, boards)[0]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            SEED,
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "--boards",
            str(boards_file),
            "--reports-dir",
            str(workdir / "reports"),
            f"--junitxml={workdir / 'junit.xml'}",
            f"--alluredir={workdir / 'allure'}",
            "-o",
            f"log_file={workdir / 'pytest.log'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    leftovers = processes_mentioning(str(workdir / "reports"))
    stop_processes(leftovers)
    assert not leftovers, f"virtual farm still running: {leftovers}"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "dfuhil",
            "report",
            "build",
            "--results",
            str(workdir / "allure"),
            "--out",
            str(workdir / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    return Seeded(workdir, run, build)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if chromium_path() is None:
        pytest.skip(MISSING)
    with Browser(1400, 1000) as opened:
        yield opened


def screenshot(browser: Browser, name: str) -> None:
    folder = os.environ.get("DFUHIL_SCREENS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.screenshot(Path(folder) / f"{name}.png")


def test_the_seeded_run_fails_twice_and_prints_the_board_table(seeded: Seeded) -> None:
    out = seeded.run.stdout
    assert seeded.run.returncode == 1, out + seeded.run.stderr
    assert "2 failed, 2 passed" in out
    table = out[out.index("dfuhil: boards in this run") :]
    rows = {line.split()[0]: line.split()[1:4] for line in table.splitlines() if "vdk-" in line}
    # board: passed, failed, infrastructure
    assert rows["vdk-a"] == ["2", "1", "1"], table
    assert rows["vdk-b"] == ["1", "0", "0"], table
    assert seeded.build.returncode == 0, seeded.build.stderr


def test_results_carry_the_failure_kind_and_the_worker(seeded: Seeded) -> None:
    results = seeded.results()

    def labels(name: str, key: str) -> list[str]:
        found = results[name]["labels"]
        assert isinstance(found, list)
        return [x["value"] for x in found if x["name"] == key]

    assert labels("test_the_rig_fails[vdk-a]", "failure") == ["infrastructure"]
    assert labels("test_the_product_misbehaves[vdk-a]", "failure") == ["product"]
    assert labels("test_leds_are_watched[vdk-a]", "failure") == []
    assert labels("test_leds_are_watched[vdk-a]", "worker") == ["main"]
    assert labels("test_every_board_answers_its_probe", "board") == ["vdk-a", "vdk-b"]
    env = (seeded.workdir / "allure" / "environment.properties").read_text()
    assert "probe\\ backends=virtual" in env
    assert "firmware\\ dfu52\\ application=dfu_app.hex sha256:" in env


def test_junit_carries_every_board_of_a_multi_board_test(seeded: Seeded) -> None:
    root = ET.parse(seeded.workdir / "junit.xml").getroot()
    case = next(c for c in root.iter("testcase") if c.attrib["name"].startswith("test_every"))
    props = [(p.attrib["name"], p.attrib["value"]) for p in case.iter("property")]
    assert [v for k, v in props if k == "board"] == ["vdk-a", "vdk-b"]
    assert [v for k, v in props if k == "probe"] == ["virtual 900000001", "virtual 900000002"]
    assert [v for k, v in props if k == "firmware_set"] == ["dfu52", "dfu52"]


def test_the_report_shows_the_boards(seeded: Seeded, browser: Browser) -> None:
    browser.open(seeded.report.as_uri())
    text = browser.wait_for(
        "document.body.innerText.includes('test_the_rig_fails') && document.body.innerText"
    )
    assert text, f"the report never showed its results: {browser.shown()}"
    assert "vdk-a" in text and "vdk-b" in text
    assert "dfuhil nightly" in text
    screenshot(browser, "report-results")


def test_the_report_shows_infrastructure_and_product_categories_with_their_counts(
    seeded: Seeded, browser: Browser
) -> None:
    browser.open(seeded.report.as_uri() + "#/categories")
    rows = browser.wait_for(
        """(() => {
            const text = document.body.innerText;
            if (!text.includes('Infrastructure failures')) return null;
            return text.split('\\n').map(s => s.trim()).filter(s => s);
        })()"""
    )
    assert rows, f"no categories shown: {browser.shown()}"
    screenshot(browser, "report-categories")

    def count_after(heading: str) -> str:
        index = next(i for i, line in enumerate(rows) if line.startswith(heading))
        return str(rows[index + 1])

    assert count_after("Infrastructure failures") == "1", rows
    assert count_after("Product failures") == "1", rows
    assert not any(line.startswith("Test or framework errors") for line in rows), rows


def test_the_led_picture_is_attached_and_loads(seeded: Seeded, browser: Browser) -> None:
    test_id = seeded.test_id("test_leds_are_watched[vdk-a]")
    browser.open(f"{seeded.report.as_uri()}#/{test_id}/attachments")
    assert browser.wait_for("document.body.innerText.includes('LED timeline')")
    browser.evaluate(
        """[...document.querySelectorAll('*')]
            .filter(e => e.children.length === 0 && e.textContent.trim() === 'LED timeline')
            .forEach(e => e.click())"""
    )
    size = browser.wait_for(
        """(() => {
            const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0);
            return shown.length ? [shown[0].naturalWidth, shown[0].naturalHeight] : null;
        })()"""
    )
    screenshot(browser, "report-led-picture")
    assert size == [900, 380], f"the LED timeline did not load as the 900x380 PNG: {size}"
