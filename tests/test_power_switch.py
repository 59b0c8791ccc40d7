"""Power switches: ``power:`` in boards.yaml, the exported NetworkPowerPort, dfuhil's
:class:`PowerSwitch` over labgrid, the virtual PDU, and the power-cut suite on a "real rig".

The chain is the real one on loopback: a virtual farm; a virtual PDU (``dfuhil sim pdu``, its
own process) speaking labgrid's ``simplerest`` protocol, its outlets wired to the boards' power;
``dfuhil farm export`` writing the exporter file; a real ``labgrid-exporter`` and
``labgrid-coordinator``; ``labgrid-client power`` on an acquired place, so labgrid's own
NetworkPowerDriver sends the HTTP requests. What a test checks is the board: the farm's own
view of its power, its console going silent, its banner when power comes back.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial
from farmgen import pytest_command, subset, write_farm
from ruamel.yaml import YAML

from dfuhil.cli import main
from dfuhil.errors import InfrastructureError, InputError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import PowerSpec
from dfuhil.farm.power import LabgridPower, VirtualPower
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.firmware.generate import ram_end, sample_image
from dfuhil.sim.state import FarmProcess, SimState
from tests.labgrid_lab import LabgridLab, free_port, labgrid_lab
from tests.simfarm import SimBoard, chip
from tests.test_farm_export import api, read_until, with_debug_tcp

HOST = "lab-p"
MCUBOOT = "vdk52840-swap-move"  # outlet 0: the power-cut suite's board
BLINKY = "vdk52832"  # outlet 1: the board the chain tests cut
OUTLETS = {MCUBOOT: 0, BLINKY: 1}
TIME_SCALE = 1.0  # real time: the swap must outlast labgrid-client's start-up (the switch latency)
WAIT_S = 30.0  # generous bound for anything to happen; never a speed claim
USER = {"LG_USERNAME": "dfuhil-test", "LG_HOSTNAME": "dfuhil-test"}  # LabgridLab.place's user
PDU_URL = "http://127.0.0.1:{port}/relay/{{index}}/{{value}}"


def place(board: str) -> str:
    return f"pwr-{board}"


# --- boards.yaml and the exporter file (no process started) ---------------------------------

REAL = """\
version: 1
flash_layouts:
  l52: {chip: nRF52832_xxAA, regions: {app: {start: 0x26000, size: 0x51000}}}
boards:
  - name: r1
    chip: nRF52832_xxAA
    lab_host: lab-a
    probe: {snr: 682000001, remote: 192.0.2.7:19021}
    serial: {port: /dev/serial/by-id/usb-SEGGER_J-Link_000682000001-if00}
    flash_layout: l52
