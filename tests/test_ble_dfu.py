"""dfuhil's BLE host against the virtual farm's BLE board, through the farm's HCI transport.

Both halves of issue 15 together, as a user runs them: ``dfuhil mcuboot list|upload|upgrade``
with ``--board B --transport ble`` and with ``--ble NAME``, in this process, on the radio a
separate farm process serves (SimState.ble_hci). The farm here has the shipped swap-move board
and a twin of it advertising another name, so two hosts can work on two boards at once.
A connection dropped at random points of an upload (the farm's lever, FaultInjector.drop_ble)
must end in an error, and the next upload must resume from the device's offset and leave the
secondary slot byte for byte the file (read back over the probe).
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from bumble.device import Device, Peer
from bumble.hci import Address
from bumble.transport import open_transport
from simfarm import shipped_subset, use_ble_only_build
from test_mcuboot_cli import BANNER, BOARD, run, slot_lines
from test_sim_ble import find, request, smp_answers, smp_characteristic, upload_chunk

from dfuhil.errors import InfrastructureError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.rig import Rig
from dfuhil.formats.smp import netbuf_window
from dfuhil.links.smp_ble import host_address
from dfuhil.links.smp_ble_hci import ble_target
from dfuhil.links.smp_link import SmpLink
from dfuhil.procedures.image_sign import sign_build
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.state import FarmProcess, SimState

REPO = Path(__file__).resolve().parents[1]
TIME_SCALE = 0.05
NAME = "vdk-swap-move"
TWIN = "vdk52840-swap-move-twin"
TWIN_NAME = "vdk-swap-move-twin"
TIMEOUT_S = 5.0  # a bound on a hang, never a speed claim


def twin_editor(folder: Path) -> Callable[[Any], None]:
    """A second BLE board: the swap-move board again with its own probe, port and name, and
    the app built for Bluetooth without UDP (4 netbufs), to keep several requests in flight."""

    def add_twin(data: Any) -> None:
        board = next(b for b in data["boards"] if b["name"] == BOARD)
        twin = dict(board)
        twin.update(
            name=TWIN,
            probe={"backend": "virtual", "snr": 900000077},
            ble={"name": TWIN_NAME},
            roles=["mcuboot", "swap-move"],
        )
        use_ble_only_build(data, twin, folder)
        data["boards"].append(twin)

    return add_twin


@dataclass
class BleFarm:
    boards: Path
    state_file: Path
    state: SimState

    def spec(self, name: str = BOARD) -> BoardSpec:
        return load_farm(self.boards).board(name)

    def args(self, *verb: str | Path, board: str = BOARD) -> list[str]:
        return [str(v) for v in verb] + [
            "--board", board, "--boards", str(self.boards), "--sim-state", str(self.state_file),
        ]  # fmt: skip

    def provision(self, name: str = BOARD) -> None:
        """MCUboot and the shipped application, booted (the secondary slot erased)."""
        spec = self.spec(name)
        rig = Rig(load_farm(self.boards), self.state)
        with rig.console(spec, open_timeout=5.0) as console, rig.probe(spec) as probe:
            Provisioner(ProvisioningPlan.for_board(spec), probe).run(STEPS)
            console.expect(BANNER, timeout=30)

    def faults(self, name: str = BOARD) -> FaultInjector:
        board = self.state.board(name)
        return FaultInjector(board.endpoint, board.snr)

    def secondary(self, name: str, length: int) -> bytes:
        spec = self.spec(name)
        slot = spec.layout.mcuboot_slots().secondary
        assert slot is not None
        with Rig(load_farm(self.boards), self.state).probe(spec) as probe:
            return probe.read(slot.start, length)

    def link(self, name: str = BOARD) -> SmpLink:
        """dfuhil's host on the farm's radio, as ``--board NAME --transport ble`` opens it."""
        farm = load_farm(self.boards)
        spec = farm.board(name)
        assert self.state.ble_hci is not None
        return SmpLink.over_ble(
            ble_target(farm, spec), self.state.ble_hci, name=name, timeout_s=TIMEOUT_S
        )


@pytest.fixture(scope="module")
def ble_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BleFarm]:
    work = tmp_path_factory.mktemp("ble-dfu")
    if not (REPO / "firmware" / "virtual" / "keys").is_dir():
        pytest.fail("no sample firmware: run `make firmware` first")
    boards = shipped_subset(work / "boards.yaml", [BOARD], TIME_SCALE, edit=twin_editor(work))
    state_file = work / "state.json"
    with FarmProcess(boards, state_file, log_dir=work / "sim", time_scale=TIME_SCALE) as state:
        yield BleFarm(boards, state_file, state)


@pytest.fixture
def farm(ble_farm: BleFarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BleFarm:
    """The board freshly provisioned; reports/ goes to the test's tmp dir."""
    monkeypatch.chdir(tmp_path)
    ble_farm.provision()
    return ble_farm


