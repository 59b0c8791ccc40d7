"""One virtual clock per farm: device seconds, scaled to wall seconds by ``time_scale``.

Everything a virtual board models in time (flash erase and write, UART byte times, firmware
timers, LED blink periods) runs on this clock, so a farm at ``time_scale=0.1`` is simply ten
times faster than the bench and still internally consistent.
"""

from __future__ import annotations

import threading
import time


class ResetSignal(BaseException):
    """Raised inside a firmware thread when its CPU was reset; unwinds the firmware cleanly."""


class PowerLoss(ResetSignal):
    """The board's supply failed (fault injection) instead of the flash operation that was
    about to run; the message says which. A ResetSignal, so every thread of the firmware that
    unwinds quietly on a reset unwinds quietly on a power cut too."""


class VirtualClock:
    def __init__(self, time_scale: float = 1.0) -> None:
        if not 0 < time_scale <= 10:
            raise ValueError(f"time_scale must be in (0, 10], got {time_scale}")
        self.time_scale = time_scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Device seconds since the farm started."""
        return (time.monotonic() - self._t0) / self.time_scale

    def wall(self, device_s: float) -> float:
        return device_s * self.time_scale

    def sleep(self, device_s: float, interrupt: threading.Event | None = None) -> bool:
        """Sleep for device time; returns False early if ``interrupt`` is set."""
        if device_s <= 0:
            return not (interrupt and interrupt.is_set())
        if interrupt is None:
            time.sleep(self.wall(device_s))
            return True
        return not interrupt.wait(self.wall(device_s))
