"""Test-only pytest plugin: a board's J-Link drops off USB in the middle of provisioning.

``DFUHIL_TEST_PROBE_FAULT=BOARD:N[:OPS]`` arms the virtual farm's probe-loss lever
(dfuhil.sim.faults.FaultInjector.lose_probe_after) for each of the first N attempts of each test
on BOARD, as soon as the test's provisioner exists: the OPS-th flash operation through the probe
(default 3, inside the softdevice step of a fresh board) is the one in flight when the link goes,
so provisioning fails with the probe adapter's own InfrastructureError. At the end of every
attempt the probe is plugged back in (and a lever that never tripped is disarmed), as a lab
technician would before the retry. Loaded with ``-p probe_fault`` (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator

import pytest

from dfuhil.sim.faults import FaultInjector
from fixtures.run import BOARDS_KEY, LINKS_KEY

ENV = "DFUHIL_TEST_PROBE_FAULT"
_attempts: Counter[str] = Counter()


def _spec() -> tuple[str, int, int] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    board, times, *ops = spec.split(":")
    return board, int(times), int(ops[0]) if ops else 3


def _lever(config: pytest.Config, board: str) -> FaultInjector:
    sim = config.stash[LINKS_KEY].rig.sim
    assert sim is not None, "the probe-loss lever needs a virtual farm"
    published = sim.board(board)
    return FaultInjector(published.endpoint, published.snr)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
) -> Generator[None]:
    yield
    spec = _spec()
    if spec is None or fixturedef.argname != "provisioner":
        return
    board, times, ops = spec
    item = request.node
    if board not in item.stash.get(BOARDS_KEY, frozenset()):
        return
    _attempts[item.nodeid] += 1
    if _attempts[item.nodeid] <= times:
        with _lever(item.config, board) as lever:
            lever.lose_probe_after(ops, seed=_attempts[item.nodeid])


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    spec = _spec()
    if spec is None or spec[0] not in item.stash.get(BOARDS_KEY, frozenset()):
        return
    if LINKS_KEY in item.config.stash and item.config.stash[LINKS_KEY].rig.sim is not None:
        with _lever(item.config, spec[0]) as lever:
            lever.replug_probe()
