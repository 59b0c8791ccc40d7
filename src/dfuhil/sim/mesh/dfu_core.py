"""The mesh DFU state machine that both mesh firmwares run (the SDK's dfu_mesh.c).

In the nRF5 SDK for Mesh this code lives once, in the bootloader's flash, and the application
calls into it through the bootloader interface; so a node behaves the same whether it is in the
bootloader or in an application, and only the firmware around the core differs (which
transfers it asks for, where the bank goes, what an event does). That split is kept here: the
core takes packets, timeouts and requests, and reports through :class:`DfuEvents`.

States (dfu_state_t): FIND_FWID (idle, beaconing FWID) -> DFU_REQ (asked for a transfer, beacons
STATE with authority 0) -> READY (a source's STATE was accepted, beacons it on) -> TARGET
(receiving) -> VALIDATE (30 s rampdown, then the signature check) -> STABILIZE (metadata written)
-> FIND_FWID; or RELAY_CANDIDATE -> RELAY for a node that only forwards. Higher authority, or equal
authority and higher transaction id, wins; a tid that failed is blacklisted (8-entry cache).

Rules and constants are the SDK's (dfu_mesh.c, dfu_util.c, v4.2+/v5.0 behaviour), cited where
they are defined. Documented deviations: a DATA_RSP carries only the bytes that belong to the
image (the SDK sends 16 and the receiver then refuses a short last segment), and the platform
decides what a failed transfer does next (see the firmwares).
"""

from __future__ import annotations

import dataclasses
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from dfuhil.formats import meshkeys
from dfuhil.formats.devpage import Bank, DevicePage, EntryType, Fwid
from dfuhil.formats.meshdfu import (
    SEGMENT_SIZE,
    START_ADDRESS_UNKNOWN,
    Data,
    DataRequest,
    DfuType,
    EndReason,
    FwidBeacon,
    PacketError,
    PacketType,
    Start,
    State,
    decode_packet,
)
from dfuhil.sim.mesh import fwid as ids
from dfuhil.sim.mesh.bootinfo import BANK_STATE_IDLE, BootInfo, bank_payload
from dfuhil.sim.mesh.flashport import FlashPort
from dfuhil.sim.mesh.transfer import Outcome, Transfer, segment_address
from dfuhil.sim.mesh.transport import BEACON_SLOT, REPEATS_INFINITE, Interval, TxSlots

# dfu_mesh.c
TX_REPEATS_DEFAULT = 3
TX_REPEATS_FWID = 15  # v4.2+ (infinite before)
TX_REPEATS_START = TX_REPEATS_DEFAULT * 2
TX_REPEATS_DATA = TX_REPEATS_DEFAULT
TX_REPEATS_RSP = TX_REPEATS_DEFAULT
RAMPDOWN_S = 30.0  # STATE_TIMEOUT_RAMPDOWN
REQ_CACHE_SIZE = 4
REQ_RX_COUNT_RETRY = 8  # requests for a segment we just served that we ignore
LOST_START_EDGE = 10  # v4.2+: DATA in READY before giving up on a lost START
# dfu_util.c
TID_CACHE_SIZE = 8
PACKET_CACHE_SIZE = 16
NO_BANK = 0xFFFFFFFF  # "no bank given": bootloader mode, the transfer goes straight in place


class DfuState(IntEnum):
    """dfu_state_t (the bootloader's numbering; the application API adds 1)."""

    INITIALIZED = 0
    FIND_FWID = 1
    DFU_REQ = 2
    READY = 3
    TARGET = 4
    VALIDATE = 5
    STABILIZE = 6
    RELAY_CANDIDATE = 7
    RELAY = 8


class DfuRole(IntEnum):
    NONE = 0
    TARGET = 1
    RELAY = 2
    SOURCE = 3


class NrfError(IntEnum):
    """The nRF error codes the core answers with; each firmware maps them to a serial status."""

    SUCCESS = 0
    INTERNAL = 3
    NO_MEM = 4
    NOT_FOUND = 5
    NOT_SUPPORTED = 6
    INVALID_PARAM = 7
    INVALID_STATE = 8
    INVALID_LENGTH = 9
    INVALID_DATA = 11
    INVALID_ADDR = 16
    BUSY = 17


