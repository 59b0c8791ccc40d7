"""The virtual CPU: decides what runs from what is in flash, and runs it as a plug-in.

At every reset the runtime does what the silicon and Nordic's MBR do: start the image at 0x0 if
it is one the virtual board can run; otherwise, if the MBR and a SoftDevice are installed (found
by the SoftDevice information structure), continue at UICR.BOOTLOADERADDR when it is set, else at
the end of the SoftDevice. The image found there must carry a behaviour descriptor
(sim/descriptor.py) naming a registered :class:`Firmware` plug-in; real ARM code is reported as
such and the CPU stays parked, as a virtual board must never pretend.

A jump goes where silicon goes: to the reset vector of the vector table at the target. A sample
image started somewhere other than where it was linked (its reset vector names its link address,
sim/descriptor.py) sends the CPU into another image's flash; the virtual CPU does not guess what
that code would do, it takes the fault a non-relocatable image takes there: the fault dump of the
handler still in charge (the bootloader's Zephyr, VTOR unchanged: MCUboot builds without
CONFIG_BOOT_INTR_VEC_RELOC), the faulting PC at that reset handler, and a system reset
(CONFIG_RESET_ON_FATAL_ERROR, nRF Connect SDK's default).

Plug-ins register with :func:`behaviour` (built-ins in ``dfuhil.sim.behaviours`` and
``dfuhil.sim.mesh`` and, for third parties, the ``dfuhil.behaviours`` entry-point group); nothing
here knows any plug-in by name.
"""

from __future__ import annotations

import importlib
import logging
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, NoReturn

from dfuhil.formats.chips import ERASED_WORD, UICR_BOOTLOADERADDR
from dfuhil.formats.softdevice import read_installed_softdevice
from dfuhil.sim import descriptor
from dfuhil.sim.clock import ResetSignal
from dfuhil.sim.descriptor import Behaviour

if TYPE_CHECKING:
    from dfuhil.sim.board import VirtualBoard

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Firmware]] = {}
_BUILTINS = ("dfuhil.sim.behaviours", "dfuhil.sim.mesh", "dfuhil.sim.smp", "dfuhil.sim.mcuboot")
_loaded = False
_loading = threading.RLock()  # a plug-in module may look the registry up while it loads


def behaviour(kind: str) -> Callable[[type[Firmware]], type[Firmware]]:
    """Class decorator: register a firmware plug-in under the descriptor's ``kind``."""

    def register(cls: type[Firmware]) -> type[Firmware]:
        _REGISTRY[kind] = cls
        return cls

    return register


def registry() -> dict[str, type[Firmware]]:
    """Every plug-in, loaded once; boards booting at the same moment wait for the whole set."""
    global _loaded
    with _loading:
        if not _loaded:
            for module in _BUILTINS:
                importlib.import_module(module)
            for ep in entry_points(group="dfuhil.behaviours"):
                ep.load()
            _loaded = True
    return _REGISTRY


class Jump(BaseException):
    """Raised by a firmware to hand the CPU to the image at ``address`` (a bootloader's jump)."""

    def __init__(self, address: int) -> None:
        super().__init__(f"jump to 0x{address:08X}")
        self.address = address


