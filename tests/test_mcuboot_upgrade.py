"""``dfuhil mcuboot upgrade`` against the shipped virtual MCUboot boards, typed as at a shell.

One farm process serves one board per mode family (swap-move with serial + UDP, overwrite-only,
direct-xip, direct-xip-revert, single-slot with serial recovery); each test provisions its board
afresh and runs the verb through ``dfuhil.cli.main``. The verdicts are checked against what the
board does afterwards (another reset, ``mcuboot list``), and a refused image against the flash
read over the probe, so a green here means the board really runs the new image.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_mcuboot_cli import farm_subset, run, slot_lines

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.rig import Rig
from dfuhil.links.console import Console
from dfuhil.procedures.image_sign import sign_build
from dfuhil.procedures.mcuboot_dfu import wait_for_boot
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.state import FarmProcess, SimState

REPO = Path(__file__).resolve().parents[1]
SWAP = "vdk52840-swap-move"
OVERWRITE = "vdk52833-overwrite-only"
XIP = "vdk52840-direct-xip"
XIP_REVERT = "vdk52840-direct-xip-revert"
SINGLE = "vdk52832-single-slot"
BOARDS = [SWAP, OVERWRITE, XIP, XIP_REVERT, SINGLE]
TIME_SCALE = 0.05
BANNER = "Booting Zephyr OS build"
OLD, NEW = "1.0.0", "1.1.0"


@dataclass
class UpgradeFarm:
    boards: Path
    state_file: Path
    state: SimState

    def spec(self, name: str) -> BoardSpec:
        return load_farm(self.boards).board(name)

    def rig(self) -> Rig:
        return Rig(load_farm(self.boards), self.state)

    def args(self, board: str, *verb: str | Path) -> list[str]:
        return [str(v) for v in verb] + [
            "--board", board, "--boards", str(self.boards), "--sim-state", str(self.state_file),
        ]  # fmt: skip

    def provision(self, name: str) -> None:
        """The board freshly provisioned (chip erase, MCUboot, v1.0.0) and booted."""
        board = self.spec(name)
        rig = self.rig()
        with rig.console(board, open_timeout=5.0) as console, rig.probe(board) as probe:
            Provisioner(ProvisioningPlan.for_board(board), probe).run(STEPS)
            console.expect(BANNER, timeout=20)

    def sign(self, name: str, build: str, version: str, tmp: Path, **options: object) -> Path:
        path = tmp / f"{build}-{version}.bin"
        board = self.spec(name)
        slot = "secondary" if board.mcuboot and board.mcuboot.mode.startswith("direct") else None
        if slot == "secondary":
            build = f"{build}@secondary"  # a direct-xip image is linked for the slot it runs in
        path.write_bytes(sign_build(board, build, version, slot=slot, **options))  # type: ignore[arg-type]
        return path


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpgradeFarm]:
    work = tmp_path_factory.mktemp("mcuboot-upgrade")
    if not (REPO / "firmware" / "virtual" / "keys").is_dir():
        pytest.fail("no sample firmware: run `make firmware` first")
    boards = farm_subset(work / "boards.yaml", BOARDS, TIME_SCALE)
    state_file = work / "state.json"
    with FarmProcess(boards, state_file, log_dir=work / "sim", time_scale=TIME_SCALE) as state:
        yield UpgradeFarm(boards, state_file, state)


@pytest.fixture(autouse=True)
def _reports_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports/logs/<board>.log per test


def running(farm: UpgradeFarm, board: str, capsys: pytest.CaptureFixture[str], *via: str) -> str:
    """Reset the board (the next boot must keep what the upgrade left), then its active row.

    ``via``: transport options (the DFU lock refuses the other transport for a while)."""
    code, out = run(farm.args(board, "mcuboot", "reset", *via), capsys)
    assert code == 0, out
    code, out = run(farm.args(board, "mcuboot", "list", *via), capsys)
    assert code == 0, out
    active = [row for row in slot_lines(out).values() if "active" in row]
    assert len(active) == 1, out
    return active[0]


def upgrade(
    farm: UpgradeFarm,
    board: str,
    build: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> tuple[int, str]:
    """Provision ``board`` afresh, sign ``build`` as v1.1.0, run `mcuboot upgrade` on it."""
    farm.provision(board)
    image = farm.sign(board, build, NEW, tmp_path)
    return run(farm.args(board, "mcuboot", "upgrade", image, *extra), capsys)


# --- the happy path, per mode family ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slot", "kept"),
    [
        (SWAP, 0, "confirmed by the host"),
        (OVERWRITE, 0, "overwrite-only: nothing to confirm"),
        (XIP, 1, "direct-xip: the highest version runs"),
        (SINGLE, 0, "single-slot: written by serial recovery"),
    ],
)
def test_upgrade_ends_with_the_new_image_running_for_good(
    farm: UpgradeFarm,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    slot: int,
    kept: str,
) -> None:
    code, out = upgrade(farm, name, "update", tmp_path, capsys)
    assert code == 0, out
    assert "image check passed" in out
    assert f"v{NEW}" in out and f"runs from slot {slot}" in out and kept in out, out
    assert f"upgraded from v{OLD}" in out
    assert "probe read-back agrees" in out
    row = running(farm, name, capsys)
    assert NEW in row and "confirmed" in row and row.split()[1] == str(slot), row


# --- what MCUboot did instead ------------------------------------------------------------------


def test_an_update_that_crashes_at_boot_is_reverted_and_exits_1(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = upgrade(farm, SWAP, "crash-at-boot", tmp_path, capsys)
    assert code == 1, out
    assert "UPGRADE FAILED" in out and "MCUboot reverted the update after it crashed at boot" in out
    assert f"v{OLD} runs again" in out
    assert "ZEPHYR FATAL ERROR" in out and "Swap type: revert" in out  # the diagnosis lines
    assert "confirmed v1.1.0" not in out  # never confirmed
    row = running(farm, SWAP, capsys)
    assert OLD in row and row.split()[1] == "0", row


def test_a_crashing_update_on_overwrite_only_is_named_a_boot_loop(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = upgrade(farm, OVERWRITE, "crash-at-boot", tmp_path, capsys)
    assert code == 1, out
    assert "faults at boot" in out and "overwrite-only cannot revert" in out, out
    assert "ZEPHYR FATAL ERROR" in out and "a boot loop" in out, out
    # the flash, read over SWD, shows where the old image went: overwritten by the new one
    assert re.search(r"slot 0 \(primary, 0x[0-9A-F]+\): the new image", out), out


def test_a_build_that_never_confirms_itself_is_not_confirmed_for_it(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = upgrade(farm, XIP_REVERT, "never-confirm", tmp_path, capsys)
    assert code == 1, out
    assert "did not confirm itself" in out and "confirm: app" in out, out
    assert "MCUboot erases it at the next reset" in out
    code, out = run(farm.args(XIP_REVERT, "mcuboot", "list"), capsys)
    active = [row for row in slot_lines(out).values() if "active" in row]
    assert len(active) == 1 and NEW in active[0] and "confirmed" not in active[0], out
    row = running(farm, XIP_REVERT, capsys)  # and indeed: the next reset drops it
    assert OLD in row, row


def test_a_refused_image_exits_2_and_writes_nothing(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm.provision(SWAP)
    board = farm.spec(SWAP)
    rogue = REPO / "firmware" / "virtual" / "keys" / "rogue-p256.pem"
    image = farm.sign(SWAP, "update", NEW, tmp_path, key_path=rogue)
    slots = board.layout.mcuboot_slots()
    assert slots.secondary is not None

    def flash() -> bytes:
        with farm.rig().probe(board) as probe:
            return probe.read(slots.primary.start, slots.primary.size) + probe.read(
                slots.secondary.start, slots.secondary.size
            )

    before = flash()
    code, out = run(farm.args(SWAP, "mcuboot", "upgrade", image), capsys)
    assert code == 2, out
    assert "REFUSED" in out and "nothing was sent" in out, out
    assert flash() == before, "a refused upgrade changed the slots"


def test_over_a_bare_port_the_boot_log_still_names_the_revert(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No board: no image check against it, no banner, no probe; the mode comes from the
    board's bootloader info and the verdict from the image list plus the console's boot log."""
    farm.provision(SWAP)
    image = farm.sign(SWAP, "crash-at-boot", NEW, tmp_path)
    port = farm.state.board(SWAP).serial
    code, out = run(["mcuboot", "upgrade", str(image), "--port", port], capsys)
    assert code == 1, out
    assert "MCUboot mode swap-move (bootloader info)" in out
    assert "MCUboot reverted the update after it crashed at boot" in out, out
    assert "Swap type: revert" in out


