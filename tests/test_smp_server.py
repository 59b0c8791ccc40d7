"""The SMP server pieces in-process: dispatcher, upload receiver, image state, DFU lock.

Requests are built with the ``smp`` package's own request models (the peer's bytes) and
replies are parsed with its response models, so a reply smpclient would reject fails here.
Flash is a NorFlash with nRF52 geometry: writes only clear bits, erases whole pages.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cbor2
import pytest
import serial
from smp import image_management as smpimg
from smp import os_management as smpos
from smpclient import SMPClient
from smpclient.generics import success
from smpclient.requests.os_management import EchoWrite
from smpclient.transport.serial import BufferSize, SMPSerialTransport
from smpfarm import CHIP, GEOMETRY, app_body, app_build, make_key, sign
from smpwire import line_lengths, read_frames, smp_frames

from dfuhil.formats.mcuboot import parse_image
from dfuhil.formats.mcuboot_trailer import Flag, Magic, SwapType
from dfuhil.formats.smp import Group, ImageCmd, ImgMgmtErr, MgmtErr, Op, OsCmd, SmpHeader
from dfuhil.links.console import Console
from dfuhil.sim.board import BoardWiring, VirtualBoard
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import ram_end, sample_image
from dfuhil.sim.flash import NorFlash
from dfuhil.sim.runtime import Firmware, behaviour
from dfuhil.sim.smp.dfu_lock import DfuLock
from dfuhil.sim.smp.img_state import ImageState
from dfuhil.sim.smp.serial_port import serve_serial
from dfuhil.sim.smp.server import SmpDispatcher, SmpError
from dfuhil.sim.smp.upload import MCUBOOT_UPLOAD, ZEPHYR_UPLOAD, UploadReceiver

PAGE = CHIP.page_size
PRIMARY, SECONDARY = GEOMETRY.primary, GEOMETRY.secondary
assert SECONDARY is not None


class Flash:
    """A FlashPort over NorFlash that counts the operations the receiver asks for."""

    def __init__(self) -> None:
        self.nor = NorFlash(
            base=0, size=0x40000, page_size=PAGE, timing=CHIP.timing, clock=VirtualClock(1e-6)
        )
        self.writes: list[tuple[int, int]] = []
        self.erases: list[int] = []

    def read(self, address: int, length: int) -> bytes:
        return self.nor.read(address, length)

    def flash_write(self, address: int, data: bytes) -> None:
        self.writes.append((address, len(data)))
        self.nor.write(address, data)

    def flash_erase_page(self, address: int) -> None:
        self.erases.append(address)
        self.nor.erase_page(address)


def reply(packet: bytes | None) -> tuple[SmpHeader, dict[str, Any]]:
    assert packet is not None
    header = SmpHeader.unpack(packet)
    return header, cbor2.loads(packet[8:])


# --- dispatcher ---------------------------------------------------------------------------


def echo_dispatcher(style: str = "v2") -> SmpDispatcher:
    d = SmpDispatcher(style)  # type: ignore[arg-type]

    def echo(body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        return {"r": body["d"]}

    def refuse(_body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        raise SmpError(ImgMgmtErr.HASH_NOT_FOUND, group=Group.IMAGE)

    d.register(Group.OS, OsCmd.ECHO, read=echo, write=echo)
    d.register(Group.IMAGE, ImageCmd.STATE, write=refuse)
    return d


def test_reply_copies_seq_and_bumps_op_and_parses_with_smp() -> None:
    request = smpos.EchoWriteRequest(d="hi", sequence=77)
    header, body = reply(echo_dispatcher().handle(bytes(request)))
    assert (header.op, header.seq, header.version, header.group) == (Op.WRITE_RSP, 77, 1, 0)
    response = smpos.EchoWriteResponse.loads(echo_dispatcher().handle(bytes(request)) or b"")
    assert response.r == "hi" and body == {"r": "hi"}


def test_group_error_is_err_map_for_v2_and_translated_rc_for_v1() -> None:
    v2 = bytes(smpimg.ImageStatesWriteRequest(hash=bytes(32)))
    header, body = reply(echo_dispatcher().handle(v2))
    assert body == {"err": {"group": 1, "rc": ImgMgmtErr.HASH_NOT_FOUND}}
    smpimg.ImageManagementErrorV2.loads(echo_dispatcher().handle(v2) or b"")
    v1 = bytes(smpimg.ImageStatesWriteRequest(hash=bytes(32), version=0))
    header, body = reply(echo_dispatcher().handle(v1))
    assert header.version == 0 and body == {"rc": MgmtErr.EUNKNOWN}
    smpimg.ImageManagementErrorV1.loads(echo_dispatcher().handle(v1) or b"")


def test_mcuboot_flavour_copies_version_and_answers_rc_only() -> None:
    v2 = bytes(smpimg.ImageStatesWriteRequest(hash=bytes(32)))
    header, body = reply(echo_dispatcher("v1").handle(v2))
    assert header.version == 1 and body == {"rc": MgmtErr.EUNKNOWN}


def test_unknown_command_bad_cbor_and_too_new_version() -> None:
    d = echo_dispatcher()
    unknown = SmpHeader(Op.READ, 1, 0, 1, Group.OS, 3, OsCmd.TASK_STATS).pack() + b"\xa0"
    assert reply(d.handle(unknown))[1] == {"rc": MgmtErr.ENOTSUP}
    no_read = SmpHeader(Op.READ, 1, 0, 1, Group.IMAGE, 3, ImageCmd.STATE).pack() + b"\xa0"
    assert reply(d.handle(no_read))[1] == {"rc": MgmtErr.ENOTSUP}
    bad = SmpHeader(Op.WRITE, 1, 0, 2, Group.OS, 4, OsCmd.ECHO).pack() + b"\xff\xff"
    assert reply(d.handle(bad))[1] == {"rc": MgmtErr.EINVAL}
    not_map = SmpHeader(Op.WRITE, 1, 0, 1, Group.OS, 4, OsCmd.ECHO).pack() + b"\x01"
    assert reply(d.handle(not_map))[1] == {"rc": MgmtErr.EINVAL}
    too_new = SmpHeader(Op.WRITE, 2, 0, 1, Group.OS, 5, OsCmd.ECHO).pack() + b"\xa0"
    header, body = reply(d.handle(too_new))
    assert body == {"rc": MgmtErr.UNSUPPORTED_TOO_NEW} and header.version == 1


def test_several_messages_in_one_packet_are_answered_in_order() -> None:
    packet = bytes(smpos.EchoWriteRequest(d="a", sequence=1)) + bytes(
        smpos.EchoWriteRequest(d="b", sequence=2)
    )
    replies = echo_dispatcher().responses(packet)
    assert [reply(r)[1]["r"] for r in replies] == ["a", "b"]
    assert echo_dispatcher().responses(packet[:-1]) == []  # a lying length: no reply at all


def test_on_request_hook_refuses_before_the_handler() -> None:
    seen: list[int] = []

    def hook(header: SmpHeader) -> None:
        seen.append(header.command_id)
        raise SmpError(MgmtErr.EACCESSDENIED)

    d = SmpDispatcher(on_request=hook)
    d.register(Group.OS, OsCmd.ECHO, write=lambda body, h: {"r": "never"})
    assert reply(d.handle(bytes(smpos.EchoWriteRequest(d="x"))))[1] == {"rc": 11}
    assert seen == [OsCmd.ECHO]


# --- upload receiver ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("upload")
    body = app_body(app_build(), "2.0.0", 6000)
    return sign(directory, body, "2.0.0", make_key(directory)).read_bytes()


def zephyr_receiver(flash: Flash, running: str | None = None) -> UploadReceiver:
    from dfuhil.formats.mcuboot import ImageVersion

    return UploadReceiver(
        flash,
        ZEPHYR_UPLOAD,
        lambda request: SECONDARY,
        page_size=PAGE,
        trailer_start=lambda slot: GEOMETRY.layout(slot).status_start,
        running_version=lambda: ImageVersion.parse(running) if running else None,
    )


HEADER = SmpHeader(Op.WRITE, 1, 0, 0, Group.IMAGE, 0, ImageCmd.UPLOAD)


def send(receiver: UploadReceiver, image: bytes, chunk: int, start: int = 0) -> dict[str, Any]:
    """Follow the server's ``off`` like smpclient does, from ``start``."""
    off, answer = start, {}
    sha = hashlib.sha256(image).digest()
    while off < len(image):
        body: dict[str, Any] = {"off": off, "data": image[off : off + chunk]}
        if off == 0:
            body.update(len=len(image), sha=sha)
        answer = receiver.handle(body, HEADER)
        off = answer["off"]
    return answer


