"""Recording a mesh DFU for its picture: the root's acknowledged segments, the DATA_REQs the
mesh sent, and each node's segments as its flash fills.

The transfer itself is not touched: the link it reads is wrapped (:class:`ObservedLink`) and
its progress callback teed (:func:`dfuhil.report.traces.tee`). Per-node counts come from a
sampler that reads how many bytes each node's flash controller wrote since the transfer began
(16 per segment); only a probe that can tell (the virtual farm's ``sim_stats``) gives them, a
lab probe shows the root's line and the repairs only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dfuhil.formats.meshdfu import (
    SEGMENT_SIZE,
    DataRequest,
    Frame,
    Opcode,
    PacketError,
    decode_packet,
)
from dfuhil.report import traces

SAMPLE_INTERVAL_S = 0.2  # host seconds between per-node samples


class ObservedLink:
    """A mesh serial link whose received DATA_REQs are marked on the active recorder."""

    def __init__(self, link: Any, board: str) -> None:
        self._link = link
        self._board = board

    def next_frame(self, timeout: float) -> Frame | None:
        frame: Frame | None = self._link.next_frame(timeout)
        if frame is not None and frame.opcode == Opcode.DFU_DATA:
            try:
                packet = decode_packet(frame.payload)
            except PacketError:
                packet = None
            if isinstance(packet, DataRequest):
                traces.mark("mesh", self._board, "DATA_REQ", packet.segment)
        return frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


class NodeSampler:
    """Samples each node's written flash bytes into segments, on a thread, until stopped."""

    def __init__(
        self,
        stats: Mapping[str, Callable[[], dict[str, float]]],
        total: int,
        recorder: traces.Recorder,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self._stats = dict(stats)
        self._total = total
        self._recorder = recorder
        self._interval = interval_s
        self._stop = threading.Event()
        self._base = {name: read()["bytes_written"] for name, read in self._stats.items()}
        self._thread = threading.Thread(target=self._run, name="mesh-dfu-sampler", daemon=True)

    def segments(self, name: str) -> int:
        written = self._stats[name]()["bytes_written"] - self._base[name]
        return min(self._total, int(written) // SEGMENT_SIZE)

    def sample(self) -> None:
        for name in self._stats:
            self._recorder.progress("mesh", name, self.segments(name), self._total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except Exception:  # a probe busy or gone mid-sample: the picture has a gap
                continue

    def __enter__(self) -> NodeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self.sample()


@contextlib.contextmanager
def observed(
    link: Any,
    root: str,
    total: int,
    node_stats: Mapping[str, Callable[[], dict[str, float]] | None],
    then: traces.Progress | None = None,
) -> Iterator[tuple[Any, traces.Progress | None]]:
    """(link, progress) for a mesh DFU: as given when nothing records, observed otherwise;
    ``then`` (a progress bar) is called either way."""
    recorder = traces.active()
    if recorder is None:
        yield link, then
        return
    readable = {name: read for name, read in node_stats.items() if read is not None}
    progress = traces.tee("mesh", f"{root} (host: acknowledged)", then)
    with NodeSampler(readable, total, recorder) if readable else contextlib.nullcontext():
        yield ObservedLink(link, f"{root} (host: acknowledged)"), progress
