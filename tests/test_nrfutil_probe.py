"""The nrfutil probe backend against the virtual farm's own ``nrfutil``, through real processes.

Every call here runs ``nrfutil --json device ...`` as a subprocess (the farm's executable, first
on PATH), which reaches the virtual board through the farm's debug port. What provisioning left
on a board is checked through the other backend (pynrfjprog's API over the debug port), so the
nrfutil path never grades itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfuhil.errors import InfrastructureError, InputError, ProductError
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.rig import Rig
from dfuhil.links.nrfutil_cli import NrfutilCommand
from dfuhil.links.nrfutil_probe import NrfutilProbe
from dfuhil.links.probe import Probe, ProbeTarget
from dfuhil.procedures.provision import Provisioner, ProvisioningPlan
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.state import SimState
from tests.provisionfarm import (
    NRF51422,
    BoardEntry,
    FirmwareSpec,
    expected_flash,
    read_flash,
    reset_stats,
    running_farm,
    sample_set,
    stats,
    write_boards,
)
from tests.provisionfarm import NRF52832 as CHIP

BOARDS = [
    BoardEntry("first", "dfu52"),
    BoardEntry("again", "dfu52"),
    BoardEntry("guarded", "dfu52"),
    BoardEntry("recoverable", "dfu52"),
    BoardEntry("cut", "dfu52"),
]


@dataclass
class Lab:
    farm: Farm
    state: SimState
    nrfutil: Rig  # drives virtual boards through the farm's nrfutil
    lowlevel: Rig  # pynrfjprog's API over the debug port: the independent reader

    def spec(self, name: str) -> BoardSpec:
        return self.farm.board(name)

    def probe(self, name: str) -> NrfutilProbe:
        probe = self.nrfutil.probe(self.spec(name))
        assert isinstance(probe, NrfutilProbe)
        return probe

    def check(self, name: str) -> Probe:
        return self.lowlevel.probe(self.spec(name))

    def provision(self, name: str) -> tuple[dict[str, str], int]:
        """Provision through nrfutil; the step actions and the process starts it cost."""
        with self.probe(name) as probe:
            before = probe.command.starts
            results = Provisioner(ProvisioningPlan.for_board(self.spec(name)), probe).run()
            return {r.step: r.action for r in results}, probe.command.starts - before


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("nrfutil-farm")
    sets = {"dfu52": FirmwareSpec(CHIP, sample_set(CHIP))}
    path, farm = write_boards(workdir / "boards.yaml", sets, BOARDS)
    with running_farm(path, workdir) as state:
        yield Lab(
            farm,
            state,
            Rig(farm, state, virtual_tool="nrfutil"),
            Rig(farm, state, virtual_tool="pynrfjprog"),
        )


def nrfutil_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """The farm's nrfutil as a script or another tool would run it."""
    command = lab.nrfutil.virtual_nrfutil(lab.state)
    return subprocess.run(
        ["nrfutil", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **command.env},
        timeout=120,
        check=False,
    )


# --- provisioning ------------------------------------------------------------------------------


def test_first_provisioning_through_nrfutil_leaves_exactly_the_firmware_set(lab: Lab) -> None:
    actions, _ = lab.provision("first")
    assert actions["softdevice"] == "done" and actions["application"] == "done"
    plan = ProvisioningPlan.for_board(lab.spec("first"))
    with lab.check("first") as check:
        assert read_flash(check) == expected_flash(plan)
        for planned in plan.images.values():
            for address, value in planned.uicr.items():
                assert check.read_u32(address) == value


def test_nothing_changed_reprovisioning_costs_at_most_two_process_starts(lab: Lab) -> None:
    lab.provision("again")
    with lab.check("again") as check:
        reset_stats(check)
        actions, starts = lab.provision("again")
        assert set(actions.values()) == {"skipped", "done"}  # only the reset is "done"
        assert actions["reset"] == "done"
        assert starts <= 2, f"{starts} process starts for an unchanged board"
        cost = stats(check)
        assert cost["bytes_written"] == cost["pages_erased"] == cost["operations"] == 0


def test_changed_page_is_rewritten_and_read_back_through_nrfutil(lab: Lab) -> None:
    lab.provision("again")
    plan = ProvisioningPlan.for_board(lab.spec("again"))
    app = plan.images["application"]
    page = sorted(app.pages)[1]
    with lab.check("again") as check:
        check.erase_page(page)  # the board lost one page of its application
    actions, _ = lab.provision("again")
    assert actions["application"] == "partial"
    with lab.check("again") as check:
        assert check.read(page, len(app.pages[page])) == app.pages[page]


# --- the rig's faults --------------------------------------------------------------------------