def test_zephyr_upload_writes_the_file_byte_exact_and_answers_match(image: bytes) -> None:
    flash = Flash()
    flash.nor.load(SECONDARY.start, b"\x00" * 0x100)  # old content: the slot needs erasing
    answer = send(zephyr_receiver(flash), image, 333)  # odd chunks: the tail waits in RAM
    assert answer == {"off": len(image), "match": True}
    assert flash.read(SECONDARY.start, len(image)) == image
    assert all(a % 4 == 0 and n % 4 == 0 for a, n in flash.writes)
    trailer_page = SECONDARY.start + GEOMETRY.layout(SECONDARY).status_start // PAGE * PAGE
    assert flash.erases == [
        SECONDARY.start,
        SECONDARY.start + PAGE,
        *range(trailer_page, SECONDARY.end, PAGE),
    ]


def test_zephyr_upload_of_a_file_already_in_the_slot_ends_at_once(image: bytes) -> None:
    flash = Flash()
    send(zephyr_receiver(flash), image, 500)
    flash.writes.clear()
    answer = zephyr_receiver(flash).handle(
        {"off": 0, "data": image[:500], "len": len(image), "sha": hashlib.sha256(image).digest()},
        HEADER,
    )
    assert answer == {"off": len(image), "match": True} and flash.writes == []


