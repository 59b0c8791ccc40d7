"""SMP over the board's Bluetooth LE link, as the virtual SMP app's transport (``smp_bt.c``).

``BleSmpPort.serve`` runs in one of the app's threads: it takes each write once the link model
says it has arrived, reassembles SMP packets (CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY: the 8-byte
header's length says where a packet ends; without reassembly every write must be one whole
packet) and hands them to the app's SMP work queue. ``reply`` sends an answer as notifications
of at most ATT MTU - 3 bytes (``smp_bt_tx_pkt``); the SMP work queue goes on once they are out.

It also plays the stack's connection parameter policy (``ble_link.LinkConfig``): Zephyr asks
for its preferred parameters 5 s after connecting when the central's are outside them; its
CONN_PARAM_CONTROL asks for 7.5..11.25 ms while SMP runs and for the preferred parameters after
5 s without it; nRF Desktop's latency module asks for latency 0 while an upload runs and for its
default latency after 5 s without one. The virtual central accepts every request (bumble's
Device accepts a peripheral's connection parameter update request) and the board's link model
takes the new values from the next event; the board log names each change.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import TYPE_CHECKING

from dfuhil.formats.ble_link import LinkConfig
from dfuhil.formats.smp import Group, ImageCmd, SmpHeader
from dfuhil.sim.ble_link import ATT_NOTIFY_HEADER
from dfuhil.sim.ble_peripheral import BlePeripheral, Write
from dfuhil.sim.netbufs import NetbufPool

if TYPE_CHECKING:
    from dfuhil.sim.runtime import FirmwareContext

AUTO_UPDATE_S = 5.0  # CONFIG_BT_CONN_PARAM_UPDATE_TIMEOUT
RESTORE_S = 5.0  # CONN_PARAM_CONTROL_RESTORE_TIME, nRF Desktop's LOW_LATENCY_CHECK_PERIOD
_POLL_S = 0.5  # device seconds between looks at the restore timers


class BleSmpPort:
    def __init__(
        self,
        ctx: FirmwareContext,
        peripheral: BlePeripheral,
        config: LinkConfig,
        buf_size: int,
        netbufs: NetbufPool,
    ) -> None:
        self.ctx = ctx
        self.peripheral = peripheral
        self.config = config
        self.buf_size = buf_size
        # The app's MCUmgr netbufs, shared with its other transports: a packet holds one from
        # its first write until it has been answered.
        self.netbufs = netbufs
        # packets being reassembled, per connection (its handle and when it was made)
        self._partial: dict[tuple[int, float | None], bytearray] = {}
        self._smp_until: dict[int, float] = {}  # connection -> when SMP params are restored
        self._upload_until: dict[int, float] = {}  # connection -> when latency is raised again
        self._auto_done: set[int] = set()  # connections past CONFIG_BT_CONN_PARAM_UPDATE_TIMEOUT

    def serve(self, submit: Callable[[int, bytes], None]) -> None:
        """Collect packets until reset; ``submit(connection, packet)`` queues one for the app."""
        ctx = self.ctx
        while True:
            ctx.checkpoint()
            try:
                write = self.peripheral.writes.get(timeout=ctx.board.clock.wall(_POLL_S))
            except queue.Empty:
                self._restore_idle()
                continue
            wait = write.arrives_s - ctx.now()
            if wait > 0:
                ctx.sleep(wait)
            self._drop_stale()
            if not self.peripheral.current(write):
                continue  # the link dropped before this write was in
            packet = self._collect(write)
            if packet is not None:
                self._on_smp(write.connection, packet)
                submit(write.connection, packet)
            self._restore_idle()

    def _drop_stale(self) -> None:
        """smp_bt's disconnection callback: the packet being reassembled is dropped."""
        live = dict(self.peripheral.connected_at)
        for key in [k for k in self._partial if live.get(k[0]) != k[1]]:
            del self._partial[key]
            self.netbufs.release()

    def _collect(self, write: Write) -> bytes | None:
        """A whole packet once its last write is in; None while it grows or when it is dropped
        (smp_reassembly_collect: no free netbuf at its first write (-ENOMEM: the write is
        lost, the next one starts a packet of its own), longer than the netbuf, or overrun)."""
        key = (write.connection, write.since)
        if key not in self._partial and not self.netbufs.take():
            self.ctx.log(f"SMP BLE: {self.netbufs.refusal()}: a write dropped")
            return None
        if not self.config.reassembly:
            return write.value  # a packet is one write (its netbuf taken above)
        buf = self._partial.setdefault(key, bytearray())
        buf += write.value
        if len(buf) < SmpHeader.SIZE:
            return None
        expected = SmpHeader.SIZE + SmpHeader.unpack(bytes(buf[: SmpHeader.SIZE])).length
        if expected > self.buf_size or len(buf) > expected:
            self.ctx.log(
                f"SMP BLE: dropped a packet of {len(buf)}/{expected} bytes (netbuf {self.buf_size})"
            )
            del self._partial[key]
            self.netbufs.release()
            return None
        if len(buf) < expected:
            return None
        del self._partial[key]
        return bytes(buf)

    def reply(self, connection: int, packets: list[bytes]) -> None:
        """Notify each answer in ATT MTU - 3 pieces, all handed to the controller at once (its
        ACL buffers), and return once the last one is on the air."""
        ctx = self.ctx
        now = ctx.now()
        last: float | None = None
        for packet in packets:
            state = self.peripheral.state(connection)
            if state is None:
                return  # the central went away: smp_bt_tx_pkt drops the answer
            size = state.att_mtu - ATT_NOTIFY_HEADER
            for start in range(0, len(packet), size):
                last = self.peripheral.notify(connection, packet[start : start + size], now)
                if last is None:
                    return
        if last is not None and last > ctx.now():
            ctx.sleep(last - ctx.now())

    # --- connection parameter policy --------------------------------------------------------

    def _on_smp(self, connection: int, packet: bytes) -> None:
        config = self.config
        now = self.ctx.now()
        if config.smp_conn_param_control:
            if connection not in self._smp_until:
                self.peripheral.set_state(
                    connection,
                    interval=config.smp_min_interval,
                    latency=config.smp_latency,
                    timeout=self._timeout(config.smp_latency, config.smp_max_interval),
                    why="SMP connection parameters (CONN_PARAM_CONTROL) requested and accepted",
                )
            self._smp_until[connection] = now + config.smp_restore_ms / 1000
        header = SmpHeader.unpack(packet[: SmpHeader.SIZE])
        if config.latency_request and (header.group, header.command_id) == (
            Group.IMAGE,
            ImageCmd.UPLOAD,
        ):
            if connection not in self._upload_until:
                self.peripheral.set_state(
                    connection,
                    latency=0,
                    why="SMP transfer: nRF Desktop's latency module lowered the latency",
                )
            self._upload_until[connection] = now + RESTORE_S

    def _timeout(self, latency: int, max_interval: int) -> int:
        """A supervision timeout the request may carry: Zephyr's stock one when it fits."""
        state_min = (1 + latency) * max_interval * 2 // 8 + 1  # > (1 + latency) * interval * 2
        return max(self.config.pref_timeout, state_min)

    def _restore_idle(self) -> None:
        now = self.ctx.now()
        config = self.config
        for connection, since in list(self.peripheral.connected_at.items()):
            if connection in self._auto_done or now < since + AUTO_UPDATE_S:
                continue
            self._auto_done.add(connection)
            state = self.peripheral.state(connection)
            if not config.auto_update or state is None or connection in self._smp_until:
                continue
            inside = config.pref_min_interval <= state.interval <= config.pref_max_interval
            if not inside or state.latency != config.pref_latency:
                self.peripheral.set_state(
                    connection,
                    interval=config.pref_min_interval if not inside else state.interval,
                    latency=config.pref_latency,
                    timeout=config.pref_timeout,
                    why="the peripheral's preferred parameters requested and accepted",
                )
        for connection, until in list(self._smp_until.items()):
            if now >= until:
                del self._smp_until[connection]
                self.peripheral.set_state(
                    connection,
                    interval=config.pref_min_interval,
                    latency=config.pref_latency,
                    timeout=config.pref_timeout,
                    why="SMP idle: preferred connection parameters restored",
                )
        for connection, until in list(self._upload_until.items()):
            if now >= until:
                del self._upload_until[connection]
                self.peripheral.set_state(
                    connection,
                    latency=config.default_latency,
                    why="no SMP transfer for 5 s: nRF Desktop's latency module raised the latency",
                )
