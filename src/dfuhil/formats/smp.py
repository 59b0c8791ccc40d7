"""SMP (MCUmgr Simple Management Protocol): header, ids, error codes and the serial framing.

Pure bytes, shared by the virtual farm's SMP servers and dfuhil's SMP host, so both read the
wire the same way. Sources (spec ../shared/specs/mcuboot-smp.md §4-§5): Zephyr
``smp_internal.h``, ``mgmt_defines.h``, ``img_mgmt.h``, ``serial.h``/``serial_util.c``, and the
``smp`` 4.2.0 package, against which the tests pin every byte.

Serial framing ("SMP over console"): ``B = u16be(len(P)+2) ‖ P ‖ u16be(crc16_xmodem(P))`` is
base64-encoded and cut into lines, ``06 09`` before the first, ``04 14`` before each following
one, each ending in ``\\n`` and decodable on its own (cuts at multiples of 4 chars). The bytes
are the ``smp`` package's own (``smp.packet.encode``/``decode``, the CRC is the standard
library's ``binascii.crc_hqx``), so host and virtual server frame exactly as smpclient does.
dfuhil's own part is :class:`SerialFrameDecoder`: it separates console text that sits between
frames, so a host can show a boot log and a server never mistakes text for SMP, and adds the
receiver checks Zephyr makes and the package does not.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from smp import header as smphdr
from smp import image_management as smpimg
from smp import os_management as smpos
from smp import packet as smppacket
from smp.exceptions import SMPDecodeError

# --- header ----------------------------------------------------------------------------------


Op = smphdr.OP


VERSION_V1 = 0  # SMP v1 (legacy: errors as {"rc": n})
VERSION_V2 = 1  # SMP v2 (group errors as {"err": {"group": g, "rc": n}})


class Group(IntEnum):
    """``MGMT_GROUP_ID_*`` (Zephyr's names; the ``smp`` package calls 5 and 7 otherwise)."""

    OS = 0
    IMAGE = 1
    STAT = 2
    SETTINGS = 3
    LOG = 4
    CRASH = 5
    SPLIT = 6
    RUN = 7
    FS = 8
    SHELL = 9
    ENUM = 10
    TRANSPORT = 11
    ZEPHYR = 63


class OsCmd(IntEnum):
    ECHO = 0
    CONSOLE_ECHO_CTRL = 1
    TASK_STATS = 2
    MEMPOOL_STATS = 3
    DATETIME = 4
    RESET = 5
    MCUMGR_PARAMS = 6
    INFO = 7
    BOOTLOADER_INFO = 8


class ImageCmd(IntEnum):
    STATE = 0
    UPLOAD = 1
    FILE = 2
    CORELIST = 3
    CORELOAD = 4
    ERASE = 5
    SLOT_INFO = 6


class MgmtErr(IntEnum):
    """``MGMT_ERR_*``: the generic ``rc`` (v1, and v2 errors outside any group)."""

    EOK = 0
    EUNKNOWN = 1
    ENOMEM = 2
    EINVAL = 3
    ETIMEOUT = 4
    ENOENT = 5
    EBADSTATE = 6
    EMSGSIZE = 7
    ENOTSUP = 8
    ECORRUPT = 9
    EBUSY = 10
    EACCESSDENIED = 11
    UNSUPPORTED_TOO_OLD = 12
    UNSUPPORTED_TOO_NEW = 13


# Group 0's and group 1's ``err.rc`` (Zephyr's ``OS_MGMT_ERR_*``, ``IMG_MGMT_ERR_*``): the smp
# package's tables carry Zephyr's names and values (tests/test_smp_codec.py pins a few).
OsMgmtErr = smpos.OS_MGMT_RET_RC
ImgMgmtErr = smpimg.IMG_MGMT_ERR


_IMG_V1: dict[int, MgmtErr] = {
    ImgMgmtErr.NO_IMAGE: MgmtErr.ENOENT,
    ImgMgmtErr.NO_TLVS: MgmtErr.ENOENT,
    ImgMgmtErr.NO_FREE_SLOT: MgmtErr.EBADSTATE,
    ImgMgmtErr.CURRENT_VERSION_IS_NEWER: MgmtErr.EBADSTATE,
    ImgMgmtErr.IMAGE_ALREADY_PENDING: MgmtErr.EBADSTATE,
    ImgMgmtErr.NO_FREE_MEMORY: MgmtErr.ENOMEM,
    ImgMgmtErr.INVALID_SLOT: MgmtErr.EINVAL,
    ImgMgmtErr.INVALID_PAGE_OFFSET: MgmtErr.EINVAL,
    ImgMgmtErr.INVALID_OFFSET: MgmtErr.EINVAL,
    ImgMgmtErr.INVALID_LENGTH: MgmtErr.EINVAL,
    ImgMgmtErr.INVALID_IMAGE_HEADER: MgmtErr.EINVAL,
    ImgMgmtErr.INVALID_HASH: MgmtErr.EINVAL,
    ImgMgmtErr.INVALID_FLASH_ADDRESS: MgmtErr.EINVAL,
}


_OS_V1: dict[int, MgmtErr] = {
    OsMgmtErr.INVALID_FORMAT: MgmtErr.EINVAL,
    OsMgmtErr.QUERY_YIELDS_NO_ANSWER: MgmtErr.ENOENT,
    OsMgmtErr.RTC_NOT_SET: MgmtErr.ENOENT,
}


def translate_v1(group: int, rc: int) -> int:
    """A group error as a v1 client gets it (Zephyr's ``img_mgmt_translate_error_code`` and
    ``os_mgmt_translate_error_code``; anything else answers EUNKNOWN)."""
    if rc == 0:
        return int(MgmtErr.EOK)
    if group == Group.IMAGE:
        return int(_IMG_V1.get(rc, MgmtErr.EUNKNOWN))
    if group == Group.OS:
        return int(_OS_V1.get(rc, MgmtErr.EUNKNOWN))
    return int(MgmtErr.EUNKNOWN)


def error_name(rc: int, group: int | None = None) -> str:
    """``IMAGE:HASH_NOT_FOUND(8)`` or ``ENOTSUP(8)``: for messages a person reads."""
    table: type[IntEnum] = MgmtErr
    prefix = ""
    if group == Group.IMAGE:
        table, prefix = ImgMgmtErr, "IMAGE:"
    elif group == Group.OS:
        table, prefix = OsMgmtErr, "OS:"
    elif group is not None:
        prefix = f"group {group}:"
    try:
        return f"{prefix}{table(rc).name}({rc})"
    except ValueError:
        return f"{prefix}rc {rc}"


@dataclass(frozen=True)
class SmpHeader:
    """The 8-byte SMP header (big-endian): op and version share byte 0.

    Not ``smp.header.Header``: that one refuses headers a server has to read in order to
    answer them (version bits 2-3: UNSUPPORTED_TOO_NEW; a command id the package does not
    know in a group it knows, such as image 6 SLOT_INFO: ENOTSUP; op bits 4-7: EINVAL), and
    MCUboot echoes a request's version bits whatever they are. The bytes are the package's
    for every header it can represent (tests/test_smp_codec.py).
    """

    op: int
    version: int
    flags: int
    length: int  # CBOR payload bytes after the header
    group: int
    seq: int
    command_id: int

    SIZE: ClassVar[int] = smphdr.Header.SIZE
    _STRUCT: ClassVar[struct.Struct] = struct.Struct(">BBHHBB")

    def pack(self) -> bytes:
        first = (self.op & 0x07) | (self.version & 0x03) << 3
        return self._STRUCT.pack(
            first, self.flags, self.length, self.group, self.seq & 0xFF, self.command_id
        )

    @classmethod
    def unpack(cls, raw: bytes) -> SmpHeader:
        if len(raw) < cls.SIZE:
            raise ValueError(f"SMP header needs {cls.SIZE} bytes, got {len(raw)}")
        first, flags, length, group, seq, command_id = cls._STRUCT.unpack_from(raw)
        return cls(first & 0x07, first >> 3 & 0x03, flags, length, group, seq, command_id)


def split_messages(packet: bytes) -> list[tuple[SmpHeader, bytes]]:
    """The SMP messages in one packet (Zephyr processes several back to back, in order).

    Raises ValueError when a header announces more payload than the packet holds.
    """
    out: list[tuple[SmpHeader, bytes]] = []
    pos = 0
    while pos < len(packet):
        header = SmpHeader.unpack(packet[pos : pos + SmpHeader.SIZE])
        start = pos + SmpHeader.SIZE
        end = start + header.length
        if end > len(packet):
            raise ValueError(
                f"SMP header at {pos} announces {header.length} payload bytes, "
                f"only {len(packet) - start} follow"
            )
        out.append((header, packet[start:end]))
        pos = end
    return out


# --- serial framing --------------------------------------------------------------------------
# The wire format is the ``smp`` package's (``smp.packet.encode``/``decode``, CRC-16/XMODEM);
# dfuhil keeps only what no library does: telling console text from frames on one UART, and
# the receiver's checks the package's decoder lacks (see SerialFrameDecoder).


def netbuf_window(buf_count: int) -> int:
    """Requests a host may keep in flight to a Zephyr SMP server with ``buf_count`` netbufs
    (MCUmgr params). Every transport (UART, UDP, Bluetooth) takes a netbuf of the one MCUmgr
    pool for each request as it arrives and holds it until the request is answered; the SMP
    work queue takes one more for the answer it builds. So ``buf_count - 1`` requests fit; one
    more finds no buffer and is dropped without an answer (``smp_packet_alloc``: K_NO_WAIT)."""
    return max(1, buf_count - 1)


FRAME_START = smppacket.START_DELIMITER
FRAME_CONTINUE = smppacket.CONTINUE_DELIMITER
LINE_LENGTH = 128  # smpclient's convention: 124 base64 chars, 127-byte frames
# The serial frame's u16 length and u16 CRC around a packet share the server's buffer.
_CRC_SIZE = smppacket.CRC16_STRUCT.size
FRAME_OVERHEAD = smppacket.FRAME_LENGTH_STRUCT.size + _CRC_SIZE
# A line longer than this cannot be a frame of any sane encoder; the decoder gives up on it.
_MAX_LINE = 1024
# Zephyr's base64_decode refuses a character outside the alphabet; b64decode (smp's) skips it.
_BASE64_LINE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def crc16_xmodem(data: bytes, crc: int = 0) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection): Zephyr's ``crc16_itu_t(0, ...)``."""
    return binascii.crc_hqx(data, crc)


