"""The DFU radio TX slots: what decides when (and whether) a mesh node puts a packet on air.

The DFU core never transmits directly; it fills a slot with a packet, a repeat count and an
interval type, and the slot fires on its own schedule (bl_radio_interval_type_t). Slot 0 is the
beacon (FWID, STATE, DATA_REQ); slots 1..N-1 are a round-robin pool for relayed DATA/START and
DATA_RSP (dfu_mesh.c packet_tx_dynamic). Filling a pool slot that is still busy kills the packet
in it ("Killing a TX slot prematurely"): when a host feeds DATA faster than the pool drains, relays
lose their repeats or never go out at all. That is the loss a too-fast host causes on a real mesh,
and the counters here make it visible.

The two firmwares space their repeats differently; both schedules are taken from the SDK:

* Application, mesh/dfu/src/nrf_mesh_dfu.c (NRF_MESH_DFU_TX_SLOTS = 8): a slot is ordered
  1 ms + rand(0..65.535 ms) after it is filled; transmit k happens at
  order + 100 ms × (2^k − 1) (EXPONENTIAL), order + 100 ms × k (REGULAR) or
  order + 10 s × k (REGULAR_SLOW), plus a fresh rand(0..65.535 ms) per transmit after the
  first. A transmit is skipped (but counted) when the same DATA was heard twice since the last one
  (DFU_TX_REDUNDANCY_MAX = 2).
* Bootloader, mesh/bootloader/src/transport.c (TRANSPORT_TX_SLOTS = 8, INTERVAL = 3277 RTC ticks
  = 100 ms): EXPONENTIAL transmit k at I × (2^k − 1) + rand in [I × 2^(k−1), I × 2^k);
  REGULAR at 2I × k + I + rand(0..I); REGULAR_SLOW the same × 10. Skips after 3 redundant
  receptions (REDUNDANCY_MAX).

Repeats 0xFF (TX_REPEATS_INF) never end.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Protocol

from dfuhil.formats.meshdfu import PacketType

REPEATS_INFINITE = 0xFF
TX_SLOTS = 8  # NRF_MESH_DFU_TX_SLOTS (app) and TRANSPORT_TX_SLOTS (bootloader)
BEACON_SLOT = 0


class Interval(IntEnum):
    """bl_radio_interval_type_t."""

    EXPONENTIAL = 0
    REGULAR = 1
    REGULAR_SLOW = 2


@dataclass
class Slot:
    """One periodic transmit."""

    packet: bytes
    repeats: int
    interval: Interval
    order_time: float
    sent: int = 0  # transmits done (or skipped as redundant)
    heard: int = 0  # same packet heard from others since our last transmit
    offset: float = 0.0  # per-transmit randomisation
    next_time: float = 0.0


class TxTiming(Protocol):
    """When a slot's transmits happen; one implementation per firmware."""

    redundancy_max: int

    def order_time(self, now: float, rng: random.Random) -> float: ...

    def next_time(self, slot: Slot, rng: random.Random) -> float: ...


class AppTiming:
    """nrf_mesh_dfu.c (the application's DFU module)."""

    redundancy_max = 2
    MARGIN_S = 0.001  # DFU_TX_TIMER_MARGIN_US
    RANDOM_MASK_US = 0xFFFF  # DFU_TX_DELAY_RANDOMIZATION_MASK_US
    PERIOD_S: ClassVar[dict[Interval, float]] = {
        Interval.EXPONENTIAL: 0.1,  # DFU_TX_INTERVAL_EXPONENTIAL_US
        Interval.REGULAR: 0.1,  # DFU_TX_INTERVAL_REGULAR_US
        Interval.REGULAR_SLOW: 10.0,  # DFU_TX_INTERVAL_REGULAR_SLOW_US
    }

    def _random(self, rng: random.Random) -> float:
        return rng.randint(0, self.RANDOM_MASK_US) * 1e-6

    def order_time(self, now: float, rng: random.Random) -> float:
        return now + self.MARGIN_S + self._random(rng)

    def next_time(self, slot: Slot, rng: random.Random) -> float:
        period = self.PERIOD_S[slot.interval]
        k = slot.sent
        steps = (1 << k) - 1 if slot.interval == Interval.EXPONENTIAL else k
        if k > 0:
            slot.offset = self._random(rng)
        return slot.order_time + period * steps + slot.offset


