"""The progress bar of long transfers at the command line (mesh DFU segments, SMP uploads).

Drawn with rich on a terminal only: a nightly job piping to a log gets the summary lines, not
thousands of redraws.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ProgressBar:
    """``bar(done, total)``: ``unit`` "bytes" (size and speed) or a counted unit such as
    "segments" of ``unit_bytes`` each (count, and the byte rate that follows from it)."""

    def __init__(self, who: str, *, unit: str = "bytes", unit_bytes: int = 1) -> None:
        columns: list[ProgressColumn]
        if unit == "bytes":
            columns = [DownloadColumn(), TransferSpeedColumn()]
        else:
            columns = [MofNCompleteColumn(), TextColumn(unit), TextColumn("{task.fields[rate]}")]
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *columns,
            TimeRemainingColumn(),
            transient=True,
            disable=not sys.stderr.isatty(),
        )
        self._who = who
        self._unit = unit
        self._unit_bytes = unit_bytes
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def __call__(self, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._progress.add_task(self._who, total=total, rate="")
        self._progress.update(self._task, completed=done)
        if self._unit != "bytes":
            speed = self._progress.tasks[0].speed
            rate = f"{speed * self._unit_bytes:.0f} B/s" if speed else ""
            self._progress.update(self._task, rate=rate)
