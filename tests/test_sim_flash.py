"""NorFlash, in-process: the NOR semantics and accounting that make provisioning bugs visible."""

from __future__ import annotations

import pytest
from simfarm import chip

from dfuhil.formats.chips import FlashTiming
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.flash import FlashFault, NorFlash

PAGE = 0x400
BASE = 0x8000  # not 0, so page arithmetic relative to the base is exercised
SIZE = 4 * PAGE
# Round device times, so expected totals are easy to state; the clock makes them ~free.
TIMING = FlashTiming(write_word_s=0.001, erase_page_s=0.25, erase_all_s=0.5)


def make_flash(timing: FlashTiming = TIMING, page: int = PAGE, pages: int = 4) -> NorFlash:
    return NorFlash(
        base=BASE,
        size=page * pages,
        page_size=page,
        timing=timing,
        clock=VirtualClock(time_scale=0.0001),
        name="test flash",
    )


def programmed(value: int = 0x00) -> NorFlash:
    """A flash with every byte programmed to ``value``."""
    flash = make_flash()
    flash.write(BASE, bytes([value]) * SIZE)
    return flash


def test_erased_flash_reads_all_ff() -> None:
    flash = make_flash()
    assert flash.read(BASE, SIZE) == b"\xff" * SIZE


def test_write_stores_the_bytes_on_erased_flash() -> None:
    flash = make_flash()
    flash.write(BASE + 8, b"\x12\x34\x56\x78")
    assert flash.read(BASE + 4, 12) == b"\xff" * 4 + b"\x12\x34\x56\x78" + b"\xff" * 4


def test_write_only_clears_bits() -> None:
    flash = make_flash()
    flash.write(BASE, b"\xf0" * 4)
    flash.write(BASE, b"\x0f" * 4)
    assert flash.read(BASE, 4) == b"\x00" * 4
    flash.write(BASE + 4, b"\x00" * 4)
    flash.write(BASE + 4, b"\xff" * 4)  # no erase in between: the zeros stay
    assert flash.read(BASE + 4, 4) == b"\x00" * 4


@pytest.mark.parametrize(
    ("offset", "length"),
    [(2, 4), (1, 8), (0, 3), (4, 6), (0, 1)],
    ids=["address+2", "address+1", "length-3", "length-6", "length-1"],
)
def test_misaligned_write_is_refused_and_changes_nothing(offset: int, length: int) -> None:
    flash = make_flash()
    flash.write(BASE, b"\xa5" * 16)
    before = flash.read(BASE, SIZE)
    with pytest.raises(FlashFault, match="not aligned"):
        flash.write(BASE + offset, b"\x00" * length)
    assert flash.read(BASE, SIZE) == before
    assert flash.stats.bytes_written == 16


@pytest.mark.parametrize("address", [BASE - 4, BASE + SIZE - 4, BASE + SIZE])
def test_write_past_either_end_is_refused(address: int) -> None:
    flash = make_flash()
    with pytest.raises(FlashFault, match="outside"):
        flash.write(address, b"\x00" * 8)
    assert flash.read(BASE, SIZE) == b"\xff" * SIZE


def test_read_outside_the_region_is_refused() -> None:
    flash = make_flash()
    with pytest.raises(FlashFault, match="outside"):
        flash.read(BASE + SIZE - 2, 4)


@pytest.mark.parametrize("inside", [0, 0x123, PAGE - 1], ids=["page-start", "mid", "last-byte"])
def test_page_erase_restores_exactly_the_page_containing_the_address(inside: int) -> None:
    flash = programmed(0x00)
    flash.erase_page(BASE + PAGE + inside)
    data = flash.read(BASE, SIZE)
    assert data[:PAGE] == b"\x00" * PAGE
    assert data[PAGE : 2 * PAGE] == b"\xff" * PAGE
    assert data[2 * PAGE :] == b"\x00" * (2 * PAGE)


def test_erased_page_can_be_programmed_again() -> None:
    flash = programmed(0x00)
    flash.erase_page(BASE)
    flash.write(BASE, b"\x5a" * 4)
    assert flash.read(BASE, 8) == b"\x5a" * 4 + b"\xff" * 4


