"""The MCUboot upgrade half of the line-fault campaign: `dfuhil mcuboot upgrade` on a faulty line.

One virtual farm process serves the shipped swap-move nRF52840 (MCUboot + a Zephyr-style app,
its SMP UART as built). Each run provisions it afresh on a clean line, puts one fault kind
(seeded) on its UART through the debug port, and runs the verb as typed at a shell (upload,
test, reset, boot, confirm, re-check). The exit code is the verdict under test (0 pass,
1 product, 2 input, 3 infrastructure). Then, on a clean line, independently: the primary slot
read over the probe holds the new image byte for byte (else a 0 is a false pass), and after a
pin reset the board boots an application within the settle time, found on the port the state
file names now (else: unbootable).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from test_mcuboot_cli import farm_subset  # tests/ helper: the shipped boards.yaml, some boards

from dfuhil.cli import main as dfuhil_main
from dfuhil.errors import DfuhilError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec, LineFaults
from dfuhil.farm.rig import Rig
from dfuhil.procedures.image_sign import sign_build
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.faults import FaultInjector
from dfuhil.sim.state import FarmProcess, load_state

BOARD = "vdk52840-swap-move"
BANNER = "Booting Zephyr OS build"
BOOT_WAIT_S = 30.0  # wall seconds for the banner after a reset (generous; not a speed goal)
EXIT = {0: "pass", 1: "product", 2: "input", 3: "infra"}


@dataclass
class UpgradeRig:
    boards: Path
    state_file: Path
    image: Path

    def spec(self) -> BoardSpec:
        return load_farm(self.boards).board(BOARD)

    def rig(self) -> Rig:
        """Read the state file afresh: a re-enumerated port has a new path there."""
        return Rig(load_farm(self.boards), load_state(self.state_file))

    def injector(self) -> FaultInjector:
        published = load_state(self.state_file).board(BOARD)
        return FaultInjector(published.endpoint, published.snr)


@contextlib.contextmanager
def upgrade_rig(work: Path, time_scale: float) -> Iterator[UpgradeRig]:
    boards = farm_subset(work / "boards-upgrade.yaml", [BOARD], time_scale)
    state_file = work / "state-upgrade.json"
    with FarmProcess(boards, state_file, log_dir=work / "sim", time_scale=time_scale):
        board = load_farm(boards).board(BOARD)
        image = work / "update-1.1.0.bin"
        image.write_bytes(sign_build(board, "update", "1.1.0"))
        yield UpgradeRig(boards, state_file, image)


def _boots(rig: UpgradeRig, *, reset: bool) -> bool:
    board = rig.spec()
    live = rig.rig()
    deadline = time.monotonic() + BOOT_WAIT_S
    while True:  # the port may still be re-enumerating
        try:
            with live.console(board, open_timeout=5.0) as console, live.probe(board) as probe:
                if reset:
                    probe.pin_reset()
                console.expect(BANNER, timeout=BOOT_WAIT_S)
                return True
        except (DfuhilError, AssertionError):
            if time.monotonic() > deadline:
                return False
            live = rig.rig()
            reset = True


def _provision(rig: UpgradeRig) -> None:
    board = rig.spec()
    live = rig.rig()
    with live.console(board, open_timeout=5.0) as console, live.probe(board) as probe:
        Provisioner(ProvisioningPlan.for_board(board), probe).run(STEPS)
        console.expect(BANNER, timeout=BOOT_WAIT_S)


def one_run(rig: UpgradeRig, faults: LineFaults) -> tuple[str, str]:
    """One `dfuhil mcuboot upgrade` under ``faults``: (outcome, note)."""
    with rig.injector() as lever:
        lever.set_line_faults(None)
        _provision(rig)
        lever.set_line_faults(faults)
        out = io.StringIO()
        argv = [
            "mcuboot", "upgrade", str(rig.image), "--board", BOARD,
            "--boards", str(rig.boards), "--sim-state", str(rig.state_file),
        ]  # fmt: skip
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = dfuhil_main(argv)
            except BaseException as exc:  # a traceback is never a verdict
                return "misclassified", f"{type(exc).__name__}: {exc}"
        lever.set_line_faults(None)
    text = out.getvalue()
    if "Traceback" in text:
        return "misclassified", "a traceback in the output"
    said = [line for line in text.splitlines() if line.strip() and not line.startswith(" ")]
    note = (said[-1] if said else "")[:160]
    board = rig.spec()
    assert board.mcuboot is not None
    primary = board.mcuboot.geometry(board.layout).primary
    image = rig.image.read_bytes()
    with rig.rig().probe(board) as probe:
        installed = probe.read(primary.start, len(image)) == image
    outcome = EXIT.get(code, "misclassified")
    if outcome == "pass" and not installed:
        return "false_pass", f"exit 0 but the primary slot does not hold the image: {note}"
    if outcome == "input":
        outcome = "misclassified"
    if not _boots(rig, reset=True):
        return "unbootable", note
    return outcome, note
