"""The table printed at the end of every pytest run: one line per board.

Passed / failed / infrastructure counts, time used, firmware set and the last boot line, so the
person who started the run sees at once which board (or which rig) needs a look.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dfuhil.report.taxonomy import INFRASTRUCTURE

# Lines a board prints when it (re)starts, most telling last: MCUboot, Zephyr, an SMP sample
# application naming its version and slot, the console's rendering of a mesh DEVICE_STARTED.
BOOT_LINE = re.compile(
    r"Starting (?:Direct-XIP )?bootloader|\*\*\* Booting |Image version: |running from slot|"
    r"DEVICE_STARTED|Jumping to"
)


@dataclass
class BoardRow:
    board: str
    firmware_set: str = ""
    passed: int = 0
    failed: int = 0
    infrastructure: int = 0
    seconds: float = 0.0
    last_boot: str = ""
    retried: int = 0  # attempts run again after an infrastructure fault (fixtures.retry)
    quarantined: str = ""  # why the board was taken out of the run, if it was

    def count(self, outcome: str, kind: str | None) -> None:
        if outcome == "passed":
            self.passed += 1
        elif kind == INFRASTRUCTURE:
            self.infrastructure += 1
        else:
            self.failed += 1


def last_boot_line(text: str) -> str:
    """The last line of a console text that a board prints when it boots ("" if none)."""
    for line in reversed(text.splitlines()):
        if BOOT_LINE.search(line) and not line.lstrip().startswith(("---", ">>", "<<")):
            return line.strip()
    return ""


COLUMNS = ("board", "passed", "failed", "infra", "time", "firmware set", "last boot line")


def render(rows: list[BoardRow], width: int = 120) -> str:
    """Plain text (a nightly log keeps it as it is): the last boot line fills what is left."""
    cells = [
        [
            row.board,
            str(row.passed),
            str(row.failed),
            str(row.infrastructure),
            f"{row.seconds:.1f} s",
            row.firmware_set or "-",
            row.last_boot or "-",
        ]
        for row in sorted(rows, key=lambda r: r.board)
    ]
    widths = [max(len(c[i]) for c in [list(COLUMNS), *cells]) for i in range(len(COLUMNS) - 1)]
    room = max(20, width - sum(widths) - 2 * len(widths) - 1)

    def line(values: list[str]) -> str:
        out = [
            v.rjust(w) if 0 < i < 5 else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=False))
        ]
        last = values[-1] if len(values[-1]) <= room else values[-1][: room - 1] + "…"
        return "  ".join([*out, last]).rstrip()

    rule = "-" * min(width, sum(widths) + 2 * len(widths) + room)
    body = [line(list(COLUMNS)), rule, *(line(c) for c in cells)]
    body += [
        f"retried: {r.board}: {r.retried} attempt(s) after an infrastructure fault"
        for r in sorted(rows, key=lambda r: r.board)
        if r.retried
    ]
    body += [
        f"QUARANTINED: {r.quarantined}"
        for r in sorted(rows, key=lambda r: r.board)
        if r.quarantined
    ]
    return "dfuhil: boards in this run\n" + "\n".join(body) + "\n"