def test_page_erase_outside_the_region_is_refused() -> None:
    flash = programmed(0x00)
    with pytest.raises(FlashFault):
        flash.erase_page(BASE + SIZE)
    assert flash.read(BASE, SIZE) == b"\x00" * SIZE


def test_erase_all_restores_every_byte() -> None:
    flash = programmed(0x3C)
    flash.erase_all()
    assert flash.read(BASE, SIZE) == b"\xff" * SIZE


def test_stats_count_bytes_and_device_time_from_the_timing() -> None:
    flash = make_flash()
    flash.write(BASE, b"\x00" * 64)  # 16 words
    flash.write(BASE + PAGE, b"\x00" * 8)  # 2 words
    flash.erase_page(BASE + 5)
    flash.erase_all()
    stats = flash.stats
    assert stats.bytes_written == 72
    assert stats.pages_erased == 1
    assert stats.erase_all == 1
    assert stats.bytes_erased == PAGE + SIZE
    assert stats.operations == 4
    assert stats.device_time_s == pytest.approx(18 * 0.001 + 0.25 + 0.5)
    assert stats.as_dict()["bytes_written"] == 72


@pytest.mark.parametrize("chip_name", ["nRF51422_xxAC", "nRF52832_xxAA", "nRF52840_xxAA"])
def test_device_time_uses_the_chips_flash_timing(chip_name: str) -> None:
    target = chip(chip_name)
    flash = make_flash(timing=target.timing, page=target.page_size, pages=2)
    flash.write(BASE, b"\x00" * 400)  # 100 words
    flash.erase_page(BASE)
    flash.erase_all()
    t = target.timing
    expected = 100 * t.write_word_s + t.erase_page_s + t.erase_all_s
    assert flash.stats.device_time_s == pytest.approx(expected)
    assert flash.stats.bytes_erased == 3 * target.page_size


def test_load_places_bytes_without_counting_an_operation() -> None:
    flash = make_flash()
    flash.write(BASE, b"\x00" * 4)
    flash.load(BASE, b"\xff\xee\xdd\xcc")  # a restore, not a program: no AND, no cost
    assert flash.read(BASE, 4) == b"\xff\xee\xdd\xcc"
    assert flash.stats.bytes_written == 4
    assert flash.stats.operations == 1


def test_fault_hook_sees_every_operation_before_it_happens() -> None:
    flash = make_flash()
    seen: list[tuple[str, int, bytes]] = []

    def hook(kind: str, address: int) -> None:
        seen.append((kind, address, flash.read(BASE, 4)))

    flash.fault_hook = hook
    flash.write(BASE, b"\x11\x22\x33\x44")
    flash.erase_page(BASE + PAGE + 0x10)
    flash.erase_all()
    assert [(kind, address) for kind, address, _ in seen] == [
        ("write", BASE),
        ("erase_page", BASE + PAGE),  # the page's start, not the address passed in
        ("erase_all", BASE),
    ]
    assert seen[0][2] == b"\xff" * 4  # called before the write landed


class PowerCut(Exception):
    pass


def _cut(kind: str, address: int) -> None:
    raise PowerCut(f"{kind} at 0x{address:X}")


@pytest.mark.parametrize("operation", ["write", "erase_page", "erase_all"])
def test_fault_hook_can_abort_an_operation_leaving_flash_unchanged(operation: str) -> None:
    flash = programmed(0x0F)
    before = flash.read(BASE, SIZE)
    written, erased = flash.stats.bytes_written, flash.stats.bytes_erased
    flash.fault_hook = _cut
    with pytest.raises(PowerCut, match=operation):
        if operation == "write":
            flash.write(BASE + PAGE, b"\x00" * 8)
        elif operation == "erase_page":
            flash.erase_page(BASE + PAGE)
        else:
            flash.erase_all()
    assert flash.read(BASE, SIZE) == before
    assert (flash.stats.bytes_written, flash.stats.bytes_erased) == (written, erased)
    flash.fault_hook = None
    flash.erase_page(BASE + PAGE)  # the flash still works once power is back
    assert flash.read(BASE + PAGE, 4) == b"\xff" * 4
