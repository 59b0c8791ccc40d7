"""A minimal SMP-over-GATT peripheral on an in-process bumble ``LocalLink``, for host tests.

It is what Zephyr's smp_bt.c serves (service 8D53DC1D-..., characteristic DA2E7828-..., write
without response in, notifications out, messages reassembled by the SMP header's length) in
front of the virtual farm's own SMP server pieces (SmpDispatcher, UploadReceiver, ImageState on
a NorFlash), so every answer is the SMP bytes the virtual board would send. Its ATT MTU is the
smp_svr Bluetooth overlay's (CONFIG_BT_L2CAP_TX_MTU=498) unless a test asks for another, and it
records every write and notification so tests can see the framing.

The host under test joins the same link through :func:`host_hci` (a controller of its own on
the link, as a dongle would be on the air).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bumble import att
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink, Transport
from bumble.transport.tcp_server import open_tcp_server_transport_with_socket
from bumble.utils import cancel_on_event
from smpfarm import CHIP, GEOMETRY

from dfuhil.formats.smp import Group, ImageCmd, OsCmd, SmpHeader
from dfuhil.links.smp_ble import SMP_CHARACTERISTIC_UUID, SMP_SERVICE_UUID, Reassembler
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.flash import NorFlash
from dfuhil.sim.smp.img_state import ImageState
from dfuhil.sim.smp.server import SmpDispatcher
from dfuhil.sim.smp.upload import ZEPHYR_UPLOAD, UploadReceiver

ZEPHYR_MTU = 498  # smp_svr overlay-bt.conf: CONFIG_BT_L2CAP_TX_MTU
# smp_svr's Bluetooth overlay with reassembly: CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE=2475.
NETBUF_SIZE = 2475
NETBUF_COUNT = 4


class _Flash:
    """The FlashPort the server pieces take, over a NorFlash with nRF52840 geometry."""

    def __init__(self) -> None:
        self.nor = NorFlash(
            base=0,
            size=0x40000,
            page_size=CHIP.page_size,
            timing=CHIP.timing,
            clock=VirtualClock(1e-6),
        )

    def read(self, address: int, length: int) -> bytes:
        return self.nor.read(address, length)

    def flash_write(self, address: int, data: bytes) -> None:
        self.nor.write(address, data)

    def flash_erase_page(self, address: int) -> None:
        self.nor.erase_page(address)


def smp_server(buf_size: int = NETBUF_SIZE) -> tuple[SmpDispatcher, _Flash]:
    """The virtual app's SMP commands a host needs: echo, params, image state, upload."""
    flash = _Flash()
    images = ImageState(flash, GEOMETRY, 0, page_size=CHIP.page_size)
    upload = UploadReceiver(
        flash,
        ZEPHYR_UPLOAD,
        lambda request: images.upload_slot(),
        page_size=CHIP.page_size,
        trailer_start=lambda slot: GEOMETRY.layout(slot).status_start,
        running_version=images.running_version,
    )
    d = SmpDispatcher("v2")

    def echo(body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        return {"r": body.get("d", "")}

    def params(_body: dict[str, Any], _h: SmpHeader) -> dict[str, Any]:
        return {"buf_size": buf_size, "buf_count": NETBUF_COUNT}

    d.register(Group.OS, OsCmd.ECHO, write=echo)
    d.register(Group.OS, OsCmd.MCUMGR_PARAMS, read=params)
    d.register(Group.IMAGE, ImageCmd.STATE, read=lambda body, h: images.state_list())
    d.register(Group.IMAGE, ImageCmd.UPLOAD, write=upload.handle)
    return d, flash


def _controller_transport(link: LocalLink, name: str, address: str) -> Transport:
    controller = Controller(name, link=link, public_address=address)
    return Transport(controller, AsyncPipeSink(controller))


def host_hci(link: LocalLink, address: str = "00:00:00:00:00:01") -> Any:
    """An HCI opener for BleTransport: a controller of the host's own on ``link``."""

    async def opener() -> Transport:
        return _controller_transport(link, "host", address)

    return opener


@dataclass
class BlePeer:
    """One advertising board on ``link``; ``start()`` powers it on and advertises."""

    link: LocalLink
    name: str = "dfuhil-smp"
    address: str = "C0:11:22:33:44:55"
    mtu: int = ZEPHYR_MTU
    refuse_mtu: bool = False
    serve_smp: bool = True
    buf_size: int = NETBUF_SIZE
    drop_at_write: int | None = None  # the link drops when this write (1-based) arrives
    writes: list[bytes] = field(default_factory=list)
    notifications: list[bytes] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)  # whole SMP messages reassembled

    async def start(self) -> None:
        self.dispatcher, self.flash = smp_server(self.buf_size)
        hci = _controller_transport(self.link, f"peer-{self.name}", self.address)
        host = Host(hci.source, hci.sink)
        self.device = Device(name=self.name, address=Address(self.address), host=host)
        self.device.gatt_server.max_mtu = self.mtu
        if self.refuse_mtu:
            self.device.gatt_server.on_att_exchange_mtu_request = self._refuse_mtu  # type: ignore[method-assign]
        self._reassembly = Reassembler()
        self._writer: Connection | None = None
        self._dropped: Connection | None = None
        self.characteristic = Characteristic(
            SMP_CHARACTERISTIC_UUID,
            Characteristic.Properties.WRITE_WITHOUT_RESPONSE | Characteristic.Properties.NOTIFY,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_write),
        )
        if self.serve_smp:
            self.device.add_service(Service(SMP_SERVICE_UUID, [self.characteristic]))
        await self.device.power_on()
        await self.device.start_advertising(
            auto_restart=True,
            # Zephyr's fast advertising (BT_GAP_ADV_FAST_INT_MIN_2/MAX_2), as smp_svr uses.
            advertising_interval_min=100.0,
            advertising_interval_max=150.0,
            advertising_data=bytes(
                AdvertisingData(
                    [
                        (AdvertisingData.FLAGS, bytes([0x06])),
                        (
                            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                            UUID(SMP_SERVICE_UUID).to_bytes(),
                        ),
                        # bumble's virtual controller answers a scan request with the
                        # advertising data, not the scan response: the name goes in both.
                        (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                    ]
                )
            ),
            scan_response_data=bytes(
                AdvertisingData([(AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode())])
            ),
        )

    async def drop(self) -> None:
        """End every connection, as a reset does (advertising resumes on its own)."""
        for connection in list(self.device.connections.values()):
            await connection.disconnect()

    def _refuse_mtu(self, bearer: Any, request: att.ATT_Exchange_MTU_Request) -> None:
        self.device.gatt_server.send_response(
            bearer,
            att.ATT_Error_Response(
                request_opcode_in_error=request.op_code,
                attribute_handle_in_error=0,
                error_code=att.ATT_REQUEST_NOT_SUPPORTED_ERROR,
            ),
        )

    def _on_write(self, connection: Connection, value: bytes) -> None:
        if connection is self._dropped:  # what the host sent after the link broke never arrives
            return
        if connection is not self._writer:  # smp_bt drops a partial message at disconnection
            self._writer = connection
            self._reassembly.clear()
        self.writes.append(bytes(value))
        if len(self.writes) == self.drop_at_write:  # out of range, mid-message: lost
            self._dropped = connection
            asyncio.get_running_loop().create_task(connection.disconnect())
            return
        for message in self._reassembly.feed(bytes(value)):
            self.requests.append(message)
            answer = self.dispatcher.handle(message)
            if answer is not None:
                cancel_on_event(connection, "disconnection", self._notify(connection, answer))

    async def _notify(self, connection: Connection, answer: bytes) -> None:
        step = connection.att_mtu - 3
        for offset in range(0, len(answer), step):
            part = answer[offset : offset + step]
            self.notifications.append(part)
            await self.device.notify_subscriber(connection, self.characteristic, part)


async def serve_hci(link: LocalLink) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A controller on ``link`` whose HCI is served on a loopback TCP port, as a dongle's would
    be on its USB port: another process opens it with ``--hci tcp-client:127.0.0.1:PORT``.
    Returns that name and the coroutine function that stops listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = await open_tcp_server_transport_with_socket(sock)
    Controller("host-over-tcp", host_source=server.source, host_sink=server.sink, link=link)

    async def close() -> None:
        await server.close()
        listener = getattr(server, "server", None)  # bumble's close() keeps the socket open
        if listener is not None:
            listener.close()
            await listener.wait_closed()

    return f"tcp-client:127.0.0.1:{port}", close
