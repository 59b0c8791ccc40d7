"""A virtual board's Bluetooth LE side: Zephyr's SMP GATT service on a bumble Device.

The board owns one ``BlePeripheral`` (its radio); the SMP app powers it up while it runs
(``start``) and every reset or power cut takes it down (``stop``: advertising ends, the central
sees the link time out). Like Zephyr's smp_svr it advertises connectable with flags and the SMP
service UUID in the advertising data and CONFIG_BT_DEVICE_NAME in the scan response, and serves
service 8D53DC1D-1DB7-4CD3-868B-8A527460AA84 with characteristic
DA2E7828-FBCE-4E01-AE9E-261174997C48 (write without response, notify) as
``subsys/mgmt/mcumgr/transport/src/smp_bt.c`` does.

The link model (``ble_link``) paces the traffic in device time: each write is handed to the
firmware (``receive``) only once its LL packets would have arrived, and ``notify`` returns only
once its notification would be on the air.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bumble import hci
from bumble.att import ATT_Error, ErrorCode
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service

from dfuhil.formats.ble_link import LinkConfig
from dfuhil.sim.ble_link import ATT_NOTIFY_HEADER, AirPacer, LinkState, data_length
from dfuhil.sim.ble_radio import BleRadio, FarmController

if TYPE_CHECKING:
    from dfuhil.sim.clock import VirtualClock

SMP_SERVICE_UUID = "8D53DC1D-1DB7-4CD3-868B-8A527460AA84"
SMP_CHARACTERISTIC_UUID = "DA2E7828-FBCE-4E01-AE9E-261174997C48"
REMOTE_USER_TERMINATED = 0x13
ADV_INTERVAL_MS = 100  # BT_LE_ADV_CONN_FAST_1: 100..150 ms


@dataclass(frozen=True)
class BleIdentity:
    """How the board shows itself on the air."""

    name: str
    address: str  # bumble's form: AA:BB:CC:DD:EE:FF, /P for a public address


@dataclass(frozen=True)
class Write:
    """One ATT write of the SMP characteristic, as the firmware gets it."""

    connection: int
    value: bytes
    arrives_s: float  # device time its last LL packet is in
    since: float | None = None  # when its connection was made: a handle is used again later


def static_address(ficr_deviceaddr0: int, ficr_deviceaddr1: int) -> str:
    """The random static address an nRF5 Zephyr build uses: FICR DEVICEADDR, top bits 11."""
    raw = ((ficr_deviceaddr1 & 0xFFFF) << 32 | ficr_deviceaddr0) | (0b11 << 46)
    return ":".join(f"{b:02X}" for b in raw.to_bytes(6, "big"))


def _read_not_permitted(_connection: Connection | None) -> bytes:
    """smp_bt.c's characteristic has write permission only: a read is refused."""
    raise ATT_Error(ErrorCode.READ_NOT_PERMITTED)


