"""Test-only pytest plugin: a board stops answering, or the whole virtual farm dies, mid-test.

``DFUHIL_TEST_BOARD_FAULT=BOARD:N:KIND`` acts just before each of the first N attempts of each
test on BOARD: KIND ``halt`` halts the board's core through the farm's debug port (the firmware
stops, its UART falls silent); KIND ``kill`` kills the virtual farm process (SIGKILL), as when
the host's farm service crashes. Loaded with ``-p board_fault`` (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest

from dfuhil.sim.faults import FaultInjector
from fixtures.run import BOARDS_KEY, LINKS_KEY

ENV = "DFUHIL_TEST_BOARD_FAULT"
KINDS = ("halt", "kill")
_attempts: Counter[str] = Counter()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return
    board, times, kind = spec.split(":")
    if kind not in KINDS:
        raise pytest.UsageError(f"{ENV}: KIND is one of {KINDS}, not {kind!r}")
    if board not in item.stash.get(BOARDS_KEY, frozenset()):
        return
    _attempts[item.nodeid] += 1
    if _attempts[item.nodeid] > int(times):
        return
    sim = item.config.stash[LINKS_KEY].rig.sim
    assert sim is not None, "this plugin needs a virtual farm"
    if kind == "kill":
        os.kill(sim.pid, signal.SIGKILL)
        return
    published = sim.board(board)
    with FaultInjector(published.endpoint, published.snr) as lever:
        lever.halt_cpu()
