"""The mesh half of the line-fault campaign: a mesh DFU through a serial root whose line is faulty.

Each run starts a virtual farm process (``dfuhil sim serve``) from a boards file whose
``virtual_farm.line_faults`` puts one fault kind (seeded) on the root's UART, the way a lab
states it in boards.yaml. One virtual nRF52832 is provisioned (SoftDevice, serial bootloader,
the DFU example app, device page), a small signed-less application package goes through its pty
with dfuhil's MeshDfuTransfer (nrfutil's retry count), and the verdict is checked with a probe
read-back of the device page: the new version recorded and intact (pass), or not (a transfer
that returned is then a false pass). The bootloader region read back unchanged is what keeps a
node able to take the next DFU (else: unbootable).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path

import mesh_dfu  # bench/mesh_dfu.py: the mesh bench's farm

from dfuhil.errors import InfrastructureError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import LineFaults
from dfuhil.farm.rig import Rig
from dfuhil.formats.meshpkg import MeshPackage
from dfuhil.links.mesh_serial import MeshSerialLink
from dfuhil.procedures.mesh_dfu import MeshDfuTransfer
from dfuhil.procedures.mesh_outcome import wait_for_app_version
from dfuhil.procedures.mesh_pacing import Adaptive
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.firmware.generate import (
    BLINKY_BEHAVIOUR,
    Segment,
    hex_text,
    ram_end,
    sample_image,
    to_intelhex,
)
from dfuhil.sim.state import FarmProcess

FIRMWARE = mesh_dfu.FIRMWARE
CHIP = mesh_dfu.CHIP
APP_START = mesh_dfu.APP_START
BOOTLOADER = (0x78000, 0x6000)
INSTALL_TIMEOUT_S = 120.0  # device seconds after the transfer


def boards_text(faults: LineFaults, time_scale: float) -> str:
    """The mesh bench's farm (bench/mesh_dfu.py), one root, with ``faults`` on its line."""
    root = mesh_dfu.BOARD.format(name="root", snr=920000101, baud=115200)
    text = mesh_dfu.BOARDS.format(time_scale=time_scale, loss=0.0, fw=FIRMWARE, boards=root)
    radio = "  radio: {loss: 0.0, seed: 11}\n"
    assert radio in text
    return text.replace(radio, radio + f"  line_faults: {{root: {_faults_yaml(faults)}}}\n")


def make_package(work: Path, image_kib: int) -> MeshPackage:
    assert CHIP is not None
    image = sample_image(
        APP_START, image_kib * 1024, BLINKY_BEHAVIOUR, "bench/line-faults", ram_end(CHIP)
    )
    app = work / "app.hex"
    app.write_text(hex_text(to_intelhex([Segment(APP_START, image)])))
    return MeshPackage.build(app, company_id=89, application_id=1, application_version=2)


def _faults_yaml(faults: LineFaults) -> str:
    fields = {k: v for k, v in asdict(faults).items() if v is not None}
    return "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


def one_run(
    package: MeshPackage, faults: LineFaults, work: Path, time_scale: float
) -> tuple[str, str]:
    """One mesh DFU under ``faults``: (outcome, note)."""
    boards_file = work / f"boards-{faults.seed}.yaml"
    boards_file.write_text(boards_text(faults, time_scale))
    farm = load_farm(boards_file)
    root = farm.board("root")
    with FarmProcess(boards_file, work / f"state-{faults.seed}.json") as state:
        rig = Rig(farm, state)
        probe = rig.probe(root).open()
        try:
            Provisioner(ProvisioningPlan.for_board(root), probe).run(STEPS)
            bootloader = probe.read(*BOOTLOADER)
            time.sleep(2.0 * time_scale)  # boot: bootloader, then the DFU example
            outcome, note = _transfer(package, rig.serial_url(root), time_scale)
            seen = wait_for_app_version(
                probe.read,
                root.chip,
                package.init.application_version,
                timeout_s=INSTALL_TIMEOUT_S if outcome == "pass" else 5.0,
                time_scale=time_scale,
            )
            installed = (
                seen is not None
                and seen.app_version == package.init.application_version
                and seen.intact
            )
            if probe.read(*BOOTLOADER) != bootloader:
                return "unbootable", "the bootloader region changed"
        finally:
            probe.close()
    if outcome == "pass" and not installed:
        return "false_pass", f"transfer returned but the device page shows {seen}"
    return outcome, note


def _transfer(package: MeshPackage, url: str, time_scale: float) -> tuple[str, str]:
    try:
        with MeshSerialLink(url, baud=115200, name="root") as link:
            MeshDfuTransfer(package, link, Adaptive(), time_scale=time_scale).run()
    except InfrastructureError as exc:
        return "infra", str(exc).splitlines()[0][:160]
    except AssertionError as exc:  # ProductError: a verdict on the product
        return "product", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    except Exception as exc:
        return "misclassified", "".join(traceback.format_exception_only(exc)).strip()[:200]
    return "pass", ""
