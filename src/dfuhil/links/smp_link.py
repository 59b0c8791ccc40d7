"""The SMP host: ``mcumgr image list|upload|test|confirm|erase``, ``os reset|echo`` for dfuhil.

smpclient (intercreate) speaks SMP and is asyncio; the rest of dfuhil is synchronous, so
:class:`SmpLink` runs smpclient on a private event-loop thread and offers blocking calls. Over
serial it rides on the board's :class:`~dfuhil.links.console.Console` (one owner per UART; the
boot log keeps flowing into the per-board log and ``expect()``); over UDP it uses smpclient's
UDP transport.

What the spec (../shared/specs/mcuboot-smp.md §4, §6) says a host must get right, and where:

- buffer size: MCUmgr params on connect; servers without them (MCUboot serial recovery without
  BOOT_MGMT_MCUMGR_PARAMS) answer an error and get smpclient's safe 169-byte messages, or the
  ``buf_size`` given by hand;
- UART line buffers: params do not report them, and a request that reaches a Zephyr UART
  transport in one burst (USB CDC-ACM) loses every line beyond the free ones. Serial messages
  and the window default to what the stock transport holds (2 lines of 128 bytes in flight),
  or to the build's own buffers (``uart``, boards.yaml ``mcuboot.smp_uart``); before an
  upload one round of echoes shaped like its requests shows within a few seconds whether they
  get through, and names the line buffers and the MTU when they do not;
- upload: the first chunk alone (it carries ``len`` and the file's SHA256 ``sha`` and makes the
  server erase), then up to the window's chunks in flight, always continuing from the server's
  ``off`` (never from our own count): that is what makes resume (same ``sha``) and MCUboot's
  aligned partial writes work;
- the two hashes: ``test``/``confirm`` take the image hash (the SHA TLV that ``image_list``
  shows), never the file SHA256;
- reset answered ``{"rc": 0}`` (MCUboot) is a success, not an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import ConfigDict, Field
from smp import header as smphdr
from smp import message as smpmsg
from smp import os_management as smpos
from smpclient import SMPClient
from smpclient.exceptions import SMPClientException, SMPValidationException
from smpclient.generics import success
from smpclient.requests.image_management import (
    ImageErase,
    ImageStatesRead,
    ImageStatesWrite,
)
from smpclient.requests.os_management import (
    BootloaderInformationRead,
    EchoWrite,
    MCUMgrParametersRead,
    ResetWrite,
)
from smpclient.transport import SMPTransport, SMPTransportDisconnected

from dfuhil.errors import InfrastructureError, ProductError
from dfuhil.formats.smp import netbuf_window
from dfuhil.formats.smp_uart import SmpUart
from dfuhil.links.async_loop import LoopThread, Progress, guarded
from dfuhil.links.console import Console
from dfuhil.links.smp_errors import SmpRefused, is_refusal, refusal
from dfuhil.links.smp_transport import ConsoleTransport, UdpTransport
from dfuhil.links.smp_upload import PipelinedUpload, UploadResult, UploadTimeout

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FIRST_CHUNK_TIMEOUT_S",
    "ServerParams",
    "SlotState",
    "SmpLink",
    "SmpRefused",
    "UploadResult",
]

if TYPE_CHECKING:
    from dfuhil.links.smp_ble import HciOpener

T = TypeVar("T")


class _NoTimeoutDumps(logging.Filter):
    """smpclient logs each timeout at ERROR with the whole request's bytes; SmpLink reports a
    timeout itself, with what was waited for and the likely cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout")


logging.getLogger("smpclient").addFilter(_NoTimeoutDumps())
log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.5  # smpclient's default per request
# Times a request with a lost answer is sent again (not a reset: that would reset twice).
RESENDS = 2
# Rounds of echoes before an upload that must all lose a request to blame the UART's buffers.
PROBE_ROUNDS = 3
# The first upload chunk makes the server erase the slot (a 476 KiB nRF52840 slot: ~10 s).
FIRST_CHUNK_TIMEOUT_S = 40.0


# --- what the board says ----------------------------------------------------------------------