def test_zephyr_resume_by_sha_and_resync_on_wrong_off(image: bytes) -> None:
    flash = Flash()
    receiver = zephyr_receiver(flash)
    sha = hashlib.sha256(image).digest()
    first = {"off": 0, "data": image[:400], "len": len(image), "sha": sha}
    assert receiver.handle(first, HEADER) == {"off": 400}
    assert receiver.handle({"off": 400, "data": image[400:800]}, HEADER) == {"off": 800}
    assert receiver.handle({"off": 5000, "data": image[5000:5100]}, HEADER) == {"off": 800}
    assert receiver.handle({"off": 10**6, "data": b"x"}, HEADER) == {"off": 800}  # beyond len
    erases = len(flash.erases)
    assert receiver.handle(first, HEADER) == {"off": 800}  # same sha: resume, no erase
    assert len(flash.erases) == erases
    assert send(receiver, image, 700, start=800)["match"] is True
    assert flash.read(SECONDARY.start, len(image)) == image


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"data": b"x" * 64, "len": 100}, ImgMgmtErr.INVALID_OFFSET),
        ({"off": 0, "data": b"\x3d\xb8" * 8, "len": 100}, ImgMgmtErr.INVALID_IMAGE_HEADER),
        ({"off": 0, "data": b"\xff" * 64}, ImgMgmtErr.INVALID_LENGTH),
        ({"off": 0, "data": b"\x00" * 64, "len": 100}, ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC),
        ({"off": 0, "len": 10**7}, ImgMgmtErr.INVALID_IMAGE_TOO_LARGE),
        ({"off": 0, "len": 100, "sha": bytes(33)}, ImgMgmtErr.INVALID_HASH),
        ({"off": 0, "len": 100, "upgrade": True}, ImgMgmtErr.CURRENT_VERSION_IS_NEWER),
    ],
)
def test_zephyr_upload_refusals(image: bytes, body: dict[str, Any], code: int) -> None:
    flash = Flash()
    body = {"data": image[:64], **body}
    with pytest.raises(SmpError) as refused:
        zephyr_receiver(flash, running="2.0.0").handle(body, HEADER)
    assert (refused.value.rc, refused.value.group) == (code, Group.IMAGE)
    assert flash.writes == [] and flash.erases == []


