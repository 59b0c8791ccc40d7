"""Links to a board on another lab host, on loopback: the console over RFC 2217 through a real
ser2net (started as labgrid's exporter starts it), the probe and the power cuts through the
virtual farm's TCP debug port, as a Rig attached to the place's endpoints reaches them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import ser2netproc
from simfarm import shipped_subset

from dfuhil.errors import InfrastructureError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.remote import RemoteEndpoints
from dfuhil.farm.rig import Rig
from dfuhil.formats.meshdfu import Opcode
from dfuhil.links.mesh_serial import MeshSerialLink
from dfuhil.links.smp_link import SmpLink
from dfuhil.procedures.image_sign import sign_for_board
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.lowlevel import VirtualLowLevelAPI
from dfuhil.sim.state import FarmProcess, SimState
from dfuhil.sim.wire import debug_port_address
from fixtures.farm import local_virtual_boards

ROOT = Path(__file__).resolve().parent.parent
SMP_BOARD = "vdk52840-swap-move"
MESH_BOARD = "vdk52832"
# SMP over serial alone: Zephyr's stock 4 netbufs, so requests pipeline (the swap-move build has
# the UDP transport too, and with it 2 netbufs: one request at a time)
PIPELINED_BOARD = "vdk52840-swap-scratch"
BOARDS = (SMP_BOARD, MESH_BOARD, PIPELINED_BOARD)
HOST = "lab-a"
TIME_SCALE = 0.1
BANNER = "Booting Zephyr OS build"
WAIT_S = 60.0  # upper bound for a boot or an upload at this time scale; never a speed claim

pytestmark = pytest.mark.skipif(
    ser2netproc.ser2net_binary() is None, reason="ser2net missing: run `make lab-setup`"
)


def place_of(name: str) -> str:
    return f"dfuhil-{name}"


def boards_file(path: Path, names: tuple[str, ...]) -> Path:
    """The shipped boards.yaml with these boards, each on lab host lab-a in a place of its own."""

    def on_lab_host(data: Any) -> None:
        for board in data["boards"]:
            if board["name"] in (SMP_BOARD, PIPELINED_BOARD):  # a DK's J-Link VCOM: paced
                mcuboot = data["firmware_sets"][board["firmware"]]["mcuboot"]
                mcuboot["smp_uart"] = {"delivery": "paced"}
            board["place"] = place_of(board["name"])
            board["lab_host"] = HOST

    return shipped_subset(path, names, TIME_SCALE, on_lab_host)


@dataclass
class Lab:
    """One lab host on loopback: its virtual farm and a ser2net per board."""

    farm: Farm
    state: SimState
    servers: dict[str, ser2netproc.Ser2net]

    def endpoints(self, name: str, server: ser2netproc.Ser2net | None = None) -> RemoteEndpoints:
        entry = self.state.board(name)
        assert entry.debug_tcp is not None
        return RemoteEndpoints(
            host=HOST,
            place=place_of(name),
            serial_url=(server or self.servers[name]).url,
            probe=entry.debug_tcp,
            smp_udp=entry.smp_udp,
        )

    def rig(self, *names: str) -> Rig:
        """A rig on "the CI machine": no local farm, the boards attached as a lease does."""
        rig = Rig(self.farm)
        for name in names:
            rig.attach_remote(name, self.endpoints(name))
        return rig


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not (ROOT / "firmware" / "virtual" / "keys").is_dir():
        pytest.skip("no sample firmware: run `make firmware`")
    work = tmp_path_factory.mktemp("lab")
    path = boards_file(work / "boards.yaml", BOARDS)
    farm = load_farm(path)
    with FarmProcess(path, work / "state.json", log_dir=work / "sim") as state:
        servers: dict[str, ser2netproc.Ser2net] = {}
        try:
            for name in BOARDS:
                servers[name] = ser2netproc.start(
                    state.board(name).serial, farm.board(name).serial.baud
                )
            yield Lab(farm, state, servers)
        finally:
            for server in servers.values():
                server.stop()


def provision(rig: Rig, board: BoardSpec) -> None:
    with rig.probe(board) as probe:
        Provisioner(ProvisioningPlan.for_board(board), probe).run(STEPS)


def test_the_farm_publishes_its_debug_port_on_tcp_loopback(lab: Lab) -> None:
    entry = lab.state.board(SMP_BOARD)
    assert entry.debug_tcp is not None and entry.debug_tcp.startswith("127.0.0.1:")
    api = VirtualLowLevelAPI("AUTO", endpoint=entry.debug_tcp)
    api.open()
    try:
        assert entry.snr in (api.enum_emu_snr() or [])
        api.connect_to_emu_with_snr(entry.snr)
        api.connect_to_device()
        assert api.read_device_version().startswith("NRF52840")
    finally:
        api.close()


def test_the_pytest_farm_starts_no_local_board_for_boards_that_have_a_place(lab: Lab) -> None:
    assert lab.farm.virtual_boards()  # virtual, but they run on their lab host
    assert local_virtual_boards(lab.farm) == []
    shipped = load_farm(ROOT / "boards.yaml")
    assert local_virtual_boards(shipped) == shipped.virtual_boards()


def test_debug_port_endpoints_name_unix_or_tcp() -> None:
    assert debug_port_address("unix:/tmp/x.sock") == "/tmp/x.sock"
    assert debug_port_address("tcp:127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert debug_port_address("127.0.0.1:4000") == ("127.0.0.1", 4000)
    for bad in ("127.0.0.1", "tcp:host:0", "host:port", "/tmp/x.sock"):
        with pytest.raises(ValueError, match="unix:PATH, tcp:HOST:PORT or HOST:PORT"):
            debug_port_address(bad)


def test_a_board_with_a_place_is_unreachable_until_its_place_is_leased(lab: Lab) -> None:
    rig = Rig(lab.farm)
    board = lab.farm.board(SMP_BOARD)
    for reach in (rig.serial_url, rig.probe, rig.smp_udp, rig.console):
        with pytest.raises(InfrastructureError, match=rf"place {place_of(SMP_BOARD)}.*not leased"):
            reach(board)
    rig.attach_remote(SMP_BOARD, lab.endpoints(SMP_BOARD))
    assert rig.serial_url(board) == lab.servers[SMP_BOARD].url
    assert rig.smp_udp(board) == lab.state.board(SMP_BOARD).smp_udp
    assert rig.time_scale(board) == TIME_SCALE  # boards.yaml's, no local farm state
    assert rig.debug_endpoint(board) == f"tcp:{lab.state.board(SMP_BOARD).debug_tcp}"
    rig.detach_remote(SMP_BOARD)
    with pytest.raises(InfrastructureError, match="not leased"):
        rig.serial_url(board)


def test_a_real_board_with_a_place_is_probed_through_the_j_link_remote_server(lab: Lab) -> None:
    virtual = lab.farm.board(SMP_BOARD)
    for tool in ("pynrfjprog", "nrfutil"):
        real = replace(virtual, probe=replace(virtual.probe, backend=tool))
        rig = Rig(replace(lab.farm, boards=(real,)))
        endpoints = replace(lab.endpoints(SMP_BOARD), probe="127.0.0.1:19020")
        rig.attach_remote(SMP_BOARD, endpoints)
        probe = rig.probe(real)  # not opened: there is no J-Link Remote Server here
        assert type(probe).__name__ == ("NrfutilProbe" if tool == "nrfutil" else "Probe")
        assert (probe.target.ip, probe.target.port) == ("127.0.0.1", 19020)
        assert probe.target.snr == virtual.probe.snr
        assert rig.time_scale(real) == 1.0


def test_console_over_rfc2217_keeps_early_boot_lines_and_smp_uploads_and_lists(
    lab: Lab,
) -> None:
    rig = lab.rig(PIPELINED_BOARD)
    board = lab.farm.board(PIPELINED_BOARD)
    assert board.mcuboot is not None
    with rig.console(board, open_timeout=5.0) as console:
        assert console.url.startswith("rfc2217://127.0.0.1:")
        provision(rig, board)  # ends with a reset: the first line is printed after it
        console.expect(BANNER, timeout=WAIT_S)
        # MCUboot's first line, printed right after the reset, long before the app's banner.
        assert console.text().startswith("*** Booting MCUboot"), console.text()[:200]
    body = board.mcuboot.build("update").read_bytes()
    image = sign_for_board(body + bytes(24 * 1024), board, "1.1.0")
    console = rig.console(board, open_timeout=5.0)
    with SmpLink.over_console(
        console, owns_console=True, timeout_s=10.0, uart=board.mcuboot.uart
    ) as smp:
        result = smp.upload(image)
        slots = smp.image_list()
    assert result.window > 1, "pipelining as configured, over RFC 2217 too"
    secondary = [s for s in slots if s.slot == 1]
    assert secondary and secondary[0].version.startswith("1.1.0")


def test_mesh_serial_frames_are_exchanged_over_rfc2217(lab: Lab) -> None:
    rig = lab.rig(MESH_BOARD)
    board = lab.farm.board(MESH_BOARD)
    provision(rig, board)
    payload = b"remote-echo"
    with MeshSerialLink(rig.serial_url(board), baud=board.serial.baud, name=board.name) as link:
        deadline = time.monotonic() + WAIT_S
        answer = None
        while answer is None and time.monotonic() < deadline:  # the app may still be booting
            link.send(Opcode.ECHO, payload)
            frame = link.next_frame(2.0)
            while frame is not None and frame.opcode != Opcode.ECHO_RSP:
                frame = link.next_frame(2.0)
            answer = frame
    assert answer is not None, "the mesh app answered no echo over RFC 2217"
    assert answer.payload == payload


def test_a_power_cut_through_the_tcp_debug_port_silences_the_board_until_power_on(
    lab: Lab,
) -> None:
    rig = lab.rig(SMP_BOARD)
    board = lab.farm.board(SMP_BOARD)
    with rig.console(board, open_timeout=5.0) as console:
        provision(rig, board)
        console.expect(BANNER, timeout=WAIT_S)
        with FaultInjector(rig.debug_endpoint(board), board.probe.snr) as faults:
            faults.cut_power_now()
            with rig.probe(board) as probe:
                status = probe.extension("sim_status")
                assert status is not None and status()["powered"] is False
            console.skip_to_end()
            faults.power_on()
            console.expect(BANNER, timeout=WAIT_S)  # it boots again: it was off, now on


def test_a_serial_server_that_drops_mid_test_is_an_infrastructure_error_naming_host_place_port(
    lab: Lab,
) -> None:
    server = ser2netproc.start(lab.state.board(MESH_BOARD).serial)
    try:
        rig = Rig(lab.farm)
        rig.attach_remote(MESH_BOARD, lab.endpoints(MESH_BOARD, server))
        board = lab.farm.board(MESH_BOARD)
        with rig.console(board, open_timeout=5.0) as console:
            server.stop()
            with pytest.raises(InfrastructureError) as raised:
                console.expect("never printed", timeout=WAIT_S)
    finally:
        server.stop()
    message = str(raised.value)
    assert f"127.0.0.1:{server.port}" in message
    assert HOST in message and place_of(MESH_BOARD) in message
    assert "labgrid-exporter" in message  # the remedy points at the lab host, not the product


def test_a_lab_host_that_does_not_answer_is_an_infrastructure_error(lab: Lab) -> None:
    rig = Rig(lab.farm)
    port = ser2netproc.free_port()  # nobody listens there
    endpoints = RemoteEndpoints(HOST, place_of(SMP_BOARD), f"rfc2217://127.0.0.1:{port}",
                                f"127.0.0.1:{port}")  # fmt: skip
    rig.attach_remote(SMP_BOARD, endpoints)
    board = lab.farm.board(SMP_BOARD)
    with pytest.raises(InfrastructureError, match=place_of(SMP_BOARD)):
        rig.console(board).open()
    with pytest.raises(InfrastructureError, match="not reachable"), rig.probe(board):
        pass
