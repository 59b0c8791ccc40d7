"""The verdicts of ``mcuboot upgrade`` that need no board: the probe read-back's on flash
contents an SMP server could describe wrongly, and what MCUboot did, from its boot log.

Each case lays real signed images (the shipped builds, signed for the shipped boards) and real
trailer fields (``field_write``, the bytes MCUboot and the app write) into a flash image, and
reads them back the way the upgrade does over SWD. The cases are the states in which a server's
"active, confirmed" would be a false pass: a swap left unconfirmed (the next boot reverts), a
pending request, a direct-xip slot MCUboot will not choose, a direct-xip-revert slot it will
erase, a corrupted copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.formats.mcuboot import ImageVersion
from dfuhil.formats.mcuboot_build import FlashGeometry, Slot
from dfuhil.formats.mcuboot_trailer import Mode, TrailerField, field_write
from dfuhil.links.smp_link import SlotState
from dfuhil.procedures.boot_diagnosis import diagnose
from dfuhil.procedures.image_sign import sign_build
from dfuhil.procedures.mcuboot_dfu import Boot, ImageInfo
from dfuhil.procedures.mcuboot_readback import Readback, read_back
from dfuhil.procedures.mcuboot_upgrade import no_boot_verdict, not_running_verdict

REPO = Path(__file__).resolve().parents[1]


class Flash:
    """A chip's flash as bytes: erased, then what the test programs."""

    def __init__(self, board: BoardSpec) -> None:
        assert board.mcuboot is not None
        self.geometry: FlashGeometry = board.mcuboot.geometry(board.layout)
        self.data = bytearray(b"\xff" * board.chip.flash_size)

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.data[address : address + length])

    def slot(self, number: int) -> Slot:
        slot = self.geometry.primary if number == 0 else self.geometry.secondary
        assert slot is not None
        return slot

    def program(self, number: int, image: bytes) -> None:
        start = self.slot(number).start
        self.data[start : start + len(image)] = image

    def mark(self, number: int, *fields: TrailerField) -> None:
        slot = self.slot(number)
        for name in fields:
            offset, raw = field_write(self.geometry.layout(slot), name, 0 if name == "magic" else 1)
            self.data[slot.start + offset : slot.start + offset + len(raw)] = raw

    def judge(self, new: bytes) -> Readback:
        return read_back(self.read, self.geometry, new)


@pytest.fixture(scope="module")
def boards() -> dict[str, BoardSpec]:
    if not (REPO / "firmware" / "virtual" / "keys").is_dir():
        pytest.fail("no sample firmware: run `make firmware` first")
    farm = load_farm(REPO / "boards.yaml")
    return {b.name: b for b in farm.select(roles=["mcuboot"])}


def image(board: BoardSpec, version: str, slot: str | None = None) -> bytes:
    return sign_build(board, "update", version, slot=slot)


def test_a_confirmed_swap_agrees(boards: dict[str, BoardSpec]) -> None:
    board = boards["vdk52840-swap-move"]
    flash, new = Flash(board), image(board, "1.1.0")
    flash.program(0, new)
    flash.program(1, image(board, "1.0.0"))
    flash.mark(0, "magic", "copy_done", "image_ok")
    result = flash.judge(new)
    assert result.ok, result
    assert "slot 0 (primary, 0xC000): the new image" in str(result)


def test_an_unconfirmed_swap_is_a_revert_at_the_next_reset(boards: dict[str, BoardSpec]) -> None:
    board = boards["vdk52840-swap-scratch"]
    flash, new = Flash(board), image(board, "1.1.0")
    flash.program(0, new)
    flash.mark(0, "magic", "copy_done")  # swapped in for a test, never confirmed
    result = flash.judge(new)
    assert not result.ok
    assert any("revert swap at the next reset" in p for p in result.problems), result
    assert any("image_ok is not set" in p for p in result.problems), result


def test_an_image_still_waiting_in_the_secondary_does_not_run(
    boards: dict[str, BoardSpec],
) -> None:
    board = boards["vdk52840-swap-move"]
    flash, new = Flash(board), image(board, "1.1.0")
    flash.program(0, image(board, "1.0.0"))
    flash.program(1, new)
    flash.mark(1, "magic")  # pending for test
    result = flash.judge(new)
    assert any("not in the primary" in p for p in result.problems), result
    assert any("test swap" in p for p in result.problems), result


def test_a_corrupted_copy_is_no_copy(boards: dict[str, BoardSpec]) -> None:
    board = boards["vdk52833-overwrite-only"]
    flash, new = Flash(board), image(board, "1.1.0")
    flash.program(0, new)
    flash.data[flash.slot(0).start + 0x400] ^= 0x01  # one bit in the body
    result = flash.judge(new)
    assert result.problems == ("no slot holds the image file's bytes",), result
    flash.data[flash.slot(0).start + 0x400] ^= 0x01
    assert flash.judge(new).ok  # overwrite-only: nothing to confirm


