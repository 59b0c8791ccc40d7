"""The report's pictures: the data each one shows, recorded through the real hooks (progress
callbacks, mesh serial frames, the LED observer), checked as numbers, not pixels."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from dfuhil.formats.chips import CHIPS
from dfuhil.formats.meshdfu import DataRequest, Frame, Opcode
from dfuhil.procedures.leds import LedObserver
from dfuhil.report import plots, traces
from dfuhil.report.mesh_trace import NodeSampler, ObservedLink, observed

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_recorder_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report plugin records every test, these included: start each from none."""
    monkeypatch.setattr(traces, "_active", None)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_nothing_is_recorded_and_the_callback_is_unchanged_outside_a_recording() -> None:
    def bar(done: int, total: int) -> None:
        return None

    assert traces.active() is None
    assert traces.tee("smp", "b", bar) is bar
    traces.mark("smp", "b", "resume", 5)  # no recorder: nothing happens, nothing raises


def test_a_resumed_upload_is_marked_where_it_started_and_throughput_restarts_there() -> None:
    clock = Clock()
    with traces.recording(traces.Recorder(clock)) as recorder:
        first = traces.tee("smp", "nrf52-a")
        assert first is not None
        for done in (0, 1000, 2000, 3000):  # 4000 B/s, then interrupted
            first(done, 10000)
            clock.t += 0.25
        clock.t += 2.0  # the reset, the reconnect
        second = traces.tee("smp", "nrf52-a")
        assert second is not None
        resumed_at = clock.t - 100.0
        for done in (3000, 3500, 4000, 4500):  # 2000 B/s after the resume
            second(done, 10000)
            clock.t += 0.25
        traces.mark("smp", "nrf52-a", "resume", 3000, when_reached=True)
    trace = recorder.smp["nrf52-a"]
    assert trace.marks == [(resumed_at, "resume", 3000)]
    line = plots.throughput_line(trace, window_s=0.25)
    rates = [round(rate) for _, rate in line.points]
    # 4000 B/s, nothing acknowledged while the board reset, 2000 B/s after the resume
    assert rates == [4000, 4000, 4000, 0, 2000, 2000, 2000]
    assert line.marks[0][0] == resumed_at and line.marks[0][2] == "resume at 3000 B"


def test_a_short_upload_still_has_a_curve_of_about_thirty_points() -> None:
    trace = traces.ProgressTrace("b", "bytes", [(i * 0.001, i * 100, 10000) for i in range(101)])
    points = plots.throughput_line(trace).points
    assert 25 <= len(points) <= 35
    assert all(round(rate) == 100_000 for _, rate in points)


def test_a_rewind_within_one_upload_is_marked() -> None:
    with traces.recording() as recorder:
        progress = traces.tee("smp", "b")
        assert progress is not None
        for done in (0, 512, 1024, 768, 1024):
            progress(done, 4096)
    assert [(what, value) for _, what, value in recorder.smp["b"].marks] == [("rewind", 768)]


def _data_req(segment: int, tid: int) -> Frame:
    return Frame(Opcode.DFU_DATA, DataRequest(segment, tid).encode())


class FakeLink:
    """The frames a root would hand over, in order (only next_frame is used)."""

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self.url = "virtual://root"

    def next_frame(self, timeout: float) -> Frame | None:
        return self.frames.pop(0) if self.frames else None


def test_data_reqs_from_the_mesh_are_marked_on_the_root_line() -> None:
    beacon = Frame(Opcode.DFU_DATA, struct.pack("<H", 0xFFFF) + b"\x00" * 6)
    frames = [_data_req(7, 0x1234), beacon, Frame(Opcode.ECHO_RSP, b"\xaa"), _data_req(9, 0x1234)]
    with traces.recording() as recorder:
        link = ObservedLink(FakeLink(frames), "root")
        seen = [link.next_frame(0.0) for _ in range(5)]
    assert seen[-1] is None and link.url == "virtual://root"
    assert [(what, value) for _, what, value in recorder.mesh["root"].marks] == [
        ("DATA_REQ", 7),
        ("DATA_REQ", 9),
    ]


def test_each_node_counts_the_segments_its_flash_took_since_the_transfer_began() -> None:
    written = {"node-a": 1000.0, "node-b": 50.0}

    def stats(name: str) -> Any:
        return lambda: {"bytes_written": written[name]}

    with traces.recording() as recorder:
        sampler = NodeSampler({n: stats(n) for n in written}, total=10, recorder=recorder)
        written["node-a"] += 16 * 3 + 8  # three segments and half of one
        written["node-b"] += 16 * 40  # more than the transfer: capped
        sampler.sample()
    assert [s[1] for s in recorder.mesh["node-a"].samples] == [3]
    assert [s[1:] for s in recorder.mesh["node-b"].samples] == [(10, 10)]


