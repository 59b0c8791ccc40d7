"""``dfuhil farm export``: the labgrid exporter file of one lab host.

Bad input is refused with the board, the field and the fix; the file written for a running
2-board virtual farm is then served by a real ``labgrid-exporter`` (with its own ser2net) under
a real ``labgrid-coordinator``, and each board is reached through the exported RFC 2217 port:
a board reset through its probe prints its own banner there.
"""

from __future__ import annotations

import json
import os
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import serial
from ruamel.yaml import YAML

from dfuhil.cli import main
from dfuhil.farm.export import Endpoint, Export, ExportedBoard, build_export
from dfuhil.farm.loader import load_farm
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import ram_end, sample_image
from dfuhil.sim.lowlevel import VirtualLowLevelAPI
from dfuhil.sim.state import FarmProcess, SimState, load_state, pid_alive
from tests.labgrid_lab import LabgridLab, free_port, labgrid_lab
from tests.simfarm import TIME_SCALE, WAIT_S, SimBoard, boards_yaml, chip

HOST = "lab-a"
BOARDS = [
    SimBoard("va", "nRF52832_xxAA", "PCA10040", 801),
    SimBoard("vb", "nRF52832_xxAA", "PCA10040", 802),
]

REAL = """\
version: 1
flash_layouts:
  l52: {chip: nRF52832_xxAA, regions: {app: {start: 0x26000, size: 0x51000}}}
boards:
"""


