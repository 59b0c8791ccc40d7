"""smpclient's ``SMPTransport`` over Bluetooth LE, on Google's bumble host stack.

Zephyr's SMP Bluetooth transport (``subsys/mgmt/mcumgr/transport/src/smp_bt.c``) is one GATT
characteristic: requests are written to it without response, answers come back as
notifications. An SMP message longer than one ATT payload (MTU - 3) spans several writes or
notifications; the 8-byte SMP header's length says where a message ends, so answers are
reassembled by it (:class:`Reassembler`).

Before the MCUmgr params answer, a message must fit one write (a server without
CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY cannot take more); after it, up to the server's buffer
(``buf_size``), split into MTU - 3 writes. The negotiated ATT MTU, data length and connection
parameters are logged, and kept in :attr:`BleTransport.link`.

bumble needs no BlueZ: the host opens an HCI transport by bumble's name for it (``usb:0``,
``serial:/dev/ttyACM0,1000000``, ``tcp-client:127.0.0.1:PORT`` for the virtual farm's radio) or,
in tests, any coroutine that returns a bumble ``Transport`` (a controller on an in-process
``LocalLink``). Scanning, connection and GATT errors become dfuhil errors that name the board
and the fix (:mod:`dfuhil.links.smp_ble_scan` finds the board).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bumble import att, core, hci
from bumble.device import Connection, ConnectionParametersPreferences, Device, Peer
from bumble.gatt_client import CharacteristicProxy
from bumble.transport import open_transport
from bumble.transport.common import Transport, TransportSpecError
from smp import header as smphdr
from smpclient.transport import SMPTransport, SMPTransportDisconnected

from dfuhil.errors import InfrastructureError, ProductError
from dfuhil.links.smp_ble_scan import BleTarget, find_device
from dfuhil.links.smp_transport import SeqDemux, checked_answer, packet_seq

__all__ = [
    "ATT_WRITE_OVERHEAD",
    "PREFERRED_MTU",
    "SMP_CHARACTERISTIC_UUID",
    "SMP_SERVICE_UUID",
    "BleLink",
    "BleTransport",
    "HciOpener",
    "Reassembler",
    "host_address",
]

log = logging.getLogger(__name__)

SMP_SERVICE_UUID = "8D53DC1D-1DB7-4CD3-868B-8A527460AA84"
SMP_CHARACTERISTIC_UUID = "DA2E7828-FBCE-4E01-AE9E-261174997C48"
# ATT Write Command / Handle Value Notification: opcode (1) + handle (2) before the value.
ATT_WRITE_OVERHEAD = 3
# The ATT MTU asked for: the largest ATT allows; the device answers what it takes (Zephyr's
# smp_svr Bluetooth overlay: CONFIG_BT_L2CAP_TX_MTU=498, so 498).
PREFERRED_MTU = 517
# LE Data Length Extension: the largest link-layer payload and its time on 1M PHY.
DATA_LENGTH_OCTETS = 251
DATA_LENGTH_TIME_US = 2120


def host_address() -> str:
    """A fresh random static address for this host on the air (Core Vol 6 Part B 1.3.2.1: the
    two top bits set, the other 46 random, neither all ones nor all zeros). A fixed one would
    make two dfuhil hosts on one air (or on one virtual farm) the same device: the link layer
    delivers to one of them and the other's GATT requests time out."""
    while True:
        random_part = int.from_bytes(secrets.token_bytes(6), "big") & ((1 << 46) - 1)
        if 0 < random_part < (1 << 46) - 1:
            raw = (0b11 << 46) | random_part
            return ":".join(f"{b:02X}" for b in raw.to_bytes(6, "big"))


HciOpener = Callable[[], Awaitable[Transport]]


@dataclass(frozen=True)
class BleLink:
    """What the connection ended up with: logged, and what the chunking is sized by."""

    address: str
    att_mtu: int
    data_length: tuple[int, int, int, int]  # max tx octets, tx time, rx octets, rx time
    interval_ms: float
    latency: int
    supervision_timeout_ms: float

    @property
    def max_write(self) -> int:
        return self.att_mtu - ATT_WRITE_OVERHEAD

    def __str__(self) -> str:
        tx, _, rx, _ = self.data_length
        return (
            f"{self.address}: ATT MTU {self.att_mtu} ({self.max_write} B per write), data length "
            f"tx {tx}/rx {rx} B, interval {self.interval_ms:g} ms, latency {self.latency}, "
            f"supervision timeout {self.supervision_timeout_ms:g} ms"
        )