class BlePeripheral:
    def __init__(
        self,
        radio: BleRadio,
        identity: BleIdentity,
        config: LinkConfig,
        clock: VirtualClock,
        log: logging.Logger,
    ) -> None:
        self.radio = radio
        self.identity = identity
        self.config = config
        self.clock = clock
        self.log = log
        self.writes: queue.Queue[Write] = queue.Queue()
        self._lock = threading.Lock()
        self._device: Device | None = None
        self._controller: FarmController | None = None
        self._characteristic: Characteristic[bytes] | None = None
        self._connections: dict[int, Connection] = {}
        self.pacers: dict[int, AirPacer] = {}
        self.connected_at: dict[int, float] = {}  # handle -> device time of the connection
        self._drop_after: int | None = None
        self._last_notify: dict[int, float] = {}  # handle -> loop time of its last notification
        self.connections_made = 0

    def describe(self) -> dict[str, object]:
        """Name, address, whether it is on the air, and each connection's link state."""
        with self._lock:
            on_air = self._controller is not None
            links = {str(h): p.state.describe() for h, p in self.pacers.items()}
        return {
            "name": self.identity.name,
            "address": self.identity.address,
            "on_air": on_air,
            "links": links,
        }

    # --- power ------------------------------------------------------------------------------

    def start(self) -> None:
        """bt_enable and advertise (the SMP app runs)."""
        self.stop()
        self.writes = queue.Queue()
        self.radio.call(self._start())
        self.log.info(
            "BLE: advertising %r as %s (connectable, SMP service in the advertising data)",
            self.identity.name,
            self.identity.address,
        )

    def stop(self) -> None:
        """Reset or power cut: the radio goes silent at once."""
        with self._lock:
            controller, self._controller = self._controller, None
            self._device = None
            self._connections.clear()
            self.pacers.clear()
            self.connected_at.clear()
        if controller is not None:
            self.radio.submit(controller.go_dark)
            self.log.info("BLE: radio off (advertising stopped, links dropped)")

    async def _start(self) -> None:
        controller = FarmController(self.identity.name, self.radio.link)
        address = hci.Address(self.identity.address)
        device = Device.with_hci(self.identity.name, address, controller, controller)
        device.gatt_server.max_mtu = self.config.att_mtu
        characteristic: Characteristic[bytes] = Characteristic(
            SMP_CHARACTERISTIC_UUID,
            Characteristic.Properties.WRITE_WITHOUT_RESPONSE | Characteristic.Properties.NOTIFY,
            Characteristic.WRITEABLE,
            CharacteristicValue(read=_read_not_permitted, write=self._on_write),
        )
        device.add_service(Service(SMP_SERVICE_UUID, [characteristic]))
        device.on(device.EVENT_CONNECTION, self._on_connection)
        await device.power_on()
        advertising = AdvertisingData(
            [
                (AdvertisingData.FLAGS, bytes([0x06])),  # LE general discoverable, no BR/EDR
                (
                    AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                    bytes(UUID(SMP_SERVICE_UUID)),
                ),
            ]
        )
        scan_response = AdvertisingData(
            [(AdvertisingData.COMPLETE_LOCAL_NAME, self.identity.name.encode())]
        )
        await device.start_advertising(
            own_address_type=(
                hci.OwnAddressType.PUBLIC
                if address.address_type == hci.Address.PUBLIC_DEVICE_ADDRESS
                else hci.OwnAddressType.RANDOM
            ),
            auto_restart=True,
            advertising_data=bytes(advertising),
            scan_response_data=bytes(scan_response),
            advertising_interval_min=ADV_INTERVAL_MS,
            advertising_interval_max=ADV_INTERVAL_MS,
        )
        with self._lock:
            self._device, self._controller, self._characteristic = (
                device,
                controller,
                characteristic,
            )

    # --- connection ---------------------------------------------------------------------------

    def _on_connection(self, connection: Connection) -> None:
        controller = self._controller
        params = controller.connect_params.get(connection.peer_address) if controller else None
        interval = params.interval if params else 24
        state = LinkState(  # ATT MTU 23 until the central exchanges MTUs
            interval=interval,
            latency=params.latency if params else 0,
            timeout=params.timeout if params else 42,
            data_length=data_length(self.config),
        )
        pacer = AirPacer(state, self.clock.now(), self.config.event_length_us)
        with self._lock:
            self._connections[connection.handle] = connection
            self.pacers[connection.handle] = pacer
            self.connected_at[connection.handle] = self.clock.now()
            self.connections_made += 1
        self.log.info("BLE: connected to %s: %s", connection.peer_address, state.describe())

        def on_mtu(mtu: int) -> None:
            self.set_state(connection.handle, mtu=mtu, why="ATT MTU exchange")

        def on_disconnection(reason: int) -> None:
            with self._lock:
                self._connections.pop(connection.handle, None)
                self.pacers.pop(connection.handle, None)
                self.connected_at.pop(connection.handle, None)
            self.log.info(
                "BLE: disconnected from %s (reason 0x%02X)", connection.peer_address, reason
            )

        connection.on(
            connection.EVENT_CONNECTION_ATT_MTU_UPDATE, lambda: on_mtu(connection.att_mtu)
        )
        connection.on(connection.EVENT_DISCONNECTION, on_disconnection)

    def set_state(
        self,
        handle: int,
        *,
        mtu: int | None = None,
        interval: int | None = None,
        latency: int | None = None,
        timeout: int | None = None,
        why: str,
    ) -> LinkState | None:
        """The connection's parameters change (an exchange or an update): log and repace."""
        with self._lock:
            pacer = self.pacers.get(handle)
        if pacer is None:
            return None
        old = pacer.state
        new = LinkState(
            interval=old.interval if interval is None else interval,
            latency=old.latency if latency is None else latency,
            timeout=old.timeout if timeout is None else timeout,
            att_mtu=old.att_mtu if mtu is None else min(mtu, self.config.att_mtu),
            data_length=old.data_length,
        )
        if new != old:
            pacer.update(new, self.clock.now())
            self.log.info("BLE: %s: %s", why, new.describe())
        return new

    def current(self, write: Write) -> bool:
        """Whether ``write``'s connection is still up: the LL packets of a write still on the
        air when its link dropped never arrive."""
        with self._lock:
            return self.connected_at.get(write.connection) == write.since

    def state(self, handle: int) -> LinkState | None:
        with self._lock:
            pacer = self.pacers.get(handle)
        return pacer.state if pacer is not None else None

    def _on_write(self, connection: Connection, value: Any) -> None:
        data = bytes(value)
        with self._lock:
            pacer = self.pacers.get(connection.handle)
            drop_after = self._drop_after
        if pacer is None:
            return
        arrives = pacer.received(len(data) + ATT_NOTIFY_HEADER, self.clock.now())
        since = self.connected_at.get(connection.handle)
        self.writes.put(Write(connection.handle, data, arrives, since))
        if drop_after is not None and pacer.bytes_rx >= drop_after:
            self._drop_after = None
            self.log.info("BLE: fault lever: dropping the link after %d bytes", pacer.bytes_rx)
            self._disconnect(connection)

    # --- firmware side ------------------------------------------------------------------------

    def notify(self, handle: int, value: bytes, now_s: float) -> float | None:
        """Queue one notification at device time ``now_s``; the device time it is out, or
        None if the link is gone."""
        with self._lock:
            device, characteristic = self._device, self._characteristic
            connection = self._connections.get(handle)
            pacer = self.pacers.get(handle)
        if device is None or characteristic is None or connection is None or pacer is None:
            return None
        done = pacer.sent(len(value) + ATT_NOTIFY_HEADER, now_s)
        # The central has it when it is on the air, not before (it answers at once), and the
        # notifications of one connection reach it in order.
        when = time.monotonic() + self.clock.wall(max(0.0, done - self.clock.now()))
        with self._lock:
            when = max(when, self._last_notify.get(handle, 0.0) + 1e-6)
            self._last_notify[handle] = when
        self.radio.spawn_at(
            when, lambda: device.notify_subscriber(connection, characteristic, value)
        )
        return done

    def drop(self, after_bytes: int | None = None) -> bool:
        """The fault lever: end every connection now, or once ``after_bytes`` more were written."""
        with self._lock:
            connections = list(self._connections.values())
            pacers = list(self.pacers.values())
        if after_bytes is not None:
            base = max((p.bytes_rx for p in pacers), default=0)
            self._drop_after = base + after_bytes
            self.log.info("BLE: fault lever: drop the link after %d more bytes", after_bytes)
            return True
        for connection in connections:
            self._disconnect(connection)
        return bool(connections)

    def _disconnect(self, connection: Connection) -> None:
        device = self._device
        if device is None:
            return
        self.radio.spawn(connection.disconnect(REMOTE_USER_TERMINATED))