"""


def real_farm(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "boards.yaml"
    path.write_text(REAL + "".join(f"    {line}\n" for line in extra.splitlines()))
    return path


def test_power_is_loaded_and_exported_as_a_network_power_port(tmp_path: Path) -> None:
    boards = real_farm(
        tmp_path,
        "place: lab-a-r1\npower: {model: netio, host: 192.0.2.9, index: 3}",
    )
    board = load_farm(boards).board("r1")
    assert board.power is not None
    assert (board.power.model, board.power.host, board.power.index) == ("netio", "192.0.2.9", 3)
    out = tmp_path / "lab-a.yaml"
    assert main(["farm", "export", str(boards), "--host", "lab-a", "--out", str(out)]) == 0
    group = YAML(typ="safe").load(out.read_text())["r1"]
    assert group["power"] == {
        "cls": "NetworkPowerPort",
        "model": "netio",
        "host": "192.0.2.9",
        "index": 3,
    }


@pytest.mark.parametrize(
    ("power", "said"),
    [
        (
            "power: {model: netoi, host: 192.0.2.9, index: 0}",
            "'netoi' is no power switch model of labgrid 26.0.1",
        ),
        (
            "power: {model: simplerest, host: 'http://192.0.2.9/relay/{index}', index: 0}",
            "takes host as a URL template with {value}",
        ),
        ("power: {model: netio, host: 192.0.2.9, index: -1}", "greater than or equal to 0"),
    ],
)
def test_a_bad_power_entry_is_refused_naming_the_field(
    tmp_path: Path, power: str, said: str
) -> None:
    boards = real_farm(tmp_path, f"place: lab-a-r1\n{power}")
    with pytest.raises(InputError) as refused:
        load_farm(boards)
    assert "boards[r1].power" in str(refused.value)
    assert said in str(refused.value)


def test_a_switch_without_a_place_is_refused(tmp_path: Path) -> None:
    boards = real_farm(tmp_path, "power: {model: netio, host: 192.0.2.9, index: 0}")
    with pytest.raises(InputError, match="add place: NAME"):
        load_farm(boards)


def test_a_switch_without_a_coordinator_is_refused_before_any_switching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LG_COORDINATOR", raising=False)
    farm = load_farm(
        real_farm(tmp_path, "place: lab-a-r1\npower: {model: netio, host: 192.0.2.9, index: 0}")
    )
    with pytest.raises(InputError, match="add coordinator: HOST:PORT"):
        LabgridPower.for_board(farm, farm.board("r1"))


def test_a_missing_labgrid_names_make_lab_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DFUHIL_LABGRID_VENV", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))
    switch = LabgridPower("r1", "lab-a-r1", "127.0.0.1:1", PowerSpec("netio", "192.0.2.9", 0))
    with pytest.raises(InfrastructureError, match="make lab-setup"):
        switch.off()


@pytest.mark.parametrize(
    ("outlet", "said"),
    [("0:vdk52832", "write INDEX=BOARD"), ("0=a --outlet=0=b", "outlet 0 is wired twice")],
)
def test_a_bad_pdu_outlet_is_refused_before_the_farm_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], outlet: str, said: str
) -> None:
    args = [f"--outlet={o.removeprefix('--outlet=')}" for o in outlet.split(" ")]
    missing = str(tmp_path / "no-farm.json")
    assert main(["sim", "pdu", "--state-file", missing, *args]) == 2
    assert said in capsys.readouterr().err


# --- the chain on loopback -------------------------------------------------------------------


@dataclass
class PowerLab:
    """A virtual farm with a virtual PDU in front of it, exported through labgrid."""

    workdir: Path
    boards: Path
    state: SimState
    lab: LabgridLab
    pdu_port: int
    pdu: subprocess.Popen[bytes] | None = None

    def start_pdu(self) -> None:
        url_file = self.workdir / "pdu.url"
        url_file.unlink(missing_ok=True)
        outlets = [f"--outlet={index}={board}" for board, index in OUTLETS.items()]
        command = [sys.executable, "-m", "dfuhil", "sim", "pdu"]
        command += ["--state-file", str(self.state.path), *outlets]
        command += ["--port", str(self.pdu_port), "--url-file", str(url_file)]
        with (self.workdir / "pdu.log").open("ab") as log:
            self.pdu = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + WAIT_S
        while not url_file.exists():
            assert self.pdu.poll() is None, (self.workdir / "pdu.log").read_text()
            assert time.monotonic() < deadline, "the virtual PDU did not come up"
            time.sleep(0.05)

    def stop_pdu(self) -> None:
        """SIGTERM by pid: the PDU is gone, as if unplugged from the network."""
        if self.pdu is not None and self.pdu.poll() is None:
            self.pdu.send_signal(signal.SIGTERM)
            try:
                self.pdu.wait(10)
            except subprocess.TimeoutExpired:
                self.pdu.kill()
                self.pdu.wait()
        self.pdu = None

    def injector(self, board: str) -> FaultInjector:
        entry = self.state.board(board)
        return FaultInjector(entry.endpoint, entry.snr)

    def powered(self, board: str) -> bool:
        """The farm's own view of the board's supply (not the PDU's)."""
        with self.injector(board) as faults:
            return faults.powered()


def power_boards_file(path: Path, coordinator: str, pdu_port: int) -> Path:
    """The shipped boards, each on lab host HOST with a place and a PDU outlet."""
    entries = subset(*OUTLETS)
    for entry in entries:
        entry["lab_host"] = HOST
        entry["place"] = place(entry["name"])
        url = PDU_URL.format(port=pdu_port)
        entry["power"] = {"model": "simplerest", "host": url, "index": OUTLETS[entry["name"]]}
    write_farm(path, entries, time_scale=TIME_SCALE)
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    data["coordinator"] = coordinator
    YAML(typ="safe", pure=True).dump(data, path)
    return path


@pytest.fixture(scope="module")
def power_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerLab]:
    workdir = tmp_path_factory.mktemp("power-lab")
    with labgrid_lab(workdir) as lab:
        pdu_port = free_port()
        boards = power_boards_file(workdir / "boards.yaml", lab.address, pdu_port)
        farm = FarmProcess(
            boards, workdir / "sim-state.json", log_dir=workdir / "sim", time_scale=TIME_SCALE
        )
        state = with_debug_tcp(farm.start())
        rig = PowerLab(workdir, boards, state, lab, pdu_port)
        try:
            rig.start_pdu()
            config = workdir / f"{HOST}.yaml"
            export = ["farm", "export", str(boards), "--host", HOST, "--sim-state", str(state.path)]
            assert main([*export, "--out", str(config)]) == 0
            lab.start_exporter(HOST, config)
            yield rig
        finally:
            rig.stop_pdu()
            farm.stop()
    assert lab.leftovers() == [], "a labgrid process outlived the lab"


