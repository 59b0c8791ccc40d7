"""smpclient transports over dfuhil's own links: the board console (serial) and UDP.

One program owns a board's UART: the :class:`~dfuhil.links.console.Console`. Its reader splits
SMP frames out of the text, so MCUboot's and the application's boot lines keep landing in the
per-board log and in ``expect()`` while an SMP client talks over the same port.
:class:`ConsoleTransport` is smpclient's ``SMPTransport`` on top of that console.

Both transports match responses to requests by SMP sequence number instead of taking "the next
packet": several requests may be in flight at once (a pipelined upload keeps up to the server's
``buf_count`` buffers busy, the speed-up smpclient's own ``max_unencoded_size`` comment suggests),
and a late answer to a request that already timed out can never be mistaken for the answer to
the next one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import cbor2
from smp import header as smphdr
from smpclient.exceptions import SMPValidationException
from smpclient.transport import SMPTransport, SMPTransportDisconnected
from smpclient.transport.udp import SMPUDPTransport

from dfuhil.formats.smp import FRAME_OVERHEAD
from dfuhil.formats.smp_uart import SerialBudget, SmpUart, serial_budget
from dfuhil.links.console import Console

__all__ = [
    "FALLBACK_MESSAGE_SIZE",
    "ConsoleTransport",
    "UdpTransport",
    "checked_answer",
    "split_address",
]

log = logging.getLogger(__name__)

# smpclient's serial Auto strategy before (or without) the server's MCUmgr params: two 128-byte
# lines of encoded budget, i.e. 169 unencoded bytes per message. Safe for every server.
FALLBACK_MESSAGE_SIZE = 169
# The serial frame's u16 length counts the packet and its CRC: the largest buffer worth using.
MAX_SERIAL_BUFFER = 0xFFFF - 2 + FRAME_OVERHEAD
# How often a request waiting for its answer looks whether the port is still there.
_LOST_POLL_S = 0.1


def packet_seq(packet: bytes) -> int:
    """The SMP header's sequence number (-1 for a packet shorter than a header): what matches
    an answer to its request on every transport."""
    return packet[6] if len(packet) >= smphdr.Header.SIZE else -1


# Keyword names smpclient's message models take from the header, not from the CBOR map.
_RESERVED_KEYS = frozenset({"header", "smp_data"})


def checked_answer(request: bytes, answer: bytes) -> bytes:
    """``answer`` if smpclient can decode it as the answer to ``request``.

    smpclient checks the fields of an answer (pydantic) but lets a header it cannot read, CBOR
    that does not decode, or a payload that is not a map escape as ValueError or TypeError, and
    a broken or hostile device must never crash the host: those become the
    SMPValidationException the link reports as the server's fault, saying what is wrong.
    """
    problem = _answer_problem(request, answer)
    if problem is not None:
        raise SMPValidationException(problem, f"answer: {answer[:48].hex(' ')}")
    return answer


def _answer_problem(request: bytes, answer: bytes) -> str | None:
    if len(answer) < smphdr.Header.SIZE:
        return f"{len(answer)} bytes, shorter than the 8-byte SMP header"
    try:
        header = smphdr.Header.loads(answer[: smphdr.Header.SIZE])
    except (ValueError, TypeError, AssertionError) as exc:
        return f"its header cannot be read ({exc})"
    asked = smphdr.Header.loads(request[: smphdr.Header.SIZE])
    if header.group_id != asked.group_id:
        return f"it answers group {header.group_id}, the request was for group {asked.group_id}"
    if header.op != asked.op + 1:
        return f"op {int(header.op)} does not answer a request with op {int(asked.op)}"
    try:
        body = cbor2.loads(answer[smphdr.Header.SIZE :])
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        return f"its CBOR payload cannot be decoded ({exc})"
    if not isinstance(body, dict) or not all(isinstance(key, str) for key in body):
        return f"its CBOR payload is {type(body).__name__}, not a map of names"
    reserved = sorted(_RESERVED_KEYS & body.keys())
    if reserved:
        return f"its CBOR map has the key {reserved[0]!r}, which no SMP answer has"
    return None


class SeqDemux:
    """Futures keyed by SMP sequence number; unclaimed packets are counted and dropped."""

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self.stale = 0

    def expect(self, seq: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        old = self._waiting.get(seq)
        if old is not None and not old.done():
            old.cancel()
        self._waiting[seq] = future
        return future

    def forget(self, seq: int, future: asyncio.Future[bytes]) -> None:
        if self._waiting.get(seq) is future:
            del self._waiting[seq]

    def deliver(self, packet: bytes) -> None:
        future = self._waiting.pop(packet_seq(packet), None)
        if future is None or future.done():
            self.stale += 1
            log.debug("dropping an SMP packet nobody waits for (seq %d)", packet_seq(packet))
            return
        future.set_result(packet)

    def fail_all(self, exc: BaseException) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)
        self._waiting.clear()


class ConsoleTransport(SMPTransport):
    """SMP over an open :class:`Console` ("SMP over console" framing, 127-byte frames).

    ``buf_size`` sets the server's decoded buffer by hand (smpclient's ``BufferSize``) for
    servers that do not answer MCUmgr params; otherwise the params answer sets it. ``uart`` is
    the device's SMP UART as built (boards.yaml ``mcuboot.smp_uart``; default Zephyr's stock
    one, reached in bursts): messages and the window are sized so that every line in flight
    has a line buffer (:func:`~dfuhil.formats.smp_uart.serial_budget`).
    """

    def __init__(
        self, console: Console, *, buf_size: int | None = None, uart: SmpUart | None = None
    ) -> None:
        self.console = console
        self.uart = uart if uart is not None else SmpUart()
        self._smp_server_transport_buffer_size = buf_size
        self._manual_size = buf_size
        self._buf_count = 1
        self._demux = SeqDemux()
        self._loop: asyncio.AbstractEventLoop | None = None
        # One writer thread keeps the packets in order and the event loop free while a large
        # request drains into a slow UART.
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def stale_packets(self) -> int:
        return self._demux.stale

    async def connect(self, address: str, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.console.is_open:
            await self._loop.run_in_executor(None, self.console.open)
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"smp-tx-{self.console.name}"
        )
        self.console.attach_packets(self._on_packet)

    async def disconnect(self) -> None:
        self.console.attach_packets(None)
        self._demux.fail_all(SMPTransportDisconnected(f"SMP link to {self.console.name} closed"))
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _on_packet(self, packet: bytes) -> None:
        """Called on the console's reader thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._demux.deliver, packet)

    async def send(self, data: bytes) -> None:
        if len(data) > self.max_unencoded_size:
            raise ValueError(
                f"SMP message of {len(data)} bytes exceeds the server's limit of "
                f"{self.max_unencoded_size}"
            )
        if self._writer is None:
            raise SMPTransportDisconnected(f"SMP link to {self.console.name} is not connected")
        loop = asyncio.get_running_loop()
        line_length = self.budget.line_length
        await loop.run_in_executor(self._writer, self.console.send_packet, data, line_length)

    async def receive(self) -> bytes:
        """Not offered: several requests are in flight, so an unmatched read would steal
        another request's answer. SMPClient only calls send_and_receive()."""
        raise TypeError("responses are matched by sequence number: use send_and_receive()")

    async def send_and_receive(self, data: bytes) -> bytes:
        seq = packet_seq(data)
        future = self._demux.expect(seq)
        try:
            await self.send(data)
            # A port that vanished (USB re-enumeration) answers nothing: say so at once
            # instead of waiting out the request's timeout.
            while not future.done():
                await asyncio.wait({future}, timeout=_LOST_POLL_S)
                lost = self.console.lost
                if lost is not None and not future.done():
                    raise SMPTransportDisconnected(f"serial port {self.console.url}: {lost}")
            return checked_answer(data, future.result())
        finally:
            self._demux.forget(seq, future)

    def initialize(self, smp_server_transport_buffer_size: int) -> None:
        if self._manual_size is None:
            # A server may claim any size; a serial frame's u16 length bounds what can travel.
            self._smp_server_transport_buffer_size = min(
                smp_server_transport_buffer_size, MAX_SERIAL_BUFFER
            )

    @property
    def manual_size(self) -> int | None:
        """The buffer size given by hand, which MCUmgr params do not override."""
        return self._manual_size

    def set_buf_count(self, buf_count: int) -> None:
        """The server's netbuf count (MCUmgr params): how many requests it can queue."""
        self._buf_count = max(1, buf_count)

    @property
    def budget(self) -> SerialBudget:
        """Message size, window and line length that fit the server's buffers."""
        size = self._smp_server_transport_buffer_size
        if size is None:  # no params: smpclient's safe size, one request at a time
            return serial_budget(self.uart, FALLBACK_MESSAGE_SIZE + FRAME_OVERHEAD, 1)
        return serial_budget(self.uart, size, self._buf_count)

    @property
    def mtu(self) -> int:
        return self._smp_server_transport_buffer_size or 256

    @property
    def max_unencoded_size(self) -> int:
        return self.budget.message_size


