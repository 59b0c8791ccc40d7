"""The virtual farm's Bluetooth LE air: one bumble ``LocalLink`` that boards and hosts share.

bumble 0.0.228 (the release smpclient pins) has no link relay, so hosts reach the link the way
they reach a real controller: over HCI. The farm listens on 127.0.0.1 (an ephemeral port); every
TCP client gets a virtual controller of its own on the farm's link, with H4 HCI on the socket.
A host opens it with bumble's ordinary transport name ``tcp-client:127.0.0.1:PORT`` (published as
SimState.ble_hci), so bumble's own apps (bumble-scan, bumble-gatt-dump) and any number of hosts
join at once; a client that goes away takes its controller and its connections with it.

Everything bumble runs on one asyncio loop in one thread (``BleRadio.call``); board firmware
threads only submit work to it. bumble's virtual controller leaves a few things out that the
farm needs (``FarmController``): the scan response of a legacy advertiser reaches scanners, and
a peripheral's LE Connection Complete event carries the central's requested interval, latency
and supervision timeout instead of fixed values.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bumble import hci, ll
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport.common import PacketParser

log = logging.getLogger(__name__)
T = TypeVar("T")
CONNECTION_TIMEOUT = 0x08  # HCI error: what a central sees when its peripheral goes dark


@dataclasses.dataclass
class AdvIndWithScanResponse(ll.AdvInd):
    """An ADV_IND and the SCAN_RSP its advertiser answers an active scanner with."""

    scan_response: bytes = b""


@dataclasses.dataclass(frozen=True)
class ConnectParams:
    """What the central's CONNECT_IND asked for (1.25 ms units, events, 10 ms units)."""

    interval: int
    latency: int
    timeout: int


class FarmController(Controller):
    """bumble's virtual controller with the two things the farm's link model needs."""

    def __init__(self, name: str, link: LocalLink) -> None:
        super().__init__(name, link=link)
        self.connect_params: dict[hci.Address, ConnectParams] = {}
        self._pending_connect: ConnectParams | None = None
        self._scan_response: bytes | None = None

    # --- advertiser side ----------------------------------------------------------------------

    def send_advertising_pdu(self, packet: ll.AdvertisingPdu) -> None:
        if type(packet) is ll.AdvInd:
            scan_response = self._scan_response_of(packet.advertiser_address)
            if scan_response:
                packet = AdvIndWithScanResponse(
                    packet.advertiser_address, packet.data, scan_response
                )
        super().send_advertising_pdu(packet)

    def _scan_response_of(self, address: hci.Address) -> bytes:
        legacy = self.le_legacy_advertiser
        if legacy.enabled and legacy.address == address:
            return bytes(legacy.scan_response_data)
        for advertising_set in self.advertising_sets.values():
            if advertising_set.enabled and advertising_set.address == address:
                return bytes(advertising_set.scan_response_data)
        return b""

    def on_le_connect_ind(self, packet: ll.ConnectInd) -> None:
        self._pending_connect = ConnectParams(packet.interval, packet.latency, packet.timeout)
        try:
            super().on_le_connect_ind(packet)
        finally:
            self._pending_connect = None

    # --- scanner side -------------------------------------------------------------------------

    def on_advertising_pdu(self, pdu: ll.AdvInd | ll.AdvExtInd) -> None:
        self._scan_response = getattr(pdu, "scan_response", None)
        try:
            super().on_advertising_pdu(pdu)
        finally:
            self._scan_response = None

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        super().send_hci_packet(self._amend(packet))

    def _amend(self, packet: hci.HCI_Packet) -> hci.HCI_Packet:
        """The scan response in SCAN_RSP reports; the central's parameters at connection."""
        if self._scan_response is not None:
            if isinstance(packet, hci.HCI_LE_Advertising_Report_Event):
                scan_rsp = hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP
                return hci.HCI_LE_Advertising_Report_Event(
                    [self._scan_data(r, r.event_type == scan_rsp) for r in packet.reports]
                )
            if isinstance(packet, hci.HCI_LE_Extended_Advertising_Report_Event):
                scan_response = hci.HCI_LE_Extended_Advertising_Report_Event.EventType.SCAN_RESPONSE
                return hci.HCI_LE_Extended_Advertising_Report_Event(
                    [self._scan_data(r, bool(r.event_type & scan_response)) for r in packet.reports]
                )
        pending = self._pending_connect
        if pending is not None and isinstance(packet, hci.HCI_LE_Connection_Complete_Event):
            self.connect_params[packet.peer_address] = pending
            return dataclasses.replace(
                packet,
                connection_interval=pending.interval,
                peripheral_latency=pending.latency,
                supervision_timeout=pending.timeout,
            )
        return packet

    def _scan_data(self, report: Any, is_scan_response: bool) -> Any:
        if not is_scan_response or self._scan_response is None:
            return report
        return dataclasses.replace(report, data=self._scan_response)

    # --- power ---------------------------------------------------------------------------------

    def go_dark(self) -> None:
        """The board lost power or reset: its peers time out, its controller leaves the air."""
        self.le_legacy_advertiser.stop()
        for advertising_set in self.advertising_sets.values():
            advertising_set.stop()
        for connection in list(self.le_connections.values()):
            with contextlib.suppress(Exception):
                connection.send_ll_control_pdu(ll.TerminateInd(CONNECTION_TIMEOUT))
        self.le_connections.clear()
        with contextlib.suppress(KeyError):
            self.link.remove_controller(self)


class _HciClient(asyncio.Protocol):
    """One host on the farm's link: H4 HCI on a TCP socket, a FarmController behind it."""

    def __init__(self, radio: BleRadio) -> None:
        self.radio = radio
        self.controller: FarmController | None = None
        self.transport: asyncio.Transport | None = None
        self.parser: PacketParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.radio.clients += 1
        self.controller = FarmController(f"host-{self.radio.clients}", self.radio.link)
        self.controller.host = self  # controller -> host: on_packet below
        self.parser = PacketParser(self.controller)

    def on_packet(self, packet: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(packet)

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.controller is not None:
            self.controller.go_dark()
        self.transport = None


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.info("BLE: %s", future.exception())


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("BLE: %s", task.exception())


class BleRadio:
    """The farm's link, its HCI server for hosts, and the loop everything bumble runs on."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.clients = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ble-radio", daemon=True)
        self._server: asyncio.Server | None = None
        self.link: LocalLink

    @property
    def moniker(self) -> str:
        """The bumble transport name a host opens to join the link."""
        return f"tcp-client:{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self._server = await self.loop.create_server(lambda: _HciClient(self), self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("BLE link: hosts join with %s", self.moniker)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        """Run ``coro`` on the radio's loop and wait for its result (from any other thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the radio's loop, without waiting; its failure is only logged."""
        if self.loop.is_closed():
            coro.close()
            return
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(_log_failure)

    def spawn_at(self, when: float, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``make()`` on the radio's loop at ``when`` (the loop's clock, time.monotonic);
        its failure is only logged."""

        def start() -> None:
            task = self.loop.create_task(make())
            task.add_done_callback(_log_task_failure)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.call_at, when, start)

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the radio's loop soon, without waiting."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            self.call(close(), timeout_s=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
