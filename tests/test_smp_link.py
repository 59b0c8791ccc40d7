"""The SMP host against a scripted SMP server on a real pseudo-terminal.

The server below is deliberately small and independent of the virtual farm's SMP app: it
speaks the wire format (formats/smp.py framing, CBOR), follows the Zephyr upload rules the host
depends on (first chunk carries len/sha, wrong ``off`` answered with the expected one, resume by
``sha``) and can misbehave on purpose (drop a request, write only aligned parts like MCUboot,
answer nothing, print boot lines between frames).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import select
import threading
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import pytest

from dfuhil.errors import InfrastructureError, ProductError
from dfuhil.formats.smp import (
    Group,
    ImageCmd,
    ImgMgmtErr,
    MgmtErr,
    OsCmd,
    SerialFrameDecoder,
    SmpHeader,
    SmpPacket,
    encode_frames,
)
from dfuhil.formats.smp_uart import SmpUart
from dfuhil.links.console import Console
from dfuhil.links.smp_link import SmpLink, SmpRefused
from dfuhil.links.smp_transport import FALLBACK_MESSAGE_SIZE, split_address
from dfuhil.links.smp_upload import MAX_STALLS

# The scripted server reads whole packets: no UART line buffers to overflow (paced delivery).
WHOLE_LINES = SmpUart(delivery="paced")
HASH_A = bytes(range(32))
HASH_B = bytes(range(32, 64))
IMAGE = bytes((i * 7 + i // 251) & 0xFF for i in range(20_000))


@dataclass
class Server:
    """A scripted SMP server on the master side of a pty."""

    master: int
    buf_size: int | None = 512  # None: no MCUmgr params (answers rc 8, like MCUboot)
    buf_count: int = 4
    mcuboot_style: bool = False  # v1 errors, {"rc": 0} answers, aligned writes
    align: int = 1
    silent: bool = False
    drop: set[int] = field(default_factory=set)  # request numbers never answered
    # n-th upload request / n-th echo (from 1) never answered: a frame lost on a noisy line
    drop_uploads: set[int] = field(default_factory=set)
    drop_echoes: set[int] = field(default_factory=set)
    boot_lines: list[bytes] = field(default_factory=list)  # printed after each upload chunk
    slot: bytearray = field(default_factory=bytearray)
    upload_len: int | None = None
    upload_sha: bytes | None = None
    requests: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    pending: bytes | None = None
    confirmed_running: bool = False
    resets: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        decoder = SerialFrameDecoder()
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            for item in decoder.feed(data):
                if isinstance(item, SmpPacket):
                    self.handle(item.data)

    def handle(self, packet: bytes) -> None:
        header = SmpHeader.unpack(packet)
        body = cbor2.loads(packet[8:]) if header.length else {}
        self.requests.append((header.group, header.command_id, body))
        number = len(self.requests)
        if self.silent or number in self.drop or self._lost_on_the_line(header):
            return
        answer = self.answer(header, body)
        payload = cbor2.dumps(answer)
        rsp = SmpHeader(header.op + 1, header.version, 0, len(payload), header.group,
                        header.seq, header.command_id)  # fmt: skip
        os.write(self.master, encode_frames(rsp.pack() + payload))
        for line in self.boot_lines:
            os.write(self.master, line)

    def _lost_on_the_line(self, header: SmpHeader) -> bool:
        kind = (header.group, header.command_id)
        nth = sum((g, c) == kind for g, c, _ in self.requests)
        if kind == (Group.IMAGE, ImageCmd.UPLOAD):
            return nth in self.drop_uploads
        return kind == (Group.OS, OsCmd.ECHO) and nth in self.drop_echoes

    def error(self, rc: int, group: int = Group.IMAGE) -> dict[str, Any]:
        if self.mcuboot_style:
            return {"rc": int(rc)}
        return {"err": {"group": int(group), "rc": int(rc)}}

    def answer(self, header: SmpHeader, body: dict[str, Any]) -> dict[str, Any]:
        group, cmd = header.group, header.command_id
        if group == Group.OS and cmd == OsCmd.MCUMGR_PARAMS:
            if self.buf_size is None:
                return {"rc": int(MgmtErr.ENOTSUP)}
            return {"buf_size": self.buf_size, "buf_count": self.buf_count}
        if group == Group.OS and cmd == OsCmd.ECHO:
            return {"r": body["d"]}
        if group == Group.OS and cmd == OsCmd.RESET:
            self.resets += 1
            return {"rc": 0} if self.mcuboot_style else {}
        if group == Group.IMAGE and cmd == ImageCmd.STATE:
            if header.op == 2:
                return self.state_write(body)
            return self.state_list()
        if group == Group.IMAGE and cmd == ImageCmd.UPLOAD:
            return self.upload(body)
        if group == Group.IMAGE and cmd == ImageCmd.ERASE:
            self.slot = bytearray()
            return {}
        return {"rc": int(MgmtErr.ENOTSUP)}

    def state_list(self) -> dict[str, Any]:
        images = [
            {"slot": 0, "version": "1.0.0", "hash": HASH_A, "bootable": True, "pending": False,
             "confirmed": True, "active": True, "permanent": False},
            {"slot": 1, "version": "1.1.0", "hash": HASH_B, "bootable": True,
             "pending": self.pending is not None, "confirmed": False, "active": False,
             "permanent": False},
        ]  # fmt: skip
        return {"images": images, "splitStatus": 0}

    def state_write(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("hash")
        if wanted is None and body.get("confirm"):
            self.confirmed_running = True
            return self.state_list()
        if wanted not in (HASH_A, HASH_B):
            return self.error(ImgMgmtErr.HASH_NOT_FOUND)
        if wanted == HASH_A:
            return self.error(ImgMgmtErr.IMAGE_SETTING_TEST_TO_ACTIVE_DENIED)
        self.pending = wanted
        return self.state_list()

    def upload(self, body: dict[str, Any]) -> dict[str, Any]:
        off, data = body["off"], body["data"]
        self.chunk_sizes.append(len(data))
        if off == 0:
            if "len" not in body:
                return self.error(ImgMgmtErr.INVALID_LENGTH)
            sha = body.get("sha")
            if sha is not None and sha == self.upload_sha and body["len"] == self.upload_len:
                return self.offset(len(self.slot))  # resume
            self.upload_len, self.upload_sha = body["len"], sha
            self.slot = bytearray()
        expected = len(self.slot)
        if off != expected:
            return self.offset(expected)
        take = len(data)
        if off + take < (self.upload_len or 0):
            take -= (off + take) % self.align
        self.slot += data[:take]
        answer = self.offset(len(self.slot))
        if (
            len(self.slot) == self.upload_len
            and self.upload_sha is not None
            and not (self.mcuboot_style)
        ):
            answer["match"] = hashlib.sha256(self.slot).digest() == self.upload_sha
        return answer

    def offset(self, off: int) -> dict[str, Any]:
        return {"rc": 0, "off": off} if self.mcuboot_style else {"off": off}


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[..., tuple[Server, Console]]]:
    """Start a scripted server on a fresh pty; yields a factory taking Server options."""
    started: list[tuple[Server, threading.Thread, int, int, Console]] = []

    def make(**options: Any) -> tuple[Server, Console]:
        master, slave = os.openpty()
        tty.setraw(slave)
        server = Server(master, **options)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        log = tmp_path / f"board{len(started)}.log"
        console = Console(os.ttyname(slave), log_path=log, name=f"board{len(started)}")
        console.open()
        started.append((server, thread, master, slave, console))
        return server, console

    yield make
    for server, thread, master, slave, console in started:
        console.close()
        server.stop.set()
        thread.join(timeout=2)
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


Factory = Callable[..., tuple[Server, Console]]


def test_connect_negotiates_the_buffer_and_upload_fills_it(scripted: Factory) -> None:
    server, console = scripted(buf_size=512, buf_count=4)
    with SmpLink.over_console(console, timeout_s=2.0, uart=WHOLE_LINES) as smp:
        assert smp.params is not None
        assert (smp.params.buf_size, smp.params.buf_count, smp.params.source) == (512, 4, "params")
        assert smp.params.message_size == 508  # buf_size - frame length - CRC
        seen: list[tuple[int, int]] = []
        result = smp.upload(IMAGE, progress=lambda done, total: seen.append((done, total)))
    assert bytes(server.slot) == IMAGE
    assert result.match is True and result.start_offset == 0 and result.window == 3  # 4th: answer
    assert seen[-1] == (len(IMAGE), len(IMAGE))
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    # every chunk but the last fills the 508-byte message
    upload_id = (Group.IMAGE, ImageCmd.UPLOAD)
    uploads = [body for group, cmd, body in server.requests if (group, cmd) == upload_id]
    first = uploads[0]
    assert first["len"] == len(IMAGE) and first["sha"] == hashlib.sha256(IMAGE).digest()
    assert max(server.chunk_sizes) > 450 and len(set(server.chunk_sizes[1:-1])) == 1


def test_state_list_test_confirm_echo_reset(scripted: Factory) -> None:
    server, console = scripted()
    with SmpLink.over_console(console) as smp:
        slots = smp.image_list()
        assert [(s.slot, s.version, s.hash, s.flags()) for s in slots] == [
            (0, "1.0.0", HASH_A, ["bootable", "confirmed", "active"]),
            (1, "1.1.0", HASH_B, ["bootable"]),
        ]
        after = smp.test(HASH_B)
        assert after[1].pending
        smp.confirm()
        assert server.confirmed_running
        assert smp.echo("hello") == "hello"
        smp.reset()
        assert server.resets == 1


def test_a_hash_no_slot_holds_is_refused_with_the_name_and_the_two_hashes_hint(
    scripted: Factory,
) -> None:
    _, console = scripted()
    with SmpLink.over_console(console) as smp, pytest.raises(SmpRefused) as refused:
        smp.test(hashlib.sha256(IMAGE).digest())  # the file SHA256, the classic mistake
    message = str(refused.value)
    assert "HASH_NOT_FOUND (8)" in message
    assert "the file SHA256 is not the image hash" in message
    assert refused.value.rc == ImgMgmtErr.HASH_NOT_FOUND


def test_mcuboot_style_server_without_params_reset_rc0_and_aligned_writes(
    scripted: Factory,
) -> None:
    server, console = scripted(buf_size=None, mcuboot_style=True, align=8)
    with SmpLink.over_console(console) as smp:
        assert smp.params is not None
        assert smp.params.source == "fallback"
        assert smp.params.message_size == FALLBACK_MESSAGE_SIZE
        result = smp.upload(IMAGE[:3000], first_timeout_s=1.0)  # a scripted server: no erase
        smp.reset()  # {"rc": 0} is a success
    assert bytes(server.slot) == IMAGE[:3000]
    assert result.resent_bytes > 0  # every unaligned tail was sent again from the server's off
    assert server.resets == 1


def test_manual_buffer_size_for_servers_without_params(scripted: Factory) -> None:
    server, console = scripted(buf_size=None, mcuboot_style=True)
    with SmpLink.over_console(console, buf_size=1024, uart=WHOLE_LINES) as smp:
        assert smp.params is not None and smp.params.source == "manual"
        smp.upload(IMAGE[:5000])
    assert max(server.chunk_sizes) > 900


def test_interrupted_upload_resumes_from_the_servers_offset(scripted: Factory) -> None:
    server, console = scripted()

    def interrupt(done: int, total: int) -> None:
        if done > 8000:
            raise KeyboardInterrupt("Ctrl-C")

    with SmpLink.over_console(console) as smp, pytest.raises(KeyboardInterrupt):
        smp.upload(IMAGE, progress=interrupt)
    chunks_before = len(server.chunk_sizes)
    with SmpLink.over_console(console) as smp:  # a new session, same file
        result = smp.upload(IMAGE)
    # Chunks already in flight at the interrupt still landed; the server says where it stood.
    assert 8000 < result.start_offset < len(IMAGE)
    assert bytes(server.slot) == IMAGE
    sent_again = sum(server.chunk_sizes[chunks_before + 1 :])  # after the resuming first chunk
    assert sent_again == len(IMAGE) - result.start_offset


def test_a_lost_request_is_recovered_from_the_last_confirmed_offset(scripted: Factory) -> None:
    server, console = scripted(buf_size=256, buf_count=3)
    server.drop = {6}  # params is request 1, the first chunk 2
    with SmpLink.over_console(console, timeout_s=0.5) as smp:
        result = smp.upload(IMAGE[:6000])
    assert bytes(server.slot) == IMAGE[:6000]
    assert result.window == 1  # fell back to one request at a time
    assert result.resent_bytes > 0


def test_a_lost_first_chunk_is_sent_again_and_the_server_resumes(scripted: Factory) -> None:
    server, console = scripted(buf_size=256, buf_count=3)
    server.drop_uploads = {1, 2}  # the first chunk's answer lost twice on the line
    with SmpLink.over_console(console, timeout_s=0.5) as smp:
        result = smp.upload(IMAGE[:3000], first_timeout_s=1.0)  # a scripted server: no erase
    assert bytes(server.slot) == IMAGE[:3000]
    firsts = [b for g, c, b in server.requests if (g, c) == (Group.IMAGE, ImageCmd.UPLOAD)][:3]
    assert [b["off"] for b in firsts] == [0, 0, 0]
    assert firsts[0]["sha"] == firsts[2]["sha"]  # the same request: the server resumes
    assert result.start_offset == 0


def test_losses_spread_over_an_upload_do_not_end_it_but_losses_in_a_row_do(
    scripted: Factory,
) -> None:
    server, console = scripted(buf_size=256, buf_count=1)
    server.drop_uploads = {3, 6, 9, 12, 15}  # a noisy line: one frame in three, with progress
    with SmpLink.over_console(console, timeout_s=0.3) as smp:
        smp.upload(IMAGE[:6000])
    assert bytes(server.slot) == IMAGE[:6000]

    server, console = scripted(buf_size=256, buf_count=1)
    server.drop_uploads = set(range(3, 3 + MAX_STALLS + 1))  # a dead line: no progress at all
    with (
        SmpLink.over_console(console, timeout_s=0.3) as smp,
        pytest.raises(InfrastructureError, match=f"{MAX_STALLS + 1} times"),
    ):
        smp.upload(IMAGE[:6000])


def test_one_echo_lost_to_noise_before_an_upload_does_not_blame_the_buffers(
    scripted: Factory,
) -> None:
    server, console = scripted(buf_size=256, buf_count=3)
    server.drop_echoes = {2}  # one echo of the first round lost on the line
    with SmpLink.over_console(console, timeout_s=0.5, uart=WHOLE_LINES) as smp:
        smp.upload(IMAGE[:3000])
    assert bytes(server.slot) == IMAGE[:3000]


def test_boot_lines_between_frames_reach_the_console_and_the_log(scripted: Factory) -> None:
    _server, console = scripted(boot_lines=[b"I: Starting bootloader\r\n"])
    with SmpLink.over_console(console) as smp:
        smp.echo("x")
        console.expect("Starting bootloader", timeout=5)
    text = console.text()
    assert "\x06" not in text and "\x04\x14" not in text  # no frame leaked into the text
    assert console.log_path is not None
    log = console.log_path.read_text()
    assert "<< SMP OS echo WRITE_RSP" in log and ">> SMP OS echo WRITE" in log
    assert "I: Starting bootloader" in log


def test_a_port_without_smp_server_is_an_infrastructure_error_naming_port_and_causes(
    scripted: Factory,
) -> None:
    _, console = scripted(silent=True)
    with pytest.raises(InfrastructureError) as failed:
        SmpLink.over_console(console, timeout_s=0.3).connect()
    message = str(failed.value)
    assert console.url in message
    assert "baud" in message and "serial recovery" in message
    assert "Traceback" not in message


def test_a_server_reporting_a_sha_mismatch_fails_the_upload(scripted: Factory) -> None:
    server, console = scripted()
    original = server.upload

    def corrupt(body: dict[str, Any]) -> dict[str, Any]:
        if body["off"] == 0:
            body = {**body, "data": bytes([body["data"][0] ^ 0xFF]) + body["data"][1:]}
        return original(body)

    server.upload = corrupt  # type: ignore[method-assign]
    with SmpLink.over_console(console) as smp, pytest.raises(ProductError, match="SHA256"):
        smp.upload(IMAGE[:2000])


def test_udp_addresses() -> None:
    assert split_address("127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert split_address("board.local") == ("board.local", 1337)
    assert split_address("[::1]:1337") == ("::1", 1337)
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_address("host:port")
