"""The virtual farm's sample firmware set: MBR+SoftDevice, bootloader, apps and device page
(and, in mcuboot_sets.py, the MCUboot builds with their apps and keys).

A virtual board runs no ARM code; these images only have to sit where the real ones sit, look like
them to anything that reads flash (vector table, SoftDevice information structure, UICR records)
and carry a behaviour descriptor where a virtual board should act. Every byte is derived from a
seed string with SHA-256, so regenerating on any machine changes nothing and a test that compares
flash contents against a file is reproducible.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from intelhex import IntelHex

from dfuhil.errors import InputError
from dfuhil.formats.chips import RAM_BASE, UICR_BOOTLOADERADDR, UICR_MBR_PARAMS, Chip, find_chip
from dfuhil.formats.devpage import BootloaderConfig, device_page_hex
from dfuhil.formats.hexfile import DEVICE_PAGE_BYTES_PER_LINE, hex_text
from dfuhil.formats.softdevice import (
    MBR_SIZE,
    SD_INFO_STRUCT_ADDRESS,
    SOFTDEVICES,
    SoftDevice,
    build_info_struct,
)
from dfuhil.sim.descriptor import DESCRIPTOR_OFFSET, RESET_OFFSET, Behaviour, reset_vector_for

# Cortex-M exception numbers 7-10 and 13 are reserved: real vector tables hold 0 there.
_RESERVED_VECTORS = frozenset({7, 8, 9, 10, 13})

BOOTLOADER_SIZE = 16 * 1024
BLINKY_SIZE = 8 * 1024
DFU_APP_SIZE = 12 * 1024

DEFAULT_SOFTDEVICES: dict[str, str] = {
    "nRF51422_xxAC": "s130_2.0.1",
    "nRF52832_xxAA": "s132_7.2.0",
    "nRF52833_xxAA": "s140_7.2.0",
    "nRF52840_xxAA": "s140_7.2.0",
}

# The nRF5 SDK for Mesh serial bootloader and DFU example (dfuhil.sim.mesh). Both speak the
# binary mesh serial protocol only: their boot shows as a DEVICE_STARTED event, never as text.
BOOTLOADER_BEHAVIOUR = Behaviour(
    kind="mesh_bootloader", name="mesh serial bootloader", version="1.0.0", banner="", params={}
)
BLINKY_BEHAVIOUR = Behaviour(
    kind="blinky",
    name="blinky",
    version="1.0.0",
    banner="blinky 1.0.0 started",
    params={"led": 0, "period_ms": 500},
)
DFU_APP_BEHAVIOUR = Behaviour(
    kind="mesh_dfu_app", name="dfu example", version="1.0.0", banner="", params={}
)

# The SDK's default bootloader_config (company 89, application 1) for the nRF52832, the guide's
# kit. The other chips run builds of their own (another application ID): in one mesh they
# relay an nRF52832 package and never install an image linked for another chip.
MESH_APPLICATION_IDS: dict[str, int] = {
    "nRF52832_xxAA": 1,
    "nRF51422_xxAC": 0x5142,
    "nRF52833_xxAA": 0x5283,
    "nRF52840_xxAA": 0x5284,
}


def mesh_bootloader_config(chip: Chip) -> BootloaderConfig:
    return BootloaderConfig(application_id=MESH_APPLICATION_IDS.get(chip.name, 1))


README_TEXT = """\
# Sample firmware for the virtual farm (generated)

These are generated sample images for dfuhil's virtual farm, one directory per chip. They are
not real ARM code: each image has a Cortex-M vector table, deterministic filler bytes and, for the
bootloader and the applications, a behaviour descriptor telling a virtual board what to do. The
SoftDevice images carry a real SoftDevice information structure so the MBR+SoftDevice is
recognised like on a real board. Never flash them to hardware.

