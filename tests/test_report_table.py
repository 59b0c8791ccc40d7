"""The per-board table at the end of a run, and the environment a report names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfuhil.farm.loader import load_farm
from dfuhil.report.board_table import BoardRow, last_boot_line, render
from dfuhil.report.identity import environment, firmware_hashes, properties_text

REPO = Path(__file__).resolve().parents[1]

CONSOLE = """\
[2026-12-03 01:00:00.000] --- opened /dev/pts/3 ---
[2026-12-03 01:00:00.100] *** Booting MCUboot v2.1.0 ***
[2026-12-03 01:00:00.200] I: Image version: v1.0.0
[2026-12-03 01:00:00.300] I: smp_svr 1.1.0 running from slot 0 (primary)
[2026-12-03 01:00:01.000] >> SMP IMAGE upload WRITE seq=8 v2 {off: 2929}
[2026-12-03 01:00:02.000] --- closed ---
"""


def test_the_last_boot_line_is_what_the_board_said_when_it_booted_not_dfuhils_notes() -> None:
    assert last_boot_line(CONSOLE).endswith("I: smp_svr 1.1.0 running from slot 0 (primary)")
    assert last_boot_line("--- opened ---\n>> SMP OS reset\n") == ""


def test_the_table_has_one_line_per_board_with_its_counts_and_fits_the_terminal() -> None:
    row = BoardRow("vdk-a", "dfu52")
    for outcome, kind in (("passed", None), ("failed", "product"), ("failed", "infrastructure")):
        row.count(outcome, kind)
    row.seconds, row.last_boot = 12.34, "I: smp_svr 1.1.0 running from slot 0 (primary)" * 3
    text = render([row, BoardRow("vdk-b")], width=80)
    lines = text.splitlines()
    assert lines[0] == "dfuhil: boards in this run"
    assert lines[1].split()[:5] == ["board", "passed", "failed", "infra", "time"]
    assert lines[3].split()[:7] == ["vdk-a", "1", "1", "1", "12.3", "s", "dfu52"]
    assert lines[4].split() == ["vdk-b", "0", "0", "0", "0.0", "s", "-", "-"]
    assert all(len(line) <= 80 for line in lines), text


def test_the_environment_names_tools_probe_backends_and_each_images_sha256() -> None:
    farm = load_farm(REPO / "boards.yaml", check_files=False)
    board = next(b for b in farm.boards if b.firmware is not None and b.firmware.application)
    env = environment([board, board])
    assert env["probe backends"] == "virtual"
    assert env[f"board {board.name}"].startswith(board.chip.name)
    hashes = firmware_hashes(board)
    assert hashes and all(" sha256:" in value for value in hashes.values())
    assert {f"firmware {board.firmware.name} {role}" for role in hashes} <= set(env)  # type: ignore[union-attr]
    assert "pytest" in env and "dfuhil" in env
    text = properties_text({"board a:b": "x=y"})
    assert text == "board\\ a\\:b=x=y\n"


def test_the_boards_and_kind_travel_with_a_report_as_xdist_sends_it_to_the_controller() -> None:
    report = pytest.TestReport(
        "suites/t.py::test_x[vdk-a]", ("t.py", 1, "test_x"), {}, "failed", None, "call"
    )
    report.dfuhil_report = {"boards": {"vdk-a": "dfu52"}, "kind": "infrastructure"}  # type: ignore[attr-defined]
    received = pytest.TestReport._from_json(json.loads(json.dumps(report._to_json())))
    assert received.dfuhil_report == {"boards": {"vdk-a": "dfu52"}, "kind": "infrastructure"}  # type: ignore[attr-defined]
