"""The table printed at the end of every pytest run: one line per board.

Passed / failed / infrastructure counts, time used, firmware set and the last boot line, so the
person who started the run sees at once which board (or which rig) needs a look.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table

from dfuhil.report.taxonomy import INFRASTRUCTURE

# Lines a board prints when it (re)starts: MCUboot, Zephyr, the mesh examples, the console's
# rendering of a mesh DEVICE_STARTED.
BOOT_LINE = re.compile(
    r"Starting (?:Direct-XIP )?bootloader|Booting Zephyr|Jumping to|DEVICE_STARTED|"
    r"Image version|bootloader|started|Boot",
    re.IGNORECASE,
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

    def count(self, outcome: str, kind: str | None) -> None:
        if outcome == "passed":
            self.passed += 1
        elif kind == INFRASTRUCTURE:
            self.infrastructure += 1
        else:
            self.failed += 1


def last_boot_line(text: str) -> str:
    """The last line of a console text that looks like a boot; else its last line."""
    # "--- opened ---" and the like are dfuhil's own notes in the log, not the board's words.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("---")]
    for line in reversed(lines):
        if BOOT_LINE.search(line):
            return line
    return lines[-1] if lines else ""


def render(rows: list[BoardRow], width: int = 120) -> str:
    table = Table(title="dfuhil: boards in this run", title_justify="left", box=box.SIMPLE_HEAD)
    for name, justify in (
        ("board", "left"),
        ("passed", "right"),
        ("failed", "right"),
        ("infra", "right"),
        ("time", "right"),
        ("firmware set", "left"),
        ("last boot line", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in sorted(rows, key=lambda r: r.board):
        table.add_row(
            row.board,
            str(row.passed),
            str(row.failed),
            str(row.infrastructure),
            f"{row.seconds:.1f} s",
            row.firmware_set or "-",
            row.last_boot[:60] or "-",
        )
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    with console.capture() as captured:
        console.print(table)
    return captured.get()