class Firmware(ABC):
    """One behaviour plug-in instance: lives from a boot until the next reset or jump."""

    def __init__(self, ctx: FirmwareContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def run(self) -> None:
        """The firmware's main; returning parks the CPU (idle) until the next reset."""


@dataclass(frozen=True)
class BootTarget:
    address: int
    behaviour: Behaviour | None
    status: str  # "running <name>" or why nothing can run
    fault_pc: int | None = None  # started away from its link address: where the CPU faults


class FirmwareContext:
    """What a plug-in may touch: the same things firmware on the chip can."""

    def __init__(self, board: VirtualBoard, cancel: threading.Event, target: BootTarget) -> None:
        self.board = board
        self.cancel = cancel
        self.address = target.address
        assert target.behaviour is not None
        self.behaviour = target.behaviour

    # time
    def now(self) -> float:
        return self.board.clock.now()

    def sleep(self, device_s: float) -> None:
        self.checkpoint()
        if not self.board.clock.sleep(device_s, self.cancel):
            raise ResetSignal
        self.checkpoint()

    def checkpoint(self) -> None:
        """Unwind on reset; block while a debugger holds the CPU halted."""
        self.board.cpu.wait_running(self.cancel)

    # UART
    def uart_write(self, data: bytes) -> None:
        self.checkpoint()
        self.board.uart.write(data)

    def print(self, line: str) -> None:
        self.uart_write(line.encode() + b"\r\n")

    def uart_read(self, max_bytes: int = 4096, timeout_s: float | None = None) -> bytes:
        self.checkpoint()
        return self.board.uart.read(max_bytes, timeout_s, self.cancel)

    # network (one UDP socket on loopback per board, see dfuhil.sim.udp)
    def udp_receive(self, timeout_s: float | None = None) -> tuple[bytes, tuple[str, int]] | None:
        """The next datagram and its sender within ``timeout_s`` device seconds, else None."""
        self.checkpoint()
        return self.board.udp.receive(timeout_s, self.cancel)

    def udp_send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.checkpoint()
        self.board.udp.send(data, addr)

    # radio (the farm's shared air; packets are opaque bytes, see dfuhil.sim.radio)
    def radio_send(self, packet: bytes) -> None:
        self.checkpoint()
        self.board.radio.send(packet)

    def radio_receive(self, timeout_s: float | None = None) -> bytes | None:
        """The next packet heard within ``timeout_s`` device seconds; turns the receiver on."""
        self.checkpoint()
        return self.board.radio.receive(timeout_s, self.cancel)

    # POWER.GPREGRET: survives a system reset, so a firmware can tell the next boot what to do
    @property
    def gpregret(self) -> int:
        return self.board.gpregret

    def set_gpregret(self, value: int) -> None:
        self.board.gpregret = value

    # GPIO and LEDs (the board support package knows the DK's pins)
    def led(self, index: int, lit: bool) -> None:
        pins = self.board.led_pins
        if 0 <= index < len(pins):
            level = (not lit) if self.board.leds_active_low else lit
            self.board.gpio.drive(pins[index], level)

    def leds_all(self, lit: bool) -> None:
        for i in range(len(self.board.led_pins)):
            self.led(i, lit)

    # memory and flash, as the CPU sees them
    def read(self, address: int, length: int) -> bytes:
        return self.board.read(address, length)

    def read_u32(self, address: int) -> int:
        return int.from_bytes(self.board.read(address, 4), "little")

    def flash_write(self, address: int, data: bytes) -> None:
        self.checkpoint()
        self.board.nvmc_write(address, data)

    def flash_erase_page(self, address: int) -> None:
        self.checkpoint()
        self.board.nvmc_erase_page(address)

    def flash_torn(self, address: int, length: int) -> bool:
        """Whether a power cut left a page of this range torn (not a chip register: the
        virtual MCUboot's own write check asks it, so it allows what MCUboot does there)."""
        return self.board.flash.is_torn(address, length)

    # control flow
    def jump(self, address: int) -> NoReturn:
        raise Jump(address)

    def system_reset(self) -> NoReturn:
        """NVIC_SystemReset(): the CPU restarts from the boot chain."""
        self.board.cpu.reset(halt=False, reason="firmware requested system reset")
        raise ResetSignal

    def log(self, message: str) -> None:
        self.board.log.info("%s: %s", self.behaviour.name, message)

    def park(self) -> NoReturn:
        """Idle until the next reset (WFE forever)."""
        while True:
            self.sleep(3600)


def boot_entry(board: VirtualBoard) -> int:
    """Where the CPU starts after reset: the image at 0, or the MBR's choice."""
    if _descriptor_at(board, 0) is not None:
        return 0
    sd = read_installed_softdevice(board.read)
    if sd is not None:
        bootloader = board.read_u32(UICR_BOOTLOADERADDR)
        return bootloader if bootloader != ERASED_WORD else sd.size
    return 0


def _descriptor_at(board: VirtualBoard, address: int) -> Behaviour | None:
    start = address + descriptor.DESCRIPTOR_OFFSET
    if not board.chip.is_flash(start):
        return None
    length = min(descriptor.read_length(), board.chip.flash_size - start)
    try:
        return descriptor.decode(board.read(start, length))
    except (descriptor.DescriptorError, ValueError):
        return None


def resolve(board: VirtualBoard, address: int) -> BootTarget:
    """What is at ``address``, and can this virtual board run it?"""
    if not board.chip.is_flash(address):
        return BootTarget(address, None, f"halted: jump to 0x{address:08X}, which is not flash")
    if board.read_u32(address) == ERASED_WORD:
        return BootTarget(
            address,
            None,
            f"halted: no firmware at 0x{address:08X} (flash erased; a real nRF5 would lock up)",
        )
    start = address + descriptor.DESCRIPTOR_OFFSET
    length = min(descriptor.read_length(), board.chip.flash_size - start)
    try:
        found = descriptor.decode(board.read(start, length))
    except descriptor.DescriptorError as exc:
        return BootTarget(address, None, f"halted: image at 0x{address:08X}: {exc}")
    if found is None:
        return BootTarget(
            address,
            None,
            f"cannot run on a virtual board: the image at 0x{address:08X} is real ARM code "
            "(no dfuhil behaviour descriptor); use real hardware for it",
        )
    if found.kind not in registry():
        known = ", ".join(sorted(registry()))
        return BootTarget(
            address, None, f"halted: no behaviour plug-in '{found.kind}' (known: {known})"
        )
    reset = board.read_u32(address + 4)
    linked = descriptor.link_address(reset)
    if linked != address:
        return BootTarget(
            address,
            found,
            f"faulted: {found.name} {found.version} at 0x{address:08X} is linked for "
            f"0x{linked:08X}; its reset vector 0x{reset:08X} leads out of the image",
            fault_pc=reset & ~1,
        )
    return BootTarget(address, found, f"running {found.name} {found.version} at 0x{address:08X}")


FAULT_RESET_S = 0.05  # the fault dump, then NVIC_SystemReset (device seconds)


def hard_fault(ctx: FirmwareContext, pc: int) -> NoReturn:
    """What a Cortex-M does at a reset handler outside the started image: fault, dump, reset."""
    ctx.print("E: ***** HARD FAULT *****")
    ctx.print("E:   Fault escalation (see below)")
    ctx.print("E: ***** USAGE FAULT *****")
    if ctx.read_u32(pc) == ERASED_WORD:
        ctx.print("E:   Attempt to execute undefined instruction")
    ctx.print(f"E: Faulting instruction address (r15/pc): 0x{pc:08x}")
    ctx.print("E: >>> ZEPHYR FATAL ERROR 0: CPU exception on CPU 0")
    ctx.print("E: Resetting system")
    ctx.log(
        f"the image at 0x{ctx.address:08X} was linked elsewhere: the CPU jumped to its reset "
        f"handler at 0x{pc:08X} and faulted"
    )
    ctx.sleep(FAULT_RESET_S)
    ctx.system_reset()


class Cpu:
    """Reset, halt and run; one firmware thread per boot."""

    def __init__(self, board: VirtualBoard) -> None:
        self.board = board
        self._running = threading.Event()  # cleared = halted by a debugger
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._stopped = False  # the board is shut down: no reset starts firmware again
        self.status = "powered, not started"
        self.boots = 0

    @property
    def halted(self) -> bool:
        return not self._running.is_set()

    def wait_running(self, cancel: threading.Event) -> None:
        while not self._running.wait(0.05):
            if cancel.is_set():
                raise ResetSignal
        if cancel.is_set():
            raise ResetSignal

    def halt(self) -> None:
        self._running.clear()

    def go(self) -> None:
        self._running.set()

    def reset(self, *, halt: bool, reason: str) -> None:
        """Stop the current firmware, reset peripherals, start again from the boot chain."""
        with self._lock:
            self._cancel.set()
            self.board.uart.wake()
            old = self._thread
            if old is not None and old is not threading.current_thread():
                old.join(timeout=5)
            if self._stopped:
                return
            self.board.reset_peripherals()
            self._cancel = threading.Event()
            if halt:
                self._running.clear()
            else:
                self._running.set()
            self.boots += 1
            # The previous boot's status ("running blinky ...") is no longer true.
            self.status = "reset: halted, waiting for go()" if halt else "reset: starting"
            self.board.log.info("reset (%s)%s", reason, ", halted" if halt else "")
            self._thread = threading.Thread(
                target=self._main,
                args=(self._cancel,),
                name=f"{self.board.name}-cpu{self.boots}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Shut the CPU down for good. Under the lock, so that a reset the firmware itself is
        requesting (a crashing app) either finished starting its thread or never starts one."""
        with self._lock:
            self._stopped = True
            self._cancel.set()
            self.board.uart.wake()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def power_off(self, status: str) -> None:
        """The supply is gone: stop the firmware wherever it is and stay off until a reset."""
        with self._lock:
            self._cancel.set()
            self.board.uart.wake()
            old = self._thread
            if old is not None and old is not threading.current_thread():
                old.join(timeout=5)
            self._running.clear()
            self._set_status(status)

    def _main(self, cancel: threading.Event) -> None:
        try:
            self.wait_running(cancel)
            address = boot_entry(self.board)
            while True:
                target = resolve(self.board, address)
                self._set_status(target.status)
                if target.behaviour is None:
                    return
                ctx = FirmwareContext(self.board, cancel, target)
                if target.fault_pc is not None:
                    hard_fault(ctx, target.fault_pc)
                try:
                    if target.behaviour.banner:
                        ctx.print(target.behaviour.banner)
                    registry()[target.behaviour.kind](ctx).run()
                    self._set_status(f"idle: {target.behaviour.name} returned")
                    ctx.park()
                except Jump as jump:
                    address = jump.address
        except ResetSignal:  # also PowerLoss: the board cut its power first, the status says so
            return
        except Exception:  # a plug-in bug must not take the farm down; the log says what
            self._set_status("crashed: firmware plug-in raised (see the virtual farm log)")
            self.board.log.error("firmware crashed:\n%s", traceback.format_exc())

    def _set_status(self, status: str) -> None:
        self.status = status
        self.board.log.info("cpu: %s", status)