class Reassembler:
    """Notification payloads in, whole SMP messages out (split by the header's length)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, fragment: bytes) -> list[bytes]:
        self._buffer += fragment
        messages: list[bytes] = []
        while len(self._buffer) >= smphdr.Header.SIZE:
            length = int.from_bytes(self._buffer[2:4], "big")
            end = smphdr.Header.SIZE + length
            if len(self._buffer) < end:
                break
            messages.append(bytes(self._buffer[:end]))
            del self._buffer[:end]
        return messages

    def clear(self) -> None:
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)


class BleTransport(SMPTransport):
    """SMP over the SMP GATT characteristic of the board called ``target`` (name or address).

    ``hci`` is a bumble transport name or a coroutine function that opens one; ``board`` names
    the board in errors; ``scan_timeout_s`` bounds the search for it.
    """

    def __init__(
        self,
        hci_source: str | HciOpener,
        *,
        board: str | None = None,
        scan_timeout_s: float = 10.0,
        preferred_mtu: int = PREFERRED_MTU,
        interval_ms: float | None = None,
        latency: int = 0,
    ) -> None:
        self._hci = hci_source
        # The connection interval and peripheral latency asked for at connection (None: bumble's
        # default); the device may ask for others later (Zephyr's CONN_PARAM_CONTROL, nRF Desktop).
        self.interval_ms = interval_ms
        self.latency = latency
        self.board = board
        self.scan_timeout_s = scan_timeout_s
        self.preferred_mtu = preferred_mtu
        self._smp_server_transport_buffer_size: int | None = None
        self._hci_transport: Transport | None = None
        self._device: Device | None = None
        self._connection: Connection | None = None
        self._characteristic: CharacteristicProxy[bytes] | None = None
        self._found: hci.Address | None = None  # the device the name resolved to
        self._demux = SeqDemux()
        self._reassembler = Reassembler()
        self.link: BleLink | None = None
        self.writes = 0  # ATT writes sent (tests: a message spans several)
        self.notifications = 0  # notifications received

    @property
    def hci_name(self) -> str:
        return self._hci if isinstance(self._hci, str) else "an in-process controller"

    # -- connecting --------------------------------------------------------------------------

    async def connect(self, address: str, timeout_s: float) -> None:
        target = BleTarget.parse(address)
        try:
            await self._open_hci()
            await self._join(target, timeout_s)
        except BaseException:
            await self.disconnect()
            raise

    async def _join(self, target: BleTarget, timeout_s: float) -> None:
        assert self._device is not None
        found = await find_device(
            self._device, target, self.scan_timeout_s, board=self.board, hci_name=self.hci_name
        )
        self._found = found
        connection = await self._connect(found, timeout_s)
        try:
            await self._negotiate(connection)
            await self._discover(connection)
        except TimeoutError:
            raise InfrastructureError(
                f"connected to {found}, but it did not answer the ATT MTU exchange or the GATT "
                "discovery in time; nothing was written",
                "is another central (a phone, another host with the same address) connected to "
                "it? power-cycle the board, or move the dongle closer",
                board=self.board,
            ) from None

    async def reopen(self, timeout_s: float) -> None:
        """Connect again to the same device if the link dropped (a reset ends the connection;
        the board advertises again once it has booted). A no-op while connected."""
        if self._connection is not None or self._device is None or self._found is None:
            return
        log.info("BLE link to %s dropped; connecting again", self._found)
        self._reassembler.clear()
        await self._join(BleTarget(address=str(self._found)), timeout_s)

    async def _open_hci(self) -> None:
        try:
            if isinstance(self._hci, str):
                self._hci_transport = await open_transport(self._hci)
            else:
                self._hci_transport = await self._hci()
        except (TransportSpecError, ValueError) as exc:
            raise InfrastructureError(
                f"{self.hci_name!r} is not a bumble HCI transport name ({exc})",
                "give --hci as bumble names it: usb:0, serial:/dev/ttyACM0,1000000, "
                "tcp-client:HOST:PORT (boards.yaml ble_hci)",
                board=self.board,
            ) from None
        except Exception as exc:  # each driver its own: OSError, usb1.USBError, TransportInitError
            raise InfrastructureError(
                f"cannot open the Bluetooth HCI controller {self.hci_name} "
                f"({type(exc).__name__}: {exc or 'no detail'})",
                "is the dongle plugged in and running HCI firmware (Zephyr's hci_usb), not held "
                "by another program (bluetoothd, another dfuhil), and may this user open it "
                "(udev rule / dialout group)? for a virtual board: is the farm running "
                "(dfuhil sim serve)?",
                board=self.board,
            ) from None
        device = Device.with_hci(
            "dfuhil",
            hci.Address(host_address()),
            self._hci_transport.source,
            self._hci_transport.sink,
        )
        try:
            await asyncio.wait_for(device.power_on(), 10.0)
        except (TimeoutError, core.BaseBumbleError, OSError) as exc:
            raise InfrastructureError(
                f"the Bluetooth controller {self.hci_name} does not answer HCI reset "
                f"({type(exc).__name__}: {exc or 'timeout'})",
                "is it an HCI controller (Zephyr hci_usb / hci_uart firmware) at the right "
                "baud rate, not held by another host?",
                board=self.board,
            ) from None
        self._device = device

    async def _connect(self, address: hci.Address, timeout_s: float) -> Connection:
        assert self._device is not None
        preferences = None
        if self.interval_ms is not None:
            # the supervision timeout must exceed (1 + latency) x interval x 2 (Core Vol 6 B 4.5.2)
            supervision_ms = max(720.0, (1 + self.latency) * self.interval_ms * 2 + 100)
            preferences = {
                hci.Phy.LE_1M: ConnectionParametersPreferences(
                    connection_interval_min=self.interval_ms,
                    connection_interval_max=self.interval_ms,
                    max_latency=self.latency,
                    supervision_timeout=int(min(supervision_ms, 32000.0)),
                )
            }
        try:
            connection = await self._device.connect(
                address,
                connection_parameters_preferences=preferences,
                timeout=max(timeout_s, 5.0),
            )
        except (TimeoutError, core.BaseBumbleError) as exc:
            raise InfrastructureError(
                f"{address} was seen advertising but the connection failed "
                f"({type(exc).__name__}: {exc or 'timeout'})",
                "is it still advertising (not connected to a phone or another host)? move the "
                "dongle closer, or power-cycle the board",
                board=self.board,
            ) from None
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        return connection

    async def _negotiate(self, connection: Connection) -> None:
        peer = Peer(connection)
        try:
            mtu = await peer.request_mtu(self.preferred_mtu)
        except (att.ATT_Error, core.ProtocolError) as exc:
            raise ProductError(
                f"board {self.board or connection.peer_address}: the device refused the ATT "
                f"MTU exchange ({exc}); nothing was written. Zephyr's host answers it whenever "
                "CONFIG_BT_GATT_CLIENT/_L2CAP_TX_MTU are stock: check the build's Bluetooth "
                "configuration (overlay-bt.conf)"
            ) from None
        try:
            await connection.set_data_length(DATA_LENGTH_OCTETS, DATA_LENGTH_TIME_US)
        except (core.BaseBumbleError, hci.HCI_Error) as exc:
            # A controller without Data Length Extension keeps 27-byte packets: slower, works.
            log.info("%s: data length not raised (%s)", connection.peer_address, exc)
        self.link = self._link_now(connection, mtu)
        log.info("BLE link to %s", self.link)
        # The device may ask for other parameters later (nRF Desktop lowers its latency while
        # an SMP transfer runs): each change is logged.
        connection.on(connection.EVENT_CONNECTION_PARAMETERS_UPDATE, self._on_parameters)

    @staticmethod
    def _link_now(connection: Connection, mtu: int) -> BleLink:
        params = connection.parameters
        return BleLink(
            address=str(connection.peer_address),
            att_mtu=mtu,
            data_length=tuple(connection.data_length),  # type: ignore[arg-type]
            interval_ms=params.connection_interval,
            latency=params.peripheral_latency,
            supervision_timeout_ms=params.supervision_timeout,
        )

    def _on_parameters(self) -> None:
        if self._connection is not None and self.link is not None:
            self.link = self._link_now(self._connection, self.link.att_mtu)
            log.info("BLE link parameters changed: %s", self.link)

    async def _discover(self, connection: Connection) -> None:
        peer = Peer(connection)
        services = await peer.discover_service(SMP_SERVICE_UUID)
        characteristics: list[Any] = []
        for service in services:
            characteristics += await service.discover_characteristics([SMP_CHARACTERISTIC_UUID])
        if not characteristics:
            raise ProductError(
                f"board {self.board or connection.peer_address}: connected, but it serves no "
                f"SMP characteristic {SMP_CHARACTERISTIC_UUID} (service {SMP_SERVICE_UUID}); "
                "nothing was written. Is CONFIG_MCUMGR_TRANSPORT_BT=y in the running firmware?"
            )
        self._characteristic = characteristics[0]
        await peer.subscribe(self._characteristic, self._on_notification)

    # -- traffic -----------------------------------------------------------------------------

    def _on_notification(self, value: bytes) -> None:
        self.notifications += 1
        for message in self._reassembler.feed(bytes(value)):
            self._demux.deliver(message)

    def _on_disconnection(self, reason: int) -> None:
        self._connection = None
        self._characteristic = None
        self._reassembler.clear()
        self._demux.fail_all(
            SMPTransportDisconnected(f"BLE link to {self.board or 'the board'} lost ({reason})")
        )

    def _connected(self) -> Connection:
        if self._connection is None:
            raise SMPTransportDisconnected(f"BLE link to {self.board or 'the board'} is not open")
        return self._connection

    async def send(self, data: bytes) -> None:
        if len(data) > self.max_unencoded_size:
            raise ValueError(
                f"SMP message of {len(data)} bytes exceeds the server's limit of "
                f"{self.max_unencoded_size}"
            )
        step = self.mtu
        for offset in range(0, len(data), step):
            self._connected()  # the link may drop between two writes of one message
            characteristic = self._characteristic
            assert characteristic is not None
            try:
                await characteristic.write_value(data[offset : offset + step])
            except (core.BaseBumbleError, hci.HCI_Error, OSError) as exc:
                raise SMPTransportDisconnected(
                    f"BLE write to {self.board or 'the board'} failed ({exc})"
                ) from None
            self.writes += 1

    async def receive(self) -> bytes:
        """Not offered: answers are matched by sequence number (use send_and_receive())."""
        raise TypeError("responses are matched by sequence number: use send_and_receive()")

    async def send_and_receive(self, data: bytes) -> bytes:
        seq = packet_seq(data)
        future = self._demux.expect(seq)
        try:
            await self.send(data)
            return checked_answer(data, await future)
        finally:
            self._demux.forget(seq, future)

    async def disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # closing must not mask what went wrong before
            with contextlib.suppress(TimeoutError, core.BaseBumbleError, hci.HCI_Error):
                await asyncio.wait_for(connection.disconnect(), 3.0)
        self._demux.fail_all(SMPTransportDisconnected(f"BLE link to {self.board} closed"))
        transport, self._hci_transport = self._hci_transport, None
        self._device = None
        if transport is not None:
            with contextlib.suppress(TimeoutError, OSError, core.BaseBumbleError):
                await asyncio.wait_for(transport.close(), 3.0)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def mtu(self) -> int:
        """The ATT payload per write (the negotiated MTU - 3; 20 before the exchange)."""
        return self.link.max_write if self.link is not None else att.ATT_DEFAULT_MTU - 3

    @property
    def max_unencoded_size(self) -> int:
        """One write before MCUmgr params; the server's buffer (it reassembles) after them."""
        size = self._smp_server_transport_buffer_size
        return size if size is not None else self.mtu
