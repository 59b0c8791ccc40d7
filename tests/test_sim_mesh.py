"""Mesh DFU on the virtual farm: the serial bootloader and the DFU example, driven only the way a
test rig drives hardware. Bytes go through each board's real pty (pyserial) as mesh serial frames
built with formats/meshdfu.py, and flash, CPU state, LEDs and the radio are read through the
debug port (VirtualLowLevelAPI). A compact host loop in this file plays nrfutil's part: STATE,
STATE, START, then DATA, stop-and-wait on each CMD_RSP.

Every board starts from a chip erase with the generated sample set (MBR + SoftDevice, mesh
bootloader, DFU example v1, device page); the image sent over the air is a 4 KiB blinky v2. The
farm runs 50x faster than the bench; nothing here asserts how long anything took.
"""

from __future__ import annotations

import dataclasses
import random
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import serial
from simfarm import (
    RunningFarm,
    SimBoard,
    boards_yaml,
    chip,
    program_hex,
    sample_firmware,
    wait_cpu_status,
    wait_until,
)

from dfuhil.formats.chips import GPIO_DIR, GPIO_OUT, GPIO_P0_BASE
from dfuhil.formats.devpage import BootloaderConfig, DevicePage, EntryType, device_page_hex
from dfuhil.formats.meshdfu import (
    START_ADDRESS_UNKNOWN,
    CommandResponse,
    Data,
    DfuType,
    EndReason,
    Frame,
    FrameReader,
    Opcode,
    PacketType,
    Start,
    State,
    Status,
    app_fwid,
    frame,
    segment_count,
    segment_payload,
)
from dfuhil.formats.meshkeys import SigningKey, generate_key, sign
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import default_softdevice, ram_end, sample_image
from dfuhil.sim.flash import NorFlash
from dfuhil.sim.lowlevel import VirtualLowLevelAPI
from dfuhil.sim.mesh import transfer as segments
from dfuhil.sim.mesh.bootinfo import BootInfo
from dfuhil.sim.mesh.transport import AppTiming, Interval, TxSlots
from dfuhil.sim.state import FarmProcess

SCALE = 0.02  # wall seconds per device second
WAIT_S = 60.0  # generous wall-clock bound for anything to happen; never a speed claim
NRF52832 = chip("nRF52832_xxAA")
APP_START = 0x26000
BOOTLOADER_START = 0x78000
COMPANY_ID, APP_ID = 89, 1  # bootloader_config_default.json, as in the sample device page
DK_LEDS = (17, 18, 19, 20)  # PCA10040, active low
EVT_DFU_START, EVT_DFU_END = 0xA2, 0xA3
BOOTLOADER_INSTALLED = "mesh serial bootloader: DFU of APPLICATION complete"
BOOTLOADER_JUMPED = "mesh serial bootloader: application found at 0x26000, starting it"
MESH = ("mesh-a", "mesh-b", "mesh-c")
CHAIN = ("chain-a", "chain-b", "chain-c")
BLINKY_V2 = sample_image(
    APP_START,
    4 * 1024,
    Behaviour("blinky", "blinky", "2.0.0", "blinky 2.0.0 started", {"led": 0, "period_ms": 500}),
    "test_sim_mesh/blinky-v2",
    ram_end(NRF52832),
)


# --- the pieces, in-process: device page writes, the segment window, the TX slot pool ---------


class MemoryFlash:
    """A FlashPort over NOR flash with the chip's geometry (only clears bits, whole words)."""

    def __init__(self) -> None:
        self.page_size = NRF52832.page_size
        self.nor = NorFlash(
            base=0,
            size=NRF52832.flash_size,
            page_size=self.page_size,
            timing=NRF52832.timing,
            clock=VirtualClock(0.0001),
        )

    def read(self, address: int, length: int) -> bytes:
        return self.nor.read(address, length)

    def write(self, address: int, data: bytes) -> None:
        self.nor.write(address, data)

    def erase(self, address: int, length: int) -> None:
        for page in range(address, address + length, self.page_size):
            self.nor.erase_page(page)

    def busy(self) -> bool:
        return False


def sample_device_page() -> bytes:
    ih = device_page_hex(NRF52832, default_softdevice(NRF52832), BootloaderConfig())
    return bytes(ih.tobinarray(start=ih.minaddr(), size=ih.maxaddr() - ih.minaddr() + 1))


