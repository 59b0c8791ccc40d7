"""Interop: the virtual SMP app driven by the peers' own command lines, and the wire bytes.

Keys and images come from imgtool's command line (``imgtool keygen``, ``imgtool sign``), the
board is driven by ``smpmgr`` as a subprocess on the board's pty (upload, state-read,
state-write, reset), and every result is checked against dfuhil's own view: the image parser
(formats/mcuboot.py), the trailer decoder and the app's image state over the board's flash.

The wire tests read the raw bytes off real ptys: what the virtual farm answers and what
dfuhil's host sends are, byte for byte, ``smp.packet.encode``'s frames of the same packets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from simfarm import wait_until
from smp.header import Header
from smp.image_management import ImageStatesReadRequest, ImageUploadWriteRequest
from smp.message import Request
from smp.os_management import (
    EchoWriteRequest,
    EchoWriteResponse,
    MCUMgrParametersReadRequest,
    MCUMgrParametersReadResponse,
)
from smpfarm import GEOMETRY, HDR, SLOT_SIZE, SmpBoard, app_body, app_build, smp_board
from smpwire import LINE, line_lengths, read_frames, smp_frames

from dfuhil.formats.mcuboot import parse_image
from dfuhil.formats.mcuboot_trailer import Magic, SwapType
from dfuhil.formats.smp_uart import SmpUart
from dfuhil.links.console import Console
from dfuhil.sim.smp.img_state import ImageState

BIN = Path(sys.executable).parent
SECONDARY = GEOMETRY.secondary
assert SECONDARY is not None
STATE = re.compile(
    r"slot=(?P<slot>\d+),\s*version='(?P<version>[^']*)'.*?'(?P<hash>[0-9A-F]{64})'.*?"
    r"pending=(?P<pending>\w+),\s*confirmed=(?P<confirmed>\w+),\s*active=(?P<active>\w+),"
    r"\s*permanent=(?P<permanent>\w+)",
    re.S,
)


def tool(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def smpmgr(dut: SmpBoard, *args: str) -> str:
    return tool("smpmgr", "--port", dut.serial, "--timeout", "5", *args)


def imgtool_sign(directory: Path, key: Path, version: str, size: int) -> Path:
    raw = directory / f"app-{version}.bin"
    raw.write_bytes(app_body(app_build(), version, size, seed="interop"))
    out = directory / f"app-{version}.signed.bin"
    tool(
        "imgtool",
        "sign",
        "--key", str(key),
        "--header-size", hex(HDR),
        "--pad-header",
        "--slot-size", hex(SLOT_SIZE),
        "--max-sectors", "32",
        "--version", version,
        str(raw),
        str(out),
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("interop")
    key = directory / "root.pem"
    tool("imgtool", "keygen", "--key", str(key), "--type", "ecdsa-p256")
    return {
        "v1": imgtool_sign(directory, key, "1.0.0", 6 * 1024),
        "v2": imgtool_sign(directory, key, "2.1.0+7", 20 * 1024),
    }


@pytest.fixture
def dut(signed: dict[str, Path]) -> Iterator[SmpBoard]:
    with smp_board(signed["v1"].read_bytes(), app_build()) as board:
        yield board


def states(text: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in STATE.finditer(text)]


def own_view(dut: SmpBoard) -> list[dict[str, str]]:
    """dfuhil's reading of the same flash, in smpmgr's terms."""
    state = ImageState(dut.board, GEOMETRY, 0, page_size=dut.board.chip.page_size)
    return [
        {
            "slot": str(entry["slot"]),
            "version": entry["version"],
            "hash": entry["hash"].hex().upper(),
            **{k: str(entry[k]) for k in ("pending", "confirmed", "active", "permanent")},
        }
        for entry in state.state_list()["images"]
    ]


def test_smpmgr_upload_state_write_and_reset_agree_with_dfuhil(
    dut: SmpBoard, signed: dict[str, Path]
) -> None:
    v2_file = signed["v2"]
    v2 = v2_file.read_bytes()
    v2_hash = parse_image(v2).image_hash
    assert v2_hash is not None

    before = states(smpmgr(dut, "image", "state-read"))
    assert before == own_view(dut)
    assert [(s["slot"], s["version"], s["active"]) for s in before] == [("0", "1.0.0", "True")]

    smpmgr(dut, "image", "upload", str(v2_file))
    assert dut.slot_bytes(SECONDARY, len(v2)) == v2
    uploaded = states(smpmgr(dut, "image", "state-read"))
    assert uploaded == own_view(dut)
    assert uploaded[1]["version"] == "2.1.0.7" and uploaded[1]["hash"] == v2_hash.hex().upper()

    smpmgr(dut, "image", "state-write", v2_hash.hex())
    marked = states(smpmgr(dut, "image", "state-read"))
    assert marked == own_view(dut)
    assert marked[1]["pending"] == "True" and marked[1]["permanent"] == "False"
    state = ImageState(dut.board, GEOMETRY, 0, page_size=dut.board.chip.page_size)
    trailer = state.trailer(1)
    assert (trailer.magic, trailer.swap_type) == (Magic.GOOD, SwapType.TEST)

    boots = dut.boots()
    smpmgr(dut, "os", "reset")
    wait_until(dut.boots, lambda n: n > boots, "smpmgr os reset should reboot the board")
    dut.wait_running()


def test_smpmgr_state_write_of_an_unknown_hash_changes_nothing(dut: SmpBoard) -> None:
    result = subprocess.run(
        [str(BIN / "smpmgr"), "--port", dut.serial, "image", "state-write", "ab" * 32],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "HASH_NOT_FOUND" in result.stdout + result.stderr
    tail = dut.slot_bytes(SECONDARY, SECONDARY.size)
    assert tail == b"\xff" * SECONDARY.size


# --- the wire: farm and host frame exactly as smp.packet.encode ---------------------------------


def real_requests(image: bytes) -> list[Request]:
    """What a host sends in a DFU: params, state, a long echo, the first chunk of an upload."""
    return [
        MCUMgrParametersReadRequest(),
        ImageStatesReadRequest(),
        EchoWriteRequest(d="x" * 300),  # 4 lines each way
        ImageUploadWriteRequest(off=0, data=image[:300], len=len(image), sha=bytes(32)),
    ]


def test_farm_answers_are_smp_packet_encode_frames(dut: SmpBoard, signed: dict[str, Path]) -> None:
    lines_seen: list[list[int]] = []
    with serial.Serial(dut.serial, 115200, timeout=0.1) as port:
        for request in real_requests(signed["v2"].read_bytes()):
            port.write(smp_frames(bytes(request)))
            raw, answer = read_frames(port)
            header = Header.loads(answer[: Header.SIZE])
            assert (header.sequence, header.group_id, header.command_id) == (
                request.header.sequence,
                request.header.group_id,
                request.header.command_id,
            )
            assert raw == smp_frames(answer), type(request).__name__
            lines_seen.append(line_lengths(raw))
    echo = lines_seen[2]
    assert len(echo) == 4 and echo[:3] == [127, 127, 127] and echo[3] < 127


def test_host_frames_are_smp_packet_encode_frames(signed: dict[str, Path]) -> None:
    packets = [bytes(r) for r in real_requests(signed["v2"].read_bytes())]
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no CR/LF translation: the bytes arrive as the host sent them
    try:
        with Console(os.ttyname(slave), name="host") as console:
            # 128: the stock line; 127: smp's own default; 64: a build with 64-byte RX buffers.
            for line_length in (LINE, 127, SmpUart(rx_buf_size=64).line_length):
                for packet in packets:
                    expected = smp_frames(packet, line_length)
                    console.send_packet(packet, line_length)
                    got = b""
                    deadline = time.monotonic() + 10
                    while len(got) < len(expected) and time.monotonic() < deadline:
                        got += os.read(master, 4096)
                    assert got == expected, (line_length, len(packet))
                    assert max(line_lengths(got)) <= line_length - 1
    finally:
        for fd in (master, slave):
            os.close(fd)


def test_host_takes_smp_packet_encode_frames_out_of_console_text() -> None:
    answers = [
        bytes(EchoWriteResponse(sequence=3, r="y" * 250)),
        bytes(MCUMgrParametersReadResponse(sequence=4, buf_size=1024, buf_count=4)),
    ]
    received: list[bytes] = []
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with Console(os.ttyname(slave), name="host") as console:
            console.attach_packets(received.append)
            os.write(master, b"I: booting\r\n" + smp_frames(answers[0]) + b"I: between\r\n")
            os.write(master, smp_frames(answers[1], 127) + b"I: done\r\n")
            console.expect_exact("I: done", timeout=10)
            assert received == answers
            assert "I: booting" in console.text() and "I: between" in console.text()
            assert "\x06" not in console.text() and "\x04" not in console.text()
    finally:
        for fd in (master, slave):
            os.close(fd)