def image_file(farm: BleFarm, folder: Path, version: str, name: str = BOARD) -> Path:
    path = folder / f"update-{version}.bin"
    path.write_bytes(sign_build(farm.spec(name), "update", version))
    return path


# --- the CLI over BLE ---------------------------------------------------------------------------


def test_list_by_board_and_by_advertised_name(
    farm: BleFarm, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="dfuhil.links.smp_ble")
    code, out = run(farm.args("mcuboot", "list", "--transport", "ble"), capsys)
    assert code == 0, out
    row = slot_lines(out)[0]
    assert "1.0.0" in row and "active" in row and "confirmed" in row
    assert "ATT MTU 498" in caplog.text  # the negotiated link is logged

    argv = ["mcuboot", "list", "--ble", NAME, "--boards", str(farm.boards)]
    code, out = run([*argv, "--sim-state", str(farm.state_file)], capsys)
    assert code == 0, out
    assert "1.0.0" in slot_lines(out)[0]


def test_upload_then_upgrade_over_ble(
    farm: BleFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = image_file(farm, tmp_path, "1.1.0")
    code, out = run(farm.args("mcuboot", "upload", image, "--transport", "ble"), capsys)
    assert code == 0, out
    code, out = run(farm.args("mcuboot", "list", "--transport", "ble"), capsys)
    assert "1.1.0" in slot_lines(out)[1], out
    assert farm.secondary(BOARD, image.stat().st_size) == image.read_bytes()

    newer = image_file(farm, tmp_path, "1.2.0")
    code, out = run(farm.args("mcuboot", "upgrade", newer, "--transport", "ble"), capsys)
    assert code == 0, out
    # over BLE again: serial is refused for a while (the board's DFU lock is BLE's)
    code, out = run(farm.args("mcuboot", "list", "--transport", "ble"), capsys)
    assert code == 0, out
    row = slot_lines(out)[0]
    assert "1.2.0" in row and "active" in row and "confirmed" in row, out


# --- pipelining -----------------------------------------------------------------------------------


def test_an_upload_keeps_the_boards_netbufs_busy_and_stays_byte_exact(
    farm: BleFarm, tmp_path: Path
) -> None:
    """Over BLE dfuhil keeps as many requests in flight as the board's MCUmgr netbufs hold
    (its params' buf_count less the answer's), each as big as a netbuf (smp_svr's Bluetooth
    overlay: 2475 bytes in five writes); the image lands byte for byte."""
    farm.provision(TWIN)
    data = image_file(farm, tmp_path, "1.1.0", TWIN).read_bytes()
    log_file = farm.boards.parent / "sim" / f"{TWIN}.sim.log"
    with farm.link(TWIN) as link:
        params = link.params
        assert params is not None and (params.buf_size, params.buf_count) == (2475, 4), params
        before = len(log_file.read_text())
        result = link.upload(data)
    assert result.window == netbuf_window(params.buf_count) == 3, result
    assert result.requests <= len(data) // 2400 + 2, result.summary()
    assert farm.secondary(TWIN, len(data)) == data
    assert "no free netbuf" not in log_file.read_text()[before:]


def test_a_stock_build_with_udp_too_gets_one_request_at_a_time(
    farm: BleFarm, tmp_path: Path
) -> None:
    """The shipped build has the UDP transport as well, so Zephyr's UDP defaults stand: 2
    netbufs, one for the request and one for its answer. A second request in flight would be
    dropped at the radio; dfuhil reads the count and sends one at a time."""
    data = image_file(farm, tmp_path, "1.1.0").read_bytes()
    log_file = farm.boards.parent / "sim" / f"{BOARD}.sim.log"
    with farm.link() as link:
        params = link.params
        assert params is not None and (params.buf_size, params.buf_count) == (2475, 2), params
        before = len(log_file.read_text())
        result = link.upload(data)
    assert result.window == 1, result
    assert farm.secondary(BOARD, len(data)) == data
    assert "no free netbuf" not in log_file.read_text()[before:]


@pytest.fixture(scope="module")
def real_time_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BleFarm]:
    """The board in real time: a host's reaction (a millisecond or two) is then short against
    a connection event, as on a real radio (at 0.05 it spans several)."""
    work = tmp_path_factory.mktemp("ble-dfu-real-time")
    add_twin = twin_editor(work)

    def twin_alone(data: Any) -> None:
        add_twin(data)
        data["boards"] = [b for b in data["boards"] if b["name"] == TWIN]

    boards = shipped_subset(work / "boards.yaml", [BOARD], 1.0, edit=twin_alone)
    state_file = work / "state.json"
    with FarmProcess(boards, state_file, log_dir=work / "sim", time_scale=1.0) as state:
        running = BleFarm(boards, state_file, state)
        running.provision(TWIN)
        yield running


