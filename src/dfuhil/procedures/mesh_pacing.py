"""How long the host waits between mesh DFU frames: fixed (nrfutil's ``-i``) or adaptive (AIMD).

Why pacing matters at all: the serial-attached node acknowledges each frame as soon as it has
queued it, but it still has to relay every segment over the radio (three repeats, 100 ms first
gap, doubling), and every target more than 64 segments behind aborts the transfer with
PACKET_LOSS (shared/specs/mesh-dfu.md §4.4, §5). The acks pace the serial node; nothing but the
DATA_REQs that targets broadcast for segments they missed tells the host that the *mesh* is
falling behind. nrfutil answers with a fixed 500 ms between frames (32 B/s). The adaptive pacer
starts at full speed and lets those requests set the pace, the way TCP lets losses set its
window.

Caveat: the requests only reach the host if the serial node forwards them. The serial bootloader
does; the mesh application does only from SDK v4.2.0 (earlier app code drops TX_SERIAL, §4.3).
Behind an older application the adaptive pacer hears no losses and stays at full speed, so use
``FixedInterval`` there.

Both are pure logic, fed with events and a clock in device seconds, so they can be swapped and
tested without a port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

NRFUTIL_INTERVAL_S = 0.5  # nrfutil `-i` default (ms 500), the pace the SDK's guide was made with


class Pacing(Protocol):
    """The gap after each delivered frame, adjusted by what comes back from the mesh."""

    @property
    def name(self) -> str: ...

    def gap(self) -> float:
        """Device seconds to wait after a delivered frame before sending the next one."""
        ...

    def on_ack(self, now: float) -> None:
        """A frame was acknowledged with SUCCESS."""
        ...

    def on_request(self, now: float) -> None:
        """The mesh asked for a segment it had not asked for before (a new loss)."""
        ...

    def on_busy(self, now: float) -> None:
        """The serial node refused a frame with ERROR_BUSY (its queue is full now)."""
        ...


@dataclass
class FixedInterval:
    """nrfutil's behaviour: the same sleep after every frame, whatever happens."""

    seconds: float = NRFUTIL_INTERVAL_S

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"interval must not be negative, got {self.seconds}")

    @property
    def name(self) -> str:
        return f"fixed {self.seconds * 1000:.0f} ms"

    def gap(self) -> float:
        return self.seconds

    def on_ack(self, now: float) -> None:
        pass

    def on_request(self, now: float) -> None:
        pass

    def on_busy(self, now: float) -> None:
        pass


# AIMD constants (device seconds). See Adaptive's docstring for why each has its value.
ADAPTIVE_CEILING_S = NRFUTIL_INTERVAL_S
ADAPTIVE_FIRST_WIDEN_S = 0.06
ADAPTIVE_FLOOR_S = 0.06
ADAPTIVE_FACTOR = 2.0
ADAPTIVE_STEP_S = 0.01
ADAPTIVE_RUN = 16
ADAPTIVE_HOLD_S = 1.0


@dataclass
class Adaptive:
    """AIMD on the inter-frame gap: widen multiplicatively on loss, narrow additively on calm.

    * Start at ``initial`` = ``floor`` = 60 ms, the smallest interval Nordic's DFU guide calls
      safe. Why not 0: the serial node acknowledges a frame once it has *queued* its relay in
      one of 7 radio slots; a faster host kills queued relays before their first transmission
      (the SDK's "Killing a TX slot prematurely"), and while the root is itself a target it
      answers the resulting DATA_REQs from its own flash, so the host never hears of that loss
      until targets fall 64 segments behind and abort. Measured on the virtual mesh: at full
      speed both radio-only targets aborted with PACKET_LOSS; at 60 ms all installed.
    * A new DATA_REQ widens the gap to ``max(gap * factor, first_widen)``, at most ``ceiling``.
      ``factor`` 2 halves the rate, the classic multiplicative decrease. ``first_widen`` 60 ms
      is the smallest interval Nordic's DFU guide calls safe, so the first loss jumps straight
      to it. ``ceiling`` 500 ms is nrfutil's default interval: adaptive is never slower than
      the tool it replaces.
    * Widening is held off for ``hold`` (1 s) after a widening: one loss episode produces
      several requests (several targets, repeats on each beacon slot) that all describe the
      pace of a second ago; they must not halve the rate once each. 1 s covers a relay's three
      radio repeats (0.1 + 0.2 + 0.4 s).
    * ERROR_BUSY widens at once, ignoring the hold: it is the node's queue saying "full" now.
    * ``run`` (16) acknowledged frames in a row without a new request narrow the gap by
      ``step`` (10 ms). A target aborts when it falls 64 segments behind, so the probe for more
      speed must be gentle: at most four 10 ms steps fit in a 64-segment window, and a
      recovered mesh is back from the ceiling to full speed after 800 frames (12.8 kB).
    """

    initial: float = ADAPTIVE_FLOOR_S
    floor: float = ADAPTIVE_FLOOR_S
    ceiling: float = ADAPTIVE_CEILING_S
    first_widen: float = ADAPTIVE_FIRST_WIDEN_S
    factor: float = ADAPTIVE_FACTOR
    step: float = ADAPTIVE_STEP_S
    run: int = ADAPTIVE_RUN
    hold: float = ADAPTIVE_HOLD_S

    def __post_init__(self) -> None:
        if not 0 <= self.floor <= self.ceiling:
            raise ValueError(f"need 0 <= floor <= ceiling, got {self.floor} and {self.ceiling}")
        if self.factor <= 1 or self.step <= 0 or self.run < 1:
            raise ValueError("factor must be > 1, step > 0 and run >= 1")
        self._gap = min(max(self.initial, self.floor), self.ceiling)
        self._calm = 0
        self._last_widen: float | None = None
        self.widenings = 0
        self.narrowings = 0

    @property
    def name(self) -> str:
        return "adaptive"

    def gap(self) -> float:
        return self._gap

    def on_ack(self, now: float) -> None:
        self._calm += 1
        if self._calm >= self.run:
            self._calm = 0
            narrowed = max(self.floor, self._gap - self.step)
            if narrowed < self._gap:
                self._gap = narrowed
                self.narrowings += 1

    def on_request(self, now: float) -> None:
        self._calm = 0
        if self._last_widen is not None and now - self._last_widen < self.hold:
            return
        self._widen(now)

    def on_busy(self, now: float) -> None:
        self._calm = 0
        self._widen(now)

    def _widen(self, now: float) -> None:
        self._gap = min(self.ceiling, max(self._gap * self.factor, self.first_widen, self.floor))
        self._last_widen = now
        self.widenings += 1
