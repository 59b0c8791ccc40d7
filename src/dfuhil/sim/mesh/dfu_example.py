"""The nRF5 SDK for Mesh DFU example (examples/dfu) on the mesh serial interface, banked mode.

At boot every LED is off and DEVICE_STARTED ``81 02 00 xx`` (application mode) goes out on the
UART; this firmware prints no text, its UART speaks the mesh serial protocol only. The DFU core
(dfu_core.py, the bootloader's shared code) then beacons the node's FWID.

A transfer offered by STATE (from the host over serial or a neighbour over the radio) raises
FW_OUTDATED_NO_AUTH (serial event 0xA6). The example asks for it as TARGET only when it is an
application with the same company and application id and a higher version (or a bootloader with
the same id and a higher version); anything else it relays. A target receives into a bank in the
middle of the application area (v3.2+ optimal_bank_address: the middle of [application start,
end of SEGMENT_APP], page aligned and not below the end of our own code; the end of our code is
found by scanning for the first erased page after the application start, since the application
does not know its size any other way here). After validation the core stores a BANK entry; on
BANK_AVAILABLE the example marks it FLASH_FW and resets with GPREGRET = 0 so the bootloader
installs it. A relay never stores anything.

Serial (mesh/serial, v4.2+): Echo 0x02 -> 0x82; Radio reset 0x0E -> reset with GPREGRET = 1;
0x78 DFU packet -> ``84 78 status`` (status from serial_translate_error; ERROR_BUSY while the
flash queue is busy, in which case the packet is not processed at all); DFU events START 0xA2,
END 0xA3, BANK_AVAILABLE 0xA4 and FW_OUTDATED_NO_AUTH 0xA6; beacons and the DATA_REQs a relay
forwards are copied to the host as 0x78 frames (from v4.2.0 on), so the host can answer them.

LEDs (examples/dfu main.c): taking a transfer: all off; DFU START (target or relay): LED 0 and
LED 2 on; DFU END: all off, then LED 0 and LED 1; BANK_AVAILABLE: all off.

Timeouts (nrf_mesh_dfu.c, v3.1+): 600 s for a request, for the first data and between data; on
expiry the transfer ends with END_ERROR_TIMEOUT (which is also how a relay finishes). After a
transfer that ended in an error the node goes back to beaconing its FWID (the SDK leaves the core
where it stopped until a timer or reset; the example's documentation says "DFU restarts").
"""

from __future__ import annotations

import struct

from dfuhil.formats.chips import ERASED_WORD, UICR_BOOTLOADERADDR
from dfuhil.formats.devpage import Bank, EntryType, Fwid
from dfuhil.formats.meshdfu import (
    DfuType,
    EndReason,
    Frame,
    Opcode,
    OperatingMode,
    Status,
    cmd_rsp_app,
    decode_app_fwid,
    device_started,
)
from dfuhil.sim.mesh import fwid as ids
from dfuhil.sim.mesh.bank import set_state
from dfuhil.sim.mesh.bootinfo import BANK_STATE_FLASH_FW, BootInfo
from dfuhil.sim.mesh.dfu_core import DfuCore, DfuRole, DfuState, NrfError
from dfuhil.sim.mesh.flashport import QueuedFlash
from dfuhil.sim.mesh.node import MeshNode, TimerAction
from dfuhil.sim.mesh.transport import AppTiming
from dfuhil.sim.runtime import behaviour

GPREGRET_GO_TO_APP = 0
GPREGRET_FORCED_REBOOT = 1
REQ_TIMEOUT_S = 600.0  # NRF_MESH_DFU_REQ_TIMEOUT_US
START_TIMEOUT_S = 600.0  # TIMER_START_TIMEOUT_US
DATA_TIMEOUT_S = 600.0  # TIMER_DATA_TIMEOUT_US
LEDS_DFU_RUNNING = (0, 2)
LEDS_DFU_ENDED = (0, 1)

# serial_types.h: DFU events of the mesh serial interface
EVT_DFU_START = 0xA2
EVT_DFU_END = 0xA3
EVT_DFU_BANK_AVAILABLE = 0xA4