def chars_per_line(line_length: int) -> int:
    """Base64 characters per frame for the ``smp`` package's ``line_length``."""
    return (line_length - smppacket.LINE_LENGTH_SUBTRACTOR) // 4 * 4


def encode_frames(packet: bytes, line_length: int = LINE_LENGTH) -> bytes:
    """``packet`` (SMP header + CBOR) as console frames: ``smp.packet.encode``'s, joined.

    ``line_length`` has the ``smp`` package's meaning: ``(line_length - 4) // 4 * 4`` base64
    characters per frame (128 gives 124 chars, the 127-byte frames Zephyr and smpclient use).
    Refuses what the package would choke on: below 8 it never ends (no character fits a
    line), above 65533 bytes its length field overflows.
    """
    if chars_per_line(line_length) <= 0:
        raise ValueError(f"line_length {line_length} cannot carry any base64 (min 8)")
    if len(packet) + _CRC_SIZE > 0xFFFF:
        raise ValueError(f"SMP packet of {len(packet)} bytes exceeds the 16-bit frame length")
    return b"".join(smppacket.encode(packet, line_length=line_length))


@dataclass(frozen=True)
class SmpPacket:
    """One complete SMP packet from the wire (header + CBOR, CRC already checked)."""

    data: bytes


@dataclass(frozen=True)
class ConsoleText:
    """Bytes that were not inside any frame: log lines, a boot banner, a shell prompt."""

    data: bytes


