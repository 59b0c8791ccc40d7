"""Test-only pytest plugin: the host loses a board's serial port, as when its USB cable drops.

``DFUHIL_TEST_PORT_FAULT=BOARD:N`` closes BOARD's console port (the real pty the farm serves,
closed on the host's side) just before each of the first N attempts of each test on BOARD, so a
test reading the console fails with the console's own InfrastructureError ("serial port ...
vanished"). Loaded by the retry tests with ``-p infra_fault`` (tests/ on PYTHONPATH).

The port is lost before anything the board printed reached the test: the plugin waits until
the console's reader has seen the loss and skips the text it had read, so a banner that came
in just before the close cannot satisfy the test's expect() (a fault that sometimes does not
happen makes the retry tests flaky).
"""

from __future__ import annotations

import os
import time
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
    deadline = time.monotonic() + 5.0
    while console.lost is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert console.lost is not None, f"{board}: closing the console port was never noticed"
    console.skip_to_end()
