"""Helpers for the framework's own virtual-farm tests: small boards files, a farm process of
their own, and programming hex files through the debug port exactly as a J-Link would.

A test module starts one farm (module-scoped fixture) with only the boards it needs, so the
tests never depend on the shipped boards.yaml being served, and stop it when the module ends.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from intelhex import IntelHex
from ruamel.yaml import YAML

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import Farm
from dfuhil.formats.chips import Chip, find_chip
from dfuhil.formats.hexfile import hex_text
from dfuhil.links.console import Console
from dfuhil.procedures.image_sign import image_hex
from dfuhil.sim.firmware.generate import generate_firmware, short_name
from dfuhil.sim.firmware.mcuboot_sets import KEYS, app_body, find_set, signed_app
from dfuhil.sim.lowlevel import VirtualLowLevelAPI
from dfuhil.sim.state import FarmProcess, SimState

T = TypeVar("T")

TIME_SCALE = 0.05  # wall seconds per device second: 20x faster than the bench
WAIT_S = 20.0  # generous upper bound for anything the farm has to do; never a speed claim

# The nRF5 SDK for Mesh layouts of the shipped boards.yaml (the loader needs one per board).
_LAYOUTS: dict[str, dict[str, tuple[int, int]]] = {
    "nRF51422_xxAC": {
        "softdevice": (0x0, 0x1B000),
        "application": (0x1B000, 0x1F000),
        "bootloader": (0x3A000, 0x5800),
        "device_page_backup": (0x3F800, 0x400),
        "device_page": (0x3FC00, 0x400),
    },
    "nRF52832_xxAA": {
        "softdevice": (0x0, 0x26000),
        "application": (0x26000, 0x51000),
        "mbr_params": (0x77000, 0x1000),
        "bootloader": (0x78000, 0x6000),
        "device_page_backup": (0x7E000, 0x1000),
        "device_page": (0x7F000, 0x1000),
    },
    "nRF52840_xxAA": {
        "softdevice": (0x0, 0x27000),
        "application": (0x27000, 0xD0000),
        "mbr_params": (0xF7000, 0x1000),
        "bootloader": (0xF8000, 0x6000),
        "device_page_backup": (0xFE000, 0x1000),
        "device_page": (0xFF000, 0x1000),
    },
}


@dataclass(frozen=True)
class SimBoard:
    """One virtual board of a test farm."""

    name: str
    chip: str  # Nordic's name, e.g. "nRF52832_xxAA"
    board_type: str  # DK, e.g. "PCA10040" (gives the LED pins)
    snr: int
    baud: int = 115200


def chip(name: str) -> Chip:
    found = find_chip(name)
    assert found is not None, f"no chip {name} in the catalogue"
    return found


def boards_yaml(boards: Sequence[SimBoard], time_scale: float = TIME_SCALE) -> str:
    """A boards file in the shape of the shipped boards.yaml, for exactly these boards."""
    lines = ["version: 1", f"virtual_farm: {{time_scale: {time_scale}}}", "flash_layouts:"]
    for chip_name in sorted({b.chip for b in boards}):
        lines += [f"  {chip_name.lower()}-mesh:", f"    chip: {chip_name}", "    regions:"]
        for region, (start, size) in _LAYOUTS[chip_name].items():
            lines.append(f"      {region}: {{start: 0x{start:X}, size: 0x{size:X}}}")
    lines.append("boards:")
    for b in boards:
        lines += [
            f"  - name: {b.name}",
            f"    chip: {b.chip}",
            f"    board_type: {b.board_type}",
            f"    probe: {{backend: virtual, snr: {b.snr}}}",
            f"    serial: {{port: virtual, baud: {b.baud}, flow_control: none}}",
            "    roles: [provisioning]",
            f"    flash_layout: {b.chip.lower()}-mesh",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class RunningFarm:
    """A ``dfuhil sim serve`` child process and what it published in its state file."""

    process: FarmProcess
    state: SimState
    boards_file: Path
    log_dir: Path

    def farm(self) -> Farm:
        return load_farm(self.boards_file)

    @property
    def endpoint(self) -> str:
        return next(iter(self.state.boards.values())).endpoint

    def snr(self, board: str) -> int:
        return self.state.board(board).snr

    def serial(self, board: str) -> str:
        return self.state.board(board).serial

    def log_text(self, board: str) -> str:
        """The board's own simulation log (what the virtual CPU and firmware reported)."""
        path = self.log_dir / f"{board}.sim.log"
        return path.read_text() if path.exists() else ""

    @contextmanager
    def api(self, board: str) -> Iterator[VirtualLowLevelAPI]:
        """An open debug session to ``board``, connected to its probe and device."""
        api = VirtualLowLevelAPI("AUTO", endpoint=self.endpoint)
        api.open()
        try:
            api.connect_to_emu_with_snr(self.snr(board))
            api.connect_to_device()
            yield api
        finally:
            api.close()

    def console(self, board: str, baud: int = 115200) -> Console:
        return Console(self.serial(board), baud=baud, name=board)

    def stop(self) -> None:
        self.process.stop()


