"""The virtual farm's air: one radio medium per farm, one port per virtual board.

A port sends opaque packets (the mesh DFU payload of one advertisement; the medium never looks
inside) and receives what its neighbours sent, like the UART it is read with a timeout and a
cancel event. The medium decides, per packet and per receiver, whether the receiver hears it:
``RadioSpec.hears(sender, receiver)`` says who is in range, and every receiver in range
independently misses a packet with probability ``loss`` (a seeded RNG, so a farm file gives the
same loss pattern for the same order of transmissions). Loss can change while the farm runs.

Time is the farm's virtual clock. A packet occupies its sender's radio for its airtime, so a busy
radio serialises its own transmissions, and a receiver gets the packet when the burst has ended.
Airtime of one advertising event, BLE 1 Mbit/s (8 µs per byte), for a payload of L bytes::

    preamble 1 + access address 4 + PDU header 2 + AdvA 6
    + AD structure (length 1 + type 0x16 1 + UUID 0xFEE4 2 + L) + CRC 3   = L + 20 bytes
    per channel: TX ramp-up 140 µs (nRF52 TXRU, default mode) + (L + 20) × 8 µs
    3 channels (37, 38, 39), back to back, as transport.c orders them

so a 24-byte DATA packet keeps the radio busy for about 1.5 ms.

Simplifications (kept on purpose, see the module's tests): no collisions between senders, no
half-duplex blindness while a node transmits, one reception per burst (a scanner listens on one
channel). A receiver only gets packets while its firmware has the radio enabled (it has called
``receive`` since the last reset), and holds at most RX_QUEUE_LENGTH undelivered packets
(RADIO_RX_FIFO_LEN in the bootloader's transport.c); more are dropped and counted.
"""

from __future__ import annotations

import heapq
import random
import threading
from dataclasses import dataclass
from typing import Any

from dfuhil.farm.model import RadioSpec
from dfuhil.sim.clock import ResetSignal, VirtualClock

BYTE_TIME_S = 8e-6  # BLE 1 Mbit/s
PACKET_OVERHEAD_BYTES = 20  # preamble, access address, header, AdvA, AD header, CRC
RAMP_UP_S = 140e-6  # radio TX ramp-up per channel
CHANNELS = 3  # advertising channels 37, 38, 39
RX_QUEUE_LENGTH = 32  # transport.c RADIO_RX_FIFO_LEN
MAX_WAIT_WALL_S = 0.05  # re-check cancel this often while waiting


def airtime(payload_length: int) -> float:
    """Device seconds one packet occupies its sender's radio (all three channels)."""
    return CHANNELS * (RAMP_UP_S + (payload_length + PACKET_OVERHEAD_BYTES) * BYTE_TIME_S)


@dataclass
class PortStats:
    """What one board's radio did: packets it sent, received, and missed."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0  # in range and listening, but the loss model dropped it
    overflow: int = 0  # dropped because the firmware did not read its queue

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RadioPort:
    """One board's radio: send now, receive what the medium delivered."""

    def __init__(self, medium: RadioMedium, name: str) -> None:
        self.medium = medium
        self.name = name
        self.stats = PortStats()
        self.busy_until = 0.0  # device time the current transmission ends
        self._queue: list[tuple[float, int, bytes]] = []  # (deliver_at, seq, packet)
        self._cond = threading.Condition()
        self._listening = False
        self._seq = 0

    @property
    def listening(self) -> bool:
        return self._listening

    def send(self, packet: bytes) -> None:
        """Transmit ``packet`` (asynchronously, like the RADIO peripheral): queued behind this
        radio's own transmission in progress, delivered when its burst ends."""
        self.medium.transmit(self, bytes(packet))

    def receive(self, timeout_s: float | None, cancel: threading.Event) -> bytes | None:
        """The next packet heard, waiting up to ``timeout_s`` device seconds (None: forever).

        Enables reception (the first call after a reset turns the receiver on). Raises
        ResetSignal when ``cancel`` is set: the CPU that was listening got reset.
        """
        clock = self.medium.clock
        deadline = None if timeout_s is None else clock.now() + timeout_s
        with self._cond:
            self._listening = True
            while True:
                if cancel.is_set():
                    raise ResetSignal
                now = clock.now()
                if self._queue and self._queue[0][0] <= now:
                    return heapq.heappop(self._queue)[2]
                if deadline is not None and now >= deadline:
                    return None
                wake = deadline
                if self._queue:
                    head = self._queue[0][0]
                    wake = head if wake is None else min(wake, head)
                wait = MAX_WAIT_WALL_S
                if wake is not None:
                    wait = min(wait, max(clock.wall(wake - now), 0.0))
                self._cond.wait(wait)

    def reset(self) -> None:
        """A system reset turns the receiver off and forgets what was not read."""
        with self._cond:
            self._listening = False
            self._queue.clear()
            self._cond.notify_all()

    def _deliver(self, at: float, packet: bytes) -> bool:
        with self._cond:
            if not self._listening:
                return False
            if len(self._queue) >= RX_QUEUE_LENGTH:
                self.stats.overflow += 1
                return True
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, packet))
            self.stats.delivered += 1
            self._cond.notify_all()
            return True


class RadioMedium:
    """Every port of one farm, the range table, and the loss model."""

    def __init__(self, spec: RadioSpec, clock: VirtualClock) -> None:
        self.spec = spec
        self.clock = clock
        self._loss = spec.loss
        self._rng = random.Random(spec.seed)
        self._ports: dict[str, RadioPort] = {}
        self._lock = threading.Lock()

    @property
    def loss(self) -> float:
        return self._loss

    def set_loss(self, loss: float) -> None:
        """Change the per-receiver loss probability while the farm runs."""
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"radio loss must be between 0 and 1, got {loss}")
        with self._lock:
            self._loss = float(loss)

    def port(self, name: str) -> RadioPort:
        """The radio of board ``name`` (created on first use)."""
        with self._lock:
            if name not in self._ports:
                self._ports[name] = RadioPort(self, name)
            return self._ports[name]

    def transmit(self, sender: RadioPort, packet: bytes) -> None:
        with self._lock:
            now = self.clock.now()
            start = max(now, sender.busy_until)
            end = start + airtime(len(packet))
            sender.busy_until = end
            sender.stats.sent += 1
            for receiver in self._ports.values():
                if receiver is sender or not receiver.listening:
                    continue
                if not self.spec.hears(sender.name, receiver.name):
                    continue
                if self._rng.random() < self._loss:
                    receiver.stats.lost += 1
                    continue
                receiver._deliver(end, packet)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per board: sent, delivered, lost, overflow."""
        with self._lock:
            return {name: port.stats.as_dict() for name, port in sorted(self._ports.items())}

    def describe(self) -> dict[str, Any]:
        """What ``sim_radio`` answers: the current loss and every board's counters."""
        return {"loss": self.loss, "stats": self.stats()}