Each `mcuboot-<mode>` directory is one MCUboot build of the virtual farm: `mcuboot_<mode>.hex`
(at 0x0, its slots, upgrade mode and trusted key in the descriptor), `smp_app.hex` (a Zephyr
smp_svr-like application, signed with imgtool, version 1.0.0, in the primary slot) and the
unsigned builds the suites sign at test time (`update.bin`, `crash-at-boot.bin`,
`never-confirm.bin`), linked for the primary slot; the direct-xip sets also hold each build
linked for the secondary slot (`*.secondary.bin`), since a direct-xip image runs where it sits.
An image records where it was linked as a real one does: the reset vector in its vector table. `keys/` holds the signing keys, derived from fixed seeds: they are public
knowledge, fit for the virtual farm only. ECDSA signatures are randomised, so a regeneration
keeps an existing `smp_app.hex` as long as its content is unchanged and it still verifies.

Do not edit; regenerate (byte-identical on every machine, signatures aside) with:

    dfuhil firmware generate --out firmware/virtual
"""


@dataclass(frozen=True)
class Segment:
    """Bytes at an address: what one image contributes to a hex file."""

    address: int
    data: bytes


def filler(seed: str, length: int) -> bytes:
    """SHA-256 in counter mode: looks like code to a flash diff, identical on every machine."""
    blocks = (length + 31) // 32
    out = b"".join(hashlib.sha256(f"{seed}#{i}".encode()).digest() for i in range(blocks))
    return out[:length]


def vector_table(initial_sp: int, reset: int, count: int = 16) -> bytes:
    """A Cortex-M vector table: SP, reset, then a default handler right after reset (Thumb)."""
    if count < 2:
        raise ValueError("a vector table needs at least the initial SP and the reset vector")
    if not reset & 1:
        raise ValueError(f"reset handler 0x{reset:08X} lacks the Thumb bit")
    default_handler = reset + 2
    words = [initial_sp, reset]
    words += [0 if n in _RESERVED_VECTORS else default_handler for n in range(2, count)]
    return struct.pack(f"<{count}I", *words)


def sample_image(
    start: int, size: int, behaviour: Behaviour | None, seed: str, initial_sp: int
) -> bytes:
    """Vector table + behaviour descriptor at DESCRIPTOR_OFFSET + filler, ``size`` bytes long."""
    if size < RESET_OFFSET + 4:
        raise ValueError(f"sample image of {size} bytes is too small (min {RESET_OFFSET + 4})")
    image = bytearray(filler(seed, size))
    table = vector_table(initial_sp, reset_vector_for(start))
    image[: len(table)] = table
    if behaviour is not None:
        record = behaviour.encode()
        if DESCRIPTOR_OFFSET + len(record) > RESET_OFFSET:
            raise ValueError("behaviour descriptor overlaps the reset handler")
        image[DESCRIPTOR_OFFSET : DESCRIPTOR_OFFSET + len(record)] = record
    return bytes(image)


def ram_end(chip: Chip) -> int:
    """Initial stack pointer: the top of RAM, as every nRF5 startup file sets it."""
    return RAM_BASE + chip.ram_size


def short_name(chip: Chip) -> str:
    """Directory name for a chip: ``nRF52832_xxAA`` -> ``nrf52832``."""
    return chip.name.split("_", 1)[0].lower()


def default_softdevice(chip: Chip) -> SoftDevice:
    return SOFTDEVICES[DEFAULT_SOFTDEVICES[chip.name]]


def softdevice_image(chip: Chip, sd: SoftDevice) -> bytes:
    """MBR (0x0..0x1000) + SoftDevice up to its end, with the real information structure."""
    sp = ram_end(chip)
    mbr = sample_image(0, MBR_SIZE, None, f"{chip.name}/mbr", sp)
    body = bytearray(
        sample_image(MBR_SIZE, sd.flash_size - MBR_SIZE, None, f"{chip.name}/{sd.name}", sp)
    )
    info = build_info_struct(sd)
    offset = SD_INFO_STRUCT_ADDRESS - MBR_SIZE
    body[offset : offset + len(info)] = info
    return mbr + bytes(body)


def bootloader_segments(chip: Chip) -> list[Segment]:
    """The bootloader image plus the UICR words the real bootloader hex carries."""
    start = chip.mesh_bootloader_start
    if chip.mesh_bootloader_size < BOOTLOADER_SIZE:
        raise ValueError(f"sample bootloader does not fit {chip.name}'s bootloader region")
    image = sample_image(
        start, BOOTLOADER_SIZE, BOOTLOADER_BEHAVIOUR, f"{chip.name}/bootloader", ram_end(chip)
    )
    segments = [Segment(start, image), Segment(UICR_BOOTLOADERADDR, struct.pack("<I", start))]
    if chip.has_mbr_params_page:
        segments.append(Segment(UICR_MBR_PARAMS, struct.pack("<I", start - chip.page_size)))
    return segments


def to_intelhex(segments: Iterable[Segment]) -> IntelHex:
    ih = IntelHex()
    for segment in segments:
        ih.frombytes(segment.data, offset=segment.address)
    return ih


def chip_files(chip: Chip) -> dict[str, str]:
    """File name -> content for one chip's directory."""
    sd = default_softdevice(chip)
    app_start = sd.flash_size
    sp = ram_end(chip)
    blinky = sample_image(app_start, BLINKY_SIZE, BLINKY_BEHAVIOUR, f"{chip.name}/blinky", sp)
    # What the mesh DFU guide sends: the SDK's blinky, silent on the UART (no banner), so a
    # board whose port speaks mesh serial never sees text after the update.
    silent = replace(BLINKY_BEHAVIOUR, banner="")
    dfu_blinky = sample_image(app_start, BLINKY_SIZE, silent, f"{chip.name}/blinky", sp)
    dfu_app = sample_image(app_start, DFU_APP_SIZE, DFU_APP_BEHAVIOUR, f"{chip.name}/dfu_app", sp)
    softdevice = softdevice_image(chip, sd)
    return {
        f"softdevice_{sd.name}.hex": hex_text(to_intelhex([Segment(0, softdevice)])),
        "bootloader.hex": hex_text(to_intelhex(bootloader_segments(chip))),
        "blinky.hex": hex_text(to_intelhex([Segment(app_start, blinky)])),
        "dfu_blinky.hex": hex_text(to_intelhex([Segment(app_start, dfu_blinky)])),
        "dfu_app.hex": hex_text(to_intelhex([Segment(app_start, dfu_app)])),
        "device_page.hex": hex_text(
            device_page_hex(chip, sd, mesh_bootloader_config(chip)), DEVICE_PAGE_BYTES_PER_LINE
        ),
    }


