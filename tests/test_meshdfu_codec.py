"""Mesh DFU packets and serial frames against the byte layouts of spec mesh-dfu.md §3 and §4.

Expected bytes are written out by hand from the spec's tables (dfu_packet.h, serial_evt.h,
nrfutil's dfu_transport_mesh.py), never recomputed with the code under test.
"""

from __future__ import annotations

import pytest

from dfuhil.formats.meshdfu import (
    CommandResponse,
    Data,
    DataRequest,
    FrameReader,
    FrameTextDecoder,
    FwidBeacon,
    Opcode,
    PacketError,
    Start,
    State,
    Status,
    app_fwid,
    cmd_rsp_app,
    cmd_rsp_bootloader,
    decode_packet,
    device_started,
    frame,
    segment_count,
    segment_payload,
    status_name,
)

TID = 0x12345678
TID_LE = "78 56 34 12"


def test_state_as_nrfutil_sends_it() -> None:
    """STATE: type APP, info 0x0F (authority 7 + flood), tid, fwid company/app id/version."""
    packet = State(4, 7, True, TID, app_fwid(0x59, 1, 2)).encode()
    assert packet == bytes.fromhex(f"FD FF 04 0F {TID_LE} 59 00 00 00 01 00 02 00 00 00")
    assert frame(Opcode.DFU_DATA, packet)[:2] == bytes([0x13, 0x78])
    assert decode_packet(packet) == State(4, 7, True, TID, app_fwid(0x59, 1, 2))


def test_start_packet_is_data_segment_zero() -> None:
    packet = Start(TID, 0xFFFFFFFF, 0x800, 64).encode()
    assert packet == bytes.fromhex(f"FC FF 00 00 {TID_LE} FF FF FF FF 00 08 00 00 40 00 0C")
    assert len(packet) == 19
    assert decode_packet(packet) == Start(TID, 0xFFFFFFFF, 0x800, 64, 0x0C)


def test_data_request_and_response() -> None:
    data = bytes(range(16))
    assert Data(3, TID, data).encode() == bytes.fromhex(f"FC FF 03 00 {TID_LE}") + data
    assert Data(3, TID, data, response=True).encode()[:2] == bytes.fromhex("FA FF")
    assert DataRequest(9, TID).encode() == bytes.fromhex(f"FB FF 09 00 {TID_LE}")
    assert decode_packet(bytes.fromhex(f"FA FF 03 00 {TID_LE}") + data) == Data(3, TID, data, True)
    assert decode_packet(bytes.fromhex(f"FB FF 09 00 {TID_LE}")) == DataRequest(9, TID)


def test_fwid_beacon() -> None:
    raw = bytes.fromhex("FE FF 01 01 01 02 59 00 00 00 01 00 03 00 00 00")
    assert decode_packet(raw) == FwidBeacon(0x0101, 1, 2, 0x59, 1, 3)
    assert FwidBeacon(0x0101, 1, 2, 0x59, 1, 3).encode() == raw


@pytest.mark.parametrize(
    "raw",
    [
        "FC",
        "FC FF 01 00 78 56",
        "FD FF 04 0F 78 56 34 12 59 00",
        "FC FF 01 00 78 56 34 12",
        "00 80",
    ],
)
def test_malformed_packets_are_refused(raw: str) -> None:
    with pytest.raises(PacketError):
        decode_packet(bytes.fromhex(raw))


def test_serial_events_and_responses() -> None:
    assert device_started(2) == bytes.fromhex("04 81 02 00 04")  # type: ignore[arg-type]
    assert cmd_rsp_app(0x78, Status.SUCCESS) == bytes.fromhex("03 84 78 00")
    assert cmd_rsp_bootloader(0x85, 0xFFFC) == bytes.fromhex("05 84 78 85 FC FF")
    assert CommandResponse.decode(bytes.fromhex("78 85 FC FF")) == CommandResponse(
        0x78, 0x85, 0xFFFC
    )
    assert CommandResponse.decode(bytes.fromhex("78 00")) == CommandResponse(0x78, 0, None)
    assert status_name(0x86) == "ERROR_BUSY"
    assert status_name(0x42) == "UNKNOWN_STATUS_0x42"


def test_frame_reader_reassembles_frames_cut_anywhere() -> None:
    stream = bytes.fromhex("04 81 02 00 04 05 82 AA BB CC DD 03 84 78 00")
    for cut in range(1, len(stream)):
        reader = FrameReader()
        frames = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [(f.opcode, f.payload.hex()) for f in frames] == [
            (0x81, "020004"),
            (0x82, "aabbccdd"),
            (0x84, "7800"),
        ]
        assert reader.pending() == 0


def test_segments_count_image_then_signature() -> None:
    """M = ceil(len/16) + sig_len/16; the signature starts a fresh segment."""
    image = bytes(range(20))  # 2 image segments, the second one 4 bytes
    signature = bytes(range(100, 164))
    assert segment_count(len(image), 64) == 6
    assert segment_count(32 * 1024, 0) == 2048
    assert segment_payload(image, signature, 1) == image[:16]
    assert segment_payload(image, signature, 2) == image[16:]
    assert segment_payload(image, signature, 3) == signature[:16]
    assert segment_payload(image, signature, 6) == signature[48:]
    with pytest.raises(PacketError):
        segment_payload(image, signature, 7)


def test_frame_text_decoder_names_what_it_sees() -> None:
    decoder = FrameTextDecoder()
    text = decoder.decode(
        frame(0x78, Data(5, TID, b"\x00" * 16).encode())
        + frame(0x78, DataRequest(7, TID).encode())
        + bytes.fromhex("05 84 78 85 FC FF 02 99 01")
    )
    assert text.splitlines() == [
        "DATA seg=5 tid=0x12345678 len=16",
        "DATA_REQ seg=7 tid=0x12345678",
        "CMD_RSP opcode=0x78 status=ERROR_INVALID_PARAMETER packet=0xFFFC",
        "FRAME opcode=0x99 01",
    ]
    assert decoder.decode(b"\x05\x82", final=True) == "(incomplete frame: 2 bytes)\n"


def test_dfu_events_are_named_and_end_reasons_decoded() -> None:
    """serial_evt.h DFU END: role, type, fwid (10 bytes), end reason."""
    fwid = "59 00 00 00 01 00 02 00 00 00"
    end = bytes.fromhex(f"0E A3 01 04 {fwid} 04")
    start = bytes.fromhex(f"0D A2 02 04 {fwid}")
    text = FrameTextDecoder().decode(end + start)
    assert text.splitlines() == [
        "DFU_END role=target type=APPLICATION fwid=59000000010002000000 end=ERROR_UNAUTHORIZED",
        "DFU_START role=relay type=APPLICATION fwid=59000000010002000000",
    ]
