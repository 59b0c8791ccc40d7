"""The real `dfuhil` command line, run as a person at the rig runs it: a subprocess each time.

The virtual farm these commands reach is a `dfuhil sim serve` started here with subprocess and
stopped with SIGTERM, exactly as a QA engineer would in two shells.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import queue
import re
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from provisionfarm import (
    DFUHIL,
    NRF52832,
    PROCESS_TIMEOUT_S,
    REPO,
    BoardEntry,
    FirmwareSpec,
    app_start,
    dfu_app_bytes,
    sample_set,
    snapshot,
    write_boards,
    write_hex,
)

from dfuhil.farm.loader import load_farm
from dfuhil.farm.rig import Rig
from dfuhil.formats.mcuboot_trailer import MODES
from dfuhil.procedures.provision import STEPS
from dfuhil.sim.state import load_state

BLINKY_BANNER = r"blinky \d+\.\d+\.\d+ started"


def dfuhil(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DFUHIL, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )


def assert_no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output


class LineReader:
    """Collects a child's output lines on a thread, so a test can wait for one."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None, "start the process with stdout=PIPE"
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}:\n{''.join(self.lines)}")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def rest(self) -> str:
        self._thread.join(timeout=30)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


@dataclass
class Served:
    boards: Path
    state: Path
    process: subprocess.Popen[str]


def start_serve(boards: Path, state: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            *DFUHIL,
            "sim",
            "serve",
            "--boards",
            str(boards),
            "--state-file",
            str(state),
            "--time-scale",
            "0.2",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not state.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"dfuhil sim serve exited ({process.returncode}):\n{out}{err}")
        assert time.monotonic() < deadline, "dfuhil sim serve did not write its state file"
        time.sleep(0.05)
    return process


