"""The provisioning benchmark keeps working and meets its byte goals (figures, not timings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        if line.startswith("("):
            rows[line[:3]] = line.split()
    return rows


def test_provision_bench_reprovisioning_writes_nothing_and_app_change_costs_app_pages() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "provision.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert set(rows) == {"(a)", "(b)", "(c)", "(d)", "(e)"}, done.stdout
    # columns from the right: erased written ops device_s ratio wall_s
    erased = {k: int(v[-6]) for k, v in rows.items()}
    written = {k: int(v[-5]) for k, v in rows.items()}
    assert erased["(c)"] == 0 and written["(c)"] == 0, "an unchanged board was rewritten"
    app_bytes = 12 * 1024  # the sample DFU app: three 4 KiB pages
    assert 0 < written["(d)"] <= app_bytes and erased["(d)"] <= app_bytes
    assert 0 < written["(e)"] <= 4096 and erased["(e)"] <= 4096, "one changed page, one rewrite"
    assert erased["(a)"] >= 512 * 1024, "the naive way erases the whole chip"