def boot_info() -> tuple[MemoryFlash, BootInfo]:
    flash = MemoryFlash()
    flash.nor.load(NRF52832.device_page_address, sample_device_page())
    info = BootInfo(flash, NRF52832.device_page_address, NRF52832.device_page_backup_address)
    return flash, info


def test_device_page_put_appends_at_the_terminator_and_invalidates_the_old_entry() -> None:
    _, info = boot_info()
    before = info.page()
    assert before is not None and before.version is not None
    old = before.entry(EntryType.VERSION)
    assert old is not None
    newer = dataclasses.replace(before.version, app_version=2)
    info.put(EntryType.VERSION, newer.encode())
    after = info.page()
    assert after is not None and after.terminated
    assert after.version == newer
    new = after.entry(EntryType.VERSION)
    assert new is not None and new.offset == before.end_offset  # where the terminator was
    dead = next(e for e in after.entries if e.offset == old.offset)
    assert (dead.type, dead.length_words) == (EntryType.INVALID, old.length_words)


def test_compaction_drops_dead_entries_and_leaves_a_backup_a_lost_page_comes_back_from() -> None:
    flash, info = boot_info()
    signatures = [bytes([n]) * 64 for n in range(70)]  # 70 x 68 bytes: more than a page
    for signature in signatures:  # each put leaves the previous signature dead behind it
        info.put(EntryType.SIGNATURE_APP, signature)
    page = info.page()
    assert page is not None and page.signature(EntryType.SIGNATURE_APP) == signatures[-1]
    assert len(page.entries) < len(signatures), "the page was never compacted"
    assert all(e.valid for e in page.entries[:5])  # compaction kept the live ones, in order
    backup = DevicePage.parse(
        flash.read(NRF52832.device_page_backup_address, NRF52832.page_size), 0, None
    )
    assert backup is not None and backup.terminated
    assert all(e.valid for e in backup.entries)
    # Power lost while the device page was erased for the copy back: init restores it.
    flash.erase(NRF52832.device_page_address, NRF52832.page_size)
    assert info.page() is None
    assert info.init()
    restored = info.page()
    assert restored is not None and restored.terminated
    assert [e.type for e in restored.entries] == [e.type for e in backup.entries]


def test_segments_are_written_once_and_a_gap_past_the_window_is_packet_loss() -> None:
    flash = MemoryFlash()
    transfer = segments.Transfer.begin(flash, APP_START, 0x4F000, 0x2000)
    assert transfer is not None
    seg = bytes(range(16))
    assert transfer.store(segments.segment_address(1, APP_START), seg) == segments.Outcome.STORED
    assert transfer.store(segments.segment_address(3, APP_START), seg) == segments.Outcome.STORED
    assert transfer.store(segments.segment_address(3, APP_START), seg) == segments.Outcome.HAVE_IT
    assert transfer.oldest_missing(0) == 2
    assert flash.read(0x4F000 + 32, 16) == seg  # segment 3 went to the bank, not to APP_START
    # Segment 2 is still missing: 64 segments further on, the window cannot hold it any more.
    assert (
        transfer.store(segments.segment_address(67, APP_START), seg) == segments.Outcome.PACKET_LOSS
    )
    assert transfer.store(segments.segment_address(2, APP_START), seg) == segments.Outcome.ENDED


def test_a_full_relay_pool_cuts_the_oldest_relay_short() -> None:
    slots = TxSlots(AppTiming(), random.Random(1))
    for segment in range(1, 9):  # eight relays, seven pool slots (slot 0 is the beacon)
        slots.dynamic(Data(segment, 1, bytes(16)).encode(), 3, Interval.EXPONENTIAL, 0.0)
    assert (slots.stats.killed, slots.stats.dropped) == (1, 1)  # segment 1 never went out
    sent = [struct.unpack_from("<H", p, 2)[0] for p in slots.due(1.0)]
    assert sorted(sent) == list(range(2, 9))


