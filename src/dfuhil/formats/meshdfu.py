"""Mesh DFU packets and the mesh serial framing that carries them (spec: mesh-dfu.md §3, §4).

One module for both ends of the wire: the host transport (procedures/mesh_dfu.py) and the virtual
farm's bootloader and DFU example (sim/mesh/) encode and decode with the same code, and the tests
pin that code to the byte layouts of the nRF5 SDK for Mesh (dfu_packet.h, serial_evt.h), so the
two ends cannot drift into agreeing with each other but not with a real board.

Serial frame: ``[length][opcode][payload]`` with ``length = 1 + len(payload)``.
DFU packet: ``uint16 packet_type`` then the type's fields, little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

SEGMENT_SIZE = 16
SIGNATURE_LENGTH = 64
START_ADDRESS_UNKNOWN = 0xFFFFFFFF  # "use the application segment start from the device page"
START_FLAGS_FIRST_LAST = 0x0C  # flags: bit2 first, bit3 last (the only value the SDK supports)
HOST_AUTHORITY = 7  # nrfutil's STATE info byte 0x0F: authority 7 + flood
MAX_FRAME_PAYLOAD = 254  # the length byte counts the opcode


class PacketType(IntEnum):
    FWID = 0xFFFE
    STATE = 0xFFFD
    DATA = 0xFFFC  # segment 0 is the START packet
    DATA_REQ = 0xFFFB
    DATA_RSP = 0xFFFA
    RELAY_REQ = 0xFFF9


class DfuType(IntEnum):
    NONE = 0
    SOFTDEVICE = 1
    BOOTLOADER = 2
    APPLICATION = 4
    BOOTLOADER_INFO = 8


class Opcode(IntEnum):
    """Serial opcodes dfuhil speaks (serial_command.h / serial_evt.h)."""

    ECHO = 0x02
    RADIO_RESET = 0x0E
    DFU_DATA = 0x78
    DEVICE_STARTED = 0x81
    ECHO_RSP = 0x82
    CMD_RSP = 0x84
    DFU_FW_OUTDATED_NO_AUTH = 0xA6


class Status(IntEnum):
    """Serial CMD_RSP status codes (serial_status.h); names as the SDK spells them."""

    SUCCESS = 0x00
    ERROR_UNKNOWN = 0x80
    ERROR_INTERNAL = 0x81
    ERROR_CMD_UNKNOWN = 0x82
    ERROR_INVALID_STATE = 0x83
    ERROR_INVALID_LENGTH = 0x84
    ERROR_INVALID_PARAMETER = 0x85
    ERROR_BUSY = 0x86
    ERROR_INVALID_DATA = 0x87
    ERROR_REJECTED = 0x8E
    ERROR_PIPE_INVALID = 0x90
    ERROR_TIMEOUT = 0x93
    ERROR_INVALID_KEY_DATA = 0x98


def status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"UNKNOWN_STATUS_0x{code:02X}"


class OperatingMode(IntEnum):
    """DEVICE_STARTED's first byte: which firmware answered the serial port."""

    STOPPED = 0
    BOOTLOADER = 1
    APPLICATION = 2


class EndReason(IntEnum):
    """dfu_end_t: why a transfer ended (nrf_mesh_dfu_types.h)."""

    SUCCESS = 0
    FWID_VALID = 1
    APP_ABORT = 2
    ERROR_PACKET_LOSS = 3
    ERROR_UNAUTHORIZED = 4
    ERROR_NO_START = 5
    ERROR_TIMEOUT = 6
    ERROR_NO_MEM = 7
    ERROR_INVALID_PERSISTENT_STORAGE = 8
    ERROR_SEGMENT_VIOLATION = 9
    ERROR_MBR_CALL_FAILED = 10
    ERROR_INVALID_TRANSFER = 11
    ERROR_BANK_IN_BOOTLOADER_AREA = 12
    ERROR_BANK_AND_DESTINATION_OVERLAP = 13


class PacketError(ValueError):
    """Bytes that are not a well-formed DFU packet or serial frame."""


# --- serial framing ---------------------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise PacketError(f"serial payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}")
    return bytes([len(payload) + 1, opcode]) + payload


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes

    def encode(self) -> bytes:
        return frame(self.opcode, self.payload)


