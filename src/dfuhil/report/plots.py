"""Pictures of what a run recorded (:mod:`dfuhil.report.traces`), as PNG.

The data each picture shows is computed by a pure function here (tested on its numbers, not its
pixels); drawing uses matplotlib's object API (no pyplot, so no global state and no display).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dfuhil.report.traces import LedWindow, PowerCut, ProgressTrace, Recorder

# Throughput is averaged over windows of a thirtieth of the upload: per-chunk rates are noise.
THROUGHPUT_POINTS = 30


@dataclass(frozen=True)
class Line:
    """One plotted line: its label and points, plus the marked points on it."""

    label: str
    points: tuple[tuple[float, float], ...]
    marks: tuple[tuple[float, float, str], ...] = ()


def progress_lines(traces: Sequence[ProgressTrace]) -> list[Line]:
    """Per board: done over time; marks (DATA_REQ repairs, resumes) at the level they hit."""
    lines = []
    for trace in traces:
        points = tuple((t, float(done)) for t, done, _ in trace.samples)
        marks = tuple(
            (t, _level_at(points, t), f"{what} {value}") for t, what, value in trace.marks
        )
        lines.append(Line(trace.board, points, marks))
    return lines


def _level_at(points: Sequence[tuple[float, float]], t: float) -> float:
    level = 0.0
    for when, value in points:
        if when > t:
            break
        level = value
    return level


def throughput_line(trace: ProgressTrace, window_s: float | None = None) -> Line:
    """Bytes per second over time: the bytes acknowledged in each window of at least
    ``window_s`` (default: a thirtieth of the trace, so a short test upload still has a
    curve); a step back (a new upload from zero, a rewind) starts a new window."""
    samples = trace.samples
    if window_s is None:
        span = samples[-1][0] - samples[0][0] if samples else 0.0
        window_s = span / THROUGHPUT_POINTS
    points: list[tuple[float, float]] = []
    start = 0
    for i in range(1, len(samples)):
        t0, done0, _ = samples[start]
        t, done, _ = samples[i]
        if done < samples[i - 1][1]:  # a new upload or a rewind: no rate across it
            start = i
            continue
        if t - t0 >= window_s and t > t0:
            points.append(((t0 + t) / 2, (done - done0) / (t - t0)))
            start = i
    marks = tuple(
        (t, _level_at(points, t), f"{what} at {value} B") for t, what, value in trace.marks
    )
    return Line(trace.board, tuple(points), marks)


def pin_label(pin: int) -> str:
    return f"P{pin // 32}.{pin % 32:02d}"


def lit_intervals(window: LedWindow) -> list[tuple[str, list[tuple[float, float]]]]:
    """Per LED pin: its label and the (from, to) device seconds it was lit; a lit run lasts
    from its first lit sample to the next dark one (or the window's last sample)."""
    lanes = []
    for pin, samples in zip(window.pins, window.series, strict=True):
        spans: list[tuple[float, float]] = []
        since: float | None = None
        for t, lit in samples:
            if lit and since is None:
                since = t
            elif not lit and since is not None:
                spans.append((since, t))
                since = None
        if since is not None and samples:
            spans.append((since, samples[-1][0]))
        lanes.append((pin_label(pin), spans))
    return lanes


def power_cut_points(cuts: Sequence[PowerCut]) -> dict[str, list[tuple[int, int, str]]]:
    """Per board: (operation, total, what booted) in the order of the operation cut."""
    table: dict[str, list[tuple[int, int, str]]] = {}
    for cut in cuts:
        table.setdefault(cut.board, []).append((cut.operation, cut.total, cut.booted or "nothing"))
    return {board: sorted(points) for board, points in table.items()}


# --- drawing ----------------------------------------------------------------------------------


def pictures(recorder: Recorder) -> dict[str, bytes]:
    """Attachment name -> PNG bytes, one per kind of trace the recorder holds."""
    found: dict[str, bytes] = {}
    if recorder.mesh:
        found["mesh DFU progress"] = _png(_mesh(list(recorder.mesh.values())))
    if recorder.smp:
        found["SMP upload throughput"] = _png(_smp(list(recorder.smp.values())))
    if recorder.leds:
        last = {window.board: window for window in recorder.leds}  # the last window per board
        found["LED timeline"] = _png(_leds(list(last.values())))
    if recorder.power_cuts:
        found["power cuts"] = _png(_cuts(recorder.power_cuts))
    return found


def save(recorder: Recorder, path: Path) -> list[Path]:
    """Write the recorder's pictures: ``path`` itself for one, ``stem-<kind>.png`` for more."""
    found = pictures(recorder)
    if len(found) == 1:
        path.write_bytes(next(iter(found.values())))
        return [path]
    written = []
    for name, data in found.items():
        target = path.with_name(f"{path.stem}-{name.replace(' ', '-')}{path.suffix or '.png'}")
        target.write_bytes(data)
        written.append(target)
    return written


def _png(figure: Figure) -> bytes:
    out = BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()


def _figure(rows: int = 1) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(9, 2.2 + 1.6 * rows), layout="constrained")
    axes = figure.subplots(rows, 1, squeeze=False)
    return figure, [row[0] for row in axes]


