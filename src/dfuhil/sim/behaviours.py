"""The virtual farm's built-in firmware behaviours (plug-ins of dfuhil.sim.runtime).

Each mirrors what the real sample does where a person at the bench can see it: LEDs and the
console. Later behaviours (mesh bootloader, MCUboot, Zephyr SMP app) live in their own modules
and register the same way.
"""

from __future__ import annotations

from dfuhil.formats.softdevice import read_installed_softdevice
from dfuhil.sim.runtime import Firmware, behaviour

ERASED_WORD = 0xFFFFFFFF


@behaviour("blinky")
class Blinky(Firmware):
    """nRF5 SDK blinky: one LED toggled every ``period_ms`` (500 ms: a 1 Hz blink)."""

    def run(self) -> None:
        params = self.ctx.behaviour.params
        led = int(params.get("led", 0))
        half_period = float(params.get("period_ms", 500)) / 1000
        self.ctx.leds_all(False)
        lit = False
        while True:
            lit = not lit
            self.ctx.led(led, lit)
            self.ctx.sleep(half_period)


@behaviour("dfu_app")
class DfuApp(Firmware):
    """The mesh DFU example application at rest: every LED off, waiting for a transfer."""

    def run(self) -> None:
        self.ctx.leds_all(False)
        while True:
            self.ctx.uart_read(timeout_s=1.0)


@behaviour("nrf5_bootloader")
class SampleBootloader(Firmware):
    """A serial bootloader stand-in: start the application if one is there, else wait."""

    def run(self) -> None:
        sd = read_installed_softdevice(self.ctx.read)
        app_start = sd.size if sd is not None else None
        if app_start is not None and self.ctx.read_u32(app_start) != ERASED_WORD:
            self.ctx.log(f"application found at 0x{app_start:X}, starting it")
            self.ctx.jump(app_start)
        self.ctx.log("no application: staying in the bootloader")
        while True:
            self.ctx.uart_read(timeout_s=1.0)