class FrameReader:
    """Reassembles ``[length][opcode][payload]`` frames from a byte stream, however it is cut."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while self._buffer:
            length = self._buffer[0]
            if length == 0:  # not a frame (a length byte counts at least the opcode): resync
                del self._buffer[0]
                continue
            if len(self._buffer) < length + 1:
                break
            frames.append(Frame(self._buffer[1], bytes(self._buffer[2 : length + 1])))
            del self._buffer[: length + 1]
        return frames

    def pending(self) -> int:
        return len(self._buffer)


def device_started(mode: OperatingMode, hw_error: int = 0, data_credit: int = 4) -> bytes:
    return frame(Opcode.DEVICE_STARTED, bytes([mode, hw_error, data_credit]))


def cmd_rsp_app(opcode: int, status: int) -> bytes:
    """The mesh serial application's command response: ``[0x84][opcode][status]``."""
    return frame(Opcode.CMD_RSP, bytes([opcode, status]))


def cmd_rsp_bootloader(status: int, packet_type: int) -> bytes:
    """The serial bootloader's: ``[0x84][0x78][status][packet_type u16]``."""
    return frame(Opcode.CMD_RSP, struct.pack("<BBH", Opcode.DFU_DATA, status, packet_type))


@dataclass(frozen=True)
class CommandResponse:
    opcode: int
    status: int
    packet_type: int | None  # only the bootloader's variant carries it

    @classmethod
    def decode(cls, payload: bytes) -> CommandResponse:
        if len(payload) < 2:
            raise PacketError(f"CMD_RSP of {len(payload)} bytes (expected 2 or 4)")
        packet_type = struct.unpack_from("<H", payload, 2)[0] if len(payload) >= 4 else None
        return cls(payload[0], payload[1], packet_type)


# --- DFU packets ------------------------------------------------------------------------------

FWID_LENGTH = {DfuType.SOFTDEVICE: 2, DfuType.BOOTLOADER: 2, DfuType.APPLICATION: 10}


@dataclass(frozen=True)
class State:
    """STATE: a source (or a target, authority 0) announcing a transfer."""

    dfu_type: int
    authority: int
    flood: bool
    transaction_id: int
    fwid: bytes  # type-specific: 10 bytes for APP, 2 for SD/BL
    relay_node: bool = False

    def encode(self) -> bytes:
        info = (
            (self.authority & 0x07) | (0x08 if self.flood else 0) | (0x10 if self.relay_node else 0)
        )
        return struct.pack("<HBBI", PacketType.STATE, self.dfu_type, info, self.transaction_id) + (
            self.fwid
        )


@dataclass(frozen=True)
class Start:
    """DATA with segment 0: where, how long (words), signed or not."""

    transaction_id: int
    start_address: int
    length_words: int
    signature_length: int
    flags: int = START_FLAGS_FIRST_LAST

    def encode(self) -> bytes:
        return struct.pack(
            "<HHIIIHB",
            PacketType.DATA,
            0,
            self.transaction_id,
            self.start_address,
            self.length_words,
            self.signature_length,
            self.flags,
        )


@dataclass(frozen=True)
class Data:
    """DATA (or DATA_RSP, answering a request) with segment 1..M."""

    segment: int
    transaction_id: int
    data: bytes
    response: bool = False

    def encode(self) -> bytes:
        kind = PacketType.DATA_RSP if self.response else PacketType.DATA
        return struct.pack("<HHI", kind, self.segment, self.transaction_id) + self.data


@dataclass(frozen=True)
class DataRequest:
    """DATA_REQ: a target asking the mesh for a segment it missed."""

    segment: int
    transaction_id: int

    def encode(self) -> bytes:
        return struct.pack("<HHI", PacketType.DATA_REQ, self.segment, self.transaction_id)


@dataclass(frozen=True)
class FwidBeacon:
    """FWID: an idle node telling the mesh what it runs."""

    sd: int
    bl_id: int
    bl_version: int
    company_id: int
    app_id: int
    app_version: int

    def encode(self) -> bytes:
        return struct.pack(
            "<HHBBIHI",
            PacketType.FWID,
            self.sd,
            self.bl_id,
            self.bl_version,
            self.company_id,
            self.app_id,
            self.app_version,
        )


Packet = State | Start | Data | DataRequest | FwidBeacon


