"""The virtual farm's built-in firmware behaviours (plug-ins of dfuhil.sim.runtime).

Each mirrors what the real sample does where a person at the bench can see it: LEDs and the
console. The nRF5 SDK for Mesh firmwares (serial bootloader, DFU example) live in
dfuhil.sim.mesh; later ones (MCUboot, Zephyr SMP app) register the same way.
"""

from __future__ import annotations

from dfuhil.sim.runtime import Firmware, behaviour


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
