"""One virtual nRF5 board: flash, UICR, FICR, RAM, GPIO, a UART on a pty, and a CPU.

The memory map is the chip's (dfuhil.formats.chips), so the probe code that reads FICR to find
the device page, or GPIO OUT/DIR to see LEDs, runs unchanged against it.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass

from dfuhil.farm.model import RadioSpec
from dfuhil.formats.ble_link import STOCK_LINK, LinkConfig
from dfuhil.formats.chips import (
    FICR_BASE,
    FICR_CODEPAGESIZE,
    FICR_CODESIZE,
    FICR_CONFIGID,
    FICR_DEVICEADDR0,
    FICR_DEVICEADDR1,
    FICR_DEVICEID0,
    FICR_DEVICEID1,
    FICR_INFO_FLASH,
    FICR_INFO_PACKAGE,
    FICR_INFO_PART,
    FICR_INFO_RAM,
    FICR_INFO_VARIANT,
    GPIO_DIR,
    GPIO_IN,
    GPIO_OUT,
    GPIO_OUTCLR,
    GPIO_OUTSET,
    RAM_BASE,
    UICR_BASE,
    Chip,
)
from dfuhil.formats.smp_uart import Delivery
from dfuhil.sim.ble_peripheral import BleIdentity, BlePeripheral, static_address
from dfuhil.sim.ble_radio import BleRadio
from dfuhil.sim.clock import PowerLoss, VirtualClock
from dfuhil.sim.flash import NorFlash
from dfuhil.sim.radio import RadioMedium, RadioPort
from dfuhil.sim.runtime import Cpu
from dfuhil.sim.uart import PtyUart
from dfuhil.sim.udp import UdpPort

FICR_SIZE = 0x400
GPIO_DIRSET = 0x518
GPIO_DIRCLR = 0x51C
GPIO_BLOCK = 0x300  # P0 at 0x50000000, P1 at 0x50000300 (registers from +0x504)
PERIPHERAL_START = 0x40000000
PERIPHERAL_END = 0x60000000
POWER_GPREGRET = 0x4000051C


class AccessFault(Exception):
    """A debug access the bus would fault on (unmapped address, flash write without NVMC)."""

    def __init__(self, message: str, *, nvmc: bool = False) -> None:
        super().__init__(message)
        self.nvmc = nvmc  # the NVMC refused it, rather than the bus


@dataclass(frozen=True)
class BoardWiring:
    """What the virtual board is, as boards.yaml describes it."""

    name: str
    snr: int
    chip: Chip
    baud: int
    led_pins: tuple[int, ...]
    leds_active_low: bool
    uart_delivery: Delivery = "paced"  # burst: USB CDC-ACM (boards.yaml mcuboot.smp_uart)
    ble_name: str | None = None  # CONFIG_BT_DEVICE_NAME (boards.yaml ble), None: no radio use
    ble_address: str | None = None  # None: the random static address from FICR DEVICEADDR
    ble_link: LinkConfig = STOCK_LINK


class Gpio:
    """OUT and DIR per port; firmware drives pins, the probe reads registers."""

    def __init__(self, chip: Chip) -> None:
        self.chip = chip
        self.out = [0] * len(chip.gpio_ports)
        self.dir = [0] * len(chip.gpio_ports)
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.out = [0] * len(self.out)
            self.dir = [0] * len(self.dir)

    def drive(self, pin: int, level: bool) -> None:
        """Configure ``pin`` as output and drive it (nrf_gpio_cfg_output + pin_write)."""
        port, bit = self._locate(pin)
        with self._lock:
            self.dir[port] |= 1 << bit
            if level:
                self.out[port] |= 1 << bit
            else:
                self.out[port] &= ~(1 << bit)

    def _locate(self, pin: int) -> tuple[int, int]:
        port, bit = self.chip.gpio_port_of(pin)
        return self.chip.gpio_ports.index(port), bit

    def port_at(self, address: int) -> tuple[int, int] | None:
        """(port index, register offset) for an address inside a GPIO block."""
        for index, port in enumerate(self.chip.gpio_ports):
            offset = address - port.base
            if GPIO_OUT <= offset < GPIO_OUT + 0x20 and port.base <= address:
                return index, offset
        return None

    def read_register(self, port: int, offset: int) -> int:
        with self._lock:
            if offset in (GPIO_OUT, GPIO_OUTSET, GPIO_OUTCLR):
                return self.out[port]
            if offset in (GPIO_DIR, GPIO_DIRSET, GPIO_DIRCLR):
                return self.dir[port]
            if offset == GPIO_IN:
                return self.out[port] & self.dir[port]
            return 0

    def write_register(self, port: int, offset: int, value: int) -> None:
        with self._lock:
            if offset == GPIO_OUT:
                self.out[port] = value
            elif offset == GPIO_OUTSET:
                self.out[port] |= value
            elif offset == GPIO_OUTCLR:
                self.out[port] &= ~value
            elif offset == GPIO_DIR:
                self.dir[port] = value
            elif offset == GPIO_DIRSET:
                self.dir[port] |= value
            elif offset == GPIO_DIRCLR:
                self.dir[port] &= ~value


def build_ficr(chip: Chip, snr: int) -> bytes:
    """Factory information as a probe reads it; IDs derived from the probe serial number."""
    ficr = bytearray(b"\xff" * FICR_SIZE)

    def put(address: int, value: int) -> None:
        struct.pack_into("<I", ficr, address - FICR_BASE, value & 0xFFFFFFFF)

    put(FICR_CODEPAGESIZE, chip.page_size)
    put(FICR_CODESIZE, chip.pages)
    put(FICR_DEVICEID0, 0x5EED0000 ^ snr)
    put(FICR_DEVICEID1, 0xD0F0 << 16 | (snr >> 16) & 0xFFFF)
    put(FICR_DEVICEADDR0, (snr * 2654435761) & 0xFFFFFFFF)
    put(FICR_DEVICEADDR1, 0xC000 | (snr & 0x3FFF))
    if chip.family == "NRF51":
        put(FICR_CONFIGID, 0x00000087)
    else:
        put(FICR_INFO_PART, chip.part)
        put(FICR_INFO_VARIANT, int.from_bytes(b"0BAA", "little"))  # "AAB0", stored reversed
        put(FICR_INFO_PACKAGE, 0x2000)
        put(FICR_INFO_RAM, chip.ram_size // 1024)
        put(FICR_INFO_FLASH, chip.flash_size // 1024)
    return bytes(ficr)


class VirtualBoard:
    def __init__(
        self,
        wiring: BoardWiring,
        clock: VirtualClock,
        log: logging.Logger,
        radio: RadioPort | None = None,
        ble_radio: BleRadio | None = None,
    ) -> None:
        self.wiring = wiring
        self.name = wiring.name
        self.snr = wiring.snr
        self.chip = wiring.chip
        self.led_pins = wiring.led_pins
        self.leds_active_low = wiring.leds_active_low
        self.clock = clock
        self.log = log
        chip = wiring.chip
        self.flash = NorFlash(
            base=0,
            size=chip.flash_size,
            page_size=chip.page_size,
            timing=chip.timing,
            clock=clock,
            name=f"{wiring.name} flash",
        )
        self.uicr = NorFlash(
            base=UICR_BASE,
            size=chip.uicr_size,
            page_size=chip.uicr_size,
            timing=chip.timing,
            clock=clock,
            name=f"{wiring.name} UICR",
        )
        self.ficr = build_ficr(chip, wiring.snr)
        self.ram = bytearray(chip.ram_size)
        self.gpio = Gpio(chip)
        self.registers: dict[int, int] = {}
        self.uart = PtyUart(
            clock, wiring.baud, name=f"{wiring.name}-uart", delivery=wiring.uart_delivery
        )
        self.udp = UdpPort(clock, name=f"{wiring.name}-udp")
        # A board alone (no farm) still has a radio: the air around it is just empty.
        self.radio = radio or RadioMedium(RadioSpec(), clock).port(wiring.name)
        # The Bluetooth LE side, on the farm's link: the SMP app starts it while it runs.
        self.ble: BlePeripheral | None = None
        if ble_radio is not None and wiring.ble_name is not None:
            address = wiring.ble_address or static_address(
                self.read_u32(FICR_DEVICEADDR0), self.read_u32(FICR_DEVICEADDR1)
            )
            identity = BleIdentity(wiring.ble_name, address)
            self.ble = BlePeripheral(ble_radio, identity, wiring.ble_link, clock, log)
        self.cpu = Cpu(self)
        self.powered = True
        self._lock = threading.RLock()

    # --- lifecycle ----------------------------------------------------------------------------

    def power_on(self) -> None:
        self.powered = True
        self.cpu.reset(halt=False, reason="power on")

    # --- power faults (driven from the host by dfuhil.sim.faults through the debug port) ------

    def arm_power_cut(self, after_ops: int, torn_seed: int | None = None) -> None:
        """Lose power instead of performing the ``after_ops``-th code flash write or erase from
        now. Every NVMC operation counts, the firmware's and a debugger's alike. With
        ``torn_seed`` the power fails in the middle of that operation instead, leaving its
        page torn (dfuhil.sim.torn)."""
        if after_ops < 1:
            raise ValueError(f"after_ops must be at least 1, not {after_ops}")
        remaining = after_ops
        lock = threading.Lock()
        when = "before" if torn_seed is None else "during"
        torn = "" if torn_seed is None else f", torn with seed {torn_seed}"
        self.flash.tear_next_cut(torn_seed)

        def countdown(kind: str, address: int) -> None:
            nonlocal remaining
            with lock:
                remaining -= 1
                if remaining > 0:
                    return
                self.flash.fault_hook = None
            self.flash.tear_interrupted()  # armed torn: the page is torn before the board dies
            reason = (
                f"power cut {when} flash operation {after_ops} ({kind} at 0x{address:08X}{torn})"
            )
            self.cut_power(reason)  # whichever thread asked: the whole board goes dark
            raise PowerLoss(reason)  # and the asker unwinds without its operation

        self.flash.fault_hook = countdown

    def cut_power(self, reason: str) -> None:
        """The supply drops now: the CPU stops where it is; an nRF5 without power keeps its
        flash and UICR only (RAM, GPREGRET, GPIO and the receive buffers are gone)."""
        self.cpu.power_off(reason)
        self.flash.fault_hook = None
        self.powered = False
        self.ram[:] = bytes(len(self.ram))
        self.registers = {}
        self.gpio.reset()
        self.uart.flush_rx()
        self.udp.flush()
        if self.ble is not None:
            self.ble.stop()
        self.log.info("power lost: %s", reason)

    def shutdown(self) -> None:
        self.cpu.stop()
        if self.ble is not None:
            self.ble.stop()
        self.uart.close()
        self.udp.close()

    def reset_peripherals(self) -> None:
        """What a system reset clears: GPIO config and volatile registers (not GPREGRET)."""
        self.gpio.reset()
        self.registers = {k: v for k, v in self.registers.items() if k == POWER_GPREGRET}
        self.uart.flush_rx()
        self.udp.flush()
        self.radio.reset()
        if self.ble is not None:
            self.ble.stop()

    @property
    def gpregret(self) -> int:
        """POWER.GPREGRET (8 bits): kept across a system reset, cleared at power-on only."""
        return self.registers.get(POWER_GPREGRET, 0) & 0xFF

    @gpregret.setter
    def gpregret(self, value: int) -> None:
        self.registers[POWER_GPREGRET] = value & 0xFF

    # --- memory map ---------------------------------------------------------------------------

    def read(self, address: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            chunk, data = self._read_region(address, length)
            out += data
            address += chunk
            length -= chunk
        return bytes(out)

    def read_u32(self, address: int) -> int:
        return int.from_bytes(self.read(address, 4), "little")

    def _read_region(self, address: int, length: int) -> tuple[int, bytes]:
        for region in (self.flash, self.uicr):
            if region.contains(address):
                n = min(length, region.base + region.size - address)
                return n, region.read(address, n)
        if FICR_BASE <= address < FICR_BASE + FICR_SIZE:
            n = min(length, FICR_BASE + FICR_SIZE - address)
            offset = address - FICR_BASE
            return n, self.ficr[offset : offset + n]
        if RAM_BASE <= address < RAM_BASE + len(self.ram):
            n = min(length, RAM_BASE + len(self.ram) - address)
            offset = address - RAM_BASE
            return n, bytes(self.ram[offset : offset + n])
        if PERIPHERAL_START <= address < PERIPHERAL_END:
            n = min(length, 4 - address % 4)
            word = self._read_peripheral(address - address % 4)
            raw = word.to_bytes(4, "little")
            return n, raw[address % 4 : address % 4 + n]
        raise AccessFault(f"bus fault: nothing is mapped at 0x{address:08X}")

    def _read_peripheral(self, address: int) -> int:
        located = self.gpio.port_at(address)
        if located is not None:
            return self.gpio.read_register(*located)
        return self.registers.get(address, 0)

    def write(self, address: int, data: bytes, control: bool) -> None:
        """A debug-port write: ``control`` lets the NVMC program flash/UICR; else a bus write."""
        for region in (self.flash, self.uicr):
            if region.contains(address, len(data)):
                if not control:
                    raise AccessFault(
                        f"write to flash at 0x{address:08X} with control=False: the NVMC is "
                        "not enabled for plain bus writes (pass control=True)",
                        nvmc=True,
                    )
                self.cpu.halt()  # the DLL halts the core for NVMC operations
                region.write(address, data)
                return
        if address >= RAM_BASE and address + len(data) <= RAM_BASE + len(self.ram):
            offset = address - RAM_BASE
            self.ram[offset : offset + len(data)] = data
            return
        if PERIPHERAL_START <= address < PERIPHERAL_END and address % 4 == 0 and len(data) == 4:
            value = int.from_bytes(data, "little")
            located = self.gpio.port_at(address)
            if located is not None:
                self.gpio.write_register(*located, value)
            else:
                self.registers[address] = value
            return
        raise AccessFault(f"bus fault: cannot write {len(data)} bytes at 0x{address:08X}")

    # --- NVMC, as the debugger drives it ------------------------------------------------------

    def erase_all(self) -> None:
        self.cpu.halt()
        self.flash.erase_all()  # ERASEALL clears UICR too, in the same operation
        self.uicr.load(UICR_BASE, b"\xff" * self.uicr.size)
        self.uicr.stats.bytes_erased += self.uicr.size

    def erase_page(self, address: int) -> None:
        if not self.flash.contains(address):
            raise AccessFault(f"erase_page: 0x{address:08X} is not in code flash")
        self.cpu.halt()
        self.flash.erase_page(address)

    def erase_uicr(self) -> None:
        self.cpu.halt()
        self.uicr.erase_page(UICR_BASE)

    # --- NVMC, as firmware drives it (no halt: the CPU is the one asking) ---------------------

    def nvmc_write(self, address: int, data: bytes) -> None:
        region = self.uicr if self.uicr.contains(address, len(data)) else self.flash
        region.write(address, data)

    def nvmc_erase_page(self, address: int) -> None:
        self.flash.erase_page(address)

    # --- introspection for the farm's own tooling ---------------------------------------------

    def status(self) -> dict[str, object]:
        return {
            "name": self.name,
            "snr": self.snr,
            "chip": self.chip.name,
            "cpu": self.cpu.status,
            "halted": self.cpu.halted,
            "boots": self.cpu.boots,
            "powered": self.powered,
            "serial": self.uart.path,
            "smp_udp": self.udp.address,
            "ble": None if self.ble is None else self.ble.describe(),
        }

    def stats(self) -> dict[str, float]:
        flash, uicr = self.flash.stats, self.uicr.stats
        return {
            "bytes_written": flash.bytes_written + uicr.bytes_written,
            "bytes_erased": flash.bytes_erased + uicr.bytes_erased,
            "pages_erased": flash.pages_erased,
            "erase_all": flash.erase_all,
            "operations": flash.operations + uicr.operations,
            "device_time_s": flash.device_time_s + uicr.device_time_s,
        }

    def reset_stats(self) -> None:
        for region in (self.flash, self.uicr):
            region.stats = type(region.stats)()