def test_unknown_serial_number_is_infrastructure_naming_the_fix(lab: Lab) -> None:
    command = lab.nrfutil.virtual_nrfutil(lab.state)
    target = ProbeTarget(board="ghost", chip=CHIP, snr=683999999)
    with NrfutilProbe(target, command) as probe, pytest.raises(InfrastructureError) as info:
        probe.read(0, 4)
    text = str(info.value)
    assert "ghost" in text and "683999999" in text and "nrfutil device list" in text


def test_a_jlink_held_by_another_process_is_infrastructure(lab: Lab) -> None:
    snr = lab.state.board("guarded").snr
    lock = os.open(lab.state.path.parent / f"jlink-{snr}.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with lab.probe("guarded") as probe, pytest.raises(InfrastructureError) as info:
            probe.read(0, 4)
    finally:
        os.close(lock)
    assert "holds the J-Link" in str(info.value) and "guarded" in str(info.value)


WRONG_CHIP = r"boards\.yaml says nRF51422_xxAC"


def test_wrong_chip_in_boards_yaml_is_refused_before_any_write(lab: Lab) -> None:
    command = lab.nrfutil.virtual_nrfutil(lab.state)
    target = ProbeTarget(board="guarded", chip=NRF51422, snr=lab.state.board("guarded").snr)
    with lab.check("guarded") as check:
        reset_stats(check)
        with NrfutilProbe(target, command) as probe:
            with pytest.raises(InfrastructureError, match=WRONG_CHIP):
                probe.erase_page(0x1000)
            with pytest.raises(InfrastructureError, match=WRONG_CHIP), probe.read_ahead([(0, 1)]):
                pass
        assert stats(check)["operations"] == 0


def test_recover_only_where_boards_yaml_allows_it(lab: Lab) -> None:
    with lab.check("guarded") as check:
        reset_stats(check)
        with lab.probe("guarded") as probe, pytest.raises(InputError, match="allow_recover"):
            probe.recover()
        assert stats(check)["operations"] == 0
    lab.provision("recoverable")
    command = lab.nrfutil.virtual_nrfutil(lab.state)
    snr = lab.state.board("recoverable").snr
    allowed = ProbeTarget(board="recoverable", chip=CHIP, snr=snr, allow_recover=True)
    with NrfutilProbe(allowed, command) as probe:
        probe.recover()
    with lab.check("recoverable") as check:
        assert read_flash(check) == b"\xff" * CHIP.flash_size


def test_power_cut_during_nrfutil_programming_is_infrastructure(lab: Lab) -> None:
    lab.provision("cut")
    plan = ProvisioningPlan.for_board(lab.spec("cut"))
    page = sorted(plan.images["application"].pages)[0]
    with lab.check("cut") as check:
        check.erase_page(page)
    endpoint = lab.state.board("cut").endpoint
    with FaultInjector(endpoint, lab.state.board("cut").snr) as faults:
        faults.cut_power_after(1)
        with pytest.raises((InfrastructureError, ProductError)) as info:
            lab.provision("cut")
        assert "power" in str(info.value)
        faults.power_on()
    actions, _ = lab.provision("cut")  # power back: the next run finishes the job
    assert actions["application"] in ("partial", "done")


# --- the executable as other tools use it ------------------------------------------------------


def test_device_list_as_zephyrs_runner_reads_it(lab: Lab) -> None:
    run = nrfutil_cli(lab, "--json", "device", "list")
    assert run.returncode == 0, run.stderr
    ends = [json.loads(line) for line in run.stdout.splitlines()]
    devices = next(m["data"]["data"]["devices"] for m in ends if m["type"] == "task_end")
    snrs = {int(d["serialNumber"]) for d in devices if d["traits"]["jlink"]}
    assert snrs == {b.snr for b in lab.state.boards.values()}


def test_appended_batch_runs_with_batch_execute(lab: Lab, tmp_path: Path) -> None:
    batch = tmp_path / "batch.json"
    snr = str(lab.state.board("guarded").snr)
    assert (
        nrfutil_cli(lab, "device", "erase", "--uicr", "--append-batch", str(batch)).returncode == 0
    )
    assert nrfutil_cli(lab, "device", "reset", "--append-batch", str(batch)).returncode == 0
    assert json.loads(batch.read_text())["operations"][0]["operation"]["type"] == "erase"
    run = nrfutil_cli(
        lab, "--json", "device", "batch-execute", "--batch-file", str(batch), "--serial-number", snr
    )
    assert run.returncode == 0, run.stdout
    ends = [m for m in map(json.loads, run.stdout.splitlines()) if m["type"] == "task_end"]
    assert [m["data"]["task"]["name"] for m in ends] == ["erase", "reset"]
    with lab.check("guarded") as check:
        assert check.read(0x10001000, 8) == b"\xff" * 8


def test_failed_task_exits_1_with_the_error_in_task_end(lab: Lab) -> None:
    run = nrfutil_cli(lab, "--json", "device", "read", "--address", "0x0", "--serial-number", "7")
    assert run.returncode == 1
    (end,) = [m for m in map(json.loads, run.stdout.splitlines()) if m["type"] == "task_end"]
    assert end["data"]["result"] == "fail" and end["data"]["error"]["code"]


# --- the executable itself: missing, too old, not speaking JSON Lines --------------------------


def fake_tool(tmp_path: Path, script: str) -> NrfutilCommand:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "nrfutil"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return NrfutilCommand(env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def test_missing_nrfutil_says_what_to_install(tmp_path: Path) -> None:
    command = NrfutilCommand(env={"PATH": str(tmp_path)})
    with pytest.raises(InfrastructureError, match="nrfutil install device"):
        command.check_version()


def test_nrfutil_without_its_device_command(tmp_path: Path) -> None:
    command = fake_tool(tmp_path, "echo 'Error: command device not found' >&2; exit 1\n")
    with pytest.raises(InfrastructureError, match="nrfutil install device"):
        command.check_version()


def test_nrfutil_device_out_of_range_names_the_release_to_install(tmp_path: Path) -> None:
    info = '{"type":"info","data":{"name":"nrfutil-device","version":"1.4.2"}}'
    command = fake_tool(tmp_path, f"echo '{info}'\n")
    with pytest.raises(InfrastructureError) as error:
        command.check_version()
    assert "1.4.2" in str(error.value) and "nrfutil install device=2.8.0" in str(error.value)


def test_output_that_is_not_json_lines_is_infrastructure(tmp_path: Path) -> None:
    version = '{"type":"info","data":{"name":"nrfutil-device","version":"2.19.2"}}'
    script = (
        f"case \"$*\" in *--version*) echo '{version}';; "
        '*) echo \'{"type":"task_begin","data":{"task":{"id":"1","name":"read"}}}\'; '
        "echo 'Segmentation fault'; exit 139;; esac\n"
    )
    command = fake_tool(tmp_path, script)
    target = ProbeTarget(board="dk", chip=CHIP, snr=683000001)
    with NrfutilProbe(target, command) as probe, pytest.raises(InfrastructureError) as info:
        probe.read(0, 4)
    assert "line 2" in str(info.value) and "Segmentation fault" in str(info.value)


# --- read-ahead never serves a stale copy ------------------------------------------------------


def test_read_ahead_rereads_what_was_written_and_never_caches_ram(lab: Lab) -> None:
    ram = 0x20000000
    with lab.probe("guarded") as probe, lab.check("guarded") as check:
        check.halt()  # the firmware must not touch RAM while the test does
        with probe.read_ahead([(0x1000, 0x2000)]):
            assert len(probe.read(ram, 4096)) == 4096
            check.write_u32(ram, 0x12345678)
            assert probe.read_u32(ram) == 0x12345678
            check.write_flash(0x2000, b"\x00\x11\x22\x33")  # behind the cache's back
            probe.erase_page(0x1000)
            probe.write_flash(0x1000, b"\xa5\x5a\xa5\x5a")
            assert probe.read(0x1000, 8) == b"\xa5\x5a\xa5\x5a" + b"\xff" * 4
        assert probe.read(0x2000, 4) == b"\x00\x11\x22\x33"  # the scope's copy died with it
        check.erase_page(0x1000)
        check.erase_page(0x2000)
        check.go()


# --- LED reads through nrfutil: one process per register read, so the farm runs in real time ---


def test_blinky_led_is_seen_blinking_through_nrfutil(tmp_path: Path) -> None:
    from dfuhil.procedures.leds import LedObserver
    from dfuhil.sim.state import FarmProcess
    from tests.provisionfarm import FIRMWARE

    sd = sample_set(CHIP)["softdevice"]
    sets = {"blinky": FirmwareSpec(CHIP, {"softdevice": sd}, banner="blinky 1.0.0 started")}
    sets["blinky"].files["application"] = FIRMWARE / "nrf52832" / "blinky.hex"
    path, farm = write_boards(tmp_path / "boards.yaml", sets, [BoardEntry("blink", "blinky")])
    with FarmProcess(path, tmp_path / "state.json", time_scale=1.0) as state:
        rig = Rig(farm, state, virtual_tool="nrfutil")
        board = farm.board("blink")
        with rig.probe(board) as probe:
            Provisioner(ProvisioningPlan.for_board(board), probe).run()
            observer = LedObserver(
                probe.read_u32,
                CHIP,
                board.leds.pins,
                board.leds.active_low,
                probe.time_scale,
                read=probe.read,  # OUT..DIR in one nrfutil run per sample
            )
            first, *others = observer.sample(window_s=3.0)
    # Which LED blinks, not how fast: the rate nrfutil can sample at depends on the machine.
    assert first.state == "blinking", first
    assert [r.state for r in others] == ["off"] * len(others)