@dataclass(frozen=True)
class SlotState:
    """One entry of the image state list (``mcumgr image list``)."""

    image: int
    slot: int
    version: str
    hash: bytes | None  # the image hash: the SHA TLV, what test/confirm take
    bootable: bool = False
    pending: bool = False
    confirmed: bool = False
    active: bool = False
    permanent: bool = False

    @property
    def hash_hex(self) -> str:
        return self.hash.hex() if self.hash is not None else ""

    def flags(self) -> list[str]:
        names = ("bootable", "pending", "confirmed", "active", "permanent")
        return [name for name in names if getattr(self, name)]

    def __str__(self) -> str:
        flags = " ".join(self.flags()) or "-"
        return f"image {self.image} slot {self.slot}: v{self.version} {self.hash_hex} [{flags}]"


def _slot_states(images: list[Any]) -> list[SlotState]:
    return [
        SlotState(
            image=s.image or 0,
            slot=s.slot,
            version=s.version,
            hash=bytes(s.hash) if s.hash is not None else None,
            bootable=bool(s.bootable),
            pending=bool(s.pending),
            confirmed=bool(s.confirmed),
            active=bool(s.active),
            permanent=bool(s.permanent),
        )
        for s in images
    ]


@dataclass(frozen=True)
class ServerParams:
    """The server's buffers: from MCUmgr params, set by hand, or smpclient's safe fallback."""

    buf_size: int | None
    buf_count: int
    source: Literal["params", "manual", "fallback"]
    message_size: int  # the largest SMP message (header + CBOR) the host sends
    window: int = 1  # requests an upload keeps in flight (they fit the UART line buffers)

    def __str__(self) -> str:
        size = f"buf_size {self.buf_size}" if self.buf_size else "buf_size unknown"
        return (
            f"{size}, buf_count {self.buf_count} ({self.source}), messages ≤ "
            f"{self.message_size} B, window {self.window}"
        )


# --- requests smpclient models differently from what servers send -----------------------------