@contextmanager
def running_farm(
    directory: Path, boards: Sequence[SimBoard], time_scale: float = TIME_SCALE
) -> Iterator[RunningFarm]:
    """Write a boards file for ``boards`` into ``directory`` and serve it until the block ends."""
    boards_file = directory / "boards.yaml"
    boards_file.write_text(boards_yaml(boards, time_scale))
    log_dir = directory / "sim-logs"
    process = FarmProcess(
        boards_file, directory / "sim-state.json", log_dir=log_dir, time_scale=time_scale
    )
    state = process.start()
    try:
        yield RunningFarm(process, state, boards_file, log_dir)
    finally:
        process.stop()


def sample_firmware(directory: Path, chip_names: Sequence[str]) -> dict[str, Path]:
    """Generate the sample firmware set for these chips; chip name -> its directory."""
    generate_firmware(directory, list(chip_names))
    return {name: directory / short_name(chip(name)) for name in chip_names}


def hex_segments(path: Path) -> list[tuple[int, bytes]]:
    """The contiguous (address, bytes) runs of an Intel HEX file."""
    ih = IntelHex(str(path))
    return [
        (start, bytes(ih.tobinarray(start=start, size=end - start))) for start, end in ih.segments()
    ]


def program_hex(api: VirtualLowLevelAPI, path: Path) -> None:
    """Write every segment of a hex file through the NVMC (flash and UICR alike)."""
    for address, data in hex_segments(path):
        api.write(address, data, True)


def wait_until(
    probe: Callable[[], T], accept: Callable[[T], bool], what: str, timeout_s: float = WAIT_S
) -> T:
    """Poll ``probe`` until ``accept`` says yes; AssertionError naming ``what`` and the last
    value seen otherwise. ``timeout_s`` is a generous bound, not a speed requirement."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout_s:.0f} s")
        time.sleep(0.01)


def wait_cpu_status(api: VirtualLowLevelAPI, prefix: str, timeout_s: float = WAIT_S) -> str:
    """Wait until the virtual CPU's status starts with ``prefix``; return the whole status."""
    status: str = wait_until(
        lambda: str(api.sim_status()["cpu"]),
        lambda s: s.startswith(prefix),
        f"virtual CPU status should start with {prefix!r}",
        timeout_s,
    )
    return status


REPO = Path(__file__).resolve().parents[1]


def shipped_subset(
    path: Path,
    names: Sequence[str],
    time_scale: float,
    edit: Callable[[Any], None] | None = None,
) -> Path:
    """The shipped boards.yaml with only ``names`` (``edit`` may change the loaded document
    first), file paths made absolute."""
    yaml = YAML()
    data = yaml.load((REPO / "boards.yaml").read_text())
    data["boards"] = [b for b in data["boards"] if b["name"] in names]
    data["virtual_farm"] = {"time_scale": time_scale}
    if edit is not None:
        edit(data)
    out = io.StringIO()
    yaml.dump(data, out)
    text = out.getvalue()
    for folder in ("firmware/", "examples/"):
        text = text.replace(f" {folder}", f" {REPO / folder}/")
    path.write_text(text)
    return path


BLE_ONLY_SET = "nrf52840-mcuboot-swap-move-ble-only"


def use_ble_only_build(data: Any, board: Any, folder: Path) -> None:
    """Point ``board`` (a swap-move entry of a loaded boards.yaml) at the shipped app built
    without the UDP transport (smp_svr with overlay-bt.conf alone): Zephyr's stock 4 MCUmgr
    netbufs, so 3 requests fit in flight. The shipped build has UDP too, and with it the UDP
    default of 2 netbufs: one request at a time. The hex is written to ``folder``."""
    nrf52840 = chip("nRF52840_xxAA")
    mset = replace(find_set(nrf52840.name, "swap-move"), udp=False)
    app = folder / "smp_app-ble-only.hex"
    if not app.exists():
        key = REPO / "firmware" / "virtual" / "keys" / KEYS[mset.key].file
        signed = signed_app(mset, app_body(mset, nrf52840), key, None)
        app.write_text(hex_text(image_hex(signed, mset.primary[0])))
    if BLE_ONLY_SET not in data["firmware_sets"]:
        firmware = copy.deepcopy(data["firmware_sets"][board["firmware"]])
        firmware["application"]["file"] = str(app)
        firmware["mcuboot"]["transports"] = ["serial", "ble"]
        data["firmware_sets"][BLE_ONLY_SET] = firmware
    board["firmware"] = BLE_ONLY_SET
    board.pop("smp_udp", None)
