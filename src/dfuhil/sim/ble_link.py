"""The Bluetooth LE link as a virtual board's controller would carry it: how long bytes take.

bumble's virtual link delivers instantly; a real link moves LL packets only at connection
events. This model paces a virtual board's SMP traffic in device time:

- connection events every ``interval``; each carries up to ``packets_per_event`` LL packets
  each way, as many as fit the controller's event length at 1M PHY (time on air of a data PDU
  with ``data_length`` payload octets, its empty acknowledgement and two inter-frame spaces);
- an ATT PDU of n bytes (opcode and handle included) travels with its 4-byte L2CAP header in
  ceil((n + 4) / data_length) LL packets;
- peripheral latency: an idle peripheral listens only every ``latency + 1`` events, so a
  request written to an idle link waits for the next event it listens to; while data flows
  (either way) it listens at every event.

The build's settings (stock by default) are ``LinkConfig`` (dfuhil.formats.ble_link).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from dfuhil.formats.ble_link import LinkConfig

UNIT_S = 0.00125  # connection interval unit
L2CAP_HEADER = 4
ATT_NOTIFY_HEADER = 3  # opcode + handle: bt_gatt_get_mtu(conn) - BT_GATT_MESSAGE_OVERHEAD
US = 1e-6
T_IFS_US = 150
EMPTY_PDU_US = 80  # preamble, access address, header, CRC at 1M PHY
PDU_OVERHEAD_OCTETS = 10  # preamble 1 + access address 4 + header 2 + CRC 3


@dataclass(frozen=True)
class LinkState:
    """The connection's parameters as negotiated now."""

    interval: int  # 1.25 ms units
    latency: int
    timeout: int  # 10 ms units
    att_mtu: int = 23
    data_length: int = 27

    @property
    def interval_s(self) -> float:
        return self.interval * UNIT_S

    def describe(self) -> str:
        return (
            f"interval {self.interval * 1.25:g} ms, peripheral latency {self.latency}, "
            f"supervision timeout {self.timeout * 10} ms, ATT MTU {self.att_mtu}, "
            f"data length {self.data_length}, {packets_per_event(self)} packets per event"
        )


def packets_per_event(state: LinkState, event_length_us: int = 7500) -> int:
    """LL data packets each way that fit one connection event (1M PHY, no encryption)."""
    pair_us = (PDU_OVERHEAD_OCTETS + state.data_length) * 8 + T_IFS_US + EMPTY_PDU_US + T_IFS_US
    window_us = min(event_length_us, state.interval * 1250)
    return max(1, int(window_us // pair_us))


def ll_packets(att_bytes: int, data_length: int) -> int:
    return math.ceil((att_bytes + L2CAP_HEADER) / data_length)


def bound_bytes_per_s(state: LinkState, event_length_us: int = 7500) -> float:
    """The link's ceiling for SMP bytes one way: full ATT values (MTU - 3) in every packet of
    every connection event, none skipped."""
    values_per_event = packets_per_event(state, event_length_us) / ll_packets(
        state.att_mtu, state.data_length
    )
    return (state.att_mtu - ATT_NOTIFY_HEADER) * values_per_event / state.interval_s


def data_length(config: LinkConfig, central_max: int = 251) -> int:
    """The LL payload both sides settle on (Zephyr's CONFIG_BT_AUTO_DATA_LEN_UPDATE asks for
    its maximum at connection; the central's controller grants up to its own)."""
    return max(27, min(config.data_length, central_max))


class AirPacer:
    """When the LL packets of each write and each notification are on the other side."""

    def __init__(self, state: LinkState, anchor_s: float, event_length_us: int = 7500) -> None:
        self.state = state
        self.anchor_s = anchor_s
        self.event_length_us = event_length_us
        self._lock = threading.Lock()
        self._last_active = 0  # last event the peripheral listened at (the first one is)
        self._cursor = {"rx": (0, 0), "tx": (0, 0)}  # (event index, packets used in it)
        self.bytes_rx = 0

    def update(self, state: LinkState, now_s: float) -> None:
        """New parameters from the next event on (the instant of an LL update)."""
        with self._lock:
            here = self._event_at(now_s)
            self.anchor_s = self._event_time(here)
            self._last_active = 0  # both sides are at the update's instant
            self._cursor = {
                k: (0, 0) if e >= here else (-1, 0) for k, (e, _) in self._cursor.items()
            }
            self.state = state

    def _event_time(self, index: int) -> float:
        return self.anchor_s + index * self.state.interval_s

    def _event_at(self, t: float) -> int:
        return max(0, math.ceil((t - self.anchor_s) / self.state.interval_s - 1e-9))

    def received(self, att_bytes: int, now_s: float) -> float:
        """A write of ``att_bytes`` queued in the central at ``now_s``: when it is in."""
        with self._lock:
            self.bytes_rx += att_bytes
            first = self._first("rx", now_s)
            if first > self._last_active + 1:  # idle: the peripheral sleeps through latency
                period = self.state.latency + 1
                skipped = max(0, math.ceil((first - self._last_active) / period) * period)
                first = max(first, self._last_active + skipped)
            return self._carry("rx", first, ll_packets(att_bytes, self.state.data_length))

    def sent(self, att_bytes: int, now_s: float) -> float:
        """A notification of ``att_bytes`` handed to the controller at ``now_s``: when it is
        out (a peripheral with data to send listens at the next event)."""
        with self._lock:
            first = self._first("tx", now_s)
            return self._carry("tx", first, ll_packets(att_bytes, self.state.data_length))

    def _pair_s(self) -> float:
        pdu_us = (PDU_OVERHEAD_OCTETS + self.state.data_length) * 8
        return (pdu_us + 2 * T_IFS_US + EMPTY_PDU_US) * US

    def _first(self, way: str, now_s: float) -> int:
        """The event a packet queued at ``now_s`` can go in: the current one while it has room
        and the packets before were still in it, else the next."""
        event, used = self._cursor[way]
        if used and now_s <= self._event_time(event) + used * self._pair_s() + 1e-6:
            return event
        return max(self._event_at(now_s), event)

    def _carry(self, way: str, first: int, packets: int) -> float:
        per_event = packets_per_event(self.state, self.event_length_us)
        event, used = self._cursor[way]
        if event != first:
            event, used = first, 0
        while True:
            take = min(per_event - used, packets)
            packets -= take
            used += take
            if packets == 0:
                break
            event, used = event + 1, 0
        self._cursor[way] = (event, used) if used < per_event else (event + 1, 0)
        self._last_active = max(self._last_active, event)
        return self._event_time(event) + used * self._pair_s()
