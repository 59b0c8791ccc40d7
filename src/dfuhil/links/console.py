"""The per-board serial console: what the device printed, kept, searchable and logged.

A test opens the console *before* it resets the board, so a background thread is already
collecting when the first boot line arrives; ``expect()`` then searches that collected text
from a cursor, the way pytest-embedded's ``dut.expect()`` does. Every line also goes to a
timestamped log file, because the log is what a QA engineer reads when a nightly run fails.

A board on another lab host has its console over RFC 2217 (``where`` names its lab host and
place): a server that drops mid-test is an InfrastructureError naming host, place and port.
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TextIO, TypeAlias

import serial

from dfuhil.errors import InfrastructureError
from dfuhil.formats.meshdfu import FrameTextDecoder
from dfuhil.formats.smp import SerialFrameDecoder, SmpPacket, encode_frames
from dfuhil.links.serial_port import (
    PORT_ERRORS,
    dropped_remedy,
    is_network,
    open_failure,
    open_serial,
    port_options,
    timestamp,
)
from dfuhil.links.smp_log import describe_packet

__all__ = ["Console", "ExpectTimeout", "UnexpectedOutput", "follow"]

# How often a waiting open() retries while a USB CDC port re-enumerates after a reset.
_OPEN_RETRY_S = 0.1
# Serial read timeout: bounds how long close() waits for the reader thread.
_READ_TIMEOUT_S = 0.05
_TAIL_LINES = 40

Pattern: TypeAlias = str | re.Pattern[str]
# Receives each SMP packet (header + CBOR) that arrived between the console's text lines.
PacketSink: TypeAlias = Callable[[bytes], None]


class _Decoder(Protocol):
    def decode(self, data: bytes, final: bool = False) -> str: ...
    def reset(self) -> None: ...


def _decoder_for(protocol: str) -> _Decoder:
    """UTF-8 text, or one line per frame for firmware that speaks a binary protocol."""
    if protocol == "mesh-serial":
        return FrameTextDecoder()
    if protocol != "text":
        raise ValueError(f"unknown console protocol {protocol!r} (text or mesh-serial)")
    decoder: _Decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder


class ExpectTimeout(AssertionError):
    """Product failure: the device did not print what the test waited for in time."""


class UnexpectedOutput(AssertionError):
    """Product failure: the device printed something the test said must not appear."""


def _compile(pattern: Pattern) -> re.Pattern[str]:
    """Console patterns are line oriented: ``^`` and ``$`` match at every line."""
    if isinstance(pattern, re.Pattern):
        return re.compile(pattern.pattern, pattern.flags | re.MULTILINE)
    return re.compile(pattern, re.MULTILINE)


def _line_around(text: str, start: int, end: int) -> str:
    """The whole line(s) containing ``text[start:end]``, for an error message."""
    first = text.rfind("\n", 0, start) + 1
    last = text.find("\n", max(end - 1, start))
    return text[first : last if last >= 0 else len(text)]


class Console:
    """One board's serial console: a background reader, an expect cursor and a log file."""

    def __init__(
        self,
        url: str,
        *,
        baud: int = 115200,
        rtscts: bool = False,
        log_path: Path | None = None,
        name: str = "",
        open_timeout: float = 0.0,
        protocol: str = "text",
        where: str = "",
    ) -> None:
        self._url = url
        self._where = where  # "lab host H, place P" for a board on another lab host
        self._baud = baud
        self._rtscts = rtscts
        self._log_path = Path(log_path) if log_path is not None else None
        self._name = name
        self._open_timeout = open_timeout

        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._port: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = False

        self._text = ""
        self._cursor = 0
        self._received = 0
        self._decoder: _Decoder = _decoder_for(protocol)
        # A text console also carries SMP ("SMP over console"): frames are split out of the
        # text, logged as one summary line each and handed to the attached SMP client.
        self._frames = SerialFrameDecoder() if protocol == "text" else None
        self._packet_sink: PacketSink | None = None
        self._pending_cr = False
        self._lost: str | None = None
        # Asked when an expect() times out: why the board could not have printed (the rig's
        # fault, e.g. a halted core), or None. The pytest layer sets it from the board's probe.
        self.rig_check: Callable[[], str | None] | None = None

        self._log: TextIO | None = None
        self._log_partial = ""
        self._log_partial_ts = ""

    # -- properties ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def name(self) -> str:
        """The board name, or the port when the console was not given one."""
        return self._name or self._url

    @property
    def url(self) -> str:
        return self._url

    @property
    def baud(self) -> int:
        return self._baud

    @property
    def is_open(self) -> bool:
        """True while the port is held and alive (False inside ``released()``)."""
        with self._cond:
            return self._port is not None and self._lost is None

    @property
    def lost(self) -> str | None:
        """Why the open port was lost (it vanished, a read failed), or None while it works."""
        with self._cond:
            return self._lost

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port and start collecting at once, so early boot lines are kept."""
        with self._cond:
            if self._port is not None and self._lost is None:
                return
        self._detach()  # a port that vanished is reopened from scratch
        with self._cond:
            self._close_log()
            self._text = ""
            self._cursor = 0
            self._received = 0
            self._started = True
            self._open_log()
            self._log_marker(f"--- opened {self._url} at {self._baud} baud ---")
        try:
            self._attach(self._open_timeout)
        except InfrastructureError as exc:
            with self._cond:
                self._log_marker(f"--- could not open: {str(exc).splitlines()[0]} ---")
                self._close_log()
            raise

    def close(self) -> None:
        """Stop the reader, release the port, finish the log. Safe to call twice."""
        self._detach()
        with self._cond:
            self._flush_decoder()
            if self._log is not None:
                self._flush_partial()
                self._log_marker("--- closed ---")
            self._close_log()

    def __enter__(self) -> Console:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def released(self, reopen_timeout: float | None = None) -> Iterator[None]:
        """Lend the port to another tool (nrfutil DFU, an SMP client), then take it back.

        The reopen retries for ``reopen_timeout`` (default: ``open_timeout``) because a
        DFU usually resets the board and its USB CDC port re-enumerates.
        """
        with self._cond:
            if self._port is None:
                raise RuntimeError(f"console {self.name} is not open; nothing to release")
        self._detach()
        with self._cond:
            self._flush_decoder()
            self._flush_partial()
            self._log_marker("--- port released to another tool ---")
        timeout = self._open_timeout if reopen_timeout is None else reopen_timeout
        try:
            yield
        except BaseException as exc:
            try:
                self._reclaim(timeout)
            except InfrastructureError as reopen_error:
                exc.add_note(str(reopen_error))
            raise
        self._reclaim(timeout)

    def _reclaim(self, timeout: float) -> None:
        try:
            self._attach(timeout)
        except InfrastructureError as exc:
            with self._cond:
                self._log_marker(f"--- port could not be reclaimed: {str(exc).splitlines()[0]}")
            raise
        with self._cond:
            self._log_marker("--- port reclaimed ---")

    def _attach(self, timeout: float) -> None:
        """Open the port (retrying until ``timeout``) and start a reader thread on it."""
        port = self._open_port(timeout)
        # Whatever waited in the port's buffer predates us (an earlier boot): a stale banner
        # must never satisfy an expect() of this run.
        with suppress(serial.SerialException, OSError, AttributeError):
            port.reset_input_buffer()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._reader, args=(port, stop), name=f"console-{self.name}", daemon=True
        )
        with self._cond:
            self._port = port
            self._stop = stop
            self._thread = thread
            self._lost = None
            self._decoder.reset()
            if self._frames is not None:
                self._frames = SerialFrameDecoder()
            self._pending_cr = False
        thread.start()

    def _detach(self) -> None:
        """Stop and join the reader, then close the port; the collected text stays."""
        with self._cond:
            port, thread, stop = self._port, self._thread, self._stop
            self._port = None
            self._thread = None
        if port is None:
            return
        stop.set()
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            with suppress(serial.SerialException, OSError, ValueError):
                cancel()  # wakes the reader now instead of after its read timeout
        if thread is not None:
            thread.join(timeout=5.0)
        with suppress(serial.SerialException, OSError):
            port.close()  # a vanished port may fail to close; nothing useful to report
        with self._cond:
            self._cond.notify_all()

    def _open_port(self, timeout: float) -> Any:
        """``serial_for_url`` with retries; every failure becomes an InfrastructureError."""
        kwargs = port_options(self._url, self._baud, self._rtscts, _READ_TIMEOUT_S)
        start = time.monotonic()
        while True:
            try:
                return open_serial(self._url, kwargs)
            except ValueError as exc:
                last: BaseException = exc
                break  # a malformed URL will not fix itself
            except PORT_ERRORS as exc:
                last = exc
            waited = time.monotonic() - start
            if waited >= timeout:
                break
            time.sleep(min(_OPEN_RETRY_S, timeout - waited))
        message, remedy = open_failure(self._url, last, time.monotonic() - start, self._where)
        raise InfrastructureError(message, remedy, board=self._name or None) from None

    # -- the reader thread -----------------------------------------------------------------

    def _reader(self, port: Any, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    data: bytes = port.read(1)
                    if data:
                        waiting = port.in_waiting
                        if waiting:
                            data += port.read(waiting)
                except PORT_ERRORS as exc:
                    if not stop.is_set():
                        self._mark_lost(f"{type(exc).__name__}: {exc}")
                    return
                if data:
                    self._feed(data, timestamp())
        except Exception as exc:  # a bug here must surface, never turn into a silent timeout
            self._mark_lost(f"console reader crashed: {type(exc).__name__}: {exc}")

    def _mark_lost(self, detail: str) -> None:
        with self._cond:
            self._lost = detail
            self._flush_partial()
            self._log_marker(f"--- port lost: {detail} ---")
            self._cond.notify_all()

    def _feed(self, data: bytes, ts: str) -> None:
        packets: list[bytes] = []
        with self._cond:
            self._received += len(data)
            if self._frames is None:
                self._append(self._decoder.decode(data), ts)
            else:
                for item in self._frames.feed(data):
                    if isinstance(item, SmpPacket):
                        self._log_line(ts, f"<< {describe_packet(item.data)}")
                        packets.append(item.data)
                    else:
                        self._append(self._decoder.decode(item.data), ts)
            sink = self._packet_sink
        if sink is not None:
            for packet in packets:
                sink(packet)

    def _flush_decoder(self) -> None:
        """Emit what an unfinished UTF-8 sequence left behind (as U+FFFD)."""
        with self._cond:
            self._append(self._decoder.decode(b"", final=True), timestamp())
            self._decoder.reset()

    def _append(self, text: str, ts: str) -> None:
        """Normalise CR LF and lone CR to LF across chunk borders, store, log, wake waiters."""
        if not text:
            return
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = text.endswith("\r")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text:
            return
        self._text += text
        self._log_device(text, ts)
        self._cond.notify_all()

    # -- log file --------------------------------------------------------------------------

    def _open_log(self) -> None:
        if self._log_path is None or self._log is not None:
            return
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append: several consoles (one per test) may share a board's log in one session.
        self._log = self._log_path.open("a", encoding="utf-8", newline="\n")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_line(self, ts: str, line: str) -> None:
        if self._log is not None:
            self._log.write(f"[{ts}] {line}\n")
            self._log.flush()

    def _log_marker(self, marker: str) -> None:
        self._log_line(timestamp(), marker)

    def _log_device(self, text: str, ts: str) -> None:
        """Write complete lines, stamped with the time their first byte arrived."""
        if self._log is None:
            return
        *complete, partial = (self._log_partial + text).split("\n")
        first_ts = self._log_partial_ts or ts
        for i, line in enumerate(complete):
            self._log_line(first_ts if i == 0 else ts, line)
        if complete:
            self._log_partial_ts = ts if partial else ""
        else:
            self._log_partial_ts = first_ts
        self._log_partial = partial

    def _flush_partial(self) -> None:
        if self._log_partial:
            self._log_line(self._log_partial_ts or timestamp(), self._log_partial)
        self._log_partial = ""
        self._log_partial_ts = ""

    # -- reading ---------------------------------------------------------------------------

    def text(self) -> str:
        """Everything received since ``open()``, with line endings normalised to LF."""
        with self._cond:
            return self._text

    def unread(self) -> str:
        """The text after the expect cursor."""
        with self._cond:
            return self._text[self._cursor :]

    def skip_to_end(self) -> None:
        """Forget unread output, so the next expect only sees what arrives from now on."""
        with self._cond:
            self._cursor = len(self._text)

    def expect(
        self,
        pattern: Pattern,
        timeout: float = 10.0,
        *,
        not_matching: Sequence[Pattern] = (),
    ) -> re.Match[str]:
        """Wait until ``pattern`` appears in the unread text; advance the cursor past it.

        The match is made against the unread text (``match.string``), multi-line mode. A
        pattern that ends in a number may match while digits are still arriving: end it with
        ``\\n`` when that matters. ``not_matching`` patterns seen before the wanted match (or
        while waiting) raise UnexpectedOutput at once instead of waiting out the timeout.
        """
        wanted = _compile(pattern)
        forbidden = [_compile(p) for p in not_matching]
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._started:
                raise RuntimeError(
                    f"console {self.name} was never opened; call open() or use `with Console(...)`"
                )
            seen = -1
            while True:
                if len(self._text) != seen:
                    seen = len(self._text)
                    unread = self._text[self._cursor :]
                    match = wanted.search(unread)
                    self._check_forbidden(unread, forbidden, match)
                    if match is not None:
                        self._cursor += match.end()
                        return match
                if self._lost is not None:
                    raise self._vanished_error()
                if self._port is None:
                    raise RuntimeError(
                        f"console {self.name} is closed (or lent out by released()); "
                        f"no more output can arrive while waiting for {wanted.pattern!r}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        timed_out = ExpectTimeout(self._timeout_message(wanted.pattern, timeout))
        silenced = self.rig_check() if self.rig_check is not None else None
        if silenced is not None:
            # The board could not have printed it: the rig stopped it (a halted core, a probe
            # that no longer answers). An infrastructure fault, not the firmware's silence.
            raise InfrastructureError(
                f"console {self.name}: no match for '{wanted.pattern}' within {timeout:.1f} s: "
                f"{silenced}",
                "find what stopped the board (another debugger session, a halted core, a lost "
                "probe or supply), reset it (`dfuhil provision --board NAME --steps reset`), "
                "then run again",
                board=self.name,
            ) from timed_out
        raise timed_out

    def expect_exact(self, text: str, timeout: float = 10.0) -> str:
        """Wait for a literal string (no regex escaping needed); returns it."""
        return self.expect(re.escape(text), timeout).group(0)

    def _check_forbidden(
        self, unread: str, forbidden: Sequence[re.Pattern[str]], match: re.Match[str] | None
    ) -> None:
        hits = [(m, p) for p in forbidden if (m := p.search(unread)) is not None]
        hits = [(m, p) for m, p in hits if match is None or m.start() < match.end()]
        if not hits:
            return
        bad, pat = min(hits, key=lambda hit: hit[0].start())
        self._cursor += bad.end()
        raise UnexpectedOutput(
            f"console {self.name}: forbidden pattern '{pat.pattern}' appeared in:\n"
            f"  {_line_around(unread, bad.start(), bad.end())}\n"
            f"{self._log_hint()}"
        )

    def _timeout_message(self, pattern: str, timeout: float) -> str:
        head = f"console {self.name}: no match for '{pattern}' within {timeout:.1f} s"
        if self._received == 0:
            return (
                f"{head}: nothing was received (is the board powered, "
                f"is the baud rate {self._baud} right?)\n{self._log_hint()}"
            )
        unread = self._text[self._cursor :]
        if not unread:
            body = "--- unread output: none (everything received was consumed by earlier expects)"
            return f"{head}\n{body} ---\n{self._log_hint()}"
        tail = unread.rstrip("\n").split("\n")[-_TAIL_LINES:]
        return (
            f"{head}\n--- unread output (last {_TAIL_LINES} lines) ---\n"
            + "\n".join(tail)
            + f"\n{self._log_hint()}"
        )

    def _log_hint(self) -> str:
        if self._log_path is None:
            return "--- no log file (log_path not set) ---"
        return f"--- full log: {self._log_path} ---"

    def _vanished_error(self) -> InfrastructureError:
        if is_network(self._url):
            where = f" [{self._where}]" if self._where else ""
            return InfrastructureError(
                f"serial port {self._url}{where} dropped ({self._lost})",
                dropped_remedy(self._url, self._where),
                board=self._name or None,
            )
        return InfrastructureError(
            f"serial port {self._url} vanished ({self._lost})",
            "check the USB cable and hub power; if the board's USB port re-enumerates on reset, "
            "open the console with open_timeout=...; if another tool used the port, run it "
            "inside console.released()",
            board=self._name or None,
        )

    def _wait_text(self, pos: int, timeout: float) -> tuple[str, int]:
        """Text after ``pos`` once there is some (or ``timeout`` passed); for follow()."""
        with self._cond:
            if len(self._text) <= pos and self._lost is None and self._port is not None:
                self._cond.wait(timeout)
            if len(self._text) <= pos and self._lost is not None:
                raise self._vanished_error()
            return self._text[pos:], len(self._text)

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes to the device; the log shows them as ``>>`` lines."""
        shown = data.decode("utf-8", errors="backslashreplace")
        self._send(data, shown.replace("\r\n", "\n").rstrip("\n").split("\n"))

    def _send(self, data: bytes, shown: list[str]) -> None:
        with self._cond:
            port = self._port
            if port is None:
                raise RuntimeError(f"console {self.name} is not open; cannot write")
            if self._lost is not None:
                raise self._vanished_error()
            for line in shown:
                self._log_line(timestamp(), f">> {line}")
        try:
            with self._write_lock:
                port.write(data)
                port.flush()
        except PORT_ERRORS as exc:
            self._mark_lost(f"write failed: {type(exc).__name__}: {exc}")
            raise self._vanished_error() from None

    def attach_packets(self, sink: PacketSink | None) -> None:
        """Hand SMP packets to ``sink`` (an SMP client) while the text stays the console's.

        One client at a time, like one mcumgr per port; ``None`` detaches.
        """
        if self._frames is None:
            raise RuntimeError(
                f"console {self.name} speaks a binary protocol; SMP needs a text console"
            )
        with self._cond:
            if sink is not None and self._packet_sink is not None:
                raise RuntimeError(f"console {self.name} already has an SMP client attached")
            self._packet_sink = sink

    def send_packet(self, packet: bytes, line_length: int = 128) -> None:
        """Send one SMP packet in console framing; the log shows one summary line, not base64."""
        self._send(encode_frames(packet, line_length), [describe_packet(packet)])

    def writeline(self, line: str) -> None:
        """Send one shell command line, terminated the way nRF shells expect (CR LF)."""
        self.write((line + "\r\n").encode("utf-8"))


def follow(console: Console, out: TextIO, stop: threading.Event | None = None) -> None:
    """Copy console output to ``out`` as it arrives until Ctrl-C or ``stop`` is set.

    Starts at the expect cursor, so lines printed before the call are shown too; prompts
    without a newline appear at once because output is copied chunk by chunk.
    """
    pos = len(console.text()) - len(console.unread())
    try:
        while stop is None or not stop.is_set():
            chunk, pos = console._wait_text(pos, 0.1)
            if chunk:
                out.write(chunk)
                out.flush()
            elif not console.is_open:
                return
    except KeyboardInterrupt:
        return
