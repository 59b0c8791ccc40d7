"""Figures: flash operations of one MCUboot upgrade boot on the virtual farm, per upgrade mode.

Each way boots a virtual nRF52 with a shipped firmware set's slot layout once with v1 in the
primary and a signed v2 requested ("test") in the secondary, and counts the NVMC operations (page
erases and writes) the boot performs until the new application runs. The count is what a
power-cut campaign over that upgrade has to replay, and what the upgrade costs in flash wear.

Run: `.venv/bin/python bench/mcuboot_flash_ops.py [--body 0x4000]`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from imgtool import keys as imgtool_keys  # noqa: E402
from mcubootrig import app_image, build_for, mcuboot_board  # noqa: E402

from dfuhil.formats.mcuboot_build import FlashGeometry, Slot  # noqa: E402

WAYS = {  # the shipped firmware sets' layouts (dfuhil.sim.firmware.mcuboot_sets)
    "overwrite-only (nRF52833)": FlashGeometry(
        "overwrite-only", Slot(0xC000, 0x37000), Slot(0x43000, 0x37000)
    ),
    "swap-scratch (nRF52840)": FlashGeometry(
        "swap-scratch", Slot(0xC000, 0x69000), Slot(0x75000, 0x69000), Slot(0xDE000, 0x1E000)
    ),
    "swap-move (nRF52840)": FlashGeometry(
        "swap-move", Slot(0xC000, 0x76000), Slot(0x82000, 0x76000)
    ),
}


def count(geometry: FlashGeometry, body: int, key: object) -> tuple[int, list[str]]:
    assert geometry.secondary is not None
    v1 = app_image(geometry.primary, "1.0.0", key, size=body, slot_size=geometry.primary.size)
    v2 = app_image(geometry.primary, "2.0.0", key, size=body, slot_size=geometry.primary.size)
    build = replace(build_for("swap-move", key), geometry=geometry)
    with mcuboot_board(build, primary=v1, time_scale=0.01) as rig:
        rig.program(geometry.secondary, v2)
        rig.set_pending()
        before = rig.board.flash.stats.operations
        log, running = rig.boot()
        assert running == "2.0.0", running
        return rig.board.flash.stats.operations - before, [
            line for line in log.lines() if "copying" in line or "Starting swap" in line
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", type=lambda s: int(s, 0), default=0x4000)
    args = parser.parse_args()
    key = imgtool_keys.ECDSA256P1.generate()
    for name, geometry in WAYS.items():
        ops, lines = count(geometry, args.body, key)
        print(f"{name}, {args.body:#x}-byte body: {ops} flash operations  {' | '.join(lines)}")


if __name__ == "__main__":
    main()
