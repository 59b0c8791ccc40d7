"""Benchmark: what provisioning costs a virtual nRF52832, the guide's way and dfuhil's way.

Provisions SoftDevice + bootloader + application + device page and prints, per way, bytes
erased, bytes written, flash operations and modelled device time (the chip's own erase/write
timings), plus the wall time at time_scale 1.0 (which also includes SWD reads, not modelled):

  (a) the guide's naive sequence: chip erase, then program every file in full
  (b) dfuhil's first provisioning of a factory-fresh (erased) board
  (c) dfuhil re-provisioning with nothing changed
  (d) dfuhil with only the application changed: rebuilt completely (every page differs)
  (e) dfuhil with only the application's version header changed (one page differs)

Goal: (c) writes nothing; (d)/(e) cost at most the changed application pages.

A second table drives the same board with each probe backend, pynrfjprog's API (in process)
and ``nrfutil device`` (a subprocess a call; here the virtual farm's own nrfutil, first on
PATH), per way (first provisioning of an erased board, nothing changed, app rebuilt): process
starts, bytes read over SWD, bytes written, modelled device time, wall time. Goal: nothing
changed through nrfutil costs at most 2 process starts per board (plus one `nrfutil device
--version` per run, shown apart).

Run: `make bench` or `.venv/bin/python bench/provision.py`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec, ImageRef
from dfuhil.farm.rig import Rig
from dfuhil.formats.chips import find_chip
from dfuhil.formats.image import FlashImage
from dfuhil.links.nrfutil_probe import NrfutilProbe
from dfuhil.links.probe import Probe
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import (
    DFU_APP_SIZE,
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

BOARDS = """\
version: 1
virtual_farm: {{time_scale: 1.0}}
flash_layouts:
  mesh:
    chip: nRF52832_xxAA
    regions:
      softdevice:  {{start: 0x0,     size: 0x26000}}
      application: {{start: 0x26000, size: 0x51000}}
      mbr_params:  {{start: 0x77000, size: 0x1000}}
      bootloader:  {{start: 0x78000, size: 0x6000}}
      device_page: {{start: 0x7F000, size: 0x1000}}
firmware_sets:
  base:
    chip: nRF52832_xxAA
    softdevice:  {{file: {fw}/softdevice_s132_7.2.0.hex}}
    bootloader:  {{file: {fw}/bootloader.hex}}
    application: {{file: {app}}}
    device_page: {{file: {fw}/device_page.hex}}
boards:
  - {{name: bench52832, chip: nRF52832_xxAA, board_type: PCA10040,
      probe: {{backend: virtual, snr: 910000001}}, firmware: base, flash_layout: mesh}}
