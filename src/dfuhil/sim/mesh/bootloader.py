"""The nRF5 SDK for Mesh serial bootloader (mesh/bootloader: main.c, bootloader.c, mesh_aci.c).

Boot (main.c): finish a bank installation that was started (dfu_bank_scan); if POWER.GPREGRET is
0 (GO_TO_APP) jump to the application when it is valid; otherwise, or when it is not valid, stay:
GPREGRET is set back to 0 (the next reset goes to the app), DEVICE_STARTED ``81 01 00 xx`` goes
out on the UART, the DFU core starts, and a valid application gets the bootloader 10 s of quiet
before it is started anyway. An application is valid with a VERSION whose app_version is not 0, a
SEGMENT_APP whose first word is programmed, and all intact flags set (dfu_mesh_app_is_valid).
Without a valid application the bootloader fixes the intact flags and asks the mesh for its own
fwid (or installs a bank of the missing part).

In the bootloader a transfer is only accepted when it is an upgrade (dfu_util.c is_upgrade) and
it goes straight to its place (direct mode, no bank); anything else is ignored, and the START
and DATA that follow then fail on the transaction id (status 0x85). The bootloader never relays
transfers it did not ask for.

Serial (mesh_aci.c, bootloader build): Echo 0x02 -> 0x82, Radio reset 0x0E -> reset with
GPREGRET = 1 (stay in the bootloader), 0x78 DFU packet -> CMD_RSP ``84 78 status type_lo
type_hi``; unknown opcodes -> ``84 opcode 82``. Beacons and relayed DATA_REQs are copied to the
host as 0x78 frames.

Timeouts (bootloader.c): 20 s from START to the first data and 30 s between segments abort the
transfer (back to FWID beaconing), then the 30 s rampdown, all on the farm's virtual clock. A
transfer that ends in an error other than a timeout halts the bootloader (it disables interrupts
and loops): here the firmware logs why and parks. A device page without the required entries
(DFU_END_ERROR_INVALID_PERSISTENT_STORAGE) is logged the same way; the real bootloader stops in
its error handler there, before DEVICE_STARTED.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NoReturn

from dfuhil.formats.chips import ERASED_WORD, UICR_BOOTLOADERADDR
from dfuhil.formats.devpage import Bank, DevicePage, EntryType
from dfuhil.formats.meshdfu import (
    DfuType,
    EndReason,
    Frame,
    Opcode,
    OperatingMode,
    Status,
    cmd_rsp_app,
    cmd_rsp_bootloader,
    device_started,
)
from dfuhil.sim.mesh import bank as banks
from dfuhil.sim.mesh import fwid as ids
from dfuhil.sim.mesh.bootinfo import BootInfo
from dfuhil.sim.mesh.dfu_core import NO_BANK, DfuCore, DfuRole, DfuState, NrfError
from dfuhil.sim.mesh.flashport import DirectFlash
from dfuhil.sim.mesh.node import MeshNode, TimerAction
from dfuhil.sim.mesh.transport import BootloaderTiming
from dfuhil.sim.runtime import behaviour

GPREGRET_GO_TO_APP = 0  # RBC_MESH_GPREGRET_CODE_GO_TO_APP
GPREGRET_FORCED_REBOOT = 1  # RBC_MESH_GPREGRET_CODE_FORCED_REBOOT
YIELD_TIMEOUT_S = 10.0  # TIMER_YIELD_TIMEOUT
START_TIMEOUT_S = 20.0  # TIMER_START_TIMEOUT
DATA_TIMEOUT_S = 30.0  # TIMER_DATA_TIMEOUT
APP_VERSION_INVALID = 0
SD_VERSION_INVALID = 0xFFFF
ALL_INTACT = ids.INTACT_FLAG[DfuType.SOFTDEVICE] | ids.INTACT_FLAG[DfuType.BOOTLOADER]
ALL_INTACT |= ids.INTACT_FLAG[DfuType.APPLICATION]
# Reasons the bootloader answers by starting the application (bootloader_abort).
GO_TO_APP_REASONS = (
    EndReason.SUCCESS,
    EndReason.ERROR_TIMEOUT,
    EndReason.FWID_VALID,
    EndReason.ERROR_MBR_CALL_FAILED,
)

# mesh_aci.c error_code_translate (the bootloader's mapping, not the application's)
_STATUS = {
    NrfError.SUCCESS: Status.SUCCESS,
    NrfError.INTERNAL: Status.ERROR_UNKNOWN,
    NrfError.NO_MEM: Status.ERROR_BUSY,
    NrfError.NOT_FOUND: Status.ERROR_PIPE_INVALID,
    NrfError.NOT_SUPPORTED: Status.ERROR_CMD_UNKNOWN,
    NrfError.INVALID_PARAM: Status.ERROR_INVALID_PARAMETER,
    NrfError.INVALID_STATE: Status.ERROR_INVALID_STATE,
    NrfError.INVALID_LENGTH: Status.ERROR_INVALID_LENGTH,
    NrfError.INVALID_DATA: Status.ERROR_INVALID_PARAMETER,
    NrfError.INVALID_ADDR: Status.ERROR_INVALID_PARAMETER,
    NrfError.BUSY: Status.ERROR_BUSY,
}


def app_is_valid(page: DevicePage, read_u32: Callable[[int], int]) -> bool:
    """dfu_mesh_app_is_valid."""
    version, segment, flags = page.version, page.segment(EntryType.SEGMENT_APP), page.flags
    if version is None or segment is None or segment[0] == ERASED_WORD:
        return False
    verified = flags is None or flags & ALL_INTACT == ALL_INTACT
    return bool(
        read_u32(segment[0]) != ERASED_WORD
        and version.app_version != APP_VERSION_INVALID
        and verified
    )


@behaviour("mesh_bootloader")
class MeshBootloader(MeshNode):
    """The serial mesh bootloader."""

    timing = BootloaderTiming()

    def run(self) -> None:
        ctx = self.ctx
        chip = ctx.board.chip
        self.flash = DirectFlash(ctx)
        self.info = BootInfo(self.flash, chip.device_page_address, chip.device_page_backup_address)
        uicr = ctx.read_u32(UICR_BOOTLOADERADDR)
        self.bootloader_address = uicr if uicr != ERASED_WORD else ctx.address
        self.core = DfuCore(self, self.info, self.flash, self.tx, ctx.now, self.bootloader_address)
        page = self.info.page() if self.info.init() else None
        if page is None or page.missing_required():
            missing = ", ".join(page.missing_required()) if page else "no usable device page"
            self._halt(EndReason.ERROR_INVALID_PERSISTENT_STORAGE, f"missing: {missing}")
        if banks.resume_started(self.info, self.flash):
            ctx.set_gpregret(GPREGRET_GO_TO_APP)
        if ctx.gpregret == GPREGRET_GO_TO_APP:
            self._go_to_app()
        ctx.set_gpregret(GPREGRET_GO_TO_APP)
        self._enable()
        self.serve()

    # --- boot -------------------------------------------------------------------------------------

    def _enable(self) -> None:
        """bootloader_enable: announce ourselves, start the DFU core, decide what to wait for."""
        self.ctx.uart_write(device_started(OperatingMode.BOOTLOADER))
        self.core.start()
        page = self._page()
        if app_is_valid(page, self.ctx.read_u32):
            self.set_timer(YIELD_TIMEOUT_S, TimerAction.GO_TO_APP)
            return
        self.ctx.log("application is not valid: staying in the bootloader")
        self._mark_missing(page)
        page = self._page()
        missing = self._missing_type(page)
        if missing == DfuType.NONE:
            return
        stored = banks.find_bank(self.info, missing)
        if stored is not None and self.ctx.read_u32(stored.address) != ERASED_WORD:
            banks.install(self.info, self.flash, stored)
            self._go_to_app()
            return
        version = page.version
        assert version is not None
        self.core.request(missing, ids.current(version, missing), NO_BANK)

    def _mark_missing(self, page: DevicePage) -> None:
        """Clear the intact flag of a part whose first word is erased (a chip-erased app)."""
        flags = page.flags if page.flags is not None else 0xFFFFFFFF
        new = 0xFFFFFFFF
        app = page.segment(EntryType.SEGMENT_APP)
        sd = page.segment(EntryType.SEGMENT_SD)
        if flags & ids.INTACT_FLAG[DfuType.APPLICATION] and app and self._erased(app[0]):
            new &= ~ids.INTACT_FLAG[DfuType.APPLICATION]
        if flags & ids.INTACT_FLAG[DfuType.SOFTDEVICE] and sd and sd[1] and self._erased(sd[0]):
            new &= ~ids.INTACT_FLAG[DfuType.SOFTDEVICE]
        if new != 0xFFFFFFFF:
            self.info.overwrite(EntryType.FLAGS, struct.pack("<I", new))

    def _missing_type(self, page: DevicePage) -> DfuType:
        """dfu_mesh_missing_type_get."""
        flags = page.flags if page.flags is not None else 0xFFFFFFFF
        version = page.version
        sd, app = page.segment(EntryType.SEGMENT_SD), page.segment(EntryType.SEGMENT_APP)
        needs_sd = version is not None and version.sd != SD_VERSION_INVALID and sd is not None
        if needs_sd and sd is not None:
            sd_intact = flags & ids.INTACT_FLAG[DfuType.SOFTDEVICE]
            if not sd_intact or self._erased(sd[0]):
                return DfuType.SOFTDEVICE
        if app is not None and (
            not flags & ids.INTACT_FLAG[DfuType.APPLICATION] or self._erased(app[0])
        ):
            return DfuType.APPLICATION
        return DfuType.NONE

    def _erased(self, address: int) -> bool:
        return self.ctx.read_u32(address) == ERASED_WORD

    def _page(self) -> DevicePage:
        page = self.info.page()
        assert page is not None
        return page

    def _go_to_app(self) -> None:
        """bootloader_abort(SUCCESS): jump to a valid application, else return."""
        page = self._page()
        segment = page.segment(EntryType.SEGMENT_APP)
        if segment is not None and app_is_valid(page, self.ctx.read_u32):
            self.ctx.log(f"application found at 0x{segment[0]:X}, starting it")
            self.ctx.jump(segment[0])
        self.ctx.log("application not valid")

    def _halt(self, reason: EndReason, detail: str = "") -> NoReturn:
        """What the real bootloader does on an unrecoverable end: stop, interrupts off."""
        note = f" ({detail})" if detail else ""
        self.ctx.log(f"DFU_END_{reason.name}{note}: bootloader halted")
        self.ctx.park()

    def _abort(self, reason: EndReason) -> None:
        """bootloader_abort, then back to the DFU when the app could not be started."""
        if reason in GO_TO_APP_REASONS:
            self._go_to_app()
            self.core.start()
            return
        self._halt(reason)

    # --- inputs -----------------------------------------------------------------------------------

    def on_serial(self, item: Frame) -> None:
        if item.opcode == Opcode.ECHO:
            self.send_frame(Opcode.ECHO_RSP, item.payload)
        elif item.opcode == Opcode.RADIO_RESET:
            self.ctx.set_gpregret(GPREGRET_FORCED_REBOOT)
            self.ctx.system_reset()
        elif item.opcode == Opcode.DFU_DATA:
            status = self.core.rx(item.payload)
            kind = struct.unpack_from("<H", item.payload)[0] if len(item.payload) >= 2 else 0
            self.ctx.uart_write(cmd_rsp_bootloader(_STATUS[status], kind))
        else:
            self.ctx.uart_write(cmd_rsp_app(item.opcode, Status.ERROR_CMD_UNKNOWN))

    def on_radio(self, packet: bytes, at: float) -> None:
        self.core.rx(packet)

    def on_timer(self, action: TimerAction) -> None:
        if action == TimerAction.GO_TO_APP:
            self._abort(EndReason.SUCCESS)
        elif action == TimerAction.ABORT:
            self.core.restart()
        else:
            self.core.timeout()

    # --- DFU core events (bl_evt_handler) ---------------------------------------------------------

    def new_firmware(self, dfu_type: int, fwid: bytes, state: DfuState) -> None:
        self.stop_timer()
        if state == DfuState.DFU_REQ:
            self.core.restart()  # drop our own request for the one on offer
            state = DfuState.FIND_FWID
        page = self._page()
        version = page.version
        if (
            state == DfuState.FIND_FWID
            and version is not None
            and ids.is_upgrade(dfu_type, fwid, version, page.flags)
        ):
            self.core.request(dfu_type, fwid, NO_BANK)

    def started(self, role: DfuRole, dfu_type: int, fwid: bytes) -> None:
        self.set_timer(START_TIMEOUT_S, TimerAction.ABORT)

    def progress(self, segment: int, total: int) -> None:
        self.set_timer(DATA_TIMEOUT_S, TimerAction.ABORT)

    def ended(self, role: DfuRole, dfu_type: int, fwid: bytes) -> None:
        self.log_tx_summary()
        if dfu_type in (DfuType.APPLICATION, DfuType.SOFTDEVICE):
            self.ctx.log(f"DFU of {DfuType(dfu_type).name} complete")
            self._go_to_app()

    def aborted(self, reason: EndReason) -> None:
        self.ctx.log(f"DFU end: {reason.name}")
        self.log_tx_summary()
        self.defer(lambda: self._abort(reason))

    def bank_available(self, bank: Bank) -> None:
        if bank.dfu_type == DfuType.BOOTLOADER and not app_is_valid(
            self._page(), self.ctx.read_u32
        ):
            banks.install(self.info, self.flash, bank)

    def timer_set(self, delay_s: float) -> None:
        self.set_timer(delay_s, TimerAction.CORE_TIMEOUT)

    def serial_tx(self, packet: bytes) -> None:
        self.send_dfu_packet(packet)
