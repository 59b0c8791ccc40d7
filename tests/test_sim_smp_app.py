"""The virtual Zephyr SMP app driven by the real peer: smpclient over the dut's pty and UDP.

Each test gets a fresh MCUboot-less dut (tests/smpfarm.py) running app v1.0.0 from the
primary slot; bytes go through a real pty (SMPSerialTransport) or a real UDP socket
(SMPUDPTransport), and flash is checked byte for byte through the dut. The farm runs 20x
faster than the bench; nothing here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import pytest
from simfarm import SimBoard, running_farm, wait_until
from smp import header as smphdr
from smp.error import ErrorV1
from smpclient import SMPClient
from smpclient.exceptions import SMPUploadError
from smpclient.generics import error, success
from smpclient.requests.image_management import (
    ImageErase,
    ImageStatesRead,
    ImageStatesWrite,
    ImageUploadWrite,
)
from smpclient.requests.os_management import (
    BootloaderInformationRead,
    EchoWrite,
    MCUMgrParametersRead,
    ResetWrite,
)
from smpclient.transport.serial import SMPSerialTransport
from smpclient.transport.udp import SMPUDPTransport
from smpfarm import (
    GEOMETRY,
    SmpBoard,
    app_body,
    app_build,
    make_key,
    sign,
    smp_board,
)

from dfuhil.formats.chips import GPIO_OUT, GPIO_P0_BASE
from dfuhil.formats.mcuboot import parse_image
from dfuhil.formats.mcuboot_trailer import MAGIC_ALIGN8, field_write
from dfuhil.formats.smp import ImgMgmtErr, MgmtErr
from dfuhil.links.console import Console
from dfuhil.sim.state import load_state

T = TypeVar("T")
SECONDARY = GEOMETRY.secondary
PRIMARY = GEOMETRY.primary
assert SECONDARY is not None
S = SECONDARY.size
BUF_SIZE = 768  # not smpclient's fallback, so the negotiation shows


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class BoardUDP(SMPUDPTransport):
    """smpclient's UDP transport, pointed at the dut's port instead of Zephyr's 1337."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._board_port = port

    async def connect(self, address: str, timeout_s: float, port: int = 1337) -> None:
        await super().connect(address, timeout_s, self._board_port)


