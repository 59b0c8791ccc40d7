"""Test-only pytest plugin: the host loses a board's serial port, as when its USB cable drops.

``DFUHIL_TEST_PORT_FAULT=BOARD:N`` closes BOARD's console port (the real pty the farm serves,
closed on the host's side) just before each of the first N attempts of each test on BOARD, so a
test reading the console fails with the console's own InfrastructureError ("serial port ...
vanished"). Loaded by the retry tests with ``-p infra_fault`` (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from fixtures.run import BOARDS_KEY, LINKS_KEY

ENV = "DFUHIL_TEST_PORT_FAULT"
_attempts: Counter[str] = Counter()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return
    board, times = spec.rsplit(":", 1)
    if board not in item.stash.get(BOARDS_KEY, frozenset()):
        return
    _attempts[item.nodeid] += 1
    if _attempts[item.nodeid] > int(times):
        return
    links = item.config.stash[LINKS_KEY]
    console = links.consoles[board]
    console._port.close()  # the reader thread sees the port go, as on a USB disconnect
