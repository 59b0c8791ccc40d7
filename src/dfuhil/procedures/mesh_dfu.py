"""The host side of Nordic's proprietary mesh DFU over serial (``nrfutil dfu serial --mesh``).

Sequence (shared/specs/mesh-dfu.md §4.2, as pc-nrfutil's mesh_dfu branch does it):

1. Echo ``AA BB CC DD``; any ECHO_RSP proves a mesh serial device is listening.
2. STATE (authority 7 + flood, random tid), wait 2 s, the same STATE again (an app that switched
   to target or relay on the first one picks the tid up), wait 2 s.
3. START (start address, length in words, signature length, flags 0x0C), then wait for the
   worst-case bank erase: 95.08 ms × (length // 4096) × 1.5.
4. DATA segments 1..N, then the signature in segments N+1..N+4; before each new frame, answer
   the DATA_REQs the mesh sent in the meantime with DATA_RSPs.
5. Keep answering requests; there is no END packet. nrfutil stopped after 20 s without a
   request, which ended transfers while a node still waited (a lost DATA_REQ is repeated only
   every 10 s) and before a serial target said how its transfer ended (30 s after its last
   segment). dfuhil waits until the serial node reports its end (DFU END, or a restart into the
   new image) and no request came for seven of the SDK's repeat periods
   (:mod:`mesh_outcome <dfuhil.procedures.mesh_outcome>` has the numbers and their sources).
   The result carries what the serial node said and which segments were still asked for; the
   caller turns that into a verdict per node, because the acks alone prove nothing.

Every frame is stop-and-wait: delivered when a CMD_RSP for opcode 0x78 with status SUCCESS
arrives (the application's ``[0x78][status]`` or the bootloader's ``[0x78][status][type]``),
otherwise resent every 0.5 s, 10 tries, then the transfer is aborted with nrfutil's words for
where it stopped. Between frames a :mod:`pacing <dfuhil.procedures.mesh_pacing>` object decides
the gap.

All waits are in device seconds and multiplied by ``time_scale`` to get host seconds: a virtual
farm running at 0.1 answers ten times sooner. Only the ack timeout keeps a floor in host time,
because pty round trips and thread wake-ups do not get faster with the virtual clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dfuhil.errors import DfuhilError, InfrastructureError, InputError, ProductError
from dfuhil.formats.meshdfu import (
    FWID_LENGTH,
    HOST_AUTHORITY,
    SEGMENT_SIZE,
    START_ADDRESS_UNKNOWN,
    CommandResponse,
    Data,
    DataRequest,
    DfuType,
    Frame,
    Opcode,
    OperatingMode,
    PacketError,
    Start,
    State,
    Status,
    decode_packet,
    segment_count,
    segment_payload,
    status_name,
)
from dfuhil.links.mesh_serial import MeshSerialLink
from dfuhil.procedures.mesh_outcome import (
    END_WAIT_S,
    REQUEST_QUIET_S,
    NodeOutcome,
    SerialNodeLog,
    requests_outcome,
)
from dfuhil.procedures.mesh_pacing import Adaptive, FixedInterval, Pacing

__all__ = [
    "Adaptive",
    "FixedInterval",
    "MeshDfuTransfer",
    "Pacing",
    "TransferPlan",
    "TransferResult",
    "fixed_wait_seconds",
    "line_rate_bound",
]

ECHO_PAYLOAD = bytes([0xAA, 0xBB, 0xCC, 0xDD])
ACK_WAIT_S = 0.5  # nrfutil ACK_WAIT_TIME: resend a frame that has no SUCCESS after this long
ACK_WAIT_FLOOR_S = 0.05  # host seconds; see the module docstring
# The opcodes the host sends: a CMD_RSP for any other answers a frame the line garbled.
_SENT_OPCODES = frozenset({Opcode.ECHO, Opcode.RADIO_RESET, Opcode.DFU_DATA})
MAX_TRIES = 10  # nrfutil MAX_RETRIES: sends of one frame before the link counts as lost
# After MAX_TRIES unanswered sends, how long to listen for a late ack before calling the device
# silent: a USB hub or bridge that stalls the line delivers the ack that long after.
LATE_ACK_WAIT_S = 60.0
STATE_WAIT_S = 2.0  # nrfutil SEND_START_DFU_WAIT_TIME, after each of the two STATEs
PAGE_ERASE_MAX_S = 0.09508  # nRF52832 89.7 ms + 6 % HFINT tolerance (nrfutil)
ERASE_PAGE_SIZE = 4096
ERASE_MARGIN = 1.5  # "50 % margin for stack operation and timeslots"
QUIET_PERIOD_S = REQUEST_QUIET_S  # nrfutil's DATA_REQ_WAIT_TIME was 20 s: too short, see above
LINGER_LIMIT_S = 600.0  # give up serving requests after this; the app's DATA timeout is 600 s
CMD_RSP_APP_BYTES = 4  # `03 84 78 00`: the shorter of the two CMD_RSP variants
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit

# nrfutil's words for a frame that got no SUCCESS, by the longest matching prefix of
# opcode + packet (SerialPacket.FAIL_REASON), and its names for packets (SERIAL_OPCODES).
_FAIL_REASONS: tuple[tuple[bytes, str], ...] = (
    (bytes([0x78, 0xFC, 0xFF, 0x00, 0x00]), "Crashed on start packet"),
    (
        bytes([0x78, 0xFA, 0xFF]),
        "Lost connection in the middle of responding to a missing packet request",
    ),
    (bytes([0x78, 0xFC, 0xFF]), "Lost connection in the middle of the transfer"),
    (bytes([0x78, 0xFD, 0xFF]), "Lost connection in the setup phase"),
    (bytes([0x78, 0xFE, 0xFF]), "Lost connection before starting the transfer"),
)
_PACKET_NAMES: tuple[tuple[bytes, str], ...] = (
    (bytes([0x78, 0xFC, 0xFF, 0x00, 0x00]), "DFU start"),
    (bytes([0x78, 0xFC, 0xFF]), "DFU data"),
    (bytes([0x78, 0xFA, 0xFF]), "DFU data response"),
    (bytes([0x78, 0xFD, 0xFF]), "DFU state beacon"),
    (bytes([0x78, 0xFE, 0xFF]), "DFU FWID beacon"),
)
# What a status usually means in this conversation (§4.3, §4.4), for the person reading.
_STATUS_HINTS: dict[int, str] = {
    Status.ERROR_INVALID_PARAMETER: (
        "a serial bootloader answers so when it ignored the STATE, i.e. the package is not an "
        "upgrade for this board (company id, application id, version); `dfuhil mesh check` "
        "tells which"
    ),
    Status.ERROR_BUSY: (
        "the device's queue stayed full; slow down with --pacing fixed --interval 500"
    ),
    Status.ERROR_INVALID_DATA: "the segment is outside the transfer the device expects",
    Status.ERROR_INVALID_STATE: "the device is not in a state that takes DFU packets",
    Status.ERROR_INVALID_LENGTH: "the device's serial buffer is shorter than this frame",
}


def _longest_prefix(table: tuple[tuple[bytes, str], ...], raw: bytes, default: str) -> str:
    hits = [(len(prefix), text) for prefix, text in table if raw.startswith(prefix)]
    return max(hits)[1] if hits else default


# --- what is sent -----------------------------------------------------------------------------


class InitPacketLike(Protocol):
    """What the transfer needs of the package's init packet (formats.meshpkg.InitPacket)."""

    @property
    def dfu_type(self) -> int: ...
    @property
    def start_addr(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def signature(self) -> bytes | None: ...
    def fwid_bytes(self) -> bytes: ...


class PackageLike(Protocol):
    """What the transfer needs of a mesh DFU package (formats.meshpkg.MeshPackage)."""

    @property
    def image(self) -> bytes: ...
    @property
    def init(self) -> InitPacketLike: ...


@dataclass(frozen=True)
class TransferPlan:
    """Everything that goes on the wire, checked once before the port is touched."""

    dfu_type: int
    start_address: int
    image: bytes
    signature: bytes
    fwid: bytes

    @classmethod
    def from_package(cls, package: PackageLike) -> TransferPlan:
        init = package.init
        plan = cls(
            dfu_type=init.dfu_type,
            start_address=init.start_addr,
            image=bytes(package.image),
            signature=bytes(init.signature or b""),
            fwid=init.fwid_bytes(),
        )
        plan._check(init.length)
        return plan

    def _check(self, declared_length: int) -> None:
        problems: list[str] = []
        if declared_length != len(self.image):
            problems.append(
                f"the init packet says {declared_length} bytes but the image has {len(self.image)}"
            )
        if len(self.image) % 4:
            problems.append(
                f"image length {len(self.image)} is not a multiple of 4 (START carries words)"
            )
        if self.signature and len(self.signature) % SEGMENT_SIZE:
            problems.append(f"signature of {len(self.signature)} bytes (expected 64)")
        if self.start_address != START_ADDRESS_UNKNOWN and self.start_address % SEGMENT_SIZE:
            # The device shortens segment 1 to reach 16-byte alignment; nrfutil shortened it
            # too but did not shift the later segments. genpkg always writes 0xFFFFFFFF.
            problems.append(
                f"start address 0x{self.start_address:08X} is not 16-byte aligned "
                "(rebuild the package without a start address)"
            )
        try:
            expected = FWID_LENGTH.get(DfuType(self.dfu_type))
        except ValueError:
            expected = None
        if expected is None:
            problems.append(f"dfu type {self.dfu_type} cannot be transferred")
        elif len(self.fwid) != expected:
            problems.append(f"a {len(self.fwid)}-byte fwid for dfu type {self.dfu_type}")
        if problems:
            raise InputError("mesh DFU package: " + "; ".join(problems))

    @property
    def image_segments(self) -> int:
        return (len(self.image) + SEGMENT_SIZE - 1) // SEGMENT_SIZE

    @property
    def segments(self) -> int:
        """M: image segments, then signature segments."""
        return segment_count(len(self.image), len(self.signature))

    def state(self, tid: int) -> bytes:
        return State(self.dfu_type, HOST_AUTHORITY, True, tid, self.fwid).encode()

    def start(self, tid: int) -> bytes:
        return Start(tid, self.start_address, len(self.image) // 4, len(self.signature)).encode()

    def data(self, tid: int, segment: int, *, response: bool = False) -> bytes:
        payload = segment_payload(self.image, self.signature, segment)
        return Data(segment, tid, payload, response=response).encode()

    def erase_wait(self) -> float:
        """nrfutil's wait after START: worst-case erase of every page of the bank, +50 %."""
        return PAGE_ERASE_MAX_S * (len(self.image) // ERASE_PAGE_SIZE) * ERASE_MARGIN


def _frame_bytes(packet: bytes) -> int:
    return 2 + len(packet)


def line_rate_bound(package: PackageLike, baud: int) -> float:
    """Seconds the bytes of a whole transfer need on the wire at ``baud`` (8N1).

    Every frame once (Echo, two STATEs, START, each segment) plus its answer, stop-and-wait so
    the two directions never overlap: the floor no pacing can beat. Fixed waits are not in it
    (see :func:`fixed_wait_seconds`).
    """
    plan = TransferPlan.from_package(package)
    total = 2 * _frame_bytes(ECHO_PAYLOAD)
    packets = [plan.state(0), plan.state(0), plan.start(0)]
    packets += [plan.data(0, k) for k in range(1, plan.segments + 1)]
    total += sum(_frame_bytes(p) + CMD_RSP_APP_BYTES for p in packets)
    return total * BITS_PER_BYTE / baud


def fixed_wait_seconds(package: PackageLike) -> float:
    """Device seconds the protocol waits whatever the pacing: STATE waits and bank erase."""
    return 2 * STATE_WAIT_S + TransferPlan.from_package(package).erase_wait()


# --- the result -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferResult:
    """What one transfer did: the numbers a report and a benchmark need."""

    segments: int  # M: image segments plus signature segments
    image_bytes: int
    frames_sent: int  # every frame written, the Echo and every resend included
    retries: int  # resends (Echo and DFU frames) after a missing or non-SUCCESS answer
    busy: int  # ERROR_BUSY answers
    data_rsps: int  # DATA_RSPs delivered
    requested_segments: tuple[int, ...]  # distinct segments the mesh asked for, sorted
    bytes_sent: int
    bytes_received: int
    host_seconds: float
    device_seconds: float
    pacing: str
    final_gap: float  # device seconds
    transaction_id: int
    device_restarted: bool  # a DEVICE_STARTED came after the last frame (the update applied)
    fwid: bytes = b""  # of the package sent
    serial_node: SerialNodeLog | None = None  # what the serial node said about its own part
    open_requests: tuple[int, ...] = ()  # segments still asked for when the host stopped
    last_request_age: float | None = None  # device seconds from the last request to the end
    lingered: float = 0.0  # device seconds the host waited after the last segment

    def serial_outcome(self, name: str) -> NodeOutcome:
        """The serial node's row, from what it said on the line."""
        log = self.serial_node if self.serial_node is not None else SerialNodeLog()
        return log.outcome(name, self.fwid, self.lingered)

    def outcomes(self, name: str) -> list[NodeOutcome]:
        """What the line alone proves: the serial node's row, and one for open requests."""
        rows = [self.serial_outcome(name)]
        if self.open_requests:
            rows.append(requests_outcome(self.open_requests, self.last_request_age))
        return rows

    def summary(self) -> str:
        requested = ""
        if self.requested_segments:
            shown = ", ".join(str(s) for s in self.requested_segments[:10])
            more = ", ..." if len(self.requested_segments) > 10 else ""
            requested = f" (segments {shown}{more})"
        return (
            f"{self.segments} segments ({self.image_bytes} bytes) in {self.host_seconds:.1f} s "
            f"host / {self.device_seconds:.1f} s device; {self.frames_sent} frames sent, "
            f"{self.retries} retries, {self.busy} busy; {self.data_rsps} DATA_RSPs served for "
            f"{len(self.requested_segments)} requested segments{requested}; "
            f"{self.bytes_sent} bytes out, {self.bytes_received} in; pacing {self.pacing} "
            f"(final gap {self.final_gap * 1000:.0f} ms); tid 0x{self.transaction_id:08X}"
        )


Progress = Callable[[int, int], None]


class _RestartedError(Exception):
    """Internal: the device sent DEVICE_STARTED in the middle of the transfer."""

    def __init__(self, mode: str) -> None:
        super().__init__(mode)
        self.mode = mode


# --- the transfer -----------------------------------------------------------------------------


class MeshDfuTransfer:
    """One package, one open link: ``run()`` performs the transfer or raises."""

    def __init__(
        self,
        package: PackageLike,
        link: MeshSerialLink,
        pacing: Pacing | None = None,
        time_scale: float = 1.0,
        progress: Progress | None = None,
        *,
        transaction_id: int | None = None,
        quiet_period: float = QUIET_PERIOD_S,
        end_wait: float = END_WAIT_S,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self._plan = TransferPlan.from_package(package)
        self._link = link
        self._pacing: Pacing = pacing if pacing is not None else Adaptive()
        self._scale = time_scale
        self._progress = progress
        self._tid = random.getrandbits(32) if transaction_id is None else transaction_id
        self._quiet = quiet_period
        self._end_wait = end_wait
        self._serial = SerialNodeLog()
        self._asked: dict[int, float] = {}  # segment -> host time of its latest request
        self._lingered = 0.0
        self._open: tuple[int, ...] = ()
        self._last_request_age: float | None = None

        self._requested: set[int] = set()
        self._queued: list[int] = []
        self._retries = 0
        self._busy = 0
        self._served = 0
        self._garbled = 0  # answers to commands the host never sent: the line garbles frames
        self._in_transfer = False  # DEVICE_STARTED now means the device lost the transfer
        self._restarted = False
        self._done = 0

    @property
    def transaction_id(self) -> int:
        return self._tid

    @property
    def plan(self) -> TransferPlan:
        return self._plan

    # -- clocks ----------------------------------------------------------------------------

    def _host(self, device_seconds: float) -> float:
        return device_seconds * self._scale

    def _device_now(self) -> float:
        return time.monotonic() / self._scale

    def _ack_wait(self) -> float:
        return max(self._host(ACK_WAIT_S), ACK_WAIT_FLOOR_S)

    # -- the sequence ----------------------------------------------------------------------

    def run(self) -> TransferResult:
        link, plan = self._link, self._plan
        started = time.monotonic()
        sent0, received0 = link.bytes_sent, link.bytes_received
        frames0 = link.frames_sent
        link.note(
            f"--- mesh DFU: {len(plan.image)} bytes, {plan.segments} segments, tid "
            f"0x{self._tid:08X}, pacing {self._pacing.name}, time scale {self._scale} ---"
        )
        try:
            self._sequence()
        except _RestartedError as exc:
            link.note(f"--- mesh DFU failed: device restarted (mode {exc.mode}) ---")
            raise ProductError(
                f"{self._who()}: the device restarted (DEVICE_STARTED mode={exc.mode}) in "
                f"the middle of the mesh DFU, after {self._done} of {plan.segments} segments; "
                f"it crashed or was reset{self._log_hint()}"
            ) from None
        except DfuhilError as exc:
            link.note(f"--- mesh DFU failed: {str(exc).splitlines()[0]} ---")
            raise
        host_seconds = time.monotonic() - started
        link.note("--- mesh DFU finished ---")
        return TransferResult(
            segments=plan.segments,
            image_bytes=len(plan.image),
            frames_sent=link.frames_sent - frames0,
            retries=self._retries,
            busy=self._busy,
            data_rsps=self._served,
            requested_segments=tuple(sorted(self._requested)),
            bytes_sent=link.bytes_sent - sent0,
            bytes_received=link.bytes_received - received0,
            host_seconds=host_seconds,
            device_seconds=host_seconds / self._scale,
            pacing=self._pacing.name,
            final_gap=self._pacing.gap(),
            transaction_id=self._tid,
            device_restarted=self._restarted,
            fwid=plan.fwid,
            serial_node=self._serial,
            open_requests=self._open,
            last_request_age=self._last_request_age,
            lingered=self._lingered,
        )

    def _sequence(self) -> None:
        link, plan = self._link, self._plan
        self._echo()
        link.note("--- setup: STATE, STATE, START ---")
        self._deliver(plan.state(self._tid))
        self._in_transfer = True
        self._pause(STATE_WAIT_S)
        self._deliver(plan.state(self._tid))
        self._pause(STATE_WAIT_S)
        self._deliver(plan.start(self._tid))
        link.note(f"--- waiting {plan.erase_wait():.2f} s (device) for the bank erase ---")
        self._pause(plan.erase_wait())
        self._report(0)
        for segment in range(1, plan.segments + 1):
            self._serve_requests()
            self._deliver(plan.data(self._tid, segment))
            self._report(segment)
            self._pause(self._pacing.gap())
        self._in_transfer = False
        link.note(
            f"--- all segments sent; serving requests until the serial node reports its end "
            f"(at most {self._end_wait:.0f} s) and none came for {self._quiet:.0f} s (device) ---"
        )
        self._linger()

    def _who(self) -> str:
        board = self._link.board
        return f"board {board}" if board else f"port {self._link.url}"

    def _report(self, done: int) -> None:
        self._done = done
        if self._progress is not None:
            self._progress(done, self._plan.segments)

    def _echo(self) -> None:
        link = self._link
        for attempt in range(MAX_TRIES):
            if attempt:
                self._retries += 1
            link.send(Opcode.ECHO, ECHO_PAYLOAD)
            deadline = time.monotonic() + self._ack_wait()
            if self._await(deadline, lambda f: f.opcode == Opcode.ECHO_RSP) is not None:
                return
        waited = MAX_TRIES * self._ack_wait()
        raise InfrastructureError(
            f"{link.url} does not answer the mesh serial Echo ({MAX_TRIES} tries in "
            f"{waited:.1f} s): not a mesh device, wrong baud rate or flow control?",
            f"check that the board runs mesh serial firmware (the serial bootloader or an "
            f"application with mesh serial) and that {link.baud} baud and the flow control "
            f"setting match it (boards.yaml serial.baud / serial.rtscts, or -b / "
            f"--flow-control){self._log_hint()}",
            board=link.board,
        )

    def _deliver(self, packet: bytes) -> None:
        """Send one DFU packet until the device answers SUCCESS (stop-and-wait)."""
        packet_type = int.from_bytes(packet[:2], "little")

        def is_ack(item: Frame) -> bool:
            if item.opcode != Opcode.CMD_RSP or len(item.payload) < 2:
                return False
            rsp = CommandResponse.decode(item.payload)
            return rsp.opcode == Opcode.DFU_DATA and rsp.packet_type in (None, packet_type)

        last_status: int | None = None
        for attempt in range(MAX_TRIES):
            if attempt:
                self._retries += 1
            self._link.send(Opcode.DFU_DATA, packet)
            deadline = time.monotonic() + self._ack_wait()
            answer = self._await(deadline, is_ack)
            if answer is not None:
                response = CommandResponse.decode(answer.payload)
                self._serial.on_ack(response)
                status = response.status
                if status == Status.SUCCESS:
                    self._garbled = 0  # counted since the last frame that got through
                    if attempt:
                        # A late ack of an earlier try must not pass for the next frame's.
                        self._await(time.monotonic() + self._ack_wait(), lambda f: False)
                    self._pacing.on_ack(self._device_now())
                    return
                last_status = status
                if status != Status.ERROR_BUSY and self._garbled:
                    last_status = None  # an answer to a frame the line garbled, not to ours
                if status == Status.ERROR_BUSY:
                    self._busy += 1
                    self._pacing.on_busy(self._device_now())
                self._await(deadline, lambda f: False)  # resend every ack period, as nrfutil
        if last_status is None:
            line = self._line_fault(is_ack)
            if line is not None:
                raise line
        elif last_status != Status.ERROR_BUSY and not self._echoes_intact():
            raise self._garbling_line(
                f"the device refused it with {status_name(last_status)} and then no Echo came "
                "back intact: its answers were to frames the line garbled"
            )
        raise self._undelivered(packet, last_status)

    def _echoes_intact(self) -> bool:
        """Whether an Echo still makes the round trip unchanged (up to MAX_TRIES tries)."""
        for _attempt in range(MAX_TRIES):
            self._link.send(Opcode.ECHO, ECHO_PAYLOAD)
            deadline = time.monotonic() + self._ack_wait()
            answer = self._await(deadline, lambda f: f.opcode == Opcode.ECHO_RSP)
            if answer is not None and answer.payload == ECHO_PAYLOAD:
                return True
        return False

    def _line_fault(self, is_ack: Callable[[Frame], bool]) -> InfrastructureError | None:
        """After the tries: was it the line rather than the device? Listens a while longer
        (``LATE_ACK_WAIT_S``, sending nothing) for a late ack. A device that answers commands
        the host never sent, or acks only after the tries, is alive and heard garbled or
        delayed frames."""
        waited = max(MAX_TRIES * self._ack_wait(), self._host(LATE_ACK_WAIT_S))
        late = self._await(time.monotonic() + waited, is_ack)
        if late is None and not self._garbled:
            return None
        return self._garbling_line(
            f"the device acknowledged only after {waited:.1f} s (the line stalls)"
            if late is not None
            else f"the device answered {self._garbled} command(s) the host never sent "
            "(the line garbles frames: bytes lost, added or flipped)"
        )

    def _garbling_line(self, seen: str) -> InfrastructureError:
        return InfrastructureError(
            f"{self._link.url} does not carry the mesh serial DFU: no "
            f"acknowledgement in {MAX_TRIES} tries after {self._done} of "
            f"{self._plan.segments} segments, and {seen}" + self._log_hint(),
            "check the serial cable, USB hub and port (a noisy or stalling line); the board "
            "itself answered, so run the DFU again on a sound line",
            board=self._link.board,
        )

    def _undelivered(self, packet: bytes, status: int | None) -> Exception:
        raw = bytes([Opcode.DFU_DATA]) + packet
        where = f"{MAX_TRIES} tries over {MAX_TRIES * self._ack_wait():.1f} s"
        progress = f", after {self._done} of {self._plan.segments} segments"
        if status is not None:
            name = _longest_prefix(_PACKET_NAMES, raw, "DFU")
            hint = _STATUS_HINTS.get(status)
            return ProductError(
                f"{self._who()}: Device returned status code {status_name(status)} "
                f"(0x{status:02X}) on a {name} packet ({where}{progress})"
                + (f": {hint}" if hint else "")
                + self._log_hint()
            )
        reason = _longest_prefix(_FAIL_REASONS, raw, "Lost connection")
        return ProductError(
            f"{self._who()}: {reason}: no acknowledgement ({where}{progress}); the device "
            f"answered the Echo, then went silent: it crashed, hangs or was reset"
            + self._log_hint()
        )

    def _serve_requests(self) -> None:
        """Answer the DATA_REQs queued now, oldest first, each paced like a frame.

        Requests that arrive meanwhile wait for the next call: a node that asks again after
        every frame cannot hold the host here, and the caller's loop keeps its own deadline.
        """
        for _ in range(len(self._queued)):
            if not self._queued:
                break
            segment = self._queued.pop(0)
            self._deliver(self._plan.data(self._tid, segment, response=True))
            self._served += 1
            self._pause(self._pacing.gap())

    def _linger(self) -> None:
        """Serve requests until the serial node is done and the mesh quiet (no END packet).

        Stops early once the serial node reported its end or restarted: it installs now, or
        refused, and forwards nothing more. Otherwise waits for its END as long as it is a
        target, and for a quiet period after the latest request; gives up at the app's 600 s.
        """
        started = time.monotonic()
        limit = started + self._host(LINGER_LIMIT_S)
        end_by = started + self._host(self._end_wait)
        while not self._serial.finished:
            now = time.monotonic()
            latest = max(self._asked.values(), default=started)
            quiet_until = max(latest, started) + self._host(self._quiet)
            wait_end = end_by if self._serial.expects_end else now
            deadline = min(limit, max(quiet_until, wait_end))
            if now >= deadline:
                break
            if self._queued:
                self._serve_requests()
                continue
            item = self._await(deadline, lambda f: True)
            if item is not None:
                self._observe(item)
        ended = time.monotonic()
        self._lingered = (ended - started) / self._scale
        recent = ended - self._host(self._quiet)
        self._open = tuple(sorted(s for s, at in self._asked.items() if at > recent))
        if self._asked:
            self._last_request_age = (ended - max(self._asked.values())) / self._scale
        if time.monotonic() >= limit and self._open:
            self._link.note(
                f"--- stopped serving after {LINGER_LIMIT_S:.0f} s (device): segments "
                f"{list(self._open)} still requested ---"
            )

    # -- receiving -------------------------------------------------------------------------

    def _pause(self, device_seconds: float) -> None:
        """Wait, taking in DATA_REQs; late acks that arrive meanwhile are only logged."""
        self._await(time.monotonic() + self._host(device_seconds), lambda f: False)

    def _await(self, deadline: float, is_answer: Callable[[Frame], bool]) -> Frame | None:
        """Take frames until one ``is_answer`` (returned) or the deadline (None).

        Everything else is observed on the way: requests are queued, restarts noticed.
        Frames already queued are always taken, even past the deadline.
        """
        while True:
            item = self._link.next_frame(max(0.0, deadline - time.monotonic()))
            if item is None:
                return None
            if is_answer(item):
                return item
            self._observe(item)

    def _observe(self, item: Frame) -> None:
        self._serial.on_frame(item, after_last=self._done == self._plan.segments)
        if item.opcode == Opcode.DFU_DATA:
            self._on_packet(item.payload)
        elif item.opcode == Opcode.DEVICE_STARTED and item.payload:
            try:
                mode = OperatingMode(item.payload[0]).name
            except ValueError:
                mode = str(item.payload[0])
            if self._in_transfer:
                raise _RestartedError(mode)
            if self._done == self._plan.segments:
                self._restarted = True
        elif item.opcode == Opcode.CMD_RSP:
            answered = item.payload[0] if item.payload else None
            if answered not in _SENT_OPCODES:
                self._garbled += 1
                self._link.note(
                    f"--- an answer to opcode {answered!r}, which the host never sends: "
                    "a garbled frame ---"
                )
            else:
                self._link.note("--- (an acknowledgement nobody waits for: ignored) ---")

    def _on_packet(self, raw: bytes) -> None:
        try:
            packet = decode_packet(raw)
        except PacketError:
            return  # beacons and relayed traffic the host has no use for
        if not isinstance(packet, DataRequest) or packet.transaction_id != self._tid:
            return
        segment = packet.segment
        if not 1 <= segment <= self._plan.segments:
            self._link.note(
                f"--- DATA_REQ for segment {segment}: not in 1..{self._plan.segments} ---"
            )
            return
        self._asked[segment] = time.monotonic()
        if segment not in self._requested:
            self._requested.add(segment)
            self._pacing.on_request(self._device_now())
        if segment not in self._queued:
            self._queued.append(segment)

    def _log_hint(self) -> str:
        path = self._link.log_path
        return f" (frame log: {path})" if path is not None else ""
