"""Build the HTML report from allure results with Allure 3 (the npm package ``allure``).

Two outputs from one run of ``allure generate``: the multi-page site (Allure's "awesome"
report, ``<out>/allure-report/awesome/``) and the same report as one self-contained file,
``<out>/report.html``, to mail or archive. Allure's history file (JSON Lines) stays between
runs, by default in ``<out>/history.jsonl``, so trends and new failures show; CI keeps it in a
cache by giving another path.

Everything that can be missing is checked first and named in one line with the way to get it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from dfuhil import __version__
from dfuhil.errors import DfuhilError, InfrastructureError, InputError
from dfuhil.report.taxonomy import category_rules

# Written into the results folder by the pytest layer (fixtures/report.py): which dfuhil wrote
# them, and in which shape. Results without it come from a dfuhil older than the report.
MARKER = "dfuhil-results.json"
SCHEMA = 1
HISTORY_NAME = "history.jsonl"
SETUP_HINT = "run `make report-setup` (npm ci into ./node_modules; needs node and npm)"
BUILD_TIMEOUT_S = 600.0


class ToolMissingError(InfrastructureError):
    """A tool the report needs is not on this machine: one line, what and how to get it."""

    def __init__(self, message: str, remedy: str) -> None:
        self.board = None
        self.remedy = remedy
        DfuhilError.__init__(self, f"{message}: {remedy}")


@dataclass
class Built:
    report: Path  # the self-contained single file
    site: Path  # the multi-page site's index.html
    history: Path
    warnings: list[str] = field(default_factory=list)


def marker_content() -> dict[str, object]:
    return {"dfuhil": __version__, "schema": SCHEMA}


def find_allure(project: Path) -> Path:
    """Allure 3 as the project's setup installs it, never a global one of another version."""
    if shutil.which("node") is None:
        raise ToolMissingError(
            "Node.js is not installed: Allure 3 needs it to build the report",
            "install it (apt-get install -y nodejs npm), then " + SETUP_HINT,
        )
    allure = project / "node_modules" / ".bin" / "allure"
    if not allure.exists():
        raise ToolMissingError(
            f"Allure 3 is not installed in {project / 'node_modules'}", SETUP_HINT
        )
    return allure


def check_results(results: Path) -> list[str]:
    """Refuse a missing or empty results folder; warn about results from an older dfuhil."""
    again = f"run the suites first (make regression, or pytest --alluredir={results})"
    if not results.is_dir():
        raise InputError(f"{results}: no allure results folder: {again}")
    if not any(results.glob("*-result.json")):
        raise InputError(f"{results}: holds no test results (*-result.json): {again}")
    marker = results / MARKER
    try:
        schema = int(json.loads(marker.read_text(encoding="utf-8")).get("schema", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        schema = 0
    if schema < SCHEMA:
        return [
            f"{results}: written by an older dfuhil (no {MARKER} of schema {SCHEMA}): the "
            "report lacks failure categories, board labels and pictures; rerun the suites "
            "with this dfuhil (make regression)"
        ]
    return []


def check_history(history: Path) -> list[str]:
    """A corrupt history file is set aside (trends restart), never a reason to fail."""
    if not history.exists():
        return []
    try:
        for number, line in enumerate(history.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip() and not isinstance(json.loads(line), dict):
                raise ValueError(f"line {number} is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        aside = history.with_name(f"{history.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        history.rename(aside)
        return [
            f"{history}: corrupt history file ({exc}); moved to {aside}: trends and new "
            "failures start again from this run"
        ]
    return []


def allure_config(out: Path, history: Path, name: str) -> dict[str, object]:
    return {
        "name": name,
        "output": str(out / "allure-report"),
        "historyPath": str(history),
        "categories": {"rules": category_rules()},
        "plugins": {
            "awesome": {"options": {"reportName": name, "groupBy": ["board"]}},
            "single": {
                "import": "@allurereport/plugin-awesome",
                "options": {"reportName": name, "singleFile": True, "groupBy": ["board"]},
            },
        },
    }


def build(
    results: Path,
    out: Path,
    *,
    history: Path | None = None,
    project: Path | None = None,
    name: str = "dfuhil nightly",
) -> Built:
    """Check the inputs, run ``allure generate`` and put the single file at ``out/report.html``."""
    project = project if project is not None else Path.cwd()
    history = history if history is not None else out / HISTORY_NAME
    warnings = check_results(results)
    allure = find_allure(project)
    history.parent.mkdir(parents=True, exist_ok=True)
    warnings += check_history(history)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "allure-report", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="dfuhil-allure-") as tmp:
        config = Path(tmp) / "allurerc.json"
        config.write_text(json.dumps(allure_config(out.resolve(), history.resolve(), name)))
        env = dict(os.environ, ALLURE_NO_ANALYTICS="1")
        try:
            done = subprocess.run(
                [str(allure), "generate", "--config", str(config), str(results.resolve())],
                cwd=project,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
                env=env,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ToolMissingError(f"cannot run {allure}: {exc}", SETUP_HINT) from None
    single = out / "allure-report" / "single" / "index.html"
    if done.returncode != 0 or not single.exists():
        said = (done.stderr or done.stdout).strip().splitlines()
        raise InfrastructureError(
            f"allure generate failed (exit {done.returncode}): {said[-1] if said else 'no output'}",
            f"rerun `{allure} generate --config <config> {results}` to see all of it; "
            + SETUP_HINT,
        )
    report = out / "report.html"
    shutil.copyfile(single, report)
    return Built(report, out / "allure-report" / "awesome" / "index.html", history, warnings)
