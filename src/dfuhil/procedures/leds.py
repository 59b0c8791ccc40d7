"""LED state as a person at the bench sees it: on, off, or blinking at some rate.

A real DK's LEDs cannot be looked at from a nightly job, but the GPIO registers that drive
them can: reading OUT and DIR through the debug probe (or the virtual farm) often enough
tells "blinking at 1 Hz" from "stuck on", which is what a blinky or DFU test asserts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from dfuhil.formats.chips import Chip, GpioPort
from dfuhil.report import traces

__all__ = ["LedObserver", "LedReading", "LedState", "classify", "describe", "pin_name"]

LedState = Literal["on", "off", "blinking"]


def pin_name(pin: int) -> str:
    """Nordic's spelling of a flat pin number: 17 -> "P0.17", 35 -> "P1.03"."""
    return f"P{pin // 32}.{pin % 32:02d}"


def _format_hz(hz: float) -> str:
    return f"{hz:.1f} Hz" if hz >= 1 else f"{hz:.2f} Hz"


@dataclass(frozen=True)
class LedReading:
    """One LED over one sampling window. ``index`` is 0-based; the silkscreen label is +1."""

    index: int
    pin: int
    state: LedState
    frequency_hz: float | None
    duty: float
    samples: int

    @property
    def label(self) -> str:
        return f"LED{self.index + 1}"

    def __str__(self) -> str:
        seen: str = self.state
        if self.state == "blinking" and self.frequency_hz is not None:
            seen += f" {_format_hz(self.frequency_hz)}"
        return f"{self.label} ({pin_name(self.pin)}): {seen}"


def classify(
    levels: Sequence[tuple[float, bool]], *, min_toggles: int = 2
) -> tuple[LedState, float | None, float]:
    """Reduce (time_s, lit) samples to (state, blink frequency in Hz or None, duty).

    One toggle is a state change (the LED went on), not a blink, so "blinking" needs
    ``min_toggles`` changes. The frequency comes from the mean spacing of rising edges (or
    falling edges), and from the mean half-period when there are too few of either.
    """
    if not levels:
        raise ValueError("classify() needs at least one sample")
    ordered = sorted(levels, key=lambda sample: sample[0])
    lit = [level for _, level in ordered]
    duty = sum(lit) / len(lit)
    changes = [(ordered[i][0], lit[i]) for i in range(1, len(lit)) if lit[i] != lit[i - 1]]
    if len(changes) < max(min_toggles, 1):
        majority: LedState = "on" if duty > 0.5 or (duty == 0.5 and lit[-1]) else "off"
        return majority, None, duty
    return "blinking", _frequency(changes), duty


def _frequency(changes: Sequence[tuple[float, bool]]) -> float | None:
    """Full cycles per second from edge times ``(t, level_after_edge)``."""
    for level in (True, False):
        edges = [t for t, after in changes if after is level]
        if len(edges) >= 2 and edges[-1] > edges[0]:
            return (len(edges) - 1) / (edges[-1] - edges[0])
    span = changes[-1][0] - changes[0][0]
    if len(changes) >= 2 and span > 0:
        half_period = span / (len(changes) - 1)
        return 1.0 / (2.0 * half_period)
    return None


