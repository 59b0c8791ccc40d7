"""SMP header and serial framing against the spec's worked bytes (§5) and the ``smp`` package.

The expected wire bytes are copied from ../shared/specs/mcuboot-smp.md §5 (checked there with
smp 4.2.0), never recomputed with the code under test; ``smp.packet`` and ``smp.header`` are
the peer for everything else.
"""

from __future__ import annotations

import base64
import random

import cbor2
import pytest
from smp import header as smpheader
from smp import packet as smppacket
from smp.exceptions import SMPBadContinueDelimiter, SMPBadCRC, SMPBadStartDelimiter
from smp.image_management import ImageUploadWriteRequest

from dfuhil.formats.smp import (
    ConsoleText,
    Group,
    ImageCmd,
    ImgMgmtErr,
    MgmtErr,
    Op,
    OsCmd,
    SerialFrameDecoder,
    SmpHeader,
    SmpPacket,
    crc16_xmodem,
    encode_frames,
    error_name,
    split_messages,
    translate_v1,
)

ECHO_REQ = bytes.fromhex("0a00000900000000a16164656" + "8656c6c6f")
ECHO_WIRE = b"\x06\x09ABMKAAAJAAAAAKFhZGVoZWxsb6J/\n"
ECHO_RSP_WIRE = b"\x06\x09ABMLAAAJAAAAAKFhcmVoZWxsbyTD\n"
PARAMS_REQ = bytes.fromhex("0800000100000106a0")
PARAMS_WIRE = b"\x06\x09AAsIAAABAAABBqBEIw==\n"
STATE_REQ = bytes.fromhex("0800000100010200a0")
STATE_WIRE = b"\x06\x09AAsIAAABAAECAKDBYQ==\n"
RESET_REQ = bytes.fromhex("0a00000100000305a0")
RESET_WIRE = b"\x06\x09AAsKAAABAAADBaC5dw==\n"


def test_crc16_xmodem_check_value_and_worked_echo() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert crc16_xmodem(ECHO_REQ) == 0xA27F
    assert crc16_xmodem(ECHO_REQ + b"\xa2\x7f") == 0  # what a Zephyr receiver checks


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (ECHO_REQ, ECHO_WIRE),
        (PARAMS_REQ, PARAMS_WIRE),
        (STATE_REQ, STATE_WIRE),
        (RESET_REQ, RESET_WIRE),
        (bytes.fromhex("0b00000900000000a1617265") + b"hello", ECHO_RSP_WIRE),
    ],
)
def test_worked_wire_bytes(packet: bytes, wire: bytes) -> None:
    assert encode_frames(packet) == wire
    assert SerialFrameDecoder().feed(wire) == [SmpPacket(packet)]


def test_header_fields_of_worked_echo() -> None:
    header = SmpHeader.unpack(ECHO_REQ)
    assert header == SmpHeader(Op.WRITE, 1, 0, 9, Group.OS, 0, OsCmd.ECHO)
    assert header.pack() == ECHO_REQ[:8]
    v1 = SmpHeader(Op.WRITE, 0, 0, 9, 0, 0, 0).pack()
    assert v1[0] == 0x02  # a v1 echo differs only in byte 0


def test_header_matches_smp_package_both_ways() -> None:
    rng = random.Random(4)
    for _ in range(200):
        op = rng.choice(list(smpheader.OP))
        version = rng.choice(list(smpheader.Version))
        group = rng.choice([0, 1, 9])
        command = {0: rng.randrange(9), 1: rng.randrange(6), 9: 0}[group]
        length, seq = rng.randrange(0x10000), rng.randrange(256)
        theirs = smpheader.Header(op, version, smpheader.Flag(0), length, group, seq, command)
        ours = SmpHeader(op, version, 0, length, group, seq, command)
        assert ours.pack() == bytes(theirs)
        back = smpheader.Header.loads(ours.pack())
        assert (back.op, back.version, back.length, back.group_id, back.sequence) == (
            op,
            version,
            length,
            group,
            seq,
        )
        assert SmpHeader.unpack(bytes(theirs)) == ours


@pytest.mark.parametrize("line_length", [127, 128, 64, 8])
@pytest.mark.parametrize("size", [9, 93, 94, 282, 1020])
def test_frames_equal_smp_packet_encode(line_length: int, size: int) -> None:
    packet = bytes(random.Random(size).randrange(256) for _ in range(size))
    theirs = b"".join(smppacket.encode(packet, line_length=line_length))
    assert encode_frames(packet, line_length) == theirs
    assert SerialFrameDecoder().feed(theirs) == [SmpPacket(packet)]