def split_address(address: str, default_port: int = 1337) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); the port defaults to MCUmgr's 1337."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        return address.strip("[]"), default_port
    if not port.isdigit():
        raise ValueError(f"bad UDP address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class UdpTransport(SMPUDPTransport):
    """smpclient's UDP transport addressed as ``host:port`` and matched by sequence.

    The message limit is the smaller of the datagram payload and the server's buffer, so a
    server with a buffer smaller than a datagram is never overrun.
    """

    def __init__(self, mtu: int = 1500) -> None:
        super().__init__(mtu)
        self.address = ""

    async def connect(self, address: str, timeout_s: float, port: int = 1337) -> None:
        host, port = split_address(address, port)
        self.address = f"{host}:{port}"
        await super().connect(host, timeout_s, port)

    async def send_and_receive(self, data: bytes) -> bytes:
        await self.send(data)
        seq = packet_seq(data)
        while True:
            packet = bytes(await self.receive())
            if packet_seq(packet) == seq:
                return checked_answer(data, packet)
            stale = packet_seq(packet)
            log.debug("dropping a stale SMP datagram (seq %d, waiting for %d)", stale, seq)

    @property
    def max_unencoded_size(self) -> int:
        datagram = super().max_unencoded_size
        size = self._smp_server_transport_buffer_size
        return datagram if size is None else min(datagram, size)