def test_a_relay_repeats_three_times_with_the_sdk_s_exponential_back_off() -> None:
    slots = TxSlots(AppTiming(), random.Random(2))
    slots.set(1, b"relay", 3, Interval.EXPONENTIAL, 0.0)
    times: list[float] = []
    now = 0.0
    while (due := slots.next_time()) is not None:
        now = due
        times += [now for _ in slots.due(now)]
    assert len(times) == 3
    order = times[0]
    assert 0.001 <= order <= 0.001 + 0.065536
    # 100 ms x (2^k - 1) after the order time, plus up to 65.5 ms of randomisation.
    assert 0.1 <= times[1] - order <= 0.1 + 0.065536
    assert 0.3 <= times[2] - order <= 0.3 + 0.065536


# --- farms ----------------------------------------------------------------------------------------


@contextmanager
def mesh_farm(directory: Path, names: tuple[str, ...], radio: str = "") -> Iterator[RunningFarm]:
    """A farm process of nRF52832 DKs; ``radio`` is the YAML of virtual_farm.radio, if any."""
    boards = [SimBoard(n, "nRF52832_xxAA", "PCA10040", 940000001 + i) for i, n in enumerate(names)]
    text = boards_yaml(boards, SCALE)
    settings = f"time_scale: {SCALE}" + (f", radio: {radio}" if radio else "")
    text = text.replace(f"virtual_farm: {{time_scale: {SCALE}}}", f"virtual_farm: {{{settings}}}")
    boards_file = directory / "boards.yaml"
    boards_file.write_text(text)
    log_dir = directory / "sim-logs"
    process = FarmProcess(boards_file, directory / "state.json", log_dir=log_dir, time_scale=SCALE)
    state = process.start()
    try:
        yield RunningFarm(process, state, boards_file, log_dir)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_firmware(tmp_path_factory.mktemp("firmware"), ["nRF52832_xxAA"])["nRF52832_xxAA"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with mesh_farm(tmp_path_factory.mktemp("mesh"), MESH) as farm:
        yield farm


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    # chain-a hears chain-b, chain-b hears chain-c; chain-a and chain-c are out of range.
    radio = "{neighbours: {chain-a: [chain-b], chain-b: [chain-c]}}"
    with mesh_farm(tmp_path_factory.mktemp("chain"), CHAIN, radio) as farm:
        yield farm


def key_device_page(key: SigningKey | None = None) -> bytes:
    """The sample device page plus an ECDSA_PUBLIC_KEY entry: only signed transfers allowed."""
    config = BootloaderConfig(public_key=(key or generate_key()).public_key)
    ih = device_page_hex(NRF52832, default_softdevice(NRF52832), config)
    return bytes(ih.tobinarray(start=ih.minaddr(), size=ih.maxaddr() - ih.minaddr() + 1))


def provision(
    farm: RunningFarm, names: tuple[str, ...], images: Path, device_page: bytes | None = None
) -> None:
    """Chip erase, program the sample set, reset: every board boots into the DFU example v1."""
    files = ["softdevice_s132_7.2.0.hex", "bootloader.hex", "dfu_app.hex"]
    for name in names:
        with farm.api(name) as api:
            api.erase_all()
            for file in files:
                program_hex(api, images / file)
            if device_page is None:
                program_hex(api, images / "device_page.hex")
            else:
                api.write(NRF52832.device_page_address, device_page, True)
            api.sys_reset()
            api.go()
    for name in names:
        with farm.api(name) as api:
            wait_cpu_status(api, "running dfu example 1.0.0", WAIT_S)


def silence(farm: RunningFarm, names: tuple[str, ...]) -> None:
    """Chip-erase boards so they stay off the air (an erased chip runs nothing)."""
    for name in names:
        with farm.api(name) as api:
            api.erase_all()


def device_page(api: VirtualLowLevelAPI) -> DevicePage:
    address = NRF52832.device_page_address
    page = DevicePage.parse(bytes(api.read(address, NRF52832.page_size)), address, None)
    assert page is not None, "device page erased"
    return page


def lit_leds(api: VirtualLowLevelAPI) -> list[int]:
    """Indexes of the LEDs that are on (active low, driven as outputs)."""
    out = api.read_u32(GPIO_P0_BASE + GPIO_OUT)
    return [i for i, pin in enumerate(DK_LEDS) if not out & (1 << pin)]


# --- a compact host: nrfutil's mesh DFU transport in a few lines ----------------------------------


@dataclass
class Host:
    """One serial port; every frame the device sends that is not a CMD_RSP lands in ``events``."""

    port: serial.Serial
    reader: FrameReader = field(default_factory=FrameReader)
    events: list[Frame] = field(default_factory=list)
    responses: list[CommandResponse] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)  # segments forwarded by a relay

    def pump(self) -> None:
        data = self.port.read(self.port.in_waiting or 1)
        for item in self.reader.feed(data):
            if item.opcode == Opcode.CMD_RSP:
                self.responses.append(CommandResponse.decode(item.payload))
                continue
            self.events.append(item)
            payload = item.payload
            is_request = len(payload) >= 8 and payload[:2] == b"\xfb\xff"
            if item.opcode == Opcode.DFU_DATA and is_request:
                self.requests.append(struct.unpack_from("<H", payload, 2)[0])

    def wait_for(self, accept: Callable[[Frame], bool], what: str) -> Frame:
        deadline = time.monotonic() + WAIT_S
        seen = 0
        while time.monotonic() < deadline:
            self.pump()
            for item in self.events[seen:]:
                if accept(item):
                    return item
            seen = len(self.events)
        raise AssertionError(f"no {what} from the device; it sent {self.events}")

    def command(self, packet: bytes, timeout_s: float = WAIT_S) -> CommandResponse:
        """One DFU packet, acknowledged: resend while the device answers BUSY."""
        for _ in range(20):
            self.responses.clear()
            self.port.write(frame(Opcode.DFU_DATA, packet))
            deadline = time.monotonic() + timeout_s
            while not self.responses and time.monotonic() < deadline:
                self.pump()
            assert self.responses, f"no CMD_RSP for {packet.hex()}"
            response = self.responses[0]
            assert response.opcode == Opcode.DFU_DATA
            if response.status != Status.ERROR_BUSY:
                return response
            sleep(0.5)  # nrfutil's retry interval
        raise AssertionError(f"device stayed busy for {packet.hex()}")

    def send(self, packet: bytes) -> int:
        return self.command(packet).status