def test_zephyr_upload_overrun_is_refused_and_forgets_the_upload(image: bytes) -> None:
    receiver = zephyr_receiver(Flash())
    receiver.handle({"off": 0, "data": image[:400], "len": 500}, HEADER)
    with pytest.raises(SmpError) as refused:
        receiver.handle({"off": 400, "data": image[400:600]}, HEADER)
    assert refused.value.rc == ImgMgmtErr.INVALID_IMAGE_DATA_OVERRUN
    assert not receiver.in_progress


def test_upgrade_flag_accepts_a_newer_version(image: bytes) -> None:
    receiver = zephyr_receiver(Flash(), running="1.9.9")
    body = {"off": 0, "data": image[:400], "len": len(image), "upgrade": True}
    assert receiver.handle(body, HEADER) == {"off": 400}


def test_mcuboot_policy_erases_the_slot_writes_aligned_and_answers_rc(image: bytes) -> None:
    flash = Flash()
    receiver = UploadReceiver(flash, MCUBOOT_UPLOAD, lambda request: PRIMARY, page_size=PAGE)
    answer = receiver.handle({"off": 0, "data": image[:101], "len": len(image)}, HEADER)
    assert answer == {"rc": 0, "off": 100}  # the unaligned byte is asked for again
    assert flash.erases == list(range(PRIMARY.start, PRIMARY.end, PAGE))
    off = 100
    while off < len(image):
        off = receiver.handle({"off": off, "data": image[off : off + 203]}, HEADER)["off"]
    assert flash.read(PRIMARY.start, len(image)) == image
    with pytest.raises(SmpError) as refused:
        receiver.handle({"off": 0, "len": len(image)}, HEADER)  # no data
    assert (refused.value.rc, refused.value.group) == (MgmtErr.EINVAL, None)


# --- image state over trailers --------------------------------------------------------------


@pytest.fixture
def two_images(tmp_path: Any) -> tuple[Flash, bytes, bytes]:
    key = make_key(tmp_path)
    v1 = sign(tmp_path, app_body(app_build(), "1.0.0", 3000), "1.0.0", key).read_bytes()
    v2 = sign(tmp_path, app_body(app_build(), "2.0.0", 3000), "2.0.0", key).read_bytes()
    flash = Flash()
    flash.nor.load(PRIMARY.start, v1)
    flash.nor.load(SECONDARY.start, v2)
    return flash, v1, v2


def flags(state: ImageState) -> list[tuple[int, str, set[str]]]:
    out = []
    for entry in state.state_list()["images"]:
        on = {k for k in ("pending", "confirmed", "active", "permanent") if entry[k]}
        out.append((entry["slot"], entry["version"], on))
    return out


def test_state_rows_of_the_test_life_cycle(two_images: tuple[Flash, bytes, bytes]) -> None:
    flash, _v1, v2 = two_images
    state = ImageState(flash, GEOMETRY, 0, page_size=PAGE)
    assert flags(state) == [(0, "1.0.0", {"active", "confirmed"}), (1, "2.0.0", set())]
    smpimg.ImageStatesReadResponse(**state.state_list())  # the peer's model accepts it
    state.set_next_boot_slot(1, confirm=False)
    assert state.trailer(1).magic == Magic.GOOD and state.trailer(1).swap_type == SwapType.TEST
    assert state.trailer(1).image_ok == Flag.UNSET and state.swap_type() == SwapType.TEST
    assert flags(state)[1] == (1, "2.0.0", {"pending"})
    state.set_next_boot_slot(1, confirm=False)  # re-testing the pending slot is fine
    with pytest.raises(SmpError) as refused:
        state.set_next_boot_slot(1, confirm=True)
    assert refused.value.rc == ImgMgmtErr.IMAGE_ALREADY_PENDING
    with pytest.raises(SmpError) as refused:
        state.set_next_boot_slot(0, confirm=False)
    assert refused.value.rc == ImgMgmtErr.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED
    assert state.find_by_hash(parse_image(v2).image_hash or b"") == 1
    assert state.slot_in_use(1)
    with pytest.raises(SmpError) as refused:
        state.upload_slot()
    assert refused.value.rc == ImgMgmtErr.NO_FREE_SLOT


