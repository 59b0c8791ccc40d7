"""Faults on a virtual board's serial line: the model, its levers, and the campaign's promise.

The campaign (bench/line_faults.py) runs here on a handful of seeds: every SMP upload on a faulty
line either really landed (probe read-back of the slot) or failed as an infrastructure error;
never a false pass, never a product failure for a line fault, never a board left unbootable.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from simfarm import SimBoard, boards_yaml, wait_until

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.farm.model import LineFaults
from dfuhil.formats.smp_uart import SmpUart
from dfuhil.links.console import Console
from dfuhil.links.smp_link import SmpLink
from dfuhil.sim.debugport import DebugPortServer
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.state import FarmProcess, load_state
from dfuhil.sim.uart_faults import LineMangler, UartFaults

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import line_faults  # noqa: E402  (bench/line_faults.py)
import smpfarm  # noqa: E402

DATA = bytes(range(256)) * 64  # 16 KiB


def _mangle(faults: LineFaults, direction: str = "to_board") -> tuple[bytes, LineMangler]:
    mangler = LineMangler(faults, direction)  # type: ignore[arg-type]
    out = b"".join(mangler.apply(DATA[i : i + 64]).data for i in range(0, len(DATA), 64))
    return out, mangler


# --- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "counter"),
    [
        (LineFaults(bit_error_rate=1e-3), "flipped"),
        (LineFaults(drop_rate=1e-2), "dropped"),
        (LineFaults(duplicate_rate=1e-2), "duplicated"),
        (LineFaults(garbage_rate=1e-3, garbage_len=8), "garbage"),
    ],
)
def test_each_fault_is_seeded_deterministic_and_counted(faults: LineFaults, counter: str) -> None:
    first, mangler = _mangle(faults)
    again, _ = _mangle(faults)
    other, _ = _mangle(replace(faults, seed=2))
    assert first == again, "the same seed and bytes must fault the same way"
    assert first != other and first != DATA
    stats = mangler.stats
    assert stats.bytes_in == len(DATA) and getattr(stats, counter) > 0
    assert stats.faults == getattr(stats, counter), "only the chosen fault happens"
    expected = len(DATA) - stats.dropped + stats.duplicated + stats.garbage
    assert len(first) == expected
    if counter == "flipped":  # each flipped byte differs from the original in exactly one bit
        diffs = [a ^ b for a, b in zip(first, DATA, strict=True) if a != b]
        assert len(diffs) == stats.flipped and all(d.bit_count() == 1 for d in diffs)


def test_direction_stalls_and_vanish() -> None:
    faults = LineFaults(drop_rate=0.1, direction="to_host")
    assert _mangle(faults, "to_board")[0] == DATA
    assert _mangle(faults, "to_host")[0] != DATA
    stalled = LineMangler(LineFaults(stall_rate=0.5, stall_s=2.0), "to_host").apply(b"x" * 10)
    assert stalled.data == b"x" * 10 and stalled.stall_s >= 2.0
    gone = LineMangler(LineFaults(vanish_after_bytes=5), "to_board").apply(b"abcdefgh")
    assert (gone.data, gone.vanish) == (b"abcde", True)
    both = UartFaults(LineFaults(vanish_after_bytes=5))
    assert both.to_board.apply(b"abcdef").vanish and both.to_host.apply(b"abcdef").vanish


# --- the levers on a running board ----------------------------------------------------------------


@pytest.fixture
def dut() -> Iterator[tuple[smpfarm.SmpBoard, FaultInjector]]:
    with tempfile.TemporaryDirectory(prefix="dfuhil-lf-") as tmp:
        images = line_faults.make_images(Path(tmp), 4)
        with smpfarm.smp_board(images.running, smpfarm.app_build()) as board:
            port = DebugPortServer(
                os.path.join(tmp, "d.sock"), {board.board.snr: board.board}, smpfarm.TIME_SCALE
            )
            port.start()
            try:
                with FaultInjector(port.endpoint, board.board.snr) as lever:
                    yield board, lever
            finally:
                port.close()


def test_debug_port_switches_faults_at_run_time_and_refuses_bad_settings(
    dut: tuple[smpfarm.SmpBoard, FaultInjector],
) -> None:
    board, lever = dut
    with SmpLink.open_serial(board.serial, timeout_s=0.5, uart=SmpUart(delivery="paced")) as smp:
        assert smp.echo("clean") == "clean"
        lever.set_line_faults(LineFaults(drop_rate=0.5, direction="to_board", seed=3))
        with pytest.raises(InfrastructureError, match="no SMP answer"):
            smp.echo("x" * 40)
        state = lever.line_faults()
        assert state["faults"]["drop_rate"] == 0.5 and state["to_board"]["dropped"] > 0
        assert state["to_host"]["bytes_in"] == 0 or state["to_host"]["dropped"] == 0
        lever.set_line_faults(None)
        assert smp.echo("clean again") == "clean again"
    with pytest.raises(InputError, match="drop_rate"):
        lever.set_line_faults(LineFaults(drop_rate=3))
    with pytest.raises(InfrastructureError, match="drop_rate"):  # what the port itself says
        lever._call("line_faults", faults={"drop_rate": 3})


def test_a_vanished_port_is_an_infrastructure_error_and_comes_back_under_a_new_path(
    dut: tuple[smpfarm.SmpBoard, FaultInjector],
) -> None:
    board, lever = dut
    with Console(board.serial, name="vdk") as console:
        link = SmpLink.over_console(console, timeout_s=5.0)
        with link:
            assert link.echo("before") == "before"
            lever.vanish_port(down_s=20.0)  # 1 wall second at the test's time scale
            started = time.monotonic()
            with pytest.raises(InfrastructureError, match=r"vanished|lost during"):
                link.echo("after")
            assert time.monotonic() - started < 5.0, "a lost port is said at once"
        assert console.lost
    state = wait_until(lever.line_faults, lambda s: s["present"], "a new port should appear")
    assert state["vanishes"] == 1 and state["serial"] == board.serial
    with SmpLink.open_serial(board.serial, timeout_s=1.0) as smp:
        assert any(s.active for s in smp.image_list())


def test_boards_yaml_faults_reach_the_served_board_and_the_state_file_follows_a_new_port(
    tmp_path: Path,
) -> None:
    board = SimBoard("vdk", "nRF52840_xxAA", "PCA10056", 920000077)
    text = boards_yaml([board]).replace(
        "virtual_farm: {time_scale: ",
        "virtual_farm: {line_faults: {vdk: {drop_rate: 0.01, seed: 4}}, time_scale: ",
    )
    boards_file = tmp_path / "boards.yaml"
    boards_file.write_text(text)
    state_file = tmp_path / "state.json"
    with FarmProcess(boards_file, state_file) as state:
        published = state.board("vdk")
        with FaultInjector(published.endpoint, published.snr) as lever:
            faults = lever.line_faults()["faults"]
            assert (faults["drop_rate"], faults["seed"]) == (0.01, 4)
            # A host still holds the old port, so the new one gets another name (ttyACM1).
            stale = os.open(published.serial, os.O_RDWR | os.O_NOCTTY)
            try:
                lever.vanish_port(down_s=1.0)
                moved = wait_until(
                    lambda: load_state(state_file).board("vdk").serial,
                    lambda path: path != published.serial,
                    "the state file should name the re-enumerated port",
                )
            finally:
                os.close(stale)
            assert moved == lever.line_faults()["serial"]


# --- the campaign ---------------------------------------------------------------------------------


def test_campaign_has_no_false_pass_no_misclassified_failure_no_unbootable_board() -> None:
    kinds = list(line_faults.KINDS)
    tallies = line_faults.campaign(kinds, seeds=1, image_kib=4, first_seed=11)
    for kind, tally in tallies.items():
        bad = {o: tally.outcomes[o] for o in ("false_pass", "misclassified", "unbootable")}
        assert not any(bad.values()), f"{kind}: {bad} {tally.notes}"
        assert tally.runs == 1
    assert tallies["clean"].outcomes["pass"] == 1
    assert tallies["vanish"].outcomes["infra"] + tallies["vanish"].outcomes["pass"] == 1


def test_mesh_campaign_has_no_false_pass_no_misclassified_failure_no_unbootable_board() -> None:
    kinds = ["drops", "stalls", "vanish"]
    tallies = line_faults.campaign(kinds, seeds=1, part="mesh", image_kib=4, first_seed=1)
    for kind, tally in tallies.items():
        bad = {o: tally.outcomes[o] for o in ("false_pass", "misclassified", "unbootable")}
        assert not any(bad.values()), f"{kind}: {bad} {tally.notes}"
        assert tally.runs == 1