class _ModeResponse(smpmsg.ReadResponse):
    """Zephyr answers the bootloader ``mode`` query without the ``bootloader`` key."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    _GROUP_ID = smphdr.GroupId.OS_MANAGEMENT
    _COMMAND_ID = smphdr.CommandId.OSManagement.BOOTLOADER_INFO

    mode: int
    no_downgrade: bool | None = Field(alias="no-downgrade", default=None)


class _BootloaderModeRead(smpos.BootloaderInformationReadRequest):
    _Response = _ModeResponse
    _ErrorV1 = smpos.OSManagementErrorV1
    _ErrorV2 = smpos.OSManagementErrorV2


# --- the link ---------------------------------------------------------------------------------


class SmpLink:
    """A connected SMP client with blocking calls; ``with SmpLink.over_console(c) as smp:``."""

    def __init__(
        self,
        transport: SMPTransport,
        address: str,
        *,
        name: str = "",
        where: str = "",
        remedy: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        console: Console | None = None,
        owns_console: bool = False,
        pipelined: bool = False,
        loop: LoopThread | None = None,
        kind: Literal["serial", "udp", "ble"] = "serial",
    ) -> None:
        self._transport = transport
        self.kind = kind  # which SMP transport: pre-flight rules differ (BLE OTA needs 2 slots)
        self._address = address
        self.name = name or address
        self.where = where or address
        self._remedy = remedy
        self.timeout_s = timeout_s
        self.console = console
        self._owns_console = owns_console
        self._pipelined = pipelined
        self._client = SMPClient(transport, address, timeout_s=timeout_s)
        self._buf_count = 1  # the server's MCUmgr netbufs (params), for the BLE window
        self._loop: LoopThread | None = None
        # A loop given by the caller (an in-process radio lives on it) is the caller's to close.
        self._given_loop = loop
        self.params: ServerParams | None = None

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def over_console(
        cls,
        console: Console,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        buf_size: int | None = None,
        owns_console: bool = False,
        uart: SmpUart | None = None,
    ) -> SmpLink:
        """SMP on the board's console port (the console keeps the boot log); ``uart`` is the
        app's SMP UART as built (default: Zephyr's stock one, reached in bursts)."""
        where = f"serial port {console.url} at {console.baud} baud"
        board_log = (
            f" (the board log {console.log_path} shows what it printed)" if console.log_path else ""
        )
        remedy = (
            "is an application with an SMP server on this UART (CONFIG_MCUMGR_TRANSPORT_UART) "
            f"running{board_log}? is {console.baud} baud right? a board halted in MCUboot without "
            "serial recovery answers nothing: flash a signed application, or enter serial "
            "recovery; if short requests are answered and long ones are not, the app's SMP "
            "UART drops lines: state its RX line buffers (CONFIG_UART_MCUMGR_RX_BUF_COUNT/_SIZE)"
            " and CONFIG_MCUMGR_TRANSPORT_UART_MTU in boards.yaml mcuboot.smp_uart"
        )
        return cls(
            ConsoleTransport(console, buf_size=buf_size, uart=uart),
            console.url,
            name=console.name,
            where=where,
            remedy=remedy,
            timeout_s=timeout_s,
            console=console,
            owns_console=owns_console,
            pipelined=True,
        )

    @classmethod
    def open_serial(
        cls,
        url: str,
        *,
        baud: int = 115200,
        rtscts: bool = False,
        log_path: Path | None = None,
        name: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        buf_size: int | None = None,
        uart: SmpUart | None = None,
    ) -> SmpLink:
        """A console of its own on ``url`` (closed with the link), for ``--port`` use."""
        console = Console(url, baud=baud, rtscts=rtscts, log_path=log_path, name=name)
        return cls.over_console(
            console, timeout_s=timeout_s, buf_size=buf_size, owns_console=True, uart=uart
        )

    @classmethod
    def over_udp(
        cls, address: str, *, name: str = "", timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> SmpLink:
        """SMP over UDP (``host:port``), smpclient's UDP transport."""
        remedy = (
            "is the board's SMP UDP server enabled (CONFIG_MCUMGR_TRANSPORT_UDP) and its network "
            "up? is HOST:PORT right (boards.yaml smp_udp, or --udp)?"
        )
        return cls(
            UdpTransport(),
            address,
            name=name or address,
            where=f"UDP {address}",
            remedy=remedy,
            timeout_s=timeout_s,
            kind="udp",
        )

    @classmethod
    def over_ble(
        cls,
        target: str,
        hci: str | HciOpener,
        *,
        name: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        scan_timeout_s: float = 10.0,
        loop: LoopThread | None = None,
        interval_ms: float | None = None,
        latency: int = 0,
    ) -> SmpLink:
        """SMP over Bluetooth LE (GATT) to the board advertising ``target`` (name or address),
        through the HCI controller ``hci`` (a bumble transport name, or an opener in tests);
        ``interval_ms``/``latency``: the connection parameters asked for (bench)."""
        from dfuhil.links.smp_ble import BleTransport  # bumble is imported only for BLE

        transport = BleTransport(
            hci,
            board=name or None,
            scan_timeout_s=scan_timeout_s,
            interval_ms=interval_ms,
            latency=latency,
        )
        remedy = (
            "is the board advertising its SMP service (CONFIG_MCUMGR_TRANSPORT_BT) and in range? "
            "is --ble its name or address (boards.yaml ble)? is --hci the right controller?"
        )
        return cls(
            transport,
            target,
            name=name or target,
            where=f"BLE {target} via {transport.hci_name}",
            remedy=remedy,
            timeout_s=timeout_s,
            loop=loop,
            kind="ble",
            pipelined=True,  # answers are matched by sequence number (BleTransport)
        )

    # -- life cycle ------------------------------------------------------------------------

    def connect(self) -> ServerParams:
        """Open the transport and learn the server's buffers (MCUmgr params)."""
        if self._loop is not None and self.params is not None:
            return self.params
        self._loop = self._given_loop or LoopThread(f"smp-{self.name}")
        try:
            self.params = self._loop.run(self._connect())
        except BaseException:
            self.close()
            raise
        return self.params

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                loop.run(asyncio.wait_for(self._client.disconnect(), 5.0))
            except (TimeoutError, OSError, SMPClientException, RuntimeError):
                pass  # closing must not mask what went wrong before
            finally:
                if loop is not self._given_loop:
                    loop.close()
        self.params = None
        if self._owns_console and self.console is not None:
            self.console.close()

    def __enter__(self) -> SmpLink:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _connect(self) -> ServerParams:
        try:
            await self._transport.connect(self._address, self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise InfrastructureError(
                f"cannot reach the SMP server at {self.where} ({exc})",
                self._remedy,
                board=self._board,
            ) from None
        return await self._guard("the MCUmgr params request", self._negotiate())

    async def _negotiate(self) -> ServerParams:
        manual: int | None = getattr(self._transport, "manual_size", None)
        response: Any = None
        for _attempt in range(2):  # a board still booting may miss the first request
            try:
                response = await self._client.request(MCUMgrParametersRead(), self.timeout_s)
                break
            except TimeoutError:
                continue
        if response is None:
            raise self._timeout("the MCUmgr params request (and a retry)", 2 * self.timeout_s)
        if success(response):
            self._transport.initialize(response.buf_size)
            self._set_buf_count(response.buf_count)
            size = self._transport.max_unencoded_size
            if manual is not None:
                return ServerParams(manual, response.buf_count, "manual", size, self._window())
            return ServerParams(
                response.buf_size, response.buf_count, "params", size, self._window()
            )
        # No params (MCUboot serial recovery without BOOT_MGMT_MCUMGR_PARAMS): forget what an
        # earlier server said and fall back to the size given by hand, or smpclient's safe one.
        self._transport._smp_server_transport_buffer_size = manual
        self._set_buf_count(1)
        source: Literal["manual", "fallback"] = "manual" if manual is not None else "fallback"
        return ServerParams(manual, 1, source, self._transport.max_unencoded_size, 1)

    def _set_buf_count(self, buf_count: int) -> None:
        self._buf_count = buf_count
        if isinstance(self._transport, ConsoleTransport):
            self._transport.set_buf_count(buf_count)

    def _window(self) -> int:
        """Requests in flight: what the UART line buffers hold on serial; over BLE what the
        server's netbufs hold (:func:`~dfuhil.formats.smp.netbuf_window`: several in flight
        keep the link busy while the board writes flash); 1 on UDP."""
        if isinstance(self._transport, ConsoleTransport) and self._pipelined:
            return self._transport.budget.window
        if self.kind == "ble" and self._pipelined:
            return netbuf_window(self._buf_count)
        return 1

    def renegotiate(self) -> ServerParams:
        """Read the buffers again: after a reset another server may answer (serial recovery)."""
        self.params = self._run(self._guard("the MCUmgr params request", self._negotiate()))
        return self.params

    @property
    def radio(self) -> str | None:
        """Over Bluetooth LE: the negotiated link (ATT MTU, data length, parameters)."""
        link = getattr(self._transport, "link", None)
        return str(link) if link is not None else None

    @property
    def _board(self) -> str | None:
        """The board name for error messages; None when only a port or address is known."""
        return self.name if self.name not in (self._address, self.where) else None

    # -- plumbing --------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"SMP link to {self.where} is not connected; call connect()")
        reopen = getattr(self._transport, "reopen", None)  # BLE: a reset ends the connection
        if reopen is not None:
            try:
                self._loop.run(reopen(self.timeout_s))
            except BaseException:
                coro.close()
                raise
        return self._loop.run(coro)

    def _timeout(self, what: str, seconds: float) -> InfrastructureError:
        extra = ""
        if self.console is not None:
            tail = [line for line in self.console.text().splitlines() if line.strip()][-5:]
            if tail:
                extra = "; the board's last console lines:\n" + "\n".join(f"  {t}" for t in tail)
        return InfrastructureError(
            f"no SMP answer from {self.where} within {seconds:.1f} s to {what}{extra}",
            self._remedy,
            board=self._board,
        )

    async def _guard(self, operation: str, coro: Coroutine[Any, Any, T], timeout: float = 0) -> T:
        """Run one exchange; silence and a lost link become InfrastructureError."""
        try:
            return await coro
        except UploadTimeout as exc:
            raise self._timeout(exc.what, exc.seconds) from None
        except TimeoutError:
            raise self._timeout(operation, timeout or self.timeout_s) from None
        except SMPTransportDisconnected as exc:
            raise InfrastructureError(
                f"SMP link to {self.where} lost during {operation} ({exc})",
                self._remedy,
                board=self._board,
            ) from None
        except SMPValidationException as exc:
            raise ProductError(
                f"{operation}: the answer from {self.where} is not valid SMP for this request "
                f"({exc.msg.strip()})\n{exc.details}"
            ) from None

    async def _request(
        self, operation: str, request: Any, timeout_s: float | None = None, resend: bool = True
    ) -> Any:
        """One exchange; a request whose answer is lost (a noisy line) is sent again, same
        bytes and sequence number, ``RESENDS`` times, unless sending it twice could do twice
        what it asks (``resend=False``: a reset)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempts = RESENDS + 1 if resend else 1
        exchange = self._resending(request, timeout, attempts)
        return await self._guard(operation, exchange, timeout * attempts)

    async def _resending(self, request: Any, timeout: float, attempts: int) -> Any:
        for attempt in range(attempts):
            try:
                return await self._client.request(request, timeout)
            except TimeoutError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def _checked(
        self,
        operation: str,
        request: Any,
        timeout_s: float | None = None,
        resend: bool = True,
        **context: str,
    ) -> Any:
        response = await self._request(operation, request, timeout_s, resend)
        if is_refusal(response):
            raise refusal(operation, response, **context)
        return response  # {"rc": 0} too: MCUboot's way of saying yes

    # -- OS group --------------------------------------------------------------------------

    def echo(self, text: str) -> str:
        response = self._run(self._checked("echo", EchoWrite(d=text)))
        return str(response.r)

    def mcumgr_params(self) -> tuple[int, int]:
        response = self._run(self._checked("MCUmgr params", MCUMgrParametersRead()))
        return int(response.buf_size), int(response.buf_count)

    def bootloader_info(self) -> str:
        response = self._run(self._checked("bootloader info", BootloaderInformationRead()))
        return str(response.bootloader)

    def bootloader_mode(self) -> tuple[int, bool]:
        """MCUboot's mode number (spec §2.7) and whether it prevents downgrades."""
        response = self._run(self._checked("bootloader mode", _BootloaderModeRead(query="mode")))
        return int(response.mode), bool(response.no_downgrade)

    def reset(self, *, boot_mode: int | None = None, force: bool = False) -> None:
        """Ask the device to reset; ``{}`` (Zephyr) and ``{"rc": 0}`` (MCUboot) both succeed.

        ``boot_mode=1`` asks an app built for it to reboot into MCUboot's serial recovery.
        """
        request = ResetWrite(force=1 if force else None, boot_mode=boot_mode)
        self._run(self._checked("reset", request, resend=False))

    # -- IMAGE group -----------------------------------------------------------------------

    def image_list(self) -> list[SlotState]:
        response = self._run(self._checked("image state read", ImageStatesRead()))
        return _slot_states(list(response.images))

    def test(self, image_hash: bytes) -> list[SlotState]:
        """Mark the image with this hash for a test boot (reverted unless confirmed)."""
        return self._state_write(image_hash, confirm=False)

    def confirm(self, image_hash: bytes | None = None) -> list[SlotState]:
        """Confirm the running image (no hash), or make the image with ``hash`` permanent."""
        return self._state_write(image_hash, confirm=True)

    def _state_write(self, image_hash: bytes | None, *, confirm: bool) -> list[SlotState]:
        shown = image_hash.hex()[:16] + "…" if image_hash else "(running image)"
        request = ImageStatesWrite(hash=image_hash, confirm=confirm)
        response = self._run(self._checked("image state write", request, hash=shown))
        images = getattr(response, "images", None)
        if images is None:  # {"rc": 0} from a server that does not return the list
            return self.image_list()
        return _slot_states(list(images))

    def erase(self, slot: int | None = None) -> None:
        """Erase a slot (the server's default: the secondary)."""
        self._run(self._checked("image erase", ImageErase(slot=slot)))

    def upload(
        self,
        data: bytes,
        *,
        progress: Progress | None = None,
        resume: bool = True,
        image: int = 0,
        upgrade: bool = False,
        window: int | None = None,
        first_timeout_s: float = FIRST_CHUNK_TIMEOUT_S,
    ) -> UploadResult:
        """Upload an image file, following the server's ``off`` (resume, aligned writes).

        ``resume`` sends the file's SHA256 so a server that holds an interrupted upload of the
        same file continues where it stopped; ``window`` requests stay in flight (default: the
        server's buffers and the UART's line buffers hold on serial, 1 on UDP). On serial a
        round of echoes shaped like the upload's requests goes first (:meth:`probe_budget`).
        """
        if not data:
            raise ValueError("nothing to upload: the image is empty")
        params = self.params
        if window is None:
            window = params.window if (params is not None and self._pipelined) else 1
        elif params is not None and params.source == "params":
            window = self._within_netbufs(window, params.buf_count)
        if isinstance(self._transport, ConsoleTransport):
            self.probe_budget(window)
        upload = PipelinedUpload(
            self._client,
            data,
            message_size=self._transport.max_unencoded_size,
            timeout_s=self.timeout_s,
            first_timeout_s=first_timeout_s,
            window=window if self._pipelined else 1,
            resume=resume,
            image=image,
            upgrade=upgrade,
            progress=guarded(progress),
            who=self.name,
        )
        return self._run(self._guard("image upload", upload.run()))

    def _within_netbufs(self, window: int, buf_count: int) -> int:
        """An asked-for window the server's netbufs cannot hold is cut down, and said: on a
        board busy writing flash the extra request would be dropped without an answer."""
        most = netbuf_window(buf_count)
        if window <= most:
            return window
        log.warning(
            "%s: a window of %d is more than the board's %d MCUmgr netbufs hold (one is the "
            "answer's): %d in flight",
            self.name,
            window,
            buf_count,
            most,
        )
        return most

    # -- the serial budget -----------------------------------------------------------------

    def probe_budget(self, window: int) -> None:
        """Send ``window`` echoes of the largest message at once, as an upload will: a lost
        one means the UART dropped lines, said within seconds instead of after a 40 s wait."""
        self._run(self._probe_budget(max(1, window)))

    async def _probe_budget(self, window: int) -> None:
        transport = self._transport
        assert isinstance(transport, ConsoleTransport)
        size = transport.max_unencoded_size
        # Too few line buffers lose lines every round; a noisy line loses one now and then.
        # Only a loss in every round is blamed on the buffers.
        for _round in range(PROBE_ROUNDS):
            lost = await self._echo_round(size, window)
            if not lost:
                return  # answered (an error answer too: the request arrived whole)
        await self._guard("a short echo", self._short_echo())
        budget = transport.budget
        raise InfrastructureError(
            f"{self.where} answers a short request but lost {lost} of {window} request(s) of "
            f"{size} bytes ({budget.lines_per_message} lines of up to "
            f"{budget.line_length - 1} bytes each) sent together, in each of {PROBE_ROUNDS} "
            "rounds: the app's SMP UART dropped lines, or the line corrupts long requests "
            "(a noisy cable: see the board log for garbled text). Likely cause: its UART RX line "
            "buffers (CONFIG_UART_MCUMGR_RX_BUF_COUNT x "
            "CONFIG_UART_MCUMGR_RX_BUF_SIZE) hold fewer lines than dfuhil assumed "
            f"({transport.uart.describe()}), or its MTU (CONFIG_MCUMGR_TRANSPORT_UART_MTU) is "
            "smaller than the request",
            "state the build's own values in boards.yaml (the firmware set's mcuboot.smp_uart: "
            "rx_buf_count, rx_buf_size, mtu, delivery); leave them out for a stock Zephyr "
            "build, whose 2 buffers of 128 bytes dfuhil assumes",
            board=self._board,
        )

    async def _echo_round(self, size: int, window: int) -> int:
        """``window`` echoes of ``size`` bytes at once; how many got no answer."""
        # Echoes need no flash work: each is answered within one request timeout.
        echoes = [self._client.request(_echo_of_size(size), self.timeout_s) for _ in range(window)]
        results = await asyncio.gather(*echoes, return_exceptions=True)
        broken = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, TimeoutError)
        ]
        if broken:  # a lost link or a garbled answer: reported as any other exchange's
            await self._guard("the echo before the upload", _reraise(broken[0]))
        return sum(isinstance(r, TimeoutError) for r in results)

    async def _short_echo(self) -> Any:
        """A short echo, sent again if lost: does the server answer at all?"""
        for _attempt in range(PROBE_ROUNDS - 1):
            try:
                return await self._client.request(EchoWrite(d="?"), self.timeout_s)
            except TimeoutError:
                continue
        return await self._client.request(EchoWrite(d="?"), self.timeout_s)


async def _reraise(exc: BaseException) -> None:
    raise exc


def _echo_of_size(size: int) -> EchoWrite:
    """An echo request whose whole SMP message is at most ``size`` bytes, as close as CBOR's
    length prefixes allow."""
    text = "e" * max(1, size - 11)
    while len(EchoWrite(d=text).BYTES) > size and len(text) > 1:
        text = text[: -max(1, len(EchoWrite(d=text).BYTES) - size)]
    return EchoWrite(d=text)