@pytest.mark.parametrize(("primary", "ok"), [("1.0.0", True), ("1.1.0", False), ("1.2.0", False)])
def test_direct_xip_runs_the_higher_version_and_the_primary_on_a_tie(
    boards: dict[str, BoardSpec], primary: str, ok: bool
) -> None:
    board = boards["vdk52840-direct-xip"]
    flash, new = Flash(board), image(board, "1.1.0", "secondary")
    flash.program(0, image(board, primary, "primary"))
    flash.program(1, new)
    result = flash.judge(new)
    assert result.ok is ok, result
    if not ok:
        assert f"primary slot holds v{primary}, which MCUboot prefers" in result.problems[0]


def test_direct_xip_revert_erases_a_selected_slot_that_was_never_confirmed(
    boards: dict[str, BoardSpec],
) -> None:
    board = boards["vdk52840-direct-xip-revert"]
    flash, new = Flash(board), image(board, "1.1.0", "secondary")
    flash.program(0, image(board, "1.0.0", "primary"))
    flash.program(1, new)
    flash.mark(1, "magic", "copy_done")  # tested and selected once by MCUboot
    result = flash.judge(new)
    assert any("MCUboot erases it at the next reset" in p for p in result.problems), result
    flash.mark(1, "image_ok")  # the application confirmed it
    assert flash.judge(new).ok


# --- what MCUboot did, from its boot log -----------------------------------------------------

MCUBOOT = "*** Booting MCUboot v2.1.0 ***\nI: Starting bootloader\n"


def _boot(log: str, booted: bool = False) -> Boot:
    return Boot(log, booted, None, diagnose(log))


@pytest.mark.parametrize(
    ("log", "mode", "verdict", "says"),
    [
        (
            MCUBOOT + "I: Boot source: none\nE: Image in the primary slot is not valid!\n"
            "E: Unable to find bootable image\nI: Enter the serial recovery mode\n",
            "single-slot",
            "serial-recovery",
            "stuck in serial recovery",
        ),
        (
            MCUBOOT + "E: Bad image magic 0xffffffff; Image=0\nE: Unable to find bootable image\n",
            "swap-move",
            "no-bootable-image",
            "found no bootable image",
        ),
        (
            (MCUBOOT + "I: Jumping to the first image slot\n*** Booting Zephyr OS build v3 ***\n"
             "E: ***** BUS FAULT *****\nE: >>> ZEPHYR FATAL ERROR 0: CPU exception\n") * 3,
            "overwrite-only",
            "fault",
            "overwrite-only cannot revert, the board now boot-loops",
        ),
        ("", "swap-move", "no-answer", "printed nothing"),
    ],
)  # fmt: skip
def test_no_boot_is_named_from_mcuboots_own_lines(
    log: str, mode: Mode, verdict: str, says: str
) -> None:
    new = ImageInfo(b"\x11" * 32, b"\x22" * 32, ImageVersion.parse("1.1.0"), 0)
    got, text = no_boot_verdict(_boot(log), mode, new)
    assert (got, says in text) == (verdict, True), text


OLD_SLOT = SlotState(0, 0, "1.0.0", b"\x01" * 32, confirmed=True, active=True)
NEW_HASH = b"\x02" * 32


@pytest.mark.parametrize(
    ("log", "slots", "verdict", "says"),
    [
        (MCUBOOT + "I: Image index: 0, Swap type: revert\n", [OLD_SLOT], "reverted",
         "MCUboot reverted the update: v1.0.0 runs again"),
        (MCUBOOT + "E: Image in the secondary slot is not valid!\n", [OLD_SLOT], "erased",
         "not valid and erased it"),
        (MCUBOOT + "I: Image 0 in slot 1 erased due to downgrade prevention\n", [OLD_SLOT],
         "erased", "downgrade prevention"),
        (MCUBOOT + "I: Image index: 0, Swap type: none\n",
         [OLD_SLOT, SlotState(0, 1, "1.1.0", NEW_HASH, pending=True)], "not-applied",
         "still in slot 1"),
    ],
)  # fmt: skip
def test_an_update_that_does_not_run_is_named(
    log: str, slots: list[SlotState], verdict: str, says: str
) -> None:
    new = ImageInfo(NEW_HASH, b"\x22" * 32, ImageVersion.parse("1.1.0"), 0)
    got, text = not_running_verdict(OLD_SLOT, slots, new, _boot(log, True), "swap-move")
    assert (got, says in text) == (verdict, True), text