"""


@dataclass
class Figures:
    way: str
    bytes_erased: int
    bytes_written: int
    operations: int
    device_time_s: float
    wall_s: float


def app_variant(path: Path, behaviour: Behaviour, seed: str) -> Path:
    assert CHIP is not None
    image = sample_image(APP_START, DFU_APP_SIZE, behaviour, seed, ram_end(CHIP))
    path.write_text(hex_text(to_intelhex([Segment(APP_START, image)])))
    return path


def naive(board: BoardSpec, probe: Probe) -> None:
    """nrfjprog --eraseall, then --program every hex in full (no read-back, no skipping)."""
    probe.erase_all()
    assert board.firmware is not None
    for ref in board.firmware.images():
        for run in FlashImage.load(ref.file).runs:
            for offset in range(0, len(run.data), 4096):
                probe.write_flash(run.start + offset, run.data[offset : offset + 4096])
    probe.reset()


def dfuhil_way(board: BoardSpec, probe: Probe) -> None:
    Provisioner(ProvisioningPlan.for_board(board), probe).run(STEPS)


def measure(way: str, board: BoardSpec, probe: Probe, action: Callable[..., None]) -> Figures:
    stats = probe.extension("sim_stats")
    reset_stats = probe.extension("sim_reset_stats")
    assert stats is not None and reset_stats is not None
    reset_stats()
    started = time.monotonic()
    action(board, probe)
    wall = time.monotonic() - started
    s = stats()
    return Figures(
        way,
        int(s["bytes_erased"]),
        int(s["bytes_written"]),
        int(s["operations"]),
        float(s["device_time_s"]),
        wall,
    )


def main() -> int:
    if not (FIRMWARE / "bootloader.hex").exists():
        print("no sample firmware: run `make firmware` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dfuhil-bench-") as tmp:
        work = Path(tmp)
        rebuilt = Behaviour("dfu_app", "dfu example", "2.0.0", "dfu example 2.0.0 started")
        apps = {
            "base": FIRMWARE / "dfu_app.hex",
            "rebuilt": app_variant(work / "app_rebuilt.hex", rebuilt, "bench-rebuilt"),
            # Same code (same filler seed as the shipped app), new version in the header only.
            "bumped": app_variant(work / "app_bumped.hex", rebuilt, "nRF52832_xxAA/dfu_app"),
        }
        boards_file = work / "boards.yaml"
        boards_file.write_text(BOARDS.format(fw=FIRMWARE, app=apps["base"]))
        farm = load_farm(boards_file)
        base = farm.board("bench52832")
        variants = {name: _with_app(base, app) for name, app in apps.items()}
        with FarmProcess(boards_file, work / "state.json") as state:
            rig = Rig(farm, state)
            with rig.probe(base) as probe:
                rows = [measure("(a) guide: erase all + program every file", base, probe, naive)]
                probe.erase_all()
                rows.append(
                    measure("(b) dfuhil first provisioning (erased board)", base, probe, dfuhil_way)
                )
                rows.append(measure("(c) dfuhil again, nothing changed", base, probe, dfuhil_way))
                rows.append(
                    measure(
                        "(d) dfuhil, app rebuilt (all app pages differ)",
                        variants["rebuilt"],
                        probe,
                        dfuhil_way,
                    )
                )
                dfuhil_way(base, probe)
                rows.append(
                    measure(
                        "(e) dfuhil, app version header changed",
                        variants["bumped"],
                        probe,
                        dfuhil_way,
                    )
                )
            backends = [
                backend_row(way, tool, Rig(farm, state, virtual_tool=tool), board)
                for tool in ("pynrfjprog", "nrfutil")
                for way, board in (
                    ("erase", base),
                    ("first provisioning", base),
                    ("nothing changed", base),
                    ("app rebuilt", variants["rebuilt"]),
                )
            ]
    report(rows)
    report_backends([row for row in backends if row.way != "erase"])
    return 0


@dataclass
class BackendFigures:
    way: str
    tool: str
    starts: int  # process starts for this board (nrfutil's version check counted apart)
    version_checks: int
    bytes_read: int
    bytes_written: int
    device_time_s: float
    wall_s: float


def backend_row(way: str, tool: str, rig: Rig, board: BoardSpec) -> BackendFigures:
    """One way through one backend: a fresh probe session, as a nightly run opens one."""
    probe = rig.probe(board)
    checks_before = rig.nrfutil_starts()
    started = time.monotonic()
    with probe:
        checks = rig.nrfutil_starts() - checks_before
        stats = probe.extension("sim_stats")
        reset_stats = probe.extension("sim_reset_stats")
        assert stats is not None and reset_stats is not None
        reset_stats()
        before = rig.nrfutil_starts()
        if way == "erase":
            probe.erase_all()
        else:
            dfuhil_way(board, probe)
        starts = rig.nrfutil_starts() - before
        s = stats()  # the farm's counters, read over its debug port: no nrfutil start
    wall = time.monotonic() - started
    assert isinstance(probe, NrfutilProbe) == (tool == "nrfutil")
    return BackendFigures(
        way,
        tool,
        starts,
        checks,
        int(s["swd_bytes_read"]),
        int(s["bytes_written"]),
        float(s["device_time_s"]),
        wall,
    )


def report_backends(rows: list[BackendFigures]) -> None:
    print()
    print(
        f"{'backend way':30} {'tool':10} {'starts':>6} {'+version':>8} {'read':>9} "
        f"{'written':>9} {'device s':>9} {'wall s':>7}"
    )
    for r in rows:
        print(
            f"{r.way:30} {r.tool:10} {r.starts:>6} {r.version_checks:>8} {r.bytes_read:>9} "
            f"{r.bytes_written:>9} {r.device_time_s:>9.3f} {r.wall_s:>7.2f}"
        )


def _with_app(base: BoardSpec, app: Path) -> BoardSpec:
    """The same board with another application image in its firmware set."""
    assert base.firmware is not None
    image = ImageRef("application", app, None)
    return replace(base, firmware=replace(base.firmware, application=image))


def report(rows: list[Figures]) -> None:
    naive_time = rows[0].device_time_s
    print(
        f"{'way':50} {'erased':>10} {'written':>10} {'ops':>6} {'device s':>9} "
        f"{'vs (a)':>7} {'wall s':>7}"
    )
    for r in rows:
        ratio = r.device_time_s / naive_time if naive_time else 0.0
        print(
            f"{r.way:50} {r.bytes_erased:>10} {r.bytes_written:>10} {r.operations:>6} "
            f"{r.device_time_s:>9.3f} {ratio:>7.3f} {r.wall_s:>7.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