def test_upload_packet_frames_like_the_spec() -> None:
    """A 282-byte upload packet with smp's line_length 127: frames of 123,123,123,27 bytes."""
    request = ImageUploadWriteRequest(off=0, data=bytes(216), len=1000, sha=bytes(32))
    packet = bytes(request)
    assert len(packet) == 282
    frames = encode_frames(packet, 127).split(b"\n")[:-1]
    assert [len(f) + 1 for f in frames] == [123, 123, 123, 27]
    assert frames[0].startswith(b"\x06\tARwK")
    assert all(f.startswith(b"\x04\x14") for f in frames[1:])
    assert max(len(f) + 1 for f in encode_frames(packet).split(b"\n")[:-1]) == 127


def test_smp_decode_accepts_our_frames() -> None:
    packet = bytes(ImageUploadWriteRequest(off=100, data=bytes(range(200)) * 2))
    decoder = smppacket.decode()
    next(decoder)
    result = None
    for line in encode_frames(packet).splitlines(keepends=True):
        try:
            decoder.send(line)
        except StopIteration as done:
            result = done.value
    assert result == packet


def test_decoder_handles_one_byte_at_a_time_with_text_between() -> None:
    stream = b"*** Booting Zephyr OS build v3.7 ***\r\n" + ECHO_WIRE + b"I: log\r\n" + RESET_WIRE
    decoder = SerialFrameDecoder()
    items = [item for byte in stream for item in decoder.feed(bytes([byte]))]
    packets = [i.data for i in items if isinstance(i, SmpPacket)]
    text = b"".join(i.data for i in items if isinstance(i, ConsoleText))
    assert packets == [ECHO_REQ, RESET_REQ]
    assert text == b"*** Booting Zephyr OS build v3.7 ***\r\nI: log\r\n"


def test_text_never_leaks_into_or_out_of_a_frame() -> None:
    """Text that holds a lone marker's first byte is held back, not mistaken for a frame."""
    decoder = SerialFrameDecoder()
    assert decoder.feed(b"abc\x06") == [ConsoleText(b"abc")]
    assert decoder.feed(b"x") == [ConsoleText(b"\x06x")]
    assert decoder.feed(ECHO_WIRE[:5]) == []
    assert decoder.in_frame
    assert decoder.feed(ECHO_WIRE[5:] + b"tail") == [SmpPacket(ECHO_REQ), ConsoleText(b"tail")]


def test_bad_crc_is_dropped_silently_and_counted() -> None:
    body = bytearray(b"\x00\x13" + ECHO_REQ + b"\xa2\x7e")  # CRC off by one
    wire = b"\x06\x09" + base64.b64encode(bytes(body)) + b"\n"
    decoder = SerialFrameDecoder()
    assert decoder.feed(wire + PARAMS_WIRE) == [SmpPacket(PARAMS_REQ)]
    assert decoder.bad_packets == 1


def test_restart_marker_abandons_half_packet_and_orphan_continuation_is_dropped() -> None:
    big = bytes(300)
    frames = encode_frames(big).split(b"\n")
    half = frames[0] + b"\n" + frames[1] + b"\n"
    decoder = SerialFrameDecoder()
    assert decoder.feed(half) == []
    assert decoder.feed(ECHO_WIRE) == [SmpPacket(ECHO_REQ)]
    assert decoder.bad_packets == 1
    assert decoder.feed(frames[2] + b"\n") == []  # 04 14 with nothing in progress
    assert decoder.dropped_frames == 1


def test_bad_base64_and_longer_than_announced_are_dropped() -> None:
    decoder = SerialFrameDecoder()
    assert decoder.feed(b"\x06\x09AB!?\n") == []
    too_long = b"\x00\x0b" + PARAMS_REQ + b"\xb2\x9d" + b"\x00\x00\x00"
    assert decoder.feed(b"\x06\x09" + base64.b64encode(too_long) + b"\n") == []
    assert decoder.bad_packets == 2
    assert decoder.feed(STATE_WIRE) == [SmpPacket(STATE_REQ)]


def smp_decode(*lines: bytes) -> bytes:
    """What ``smp.packet.decode`` makes of ``lines`` (it raises on what it refuses)."""
    decoder = smppacket.decode()
    next(decoder)
    for line in lines:
        try:
            decoder.send(line)
        except StopIteration as done:
            return bytes(done.value)
    raise AssertionError("smp.packet.decode wants more lines")