# mesh/serial/src/serial.c serial_translate_error (the application's mapping)
_STATUS = {
    NrfError.SUCCESS: Status.SUCCESS,
    NrfError.INTERNAL: Status.ERROR_INTERNAL,
    NrfError.NO_MEM: Status.ERROR_REJECTED,
    NrfError.NOT_FOUND: Status.ERROR_REJECTED,
    NrfError.NOT_SUPPORTED: Status.ERROR_REJECTED,
    NrfError.INVALID_PARAM: Status.ERROR_INVALID_PARAMETER,
    NrfError.INVALID_STATE: Status.ERROR_INVALID_STATE,
    NrfError.INVALID_LENGTH: Status.ERROR_INVALID_LENGTH,
    NrfError.INVALID_DATA: Status.ERROR_INVALID_DATA,
    NrfError.INVALID_ADDR: Status.ERROR_INVALID_PARAMETER,
    NrfError.BUSY: Status.ERROR_BUSY,
}


def is_for_me(dfu_type: int, offered: bytes, mine: Fwid) -> bool:
    """examples/dfu fw_updated_event_is_for_me."""
    if dfu_type == DfuType.APPLICATION:
        company, app_id, app_version = decode_app_fwid(offered)
        return (company, app_id) == (mine.company_id, mine.app_id) and (
            mine.app_version < app_version
        )
    if dfu_type == DfuType.BOOTLOADER:
        return offered[0] == mine.bl_id and mine.bl_version < offered[1]
    return False


