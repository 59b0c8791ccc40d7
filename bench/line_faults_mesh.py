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

from dfuhil.errors import InfrastructureError
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import LineFaults
from dfuhil.farm.rig import Rig
from dfuhil.formats.chips import find_chip
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

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware" / "virtual" / "nrf52832"
CHIP = find_chip("nRF52832_xxAA")
APP_START = 0x26000
BOOTLOADER = (0x78000, 0x6000)
INSTALL_TIMEOUT_S = 120.0  # device seconds after the transfer

BOARDS = """\
version: 1
virtual_farm:
  time_scale: {time_scale}
  line_faults: {{root: {faults}}}
flash_layouts:
  mesh:
    chip: nRF52832_xxAA
    regions:
      softdevice:  {{start: 0x0,     size: 0x26000}}
      application: {{start: 0x26000, size: 0x51000}}
      mbr_params:  {{start: 0x77000, size: 0x1000}}
      bootloader:  {{start: 0x78000, size: 0x6000}}
      device_page_backup: {{start: 0x7E000, size: 0x1000}}
      device_page: {{start: 0x7F000, size: 0x1000}}
firmware_sets:
  dfu:
    chip: nRF52832_xxAA
    softdevice:  {{file: {fw}/softdevice_s132_7.2.0.hex}}
    bootloader:  {{file: {fw}/bootloader.hex}}
    application: {{file: {fw}/dfu_app.hex, protocol: mesh-serial}}
    device_page: {{file: {fw}/device_page.hex}}
boards:
  - {{name: root, chip: nRF52832_xxAA, board_type: PCA10040, roles: [mesh],
      probe: {{backend: virtual, snr: 920000101}}, serial: {{port: virtual, baud: 115200}},
      firmware: dfu, flash_layout: mesh}}
"""


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
    boards_file.write_text(
        BOARDS.format(time_scale=time_scale, faults=_faults_yaml(faults), fw=FIRMWARE)
    )
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