def test_observed_without_a_recording_hands_back_the_link_and_callback_as_they_were() -> None:
    link = FakeLink([])
    with observed(link, "root", 10, {"n": None}) as (seen, progress):
        assert seen is link and progress is None


def test_the_led_observer_records_the_window_it_sampled() -> None:
    chip = CHIPS["nrf52832_xxaa"]
    port, _ = chip.gpio_port_of(17)
    # LED1 (pin 17) an output driven low (lit, active low), LED2 (pin 18) an input (dark).
    registers = {port.out: 0, port.dir: 1 << 17}
    observer = LedObserver(registers.__getitem__, chip, (17, 18), True, 0.01, name="vdk-a")
    with traces.recording() as recorder:
        observer.sample(window_s=0.5, interval_s=0.1)
    (window,) = recorder.leds
    assert window.board == "vdk-a" and window.pins == (17, 18)
    lanes = plots.lit_intervals(window)
    assert [name for name, _ in lanes] == ["P0.17", "P0.18"]
    (span,) = lanes[0][1]
    assert span[0] == window.series[0][0][0] and span[1] == window.series[0][-1][0]
    assert lanes[1][1] == []


def test_a_blinking_led_is_lit_in_separate_spans() -> None:
    window = traces.LedWindow(
        "b", (33,), (((0.0, True), (0.1, True), (0.2, False), (0.3, True), (0.4, True)),)
    )
    assert plots.lit_intervals(window) == [("P1.01", [(0.0, 0.2), (0.3, 0.4)])]


def test_power_cuts_are_listed_per_board_by_operation() -> None:
    with traces.recording() as recorder:
        traces.power_cut("a", 30, 40, "v2.0.0")
        traces.power_cut("a", 1, 40, "v1.0.0")
        traces.power_cut("b", 5, 40, "")
    assert plots.power_cut_points(recorder.power_cuts) == {
        "a": [(1, 40, "v1.0.0"), (30, 40, "v2.0.0")],
        "b": [(5, 40, "nothing")],
    }


def test_mesh_progress_marks_sit_on_the_line_at_the_level_it_had() -> None:
    trace = traces.ProgressTrace("root", "segments", [(0.0, 0, 8), (1.0, 4, 8), (2.0, 8, 8)])
    trace.marks.append((1.5, "DATA_REQ", 3))
    (line,) = plots.progress_lines([trace])
    assert line.marks == ((1.5, 4.0, "DATA_REQ 3"),)


def test_every_kind_recorded_becomes_one_png_and_save_names_them(tmp_path: Any) -> None:
    recorder = traces.Recorder()
    recorder.progress("mesh", "root", 1, 4)
    recorder.progress("smp", "b", 100, 400)
    recorder.progress("smp", "b", 400, 400)
    recorder.led_window("b", (17,), [[(0.0, True), (0.1, False)]])
    recorder.power_cut("b", 3, 9, "v1")
    found = plots.pictures(recorder)
    assert sorted(found) == [
        "LED timeline",
        "SMP upload throughput",
        "mesh DFU progress",
        "power cuts",
    ]
    assert all(data.startswith(PNG) for data in found.values())
    written = plots.save(recorder, tmp_path / "run.png")
    assert sorted(p.name for p in written) == [
        "run-LED-timeline.png",
        "run-SMP-upload-throughput.png",
        "run-mesh-DFU-progress.png",
        "run-power-cuts.png",
    ]
    only = traces.Recorder()
    only.progress("smp", "b", 1, 2)
    assert plots.save(only, tmp_path / "one.png") == [tmp_path / "one.png"]


@pytest.mark.parametrize("kind", ["mesh", "smp"])
def test_recording_restores_what_was_in_force(kind: str) -> None:
    with traces.recording() as outer:
        with traces.recording() as inner:
            traces.mark(kind, "x", "m", 1)
        assert traces.active() is outer
    assert traces.active() is None
    assert not outer.mesh and not outer.smp
    assert (inner.mesh or inner.smp)["x"].marks[0][1:] == ("m", 1)


def test_an_idle_gap_breaks_the_rate_line_instead_of_drawing_a_rate_nobody_saw() -> None:
    points = ((0.0, 5.0), (1.0, 5.0), (2.0, 5.0), (10.0, 7.0), (11.0, 7.0))
    drawn = plots._gaps(points)
    assert [t for t, _ in drawn] == [0.0, 1.0, 2.0, 6.0, 10.0, 11.0]
    assert drawn[3][1] != drawn[3][1], "a NaN between the two runs"