@behaviour("mesh_dfu_app")
class MeshDfuExample(MeshNode):
    """The DFU example application."""

    timing = AppTiming()

    def run(self) -> None:
        ctx = self.ctx
        chip = ctx.board.chip
        ctx.leds_all(False)
        self.flash = QueuedFlash(ctx)
        try:
            self.info = BootInfo(
                self.flash, chip.device_page_address, chip.device_page_backup_address
            )
            uicr = ctx.read_u32(UICR_BOOTLOADERADDR)
            bootloader = uicr if uicr != ERASED_WORD else chip.mesh_bootloader_start
            self.core = DfuCore(self, self.info, self.flash, self.tx, ctx.now, bootloader)
            self.role = DfuRole.NONE
            self.transfer_type: int = DfuType.NONE
            self.transfer_fwid = b""
            ctx.uart_write(device_started(OperatingMode.APPLICATION))
            self.dfu_enabled = self.core.init()
            if self.dfu_enabled:
                self.core.start()
            else:
                ctx.log("DFU_END_ERROR_INVALID_PERSISTENT_STORAGE: no usable device page, no DFU")
            self.serve()
        finally:
            self.flash.stop()

    # --- inputs -----------------------------------------------------------------------------------

    def on_serial(self, item: Frame) -> None:
        if item.opcode == Opcode.ECHO:
            self.send_frame(Opcode.ECHO_RSP, item.payload)
        elif item.opcode == Opcode.RADIO_RESET:
            self.ctx.set_gpregret(GPREGRET_FORCED_REBOOT)
            self.ctx.system_reset()
        elif item.opcode == Opcode.DFU_DATA:
            status = self._dfu_rx(item.payload)
            self.ctx.uart_write(cmd_rsp_app(Opcode.DFU_DATA, _STATUS[status]))
        else:
            self.ctx.uart_write(cmd_rsp_app(item.opcode, Status.ERROR_CMD_UNKNOWN))

    def on_radio(self, packet: bytes, at: float) -> None:
        self._dfu_rx(packet)

    def _dfu_rx(self, packet: bytes) -> NrfError:
        """nrf_mesh_dfu_rx."""
        if not self.dfu_enabled:
            return NrfError.INVALID_STATE
        if self.flash.busy():
            return NrfError.BUSY
        self.tx.heard(packet)
        return self.core.rx(packet)

    def on_timer(self, action: TimerAction) -> None:
        if action == TimerAction.CORE_TIMEOUT:
            self.core.timeout()
        else:  # the application's abort timer
            self.core.restart()
            self._end(EndReason.ERROR_TIMEOUT)

    # --- what the example does --------------------------------------------------------------------

    def _fwid(self) -> Fwid:
        page = self.info.page()
        assert page is not None and page.version is not None
        return page.version

    def _bank_address(self) -> int:
        """optimal_bank_address: the middle of the application area, page aligned, past us."""
        page = self.info.page()
        assert page is not None
        segment = page.segment(EntryType.SEGMENT_APP)
        assert segment is not None
        start, length = segment
        size = self.flash.page_size
        code_end = start
        while code_end < start + length and self.flash.read(code_end, size) != b"\xff" * size:
            code_end += size
        middle = (start + start + length) // 2
        wanted = max(middle, code_end)
        return (wanted + size - 1) // size * size

    def _leds(self, lit: tuple[int, ...]) -> None:
        for index in lit:
            self.ctx.led(index, True)

    def _end(self, reason: EndReason) -> None:
        """end_transfer: the DFU END event, to the LEDs and the host."""
        self.ctx.leds_all(False)
        self._leds(LEDS_DFU_ENDED)
        payload = bytes([self.role, self.transfer_type]) + ids.union(self.transfer_fwid)
        self.send_frame(EVT_DFU_END, payload + bytes([reason]))
        self.stop_timer()
        self.role = DfuRole.NONE
        self.log_tx_summary()

    # --- DFU core events --------------------------------------------------------------------------

    def new_firmware(self, dfu_type: int, fwid: bytes, state: DfuState) -> None:
        mine = self._fwid()
        current = ids.current(mine, dfu_type)
        self.send_frame(
            Opcode.DFU_FW_OUTDATED_NO_AUTH,
            bytes([dfu_type]) + ids.union(fwid) + ids.union(current),
        )
        if is_for_me(dfu_type, fwid, mine):
            bank = self._bank_address()
            status = self.core.request(dfu_type, fwid, bank)
            if status == NrfError.SUCCESS:
                self.ctx.log(f"requesting DFU transfer with bank at 0x{bank:X}")
                self.role, self.transfer_type, self.transfer_fwid = DfuRole.TARGET, dfu_type, fwid
                self.set_timer(REQ_TIMEOUT_S, TimerAction.ABORT)
                self.ctx.leds_all(False)
        else:
            status = self.core.relay(dfu_type, fwid, 0)
            if status == NrfError.SUCCESS:
                self.role, self.transfer_type, self.transfer_fwid = DfuRole.RELAY, dfu_type, fwid
        if status != NrfError.SUCCESS:
            self.ctx.log(f"DFU {DfuType(dfu_type).name} offer not taken: {status.name}")

    def started(self, role: DfuRole, dfu_type: int, fwid: bytes) -> None:
        self.role, self.transfer_type, self.transfer_fwid = role, dfu_type, fwid
        self._leds(LEDS_DFU_RUNNING)
        self.send_frame(EVT_DFU_START, bytes([role, dfu_type]) + ids.union(fwid))
        self.set_timer(START_TIMEOUT_S, TimerAction.ABORT)

    def progress(self, segment: int, total: int) -> None:
        self.set_timer(DATA_TIMEOUT_S, TimerAction.ABORT)

    def ended(self, role: DfuRole, dfu_type: int, fwid: bytes) -> None:
        self.ctx.log(f"DFU of {DfuType(dfu_type).name} received")
        self._end(EndReason.SUCCESS)

    def aborted(self, reason: EndReason) -> None:
        self.ctx.log(f"DFU end: {reason.name}")
        self._end(reason)
        if reason != EndReason.SUCCESS:
            self.defer(self.core.restart)

    def bank_available(self, bank: Bank) -> None:
        """Install right away: mark the bank FLASH_FW and let the bootloader copy it."""
        self.ctx.leds_all(False)
        payload = struct.pack("<IIB", bank.address, bank.length, int(bank.has_signature))
        self.send_frame(EVT_DFU_BANK_AVAILABLE, bytes([bank.dfu_type]) + bank.fwid_bytes + payload)
        if bank.dfu_type != DfuType.APPLICATION:
            self.ctx.log(f"bank of {DfuType(bank.dfu_type).name} left for the bootloader")
            return
        set_state(self.info, bank, BANK_STATE_FLASH_FW)
        self.flash.drain()
        self.ctx.log("bank available: resetting into the bootloader to install it")
        self.ctx.set_gpregret(GPREGRET_GO_TO_APP)
        self.ctx.system_reset()

    def timer_set(self, delay_s: float) -> None:
        self.set_timer(delay_s, TimerAction.CORE_TIMEOUT)

    def serial_tx(self, packet: bytes) -> None:
        self.send_dfu_packet(packet)
