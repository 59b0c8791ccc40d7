"""SMP over Bluetooth LE on the virtual farm, seen from a plain bumble central in another process.

One farm process serves the shipped swap-move board (serial, UDP and BLE); the tests join its
radio the way any host does, through the HCI transport the farm publishes (SimState.ble_hci),
with bumble's own API only: no dfuhil host code on the central's side. The serial answers the
BLE answers are compared with are read off the board's pty with the ``smp`` package.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
import serial
from bumble.core import UUID, AdvertisingData
from bumble.device import ConnectionParametersPreferences, Device, Peer
from bumble.gatt import Characteristic
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address, Phy
from bumble.transport import open_transport
from ruamel.yaml import YAML
from smp import header as smphdr
from smpwire import read_frames, smp_frames
from test_mcuboot_cli import BANNER, BOARD, farm_subset

from dfuhil.errors import InputError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.rig import Rig
from dfuhil.procedures.image_sign import sign_build
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.ble_link import AirPacer, LinkState, packets_per_event
from dfuhil.sim.ble_smp import RESTORE_S
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.state import FarmProcess, SimState

REPO = Path(__file__).resolve().parents[1]
TIME_SCALE = 0.05
WAIT_S = 30.0  # a bound on a hang, never a speed claim
SMP_SERVICE = "8D53DC1D-1DB7-4CD3-868B-8A527460AA84"
SMP_CHARACTERISTIC = "DA2E7828-FBCE-4E01-AE9E-261174997C48"
NAME = "vdk-swap-move"
CENTRAL_MTU = 247
LOCK_S = 5.0  # nRF Desktop's DFU lock timeout (boards.yaml dfu_lock_timeout_ms)


@dataclass
class BleFarm:
    boards: Path
    state: SimState
    board: BoardSpec
    log: Path

    @property
    def hci(self) -> str:
        assert self.state.ble_hci is not None
        return self.state.ble_hci


@contextmanager
def ble_farm(work: Path, ble_link: dict[str, object] | None = None) -> Iterator[BleFarm]:
    """A farm process serving the shipped swap-move board, provisioned and booted; with
    ``ble_link`` its firmware set states those Bluetooth stack settings."""
    if not (REPO / "firmware" / "virtual" / "keys").is_dir():
        pytest.fail("no sample firmware: run `make firmware` first")
    boards = farm_subset(work / "boards.yaml", [BOARD], TIME_SCALE)
    if ble_link is not None:
        yaml = YAML()
        data = yaml.load(boards.read_text())
        data["firmware_sets"]["nrf52840-mcuboot-swap-move"]["mcuboot"]["ble_link"] = ble_link
        with boards.open("w") as out:
            yaml.dump(data, out)
    state_file = work / "state.json"
    with FarmProcess(boards, state_file, log_dir=work / "sim", time_scale=TIME_SCALE) as state:
        spec = load_farm(boards).board(BOARD)
        rig = Rig(load_farm(boards), state)
        with rig.console(spec, open_timeout=5.0) as console, rig.probe(spec) as probe:
            Provisioner(ProvisioningPlan.for_board(spec), probe).run(STEPS)
            console.expect(BANNER, timeout=20)
        yield BleFarm(boards, state, spec, work / "sim" / f"{BOARD}.sim.log")


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BleFarm]:
    with ble_farm(tmp_path_factory.mktemp("sim-ble")) as running:
        yield running


# --- a plain bumble central ------------------------------------------------------------------


def request(group: int, command: int, op: int, payload: bytes, seq: int) -> bytes:
    header = smphdr.Header(
        op=smphdr.OP(op),
        version=smphdr.Version.V2,
        flags=smphdr.Flag(0),
        length=len(payload),
        group_id=group,
        sequence=seq,
        command_id=command,
    )
    return bytes(header) + payload


ECHO = request(0, 0, 2, bytes.fromhex("a16164656869206274"), 7)  # {"d": "ehi bt"}
IMAGE_LIST = request(1, 0, 0, bytes.fromhex("a0"), 8)  # image state read, {}


async def find(device: Device, name: str, timeout_s: float = WAIT_S) -> Address:
    found: asyncio.Future[Address] = asyncio.get_running_loop().create_future()

    def on_advertisement(advertisement: object) -> None:
        data = getattr(advertisement, "data", None)
        named = data is not None and data.get(AdvertisingData.COMPLETE_LOCAL_NAME) == name
        if named and not found.done():
            found.set_result(advertisement.address)  # type: ignore[attr-defined]

    device.on("advertisement", on_advertisement)
    await device.start_scanning(active=True)
    try:
        return await asyncio.wait_for(found, timeout_s)
    finally:
        await device.stop_scanning()


async def smp_characteristic(peer: Peer) -> CharacteristicProxy[bytes]:
    """Discover the SMP service and its characteristic, as any GATT client does."""
    await peer.discover_services([UUID(SMP_SERVICE)])
    service = peer.get_services_by_uuid(UUID(SMP_SERVICE))[0]
    await service.discover_characteristics()
    return service.get_characteristics_by_uuid(UUID(SMP_CHARACTERISTIC))[0]


def smp_answers() -> tuple[asyncio.Queue[bytes], Callable[[bytes], None]]:
    """A queue of whole SMP answers and the notification handler that fills it (an answer may
    span notifications: the header's length says where it ends)."""
    answers: asyncio.Queue[bytes] = asyncio.Queue()
    buffer = bytearray()

    def on_notification(value: bytes) -> None:
        buffer.extend(value)
        while len(buffer) >= 8 and len(buffer) >= 8 + int.from_bytes(buffer[2:4], "big"):
            end = 8 + int.from_bytes(buffer[2:4], "big")
            answers.put_nowait(bytes(buffer[:end]))
            del buffer[:end]

    return answers, on_notification


async def smp_exchange(
    hci: str, packets: list[bytes], *, mtu: int = CENTRAL_MTU
) -> dict[str, object]:
    """Connect to the board by name, exchange MTU, subscribe, write each request without
    response and collect each answer (notifications joined until the header's length)."""
    async with await open_transport(hci) as (source, sink):
        device = Device.with_hci("central", Address("F0:F1:F2:F3:F4:F5"), source, sink)
        await device.power_on()
        address = await find(device, NAME)
        connection = await device.connect(address)
        peer = Peer(connection)
        negotiated = await peer.request_mtu(mtu)
        characteristic = await smp_characteristic(peer)
        properties = int(characteristic.properties)
        answers, on_notification = smp_answers()
        await peer.subscribe(characteristic, on_notification)
        out = []
        for packet in packets:
            await peer.write_value(characteristic, packet, with_response=False)
            out.append(await asyncio.wait_for(answers.get(), WAIT_S))
        await connection.disconnect()
        return {"answers": out, "mtu": negotiated, "properties": properties}


def serial_answer(state: SimState, packet: bytes) -> bytes:
    with serial.Serial(state.board(BOARD).serial, 115200, timeout=0.2) as port:
        port.reset_input_buffer()
        port.write(smp_frames(packet))
        return read_frames(port)[1]


# --- tests -----------------------------------------------------------------------------------


def test_the_farm_publishes_its_link_as_a_bumble_transport(farm: BleFarm) -> None:
    assert farm.hci.startswith("tcp-client:127.0.0.1:")


def lock_expired() -> None:
    """Wait out nRF Desktop's DFU lock (5 s device time) that the last image command took."""
    time.sleep(LOCK_S * TIME_SCALE + 0.2)


def test_smp_over_gatt_answers_as_serial_does_byte_for_byte(farm: BleFarm) -> None:
    lock_expired()
    over_serial = [serial_answer(farm.state, p) for p in (ECHO, IMAGE_LIST)]
    lock_expired()  # the image list claimed the DFU lock for serial
    result = asyncio.run(smp_exchange(farm.hci, [ECHO, IMAGE_LIST]))
    assert result["answers"] == over_serial
    assert b"ehi bt" in over_serial[0] and b"images" in over_serial[1]
    props = Characteristic.Properties(result["properties"])  # type: ignore[arg-type]
    assert props & Characteristic.Properties.WRITE_WITHOUT_RESPONSE
    assert props & Characteristic.Properties.NOTIFY


def test_the_dfu_lock_arbitrates_ble_against_serial(farm: BleFarm) -> None:
    """nRF Desktop's case: an image command over BLE holds the lock; serial is refused."""
    lock_expired()
    asyncio.run(smp_exchange(farm.hci, [IMAGE_LIST]))
    refused = serial_answer(farm.state, IMAGE_LIST)
    assert cbor2.loads(refused[8:]) == {"rc": 11}  # MGMT_ERR_EACCESSDENIED
    lock_expired()
    assert b"images" in serial_answer(farm.state, IMAGE_LIST)


def test_mtu_exchange_settles_on_the_smaller_side(farm: BleFarm) -> None:
    assert asyncio.run(smp_exchange(farm.hci, [ECHO], mtu=247))["mtu"] == 247
    assert asyncio.run(smp_exchange(farm.hci, [ECHO], mtu=517))["mtu"] == 498  # the board's
    log = farm.log.read_text()
    assert "ATT MTU exchange" in log and "ATT MTU 498" in log and "data length 251" in log


async def scan_for(hci: str, address: str, name: str = NAME, timeout_s: float = WAIT_S) -> bool:
    """Whether a central at ``address`` hears the board advertise within ``timeout_s``."""
    async with await open_transport(hci) as (source, sink):
        device = Device.with_hci("scanner", Address(address), source, sink)
        await device.power_on()
        try:
            await find(device, name, timeout_s)
        except TimeoutError:
            return False
        return True


def test_two_centrals_scan_the_same_board_at_once(farm: BleFarm) -> None:
    async def both() -> list[bool]:
        return list(
            await asyncio.gather(
                scan_for(farm.hci, "F0:00:00:00:00:01"), scan_for(farm.hci, "F0:00:00:00:00:02")
            )
        )

    assert asyncio.run(both()) == [True, True]


async def dropped_session(hci: str, lever: Callable[[], object], writes: int) -> int | None:
    """Connect, pull the lever, write echo requests; the disconnection reason seen, if any."""
    async with await open_transport(hci) as (source, sink):
        device = Device.with_hci("central", Address("F0:F1:F2:F3:F4:F6"), source, sink)
        await device.power_on()
        connection = await device.connect(await find(device, NAME))
        gone: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        connection.on("disconnection", lambda reason: gone.done() or gone.set_result(reason))
        peer = Peer(connection)
        characteristic = await smp_characteristic(peer)
        await peer.subscribe(characteristic, lambda _value: None)
        lever()
        for _ in range(writes):
            if gone.done():
                break
            await peer.write_value(characteristic, ECHO, with_response=False)
            await asyncio.sleep(0.1)
        try:
            return await asyncio.wait_for(gone, 5.0)
        except TimeoutError:
            await connection.disconnect()
            return None


def injector(farm: BleFarm) -> FaultInjector:
    board = farm.state.board(BOARD)
    return FaultInjector(board.endpoint, board.snr)


def test_the_lever_drops_the_connection_now(farm: BleFarm) -> None:
    with injector(farm) as faults:
        reason = asyncio.run(dropped_session(farm.hci, faults.drop_ble, writes=0))
    assert reason == 0x13  # remote user terminated connection


def test_the_lever_drops_the_connection_after_n_bytes(farm: BleFarm) -> None:
    """Echo writes are 20 ATT bytes: the link holds for two and drops with the third."""
    with injector(farm) as faults:
        reason = asyncio.run(
            dropped_session(farm.hci, lambda: faults.drop_ble(after_bytes=50), writes=6)
        )
    assert reason == 0x13
    log = farm.log.read_text()
    assert "dropping the link after 60 bytes" in log


def test_peer_tools_find_the_name_and_the_smp_service(farm: BleFarm, tmp_path: Path) -> None:
    """bumble's own apps, on the farm's transport, as a person would type them."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "NO_COLOR": "1"}
    out = tmp_path / "bumble-scan.txt"
    with out.open("w") as sink:
        scan = subprocess.Popen(
            [str(bindir / "bumble-scan"), farm.hci], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + WAIT_S
        seen = ""
        while time.monotonic() < deadline and not (NAME in seen and SMP_SERVICE in seen):
            time.sleep(0.2)
            seen = out.read_text(errors="replace")
    finally:
        scan.terminate()  # bumble-scan scans until stopped: stop it by its pid
        scan.wait(timeout=10)
    assert NAME in seen and SMP_SERVICE in seen, seen[-2000:]
    dump = subprocess.run(
        [str(bindir / "bumble-gatt-dump"), farm.hci, NAME],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert SMP_SERVICE in dump.stdout.upper(), dump.stdout + dump.stderr
    assert SMP_CHARACTERISTIC in dump.stdout.upper(), dump.stdout + dump.stderr


def test_the_board_goes_silent_without_power_and_comes_back_after_boot(farm: BleFarm) -> None:
    with injector(farm) as faults:
        faults.cut_power_now()
        try:
            assert not asyncio.run(scan_for(farm.hci, "F0:00:00:00:00:03", timeout_s=2.0))
        finally:
            faults.power_on()
    assert asyncio.run(scan_for(farm.hci, "F0:00:00:00:00:04"))
    assert "BLE: radio off" in farm.log.read_text()


# --- the link model alone (device time, no farm) -----------------------------------------------


def test_a_stream_of_writes_arrives_at_the_links_pace() -> None:
    """Full-MTU writes queued at once come in 3 LL packets per 7.5 ms event (251-byte data
    length, 7.5 ms event length), i.e. 1.5 writes per event: never faster than the link."""
    state = LinkState(interval=6, latency=0, timeout=42, att_mtu=498, data_length=251)
    pacer = AirPacer(state, anchor_s=0.0)
    arrivals = [pacer.received(498, 0.0) for _ in range(30)]
    assert arrivals == sorted(arrivals)
    events = {round(t / state.interval_s - 0.5) for t in arrivals}
    assert len(events) == 20  # 30 writes x 2 packets / 3 per event
    assert packets_per_event(state) == 3


def test_an_idle_peripheral_hears_a_request_only_at_its_latency_events() -> None:
    busy = LinkState(interval=6, latency=0, timeout=42, att_mtu=247, data_length=251)
    lazy = LinkState(interval=6, latency=4, timeout=42, att_mtu=247, data_length=251)
    at = 0.1  # an idle link, a small request
    fast, slow = AirPacer(busy, 0.0), AirPacer(lazy, 0.0)
    heard_fast, heard_slow = fast.received(20, at), slow.received(20, at)
    assert round(heard_slow / lazy.interval_s) % (lazy.latency + 1) == 0
    assert heard_slow > heard_fast
    # its answer goes out at the next event: a peripheral with data to send does not sleep
    assert slow.sent(20, heard_slow) - heard_slow < 2 * lazy.interval_s


UPLOAD = request(1, 1, 2, cbor2.dumps({"image": 0, "len": 4096, "off": 0, "data": bytes(64)}), 9)


def test_nrf_desktop_lowers_the_latency_while_an_upload_runs(tmp_path: Path) -> None:
    """boards.yaml ``ble_link: {latency_request: true, default_latency: 99}``: an image upload
    over BLE asks for latency 0, and 5 s (device time) without one raise it back to 99."""
    link = {"latency_request": True, "default_latency": 99, "smp_conn_param_control": False}
    with ble_farm(tmp_path, link) as desktop:

        async def upload_then_idle() -> None:
            async with await open_transport(desktop.hci) as (source, sink):
                device = Device.with_hci("central", Address("F0:F1:F2:F3:F4:F7"), source, sink)
                await device.power_on()
                lazy = ConnectionParametersPreferences(max_latency=99)  # a HID central's
                connection = await device.connect(
                    await find(device, NAME), connection_parameters_preferences={Phy.LE_1M: lazy}
                )
                peer = Peer(connection)
                await peer.request_mtu(CENTRAL_MTU)
                characteristic = await smp_characteristic(peer)
                answered = asyncio.Event()
                await peer.subscribe(characteristic, lambda _value: answered.set())
                await peer.write_value(characteristic, UPLOAD, with_response=False)
                await asyncio.wait_for(answered.wait(), WAIT_S)
                await asyncio.sleep((RESTORE_S + 2) * TIME_SCALE + 0.5)
                await connection.disconnect()

        asyncio.run(upload_then_idle())
        log = desktop.log.read_text()
    assert "peripheral latency 99" in log[log.index("BLE: connected") :].splitlines()[0]
    lowered = log.index("latency module lowered the latency")
    assert "peripheral latency 0" in log[lowered:].splitlines()[0]
    raised = log.index("latency module raised the latency")
    assert lowered < raised
    assert "peripheral latency 99" in log[raised:].splitlines()[0]


def test_ble_link_needs_the_ble_transport(tmp_path: Path) -> None:
    boards = farm_subset(tmp_path / "boards.yaml", [BOARD], TIME_SCALE)
    yaml = YAML()
    data = yaml.load(boards.read_text())
    mcuboot = data["firmware_sets"]["nrf52840-mcuboot-swap-move"]["mcuboot"]
    mcuboot["transports"] = ["serial", "udp"]
    mcuboot["ble_link"] = {"latency_request": True}
    del data["boards"][0]["ble"]
    with boards.open("w") as out:
        yaml.dump(data, out)
    with pytest.raises(InputError) as refused:
        load_farm(boards)
    assert "ble_link" in str(refused.value) and "add ble to transports" in str(refused.value)


def upload_chunk(image: bytes, off: int, size: int, seq: int) -> bytes:
    body: dict[str, object] = {"off": off, "data": image[off : off + size]}
    if off == 0:
        body.update(image=0, len=len(image), sha=hashlib.sha256(image).digest())
    return request(1, 1, 2, cbor2.dumps(body), seq)


def test_an_upload_resumes_from_the_device_offset_after_the_link_drops(farm: BleFarm) -> None:
    """The board drops the link (the lever) after the first chunk; the central reconnects and
    the upload goes on where the device says it stands, as over any transport."""
    image = sign_build(farm.board, "update", "1.1.0")
    lock_expired()

    async def first_chunk_then_drop() -> tuple[dict[str, object], int]:
        async with await open_transport(farm.hci) as (source, sink):
            device = Device.with_hci("central", Address("F0:F1:F2:F3:F4:F8"), source, sink)
            await device.power_on()
            connection = await device.connect(await find(device, NAME))
            gone: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            connection.on("disconnection", lambda reason: gone.done() or gone.set_result(reason))
            peer = Peer(connection)
            await peer.request_mtu(CENTRAL_MTU)
            characteristic = await smp_characteristic(peer)
            answers, on_notification = smp_answers()
            await peer.subscribe(characteristic, on_notification)
            chunk = upload_chunk(image, 0, 128, 1)
            for i in range(0, len(chunk), CENTRAL_MTU - 3):
                await peer.write_value(
                    characteristic, chunk[i : i + CENTRAL_MTU - 3], with_response=False
                )
            answer = await asyncio.wait_for(answers.get(), WAIT_S)
            with injector(farm) as faults:
                faults.drop_ble()
            return cbor2.loads(answer[8:]), await asyncio.wait_for(gone, WAIT_S)

    first, reason = asyncio.run(first_chunk_then_drop())
    assert first == {"off": 128} and reason == 0x13
    resumed = asyncio.run(smp_exchange(farm.hci, [upload_chunk(image, 128, 128, 2)]))
    answers = resumed["answers"]
    assert isinstance(answers, list)
    assert cbor2.loads(answers[0][8:]) == {"off": 256}
