"""``dfuhil mcuboot ...`` against the shipped virtual MCUboot boards, typed as at a shell.

One farm process serves a swap-move board (serial + UDP) for the module; each test starts from
a freshly provisioned board. The verbs run in-process through ``dfuhil.cli.main`` (what the
console script calls) and one of them in a separate process, so exit codes, messages and the
absence of tracebacks are what a person sees.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from simfarm import shipped_subset

from dfuhil.cli import main
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.rig import Rig
from dfuhil.links.smp_link import SmpLink
from dfuhil.procedures.image_sign import sign_build
from dfuhil.procedures.mcuboot_dfu import image_info
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.state import FarmProcess, SimState

REPO = Path(__file__).resolve().parents[1]
BOARD = "vdk52840-swap-move"
TIME_SCALE = 0.05
BANNER = "Booting Zephyr OS build"


def farm_subset(path: Path, names: list[str], time_scale: float) -> Path:
    """The shipped boards.yaml with only ``names``, file paths made absolute."""
    return shipped_subset(path, names, time_scale)


@dataclass
class Farm:
    boards: Path
    state_file: Path
    state: SimState
    board: BoardSpec

    def args(self, *verb: str | Path) -> list[str]:
        return [str(v) for v in verb] + [
            "--board", BOARD, "--boards", str(self.boards), "--sim-state", str(self.state_file),
        ]  # fmt: skip


@pytest.fixture(scope="module")
def cli_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    work = tmp_path_factory.mktemp("mcuboot-cli")
    if not (REPO / "firmware" / "virtual" / "keys").is_dir():
        pytest.fail("no sample firmware: run `make firmware` first")
    boards = farm_subset(work / "boards.yaml", [BOARD], TIME_SCALE)
    state_file = work / "state.json"
    with FarmProcess(boards, state_file, log_dir=work / "sim", time_scale=TIME_SCALE) as state:
        yield Farm(boards, state_file, state, load_farm(boards).board(BOARD))


@pytest.fixture
def fresh(cli_farm: Farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Farm:
    """The board freshly provisioned and booted; reports/ goes to the test's tmp dir."""
    monkeypatch.chdir(tmp_path)
    rig = Rig(load_farm(cli_farm.boards), cli_farm.state)
    console = rig.console(cli_farm.board, open_timeout=5.0)
    with console, rig.probe(cli_farm.board) as probe:
        Provisioner(ProvisioningPlan.for_board(cli_farm.board), probe).run(STEPS)
        console.expect(BANNER, timeout=20)
    return cli_farm


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def slot_lines(output: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"^\s+0\s+(\d)\s+.*$", output, re.M)}