Item = SmpPacket | ConsoleText


class _Reassembly:
    """One packet being put together by ``smp.packet.decode``, with Zephyr's checks on top.

    The package accepts lines Zephyr's ``mcumgr_serial_process_frag`` drops: characters
    outside the base64 alphabet (skipped by ``b64decode``) and a packet longer than its length
    field (the package checks the CRC over whatever arrived). Both are refused here.
    """

    def __init__(self) -> None:
        self._decoder = smppacket.decode()
        next(self._decoder)
        self._announced: int | None = None  # the length field, from the first line

    def add(self, marker: bytes, line: bytes) -> bytes | None:
        """The packet once ``line`` completes it; None while more lines are due.

        Raises ValueError for a line or packet the receiver drops.
        """
        if not _BASE64_LINE.fullmatch(line):
            raise ValueError("not base64")
        if self._announced is None:
            self._announced = int.from_bytes(base64.b64decode(line[:4])[:2], "big")
        try:
            self._decoder.send(marker + line + smppacket.END_DELIMITER)
        except StopIteration as done:
            packet = bytes(done.value)
            if len(packet) + _CRC_SIZE != self._announced:
                raise ValueError("longer than its length field") from None
            return packet
        except (SMPDecodeError, binascii.Error, struct.error) as exc:
            raise ValueError(str(exc)) from exc
        return None