SIGNATURE_ENTRY = {
    DfuType.SOFTDEVICE: EntryType.SIGNATURE_SD,
    DfuType.BOOTLOADER: EntryType.SIGNATURE_BL,
    DfuType.APPLICATION: EntryType.SIGNATURE_APP,
}
SEGMENT_ENTRY = {
    DfuType.SOFTDEVICE: EntryType.SEGMENT_SD,
    DfuType.BOOTLOADER: EntryType.SEGMENT_BL,
    DfuType.APPLICATION: EntryType.SEGMENT_APP,
}


class DfuEvents(Protocol):
    """What the firmware around the core does with the core's events (bl_evt_t)."""

    def new_firmware(self, dfu_type: int, fwid: bytes, state: DfuState) -> None:
        """BL_EVT_TYPE_DFU_NEW_FW: a transfer or a neighbour's FWID offers newer firmware."""

    def started(self, role: DfuRole, dfu_type: int, fwid: bytes) -> None:
        """BL_EVT_TYPE_DFU_START."""

    def progress(self, segment: int, total: int) -> None:
        """BL_EVT_TYPE_DFU_DATA_SEGMENT_RX."""

    def ended(self, role: DfuRole, dfu_type: int, fwid: bytes) -> None:
        """BL_EVT_TYPE_DFU_END: a target stored its firmware."""

    def aborted(self, reason: EndReason) -> None:
        """BL_EVT_TYPE_DFU_ABORT (send_end_evt): the transfer ended for ``reason``."""

    def bank_available(self, bank: Bank) -> None:
        """BL_EVT_TYPE_BANK_AVAILABLE."""

    def timer_set(self, delay_s: float) -> None:
        """BL_EVT_TYPE_TIMER_SET: call :meth:`DfuCore.timeout` after ``delay_s``."""

    def serial_tx(self, packet: bytes) -> None:
        """BL_EVT_TYPE_TX_SERIAL: copy a DFU packet to the host."""

    def log(self, message: str) -> None:
        """A line for the board's log (the SDK's RTT log, for the rare events only)."""


@dataclass
class Transaction:
    """transaction_t: the transfer this node takes part in."""

    dfu_type: int = DfuType.NONE
    fwid: bytes = b""
    tid: int = 0
    authority: int = 0
    flood: bool = False
    start: int = 0
    bank: int = 0
    indicated_start: int = 0
    length: int = 0
    signature_length: int = 0
    signature: bytearray = field(default_factory=lambda: bytearray(64))
    signature_bitmap: int = 0
    segments_remaining: int = 0
    segment_count: int = 0
    last_requested: int = 0


@dataclass
class _ServedRequest:
    segment: int = 0
    rx_count: int = 0


def segment_count_from_start(start: Start) -> int:
    """M: image segments (start 0xFFFFFFFF counts as aligned) plus signature segments."""
    address = 0 if start.start_address == START_ADDRESS_UNKNOWN else start.start_address
    count = (start.length_words * 4 + (address & 0x0F) - 1) // SEGMENT_SIZE + 1
    count += start.signature_length // SEGMENT_SIZE
    return min(count, 0xFFFF)


def sections_overlap(a: int, a_length: int, b: int, b_length: int) -> bool:
    """dfu_util.c section_overlap, including its inclusive upper bound on the second test."""
    return (b <= a < b + b_length) or (a <= b <= a + a_length)