def _draw(ax: Axes, line: Line, *, drawstyle: str = "default", mark_color: str = "red") -> None:
    xs = [p[0] for p in line.points]
    ys = [p[1] for p in line.points]
    ax.plot(xs, ys, label=line.label, drawstyle=drawstyle)
    if line.marks:
        ax.scatter(
            [m[0] for m in line.marks],
            [m[1] for m in line.marks],
            marker="x",
            color=mark_color,
            zorder=3,
            label=f"{line.label}: {line.marks[0][2].split()[0]} ({len(line.marks)})",
        )


def _mesh(traces: list[ProgressTrace]) -> Figure:
    figure, (ax,) = _figure()
    lines = progress_lines(traces)
    for index, line in enumerate(lines):
        _draw(ax, line, drawstyle="steps-post")
        # Nodes in step draw on top of each other: the earlier ones wider, so all show.
        ax.lines[-1].set_linewidth(1.5 + 2.5 * (len(lines) - 1 - index) / max(1, len(lines) - 1))
    total = max((s[2] for t in traces for s in t.samples), default=0)
    if total:
        ax.axhline(total, color="grey", linestyle=":", linewidth=1)
    ax.set_title("Mesh DFU: segments per node over time (x: DATA_REQ repairs)")
    ax.set_xlabel("host seconds since the test started")
    ax.set_ylabel("segments")
    ax.legend(loc="lower right", fontsize="small")
    return figure


def _smp(traces: list[ProgressTrace]) -> Figure:
    figure, (ax,) = _figure()
    acked = ax.twinx()
    for trace in traces:
        rate = throughput_line(trace)
        _draw(ax, Line(f"{rate.label} B/s", _gaps(rate.points)), drawstyle="default")
        (done,) = progress_lines([trace])
        _draw(acked, Line(f"{done.label} bytes", done.points, done.marks), drawstyle="steps-post")
        acked.lines[-1].set_linestyle(":")
    ax.set_title("SMP image upload: throughput (solid) and bytes acknowledged (dotted, x: resumes)")
    ax.set_xlabel("host seconds since the test started")
    ax.set_ylabel("bytes/s acknowledged")
    acked.set_ylabel("bytes acknowledged")
    ax.legend(loc="upper left", fontsize="small")
    acked.legend(loc="lower right", fontsize="small")
    return figure


def _gaps(points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    """Break the line where no rate was measured for a while (a reset, a reconnect): a
    straight line across an idle gap would draw a rate nobody saw."""
    if len(points) < 3:
        return points
    steps = sorted(b[0] - a[0] for a, b in itertools.pairwise(points))
    limit = 3 * steps[len(steps) // 2]
    out = [points[0]]
    for a, b in itertools.pairwise(points):
        if b[0] - a[0] > limit:
            out.append(((a[0] + b[0]) / 2, float("nan")))
        out.append(b)
    return tuple(out)


def _leds(windows: list[LedWindow]) -> Figure:
    figure, axes = _figure(len(windows))
    for ax, window in zip(axes, windows, strict=True):
        lanes = lit_intervals(window)
        end = max((s[-1][0] for s in window.series if s), default=1.0)
        for lane, (_, spans) in enumerate(lanes):
            ax.hlines(lane, 0, end, color="lightgrey", linewidth=1)
            ax.broken_barh(
                [(start, max(stop - start, end / 500)) for start, stop in spans],
                (lane - 0.3, 0.6),
                color=f"C{lane}",
            )
        ax.set_yticks(
            range(len(lanes)), [f"LED{i + 1} {name}" for i, (name, _) in enumerate(lanes)]
        )
        ax.set_ylim(-0.6, len(lanes) - 0.4)
        ax.set_xlim(0, end)
        ax.set_title(f"{window.board}: LEDs lit (bars) or dark (grey line)")
        ax.set_xlabel("device seconds in the observed window")
    return figure


def _cuts(cuts: list[PowerCut]) -> Figure:
    figure, (ax,) = _figure()
    outcomes = sorted({c.booted or "nothing" for c in cuts})
    for board, points in power_cut_points(cuts).items():
        ax.scatter(
            [p[0] for p in points],
            [outcomes.index(p[2]) for p in points],
            label=board,
            s=60,
        )
    ax.set_yticks(range(len(outcomes)), outcomes)
    ax.set_title("Power cut before flash operation N: what booted next")
    ax.set_xlabel("flash operation at which power was cut")
    ax.legend(loc="best", fontsize="small")
    return figure