def test_list_shows_the_running_image_with_its_hash_and_flags(
    fresh: Farm, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(fresh.args("mcuboot", "list"), capsys)
    assert code == 0, out
    row = slot_lines(out)[0]
    assert "1.0.0" in row and "active" in row and "confirmed" in row
    assert re.search(r"[0-9a-f]{64}", row)


def test_the_zephyr_flow_upload_test_reset_confirm(
    fresh: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "update.bin"
    image.write_bytes(sign_build(fresh.board, "update", "1.1.0"))
    info = image_info(image.read_bytes())

    code, out = run(fresh.args("mcuboot", "upload", image), capsys)
    assert code == 0, out
    assert "image check passed" in out
    assert f"image hash: {info.image_hash.hex()}" in out
    assert f"file SHA256 (not for test/confirm): {info.file_sha256.hex()}" in out

    # The classic mistake: the file's SHA256. Refused here, by name; nothing is sent.
    code, out = run(fresh.args("mcuboot", "test", info.file_sha256.hex()[:12]), capsys)
    assert code == 2, out
    assert "no slot holds image hash" in out and "the file SHA256 is not the image hash" in out
    code, out = run(fresh.args("mcuboot", "list"), capsys)
    assert "pending" not in slot_lines(out)[1]

    code, out = run(fresh.args("mcuboot", "test", info.image_hash.hex()[:10]), capsys)
    assert code == 0, out
    assert "pending" in slot_lines(out)[1]
    code, out = run(fresh.args("mcuboot", "test", image), capsys)  # the file itself works too
    assert code == 0 and "pending" in slot_lines(out)[1], out

    code, out = run(fresh.args("mcuboot", "reset"), capsys)
    assert code == 0, out
    assert "Swap type: test" in out and "Image version: v1.1.0" in out
    assert re.search(r"reports/logs/vdk52840-swap-move\.log", out)

    code, out = run(fresh.args("mcuboot", "confirm"), capsys)
    assert code == 0, out
    row = slot_lines(out)[0]
    assert "1.1.0" in row and "confirmed" in row and "active" in row
    log = (tmp_path / "reports" / "logs" / f"{BOARD}.log").read_text()
    assert "Starting swap using move algorithm." in log  # the boot log was kept
    assert "SMP IMAGE upload WRITE" in log  # and the SMP exchange, one line per packet


def test_an_image_the_board_would_refuse_is_not_uploaded(
    fresh: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rogue = REPO / "firmware" / "virtual" / "keys" / "rogue-p256.pem"
    image = tmp_path / "rogue.bin"
    image.write_bytes(sign_build(fresh.board, "update", "1.1.0", key_path=rogue))
    code, out = run(fresh.args("mcuboot", "upload", image), capsys)
    assert code == 2, out
    assert "REFUSED" in out and "nothing was sent" in out
    code, out = run(fresh.args("mcuboot", "list"), capsys)
    assert set(slot_lines(out)) == {0}, "the refused image reached the board"


@contextlib.contextmanager
def udp_holding_the_dfu_lock(address: str | None) -> Iterator[None]:
    """A second SMP client reading the image list over UDP, again and again, until the block ends:
    nRF Desktop's DFU lock stays with the UDP transport all that time."""
    assert address, "the farm reports no SMP UDP port"
    done = threading.Event()
    with SmpLink.over_udp(address, name="lock-holder") as link:
        link.image_list()  # the lock is UDP's before the block starts

        def renew() -> None:
            while not done.wait(0.02):
                link.image_list()

        holder = threading.Thread(target=renew, name="udp-lock-holder", daemon=True)
        holder.start()
        try:
            yield
        finally:
            done.set()
            holder.join(timeout=30)


def test_erase_and_echo_and_udp(
    fresh: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "update.bin"
    image.write_bytes(sign_build(fresh.board, "update", "1.1.0"))
    assert run(fresh.args("mcuboot", "upload", image, "--transport", "udp"), capsys)[0] == 0
    code, out = run(fresh.args("mcuboot", "list", "--transport", "udp"), capsys)
    assert code == 0 and set(slot_lines(out)) == {0, 1}, out
    # The DFU lock of this board: the serial transport is refused while UDP holds it. UDP keeps
    # holding it (every image command renews the 5 s lock) for as long as the serial erase takes,
    # so the refusal does not depend on how fast this machine runs the next command.
    with udp_holding_the_dfu_lock(fresh.state.board(BOARD).smp_udp):
        code, out = run(fresh.args("mcuboot", "erase"), capsys)
    assert code == 1 and "EACCESSDENIED" in out and "DFU lock" in out, out
    code, out = run(fresh.args("mcuboot", "erase", "--transport", "udp"), capsys)
    assert code == 0, out
    code, out = run(fresh.args("mcuboot", "echo", "hello there"), capsys)
    assert code == 0 and "hello there" in out
    code, out = run(fresh.args("mcuboot", "list", "--transport", "udp"), capsys)
    assert set(slot_lines(out)) == {0}, out


def test_port_and_no_smp_server(
    fresh: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial = fresh.state.board(BOARD).serial
    code, out = run(["mcuboot", "echo", "hi", "--port", serial], capsys)
    assert code == 0 and "hi" in out
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        silent = os.ttyname(slave)
        code, out = run(["mcuboot", "list", "--port", silent, "--timeout", "0.3"], capsys)
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)
    assert code == 3, out
    assert silent in out and "baud" in out and "serial recovery" in out


def test_diagnose_a_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "board.log"
    log.write_text("I: Boot source: none\nE: Image in the primary slot is not valid!\n")
    code, out = run(["mcuboot", "diagnose", str(log)], capsys)
    assert code == 1
    assert "Image in the primary slot is not valid!" in out and "fix:" in out
    code, out = run(["mcuboot", "diagnose", str(tmp_path / "missing.log")], capsys)
    assert code == 2 and "cannot read" in out


def test_as_a_separate_process(fresh: Farm, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dfuhil", *fresh.args("mcuboot", "list")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "1.0.0" in done.stdout