def power(rig: PowerLab, board: str, action: str) -> subprocess.CompletedProcess[str]:
    return rig.lab.client("-p", place(board), "power", action)


def flash_banner(rig: PowerLab, board: str) -> str:
    """Program an image that prints a banner of its own at every boot; returns the banner."""
    spec = SimBoard(board, "nRF52832_xxAA", "PCA10040", rig.state.board(board).snr)
    banner = f"powered up: {board}"
    image = sample_image(
        0, 0x2000, Behaviour("blinky", board, banner=banner), board, ram_end(chip(spec.chip))
    )
    with api(rig.state, spec) as probe:
        probe.erase_all()
        probe.write(0, image, True)
        probe.sys_reset()
        probe.go()
    return banner


def open_console(rig: PowerLab, board: str) -> serial.Serial:
    line = serial.Serial(rig.state.board(board).serial, 115200, timeout=0.1)
    return line


def test_the_exporter_publishes_each_boards_outlet(power_lab: PowerLab) -> None:
    resources = power_lab.lab.resources()
    for board, index in OUTLETS.items():
        port = resources[f"{HOST}/{board}/NetworkPowerPort/power"]
        assert port["params"]["model"] == "simplerest"
        assert port["params"]["host"] == PDU_URL.format(port=power_lab.pdu_port)
        assert port["params"]["index"] == index


def test_labgrid_client_power_off_cuts_the_board_and_on_boots_it(power_lab: PowerLab) -> None:
    banner = flash_banner(power_lab, BLINKY)
    with (
        power_lab.lab.place(place(BLINKY), f"{HOST}/{BLINKY}/*"),
        open_console(power_lab, BLINKY) as console,
    ):
        power(power_lab, BLINKY, "on")  # on when already on: nothing happens, no reset
        assert power_lab.powered(BLINKY)
        power(power_lab, BLINKY, "off")
        assert not power_lab.powered(BLINKY)
        assert power_lab.powered(MCUBOOT), "outlet 1 also cut the board on outlet 0"
        assert "is off" in power(power_lab, BLINKY, "get").stdout
        console.reset_input_buffer()
        assert console.read(4096) + console.read(4096) == b"", "an unpowered board talks"
        power(power_lab, BLINKY, "on")
        assert power_lab.powered(BLINKY)
        assert "is on" in power(power_lab, BLINKY, "get").stdout
        assert banner.encode() in read_until(console, banner.encode())


@pytest.fixture
def switch(power_lab: PowerLab, monkeypatch: pytest.MonkeyPatch) -> LabgridPower:
    """dfuhil's switch for BLINKY, as the user who acquires the places (LabgridLab.place)."""
    for name, value in USER.items():
        monkeypatch.setenv(name, value)
    farm = load_farm(power_lab.boards)
    return LabgridPower.for_board(farm, farm.board(BLINKY))


