"""LED classification on synthetic series, and LedObserver against a register bank whose OUT
bits a thread toggles on a timer (states and loose frequencies only, never timings)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dfuhil.formats.chips import GPIO_DIR as DIR
from dfuhil.formats.chips import GPIO_OUT as OUT
from dfuhil.formats.chips import GPIO_P0_BASE, GPIO_P1_BASE, Chip, find_chip
from dfuhil.procedures.leds import LedObserver, LedReading, classify, describe


def chip(name: str) -> Chip:
    found = find_chip(name)
    assert found is not None
    return found


NRF52832 = chip("nRF52832_xxAA")
NRF52840 = chip("nRF52840_xxAA")


def square(
    hz: float, seconds: float, rate: float = 100.0, duty: float = 0.5
) -> list[tuple[float, bool]]:
    period = 1.0 / hz
    return [(i / rate, (i / rate) % period < duty * period) for i in range(int(seconds * rate))]


# -- classify -----------------------------------------------------------------------------


def test_steady_on_and_off() -> None:
    assert classify([(i * 0.01, True) for i in range(200)]) == ("on", None, 1.0)
    assert classify([(i * 0.01, False) for i in range(200)]) == ("off", None, 0.0)


@pytest.mark.parametrize("hz", [1.0, 5.0, 0.5])
def test_square_wave(hz: float) -> None:
    state, frequency, duty = classify(square(hz, seconds=4.0))
    assert state == "blinking"
    assert frequency == pytest.approx(hz, rel=0.05)
    assert duty == pytest.approx(0.5, abs=0.05)


def test_duty_of_short_flashes() -> None:
    state, frequency, duty = classify(square(2.0, seconds=3.0, duty=0.25))
    assert state == "blinking"
    assert frequency == pytest.approx(2.0, rel=0.05)
    assert duty == pytest.approx(0.25, abs=0.03)


def test_single_toggle_is_not_blinking() -> None:
    went_on = [(i * 0.01, i >= 50) for i in range(200)]
    assert classify(went_on)[:2] == ("on", None)
    went_off = [(i * 0.01, i < 50) for i in range(200)]
    assert classify(went_off)[:2] == ("off", None)


def test_one_flash_uses_the_half_period() -> None:
    flash = [(i * 0.01, 50 <= i < 100) for i in range(200)]  # on for 0.5 s once
    state, frequency, _ = classify(flash)
    assert state == "blinking"
    assert frequency == pytest.approx(1.0, rel=0.05)
    assert classify(flash, min_toggles=3)[0] == "off"


def test_unsorted_samples_and_empty() -> None:
    series = square(1.0, seconds=3.0)
    assert classify(list(reversed(series))) == classify(series)
    with pytest.raises(ValueError):
        classify([])


# -- LedObserver ----------------------------------------------------------------------------


class RegisterBank:
    """Stands in for a debug probe: 32-bit registers, reads counted per address."""

    def __init__(self) -> None:
        self.regs: dict[int, int] = {}
        self.reads: Counter[int] = Counter()
        self.lock = threading.Lock()

    def read_u32(self, address: int) -> int:
        with self.lock:
            self.reads[address] += 1
            return self.regs.get(address, 0)

    def set_bit(self, address: int, bit: int, value: bool) -> None:
        with self.lock:
            old = self.regs.get(address, 0)
            self.regs[address] = (old | (1 << bit)) if value else (old & ~(1 << bit))

    def toggle(self, address: int, bit: int) -> None:
        with self.lock:
            self.regs[address] = self.regs.get(address, 0) ^ (1 << bit)


@contextmanager
def blinking(bank: RegisterBank, base: int, bit: int, wall_hz: float) -> Iterator[None]:
    """Firmware stand-in: toggles one OUT bit every half period (wall clock) on a thread."""
    stop = threading.Event()
    half = 0.5 / wall_hz

    def run() -> None:
        start = time.monotonic()
        n = 0
        while not stop.wait(max(0.0, start + (n + 1) * half - time.monotonic())):
            bank.toggle(base + OUT, bit)
            n += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def dk_bank(pins: list[int], base: int = GPIO_P0_BASE, dark: bool = True) -> RegisterBank:
    """Pins configured as outputs, driven to the inactive (high) level of active-low LEDs."""
    bank = RegisterBank()
    for pin in pins:
        bank.set_bit(base + DIR, pin % 32, True)
        bank.set_bit(base + OUT, pin % 32, dark)
    return bank


def test_nrf52_dk_leds_active_low() -> None:
    bank = dk_bank([17, 18, 19])
    bank.set_bit(GPIO_P0_BASE + OUT, 18, False)  # LED2 on (active low)
    bank.set_bit(GPIO_P0_BASE + OUT, 20, False)  # LED4 pin low but an input: dark
    observer = LedObserver(bank.read_u32, NRF52832, [17, 18, 19, 20])
    with blinking(bank, GPIO_P0_BASE, 17, wall_hz=5.0):
        readings = observer.sample(window_s=1.5)
    assert [r.state for r in readings] == ["blinking", "on", "off", "off"]
    assert readings[0].frequency_hz == pytest.approx(5.0, rel=0.3)
    assert readings[0].duty == pytest.approx(0.5, abs=0.2)
    assert readings[1].frequency_hz is None and readings[1].duty == 1.0
    assert all(r.samples >= 2 for r in readings)
    assert [r.pin for r in readings] == [17, 18, 19, 20]


def test_active_high_inverts() -> None:
    bank = dk_bank([17, 18])
    bank.set_bit(GPIO_P0_BASE + OUT, 18, False)
    low = LedObserver(bank.read_u32, NRF52832, [17, 18], active_low=True)
    high = LedObserver(bank.read_u32, NRF52832, [17, 18], active_low=False)
    assert low.snapshot() == [False, True]
    assert high.snapshot() == [True, False]


def test_dir_input_means_off_whatever_out_says() -> None:
    bank = RegisterBank()
    bank.regs[GPIO_P0_BASE + OUT] = 0x0  # active level everywhere, but DIR=0
    assert LedObserver(bank.read_u32, NRF52832, [17], active_low=True).snapshot() == [False]
    bank.regs[GPIO_P0_BASE + OUT] = 0xFFFFFFFF
    assert LedObserver(bank.read_u32, NRF52832, [17], active_low=False).snapshot() == [False]


def test_nrf52840_pin_on_p1_with_time_scale() -> None:
    """P1.02 blinks at 1 Hz device time on a board running 4x faster than real time."""
    bank = dk_bank([13])
    bank.set_bit(GPIO_P1_BASE + DIR, 2, True)
    bank.set_bit(GPIO_P1_BASE + OUT, 2, True)
    observer = LedObserver(bank.read_u32, NRF52840, [13, 34], time_scale=0.25)
    bank.reads.clear()
    assert observer.snapshot() == [False, False]
    assert bank.reads == Counter(
        {GPIO_P0_BASE + OUT: 1, GPIO_P0_BASE + DIR: 1, GPIO_P1_BASE + OUT: 1, GPIO_P1_BASE + DIR: 1}
    )
    with blinking(bank, GPIO_P1_BASE, 2, wall_hz=4.0):
        readings = observer.sample(window_s=3.0)
    assert readings[0].state == "off"
    assert readings[1].state == "blinking"
    assert readings[1].frequency_hz == pytest.approx(1.0, rel=0.3)  # device Hz, not wall Hz
    assert "LED2 (P1.02): blinking" in describe(readings)


def test_wait_for_returns_once_the_state_is_reached() -> None:
    bank = dk_bank([17, 18])
    observer = LedObserver(bank.read_u32, NRF52832, [17, 18])
    with blinking(bank, GPIO_P0_BASE, 18, wall_hz=5.0):
        readings = observer.wait_for(["off", "blinking"], timeout_s=20, window_s=1.0)
    assert readings[1].state == "blinking"


def test_wait_for_failure_shows_a_table() -> None:
    bank = dk_bank([17, 18])
    observer = LedObserver(bank.read_u32, NRF52832, [17, 18])
    with pytest.raises(AssertionError) as info:
        observer.wait_for(["blinking", None], timeout_s=0.2, window_s=0.1)
    table = str(info.value)
    assert "LED1" in table and "P0.17" in table and "mismatch" in table
    lines = table.splitlines()
    assert "expected" in lines[1] and "seen" in lines[1] and "Hz" in lines[1]
    assert "blinking" in lines[2] and "off" in lines[2]
    assert "mismatch" not in lines[3]  # LED2 had no expectation
    with pytest.raises(ValueError):
        observer.wait_for(["on"])


def test_describe_and_bad_pins() -> None:
    readings = [
        LedReading(0, 17, "blinking", 1.0, 0.5, 200),
        LedReading(1, 18, "off", None, 0.0, 200),
        LedReading(2, 35, "on", None, 1.0, 200),
    ]
    assert (
        describe(readings) == "LED1 (P0.17): blinking 1.0 Hz | LED2 (P0.18): off | LED3 (P1.03): on"
    )
    with pytest.raises(ValueError, match="no GPIO pin 40"):
        LedObserver(RegisterBank().read_u32, NRF52832, [40])


def test_block_read_fetches_out_and_dir_of_a_port_in_one_call() -> None:
    bank = dk_bank([17, 18])
    bank.set_bit(GPIO_P0_BASE + OUT, 18, False)
    calls: list[tuple[int, int]] = []

    def read(address: int, length: int) -> bytes:
        calls.append((address, length))
        words = (bank.read_u32(address + offset) for offset in range(0, length, 4))
        return b"".join(w.to_bytes(4, "little") for w in words)

    observer = LedObserver(bank.read_u32, NRF52832, [17, 18], read=read)
    assert observer.snapshot() == LedObserver(bank.read_u32, NRF52832, [17, 18]).snapshot()
    assert observer.snapshot() == [False, True]
    assert calls == [(GPIO_P0_BASE + OUT, DIR - OUT + 4)] * 2
