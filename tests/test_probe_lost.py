"""A J-Link lost in the middle of a flash step: infrastructure, and nothing a re-provisioning
cannot mend.

The virtual farm runs as its own process; the lever is its debug port's ``probe_loss``
(dfuhil.sim.faults.FaultInjector.lose_probe_after): the n-th flash operation asked through the
probe is in flight when the USB link drops, and a seeded coin says whether the target still
finished it. Provisioning goes through the real Probe adapter, as on a lab rig. The reference is
a board provisioned cleanly in the same farm: after the probe is back, a re-provisioning must
leave the interrupted board byte for byte the same (code flash and UICR) and booting its app.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from farmgen import pytest_command
from provisionfarm import (
    BOOT_TIMEOUT_S,
    DFU_BOOTED,
    NRF52832,
    REPO,
    BoardEntry,
    FirmwareSpec,
    running_farm,
    sample_set,
    snapshot,
    write_boards,
)
from test_infra_retry import (
    BANNER,
    FAULTY,
    OTHER,
    QUARANTINE_RUN,
    assert_quarantined_while_the_other_passes,
)
from test_parallel import PROVISIONING, Run, farm, finish
from test_provision import Lab

from dfuhil.errors import InfrastructureError
from dfuhil.farm.rig import Rig
from dfuhil.procedures.provision import STEPS, Provisioner
from dfuhil.sim.faults import FaultInjector

FLASH_STEPS = ("softdevice", "bootloader", "application", "device_page")
SEEDS = (1, 2)
CLEAN = "clean"
COIN = "coin"
FREE_PAGE = 0x50000  # inside the nRF52832 application region, past the sample app
BOARDS = [BoardEntry(CLEAN, "dfu52"), BoardEntry(COIN, "dfu52")] + [
    BoardEntry(f"lost-{step}-{seed}", "dfu52") for step in FLASH_STEPS for seed in SEEDS
]


@dataclass(frozen=True)
class Reference:
    """A cleanly provisioned board: what it holds, and its probe flash operations per step."""

    image: bytes
    ops_before: dict[str, int]
    ops_in: dict[str, int]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("probe-lost-farm")
    sets = {"dfu52": FirmwareSpec(NRF52832, sample_set(NRF52832))}
    path, farm = write_boards(workdir / "boards.yaml", sets, BOARDS)
    with running_farm(path, workdir) as state:
        yield Lab(farm, Rig(farm, state), workdir)


def lever(lab: Lab, name: str) -> FaultInjector:
    assert lab.rig.sim is not None
    published = lab.rig.sim.board(name)
    return FaultInjector(published.endpoint, published.snr)


@pytest.fixture(scope="module")
def reference(lab: Lab) -> Reference:
    """Provision the clean board step by step, counting the flash operations of each step."""
    before: dict[str, int] = {}
    within: dict[str, int] = {}
    with lever(lab, CLEAN) as link, lab.console(CLEAN) as console, lab.probe(CLEAN) as probe:
        start = link.probe_link()["flash_ops"]
        for step in STEPS:
            ops = link.probe_link()["flash_ops"]
            Provisioner(lab.plan(CLEAN), probe).run([step])
            before[step] = ops - start
            within[step] = link.probe_link()["flash_ops"] - ops
        console.expect(DFU_BOOTED, timeout=BOOT_TIMEOUT_S)
        image = snapshot(probe)
    assert all(within[step] > 0 for step in FLASH_STEPS), within
    return Reference(image, before, within)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("step", FLASH_STEPS)
def test_a_probe_lost_mid_step_is_infrastructure_and_reprovisioning_mends_the_board(
    lab: Lab, reference: Reference, step: str, seed: int
) -> None:
    name = f"lost-{step}-{seed}"
    # The operation in flight is one in the middle of the step (its first if it has one).
    n = reference.ops_before[step] + (reference.ops_in[step] + 1) // 2
    with lever(lab, name) as link:
        start = link.probe_link()["flash_ops"]
        link.lose_probe_after(n, seed=seed)
        with pytest.raises(InfrastructureError) as lost, lab.probe(name) as probe:
            lab.provision(probe, name)
        message = str(lost.value)
        snr = link.snr
        assert lost.value.board == name
        assert message.startswith(f"[infrastructure] board {name}: J-Link {snr}: cannot ")
        assert "USB link lost" in message and "replug the J-Link" in lost.value.remedy
        after = link.probe_link()
        assert after["lost"] and after["flash_ops"] - start == n, after
        assert after["last_in_flight"] in ("done", "not done")

        # While it is gone the probe cannot even be opened: infrastructure again, not a product.
        with pytest.raises(InfrastructureError, match=f"J-Link {snr} is not connected"):
            lab.rig.probe(lab.spec(name)).open()

        link.replug_probe()
    with lab.console(name) as console, lab.probe(name) as probe:
        lab.provision(probe, name)
        console.expect(DFU_BOOTED, timeout=BOOT_TIMEOUT_S)
        assert snapshot(probe) == reference.image


def test_the_operation_in_flight_is_done_or_not_as_the_seed_says(lab: Lab) -> None:
    """A page erase in flight when the link drops: the flash shows the outcome the lever names,
    and a few seeds land on both outcomes."""
    outcomes = set()
    for seed in range(6):
        with lever(lab, COIN) as link, lab.probe(COIN) as probe:
            probe.write_flash(FREE_PAGE, b"\x00" * 4)
            link.lose_probe_after(1, seed=seed)
            with pytest.raises(InfrastructureError, match="USB link lost during erase_page"):
                probe.erase_page(FREE_PAGE)
            outcome = link.probe_link()["last_in_flight"]
            link.replug_probe()
        with lab.probe(COIN) as probe:
            erased = probe.read(FREE_PAGE, 4) == b"\xff" * 4
        assert outcome == ("done" if erased else "not done"), seed
        outcomes.add(outcome)
    assert outcomes == {"done", "not done"}


# --- through pytest: retried once, quarantined when it keeps happening ------------------------


def suite_run(
    workdir: Path, boards: Path, fault: str, *args: str, plugin: str = "probe_fault"
) -> Run:
    """``pytest suites/test_provisioning.py`` with a test-only fault plugin: tests/probe_fault.py
    losing FAULTY's J-Link, or tests/board_fault.py halting its core (``plugin="board_fault"``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    variable = "DFUHIL_TEST_PROBE_FAULT" if plugin == "probe_fault" else "DFUHIL_TEST_BOARD_FAULT"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), variable: fault}
    process = subprocess.Popen(
        pytest_command(workdir, boards, PROVISIONING, "-p", plugin, *args),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return finish(process, workdir)


def test_provisioning_with_a_probe_lost_once_is_retried_and_passes(tmp_path: Path) -> None:
    boards = farm(tmp_path / "boards.yaml", FAULTY, OTHER)
    run = suite_run(tmp_path, boards, f"{FAULTY}:1", "-k", BANNER)
    assert run.returncode == 0, run.output
    props = {name: p for name, p, _ in run.cases()}
    retried = props[f"{BANNER}[{FAULTY}]"]["infra_retry"]
    assert f"attempt 1: [infrastructure] board {FAULTY}: J-Link " in retried, retried
    assert "USB link lost" in retried, retried
    assert "infra_retry" not in props[f"{BANNER}[{OTHER}]"]
    assert f"retried: {FAULTY}: 1 attempt(s) after an infrastructure fault" in run.output


def test_a_probe_lost_every_time_quarantines_the_board_and_the_other_carries_on(
    tmp_path: Path,
) -> None:
    boards = farm(tmp_path / "boards.yaml", FAULTY, OTHER)
    run = suite_run(
        tmp_path,
        boards,
        f"{FAULTY}:99",
        *QUARANTINE_RUN,
    )
    assert_quarantined_while_the_other_passes(run)
    assert "J-Link" in run.output.split("QUARANTINED", 1)[1]


def test_a_board_halted_by_a_debugger_is_infrastructure_and_retried(tmp_path: Path) -> None:
    """The console's timeout asks the probe: a halted core could not print, so the silence is
    the rig's (retried), not the firmware's (which would be a product failure, never retried)."""
    boards = farm(tmp_path / "boards.yaml", FAULTY, OTHER)
    run = suite_run(tmp_path, boards, f"{FAULTY}:1:halt", "-k", BANNER, plugin="board_fault")
    assert run.returncode == 0, run.output
    props = {name: p for name, p, _ in run.cases()}
    retried = props[f"{BANNER}[{FAULTY}]"]["infra_retry"]
    assert f"attempt 1: [infrastructure] board {FAULTY}: console" in retried, retried
    assert "its core is halted" in retried, retried