class SerialFrameDecoder:
    """Turns a console byte stream into SMP packets and the text between them.

    Follows Zephyr's receiver: ``06 09`` starts a packet (dropping any half-received one),
    ``04 14`` continues it (dropped when no packet is in progress), a packet is complete once
    the length field is reached; a wrong CRC, a bad base64 line or a packet longer than
    announced is dropped silently and counted in ``bad_packets``. Lines are split out of the
    text here; each frame line is decoded by ``smp.packet.decode`` (:class:`_Reassembly`).
    """

    def __init__(self) -> None:
        self._text = bytearray()  # console bytes not yet handed out
        self._line: bytearray | None = None  # inside a frame: marker seen, waiting for \n
        self._line_first = False
        self._packet: _Reassembly | None = None  # the packet in progress
        self.bad_packets = 0
        self.dropped_frames = 0
        self.packets = 0

    @property
    def in_frame(self) -> bool:
        """True between a marker and its newline (nobody may print there)."""
        return self._line is not None

    def feed(self, data: bytes) -> list[Item]:
        items: list[Item] = []
        pending = bytes(self._text) + data if self._text else bytes(data)
        self._text = bytearray()
        pos = 0
        while pos < len(pending):
            if self._line is not None:
                newline = pending.find(b"\n", pos)
                if newline < 0:
                    self._line += pending[pos:]
                    if len(self._line) > _MAX_LINE:
                        self._abandon_line()
                    pos = len(pending)
                    break
                self._line += pending[pos:newline]
                pos = newline + 1
                packet = self._end_line()
                if packet is not None:
                    items.append(SmpPacket(packet))
                continue
            marker = _find_marker(pending, pos)
            if marker < 0:
                # Hold back a last byte that may be the first half of a marker.
                end = len(pending)
                if pending[-1:] in (FRAME_START[:1], FRAME_CONTINUE[:1]):
                    end -= 1
                    self._text = bytearray(pending[end:])
                if end > pos:
                    items.append(ConsoleText(pending[pos:end]))
                pos = len(pending)
                break
            if marker > pos:
                items.append(ConsoleText(pending[pos:marker]))
            self._line_first = pending[marker : marker + 2] == FRAME_START
            self._line = bytearray()
            pos = marker + 2
        return items

    def _abandon_line(self) -> None:
        self._line = None
        if self._packet is not None:
            self._packet = None
            self.bad_packets += 1
        else:
            self.dropped_frames += 1

    def _end_line(self) -> bytes | None:
        assert self._line is not None
        line = bytes(self._line).rstrip(b"\r")
        first = self._line_first
        self._line = None
        if first:
            if self._packet is not None:
                self.bad_packets += 1  # a new start abandons the half-received packet
            self._packet = _Reassembly()
        elif self._packet is None:
            self.dropped_frames += 1
            return None
        try:
            packet = self._packet.add(FRAME_START if first else FRAME_CONTINUE, line)
        except ValueError:
            self._packet = None
            self.bad_packets += 1
            return None
        if packet is not None:
            self._packet = None
            self.packets += 1
        return packet


def _find_marker(data: bytes, start: int) -> int:
    a = data.find(FRAME_START, start)
    b = data.find(FRAME_CONTINUE, start)
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)