def stop_serve(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


def write_cli_boards(path: Path) -> Path:
    shipped = sample_set(NRF52832)
    blinky = {**shipped, "application": shipped["application"].with_name("blinky.hex")}
    sets = {
        "dfu52": FirmwareSpec(NRF52832, shipped),
        "blinky52": FirmwareSpec(NRF52832, blinky, banner=BLINKY_BANNER),
    }
    boards = [
        BoardEntry("cli-prov", "dfu52"),
        BoardEntry("cli-blinky", "blinky52"),
        BoardEntry("cli-refuse", "dfu52"),
    ]
    return write_boards(path, sets, boards)[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("cli-farm")
    boards = write_cli_boards(workdir / "boards.yaml")
    state = workdir / "state.json"
    process = start_serve(boards, state)
    yield Served(boards, state, process)
    stop_serve(process)


def board_args(served: Served, board: str) -> list[str | Path]:
    return ["--board", board, "--boards", served.boards, "--sim-state", served.state]


# --- boards check / list ---------------------------------------------------------------------


def test_boards_check_accepts_the_shipped_farm() -> None:
    result = dfuhil("boards", "check", "boards.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"boards.yaml: \d+ boards OK", result.stdout.strip()), result.stdout


MALFORMED = textwrap.dedent(
    """\
    version: 1
    flash_layouts:
      l:
        chip: nRF52832_xxAA
        regions:
          softdevice: {start: 0x0, size: 0x26000}
          application: {start: 0x26000, size: 0x51000}
    boards:
      - name: a
        chip: nRF52999
        probe: {backend: virtual}
        flash_layout: l
      - name: b
        chip: nRF52832_xxAA
        probe: {backend: virtual, snr: 5}
        flash_layuot: l
        leds: {pins: [17, 99]}
    """
)


def test_boards_check_reports_every_problem_as_file_line_field(tmp_path: Path) -> None:
    path = tmp_path / "boards.yaml"
    path.write_text(MALFORMED)
    result = dfuhil("boards", "check", path)
    assert result.returncode == 2
    assert_no_traceback(result.stdout, result.stderr)
    line_re = re.compile(rf"^{re.escape(str(path))}:(\d+): (\S+): (.+)$")
    found = {}
    for line in result.stdout.splitlines():
        match = line_re.match(line)
        assert match, f"not FILE:LINE: field: message: {line!r}"
        found[(int(match[1]), match[2])] = match[3]
    assert "unknown chip 'nRF52999'" in found[(10, "boards[a].chip")]
    assert "did you mean 'flash_layout'" in found[(16, "boards[b].flash_layuot")]
    assert "no GPIO pin 99" in found[(17, "boards[b].leds.pins[1]")]


def test_boards_check_locates_a_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "boards.yaml"
    path.write_text("version: 1\nboards:\n  - name: a\n   chip: x\n")
    result = dfuhil("boards", "check", path)
    assert result.returncode == 2
    assert_no_traceback(result.stdout, result.stderr)
    assert result.stdout.startswith(f"{path}:4: YAML syntax error"), result.stdout


def test_boards_list_json_is_the_resolved_farm() -> None:
    result = dfuhil("boards", "list", "--json", "boards.yaml")
    assert result.returncode == 0, result.stderr
    boards = json.loads(result.stdout)
    assert [b["name"] for b in boards] == load_farm(REPO / "boards.yaml").names()
    for board in boards:
        assert board["probe"]["backend"] == "virtual"
        for image in board["firmware"]["images"].values():
            assert Path(image["file"]).is_absolute() and Path(image["file"]).is_file()
    # Scripts pick MCUboot boards by upgrade mode: one board per mode ships.
    modes = sorted(b["mcuboot"]["mode"] for b in boards if b["mcuboot"] is not None)
    assert modes == sorted(MODES)


# --- against a running `dfuhil sim serve` ----------------------------------------------------


def test_provision_flashes_then_skips_what_is_already_there(served: Served) -> None:
    first = dfuhil("provision", *board_args(served, "cli-prov"))
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert [ln.split(": ")[1] for ln in lines] == list(STEPS)
    assert "cli-prov: application: done: dfu_app.hex" in first.stdout
    second = dfuhil("provision", *board_args(served, "cli-prov"))
    assert second.returncode == 0, second.stderr
    actions = {ln.split(": ")[1]: ln.split(": ")[2] for ln in second.stdout.splitlines()}
    assert actions == {**dict.fromkeys(STEPS, "skipped"), "reset": "done"}


def test_leds_shows_the_blinking_led_of_a_provisioned_blinky(served: Served) -> None:
    provision = dfuhil("provision", *board_args(served, "cli-blinky"))
    assert provision.returncode == 0, provision.stderr
    result = dfuhil("leds", *board_args(served, "cli-blinky"), "--window", "4")
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result.stdout, result.stderr)
    line = result.stdout.strip()
    assert line.startswith("cli-blinky: LED1 (P0.17): blinking"), line
    assert line.endswith("LED2 (P0.18): off | LED3 (P0.19): off | LED4 (P0.20): off"), line


def test_console_prints_the_boot_banner_and_quits_cleanly_on_ctrl_c(served: Served) -> None:
    assert dfuhil("provision", *board_args(served, "cli-blinky")).returncode == 0
    console = subprocess.Popen(
        [*DFUHIL, "console", *map(str, board_args(served, "cli-blinky"))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out = LineReader(console.stdout)
        out.wait_for(r"^--- cli-blinky on .* Ctrl-C quits ---")
        reset = dfuhil("provision", *board_args(served, "cli-blinky"), "--steps", "reset")
        assert reset.returncode == 0, reset.stderr
        out.wait_for(BLINKY_BANNER)
        console.send_signal(signal.SIGINT)
        code = console.wait(timeout=30)
    finally:
        if console.poll() is None:
            console.kill()
            console.wait()
    assert console.stderr is not None
    stderr = console.stderr.read()
    assert code == 0, stderr
    assert_no_traceback(out.rest(), stderr)


def test_provision_refuses_a_bad_image_before_touching_the_board(
    served: Served, tmp_path: Path
) -> None:
    farm = load_farm(served.boards)
    rig = Rig(farm, load_state(served.state))
    ok = dfuhil("provision", *board_args(served, "cli-refuse"))
    assert ok.returncode == 0, ok.stderr
    early = app_start(NRF52832) - 0x1000
    bad_app = write_hex(tmp_path / "early.hex", (early, dfu_app_bytes(NRF52832, start=early)))
    bad_boards, _ = write_boards(
        tmp_path / "bad.yaml",
        {"bad": FirmwareSpec(NRF52832, {**sample_set(NRF52832), "application": bad_app})},
        [BoardEntry("cli-refuse", "bad")],
    )
    with rig.probe(farm.board("cli-refuse")) as probe:
        before = snapshot(probe)
        result = dfuhil(
            "provision",
            "--board",
            "cli-refuse",
            "--boards",
            bad_boards,
            "--sim-state",
            served.state,
        )
        assert snapshot(probe) == before
    assert result.returncode == 2
    assert_no_traceback(result.stdout, result.stderr)
    assert f"{bad_app}: firmware_sets.bad.application: " in result.stderr
    assert "overlaps softdevice" in result.stderr


def test_sim_serve_removes_its_state_file_on_sigterm(tmp_path: Path) -> None:
    boards = write_cli_boards(tmp_path / "boards.yaml")
    state = tmp_path / "state.json"
    process = start_serve(boards, state)
    served = json.loads(state.read_text())
    assert served["pid"] == process.pid
    assert set(served["boards"]) == {"cli-prov", "cli-blinky", "cli-refuse"}
    assert all(Path(b["serial"]).exists() for b in served["boards"].values())
    code, out, err = stop_serve(process)
    assert code == 0, err
    assert_no_traceback(out, err)
    assert not state.exists()


# --- the rig is not there ----------------------------------------------------------------------


def test_provision_without_a_running_farm_names_the_remedy(tmp_path: Path) -> None:
    missing = tmp_path / "no-farm.json"
    result = dfuhil("provision", "--board", "vdk52832", "--sim-state", missing)
    assert result.returncode == 3
    assert_no_traceback(result.stdout, result.stderr)
    assert "[infrastructure]" in result.stderr
    assert f"no state file {missing}" in result.stderr
    assert "remedy: start it with `dfuhil sim serve" in result.stderr


def test_provision_with_a_dead_farm_behind_the_state_file_says_so(tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": finished.pid, "time_scale": 0.05, "boards": {}}))
    result = dfuhil("provision", "--board", "vdk52832", "--sim-state", state)
    assert result.returncode == 3
    assert_no_traceback(result.stdout, result.stderr)
    assert f"(pid {finished.pid}) is no longer running" in result.stderr
    assert "remedy:" in result.stderr


JLINK_BOARDS = textwrap.dedent(
    """\
    version: 1
    flash_layouts:
      l:
        chip: nRF52832_xxAA
        regions:
          softdevice: {start: 0x0, size: 0x26000}
          application: {start: 0x26000, size: 0x51000}
    firmware_sets:
      app:
        chip: nRF52832_xxAA
        application: {file: '%s'}
    boards:
      - name: dk-bench
        chip: nRF52832_xxAA
        board_type: PCA10040
        probe: {backend: jlink, snr: 682000001}
        serial: {port: /dev/serial/by-id/usb-SEGGER_J-Link_000682000001-if00, baud: 115200}
        firmware: app
        flash_layout: l
    """
)


def segger_library_installed() -> bool:
    return ctypes.util.find_library("jlinkarm") is not None or Path("/opt/SEGGER/JLink").exists()


@pytest.mark.skipif(segger_library_installed(), reason="SEGGER J-Link library is installed here")
@pytest.mark.parametrize("verb", ["provision", "leds"])
def test_jlink_board_without_segger_library_is_an_infrastructure_error(
    tmp_path: Path, verb: str
) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(JLINK_BOARDS % sample_set(NRF52832)["application"])
    result = dfuhil(verb, "--board", "dk-bench", "--boards", path)
    assert result.returncode == 3
    assert_no_traceback(result.stdout, result.stderr)
    assert "[infrastructure] board dk-bench" in result.stderr
    assert "(-101)" in result.stderr
    assert "J-Link Software and Documentation Pack" in result.stderr