def sleep(device_s: float) -> None:
    time.sleep(device_s * SCALE)


@contextmanager
def host_on(farm: RunningFarm, name: str) -> Iterator[Host]:
    with serial.Serial(farm.serial(name), 115200, timeout=0.002) as port:
        port.reset_input_buffer()
        yield Host(port)


@dataclass
class Transfer:
    """A mesh DFU of ``image`` as APP ``version``; ``on_segment`` runs before each DATA."""

    image: bytes
    version: int
    tid: int = 0x5EED1234
    interval_s: float = 0.5  # nrfutil's default: a DATA_REQ retry (10 s) fits in the window
    on_segment: Callable[[int], None] = lambda segment: None
    key: SigningKey | None = None  # sign as nrfutil does: the unsigned .dat, then the image
    signature: bytes = field(init=False, default=b"")

    @property
    def fwid(self) -> bytes:
        return app_fwid(COMPANY_ID, APP_ID, self.version)

    def __post_init__(self) -> None:
        if self.key is not None:  # once: ECDSA signatures differ every time
            dat = struct.pack(
                "<BIIB", DfuType.APPLICATION, START_ADDRESS_UNKNOWN, len(self.image), 0
            )
            self.signature = sign(self.key, dat + self.fwid + self.image)

    def run(self, host: Host) -> list[int]:
        """STATE, STATE, START, DATA 1..M; serves forwarded DATA_REQs; returns every status."""
        state = State(DfuType.APPLICATION, 7, True, self.tid, self.fwid).encode()
        signature = self.signature
        statuses = [host.send(state)]
        sleep(2.0)
        statuses.append(host.send(state))
        sleep(2.0)
        start = Start(self.tid, START_ADDRESS_UNKNOWN, len(self.image) // 4, len(signature))
        statuses.append(host.send(start.encode()))
        sleep(0.09508 * 1.5 * max(1, len(self.image) // 4096))  # nrfutil's erase allowance
        for segment in range(1, segment_count(len(self.image), len(signature)) + 1):
            self.on_segment(segment)
            while host.requests:
                wanted = host.requests.pop(0)
                data = segment_payload(self.image, signature, wanted)
                host.send(Data(wanted, self.tid, data, response=True).encode())
            data = segment_payload(self.image, signature, segment)
            statuses.append(host.send(Data(segment, self.tid, data).encode()))
            sleep(self.interval_s)
        return statuses


def wait_all_running(farm: RunningFarm, names: tuple[str, ...], prefix: str) -> None:
    for name in names:
        with farm.api(name) as api:
            try:
                wait_cpu_status(api, prefix, WAIT_S)
            except AssertionError as exc:
                log = "\n".join(farm.log_text(name).splitlines()[-40:])
                raise AssertionError(f"{name}: {exc}\n--- its log ---\n{log}") from None


def assert_installed_v2(farm: RunningFarm, names: tuple[str, ...]) -> None:
    """Blinky v2 runs from the application start, and the device page says so."""
    wait_all_running(farm, names, "running blinky 2.0.0 at 0x00026000")
    for name in names:
        with farm.api(name) as api:
            page = device_page(api)
            assert page.version is not None and page.version.app_version == 2, name
            assert page.flags is not None and page.flags & 4, f"{name}: app_intact not set"
            assert page.entry(EntryType.BANK_APP) is None, f"{name}: bank entry still live"
            assert bytes(api.read(APP_START, len(BLINKY_V2))) == BLINKY_V2, name


# --- booting and the serial protocol --------------------------------------------------------------


def test_dfu_example_starts_in_application_mode_with_leds_off_and_answers_echo(
    mesh: RunningFarm, images: Path
) -> None:
    provision(mesh, ("mesh-a",), images)
    with mesh.api("mesh-a") as api, serial.Serial(mesh.serial("mesh-a"), 115200) as port:
        api.sys_reset()
        port.timeout = WAIT_S
        port.reset_input_buffer()
        api.go()
        started = port.read(5)
        assert started[:4] == b"\x04\x81\x02\x00"  # DEVICE_STARTED, application mode, no error
        port.write(frame(Opcode.ECHO, bytes.fromhex("AABBCCDD")))  # what nrfutil sends
        host = Host(port)
        echo = host.wait_for(lambda f: f.opcode == Opcode.ECHO_RSP, "echo response")
        assert echo.payload == bytes.fromhex("AABBCCDD")
        assert lit_leds(api) == []
        assert api.read_u32(GPIO_P0_BASE + GPIO_DIR) & (1 << DK_LEDS[0])  # driven, not floating


def test_radio_reset_restarts_into_the_bootloader_which_yields_to_the_app_after_10_s(
    mesh: RunningFarm, images: Path
) -> None:
    provision(mesh, ("mesh-a",), images)
    jumps_before = mesh.log_text("mesh-a").count(BOOTLOADER_JUMPED)
    with mesh.api("mesh-a") as api, host_on(mesh, "mesh-a") as host:
        host.port.write(frame(Opcode.RADIO_RESET))
        started = host.wait_for(
            lambda f: f.opcode == Opcode.DEVICE_STARTED and f.payload[:1] == b"\x01",
            "DEVICE_STARTED in bootloader mode",
        )
        assert started.encode()[:4] == b"\x04\x81\x01\x00"  # no hardware error
        host.events.clear()
        # No transfer offered: after 10 s (device time) the bootloader starts the application.
        host.wait_for(
            lambda f: f.opcode == Opcode.DEVICE_STARTED and f.payload[:1] == b"\x02",
            "DEVICE_STARTED in application mode",
        )
        wait_cpu_status(api, "running dfu example 1.0.0", WAIT_S)
    assert mesh.log_text("mesh-a").count(BOOTLOADER_JUMPED) == jumps_before + 1


def hold_in_bootloader(host: Host, api: VirtualLowLevelAPI, state: bytes) -> CommandResponse:
    """Radio reset into the bootloader, then STATE before its 10 s (device) yield timer sends it
    back to the application. A host that was too slow (a loaded machine) sees the application's
    3-byte CMD_RSP, or none if STATE arrived during the jump; then it tries again."""
    for _ in range(5):
        wait_cpu_status(api, "running dfu example", WAIT_S)
        host.events.clear()
        host.port.write(frame(Opcode.RADIO_RESET))
        host.wait_for(
            lambda f: f.opcode == Opcode.DEVICE_STARTED and f.payload[:1] == b"\x01",
            "DEVICE_STARTED in bootloader mode",
        )
        try:
            response = host.command(state, timeout_s=2.0)
        except AssertionError:
            continue  # lost while the bootloader jumped to the application
        if response.packet_type is not None:  # the bootloader's 5-byte variant
            return response
    raise AssertionError("could not hand the bootloader a STATE in time")


def test_bootloader_ignores_a_transfer_that_is_no_upgrade(mesh: RunningFarm, images: Path) -> None:
    silence(mesh, ("mesh-b", "mesh-c"))
    provision(mesh, ("mesh-a",), images)
    with mesh.api("mesh-a") as api, host_on(mesh, "mesh-a") as host:
        same = app_fwid(COMPANY_ID, APP_ID, 1)
        offer = State(DfuType.APPLICATION, 7, True, 0x77, same).encode()
        state = hold_in_bootloader(host, api, offer)
        assert state.status == Status.SUCCESS  # ignored, silently
        host.port.write(bytes.fromhex("0302AABB"))  # what bootloader_verify.py sends
        echo = host.wait_for(lambda f: f.opcode == Opcode.ECHO_RSP, "echo response")
        assert echo.encode() == bytes.fromhex("0382AABB")
        # The bootloader's 5-byte CMD_RSP: 84 78 status type; the tid is not ours -> 0x85.
        start = host.command(Start(0x77, START_ADDRESS_UNKNOWN, 1024, 0).encode())
        assert (start.status, start.packet_type) == (0x85, PacketType.DATA)
        assert api.sim_status()["cpu"].startswith("running mesh serial bootloader")
        version = device_page(api).version
        assert version is not None and version.app_version == 1


def test_bootloader_installs_an_upgrade_in_place_and_starts_it(
    mesh: RunningFarm, images: Path
) -> None:
    silence(mesh, ("mesh-b", "mesh-c"))
    provision(mesh, ("mesh-a",), images)
    transfer = Transfer(BLINKY_V2, version=2)
    installs_before = mesh.log_text("mesh-a").count(BOOTLOADER_INSTALLED)
    with mesh.api("mesh-a") as api, host_on(mesh, "mesh-a") as host:
        state = State(DfuType.APPLICATION, 7, True, transfer.tid, transfer.fwid).encode()
        hold_in_bootloader(host, api, state)
        statuses = transfer.run(host)
    assert set(statuses) == {0}
    assert_installed_v2(mesh, ("mesh-a",))
    with mesh.api("mesh-a") as api:
        assert device_page(api).banks == []  # direct mode: never banked
    installs = mesh.log_text("mesh-a").count(BOOTLOADER_INSTALLED)
    assert installs == installs_before + 1, "the bootloader did not take the transfer"


def test_bootloader_without_a_device_page_stays_and_logs_why(
    mesh: RunningFarm, images: Path
) -> None:
    with mesh.api("mesh-a") as api:
        api.erase_all()
        for name in ("softdevice_s132_7.2.0.hex", "bootloader.hex", "dfu_app.hex"):
            program_hex(api, images / name)
        api.sys_reset()
        api.go()
        wait_until(
            lambda: mesh.log_text("mesh-a").count("DFU_END_ERROR_INVALID_PERSISTENT_STORAGE"),
            lambda n: n > 0,
            "bootloader log names the missing device page",
        )
        assert api.sim_status()["cpu"] == "running mesh serial bootloader 1.0.0 at 0x00078000"


# --- mesh transfers -------------------------------------------------------------------------------


def test_three_nodes_all_end_up_running_blinky(mesh: RunningFarm, images: Path) -> None:
    provision(mesh, MESH, images)
    with host_on(mesh, "mesh-a") as host:
        statuses = Transfer(BLINKY_V2, version=2).run(host)
        end = host.wait_for(lambda f: f.opcode == EVT_DFU_END, "DFU END event")
    assert set(statuses) == {0}
    assert end.payload[0] == 1 and end.payload[-1] == EndReason.SUCCESS  # role TARGET
    assert any(e.opcode == Opcode.DFU_FW_OUTDATED_NO_AUTH for e in host.events)
    assert_installed_v2(mesh, MESH)


def test_same_version_is_relayed_but_not_installed(mesh: RunningFarm, images: Path) -> None:
    provision(mesh, MESH, images)
    with mesh.api("mesh-a") as api:
        before = device_page(api)
    with host_on(mesh, "mesh-a") as host:
        statuses = Transfer(BLINKY_V2, version=1).run(host)
        start = host.wait_for(lambda f: f.opcode == EVT_DFU_START, "DFU START event")
    assert set(statuses) == {0}  # a relay acknowledges everything
    assert start.payload[0] == 2  # role RELAY
    sleep(40)  # past the 30 s rampdown a target would wait
    wait_all_running(mesh, MESH, "running dfu example 1.0.0")
    for name in MESH:
        with mesh.api(name) as api:
            assert device_page(api) == before, f"{name} changed its device page"
    with mesh.api("mesh-a") as api:
        assert lit_leds(api) == [0, 2]  # DFU START (relay): LED 0 and LED 2


def test_key_in_device_page_refuses_an_unsigned_transfer(mesh: RunningFarm, images: Path) -> None:
    page_with_key = key_device_page()
    provision(mesh, MESH, images, device_page=page_with_key)
    with host_on(mesh, "mesh-a") as host:
        statuses = Transfer(BLINKY_V2, version=2).run(host)
        end = host.wait_for(lambda f: f.opcode == EVT_DFU_END, "DFU END event")
    assert set(statuses) == {0}
    assert end.payload[-1] == EndReason.ERROR_UNAUTHORIZED
    wait_all_running(mesh, MESH, "running dfu example 1.0.0")
    for name in MESH:
        with mesh.api(name) as api:
            page = device_page(api)
            assert page.version is not None and page.version.app_version == 1, name
            assert page.banks == [], f"{name} stored an unauthorized image"
            assert page.public_key == page_with_key[8:72]
    with mesh.api("mesh-a") as api:
        assert lit_leds(api) == [0, 1]  # DFU END: LED 0 and LED 1


def test_key_in_device_page_accepts_a_transfer_signed_with_its_key(
    mesh: RunningFarm, images: Path
) -> None:
    key = generate_key()
    provision(mesh, MESH, images, device_page=key_device_page(key))
    transfer = Transfer(BLINKY_V2, version=2, key=key)
    with host_on(mesh, "mesh-a") as host:
        statuses = transfer.run(host)
    assert set(statuses) == {0}
    assert_installed_v2(mesh, MESH)
    for name in MESH:
        with mesh.api(name) as api:
            assert device_page(api).signature(EntryType.SIGNATURE_APP) == transfer.signature


def test_twenty_percent_loss_still_completes_through_data_requests(
    mesh: RunningFarm, images: Path
) -> None:
    provision(mesh, MESH, images)
    with mesh.api("mesh-a") as api:
        api.sim_radio(loss=0.2)

        def burst(segment: int) -> None:
            # Five segments nobody hears over the air: only DATA_REQ/DATA_RSP can bring them.
            # (Recovery takes one host interval per missing segment, and a lost request waits
            # 10 s for its repeat: a longer burst can legitimately end in PACKET_LOSS.)
            if segment == 100:
                api.sim_radio(loss=1.0)
            elif segment == 105:
                api.sim_radio(loss=0.2)

        try:
            with host_on(mesh, "mesh-a") as host:
                transfer = Transfer(BLINKY_V2, version=2, on_segment=burst)
                statuses = transfer.run(host)
            assert_installed_v2(mesh, MESH)
            radio = api.sim_radio()
        finally:
            api.sim_radio(loss=0.0)
    assert set(statuses) == {0}
    assert all(radio["stats"][name]["lost"] > 0 for name in MESH)
    for name in ("mesh-b", "mesh-c"):
        assert "DATA_REQ for missing segment" in mesh.log_text(name), name
    assert "DATA_RSP for segment" in mesh.log_text("mesh-a")


def test_node_out_of_range_gets_the_image_through_a_relaying_neighbour(
    chain: RunningFarm, images: Path
) -> None:
    provision(chain, CHAIN, images)
    with host_on(chain, "chain-a") as host:
        statuses = Transfer(BLINKY_V2, version=2).run(host)
    assert set(statuses) == {0}
    assert_installed_v2(chain, CHAIN)
