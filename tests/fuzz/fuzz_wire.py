"""Fuzz targets for bytes from the wire: a hostile or broken device on the other end.

Two levels per protocol. The decoders alone (SMP serial framing, mesh serial framing, DFU
packets), fed a stream of valid frames, console text and garbage cut at random points. And the
host as a whole over a real pty: a device thread answers each request of dfuhil's SMP host
(``SmpLink``) or mesh DFU host (``MeshDfuTransfer`` over ``MeshSerialLink``) with what a
correct device would say, mutated by the plan hypothesis drew: wrong types, missing keys, lying
header fields, bad CRCs, silence, answers twice, noise between frames. Every operation must end
in its result or a named dfuhil error, within its deadline; a reader thread that dies counts as
a traceback even though the host then reports the port as lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import select
import struct
import threading
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cbor2
from fuzz_files import WORK
from fuzz_harness import FuzzTarget, Outcome, run, run_cli
from fuzz_strategies import INTERESTING, mutated_bytes, mutated_tree, values
from hypothesis import strategies as st

from dfuhil.formats import meshdfu, smp
from dfuhil.links.smp_log import describe_packet as describe_smp

# smpclient logs every answer it cannot parse at ERROR level; the outcomes say it here.
logging.getLogger("smpclient").setLevel(logging.CRITICAL)
logging.getLogger("smp").setLevel(logging.CRITICAL)

# --- SMP: the decoders -------------------------------------------------------------------------


def smp_packet(group: int, command: int, body: Any, *, op: int = 1, seq: int = 0) -> bytes:
    payload = cbor2.dumps(body)
    return smp.SmpHeader(op, 1, 0, len(payload), group, seq, command).pack() + payload


smp_bodies = st.one_of(
    values,
    st.fixed_dictionaries({"off": st.sampled_from(INTERESTING), "rc": st.integers(-5, 300)}),
    st.fixed_dictionaries(
        {"err": st.fixed_dictionaries({"group": st.integers(0, 70000), "rc": st.integers(-5, 300)})}
    ),
    st.fixed_dictionaries(
        {
            "images": st.lists(
                st.dictionaries(
                    st.sampled_from(["slot", "version", "hash", "active"]),
                    values | st.binary(max_size=40),
                ),
                max_size=3,
            )
        }
    ),
)


@st.composite
def smp_packets(draw: st.DrawFn) -> bytes:
    packet = smp_packet(
        draw(st.sampled_from([0, 1, 8, 9, 63, 64, 0xFFFF])),
        draw(st.integers(0, 255)),
        draw(smp_bodies),
        op=draw(st.integers(0, 7)),
        seq=draw(st.integers(0, 255)),
    )
    if draw(st.integers(0, 3)) == 0:
        packet = draw(mutated_bytes(packet, [(0, 1), (2, 2), (4, 2), (6, 1), (7, 1)]))
    return packet


def _reads(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """``stream`` cut where reads of a serial port might cut it."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