class LedObserver:
    """Samples LED pins through a 32-bit register read (debug probe or virtual board)."""

    def __init__(
        self,
        read_u32: Callable[[int], int],
        chip: Chip,
        pins: Sequence[int],
        active_low: bool = True,
        time_scale: float = 1.0,
        name: str = "",
        *,
        read: Callable[[int, int], bytes] | None = None,
    ) -> None:
        """``read`` (address, length), if given, fetches each port's OUT..DIR in one read: a
        probe that pays per call (nrfutil: a process start) then samples twice as often."""
        self._read = read
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self._read_u32 = read_u32
        self._chip = chip
        self._pins = tuple(pins)
        self._active_low = active_low
        self._time_scale = time_scale
        self._name = name  # the board, for the LED timeline picture
        # Resolve every pin up front: a wrong pin number fails here, not mid-test.
        self._where: list[tuple[GpioPort, int]] = [chip.gpio_port_of(p) for p in self._pins]
        self._ports: list[GpioPort] = list(dict.fromkeys(port for port, _ in self._where))

    @property
    def pins(self) -> tuple[int, ...]:
        return self._pins

    def snapshot(self) -> list[bool]:
        """One read of OUT and DIR per port; a pin is lit only while it is an output driving
        the LED's active level (an input pin, DIR=0, leaves the LED dark)."""
        regs = {port: self._out_dir(port) for port in self._ports}
        lit_level = 0 if self._active_low else 1
        result = []
        for port, bit in self._where:
            out, direction = regs[port]
            result.append(bool((direction >> bit) & 1) and ((out >> bit) & 1) == lit_level)
        return result

    def _out_dir(self, port: GpioPort) -> tuple[int, int]:
        if self._read is None:
            return self._read_u32(port.out), self._read_u32(port.dir)
        span = port.dir - port.out + 4
        raw = self._read(port.out, span)
        word = int.from_bytes
        return word(raw[:4], "little"), word(raw[span - 4 : span], "little")

    def sample(self, window_s: float = 2.0, interval_s: float = 0.01) -> list[LedReading]:
        """Sample for ``window_s`` device seconds, one snapshot per ``interval_s`` device s.

        Wall time is device time * ``time_scale``; sample times are converted back, so the
        reported frequency is what the firmware produces in its own (device) seconds.
        """
        wall_interval = interval_s * self._time_scale
        wall_window = window_s * self._time_scale
        series: list[list[tuple[float, bool]]] = [[] for _ in self._pins]
        start = time.monotonic()
        tick = 0
        while True:
            before = time.monotonic()
            levels = self.snapshot()
            after = time.monotonic()
            device_t = ((before + after) / 2 - start) / self._time_scale
            for samples, level in zip(series, levels, strict=True):
                samples.append((device_t, level))
            if after - start >= wall_window:
                break
            tick += 1
            delay = start + tick * wall_interval - time.monotonic()
            if delay > 0:
                # Never sleep past the window's end: the last sample belongs at its edge.
                time.sleep(max(0.0, min(delay, start + wall_window - time.monotonic())))
            else:
                # A slow probe cannot keep up: sample as fast as it can, skip missed ticks.
                tick = int((time.monotonic() - start) / wall_interval) if wall_interval else 0
        recorder = traces.active()
        if recorder is not None:
            recorder.led_window(self._name or "board", self._pins, series)
        readings = []
        for i, (pin, samples) in enumerate(zip(self._pins, series, strict=True)):
            state, hz, duty = classify(samples)
            readings.append(LedReading(i, pin, state, hz, duty, len(samples)))
        return readings

    def wait_for(
        self,
        expected: Sequence[LedState | None],
        timeout_s: float = 10.0,
        window_s: float = 2.0,
    ) -> list[LedReading]:
        """Sample until every LED with a non-None expectation matches; else AssertionError.

        ``timeout_s`` is in device seconds like ``window_s``; at least one window is sampled.
        """
        if len(expected) != len(self._pins):
            raise ValueError(
                f"expected has {len(expected)} entries but the observer watches "
                f"{len(self._pins)} pins"
            )
        deadline = time.monotonic() + timeout_s * self._time_scale
        while True:
            readings = self.sample(window_s)
            pairs = zip(readings, expected, strict=True)
            if all(want is None or r.state == want for r, want in pairs):
                return readings
            if time.monotonic() >= deadline:
                raise AssertionError(_mismatch_table(readings, expected, timeout_s))


def _mismatch_table(
    readings: Sequence[LedReading], expected: Sequence[LedState | None], timeout_s: float
) -> str:
    rows = [f"LEDs not as expected within {timeout_s:.1f} s (device time):"]
    rows.append(f"  {'LED':<5} {'pin':<6} {'expected':<9} {'seen':<9} {'Hz':>6}  {'duty':>5}")
    for reading, want in zip(readings, expected, strict=True):
        hz = f"{reading.frequency_hz:.2f}" if reading.frequency_hz is not None else "-"
        verdict = "" if want is None or want == reading.state else "  <-- mismatch"
        rows.append(
            f"  {reading.label:<5} {pin_name(reading.pin):<6} {want or 'any':<9} "
            f"{reading.state:<9} {hz:>6}  {reading.duty:>5.2f}{verdict}"
        )
    return "\n".join(rows)


def describe(readings: Sequence[LedReading]) -> str:
    """One line for a log or report: ``LED1 (P0.17): blinking 1.0 Hz | LED2 (P0.18): off``."""
    return " | ".join(str(r) for r in readings)
