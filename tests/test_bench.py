"""The provisioning benchmark keeps working and meets its byte goals (figures, not timings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    # The backend table: nothing changed through nrfutil costs at most 2 process starts.
    backend = {
        (line[:30].strip(), line.split()[-7]): line.split()[-6:]
        for line in done.stdout.splitlines()
        if line.startswith(("first provisioning", "nothing changed", "app rebuilt"))
    }
    assert len(backend) == 6, done.stdout
    starts, _version, _read, written = (int(v) for v in backend["nothing changed", "nrfutil"][:4])
    assert starts <= 2 and written == 0, done.stdout
    assert int(backend["nothing changed", "pynrfjprog"][0]) == 0  # an in-process library


def test_smp_upload_bench_runs_every_way_with_the_same_chunking() -> None:
    bench = [str(ROOT / "bench" / "smp_upload.py"), "--time-scale", "0.05", "--image-kib", "32"]
    bench += ["--part", "farm"]
    done = subprocess.run(
        [sys.executable, *bench], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert set(rows) == {"(a)", "(b)", "(c)", "(d)", "(e)"}, done.stdout
    assert "framing bound" in done.stdout and "goal:" in done.stdout
    # smpclient and both dfuhil ways fill the negotiated buffer: the same number of requests
    counts = [re.search(r"(\d+) requests", " ".join(rows[k])) for k in ("(c)", "(d)", "(e)")]
    assert all(counts) and len({m.group(1) for m in counts if m}) == 1, done.stdout


def test_smp_upload_bench_stock_uart_part_lands_every_way_but_the_netbuf_sized_burst() -> None:
    bench = [str(ROOT / "bench" / "smp_upload.py"), "--time-scale", "0.1", "--image-kib", "16"]
    done = subprocess.run(
        [sys.executable, *bench, "--part", "stock"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("paced ", "burst "))]
    assert len(rows) == 8, done.stdout
    failed = [row for row in rows if "FAILED" in row]
    # only the old default (380-byte messages, 4 in flight) loses lines, and only in bursts
    assert len(failed) == 1 and failed[0].startswith("burst") and "380 B x 4" in failed[0]
    assert "RX line buffers" in failed[0] or "lost" in failed[0], failed[0]
    assert not any("WRONG BYTES" in row for row in rows), done.stdout


def test_power_cut_bench_stops_at_its_budget_and_says_so() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "power_cuts.py"), "--seeds", "1", "--budget", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("swap-scratch")]
    assert rows and rows[0][:4] == ["swap-scratch", "perm", "83", "whole"], done.stdout
    assert "(budget spent)" in done.stdout


def test_rfc2217_upload_bench_runs_both_ways_with_the_same_requests() -> None:
    """Figures, not timings: both ways upload the same image in the same requests and window."""
    bench = [str(ROOT / "bench" / "rfc2217_upload.py"), "--time-scale", "0.05"]
    bench += ["--image-kib", "16", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, *bench], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if done.returncode == 2 and "ser2net missing" in done.stderr:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    notes = {
        way: line.split("  ", 1)[-1]
        for line in done.stdout.splitlines()
        for way in ("local pty", "RFC 2217 (ser2net)")
        if line.startswith(way)
    }
    assert len(notes) == 2, done.stdout
    requests = {way: re.search(r"(\d+) requests, window (\d+)", n) for way, n in notes.items()}
    assert all(m is not None for m in requests.values()), done.stdout
    assert len({m.groups() for m in requests.values() if m is not None}) == 1, done.stdout
    assert "RFC 2217 / local:" in done.stdout