def test_dfuhil_switches_the_board_through_its_place(
    power_lab: PowerLab, switch: LabgridPower
) -> None:
    banner = flash_banner(power_lab, BLINKY)
    with (
        power_lab.lab.place(place(BLINKY), f"{HOST}/{BLINKY}/*"),
        open_console(power_lab, BLINKY) as console,
    ):
        switch.off()
        assert (switch.state(), power_lab.powered(BLINKY)) == (False, False)
        console.reset_input_buffer()
        switch.on()
        assert (switch.state(), power_lab.powered(BLINKY)) == (True, True)
        assert banner.encode() in read_until(console, banner.encode())
        console.reset_input_buffer()
        switch.cycle(off_s=0.2)
        assert banner.encode() in read_until(console, banner.encode())
    # The place released: labgrid refuses, and so does dfuhil, saying who must hold it.
    with pytest.raises(InfrastructureError) as refused:
        switch.off()
    assert power_lab.powered(BLINKY)
    said = str(refused.value)
    assert f"board {BLINKY}" in said and f"place {place(BLINKY)}" in said
    assert f"labgrid-client -p {place(BLINKY)} acquire" in said


def test_an_unreachable_pdu_is_an_infrastructure_error_naming_board_place_pdu_outlet(
    power_lab: PowerLab, switch: LabgridPower
) -> None:
    with power_lab.lab.place(place(BLINKY), f"{HOST}/{BLINKY}/*"):
        power_lab.stop_pdu()
        try:
            with pytest.raises(InfrastructureError) as refused:
                switch.off()
        finally:
            power_lab.start_pdu()
        assert power_lab.powered(BLINKY)
        said = str(refused.value)
        assert said.startswith(f"[infrastructure] board {BLINKY}: power off failed")
        assert f"place {place(BLINKY)}" in said
        assert f"simplerest PDU {PDU_URL.format(port=power_lab.pdu_port)} outlet 1" in said
        assert switch.state(), "the PDU is back: the switch answers again"


def test_virtual_power_is_the_same_interface_on_the_farms_levers(power_lab: PowerLab) -> None:
    """The virtual PDU's outlets are this class; here it is driven directly."""
    switch = VirtualPower(BLINKY, power_lab.injector(BLINKY))
    try:
        switch.off()
        assert (switch.state(), power_lab.powered(BLINKY)) == (False, False)
        switch.on()
        assert (switch.state(), power_lab.powered(BLINKY)) == (True, True)
    finally:
        switch.close()


# --- the power-cut suite on a board driven only through its switch --------------------------


def test_the_power_cut_suite_runs_through_the_switch_alone(
    power_lab: PowerLab, tmp_path: Path
) -> None:
    """The MCUboot board is virtual but has a switch: the suite treats it as a real rig, so
    the farm's flash-operation lever is never used; every cut comes through the PDU (the farm's
    log counts them), and each one left the old or the new image, never neither."""
    sim_log = power_lab.workdir / "sim" / f"{MCUBOOT}.sim.log"
    cuts_before = sim_log.read_text().count("power lost")
    command = pytest_command(
        tmp_path,
        power_lab.boards,
        "suites/test_mcuboot_dfu.py",
        "-k",
        "power_cuts",
        "--board",
        MCUBOOT,
        "--sim-state",
        str(power_lab.state.path),
        "--power-cuts",
        "2",
    )
    # The run leases the board's place itself (as its own labgrid agent) and switches as that
    # holder: no one acquires it by hand.
    assert main(["farm", "places", str(power_lab.boards)]) == 0
    try:
        run = subprocess.run(
            command,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        for board in OUTLETS:
            power_lab.lab.client("-p", place(board), "delete", check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    cases = {
        case.attrib["name"]: [c.tag for c in case]
        for case in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    }
    switched = [n for n in cases if "through_the_switch" in n]
    levered = [n for n in cases if "power_cuts_during_a_swap" in n]
    assert len(switched) == 1 and "skipped" not in cases[switched[0]], cases
    assert len(levered) == 2 and all("skipped" in cases[n] for n in levered), cases
    assert sim_log.read_text().count("power lost") - cuts_before == 2
    # What the suite attached: two cuts, each followed by a boot of the old or the new image,
    # at least one of them before the application was up (the suite fails otherwise).
    attached = [f.read_text() for f in (tmp_path / "allure").glob("*-attachment.txt")]
    cuts = next(text for text in attached if text.startswith("uncut:")).splitlines()[1:]
    assert len(cuts) == 2 and all(line.endswith(("v1.0.0", "v1.1.0")) for line in cuts), cuts
    assert any("before the application was up" in line for line in cuts), cuts