def resolve_chips(chips: Sequence[str] | None) -> list[Chip]:
    """Chips by Nordic name or short alias; all chips with a default SoftDevice when None."""
    if chips is None:
        chips = list(DEFAULT_SOFTDEVICES)
    resolved: list[Chip] = []
    for name in chips:
        chip = find_chip(name)
        if chip is None or chip.name not in DEFAULT_SOFTDEVICES:
            known = ", ".join(DEFAULT_SOFTDEVICES)
            raise InputError(f"no sample firmware for chip {name!r} (known: {known})")
        if chip not in resolved:
            resolved.append(chip)
    return resolved


def write_if_changed(path: Path, text: str | bytes) -> bool:
    """Write only on change, so make and readers see unchanged files as unchanged."""
    data = text.encode("ascii") if isinstance(text, str) else text
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def generate_firmware(out: Path, chips: Sequence[str] | None = None) -> list[Path]:
    """Generate the sample set under ``out``; return the files that were (re)written."""
    from dfuhil.sim.firmware.mcuboot_sets import mcuboot_files  # it builds on this module

    out = Path(out)
    written: list[Path] = []
    plan: list[tuple[Path, str | bytes]] = [(out / "README.md", README_TEXT)]
    for chip in resolve_chips(chips):
        directory = out / short_name(chip)
        plan += [(directory / name, text) for name, text in chip_files(chip).items()]
        plan += [(out / name, content) for name, content in mcuboot_files(chip, out).items()]
    plan = list(dict(plan).items())  # the keys are shared by the chips: write them once
    for path, text in plan:
        if write_if_changed(path, text):
            written.append(path)
    return written