def test_upgrading_to_what_already_runs_sends_nothing_and_says_so(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm.provision(SWAP)
    image = farm.sign(SWAP, "update", NEW, tmp_path)
    assert run(farm.args(SWAP, "mcuboot", "upgrade", image), capsys)[0] == 0
    code, out = run(farm.args(SWAP, "mcuboot", "upgrade", image), capsys)
    assert code == 0, out
    assert f"v{NEW} already runs; nothing uploaded" in out
    assert "upload done" not in out and "reset; waiting" not in out
    assert "probe read-back agrees" in out  # still checked, not assumed


# --- the UDP path --------------------------------------------------------------------------------


def test_upgrade_over_udp_with_the_boards_console_for_the_boot_log(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = upgrade(farm, SWAP, "update", tmp_path, capsys, "--transport", "udp")
    assert code == 0, out
    assert "runs from slot 0" in out and "probe read-back agrees" in out, out
    log = (tmp_path / "reports" / "logs" / f"{SWAP}.log").read_text()
    assert "Starting swap using move algorithm." in log  # the boot log came from the console


def test_upgrade_over_a_bare_udp_address_asks_the_mode_and_waits_for_smp(
    farm: UpgradeFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm.provision(SWAP)
    image = farm.sign(SWAP, "update", NEW, tmp_path)
    address = farm.state.board(SWAP).smp_udp
    assert address
    code, out = run(["mcuboot", "upgrade", str(image), "--udp", address], capsys)
    assert code == 0, out
    assert "MCUboot mode swap-move (bootloader info)" in out
    assert re.search(r"v1\.1\.0 \([0-9a-f]{16}\) runs from slot 0", out), out
    assert "probe read-back" not in out
    assert "rests on the SMP server's word" in out  # no board, no probe: and it says so
    row = running(farm, SWAP, capsys, "--transport", "udp")
    assert NEW in row and "confirmed" in row, row


# --- the boot wait itself ------------------------------------------------------------------------


def test_a_banner_just_before_the_deadline_is_not_a_boot_it_was_not_seen_to_survive() -> None:
    """A boot loop whose last banner lands inside the settle time of the deadline: the app was
    not seen to stay up, so it did not boot (it used to count as booted: a false pass)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    fatal = b"E: >>> ZEPHYR FATAL ERROR 0: CPU exception on CPU 0\r\n"
    script = [(0.0, b"*** Booting Zephyr OS build v3 ***\r\n"), (0.2, fatal),
              (1.7, b"*** Booting Zephyr OS build v3 ***\r\n"), (2.6, fatal)]  # fmt: skip

    def device() -> None:
        start = time.monotonic()
        for at, data in script:
            time.sleep(max(0.0, start + at - time.monotonic()))
            with contextlib.suppress(OSError):
                os.write(master, data)

    try:
        with Console(os.ttyname(slave), name="loop") as console:
            writer = threading.Thread(target=device, daemon=True)
            writer.start()
            boot = wait_for_boot(console, banner=BANNER, timeout_s=2.0, settle_s=0.8)
            writer.join()
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)
    assert not boot.booted, boot.log
    assert boot.diagnosis.has("zephyr-fatal")
