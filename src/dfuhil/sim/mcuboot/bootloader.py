"""The ``mcuboot`` behaviour plug-in: Zephyr's ``boot/zephyr/main.c`` around ``boot_go``.

Banners, ``Starting bootloader``, the mode's boot (which logs trailers, swap type and swap
progress, spec §3), then serial recovery if the build has it and asks for it, and finally the
chainload lines and the jump to the image body. The build (layout, mode, key, options) comes
from the descriptor's params (:class:`McubootBuild`); the MCUboot image itself carries no
banner of its own in the descriptor, this plug-in prints MCUboot's.
"""

from __future__ import annotations

from dfuhil.sim.mcuboot.bootlog import BootLog
from dfuhil.sim.mcuboot.config import McubootBuild
from dfuhil.sim.mcuboot.core import Boot
from dfuhil.sim.mcuboot.loader import boot_go
from dfuhil.sim.mcuboot.recovery import RecoveryServer
from dfuhil.sim.runtime import Firmware, behaviour

BOOT_MODE_BOOTLOADER = 0x01  # Zephyr retention boot mode in GPREGRET: stay in the bootloader


@behaviour("mcuboot")
class Mcuboot(Firmware):
    def run(self) -> None:
        ctx = self.ctx
        started = ctx.now()
        build = McubootBuild.from_params(ctx.behaviour.params)
        xip = build.geometry.mode in ("direct-xip", "direct-xip-revert")
        log = BootLog(ctx)
        ctx.print(f"*** Booting MCUboot {build.mcuboot_version} ***")
        ctx.print(f"*** Using Zephyr OS build {build.zephyr_version} ***")
        log.inf("Starting Direct-XIP bootloader" if xip else "Starting bootloader")
        boot = Boot(ctx, build, log)
        response = boot_go(boot)

        recovery = build.serial_recovery
        if recovery is not None:
            server = RecoveryServer(ctx, boot, recovery)
            if ctx.gpregret == BOOT_MODE_BOOTLOADER:
                ctx.set_gpregret(0)  # bootmode_clear()
                self.enter_recovery(server, log)
            if recovery.wait_ms > 0:
                remaining = recovery.wait_ms / 1000 - (ctx.now() - started)
                server.serve(timeout_s=remaining)  # returns only if nothing arrived in time

        if response is None:
            log.err("Unable to find bootable image")
            if recovery is not None:
                self.enter_recovery(RecoveryServer(ctx, boot, recovery), log)
            ctx.log("no bootable image: MCUboot panics (FIH_PANIC) and spins")
            ctx.park()

        header = response.header
        log.inf(f"Bootloader chainload address offset: 0x{response.area.start:x}")
        v = header.version
        log.inf(f"Image version: v{v.major}.{v.minor}.{v.revision}")
        log.inf("Jumping to the image slot" if xip else "Jumping to the first image slot")
        ctx.jump(response.entry)

    def enter_recovery(self, server: RecoveryServer, log: BootLog) -> None:
        log.inf("Enter the serial recovery mode")
        server.serve()
