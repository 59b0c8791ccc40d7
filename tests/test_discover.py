"""``dfuhil boards discover`` against a virtual farm seen through its own nrfutil, as a lab PC
sees J-Links: a farm file that matches exits 0; deliberate drift (a probe missing, one no board
describes, a wrong chip, a moved serial port) exits 1 naming each, and ``--write`` drafts the
new probe's entry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from dfuhil.farm.discover import Attached, reconcile
from dfuhil.farm.loader import load_farm
from dfuhil.sim.nrfutil import STATE_ENV, install_shim
from dfuhil.sim.state import SimState
from tests.provisionfarm import NRF51422, BoardEntry, FirmwareSpec, running_farm, write_boards
from tests.provisionfarm import NRF52832 as CHIP

LAYOUT = """\
version: 1
probe_backend: nrfutil
flash_layouts:
  l52: {chip: nRF52832_xxAA, regions: {app: {start: 0x26000, size: 0x51000}}}
  l51: {chip: nRF51422_xxAC, regions: {app: {start: 0x1B000, size: 0x1F000}}}
boards:
"""


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimState]:
    workdir = tmp_path_factory.mktemp("discover-farm")
    sets = {"none": FirmwareSpec(CHIP, {})}
    boards = [BoardEntry(n, "none") for n in ("a", "b", "c")] + [
        BoardEntry("d", "none51", chip=NRF51422)
    ]
    sets["none51"] = FirmwareSpec(NRF51422, {})
    path, _ = write_boards(workdir / "virtual.yaml", sets, boards)
    with running_farm(path, workdir) as state:
        yield state


def real_board(name: str, snr: int, port: str, chip: str = "nRF52832_xxAA") -> str:
    layout = "l51" if chip.startswith("nRF51") else "l52"
    return (
        f"  - {{name: {name}, chip: {chip}, probe: {{snr: {snr}}}, "
        f"serial: {{port: '{port}'}}, flash_layout: {layout}}}\n"
    )


def discover(farm: SimState, boards: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{install_shim(farm.path)}{os.pathsep}{os.environ['PATH']}",
        STATE_ENV: str(farm.path),
    }
    cmd = [sys.executable, "-m", "dfuhil", "boards", "discover", str(boards), "--tools", "nrfutil"]
    return subprocess.run(
        [*cmd, *extra], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_a_farm_file_that_matches_exits_0(farm: SimState, tmp_path: Path) -> None:
    text = LAYOUT + "".join(
        real_board(b.name, b.snr, b.serial, "nRF51422_xxAC" if b.name == "d" else "nRF52832_xxAA")
        for b in farm.boards.values()
    )
    (tmp_path / "boards.yaml").write_text(text)
    run = discover(farm, tmp_path / "boards.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "the rig matches" in run.stdout
    assert run.stdout.count("nrfutil ") == 4


def test_drift_is_named_board_by_board_and_exits_1(farm: SimState, tmp_path: Path) -> None:
    a, b, c, d = (farm.board(n) for n in "abcd")
    text = LAYOUT + (
        real_board("ok", a.snr, a.serial)
        + real_board("wrongchip", b.snr, b.serial, "nRF51422_xxAC")
        + real_board("moved", c.snr, "/dev/ttyACM7")
        + real_board("gone", 683000042, "/dev/ttyACM9")
    )  # d: attached, described by nobody
    (tmp_path / "boards.yaml").write_text(text)
    draft = tmp_path / "draft.yaml"
    run = discover(farm, tmp_path / "boards.yaml", "--write", str(draft))
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert "wrong-chip: board wrongchip: boards.yaml says nRF51422_xxAC" in out
    assert "port-moved: board moved: boards.yaml says serial port /dev/ttyACM7" in out
    assert "missing: board gone: its probe is not attached; plug J-Link 683000042 in" in out
    assert f"undescribed: probe {d.snr}: nRF51422_xxAC on {d.serial}" in out
    assert "board ok" not in out
    entries = YAML(typ="safe").load(draft.read_text())["boards"]
    assert entries == [
        {
            "name": f"nrf51422-{d.snr}",
            "chip": "nRF51422_xxAC",
            "probe": {"backend": "nrfutil", "snr": d.snr},
            "serial": {"port": d.serial, "baud": 115200},
            "flash_layout": "TODO",
        }
    ]


def test_one_jlink_seen_by_two_hosts_is_drift(tmp_path: Path) -> None:
    path = tmp_path / "boards.yaml"
    path.write_text(LAYOUT + real_board("dk", 683000001, "/dev/ttyACM0"))
    seen = [
        Attached(683000001, "nrfutil", ("/dev/ttyACM0",), "NRF52832_xxAA_REV2"),
        Attached(683000001, "pynrfjprog", ("/dev/ttyACM3",), "NRF52832_xxAA_REV2"),
    ]
    (drift,) = reconcile(load_farm(path), seen)
    assert drift.kind == "attached-twice" and "seen twice" in drift.message


def test_without_any_probe_tool_every_board_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "boards.yaml"
    path.write_text(LAYOUT + real_board("dk", 683000001, "/dev/ttyACM0"))
    env = {**os.environ, "PATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "dfuhil", "boards", "discover", str(path), "--tools", "nrfutil"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert run.returncode == 1
    assert "note: nrfutil: not on PATH" in run.stdout and "missing: board dk" in run.stdout


def test_a_virtual_farm_is_reconciled_by_what_its_boards_answer(
    farm: SimState, tmp_path: Path
) -> None:
    a = farm.board("a")
    text = LAYOUT.replace(
        "l51:",
        "l40: {chip: nRF52840_xxAA, regions: {app: {start: 0x27000, size: 0xD0000}}}\n  l51:",
    ) + (
        f"  - {{name: a, chip: nRF52840_xxAA, probe: {{backend: virtual, snr: {a.snr}}}, "
        "flash_layout: l40}\n"
        "  - {name: z, chip: nRF52832_xxAA, probe: {backend: virtual, snr: 900000099}, "
        "flash_layout: l52}\n"
    )
    (tmp_path / "boards.yaml").write_text(text)
    cmd = [sys.executable, "-m", "dfuhil", "boards", "discover", str(tmp_path / "boards.yaml")]
    cmd += ["--tools", "virtual", "--sim-state", str(farm.path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "wrong-chip: board a: boards.yaml says nRF52840_xxAA" in run.stdout
    assert "NRF52832_xxAA" in run.stdout
    assert "missing: board z: its probe is not attached; start the virtual farm" in run.stdout
    assert run.stdout.count("undescribed:") == 3