class DfuCore:
    """One node's DFU state machine."""

    def __init__(
        self,
        events: DfuEvents,
        info: BootInfo,
        flash: FlashPort,
        tx: TxSlots,
        now: Callable[[], float],
        bootloader_address: int,
        verify: Callable[[bytes, bytes, bytes], bool] = meshkeys.verify,
    ) -> None:
        self.events = events
        self.info = info
        self.flash = flash
        self.tx = tx
        self.now = now
        self.bootloader_address = bootloader_address
        self.verify = verify
        self.state = DfuState.INITIALIZED
        self.t = Transaction()
        self.transfer: Transfer | None = None
        self._packet_cache: deque[tuple[int, int]] = deque(maxlen=PACKET_CACHE_SIZE)
        self._tid_cache: deque[int] = deque(maxlen=TID_CACHE_SIZE)
        self._served = [_ServedRequest() for _ in range(REQ_CACHE_SIZE)]
        self._served_index = 0
        self._data_req_segment = 0
        self._lost_start_edge = 0

    # --- the device page --------------------------------------------------------------------------

    def _page(self) -> DevicePage:
        page = self.info.page()
        assert page is not None, "checked by init()"
        return page

    def _version(self) -> Fwid:
        version = self._page().version
        assert version is not None, "checked by init()"
        return version

    def init(self) -> bool:
        """dfu_mesh_init: False without the entries the state machine depends on (the SDK ends
        with DFU_END_ERROR_INVALID_PERSISTENT_STORAGE; each firmware reports it its own way)."""
        page = self.info.page()
        return page is not None and not page.missing_required()

    # --- entry points (bl_cmd_t) ------------------------------------------------------------------

    def start(self) -> None:
        """dfu_mesh_start: announce stored banks, then beacon our FWID."""
        self._reset_caches()
        self._data_req_segment = 0
        page = self._page()
        by_type = {bank.dfu_type: bank for bank in page.banks}
        for dfu_type in (DfuType.BOOTLOADER, DfuType.SOFTDEVICE, DfuType.APPLICATION):
            if dfu_type in by_type:
                self.events.bank_available(by_type[dfu_type])
        self._start_find_fwid()

    def request(self, dfu_type: int, fwid: bytes, bank: int) -> NrfError:
        """dfu_mesh_req: ask the mesh for a transfer; ``bank`` NO_BANK means in place."""
        if self.state != DfuState.FIND_FWID:
            return NrfError.INVALID_STATE
        if bank != NO_BANK and bank >= self.bootloader_address:
            return NrfError.INVALID_ADDR
        self.t.bank = bank
        self._start_req(dfu_type, fwid)
        return NrfError.SUCCESS

    def relay(self, dfu_type: int, fwid: bytes, tid: int) -> NrfError:
        """dfu_mesh_relay: forward a transfer we do not want ourselves."""
        if self.state not in (DfuState.FIND_FWID, DfuState.DFU_REQ):
            return NrfError.INVALID_STATE
        self.state = DfuState.RELAY_CANDIDATE
        self.t.dfu_type, self.t.tid, self.t.fwid = dfu_type, tid, fwid
        self._beacon_state()
        return NrfError.SUCCESS

    def restart(self) -> None:
        """BL_CMD_TYPE_DFU_ABORT: drop whatever we were doing, back to FWID beaconing."""
        self._end_transfer()
        self._start_find_fwid()

    def timeout(self) -> None:
        """dfu_mesh_timeout: the core's timer (the rampdown) expired."""
        if self.state == DfuState.FIND_FWID:
            self.events.aborted(EndReason.FWID_VALID)
        elif self.state in (DfuState.DFU_REQ, DfuState.READY):
            self.events.aborted(EndReason.ERROR_NO_START)
        elif self.state == DfuState.TARGET:
            self._start_req(self.t.dfu_type, self.t.fwid)
        elif self.state == DfuState.VALIDATE:
            if self._signature_ok():
                self._finalize()
            else:
                self.events.aborted(EndReason.ERROR_UNAUTHORIZED)
        elif self.state in (DfuState.RELAY, DfuState.RELAY_CANDIDATE):
            self.events.aborted(EndReason.SUCCESS)

    def rx(self, raw: bytes) -> NrfError:
        """dfu_mesh_rx: one DFU packet, from the radio or the serial port."""
        try:
            packet = decode_packet(raw)
        except PacketError:
            return NrfError.INVALID_DATA
        if isinstance(packet, FwidBeacon):
            return self._rx_fwid(packet)
        if isinstance(packet, State):
            return self._rx_state(packet)
        if isinstance(packet, DataRequest):
            return self._rx_data_request(packet, raw)
        if isinstance(packet, Data) and packet.response and self.state == DfuState.RELAY:
            return self._relay_response(packet, raw)
        return self._rx_data(packet, raw)

    # --- state entries ----------------------------------------------------------------------------

    def _start_find_fwid(self) -> None:
        self._beacon_fwid()
        self.state = DfuState.FIND_FWID
        self.t = Transaction()

    def _start_req(self, dfu_type: int, fwid: bytes) -> None:
        self.t = dataclasses.replace(
            self.t,
            authority=0,
            length=0,
            start=0,
            segments_remaining=0xFFFF,
            segment_count=0,
            signature_length=0,
            tid=0,
            dfu_type=dfu_type,
            fwid=fwid,
        )
        self.state = DfuState.DFU_REQ
        self._beacon_state()

    def _start_ready(self, packet: State) -> None:
        self.t.tid, self.t.authority, self.t.flood = (
            packet.transaction_id,
            packet.authority,
            packet.flood,
        )
        self.state = DfuState.READY
        self._beacon_state()

    def _start_target(self) -> None:
        t = self.t
        self.state = DfuState.TARGET
        if t.bank != t.start:
            # Receiving into a bank: banks it would overwrite are gone.
            for bank in self._page().banks:
                if sections_overlap(bank.address, bank.length, t.bank, t.length):
                    self.info.invalidate(bank.type)
        else:
            # Writing in place: the old firmware is no longer intact from here on.
            flags = 0xFFFFFFFF & ~ids.INTACT_FLAG[DfuType(t.dfu_type)]
            if not self.info.overwrite(EntryType.FLAGS, struct.pack("<I", flags)):
                self.info.put(EntryType.FLAGS, struct.pack("<I", flags))
        self.transfer = Transfer.begin(self.flash, t.start, t.bank, t.length)
        if self.transfer is None:
            self._start_req(t.dfu_type, t.fwid)
            return
        self.tx.abort(BEACON_SLOT)
        self.events.started(DfuRole.TARGET, t.dfu_type, t.fwid)

    def _start_rampdown(self) -> None:
        self.events.timer_set(RAMPDOWN_S)
        self.state = DfuState.VALIDATE

    # --- beacons and relaying ---------------------------------------------------------------------

    def _beacon_fwid(self) -> None:
        v = self._version()
        packet = FwidBeacon(v.sd, v.bl_id, v.bl_version, v.company_id, v.app_id, v.app_version)
        self._beacon(packet.encode(), TX_REPEATS_FWID, Interval.REGULAR_SLOW)

    def _beacon_state(self) -> None:
        t = self.t
        packet = State(
            t.dfu_type,
            t.authority,
            t.flood,
            t.tid,
            t.fwid,
            relay_node=self.state == DfuState.RELAY_CANDIDATE,
        )
        interval = Interval.REGULAR  # both DFU_REQ (authority 0) and READY beacons
        self._beacon(packet.encode(), REPEATS_INFINITE, interval)

    def _beacon(self, packet: bytes, repeats: int, interval: Interval) -> None:
        self.tx.set(BEACON_SLOT, packet, repeats, interval, self.now())
        self.events.serial_tx(packet)

    def _relay(self, raw: bytes, kind: int, segment: int) -> None:
        start = kind == PacketType.DATA and segment == 0
        repeats = TX_REPEATS_START if start else TX_REPEATS_DATA
        self.tx.dynamic(raw, repeats, Interval.EXPONENTIAL, self.now())
        self._packet_cache.append((kind, segment))

    # --- packet handlers --------------------------------------------------------------------------

    def _rx_fwid(self, packet: FwidBeacon) -> NrfError:
        if self.state != DfuState.FIND_FWID:
            return NrfError.INVALID_STATE
        mine = self._version()
        if packet.bl_id == mine.bl_id and packet.bl_version > mine.bl_version:
            self.events.new_firmware(
                DfuType.BOOTLOADER, bytes([packet.bl_id, packet.bl_version]), self.state
            )
            return NrfError.SUCCESS
        offered = ids.current(
            Fwid(packet.sd, 0, 0, packet.company_id, packet.app_id, packet.app_version),
            DfuType.APPLICATION,
        )
        have = ids.current(mine, DfuType.APPLICATION)
        app_newer = ids.same_id(DfuType.APPLICATION, offered, have) and ids.version(
            DfuType.APPLICATION, offered
        ) > ids.version(DfuType.APPLICATION, have)
        if not app_newer:
            return NrfError.INVALID_DATA
        if packet.sd not in (ids.SD_NO_REQUIREMENT, mine.sd):
            self.events.new_firmware(DfuType.SOFTDEVICE, struct.pack("<H", packet.sd), self.state)
        else:
            self.events.new_firmware(DfuType.APPLICATION, offered, self.state)
        return NrfError.SUCCESS

    def _matches_our_request(self, packet: State) -> bool:
        """dfu_util.c ready_packet_matches_our_req."""
        wanted = self.t.dfu_type
        if wanted not in (packet.dfu_type, DfuType.NONE):
            return False
        if packet.transaction_id in self._tid_cache:
            return False
        return ids.same_id(wanted, packet.fwid, self.t.fwid) and ids.version(
            wanted, packet.fwid
        ) >= ids.version(wanted, self.t.fwid)

    def _outranks(self, packet: State) -> bool:
        return packet.authority > self.t.authority or (
            packet.authority == self.t.authority and packet.transaction_id > self.t.tid
        )

    def _rx_state(self, packet: State) -> NrfError:
        if self.state == DfuState.FIND_FWID:
            self.events.new_firmware(packet.dfu_type, packet.fwid, self.state)
            return NrfError.SUCCESS
        if self.state in (DfuState.DFU_REQ, DfuState.READY):
            if self._matches_our_request(packet):
                if self._outranks(packet):
                    self.t.dfu_type, self.t.fwid = packet.dfu_type, packet.fwid
                    self._start_ready(packet)
            elif packet.authority != 0 and (
                packet.dfu_type != self.t.dfu_type
                or not ids.same_id(self.t.dfu_type, packet.fwid, self.t.fwid)
            ):
                self.events.new_firmware(packet.dfu_type, packet.fwid, self.state)
            return NrfError.SUCCESS
        if self.state == DfuState.RELAY_CANDIDATE:
            if (
                packet.dfu_type == self.t.dfu_type
                and packet.fwid == self.t.fwid
                and self._outranks(packet)
            ):
                self.t.tid, self.t.authority = packet.transaction_id, packet.authority
                self._beacon_state()
            return NrfError.SUCCESS
        return NrfError.INVALID_STATE

    def _rx_data(self, packet: Start | Data, raw: bytes) -> NrfError:
        """handle_data_packet: START and DATA (and DATA_RSP outside the relay state)."""
        is_response = isinstance(packet, Data) and packet.response
        kind = PacketType.DATA_RSP if is_response else PacketType.DATA
        segment = packet.segment if isinstance(packet, Data) else 0
        if packet.transaction_id != self.t.tid:
            return NrfError.INVALID_DATA
        if (kind, segment) in self._packet_cache:
            return NrfError.SUCCESS
        do_relay = False
        status = NrfError.SUCCESS
        if self.state == DfuState.READY:
            if isinstance(packet, Start):
                do_relay = self._target_rx_start(packet)
            else:
                self._lost_start_edge += 1
                if self._lost_start_edge < LOST_START_EDGE:
                    return NrfError.SUCCESS
                self._lost_start_edge = 0
                self._tid_cache.append(self.t.tid)
                self._start_req(self.t.dfu_type, self.t.fwid)  # we missed the START
                status = NrfError.INVALID_STATE
        elif self.state == DfuState.TARGET:
            if isinstance(packet, Data) and 0 < segment <= self.t.segment_count:
                do_relay = self._target_rx_data(packet)
            else:
                status = NrfError.INVALID_DATA
            if self.t.segments_remaining == 0:
                self._start_rampdown()
        elif self.state == DfuState.RELAY_CANDIDATE:
            if isinstance(packet, Start):
                self.t.segment_count = segment_count_from_start(packet)
            self.state = DfuState.RELAY
            self.tx.abort(BEACON_SLOT)
            self.events.started(DfuRole.RELAY, self.t.dfu_type, self.t.fwid)
            do_relay = True
        elif self.state == DfuState.RELAY:
            if isinstance(packet, Start):
                self.t.segment_count = segment_count_from_start(packet)
            self.events.progress(segment, self.t.segment_count)
            do_relay = True
        else:
            status = NrfError.INVALID_STATE
        if do_relay:
            self._relay(raw, kind, segment)
        elif status == NrfError.SUCCESS:
            self._packet_cache.append((kind, segment))
        return status

    def _target_rx_start(self, start: Start) -> bool:
        """target_rx_start: where the transfer goes; True if we became its target."""
        t = self.t
        segment = self._page().segment(SEGMENT_ENTRY[DfuType(t.dfu_type)])
        assert segment is not None, "checked by init()"
        seg_start, seg_length = segment
        t.indicated_start = start.start_address
        address = seg_start if start.start_address == START_ADDRESS_UNKNOWN else start.start_address
        t.segments_remaining = t.segment_count = segment_count_from_start(start)
        t.start = address
        t.length = start.length_words * 4
        t.signature_length = start.signature_length
        t.last_requested = 0
        t.signature_bitmap = 0
        self._reset_caches()
        if t.bank == NO_BANK:
            if t.dfu_type == DfuType.BOOTLOADER:
                app = self._page().segment(EntryType.SEGMENT_APP)
                assert app is not None, "checked by init()"
                upper = min(app[0] + app[1], self.bootloader_address)
                page = self.flash.page_size
                t.bank = upper - (t.length & ~(page - 1)) - page
            else:
                t.bank = t.start
        elif t.bank + t.length > self.bootloader_address:
            self.events.aborted(EndReason.ERROR_BANK_IN_BOOTLOADER_AREA)
            self._start_find_fwid()
            return False
        if t.start != t.bank and sections_overlap(t.start, t.length, t.bank, t.length):
            self.events.aborted(EndReason.ERROR_BANK_AND_DESTINATION_OVERLAP)
            self._start_find_fwid()
            return False
        if seg_start <= t.start and t.start + t.length <= seg_start + seg_length:
            self._start_target()
            return True
        self._tid_cache.append(start.transaction_id)  # it cannot fit: never this one again
        self._start_req(t.dfu_type, t.fwid)
        return False

    def _target_rx_data(self, packet: Data) -> bool:
        """target_rx_data: store one segment; True if it was new (and must be relayed)."""
        t = self.t
        if self._data_req_segment == packet.segment:
            self._data_req_segment = 0  # got what we asked for: stop asking
            self.tx.abort(BEACON_SLOT)
        image_segments = t.segment_count - t.signature_length // SEGMENT_SIZE
        if packet.segment <= image_segments:
            if self.transfer is None:
                return False
            outcome = self.transfer.store(segment_address(packet.segment, t.start), packet.data)
            if outcome == Outcome.PACKET_LOSS:
                self.events.aborted(EndReason.ERROR_PACKET_LOSS)
            if outcome != Outcome.STORED:
                return False
        else:
            index = packet.segment - image_segments - 1
            if index >= t.signature_length // SEGMENT_SIZE or t.signature_bitmap & (1 << index):
                return False
            offset = index * SEGMENT_SIZE
            t.signature[offset : offset + len(packet.data)] = packet.data
            t.signature_bitmap |= 1 << index
        self.events.progress(packet.segment, t.segment_count)
        t.segments_remaining -= 1
        if self._data_req_segment == 0:
            self._request_missing(packet.segment)
        return True

    def _request_missing(self, previous: int) -> None:
        """Beacon a DATA_REQ for the oldest missing segment (not the one just before
        ``previous``, which may still be on its way, unless ``previous`` was the last)."""
        if self.transfer is None:
            return
        missing = self.transfer.oldest_missing(self.t.last_requested)
        if missing is None:
            return
        if missing < previous - 1 or self.t.segment_count == previous:
            request = DataRequest(missing, self.t.tid).encode()
            self.tx.set(BEACON_SLOT, request, REPEATS_INFINITE, Interval.REGULAR_SLOW, self.now())
            self.t.last_requested = segment_address(missing, self.t.start)
            self._data_req_segment = missing
            self.events.log(f"DATA_REQ for missing segment {missing}")

    def _rx_data_request(self, packet: DataRequest, raw: bytes) -> NrfError:
        if packet.transaction_id != self.t.tid:
            return NrfError.INVALID_DATA
        key = (PacketType.DATA_REQ, packet.segment)
        if self.state == DfuState.RELAY:
            if key not in self._packet_cache:
                self._relay(raw, PacketType.DATA_REQ, packet.segment)
                self.events.serial_tx(raw)  # v4.2+: the host may hold what nobody else has
            return NrfError.SUCCESS
        served = next((s for s in self._served if s.segment == packet.segment), None)
        if served is not None:
            served.rx_count += 1
            if served.rx_count <= REQ_RX_COUNT_RETRY:
                return NrfError.SUCCESS  # served it recently; let the response travel
        data = self._held(packet.segment)
        if data is None:
            status = NrfError.NOT_FOUND
        else:
            response = Data(packet.segment, packet.transaction_id, data, response=True)
            self.tx.dynamic(response.encode(), TX_REPEATS_RSP, Interval.EXPONENTIAL, self.now())
            self.events.log(f"DATA_RSP for segment {packet.segment}")
            status = NrfError.SUCCESS
        if status == NrfError.SUCCESS and served is None:
            served = self._served[self._served_index % REQ_CACHE_SIZE]
            self._served_index += 1
            served.segment = packet.segment
        if served is not None:
            served.rx_count = 0
        return status

    def _held(self, segment: int) -> bytes | None:
        if self.transfer is None:
            return None
        data = self.transfer.held(segment)
        if data is None:
            return None
        address = segment_address(segment, self.t.start)
        return data[: max(0, min(SEGMENT_SIZE, self.transfer.end - address))]

    def _relay_response(self, packet: Data, raw: bytes) -> NrfError:
        """handle_data_rsp_packet in the relay state: forward responses we have not seen."""
        if (PacketType.DATA_RSP, packet.segment) not in self._packet_cache:
            done = self.t.segment_count - self.t.segments_remaining + 1
            self.events.progress(done, self.t.segment_count)
            self._relay(raw, PacketType.DATA_RSP, packet.segment)
        return NrfError.SUCCESS

    # --- completion -------------------------------------------------------------------------------

    def _signature_ok(self) -> bool:
        """signature_check: no key accepts anything; a key demands a valid signature over
        dfu_type, start address (as the START said), length, a zero byte, fwid and image."""
        key = self._page().public_key
        if key is None:
            return True
        t = self.t
        if t.signature_length == 0 or self.transfer is None:
            return False
        message = (
            bytes([t.dfu_type])
            + struct.pack("<II", t.indicated_start, t.length)
            + b"\x00"
            + t.fwid
            + self.transfer.image()
        )
        return self.verify(key, message, bytes(t.signature))

    def _finalize(self) -> None:
        """dfu_mesh_finalize: record what was received, compact the page, report the end."""
        t = self.t
        dfu_type = DfuType(t.dfu_type)
        signature = bytes(t.signature) if t.signature_length else None
        if t.bank != t.start:
            union = t.fwid.ljust(ids.UNION_LENGTH, b"\xff")  # the entry is 0xFF-filled first
            payload = bank_payload(t.bank, t.length, union, signature, BANK_STATE_IDLE)
            self.info.put(EntryType.BANK_BASE + dfu_type, payload)
        else:
            page = self._page()
            flags = (page.flags or 0) | ids.INTACT_FLAG[dfu_type]
            if signature is not None:
                self.info.put(SIGNATURE_ENTRY[dfu_type], signature)
            version = with_fwid(self._version(), dfu_type, t.fwid)
            self.info.put(EntryType.VERSION, version.encode())
            self.info.put(EntryType.FLAGS, struct.pack("<I", flags))
        self.state = DfuState.STABILIZE
        self.info.compact()
        self._end_transfer()
        self.events.ended(DfuRole.TARGET, t.dfu_type, t.fwid)
        self.start()

    # --- helpers ----------------------------------------------------------------------------------

    def _end_transfer(self) -> None:
        if self.transfer is not None:
            self.transfer.finish()
            self.transfer = None

    def _reset_caches(self) -> None:
        self._packet_cache.clear()
        self._served = [_ServedRequest() for _ in range(REQ_CACHE_SIZE)]
        self._served_index = 0


def with_fwid(version: Fwid, dfu_type: int, fwid: bytes) -> Fwid:
    """The VERSION entry after ``fwid`` of ``dfu_type`` was installed."""
    if dfu_type == DfuType.APPLICATION:
        company, app_id, app_version = struct.unpack("<IHI", fwid[:10])
        return dataclasses.replace(
            version, company_id=company, app_id=app_id, app_version=app_version
        )
    if dfu_type == DfuType.BOOTLOADER:
        return dataclasses.replace(version, bl_id=fwid[0], bl_version=fwid[1])
    return dataclasses.replace(version, sd=struct.unpack_from("<H", fwid)[0])