@st.composite
def smp_streams(draw: st.DrawFn) -> list[bytes]:
    """A console byte stream: frames (some damaged), boot lines, garbage; cut into reads."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["frame", "frame", "text", "garbage", "marker", "damaged"]))
        if kind in ("frame", "damaged"):
            frames = smp.encode_frames(
                draw(smp_packets()), draw(st.sampled_from([8, 32, 128, 512]))
            )
            if kind == "damaged":
                frames = draw(mutated_bytes(frames))
            parts.append(frames)
        elif kind == "text":
            parts.append(
                draw(
                    st.sampled_from(
                        [b"*** Booting Zephyr OS ***\r\n", b"I: Starting bootloader\n", b"uart:~$ "]
                    )
                )
            )
        elif kind == "marker":
            parts.append(
                draw(st.sampled_from([smp.FRAME_START, smp.FRAME_CONTINUE, b"\x06", b"\x04"]))
                + draw(st.binary(max_size=1100))
            )
        else:
            parts.append(draw(st.binary(max_size=64)))
    stream = b"".join(parts)
    return _reads(draw, stream)


def run_smp_decoder(chunks: list[bytes]) -> Outcome:
    def decode() -> None:
        decoder = smp.SerialFrameDecoder()
        for chunk in chunks:
            for item in decoder.feed(chunk):
                if isinstance(item, smp.SmpPacket):
                    describe_smp(item.data)
                    with contextlib.suppress(ValueError):  # documented: a header that lies
                        smp.split_messages(item.data)

    return run(decode)


# --- mesh serial: the decoders ----------------------------------------------------------------

MESH_OPCODES = [0x02, 0x81, 0x82, 0x84, 0x78, 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0x00, 0xFF]


@st.composite
def dfu_packets(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0xFFFE, 0xFFFD, 0xFFFC, 0xFFFB, 0xFFFA, 0x0000, 0x1234]))
    body = draw(st.binary(max_size=28))
    return struct.pack("<H", kind) + body


@st.composite
def mesh_frames(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from(MESH_OPCODES))
    if opcode == 0x78:
        payload = draw(dfu_packets())
    elif opcode == 0x84:
        payload = bytes([0x78, draw(st.integers(0, 255))]) + draw(st.binary(max_size=4))
    else:
        payload = draw(st.binary(max_size=30))
    raw = bytes([len(payload) + 1, opcode]) + payload
    if draw(st.integers(0, 4)) == 0:
        raw = draw(mutated_bytes(raw, [(0, 1), (1, 1), (2, 2)]))
    return raw


@st.composite
def mesh_streams(draw: st.DrawFn) -> list[bytes]:
    stream = b"".join(draw(st.lists(mesh_frames() | st.binary(max_size=8), min_size=1, max_size=8)))
    return _reads(draw, stream)


def run_mesh_decoder(chunks: list[bytes]) -> Outcome:
    def decode() -> None:
        reader = meshdfu.FrameReader()
        text = meshdfu.FrameTextDecoder()
        for chunk in chunks:
            text.decode(chunk)
            for item in reader.feed(chunk):
                meshdfu.describe_frame(item)
                item.encode()
                with contextlib.suppress(meshdfu.PacketError):
                    if item.opcode == meshdfu.Opcode.DFU_DATA:
                        meshdfu.describe_packet(item.payload)
                        meshdfu.decode_packet(item.payload)
                    if item.opcode == meshdfu.Opcode.CMD_RSP:
                        meshdfu.CommandResponse.decode(item.payload)
        text.decode(b"", final=True)

    return run(decode)


# --- the hosts over a real pty ----------------------------------------------------------------


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


@dataclass
class Device:
    """The device end of a pty: reads what the host sends, answers through ``respond``."""

    master: int
    respond: Callable[[bytes], None]
    stop: threading.Event = field(default_factory=threading.Event)
    crashed: list[str] = field(default_factory=list)

    def run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            try:
                self.respond(data)
            except OSError:
                return
            except Exception as exc:  # the fuzz device itself must not hide a host bug
                self.crashed.append(repr(exc))
                return

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self.run, daemon=True, name="fuzz-device")
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join(timeout=2)


# SMP: what a correct Zephyr smp_svr would answer, before the plan spoils it.
HASH = hashlib.sha256(b"running").digest()
IMAGE = bytes((i * 11 + 1) & 0xFF for i in range(700))

HEADER_MASKS = {"op": 7, "version": 3, "flags": 0xFF, "group": 0xFFFF, "seq": 0xFF}
HEADER_MASKS |= {"command_id": 0xFF, "length": 0xFFFF}
SMP_OPS = [
    "ok",
    "ok",
    "stuck",
    "tree",
    "value",
    "header",
    "raw",
    "noise",
    "silent",
    "twice",
    "error",
    "frame",
    "deep",
]


@dataclass
class HostileSmpServer:
    master: int
    plan: list[tuple[str, Any]]
    turn: int = 0
    decoder: smp.SerialFrameDecoder = field(default_factory=smp.SerialFrameDecoder)
    received: int = 0

    def respond(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if isinstance(item, smp.SmpPacket):
                self.answer(item.data)

    def correct(self, header: smp.SmpHeader, body: Any) -> Any:
        group, command = header.group, header.command_id
        if group == smp.Group.OS and command == smp.OsCmd.MCUMGR_PARAMS:
            return {"buf_size": 384, "buf_count": 4}
        if group == smp.Group.OS and command == smp.OsCmd.ECHO:
            return {"r": body.get("d", "") if isinstance(body, dict) else ""}
        if group == smp.Group.IMAGE and command == smp.ImageCmd.STATE:
            return {
                "images": [
                    {
                        "slot": 0,
                        "version": "1.0.0",
                        "hash": HASH,
                        "active": True,
                        "confirmed": True,
                        "bootable": True,
                    }
                ]
            }
        if group == smp.Group.IMAGE and command == smp.ImageCmd.UPLOAD and isinstance(body, dict):
            self.received = int(body.get("off", 0)) + len(body.get("data", b""))
            return {"off": self.received}
        return {}

    def answer(self, request: bytes) -> None:
        header = smp.SmpHeader.unpack(request)
        body = cbor2.loads(request[8:]) if header.length else {}
        op, arg = self.plan[self.turn % len(self.plan)]
        self.turn += 1
        answer = self.correct(header, body)
        h = dict(
            op=header.op + 1,
            version=header.version,
            flags=0,
            group=header.group,
            seq=header.seq,
            command_id=header.command_id,
        )
        payload = cbor2.dumps(answer)
        if op == "silent":
            return
        if op == "stuck" and "off" in answer:  # takes no data: always the same offset
            payload = cbor2.dumps({"off": arg})
        elif op == "params" and "buf_size" in answer:
            payload = cbor2.dumps({"buf_size": arg[0], "buf_count": arg[1]})
        elif op == "tree":
            payload = cbor2.dumps(arg(answer))
        elif op == "value" or op == "error":
            payload = cbor2.dumps(arg)
        elif op == "header":
            name, value = arg
            h[name] = value & HEADER_MASKS[name]
        elif op == "raw":
            payload = arg
        elif op == "deep":
            payload = b"\x81" * 5000 + b"\x00"  # an array in an array ... 5000 deep
        length = h.pop("length", len(payload))
        packet = (
            smp.SmpHeader(
                h["op"], h["version"], h["flags"], length, h["group"], h["seq"], h["command_id"]
            ).pack()
            + payload
        )
        frames = smp.encode_frames(packet)
        if op == "frame":
            frames = arg(frames)
        if op == "noise":
            os.write(self.master, arg)
        os.write(self.master, frames)
        if op == "twice":
            os.write(self.master, frames)


@st.composite
def smp_plans(draw: st.DrawFn) -> list[tuple[str, Any]]:
    plan = []
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(SMP_OPS))
        arg: Any = None
        if op == "tree":
            seed = draw(
                st.sampled_from(
                    [
                        {"buf_size": 384, "buf_count": 4},
                        {"images": [{"slot": 0, "version": "1.0.0", "hash": HASH, "active": True}]},
                        {"off": 100, "match": True},
                        {"r": "hi"},
                    ]
                )
            )
            mutated = draw(mutated_tree(seed))
            arg = lambda _answer, m=mutated: m  # noqa: E731
        elif op == "value":
            arg = draw(values | st.binary(max_size=40))
        elif op == "error":
            arg = draw(
                st.one_of(
                    st.fixed_dictionaries({"rc": st.integers(-(1 << 40), 1 << 40)}),
                    st.fixed_dictionaries(
                        {
                            "err": st.fixed_dictionaries(
                                {"group": st.integers(-3, 1 << 20), "rc": st.integers(-3, 1 << 20)}
                            )
                        }
                    ),
                    st.fixed_dictionaries({"err": values}),
                )
            )
        elif op == "header":
            arg = (
                draw(
                    st.sampled_from(
                        ["op", "version", "flags", "group", "seq", "command_id", "length"]
                    )
                ),
                draw(st.sampled_from(INTERESTING)),
            )
        elif op == "raw":
            arg = draw(st.binary(max_size=40))
        elif op == "stuck":
            arg = draw(st.sampled_from([0, 1, 100]))
        elif op == "params":
            sizes = st.sampled_from([*INTERESTING, -1, 1 << 40])
            arg = (draw(sizes), draw(sizes))
        elif op == "noise":
            arg = draw(
                st.sampled_from([b"\x06\x09", b"garbage\n", b"\x04\x14AAAA\n", b"\x06\x09!!!!\n"])
            )
        elif op == "frame":
            damage = draw(st.sampled_from(["crc", "cut", "base64", "len"]))
            arg = _frame_damage(damage)
        plan.append((op, arg))
    return plan


def _frame_damage(kind: str) -> Callable[[bytes], bytes]:
    def damage(frames: bytes) -> bytes:
        if kind == "crc":
            return frames[:-3] + (b"A" if frames[-3:-2] != b"A" else b"B") + frames[-2:]
        if kind == "cut":
            return frames[: len(frames) // 2] + b"\n"
        if kind == "base64":
            return frames[:3] + b"*" + frames[4:]
        return frames.replace(b"\n", b"\n\x04\x14AAAA\n", 1)

    return damage


def run_smp_host(plan: list[tuple[str, Any]], image: bytes = IMAGE) -> list[Outcome]:
    from dfuhil.links.console import Console
    from dfuhil.links.smp_link import SmpLink

    outcomes: list[Outcome] = []
    with pty_pair() as (master, port):
        server = HostileSmpServer(master, plan)
        device = Device(master, server.respond)
        console = Console(port, log_path=WORK / "smp-host.log", name="fuzz")
        link = SmpLink.over_console(console, timeout_s=0.25, owns_console=True)
        with device.running():
            try:
                outcomes.append(run(link.connect, seconds=10))
                if link.params is not None:
                    for op in (
                        lambda: link.echo("hello"),
                        link.image_list,
                        lambda: link.test(HASH),
                        link.confirm,
                        link.reset,
                        lambda: link.upload(image, first_timeout_s=0.5),
                    ):
                        outcomes.append(run(op, seconds=15))
            finally:
                link.close()
        if device.crashed:
            outcomes.append(Outcome("traceback", f"the fuzz device crashed: {device.crashed}"))
    return outcomes


def run_smp_cli(plan: list[tuple[str, Any]]) -> Outcome:
    """``dfuhil mcuboot list --port PTY``: a broken answer exits 1 and silence 3, naming the
    port; a refusal the device states exits 1 with its name (``... refused: EUNKNOWN (1)``)."""
    with pty_pair() as (master, port):
        device = Device(master, HostileSmpServer(master, plan).respond)
        with device.running():
            argv = ["mcuboot", "list", "--port", port, "--timeout", "0.25"]
            outcome = run_cli(argv, names=(port, " refused: "), seconds=15, codes=(1, 3))
        if device.crashed:
            return Outcome("traceback", f"the fuzz device crashed: {device.crashed}")
    return outcome


# Mesh: a device that acks every DFU packet, answers the echo, and slips in what the plan says.
MESH_OPS = ["ok", "ok", "frame", "garbage", "silent", "nak", "restart", "request", "twice"]


@dataclass
class HostileMeshDevice:
    master: int
    plan: list[tuple[str, bytes]]
    turn: int = 0
    reader: meshdfu.FrameReader = field(default_factory=meshdfu.FrameReader)

    def respond(self, data: bytes) -> None:
        for item in self.reader.feed(data):
            self.answer(item)

    def answer(self, item: meshdfu.Frame) -> None:
        op, extra = self.plan[self.turn % len(self.plan)]
        self.turn += 1
        if item.opcode == meshdfu.Opcode.ECHO:
            correct = meshdfu.frame(meshdfu.Opcode.ECHO_RSP, item.payload)
        else:
            correct = meshdfu.cmd_rsp_app(meshdfu.Opcode.DFU_DATA, meshdfu.Status.SUCCESS)
        if op == "silent":
            return
        if op == "nak":
            correct = meshdfu.cmd_rsp_app(meshdfu.Opcode.DFU_DATA, extra[0] if extra else 0x85)
        if op in ("frame", "garbage", "restart", "request"):
            os.write(self.master, extra)
        os.write(self.master, correct)
        if op == "twice":
            os.write(self.master, correct)


@st.composite
def mesh_plans(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    plan = []
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(MESH_OPS))
        extra = b""
        if op == "frame":
            extra = draw(mesh_frames())
        elif op == "garbage":
            extra = draw(st.binary(min_size=1, max_size=12))
        elif op == "restart":
            extra = meshdfu.frame(meshdfu.Opcode.DEVICE_STARTED, draw(st.binary(max_size=3)))
        elif op == "request":
            tid = draw(st.sampled_from([TID, 0, 0xFFFFFFFF]))
            segment = draw(st.sampled_from([0, 1, 2, 3, 4, 0xFFFF]))
            extra = meshdfu.frame(
                meshdfu.Opcode.DFU_DATA, meshdfu.DataRequest(segment, tid).encode()
            )
        elif op == "nak":
            extra = bytes([draw(st.integers(0, 255))])
        plan.append((op, extra))
    return plan


TID = 0x12345678


def _mesh_package() -> Any:
    from fuzz_files import _place, app_hex

    from dfuhil.formats.meshpkg import MeshPackage

    return MeshPackage.build(
        _place("seed", "mesh-app.hex", app_hex().encode()), 0x59, 1, 2, name="app"
    )


def run_mesh_host(plan: list[tuple[str, bytes]], seconds: float = 30) -> list[Outcome]:
    from dfuhil.links.mesh_serial import MeshSerialLink
    from dfuhil.procedures.mesh_dfu import MeshDfuTransfer

    outcomes: list[Outcome] = []
    package = _mesh_package()
    with pty_pair() as (master, port):
        device = Device(master, HostileMeshDevice(master, plan).respond)
        link = MeshSerialLink(port, log_path=WORK / "mesh-host.log", name="fuzz", drain_gap=0.01)
        with device.running():
            try:
                link.open()
                transfer = MeshDfuTransfer(
                    package, link, time_scale=0.002, transaction_id=TID, quiet_period=20.0
                )
                outcomes.append(run(transfer.run, seconds=seconds))
            finally:
                link.close()
        log = (WORK / "mesh-host.log").read_text(encoding="utf-8", errors="replace")
        if "reader crashed" in log:
            crash = next(line for line in log.splitlines() if "reader crashed" in line)
            outcomes.append(Outcome("traceback", f"the mesh serial reader died: {crash}"))
        if device.crashed:
            outcomes.append(Outcome("traceback", f"the fuzz device crashed: {device.crashed}"))
    return outcomes


TARGETS: dict[str, FuzzTarget] = {
    t.name: t
    for t in (
        FuzzTarget("smp serial frames", smp_streams(), run_smp_decoder),
        FuzzTarget("smp answers (host over pty)", smp_plans(), run_smp_host),
        FuzzTarget("smp answers (cli)", smp_plans(), run_smp_cli),
        FuzzTarget("mesh serial frames", mesh_streams(), run_mesh_decoder),
        FuzzTarget("mesh serial (host over pty)", mesh_plans(), run_mesh_host),
    )
}

__all__ = ["TARGETS"]