def test_confirm_with_hash_is_perm(two_images: tuple[Flash, bytes, bytes]) -> None:
    flash, _v1, _v2 = two_images
    state = ImageState(flash, GEOMETRY, 0, page_size=PAGE)
    state.set_next_boot_slot(1, confirm=True)
    trailer = state.trailer(1)
    assert (trailer.magic, trailer.image_ok, trailer.swap_type) == (
        Magic.GOOD,
        Flag.SET,
        SwapType.PERM,
    )
    assert flags(state)[1] == (1, "2.0.0", {"pending", "permanent"})


def test_after_a_test_swap_the_unconfirmed_image_is_revert_then_confirms(
    two_images: tuple[Flash, bytes, bytes],
) -> None:
    """Row 3 of the life cycle: v2 runs from the primary, unconfirmed (next boot: revert)."""
    flash, v1, v2 = two_images
    flash.nor.load(PRIMARY.start, b"\xff" * PRIMARY.size)
    flash.nor.load(SECONDARY.start, b"\xff" * SECONDARY.size)
    flash.nor.load(PRIMARY.start, v2)
    flash.nor.load(SECONDARY.start, v1)
    layout = GEOMETRY.layout(PRIMARY)
    from dfuhil.formats.mcuboot_trailer import field_write

    for field, value in (("magic", 0), ("copy_done", 1), ("swap_info", 2)):
        off, data = field_write(layout, field, value)  # type: ignore[arg-type]
        flash.nor.write(PRIMARY.start + off, data)
    state = ImageState(flash, GEOMETRY, 0, page_size=PAGE)
    assert flags(state) == [(0, "2.0.0", {"active"}), (1, "1.0.0", {"confirmed"})]
    with pytest.raises(SmpError):
        state.set_next_boot_slot(1, confirm=False)  # testing during a revert
    state.set_next_boot_slot(0, confirm=True)  # confirm the running image
    assert state.trailer(0).image_ok == Flag.SET
    assert flags(state) == [(0, "2.0.0", {"active", "confirmed"}), (1, "1.0.0", set())]


def test_confirm_without_magic_writes_nothing(two_images: tuple[Flash, bytes, bytes]) -> None:
    flash, _v1, _v2 = two_images
    state = ImageState(flash, GEOMETRY, 0, page_size=PAGE)
    state.confirm_running()
    assert flash.writes == []
    assert state.trailer(0).magic == Magic.UNSET


def test_bad_secondary_magic_wipes_the_slot(two_images: tuple[Flash, bytes, bytes]) -> None:
    flash, _v1, _v2 = two_images
    layout = GEOMETRY.layout(SECONDARY)
    flash.nor.write(SECONDARY.start + layout.magic, b"\x00" * 16)
    state = ImageState(flash, GEOMETRY, 0, page_size=PAGE)
    with pytest.raises(SmpError) as refused:
        state.set_next_boot_slot(1, confirm=False)
    assert refused.value.rc == ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC
    assert flash.read(SECONDARY.start, SECONDARY.size) == b"\xff" * SECONDARY.size


def test_direct_xip_pending_is_the_higher_version(two_images: tuple[Flash, bytes, bytes]) -> None:
    flash, _v1, _v2 = two_images
    xip = type(GEOMETRY)(mode="direct-xip", primary=PRIMARY, secondary=SECONDARY)
    state = ImageState(flash, xip, 0, page_size=PAGE)
    assert flags(state) == [
        (0, "1.0.0", {"active", "confirmed"}),
        (1, "2.0.0", {"pending", "permanent"}),
    ]
    assert not state.writable


# --- DFU lock -----------------------------------------------------------------------------