class Images(dict[str, bytes]):
    """v1 (what runs) and v2 (what gets uploaded), signed per build, since the build is in the
    image: its behaviour descriptor is what the running app reads its options from."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.key = make_key(directory)
        self.update(v1=self.signed("1.0.0", 6 * 1024), v2=self.signed("2.0.0", 20 * 1024))

    def signed(self, version: str, size: int, **changes: Any) -> bytes:
        build = app_build(buf_size=BUF_SIZE, udp=True, **changes)
        name = "-".join([version, *(f"{k}={v}" for k, v in sorted(changes.items()))])
        body = app_body(build, version, size)
        return sign(self.directory, body, version, self.key, name=name).read_bytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("smp-app"))


@contextmanager
def booted(images: Images, **changes: Any) -> Iterator[SmpBoard]:
    """A board running v1 built with ``changes``."""
    build = app_build(buf_size=BUF_SIZE, udp=True, **changes)
    running = images.signed("1.0.0", 6 * 1024, **changes) if changes else images["v1"]
    with smp_board(running, build) as dut:
        yield dut


@pytest.fixture
def dut(images: Images) -> Iterator[SmpBoard]:
    with booted(images) as board:
        yield board


async def serial_client(dut: SmpBoard) -> SMPClient:
    client = SMPClient(SMPSerialTransport(), dut.serial, timeout_s=5.0)
    await client.connect()
    return client


async def udp_client(dut: SmpBoard) -> SMPClient:
    client = SMPClient(BoardUDP(dut.udp_port), "127.0.0.1", timeout_s=5.0)
    await client.connect()
    return client


def image_hash(image: bytes) -> bytes:
    digest = parse_image(image).image_hash
    assert digest is not None
    return digest


def flags(response: Any) -> list[tuple[int, str, set[str]]]:
    names = ("pending", "confirmed", "active", "permanent")
    return [(i.slot, i.version, {n for n in names if getattr(i, n)}) for i in response.images]


async def upload(client: SMPClient, image: bytes) -> None:
    async for _off in client.upload(image):
        pass


# --- boot, console, LEDs ---------------------------------------------------------------------


def test_boot_banner_names_version_and_slot_and_the_led_blinks(dut: SmpBoard) -> None:
    with Console(dut.serial, name="smp") as console:
        dut.reboot()
        console.expect_exact("*** Booting Zephyr OS build v3.7.99-ncs1 ***")
        console.expect_exact("I: smp_svr 1.0.0 running from slot 0 (primary)")
    pin = 1 << 13  # LED1 of the PCA10056, active low
    levels = set()

    def sample() -> set[bool]:
        out = int.from_bytes(dut.board.read(GPIO_P0_BASE + GPIO_OUT, 4), "little")
        levels.add(bool(out & pin))
        return levels

    wait_until(sample, lambda seen: seen == {True, False}, "LED1 should toggle")


# --- OS group --------------------------------------------------------------------------------


def test_connect_negotiates_buf_size_echo_params_and_bootloader_info(dut: SmpBoard) -> None:
    async def session() -> None:
        client = await serial_client(dut)
        try:
            transport = client._transport
            assert isinstance(transport, SMPSerialTransport)
            assert transport.max_unencoded_size == BUF_SIZE - 4
            echo = await client.request(EchoWrite(d="hello"))
            assert success(echo) and echo.r == "hello"
            params = await client.request(MCUMgrParametersRead())
            assert success(params) and (params.buf_size, params.buf_count) == (BUF_SIZE, 4)
            info = await client.request(BootloaderInformationRead())
            assert success(info) and info.bootloader == "MCUboot"
            # Zephyr answers {"mode": n}; smp 4.2.0's model lacks "mode", so read it raw.
            raw = await transport.send_and_receive(bytes(BootloaderInformationRead(query="mode")))
            assert cbor2.loads(raw[8:]) == {"mode": 3}  # swap-move
            raw = await transport.send_and_receive(bytes(BootloaderInformationRead(query="x")))
            assert cbor2.loads(raw[8:]) == {"rc": 3}  # QUERY_YIELDS_NO_ANSWER, as a bare rc
        finally:
            await client.disconnect()

    run(session())


def test_reset_is_answered_first_and_boot_mode_reaches_gpregret(dut: SmpBoard) -> None:
    boots = dut.boots()

    async def session() -> Any:
        client = await serial_client(dut)
        try:
            return await client.request(ResetWrite(boot_mode=1))
        finally:
            await client.disconnect()

    answer = run(session())
    assert success(answer)
    wait_until(dut.boots, lambda n: n > boots, "the app should reset after answering")
    dut.wait_running()
    assert dut.board.gpregret == 1


# --- image group: the life cycle -------------------------------------------------------------


def test_upload_test_and_confirm_rows_of_the_life_cycle(dut: SmpBoard, images: Images) -> None:
    v1, v2 = images["v1"], images["v2"]

    async def session() -> None:
        client = await serial_client(dut)
        try:
            state = await client.request(ImageStatesRead())
            assert success(state)
            assert flags(state) == [(0, "1.0.0", {"active", "confirmed"})]
            assert state.images[0].hash == image_hash(v1) and state.splitStatus == 0
            await upload(client, v2)
            assert dut.slot_bytes(SECONDARY, len(v2)) == v2
            state = await client.request(ImageStatesRead())
            assert success(state) and flags(state)[1] == (1, "2.0.0", set())
            # row 2: test
            state = await client.request(ImageStatesWrite(hash=image_hash(v2)))
            assert success(state) and flags(state)[1] == (1, "2.0.0", {"pending"})
            trailer = dut.slot_bytes(SECONDARY, S)
            assert trailer[S - 16 :] == MAGIC_ALIGN8
            assert trailer[S - 40] == 0x02 and trailer[S - 24] == 0xFF
            # a pending slot is neither overwritten nor erased, and cannot change to confirm
            refused = await client.request(ImageErase(slot=1))
            assert error(refused) and refused.err.rc == ImgMgmtErr.NO_FREE_SLOT
            refused = await client.request(ImageStatesWrite(hash=image_hash(v2), confirm=True))
            assert error(refused) and refused.err.rc == ImgMgmtErr.IMAGE_ALREADY_PENDING
            with pytest.raises(SMPUploadError):
                await upload(client, v2)
        finally:
            await client.disconnect()

    run(session())


def test_confirm_with_hash_marks_the_secondary_permanent(dut: SmpBoard, images: Images) -> None:
    v2 = images["v2"]

    async def session() -> None:
        client = await serial_client(dut)
        try:
            await upload(client, v2)
            state = await client.request(ImageStatesWrite(hash=image_hash(v2), confirm=True))
            assert success(state)
            assert flags(state)[1] == (1, "2.0.0", {"pending", "permanent"})
        finally:
            await client.disconnect()

    run(session())
    trailer = dut.slot_bytes(SECONDARY, S)
    assert trailer[S - 16 :] == MAGIC_ALIGN8
    assert (trailer[S - 24], trailer[S - 40]) == (0x01, 0x03)


def test_erase_clears_the_secondary_and_refuses_the_running_slot(
    dut: SmpBoard, images: Images
) -> None:
    async def session() -> None:
        client = await serial_client(dut)
        try:
            await upload(client, images["v2"])
            assert success(await client.request(ImageErase()))
            refused = await client.request(ImageErase(slot=0))
            assert error(refused) and refused.err.rc == ImgMgmtErr.NO_FREE_SLOT
            state = await client.request(ImageStatesRead())
            assert success(state) and len(state.images) == 1
        finally:
            await client.disconnect()

    run(session())
    assert dut.slot_bytes(SECONDARY, S) == b"\xff" * S


# --- confirming itself, faults ---------------------------------------------------------------


def after_test_swap(dut: SmpBoard) -> None:
    """Row 3: MCUboot swapped for a test; the primary trailer says magic good, copy_done set."""
    layout = GEOMETRY.layout(PRIMARY)
    for field, value in (("magic", 0), ("copy_done", 1), ("swap_info", 2)):
        offset, data = field_write(layout, field, value)  # type: ignore[arg-type]
        dut.board.flash.write(PRIMARY.start + offset, data)


@pytest.mark.parametrize(
    ("changes", "confirmed"),
    [
        ({"confirm_at_boot": True}, True),
        ({"confirm_at_boot": True, "fault": "never-confirm"}, False),
    ],
    ids=["confirm-at-boot", "never-confirm"],
)
def test_confirm_at_boot_writes_primary_image_ok(
    images: Images, changes: dict[str, Any], confirmed: bool
) -> None:
    with booted(images, **changes) as dut:
        after_test_swap(dut)
        dut.reboot()
        layout = GEOMETRY.layout(PRIMARY)
        image_ok = dut.board.flash.read(PRIMARY.start + layout.image_ok, 1)[0]
        wait_until(
            lambda: dut.board.flash.read(PRIMARY.start + layout.image_ok, 1)[0],
            lambda value: (value == 0x01) == confirmed,
            "primary image_ok after boot",
        )
        assert image_ok in (0x01, 0xFF)


def test_crash_at_boot_prints_a_fatal_error_and_resets(images: Images) -> None:
    with booted(images, fault="crash-at-boot") as dut, Console(dut.serial) as console:
        console.expect(r">>> ZEPHYR FATAL ERROR 0: CPU exception on CPU 0")
        boots = dut.boots()
        console.expect_exact("*** Booting Zephyr OS build")
        wait_until(dut.boots, lambda n: n > boots, "the crashing app should reset again")


# --- bad input -------------------------------------------------------------------------------


def test_bad_uploads_and_an_unknown_hash_are_refused(dut: SmpBoard, images: Images) -> None:
    v2 = images["v2"]

    async def session() -> None:
        client = await serial_client(dut)
        try:
            bad = await client.request(ImageUploadWrite(off=0, data=bytes(64), len=1000))
            assert error(bad) and bad.err.rc == ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC == 23
            big = await client.request(ImageUploadWrite(off=0, data=v2[:64], len=S + 1))
            assert error(big) and big.err.rc == ImgMgmtErr.INVALID_IMAGE_TOO_LARGE
            unknown = await client.request(ImageStatesWrite(hash=hashlib.sha256(b"x").digest()))
            assert error(unknown) and unknown.err.rc == ImgMgmtErr.HASH_NOT_FOUND
            v1_style = await client.request(
                ImageStatesWrite(hash=bytes(32), version=smphdr.Version.V1)
            )
            assert isinstance(v1_style, ErrorV1) and v1_style.rc == MgmtErr.EUNKNOWN
            sha = hashlib.sha256(v2).digest()
            first = await client.request(
                ImageUploadWrite(off=0, data=v2[:300], len=len(v2), sha=sha)
            )
            assert success(first) and first.off == 300
            beyond = await client.request(ImageUploadWrite(off=len(v2) + 100, data=v2[:10]))
            assert success(beyond) and beyond.off == 300  # resync: the expected offset
        finally:
            await client.disconnect()

    run(session())
    assert dut.slot_bytes(SECONDARY, 300) == v2[:300]


# --- UDP and the DFU lock ---------------------------------------------------------------------


def test_udp_transport_serves_the_same_commands(dut: SmpBoard, images: Images) -> None:
    v2 = images["v2"]

    async def session() -> None:
        client = await udp_client(dut)
        try:
            echo = await client.request(EchoWrite(d="over udp"))
            assert success(echo) and echo.r == "over udp"
            await upload(client, v2)
            state = await client.request(ImageStatesWrite(hash=image_hash(v2)))
            assert success(state) and flags(state)[1] == (1, "2.0.0", {"pending"})
        finally:
            await client.disconnect()

    run(session())
    assert dut.slot_bytes(SECONDARY, len(v2)) == v2


def test_dfu_lock_refuses_the_second_transport_until_the_timeout(
    images: Images,
) -> None:
    v2 = images["v2"]
    with booted(images, dfu_lock_timeout_ms=20_000) as dut:

        async def session() -> None:
            serial = await serial_client(dut)
            udp = await udp_client(dut)
            try:
                await upload(serial, v2)
                assert success(await serial.request(ImageStatesRead()))  # serial holds the lock
                refused = await udp.request(ImageUploadWrite(off=0, data=v2[:200], len=len(v2)))
                # {"rc": 11} parses as the upload model, which allows "rc" (legacy rc behaviour)
                assert refused.rc == MgmtErr.EACCESSDENIED
                echo = await udp.request(EchoWrite(d="not a DFU command"))
                assert success(echo)

                async def udp_state() -> Any:
                    return await udp.request(ImageStatesRead())

                deadline = asyncio.get_running_loop().time() + 20
                while error(state := await udp_state()):
                    assert asyncio.get_running_loop().time() < deadline, state
                    await asyncio.sleep(0.05)
                assert success(await udp.request(ImageErase()))  # now UDP owns the lock
                refused = await serial.request(ImageStatesRead())
                assert isinstance(refused, ErrorV1) and refused.rc == MgmtErr.EACCESSDENIED
            finally:
                await serial.disconnect()
                await udp.disconnect()

        run(session())
        assert dut.slot_bytes(SECONDARY, S) == b"\xff" * S


# --- where a host finds the UDP port ------------------------------------------------------


def test_farm_state_file_status_and_device_answer_publish_the_udp_port(tmp_path: Path) -> None:
    board = SimBoard("udp-board", "nRF52840_xxAA", "PCA10056", 920000042)
    with running_farm(tmp_path, [board]) as farm:
        published = farm.state.board(board.name).smp_udp
        assert published is not None and re.fullmatch(r"127\.0\.0\.1:\d+", published)
        assert load_state(farm.state.path).board(board.name).smp_udp == published
        with farm.api(board.name) as api:
            assert api.sim_status()["smp_udp"] == published
            assert api._call("device", api.enum_emu_snr()[0])["smp_udp"] == published