def decode_packet(raw: bytes) -> Packet:
    """Parse one DFU packet; raises PacketError for anything a device would drop."""
    if len(raw) < 2:
        raise PacketError("DFU packet shorter than its type field")
    kind = struct.unpack_from("<H", raw)[0]
    try:
        if kind == PacketType.STATE:
            dfu_type, info, tid = struct.unpack_from("<BBI", raw, 2)
            dfu_type &= 0x0F
            fwid = raw[8:]
            expected = FWID_LENGTH.get(DfuType(dfu_type)) if dfu_type in FWID_LENGTH else None
            if expected is None or len(fwid) != expected:
                raise PacketError(f"STATE for dfu type {dfu_type} with a {len(fwid)}-byte fwid")
            return State(dfu_type, info & 0x07, bool(info & 0x08), tid, fwid, bool(info & 0x10))
        if kind in (PacketType.DATA, PacketType.DATA_RSP):
            segment, tid = struct.unpack_from("<HI", raw, 2)
            if segment == 0 and kind == PacketType.DATA:
                start, words, sig_len, flags = struct.unpack_from("<IIHB", raw, 8)
                return Start(tid, start, words, sig_len, flags)
            data = raw[8:]
            if not data or len(data) > SEGMENT_SIZE:
                raise PacketError(f"DATA segment {segment} with {len(data)} bytes")
            return Data(segment, tid, data, response=kind == PacketType.DATA_RSP)
        if kind == PacketType.DATA_REQ:
            segment, tid = struct.unpack_from("<HI", raw, 2)
            return DataRequest(segment, tid)
        if kind == PacketType.FWID:
            return FwidBeacon(*struct.unpack_from("<HBBIHI", raw, 2))
    except struct.error as exc:
        raise PacketError(f"truncated DFU packet 0x{kind:04X} ({len(raw)} bytes)") from exc
    raise PacketError(f"unknown DFU packet type 0x{kind:04X}")


# --- segmenting -------------------------------------------------------------------------------


def segment_count(length_bytes: int, signature_length: int) -> int:
    """M: the last segment number of a transfer (image segments, then signature segments)."""
    return (length_bytes + SEGMENT_SIZE - 1) // SEGMENT_SIZE + signature_length // SEGMENT_SIZE


def segment_payload(image: bytes, signature: bytes, segment: int) -> bytes:
    """The bytes that travel in ``segment`` (1-based); the signature starts a fresh segment."""
    image_segments = (len(image) + SEGMENT_SIZE - 1) // SEGMENT_SIZE
    if 1 <= segment <= image_segments:
        offset = (segment - 1) * SEGMENT_SIZE
        return image[offset : offset + SEGMENT_SIZE]
    index = segment - image_segments - 1
    if 0 <= index < len(signature) // SEGMENT_SIZE:
        return signature[index * SEGMENT_SIZE : (index + 1) * SEGMENT_SIZE]
    raise PacketError(f"segment {segment} is outside the transfer (1..{image_segments})")


def app_fwid(company_id: int, app_id: int, app_version: int) -> bytes:
    """The 10-byte APP fwid as STATE and the init packet carry it: ``<I H I``."""
    return struct.pack("<IHI", company_id, app_id, app_version)


def decode_app_fwid(fwid: bytes) -> tuple[int, int, int]:
    company_id, app_id, app_version = struct.unpack("<IHI", fwid)
    return company_id, app_id, app_version


# --- human-readable rendering (console logs, frame logs) --------------------------------------


def describe_packet(raw: bytes) -> str:
    """One DFU packet as a person reads it: ``DATA seg=12 tid=0x1234ABCD len=16``."""
    try:
        packet = decode_packet(raw)
    except PacketError as exc:
        return f"DFU ? ({exc}) {raw.hex(' ').upper()}"
    if isinstance(packet, State):
        return (
            f"STATE type={_type_name(packet.dfu_type)} authority={packet.authority} "
            f"tid=0x{packet.transaction_id:08X} fwid={packet.fwid.hex().upper()}"
        )
    if isinstance(packet, Start):
        return (
            f"START tid=0x{packet.transaction_id:08X} start=0x{packet.start_address:08X} "
            f"words={packet.length_words} sig_len={packet.signature_length}"
        )
    if isinstance(packet, Data):
        kind = "DATA_RSP" if packet.response else "DATA"
        return (
            f"{kind} seg={packet.segment} tid=0x{packet.transaction_id:08X} len={len(packet.data)}"
        )
    if isinstance(packet, DataRequest):
        return f"DATA_REQ seg={packet.segment} tid=0x{packet.transaction_id:08X}"
    return (
        f"FWID sd=0x{packet.sd:04X} bl={packet.bl_id}.{packet.bl_version} "
        f"company=0x{packet.company_id:08X} app={packet.app_id} version={packet.app_version}"
    )