def test_what_smp_decode_accepts_but_a_zephyr_receiver_drops_is_dropped() -> None:
    """The package skips non-base64 characters and checks the CRC over whatever arrived; Zephyr's
    base64_decode refuses the character and serial_util.c drops a packet longer than its length
    field. The decoder behaves as the device does."""
    crc = base64.b64decode(PARAMS_WIRE[2:-1])[-2:]  # the spec's worked bytes
    line = base64.b64encode(b"\x00\x0b" + PARAMS_REQ + crc)
    junk = b"\x06\x09" + line[:4] + b"*" + line[4:] + b"\n"
    short_length = b"\x06\x09" + base64.b64encode(b"\x00\x04" + PARAMS_REQ + crc) + b"\n"
    assert smp_decode(junk) == PARAMS_REQ
    assert smp_decode(short_length) == PARAMS_REQ
    decoder = SerialFrameDecoder()
    assert decoder.feed(junk + short_length + STATE_WIRE) == [SmpPacket(STATE_REQ)]
    assert decoder.bad_packets == 2


def test_what_smp_decode_raises_on_is_text_or_a_dropped_packet() -> None:
    """A text line, a wrong CRC and a start inside a packet make the package raise; on a
    console they are text, a dropped packet and a new packet."""
    bad_crc = b"\x06\x09" + base64.b64encode(b"\x00\x0b" + PARAMS_REQ + b"\x44\x24") + b"\n"
    two_lines = encode_frames(bytes(300)).split(b"\n")
    with pytest.raises(SMPBadStartDelimiter):
        smp_decode(b"I: booting\n")
    with pytest.raises(SMPBadCRC):
        smp_decode(bad_crc)
    with pytest.raises(SMPBadContinueDelimiter):
        smp_decode(two_lines[0] + b"\n", ECHO_WIRE)
    decoder = SerialFrameDecoder()
    stream = b"I: booting\n" + bad_crc + two_lines[0] + b"\n" + ECHO_WIRE
    items = decoder.feed(stream)
    assert items == [ConsoleText(b"I: booting\n"), SmpPacket(ECHO_REQ)]
    assert decoder.bad_packets == 2


def test_encode_frames_refuses_what_smp_encode_cannot_do() -> None:
    """Below line_length 8 ``smp.packet.encode`` never ends (no character fits a line; it ran
    out of memory here), and past 65533 bytes its length field overflows (struct.error)."""
    with pytest.raises(ValueError, match="min 8"):
        encode_frames(ECHO_REQ, 7)
    with pytest.raises(ValueError, match="16-bit frame length"):
        encode_frames(bytes(0xFFFE))
    assert encode_frames(bytes(0xFFFD)) == b"".join(smppacket.encode(bytes(0xFFFD), 128))


def test_crlf_line_endings_are_tolerated() -> None:
    assert SerialFrameDecoder().feed(ECHO_WIRE[:-1] + b"\r\n") == [SmpPacket(ECHO_REQ)]


def test_split_messages_back_to_back() -> None:
    both = ECHO_REQ + RESET_REQ
    parts = split_messages(both)
    assert [h.command_id for h, _ in parts] == [OsCmd.ECHO, OsCmd.RESET]
    assert cbor2.loads(parts[0][1]) == {"d": "hello"}
    with pytest.raises(ValueError, match="announces 9"):
        split_messages(ECHO_REQ[:-1])


def test_error_tables_and_v1_translation() -> None:
    assert len(MgmtErr) == 14 and len(ImgMgmtErr) == 34
    assert ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC == 23
    assert ImageCmd.ERASE == 5 and OsCmd.BOOTLOADER_INFO == 8
    assert translate_v1(Group.IMAGE, ImgMgmtErr.HASH_NOT_FOUND) == MgmtErr.EUNKNOWN
    assert translate_v1(Group.IMAGE, ImgMgmtErr.IMAGE_ALREADY_PENDING) == MgmtErr.EBADSTATE
    assert translate_v1(Group.IMAGE, ImgMgmtErr.INVALID_HASH) == MgmtErr.EINVAL
    assert translate_v1(Group.IMAGE, ImgMgmtErr.NO_TLVS) == MgmtErr.ENOENT
    assert translate_v1(Group.IMAGE, ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC) == MgmtErr.EUNKNOWN
    assert error_name(8, Group.IMAGE) == "IMAGE:HASH_NOT_FOUND(8)"
    assert error_name(8) == "ENOTSUP(8)"
    assert error_name(99, Group.IMAGE) == "IMAGE:rc 99"


def test_os_group_v1_translation() -> None:
    assert translate_v1(Group.OS, 3) == MgmtErr.ENOENT  # QUERY_YIELDS_NO_ANSWER
    assert translate_v1(Group.OS, 2) == MgmtErr.EINVAL
    assert translate_v1(Group.OS, 5) == MgmtErr.EUNKNOWN
    assert translate_v1(9, 1) == MgmtErr.EUNKNOWN