def test_dfu_lock_refuses_the_other_owner_until_the_timeout() -> None:
    clock = [0.0]
    changes: list[tuple[str, str]] = []
    lock = DfuLock(5.0, lambda: clock[0], lambda old, new: changes.append((old, new)))
    upload = SmpHeader(Op.WRITE, 1, 0, 0, Group.IMAGE, 0, ImageCmd.UPLOAD)
    echo = SmpHeader(Op.WRITE, 1, 0, 0, Group.OS, 0, OsCmd.ECHO)
    reset = SmpHeader(Op.WRITE, 1, 0, 0, Group.OS, 0, OsCmd.RESET)
    lock.check("serial", upload)
    lock.check("udp", echo)  # not a DFU command: never refused
    clock[0] = 4.0
    with pytest.raises(SmpError) as refused:
        lock.check("udp", reset)
    assert (refused.value.rc, refused.value.group) == (MgmtErr.EACCESSDENIED, None)
    lock.check("serial", upload)  # the owner keeps it alive: timer restarts at 4 s
    clock[0] = 8.9
    with pytest.raises(SmpError):
        lock.check("udp", upload)
    clock[0] = 9.0
    lock.check("udp", upload)
    assert lock.holder() == "udp" and changes == [("serial", "udp")]


# --- serve_serial on a real board's pty -------------------------------------------------------


@behaviour("test_serve_serial")
class ServeSerialProbe(Firmware):
    """A bootloader-like SMP server: v1 flavour, a 256-byte receive buffer, a wait window."""

    def run(self) -> None:
        d = SmpDispatcher("v1")
        d.register(Group.OS, OsCmd.ECHO, write=lambda body, h: {"r": body["d"]})
        wait = float(self.ctx.behaviour.params["wait_s"])
        if not serve_serial(self.ctx, d, buf_size=256, timeout_s=wait):
            self.ctx.print("no SMP within the window")


@contextmanager
def serial_server(wait_s: float) -> Iterator[VirtualBoard]:
    probe = Behaviour("test_serve_serial", "probe", "1.0.0", "probe up", {"wait_s": wait_s})
    wiring = BoardWiring("serve", 920000009, CHIP, 115200, (13, 14, 15, 16), True)
    board = VirtualBoard(wiring, VirtualClock(0.05), logging.getLogger("serve_serial"))
    board.flash.load(0, sample_image(0, 0x1000, probe, "serve_serial", ram_end(CHIP)))
    try:
        yield board
    finally:
        board.shutdown()


def test_serve_serial_gives_up_after_its_window_without_frames() -> None:
    with serial_server(0.2) as board, Console(board.uart.path) as console:
        board.power_on()
        console.expect_exact("probe up")
        console.expect_exact("no SMP within the window")


def test_serve_serial_answers_frames_and_drops_packets_over_its_buffer() -> None:
    async def session(path: str) -> None:
        # The client believes in a 1024-byte buffer (params: ENOTSUP here), the server has 256.
        client = SMPClient(SMPSerialTransport(BufferSize(1024)), path, timeout_s=1.0)
        await client.connect()
        try:
            echo = await client.request(EchoWrite(d="x" * 100))
            assert success(echo) and echo.r == "x" * 100
            with pytest.raises(TimeoutError):
                await client.request(EchoWrite(d="y" * 300), timeout_s=0.5)  # > 256: dropped
            echo = await client.request(EchoWrite(d="after"))
            assert success(echo) and echo.r == "after"
        finally:
            await client.disconnect()

    with serial_server(3600) as board:
        board.power_on()
        asyncio.run(session(board.uart.path))


def test_serve_serial_answers_in_smp_packet_encode_frames() -> None:
    """serve_serial (MCUboot's serial recovery runs on it) frames as the smp package does."""
    request = bytes(smpos.EchoWriteRequest(d="z" * 200))
    with serial_server(3600) as board:
        board.power_on()
        with serial.Serial(board.uart.path, 115200, timeout=0.1) as port:
            port.write(smp_frames(request))
            raw, answer = read_frames(port)
    assert raw == smp_frames(answer)
    assert line_lengths(raw) == [127, 127, 47]
    header, body = reply(answer)
    assert (header.op, header.seq) == (Op.WRITE_RSP, request[6]) and body == {"r": "z" * 200}