def real_board(
    name: str, host: str, port: str, probe: str = "remote: 192.0.2.7:19021", snr: int = 682000001
) -> str:
    return (
        f"  - {{name: {name}, chip: nRF52832_xxAA, lab_host: {host}, "
        f"probe: {{snr: {snr}, {probe}}}, serial: {{port: '{port}', baud: 115200}}, "
        "flash_layout: l52}\n"
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "boards.yaml"
    path.write_text(text)
    return path


def export(*args: str) -> int:
    return main(["farm", "export", *(str(a) for a in args)])


# --- real boards and bad input (no process started) ----------------------------------------


def test_real_boards_export_their_serial_device_and_jlink_remote_server(tmp_path: Path) -> None:
    by_id = "/dev/serial/by-id/usb-SEGGER_J-Link_000682000001-if00"
    boards = write(
        tmp_path,
        REAL
        + real_board("r1", HOST, by_id)
        + real_board("r2", "lab-b", "/dev/ttyACM1", snr=682000002),
    )
    out = tmp_path / "lab-a.yaml"
    assert export(boards, "--host", HOST, "--out", out) == 0
    config = YAML(typ="safe").load(out.read_text())
    assert config == {
        "r1": {
            "console": {"cls": "RawSerialPort", "port": by_id, "speed": 115200},
            "probe": {
                "cls": "NetworkService",
                "address": "192.0.2.7",
                "port": 19021,
                "username": "",
            },
        }
    }


def test_a_port_that_is_no_by_id_path_or_uses_rtscts_is_exported_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = real_board("r2", "lab-b", "/dev/ttyACM1", "ip: 192.0.2.8")
    boards = write(tmp_path, REAL + entry.replace("baud: 115200", "flow_control: rtscts"))
    assert export(boards, "--host", "lab-b") == 0
    captured = capsys.readouterr()
    config = YAML(typ="safe").load(captured.out)
    assert config["r2"]["probe"]["port"] == 19020  # ip alone: the Remote Server's default port
    assert "r2: /dev/ttyACM1 may name another board after a replug" in captured.err
    assert "r2: labgrid's ser2net opens the port without RTS/CTS" in captured.err


def test_unknown_host_lists_the_hosts_of_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boards = write(
        tmp_path,
        REAL
        + real_board("r1", HOST, "/dev/ttyACM0")
        + real_board("r2", "lab-b", "/dev/ttyACM1", snr=682000002),
    )
    assert export(boards, "--host", "lab-c") == 2
    err = capsys.readouterr().err
    assert "no board on 'lab-c'" in err
    assert "lab hosts in the file: lab-a, lab-b" in err
    assert "Traceback" not in err


def test_a_network_serial_port_is_refused_naming_board_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boards = write(tmp_path, REAL + real_board("r1", HOST, "rfc2217://192.0.2.9:4000"))
    out = tmp_path / "never.yaml"
    assert export(boards, "--host", HOST, "--out", out) == 2
    err = capsys.readouterr().err
    assert "boards.r1.serial.port" in err
    assert "give the board's /dev/serial/by-id/... path on lab-a" in err
    assert not out.exists()


def test_a_probe_without_remote_server_is_refused_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boards = write(tmp_path, REAL + real_board("r1", HOST, "/dev/ttyACM0", "speed_khz: 4000"))
    assert export(boards, "--host", HOST) == 2
    err = capsys.readouterr().err
    assert "boards.r1.probe.remote" in err
    assert "probe: {remote: LABHOST:19020}" in err


def test_virtual_boards_need_their_farm_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boards = write(tmp_path, lab_boards_yaml())
    assert export(boards, "--host", HOST, "--sim-state", tmp_path / "none.json") == 3
    err = capsys.readouterr().err
    assert "no virtual farm is running" in err
    assert "dfuhil sim serve --boards" in err


# --- the lab harness itself ------------------------------------------------------------------


def test_a_crashed_exporter_leaves_no_ser2net_behind(tmp_path: Path) -> None:
    """labgrid's exporter runs a ser2net per acquired serial port; killed with SIGKILL it
    orphans them. The harness stops them by pid all the same."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        board = ExportedBoard("k1", os.ttyname(slave), 115200, Endpoint("127.0.0.1", free_port()))
        config = tmp_path / "lab-k.yaml"
        config.write_text(Export("lab-k", (board,)).yaml())
        with labgrid_lab(tmp_path) as lab:
            exporter = lab.start_exporter("lab-k", config)
            with lab.place("crash", "lab-k/k1/*"):
                ser2net = set(exporter.children)
                assert len(ser2net) == 1
                lab.stop_exporter("lab-k", kill=True)
                assert not any(pid_alive(pid) for pid in ser2net)
        assert lab.leftovers() == []
    finally:
        os.close(master)
        os.close(slave)


# --- the real exporter on a running virtual farm --------------------------------------------


def lab_boards_yaml() -> str:
    """The simfarm boards file with every board on lab host ``HOST``."""
    text = boards_yaml(BOARDS, TIME_SCALE)
    return text.replace(
        "    roles: [provisioning]\n", f"    roles: [provisioning]\n    lab_host: {HOST}\n"
    )


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimState]:
    workdir = tmp_path_factory.mktemp("export-farm")
    boards = workdir / "boards.yaml"
    boards.write_text(lab_boards_yaml())
    process = FarmProcess(
        boards, workdir / "sim-state.json", log_dir=workdir / "logs", time_scale=TIME_SCALE
    )
    state = process.start()
    try:
        yield with_debug_tcp(state)
    finally:
        process.stop()


def with_debug_tcp(state: SimState) -> SimState:
    """The farm's state, with a debug_tcp per board.

    Until the virtual farm serves its debug port on TCP (lab-links), the state has none; the
    exporter only publishes the address (it never connects to a NetworkService), so a free
    loopback port stands in. Once the farm fills debug_tcp, this changes nothing.
    """
    data = json.loads(state.path.read_text())
    missing = [e for e in data["boards"].values() if not e.get("debug_tcp")]
    for entry in missing:
        entry["debug_tcp"] = f"127.0.0.1:{free_port()}"
    if missing:
        state.path.write_text(json.dumps(data))
    return load_state(state.path)


@pytest.fixture(scope="module")
def lab(farm: SimState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabgridLab]:
    workdir = tmp_path_factory.mktemp("export-lab")
    config = workdir / f"{HOST}.yaml"
    boards = farm.path.with_name("boards.yaml")
    assert export(boards, "--host", HOST, "--sim-state", farm.path, "--out", config) == 0
    with labgrid_lab(workdir) as running:
        running.start_exporter(HOST, config)
        yield running
    assert running.leftovers() == [], "a labgrid process or its ser2net outlived the lab"


def test_exported_groups_carry_console_and_probe(farm: SimState, lab: LabgridLab) -> None:
    resources = lab.resources()
    for board in BOARDS:
        console = resources[f"{HOST}/{board.name}/NetworkSerialPort/console"]
        assert console["params"]["host"] == "127.0.0.1"
        assert console["params"]["extra"]["path"] == farm.board(board.name).serial
        assert console["params"]["speed"] == board.baud
        probe = resources[f"{HOST}/{board.name}/NetworkService/probe"]
        address, port = str(farm.board(board.name).debug_tcp).rsplit(":", 1)
        assert (probe["params"]["address"], probe["params"]["port"]) == (address, int(port))


def test_each_board_is_reached_through_its_rfc2217_port(farm: SimState, lab: LabgridLab) -> None:
    """Each board runs an image printing its own name; reset through its probe, the banner
    arrives on the port the exporter serves for that board's group (not the other's)."""
    with lab.place("export-test", *(f"{HOST}/{b.name}/*" for b in BOARDS)):
        ports = lab.serial_ports("export-test")
        assert len(lab.exporters[HOST].children) == len(
            BOARDS
        )  # a ser2net per port, stopped by pid
        for board in BOARDS:
            banner = f"hello from {board.name}"
            image = sample_image(
                0,
                0x2000,
                Behaviour("blinky", board.name, banner=banner),
                board.name,
                ram_end(chip(board.chip)),
            )
            port = ports[f"{HOST}/{board.name}/NetworkSerialPort/console"]
            # ser2net (4.3) never answers SET_CONTROL for DTR/RTS on a pty (it has no modem
            # lines), and pyserial waits for that answer at open: ign_set_control skips it.
            url = f"rfc2217://127.0.0.1:{port}?ign_set_control"
            with api(farm, board) as probe, serial.serial_for_url(url, board.baud) as line:
                probe.erase_all()
                probe.write(0, image, True)
                line.timeout = 0.1
                line.reset_input_buffer()
                probe.sys_reset()
                probe.go()
                received = read_until(line, banner.encode())
            assert banner.encode() in received, f"{board.name} via {url}: {received!r}"


def read_until(line: serial.SerialBase, wanted: bytes) -> bytes:
    received = b""
    deadline = time.monotonic() + WAIT_S  # an upper bound, not a speed claim
    while wanted not in received and time.monotonic() < deadline:
        received += line.read(256)
    return received


@contextmanager
def api(farm: SimState, board: SimBoard) -> Iterator[VirtualLowLevelAPI]:
    """A debug session to ``board`` through the farm's own debug port."""
    probe = VirtualLowLevelAPI("AUTO", endpoint=farm.board(board.name).endpoint)
    probe.open()
    try:
        probe.connect_to_emu_with_snr(board.snr)
        probe.connect_to_device()
        yield probe
    finally:
        probe.close()


def test_build_export_reads_the_running_farm(farm: SimState) -> None:
    exported = build_export(load_farm(farm.path.with_name("boards.yaml")), HOST, farm.path)
    assert [b.serial_port for b in exported.boards] == [farm.board(b.name).serial for b in BOARDS]