def test_a_request_beyond_the_boards_netbufs_is_dropped_at_the_radio(
    real_time_farm: BleFarm,
) -> None:
    """While the board erases for an upload's first chunk its work queue holds that request;
    echoes written meanwhile take the other netbufs, and one more finds none: Zephyr drops the
    write (no answer ever comes), as smp_reassembly_collect does (-ENOMEM).

    The erase is made long against any host's jitter: a stale image in the secondary slot (a
    blank slot is not erased again) and a first chunk announcing 20 pages, erased in real time
    (20 x 89.7 ms); the five writes are on the air within a few connection events. The board
    is the Bluetooth-only build (4 netbufs: 3 for requests)."""
    farm = real_time_farm
    farm.provision(TWIN)
    spec = farm.spec(TWIN)
    slot = spec.layout.mcuboot_slots().secondary
    assert slot is not None and farm.state.ble_hci is not None
    with Rig(load_farm(farm.boards), farm.state).probe(spec) as probe:
        probe.write_flash(slot.start, b"\x3d\xb8\xf3\x96")  # a stale image's magic
        probe.go()  # the probe halted the core to write
    hci = farm.state.ble_hci
    announced = 20 * spec.chip.page_size
    image = sign_build(spec, "update", "1.1.0")
    upload = upload_chunk(image + bytes(announced - len(image)), 0, 256, 1)
    echoes = [request(0, 0, 2, cbor2.dumps({"d": f"echo {i}"}), 20 + i) for i in range(4)]
    log_file = farm.boards.parent / "sim" / f"{TWIN}.sim.log"
    before = len(log_file.read_text())

    async def flood() -> list[int]:
        async with await open_transport(hci) as (source, sink):
            device = Device.with_hci("central", Address(host_address()), source, sink)
            await device.power_on()
            connection = await device.connect(await find(device, TWIN_NAME))
            peer = Peer(connection)
            await peer.request_mtu(498)
            characteristic = await smp_characteristic(peer)
            answers, on_notification = smp_answers()
            await peer.subscribe(characteristic, on_notification)
            for packet in [upload, *echoes]:
                await peer.write_value(characteristic, packet, with_response=False)
            seqs: list[int] = []
            while True:
                try:  # the first answer comes after the erase
                    answer = await asyncio.wait_for(answers.get(), 3.0 if seqs else TIMEOUT_S)
                except TimeoutError:
                    break
                seqs.append(answer[6])
            await connection.disconnect()
            return seqs

    answered = asyncio.run(flood())
    assert answered == [1, 20, 21], answered  # the upload and two echoes; two had no netbuf
    log = log_file.read_text()[before:]
    assert log.count("no free netbuf (3 busy): a write dropped") == 2, log


