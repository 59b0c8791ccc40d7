"""What long operations record while they run, so a picture can be drawn of them afterwards.

The library's procedures call :func:`active` and, when a :class:`Recorder` is recording (a test,
or a command given ``--plot``), add their samples; otherwise they record nothing and cost
nothing. The recorder keeps plain data only: drawing is :mod:`dfuhil.report.plots`' job.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

Progress = Callable[[int, int], None]


@dataclass
class ProgressTrace:
    """``done`` out of ``total`` over host time for one board; ``marks`` are labelled moments
    (a DATA_REQ repair with its segment, a resumed upload with its offset)."""

    board: str
    unit: str  # "segments" or "bytes"
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, done, total)
    marks: list[tuple[float, str, int]] = field(default_factory=list)  # (t, kind, value)


@dataclass
class LedWindow:
    """One observed window of a board's LEDs: per pin, (device seconds, lit) samples."""

    board: str
    pins: tuple[int, ...]
    series: tuple[tuple[tuple[float, bool], ...], ...]


@dataclass(frozen=True)
class PowerCut:
    """Power cut before flash operation ``operation`` of ``total``; ``booted`` is what ran
    next ("" when nothing booted)."""

    board: str
    operation: int
    total: int
    booted: str


class Recorder:
    """Every trace of one test or one command, keyed by kind and board. Thread-safe: a
    transfer's reader and a sampler may record at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self.mesh: dict[str, ProgressTrace] = {}
        self.smp: dict[str, ProgressTrace] = {}
        self.leds: list[LedWindow] = []
        self.power_cuts: list[PowerCut] = []

    def now(self) -> float:
        return self._clock() - self._t0

    @property
    def empty(self) -> bool:
        return not (self.mesh or self.smp or self.leds or self.power_cuts)

    def _trace(self, table: dict[str, ProgressTrace], board: str, unit: str) -> ProgressTrace:
        with self._lock:
            return table.setdefault(board, ProgressTrace(board, unit))

    def progress(self, kind: str, board: str, done: int, total: int) -> None:
        table, unit = (self.mesh, "segments") if kind == "mesh" else (self.smp, "bytes")
        trace = self._trace(table, board, unit)
        with self._lock:
            trace.samples.append((self.now(), done, total))

    def mark(
        self, kind: str, board: str, what: str, value: int, *, when_reached: bool = False
    ) -> None:
        """Mark now, or (``when_reached``) when the trace last reached ``value`` (a resumed
        upload is known only when it ends; its mark belongs where it started)."""
        table, unit = (self.mesh, "segments") if kind == "mesh" else (self.smp, "bytes")
        trace = self._trace(table, board, unit)
        with self._lock:
            at = self.now()
            if when_reached:
                at = next((t for t, done, _ in reversed(trace.samples) if done == value), at)
            trace.marks.append((at, what, value))

    def led_window(
        self, board: str, pins: Sequence[int], series: Sequence[Sequence[tuple[float, bool]]]
    ) -> None:
        window = LedWindow(board, tuple(pins), tuple(tuple(s) for s in series))
        with self._lock:
            self.leds.append(window)

    def power_cut(self, board: str, operation: int, total: int, booted: str) -> None:
        with self._lock:
            self.power_cuts.append(PowerCut(board, operation, total, booted))


_active: Recorder | None = None


def active() -> Recorder | None:
    """The recorder in force, or None (then nothing is recorded)."""
    return _active


@contextlib.contextmanager
def recording(recorder: Recorder | None = None) -> Iterator[Recorder]:
    """Record into ``recorder`` (a new one by default) for the duration."""
    global _active
    previous = _active
    _active = recorder if recorder is not None else Recorder()
    try:
        yield _active
    finally:
        _active = previous


def mark(kind: str, board: str, what: str, value: int, *, when_reached: bool = False) -> None:
    """Mark a moment (``resume`` at an offset, ``DATA_REQ`` for a segment) if recording."""
    recorder = active()
    if recorder is not None:
        recorder.mark(kind, board, what, value, when_reached=when_reached)


def power_cut(board: str, operation: int, total: int, booted: str) -> None:
    """Record a power cut and what booted after it, if recording."""
    recorder = active()
    if recorder is not None:
        recorder.power_cut(board, operation, total, booted)


def tee(kind: str, board: str, then: Progress | None = None) -> Progress | None:
    """A progress callback that records into the active recorder, then calls ``then``.

    With no recorder in force it is ``then`` itself: nothing changes for the caller.
    """
    recorder = active()
    if recorder is None:
        return then
    state = {"last": -1}

    def progress(done: int, total: int) -> None:
        if kind == "smp" and 0 <= done < state["last"]:
            recorder.mark(kind, board, "rewind", done)  # the server asked for an earlier off
        state["last"] = done
        recorder.progress(kind, board, done, total)
        if then is not None:
            then(done, total)

    return progress