def _type_name(dfu_type: int) -> str:
    try:
        return DfuType(dfu_type).name
    except ValueError:
        return str(dfu_type)


# Serial DFU events of the mesh application (serial_evt.h, 0xA0-0xA6), for the logs.
DFU_EVENTS = {
    0xA0: "DFU_REQ_RELAY",
    0xA1: "DFU_REQ_SOURCE",
    0xA2: "DFU_START",
    0xA3: "DFU_END",
    0xA4: "DFU_BANK_AVAILABLE",
    0xA5: "DFU_FW_OUTDATED",
    0xA6: "DFU_FW_OUTDATED_NO_AUTH",
}
_ROLES = {0: "none", 1: "target", 2: "relay", 3: "source"}


def _describe_dfu_event(opcode: int, payload: bytes) -> str:
    name = DFU_EVENTS[opcode]
    if opcode in (0xA2, 0xA3) and len(payload) >= 12:
        role = _ROLES.get(payload[0], str(payload[0]))
        text = (
            f"{name} role={role} type={_type_name(payload[1])} fwid={payload[2:12].hex().upper()}"
        )
        if opcode == 0xA3 and len(payload) >= 13:
            try:
                text += f" end={EndReason(payload[12]).name}"
            except ValueError:
                text += f" end={payload[12]}"
        return text
    return f"{name} {payload.hex(' ').upper()}".rstrip()


def describe_frame(item: Frame) -> str:
    """One serial frame as a log line; unknown opcodes keep their bytes in hex."""
    payload = item.payload
    if item.opcode in DFU_EVENTS:
        return _describe_dfu_event(item.opcode, payload)
    if item.opcode == Opcode.DEVICE_STARTED and len(payload) >= 3:
        try:
            mode = OperatingMode(payload[0]).name
        except ValueError:
            mode = str(payload[0])
        return f"DEVICE_STARTED mode={mode} hw_error={payload[1]} credit={payload[2]}"
    if item.opcode in (Opcode.ECHO, Opcode.ECHO_RSP):
        name = "ECHO" if item.opcode == Opcode.ECHO else "ECHO_RSP"
        return f"{name} {payload.hex(' ').upper()}".rstrip()
    if item.opcode == Opcode.CMD_RSP and len(payload) >= 2:
        rsp = CommandResponse.decode(payload)
        extra = f" packet=0x{rsp.packet_type:04X}" if rsp.packet_type is not None else ""
        return f"CMD_RSP opcode=0x{rsp.opcode:02X} status={status_name(rsp.status)}{extra}"
    if item.opcode == Opcode.DFU_DATA:
        return describe_packet(payload)
    return f"FRAME opcode=0x{item.opcode:02X} {payload.hex(' ').upper()}".rstrip()


class FrameTextDecoder:
    """Turns a mesh serial byte stream into one text line per frame, for the console.

    It has the incremental-decoder shape (``decode(data, final)``, ``reset()``) so the console
    can read a binary-protocol board with the same ``expect()`` as a text one.
    """

    def __init__(self) -> None:
        self._reader = FrameReader()

    def decode(self, data: bytes, final: bool = False) -> str:
        lines = [describe_frame(f) + "\n" for f in self._reader.feed(data)]
        if final and self._reader.pending():
            lines.append(f"(incomplete frame: {self._reader.pending()} bytes)\n")
            self._reader = FrameReader()
        return "".join(lines)

    def reset(self) -> None:
        self._reader = FrameReader()


# What a console sees when mesh serial firmware boots (bootloader_verify.py checks 81 02 00).
STARTED_APPLICATION_PATTERN = r"DEVICE_STARTED mode=APPLICATION\b"
STARTED_BOOTLOADER_PATTERN = r"DEVICE_STARTED mode=BOOTLOADER\b"
