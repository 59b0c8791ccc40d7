"""Shared helpers for the provisioning, CLI and pytest-layer tests.

Boards files are written with absolute firmware paths into a test's temporary directory; the
virtual farm runs as its own process (``dfuhil sim serve`` via FarmProcess) and is reached only
through the real debug port and ptys. Nothing here fakes a board.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import Farm
from dfuhil.formats.chips import UICR_BASE, Chip, find_chip
from dfuhil.formats.meshdfu import STARTED_APPLICATION_PATTERN
from dfuhil.links.probe import Probe
from dfuhil.procedures.provision import ProvisioningPlan
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import (
    DFU_APP_SIZE,
    Segment,
    default_softdevice,
    hex_text,
    ram_end,
    sample_image,
    short_name,
    to_intelhex,
)
from dfuhil.sim.state import FarmProcess, SimState

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware" / "virtual"
DFUHIL = [sys.executable, "-m", "dfuhil"]
TIME_SCALE = 0.05
# Generous upper bounds only: nothing asserts how long anything took.
BOOT_TIMEOUT_S = 20.0
PROCESS_TIMEOUT_S = 120.0
# The sample DFU app speaks the binary mesh serial protocol: its boot shows as DEVICE_STARTED.
DFU_BOOTED = STARTED_APPLICATION_PATTERN

# The nRF5 SDK for Mesh layouts of the shipped boards.yaml.
LAYOUTS: dict[str, list[tuple[str, int, int]]] = {
    "nRF52832_xxAA": [
        ("softdevice", 0x0, 0x26000),
        ("application", 0x26000, 0x51000),
        ("mbr_params", 0x77000, 0x1000),
        ("bootloader", 0x78000, 0x6000),
        ("device_page_backup", 0x7E000, 0x1000),
        ("device_page", 0x7F000, 0x1000),
    ],
    "nRF51422_xxAC": [
        ("softdevice", 0x0, 0x1B000),
        ("application", 0x1B000, 0x1F000),
        ("bootloader", 0x3A000, 0x5800),
        ("device_page_backup", 0x3F800, 0x400),
        ("device_page", 0x3FC00, 0x400),
    ],
}
BOARD_TYPES = {"nRF52832_xxAA": "PCA10040", "nRF51422_xxAC": "PCA10028"}


def chip(name: str) -> Chip:
    found = find_chip(name)
    assert found is not None, name
    return found


NRF52832 = chip("nRF52832_xxAA")
NRF51422 = chip("nRF51422_xxAC")


# --- firmware ----------------------------------------------------------------------------------


def sample_set(target: Chip) -> dict[str, Path]:
    """The shipped sample firmware set of a chip, role -> absolute hex path."""
    folder = FIRMWARE / short_name(target)
    sd = default_softdevice(target)
    files = {
        "softdevice": folder / f"softdevice_{sd.name}.hex",
        "bootloader": folder / "bootloader.hex",
        "application": folder / "dfu_app.hex",
        "device_page": folder / "device_page.hex",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    assert not missing, f"sample firmware missing (run `make firmware`): {missing}"
    return files


def app_start(target: Chip) -> int:
    return default_softdevice(target).flash_size


def dfu_app_bytes(target: Chip, version: str = "1.0.0", *, start: int | None = None) -> bytes:
    """The sample DFU app as `dfuhil firmware generate` builds it, in any version.

    Same seed and size as the shipped dfu_app.hex, so a new version differs from the shipped
    one only where the behaviour descriptor (its version) differs. It prints no text banner (it
    speaks mesh serial); the virtual CPU's status names the version that runs.
    """
    behaviour = Behaviour(
        kind="mesh_dfu_app", name="dfu example", version=version, banner="", params={}
    )
    where = app_start(target) if start is None else start
    seed = f"{target.name}/dfu_app"
    return sample_image(where, DFU_APP_SIZE, behaviour, seed, ram_end(target))


def write_hex(path: Path, *segments: tuple[int, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hex_text(to_intelhex(Segment(a, d) for a, d in segments)))
    return path


# --- boards files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirmwareSpec:
    """One firmware set of a boards file: role -> file, and the app banner.

    Without a banner the application is mesh serial firmware (the sample DFU app): its boards
    file entry says ``protocol: mesh-serial`` and its console shows DEVICE_STARTED.
    """

    chip: Chip
    files: dict[str, Path]
    banner: str | None = None


@dataclass(frozen=True)
class BoardEntry:
    name: str
    firmware: str
    chip: Chip = NRF52832
    roles: tuple[str, ...] = ("provisioning",)
    extra: dict[str, str] = field(default_factory=dict)  # more `key: value` lines, verbatim


def boards_yaml(
    sets: dict[str, FirmwareSpec], boards: list[BoardEntry], time_scale: float = TIME_SCALE
) -> str:
    """A boards file as a lab engineer would write it: the mesh layouts, the sets, the boards."""
    chips = sorted({b.chip.name for b in boards} | {s.chip.name for s in sets.values()})
    lines = ["version: 1", "virtual_farm:", f"  time_scale: {time_scale}", "flash_layouts:"]
    for name in chips:
        lines += [f"  {layout_name(name)}:", f"    chip: {name}", "    regions:"]
        lines += [
            f"      {region}: {{start: 0x{start:X}, size: 0x{size:X}}}"
            for region, start, size in LAYOUTS[name]
        ]
    lines.append("firmware_sets:")
    for set_name, spec in sets.items():
        lines += [f"  {set_name}:", f"    chip: {spec.chip.name}"]
        for role, path in spec.files.items():
            banner = ""
            if role == "application":
                banner = f", banner: '{spec.banner}'" if spec.banner else ", protocol: mesh-serial"
            lines.append(f"    {role}: {{file: '{path}'{banner}}}")
    lines.append("boards:")
    for board in boards:
        lines += [
            f"  - name: {board.name}",
            f"    chip: {board.chip.name}",
            f"    board_type: {BOARD_TYPES[board.chip.name]}",
            "    probe: {backend: virtual}",
            f"    roles: [{', '.join(board.roles)}]",
            f"    firmware: {board.firmware}",
            f"    flash_layout: {layout_name(board.chip.name)}",
        ]
        lines += [f"    {key}: {value}" for key, value in board.extra.items()]
    return "\n".join(lines) + "\n"


def layout_name(chip_name: str) -> str:
    return f"{chip_name.split('_')[0].lower()}-mesh"


def write_boards(
    path: Path, sets: dict[str, FirmwareSpec], boards: list[BoardEntry]
) -> tuple[Path, Farm]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(boards_yaml(sets, boards))
    return path, load_farm(path, check_files=False)


# --- the virtual farm --------------------------------------------------------------------------


@contextmanager
def running_farm(boards_file: Path, workdir: Path) -> Iterator[SimState]:
    """A `dfuhil sim serve` process for the boards file, stopped (SIGTERM) on exit."""
    process = FarmProcess(
        boards_file, workdir / "state.json", log_dir=workdir / "sim", time_scale=TIME_SCALE
    )
    state = process.start()
    try:
        yield state
    finally:
        process.stop()


def read_flash(probe: Probe) -> bytes:
    out = bytearray()
    size = probe.chip.flash_size
    for start in range(0, size, 0x10000):
        out += probe.read(start, min(0x10000, size - start))
    return bytes(out)


def read_uicr(probe: Probe) -> bytes:
    return probe.read(UICR_BASE, probe.chip.uicr_size)


def snapshot(probe: Probe) -> bytes:
    """Everything provisioning may change: code flash and UICR."""
    return read_flash(probe) + read_uicr(probe)


def stats(probe: Probe) -> dict[str, float]:
    call = probe.extension("sim_stats")
    assert call is not None, "not a virtual board: no sim_stats"
    result: dict[str, float] = call()
    return result


def reset_stats(probe: Probe) -> None:
    call = probe.extension("sim_reset_stats")
    assert call is not None, "not a virtual board: no sim_reset_stats"
    call()


def expected_flash(plan: ProvisioningPlan) -> bytes:
    """What code flash must hold after provisioning with the plan: its pages, erased elsewhere."""
    target = plan.board.chip
    flash = bytearray(b"\xff" * target.flash_size)
    for planned in plan.images.values():
        for page, data in planned.pages.items():
            flash[page : page + len(data)] = data
    return bytes(flash)


def differing_pages(current: bytes, wanted: dict[int, bytes]) -> list[int]:
    return [p for p, data in wanted.items() if current[p : p + len(data)] != data]


def pages_needing_erase(current: bytes, wanted: dict[int, bytes]) -> list[int]:
    """Pages where some bit must go from 0 to 1: NOR flash cannot do that without an erase."""
    return [
        p
        for p, data in wanted.items()
        if any(c & w != w for c, w in zip(current[p : p + len(data)], data, strict=True))
    ]


# --- processes ---------------------------------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (e.g. a tmp boards path)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = next(
                (ln for ln in (entry / "status").read_text().splitlines() if ln[:6] == "State:"),
                "",
            )
        except OSError:
            continue
        if text in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found


def stop_processes(pids: list[int]) -> None:
    """Clean up after a failed check: SIGTERM by pid, processes our own test started."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
