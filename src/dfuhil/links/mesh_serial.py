"""The mesh serial link: one board's UART speaking ``[length][opcode][payload]`` frames.

A mesh DFU is a long conversation (thousands of frames, acks, missed-segment requests), and when
it fails at segment 4711 the only evidence is what crossed the wire. So every frame in either
direction goes to a per-board frame log as it is sent or reassembled, with its bytes and its
decoded meaning::

    [2024-05-01 02:13:07.412] > 1A 78 FC FF 01 00 ...  DATA seg=1 tid=0x1234ABCD len=16
    [2024-05-01 02:13:07.419] < 03 84 78 00  CMD_RSP opcode=0x78 status=SUCCESS

A background reader turns bytes into frames (``FrameReader``) the moment they arrive and queues
them, so a DATA_REQ that shows up while the host is waiting for an ack is never lost; the
transfer takes frames off the queue with ``next_frame()`` or ``wait_for()``. Port problems are
the rig's, not the product's: they surface as :class:`InfrastructureError` with a remedy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import serial

from dfuhil.errors import InfrastructureError
from dfuhil.formats.meshdfu import Frame, FrameReader, describe_frame, frame
from dfuhil.links.serial_port import PORT_ERRORS as _PORT_ERRORS
from dfuhil.links.serial_port import open_failure, open_serial, port_options, timestamp

__all__ = ["MeshSerialLink"]

# nrfutil drains stale input by reading until the line is quiet for 0.1 s (its longest gap
# between two bytes of one frame); a device that never goes quiet is cut off after the limit.
DRAIN_GAP_S = 0.1
_DRAIN_LIMIT_S = 2.0
# Serial read timeout of the reader thread: bounds how long close() waits for it.
_READ_TIMEOUT_S = 0.05
# A write that cannot finish in this time means the device holds CTS (flow control) forever.
_WRITE_TIMEOUT_S = 5.0


def _hex(data: bytes) -> str:
    return data.hex(" ").upper()


class MeshSerialLink:
    """An open mesh serial port: frames out, a queue of frames in, and the frame log."""

    def __init__(
        self,
        url: str,
        *,
        baud: int = 115200,
        rtscts: bool = False,
        log_path: Path | None = None,
        name: str = "",
        drain_gap: float = DRAIN_GAP_S,
    ) -> None:
        self._url = url
        self._baud = baud
        self._rtscts = rtscts
        self._log_path = Path(log_path) if log_path is not None else None
        self._name = name
        self._drain_gap = drain_gap

        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._port: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: deque[Frame] = deque()
        self._reader = FrameReader()
        self._lost: str | None = None
        self._log: TextIO | None = None

        self.bytes_sent = 0
        self.bytes_received = 0
        self.frames_sent = 0
        self.frames_received = 0

    # -- properties ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @property
    def baud(self) -> int:
        return self._baud

    @property
    def name(self) -> str:
        """The board name, or the port when none was given."""
        return self._name or self._url

    @property
    def board(self) -> str | None:
        """The board name for error messages; None when the link was opened by port only."""
        return self._name or None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def is_open(self) -> bool:
        with self._cond:
            return self._port is not None and self._lost is None

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> MeshSerialLink:
        """Open the port, drain what an earlier run left in it, start the reader."""
        if self._port is not None:
            return self
        self._open_log()
        self.note(f"--- opening {self._url} at {self._baud} baud, rtscts={self._rtscts} ---")
        try:
            port = open_serial(self._url, self._port_options())
        except (ValueError, serial.SerialException, OSError) as exc:
            message, remedy = open_failure(self._url, exc)
            self.note(f"--- could not open: {message} ---")
            self._close_log()
            raise InfrastructureError(message, remedy, board=self.board) from None
        try:
            self._drain(port)
            port.timeout = _READ_TIMEOUT_S
        except _PORT_ERRORS as exc:
            port.close()
            self._close_log()
            raise InfrastructureError(
                f"serial port {self._url} failed right after opening ({exc})",
                "check the USB cable and `dmesg | tail`; replug the board",
                board=self.board,
            ) from None
        stop = threading.Event()
        thread = threading.Thread(
            target=self._read_loop, args=(port, stop), name=f"mesh-serial-{self.name}", daemon=True
        )
        with self._cond:
            self._port, self._stop, self._thread = port, stop, thread
            self._lost = None
            self._queue.clear()
            self._reader = FrameReader()
        thread.start()
        return self

    def close(self) -> None:
        """Stop the reader, release the port, finish the log. Safe to call twice."""
        with self._cond:
            port, thread, stop = self._port, self._thread, self._stop
            self._port = None
            self._thread = None
        if port is not None:
            stop.set()
            cancel = getattr(port, "cancel_read", None)
            if cancel is not None:
                # Wakes the reader now rather than after its read timeout.
                with suppress(serial.SerialException, OSError, ValueError):
                    cancel()
            if thread is not None:
                thread.join(timeout=5.0)
            with suppress(serial.SerialException, OSError):
                port.close()  # a vanished port may fail to close; nothing useful to report
            self.note(
                f"--- closed: {self.frames_sent} frames ({self.bytes_sent} bytes) sent, "
                f"{self.frames_received} frames ({self.bytes_received} bytes) received ---"
            )
        with self._cond:
            self._cond.notify_all()
        self._close_log()

    def __enter__(self) -> MeshSerialLink:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _port_options(self) -> dict[str, Any]:
        return port_options(
            self._url, self._baud, self._rtscts, self._drain_gap, write_timeout=_WRITE_TIMEOUT_S
        )

    def _drain(self, port: Any) -> None:
        """Read until the line is quiet for ``drain_gap``: stale frames must not ack ours."""
        stale = bytearray()
        deadline = time.monotonic() + _DRAIN_LIMIT_S
        while time.monotonic() < deadline:
            chunk: bytes = port.read(max(1, port.in_waiting))
            if not chunk:
                break
            stale += chunk
        if stale:
            self.note(f"--- drained {len(stale)} stale bytes: {_hex(bytes(stale[:64]))} ---")

    # -- the reader thread -----------------------------------------------------------------

    def _read_loop(self, port: Any, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    data: bytes = port.read(1)
                    if data and port.in_waiting:
                        data += port.read(port.in_waiting)
                except _PORT_ERRORS as exc:
                    if not stop.is_set():
                        self._mark_lost(f"{type(exc).__name__}: {exc}")
                    return
                if data:
                    self._feed(data)
        except Exception as exc:  # a bug here must surface, never turn into a silent timeout
            self._mark_lost(f"reader crashed: {type(exc).__name__}: {exc}")

    def _feed(self, data: bytes) -> None:
        frames = self._reader.feed(data)
        ts = timestamp()
        with self._cond:
            self.bytes_received += len(data)
            for item in frames:
                self.frames_received += 1
                self._log_line(ts, f"< {_hex(item.encode())}  {describe_frame(item)}")
                self._queue.append(item)
            self._cond.notify_all()

    def _mark_lost(self, detail: str) -> None:
        with self._cond:
            self._lost = detail
            self._log_line(timestamp(), f"--- port lost: {detail} ---")
            self._cond.notify_all()

    def _vanished(self) -> InfrastructureError:
        return InfrastructureError(
            f"serial port {self._url} vanished ({self._lost})",
            "check the USB cable and hub power, and that nothing reset or re-enumerated the "
            "board's USB port; for a virtual board, is `dfuhil sim serve` still running?"
            + self._log_hint(),
            board=self.board,
        )

    def _log_hint(self) -> str:
        return f" (frame log: {self._log_path})" if self._log_path is not None else ""

    # -- sending ---------------------------------------------------------------------------

    def send(self, opcode: int, payload: bytes = b"") -> Frame:
        """Write one frame; the log shows it before it goes out."""
        item = Frame(opcode, payload)
        raw = frame(opcode, payload)
        with self._cond:
            port = self._port
            if port is None:
                raise RuntimeError(f"mesh serial link {self.name} is not open; cannot send")
            if self._lost is not None:
                raise self._vanished()
            self._log_line(timestamp(), f"> {_hex(raw)}  {describe_frame(item)}")
        try:
            with self._write_lock:
                port.write(raw)
                port.flush()
        except serial.SerialTimeoutException:
            self._mark_lost(f"write of {len(raw)} bytes timed out after {_WRITE_TIMEOUT_S} s")
            raise InfrastructureError(
                f"the device on {self._url} does not take data: a {len(raw)}-byte write "
                f"did not finish in {_WRITE_TIMEOUT_S:.0f} s",
                "with flow control on, the device holds CTS: check the RTS/CTS wiring and that "
                "flow control matches the firmware (boards.yaml serial.rtscts, --flow-control)",
                board=self.board,
            ) from None
        except _PORT_ERRORS as exc:
            self._mark_lost(f"write failed: {type(exc).__name__}: {exc}")
            raise self._vanished() from None
        with self._cond:
            self.bytes_sent += len(raw)
            self.frames_sent += 1
        return item

    # -- receiving -------------------------------------------------------------------------

    def next_frame(self, timeout: float) -> Frame | None:
        """The oldest queued frame, waiting up to ``timeout`` seconds for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._queue:
                    return self._queue.popleft()
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float) -> Frame | None:
        """The first queued frame ``predicate`` accepts (taken off the queue), or None.

        Frames it does not accept stay queued, in order, for the next reader.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self._queue:
                    if predicate(item):
                        self._queue.remove(item)
                        return item
                self._check_alive()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def clear(self) -> int:
        """Forget queued frames (e.g. before a reset whose DEVICE_STARTED we want); how many."""
        with self._cond:
            dropped = len(self._queue)
            self._queue.clear()
            return dropped

    def _check_alive(self) -> None:
        """Raise when no more frames can arrive (call with the lock held)."""
        if self._lost is not None:
            raise self._vanished()
        if self._port is None:
            raise RuntimeError(f"mesh serial link {self.name} is closed")

    # -- frame log -------------------------------------------------------------------------

    def note(self, text: str) -> None:
        """A marker line in the frame log (phases of a transfer, decisions, errors)."""
        with self._cond:
            self._log_line(timestamp(), text)

    def _open_log(self) -> None:
        if self._log_path is None or self._log is not None:
            return
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append: several transfers of one session go to the board's one log.
        self._log = self._log_path.open("a", encoding="utf-8", newline="\n")

    def _close_log(self) -> None:
        with self._cond:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _log_line(self, ts: str, line: str) -> None:
        if self._log is not None:
            self._log.write(f"[{ts}] {line}\n")
            self._log.flush()