def test_a_host_answering_at_once_never_outruns_the_boards_netbufs(
    real_time_farm: BleFarm,
) -> None:
    """A central that sends the next request the moment an answer arrives, three in flight (the
    board's netbufs less the answer's): the answer reaches it only once it is on the air, after
    the board freed its request's netbuf, so no write is ever dropped."""
    farm = real_time_farm
    assert farm.state.ble_hci is not None
    hci = farm.state.ble_hci
    log_file = farm.boards.parent / "sim" / f"{TWIN}.sim.log"
    before = len(log_file.read_text())
    total, window, mtu = 24, 3, 247
    echo = [request(0, 0, 2, cbor2.dumps({"d": "x" * 360}), 40 + i) for i in range(total)]

    async def echoes() -> int:
        async with await open_transport(hci) as (source, sink):
            device = Device.with_hci("central", Address(host_address()), source, sink)
            await device.power_on()
            connection = await device.connect(await find(device, TWIN_NAME))
            peer = Peer(connection)
            await peer.request_mtu(mtu)
            characteristic = await smp_characteristic(peer)
            answers, on_notification = smp_answers()
            await peer.subscribe(characteristic, on_notification)
            sent = answered = 0
            while answered < total:
                while sent < total and sent - answered < window:
                    for i in range(0, len(echo[sent]), mtu - 3):
                        chunk = echo[sent][i : i + mtu - 3]
                        await peer.write_value(characteristic, chunk, with_response=False)
                    sent += 1
                try:
                    await asyncio.wait_for(answers.get(), TIMEOUT_S)
                except TimeoutError:
                    break
                answered += 1
            await connection.disconnect()
            return answered

    assert asyncio.run(echoes()) == total
    assert "no free netbuf" not in log_file.read_text()[before:]


# --- a dropped connection -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_upload_dropped_at_a_random_point_resumes_and_is_byte_exact(
    farm: BleFarm, tmp_path: Path, seed: int
) -> None:
    data = image_file(farm, tmp_path, f"1.1.{seed}").read_bytes()
    # past the first two requests (up to 2475 bytes each: the first alone makes the board
    # erase), before the last
    after = random.Random(seed).randrange(6000, len(data) - 3000)
    link = farm.link()
    try:
        link.connect()
        with farm.faults() as faults:
            faults.drop_ble(after_bytes=after)
        with pytest.raises(InfrastructureError) as lost:
            link.upload(data)
        assert "lost" in str(lost.value), lost.value
        result = link.upload(data)  # the link reconnects; the device says where it stands
    finally:
        link.close()
    # the lever counts ATT bytes (SMP headers and CBOR too): the device stands near, not at, them
    assert 0 < result.start_offset < len(data), result.summary()
    assert result.size == len(data)
    assert farm.secondary(BOARD, len(data)) == data


def test_the_cli_says_the_link_was_lost_and_the_next_upload_resumes(
    farm: BleFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = image_file(farm, tmp_path, "1.1.9")
    with farm.faults() as faults:
        faults.drop_ble(after_bytes=image.stat().st_size // 2)
    code, out = run(farm.args("mcuboot", "upload", image, "--transport", "ble"), capsys)
    assert code == 3, out  # the link is the rig's fault, not the product's
    assert "lost" in out and BOARD in out, out
    code, out = run(farm.args("mcuboot", "upload", image, "--transport", "ble"), capsys)
    assert code == 0, out
    assert re.search(r"resumed at \d+", out), out
    assert farm.secondary(BOARD, image.stat().st_size) == image.read_bytes()


# --- two hosts ----------------------------------------------------------------------------------


def test_two_hosts_on_one_farm_each_work_with_their_board(farm: BleFarm, tmp_path: Path) -> None:
    """Two dfuhil hosts join the farm's radio at once, each uploads to its own board."""
    farm.provision(TWIN)
    images = {
        BOARD: image_file(farm, tmp_path, "1.1.0").read_bytes(),
        TWIN: image_file(farm, tmp_path, "1.3.0", TWIN).read_bytes(),
    }
    errors: list[BaseException] = []

    def host(name: str) -> None:
        try:
            with farm.link(name) as link:
                link.upload(images[name])
        except BaseException as exc:  # reported below, with the board's name
            errors.append(exc)

    threads = [threading.Thread(target=host, args=(name,)) for name in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for name, data in images.items():
        assert farm.secondary(name, len(data)) == data, name