class BootloaderTiming:
    """transport.c (the serial bootloader's radio transport)."""

    redundancy_max = 3
    INTERVAL_S = 3277 / 32768  # INTERVAL: 3277 ticks of the 32.768 kHz RTC

    def order_time(self, now: float, rng: random.Random) -> float:
        return now

    def next_time(self, slot: Slot, rng: random.Random) -> float:
        unit = self.INTERVAL_S
        k = slot.sent
        if slot.interval == Interval.EXPONENTIAL:
            diff = unit * (1 << k)
            return slot.order_time + unit * ((1 << k) - 1) + diff / 2 + rng.random() * diff / 2
        scale = 10 if slot.interval == Interval.REGULAR_SLOW else 1
        return slot.order_time + scale * unit * (2 * k + 1 + rng.random())


@dataclass
class TxStats:
    """What the slots did; ``killed`` counts relays cut short, ``dropped`` those never sent."""

    transmits: int = 0
    skipped: int = 0
    killed: int = 0
    dropped: int = 0


@dataclass
class TxSlots:
    """The slot table of one node."""

    timing: TxTiming
    rng: random.Random
    count: int = TX_SLOTS
    stats: TxStats = field(default_factory=TxStats)

    def __post_init__(self) -> None:
        self._slots: list[Slot | None] = [None] * self.count
        self._next_dynamic = 1

    def set(self, slot: int, packet: bytes, repeats: int, interval: Interval, now: float) -> None:
        """Fill ``slot`` (replacing whatever it held) and schedule its first transmit."""
        old = self._slots[slot]
        if old is not None:
            self.stats.killed += 1
            if old.sent == 0:
                self.stats.dropped += 1
        entry = Slot(packet, repeats, interval, self.timing.order_time(now, self.rng))
        entry.next_time = self.timing.next_time(entry, self.rng)
        self._slots[slot] = entry

    def dynamic(self, packet: bytes, repeats: int, interval: Interval, now: float) -> None:
        """packet_tx_dynamic: the next pool slot, round robin, busy or not."""
        if self._next_dynamic >= self.count or self._next_dynamic == 0:
            self._next_dynamic = 1
        self.set(self._next_dynamic, packet, repeats, interval, now)
        self._next_dynamic += 1

    def abort(self, slot: int) -> None:
        self._slots[slot] = None

    def busy(self, slot: int) -> bool:
        return self._slots[slot] is not None

    def heard(self, packet: bytes) -> None:
        """A DATA packet (segment > 0) heard on air: our own copy of it may be redundant."""
        key = _data_key(packet)
        if key is None:
            return
        for entry in self._slots:
            if entry is not None and _data_key(entry.packet) == key:
                entry.heard += 1
                return

    def next_time(self) -> float | None:
        times = [s.next_time for s in self._slots if s is not None]
        return min(times) if times else None

    def due(self, now: float) -> list[bytes]:
        """Packets to put on air now; advances every slot that fired."""
        out: list[bytes] = []
        for index, entry in enumerate(self._slots):
            if entry is None or entry.next_time > now:
                continue
            if entry.heard >= self.timing.redundancy_max:
                self.stats.skipped += 1
            else:
                out.append(entry.packet)
                self.stats.transmits += 1
            entry.heard = 0
            entry.sent += 1
            if entry.repeats != REPEATS_INFINITE and entry.sent >= entry.repeats:
                self._slots[index] = None
                continue
            if entry.repeats == REPEATS_INFINITE and entry.sent >= REPEATS_INFINITE:
                entry.order_time, entry.sent = entry.next_time, 0
            entry.next_time = self.timing.next_time(entry, self.rng)
        return out


def _data_key(packet: bytes) -> tuple[int, int] | None:
    """(segment, tid) of a DATA packet with segment > 0 (what redundancy is judged on)."""
    if len(packet) < 8:
        return None
    kind, segment, tid = struct.unpack_from("<HHI", packet)
    if kind != PacketType.DATA or segment == 0:
        return None
    return segment, tid
