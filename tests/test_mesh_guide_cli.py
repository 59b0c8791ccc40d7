"""The mesh DFU guide typed at the rig, end to end, on the shipped virtual farm.

Every step is the ``dfuhil`` command a QA engineer runs (separate processes, as at a shell):
keys, package, pre-flight check, provisioning, the transfer through the root's pty, and the
read-back of each node's device page and LEDs. Nothing in between is a Python call into dfuhil,
so this proves the pieces agree with each other over the real wire, not just in the library.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from provisionfarm import DFUHIL, PROCESS_TIMEOUT_S, REPO

from dfuhil.sim.state import FarmProcess, SimState

BOARDS = REPO / "boards.yaml"
ROOT = "vdk52832"
NODES = ("vdk52832", "vdk52832-b", "vdk52832-c")
RELAY = "vdk52833"
TIME_SCALE = 0.05
INSTALLED_V2 = re.compile(r"VERSION .* app version 2 \(")
BLINKY = REPO / "firmware" / "virtual" / "nrf52832" / "dfu_blinky.hex"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimState, Path]]:
    work = tmp_path_factory.mktemp("guide")
    state_file = work / "state.json"
    with FarmProcess(BOARDS, state_file, log_dir=work / "sim", time_scale=TIME_SCALE) as state:
        yield state, state_file


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*DFUHIL, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def at_rig(state_file: Path, verb: str, board: str, *more: str) -> subprocess.CompletedProcess[str]:
    return run(verb, *more, "--board", board, "--boards", BOARDS, "--sim-state", state_file)


def test_the_guide_at_the_command_line(farm: tuple[SimState, Path], tmp_path: Path) -> None:
    _, state_file = farm
    key = tmp_path / "private_key.pem"
    assert run("mesh", "keys", "--gen-key", key).returncode == 0
    shown = run("mesh", "keys", "--show-vk", "hex", key).stdout
    assert re.search(r"^Verification key Qx: [0-9a-f]{64}$", shown, re.M), shown

    for board in (*NODES, RELAY):
        provisioned = at_rig(state_file, "provision", board)
        assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr

    package = tmp_path / "blinky.zip"
    made = run(
        "mesh", "genpkg", package, "--application", BLINKY, "--company-id", "89",
        "--application-id", "1", "--application-version", "2", "--sd-req", "0x0101",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "version" in run("mesh", "show", package).stdout

    fits = run("mesh", "check", package, "--board", ROOT, "--boards", BOARDS,
               "--sim-state", state_file)  # fmt: skip
    assert fits.returncode == 0, fits.stdout + fits.stderr
    relay_check = run("mesh", "check", package, "--board", RELAY, "--boards", BOARDS,
                      "--sim-state", state_file)  # fmt: skip
    assert relay_check.returncode == 2 and "application_id" in relay_check.stdout + (
        relay_check.stderr
    )

    sent = run("mesh", "dfu", "--package", package, "--board", ROOT, "--boards", BOARDS,
               "--sim-state", state_file)  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    # It ends with the truth: every node of the mesh confirmed by its device page, none assumed.
    assert "mesh DFU confirmed on 3 of 3 expected nodes" in sent.stdout, sent.stdout
    for board in NODES:
        assert re.search(rf"^  {re.escape(board)} +confirmed +device page: .* version 2 ",
                         sent.stdout, re.M), sent.stdout  # fmt: skip

    for board in NODES:
        page = ""
        for _ in range(120):  # the bootloader installs after a 30 s (device) rampdown
            page = show_page(state_file, board)
            if INSTALLED_V2.search(page):
                break
            time.sleep(1.0 * TIME_SCALE)
        assert INSTALLED_V2.search(page), page
        leds = at_rig(state_file, "leds", board, "--window", "2")
        assert re.search(r"LED1 \(P0\.17\): blinking", leds.stdout), leds.stdout
    relay_page = show_page(state_file, RELAY)
    assert "app version 1 (" in relay_page and not INSTALLED_V2.search(relay_page), relay_page


def show_page(state_file: Path, board: str) -> str:
    shown = run("devpage", "--show-board", board, "--boards", BOARDS, "--sim-state", state_file)
    return shown.stdout
