"""SMP over a stock Zephyr UART transport: line buffers, bursts, and the host that fits them.

The virtual app (tests/smpfarm.py) is built like a stock smp_svr: MCUmgr params answer
buf_size 384 / buf_count 4, the UART transport has 2 RX line buffers of 128 bytes and MTU 256.
Its UART either trickles bytes in at 115200 baud (a hardware UART) or hands each write over in
one burst (USB CDC-ACM). Bytes go through a real pty; peers are smpmgr's CLI and dfuhil's own
SmpLink. Nothing here asserts how long anything took.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from smpfarm import SmpBoard, app_body, app_build, make_key, sign, smp_board

from dfuhil.errors import InfrastructureError
from dfuhil.formats.smp import SmpHeader, encode_frames
from dfuhil.formats.smp_uart import SmpUart, frame_lines, max_packet_for_lines, serial_budget
from dfuhil.links.console import Console
from dfuhil.links.smp_link import SmpLink
from dfuhil.sim.mcuboot.config import stock_netbufs
from dfuhil.sim.smp.uart_lines import UartLineBuffers

STOCK_BUILD = {"buf_size": 384, "buf_count": 4}  # smp_svr's params answer
UDP_BUF_SIZE, UDP_BUF_COUNT = stock_netbufs(udp=True, ble=False)  # 2048, 2
NETBUF_BUILDS = {
    "udp": app_build(buf_size=UDP_BUF_SIZE, buf_count=UDP_BUF_COUNT, udp=True),  # overlay-udp.conf
    "3-netbufs": app_build(**{**STOCK_BUILD, "buf_count": 3}),
}
SMPMGR = Path(sys.executable).parent / "smpmgr"


def echo_packet(size: int, seq: int = 0) -> bytes:
    """An OS echo request (v2) of exactly ``size`` bytes, header included."""
    pad = size - 8 - len(cbor2.dumps({"d": ""}))
    text = "x" * pad
    body = cbor2.dumps({"d": text})
    while 8 + len(body) > size:  # the text length prefix grew by a byte
        text = text[:-1]
        body = cbor2.dumps({"d": text})
    header = SmpHeader(op=2, version=1, flags=0, length=len(body), group=0, seq=seq, command_id=0)
    return header.pack() + body


# --- the model of uart_mcumgr.c ---------------------------------------------------------------


def test_a_burst_keeps_only_as_many_lines_as_there_are_buffers() -> None:
    wire = encode_frames(echo_packet(380))
    assert wire.count(b"\n") == 5
    burst = UartLineBuffers(2, 128, burst=True)
    assert len(burst.feed(wire)) == 2 and burst.dropped == 3
    # the next burst finds both buffers free again
    assert len(burst.feed(encode_frames(echo_packet(100)))) == 2
    paced = UartLineBuffers(2, 128, burst=False)
    assert len(paced.feed(wire)) == 5 and paced.dropped == 0


def test_a_line_longer_than_its_buffer_is_dropped_whole() -> None:
    lines = UartLineBuffers(2, 64, burst=False)
    wire = encode_frames(echo_packet(60))  # one 127-byte line
    assert lines.feed(wire[:70]) == [] and lines.feed(wire[70:]) == []
    assert lines.too_long == 1
    short = encode_frames(echo_packet(20))
    assert lines.feed(short) == [short]  # the next line is taken again


def test_frame_arithmetic_matches_the_encoder() -> None:
    for size in (20, 89, 90, 182, 183, 368, 380, 1020):
        assert frame_lines(size) == encode_frames(echo_packet(size)).count(b"\n"), size
    assert max_packet_for_lines(2) == 182 and frame_lines(182) == 2 and frame_lines(183) == 3


def test_the_budget_fits_the_line_buffers_it_is_given() -> None:
    stock = serial_budget(SmpUart(), 384, 4)
    assert (stock.message_size, stock.window, stock.lines_per_message) == (182, 1, 2)
    bigger = serial_budget(SmpUart(rx_buf_count=8), 384, 4)
    assert bigger.window * bigger.lines_per_message <= 8 and bigger.message_size > 182
    paced = serial_budget(SmpUart(delivery="paced"), 384, 4)
    assert (paced.message_size, paced.window) == (380, 3)  # the 4th netbuf is the answer's


def test_the_netbufs_bound_the_window_whatever_the_line_buffers_hold() -> None:
    """A request holds a netbuf until answered and the answer takes one: with the UDP
    transport's stock 2 netbufs one request at a time, however many line buffers there are."""
    for uart in (SmpUart(delivery="paced"), SmpUart(rx_buf_count=8)):
        assert serial_budget(uart, 2048, 2).window == 1, uart
        assert serial_budget(uart, 2048, 1).window == 1, uart


# --- the virtual smp_svr ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("smp-uart")
    key = make_key(directory)
    build = app_build(**STOCK_BUILD)
    signed = {
        version: sign(directory, app_body(build, version, size), version, key).read_bytes()
        for version, size in (("1.0.0", 6 * 1024), ("2.0.0", 24 * 1024))
    }
    bigger = app_build(**STOCK_BUILD, uart_rx_buf_count=8)  # CONFIG_UART_MCUMGR_RX_BUF_COUNT=8
    body = app_body(bigger, "1.0.0", 6 * 1024, seed="8-lines")
    signed["1.0.0-8-lines"] = sign(directory, body, "1.0.0", key, name="8-lines").read_bytes()
    for name, build in NETBUF_BUILDS.items():
        body = app_body(build, "1.0.0", 6 * 1024, seed=name)
        signed[f"1.0.0-{name}"] = sign(directory, body, "1.0.0", key, name=name).read_bytes()
    return signed


@pytest.fixture
def usb_board(images: dict[str, bytes]) -> Iterator[SmpBoard]:
    with smp_board(images["1.0.0"], app_build(**STOCK_BUILD), delivery="burst") as dut:
        yield dut


def answered(dut: SmpBoard, packet: bytes, wait_s: float) -> bool:
    """Whether the board answers ``packet`` sent in one write within ``wait_s`` (an upper
    bound: an answer returns at once)."""
    with Console(dut.serial) as console:
        got: list[bytes] = []
        seq = packet[6]
        console.attach_packets(lambda answer: got.append(answer) if answer[6] == seq else None)
        console.send_packet(packet)
        end = time.monotonic() + wait_s
        while not got and time.monotonic() < end:
            time.sleep(0.02)
        console.attach_packets(None)
    return bool(got)


def test_a_burst_of_five_lines_gets_no_answer_two_lines_do(
    usb_board: SmpBoard, caplog: pytest.LogCaptureFixture
) -> None:
    assert not answered(usb_board, echo_packet(380, seq=1), wait_s=2.0)
    assert usb_board.board.uart.bursts
    assert "SMP UART: 3 line(s) dropped (2 RX buffers of 128 bytes)" in caplog.text
    assert answered(usb_board, echo_packet(182, seq=2), wait_s=20.0)


def test_smpmgr_default_uploads_over_a_burst_uart(
    usb_board: SmpBoard, images: dict[str, bytes], tmp_path: Path
) -> None:
    image = tmp_path / "v2.bin"
    image.write_bytes(images["2.0.0"])
    done = subprocess.run(
        [str(SMPMGR), "--port", usb_board.serial, "--timeout", "5", "image", "upload", str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    secondary = usb_board.build.geometry.secondary
    assert secondary is not None
    assert usb_board.slot_bytes(secondary, len(images["2.0.0"])) == images["2.0.0"]


def test_dfuhil_uploads_over_a_burst_uart_by_default(
    usb_board: SmpBoard, images: dict[str, bytes]
) -> None:
    with SmpLink.over_console(Console(usb_board.serial), owns_console=True) as smp:
        result = smp.upload(images["2.0.0"])
    secondary = usb_board.build.geometry.secondary
    assert secondary is not None
    assert result.size == len(images["2.0.0"])
    assert usb_board.slot_bytes(secondary, len(images["2.0.0"])) == images["2.0.0"]


def test_bigger_buffers_stated_for_a_build_that_has_them_are_used(
    images: dict[str, bytes],
) -> None:
    build = app_build(**STOCK_BUILD, uart_rx_buf_count=8)
    uart = SmpUart(rx_buf_count=8)
    with smp_board(images["1.0.0-8-lines"], build, delivery="burst") as dut:
        link = SmpLink.over_console(Console(dut.serial), owns_console=True, uart=uart)
        with link as smp:
            assert smp.params is not None
            assert (smp.params.message_size, smp.params.window) == (368, 2)
            result = smp.upload(images["2.0.0"])
        secondary = dut.build.geometry.secondary
        assert secondary is not None
        assert dut.slot_bytes(secondary, result.size) == images["2.0.0"]
    assert result.window == 2


def test_buffers_overstated_for_a_stock_build_are_named_before_the_upload(
    usb_board: SmpBoard, images: dict[str, bytes]
) -> None:
    uart = SmpUart(rx_buf_count=8)  # boards.yaml says 8, the build has Zephyr's 2
    link = SmpLink.over_console(
        Console(usb_board.serial), owns_console=True, uart=uart, timeout_s=1.0
    )
    with link as smp, pytest.raises(InfrastructureError) as failed:
        smp.upload(images["2.0.0"])
    message = str(failed.value)
    assert "answers a short request but lost" in message
    assert "RX line buffers" in message and "MTU" in message
    assert "mcuboot.smp_uart" in message
    assert usb_board.board.uart.bursts
    # a refused step changes nothing: the upload never started, the secondary is still erased
    secondary = usb_board.build.geometry.secondary
    assert secondary is not None
    assert usb_board.slot_bytes(secondary, 64) == b"\xff" * 64


def test_boards_yaml_states_the_smp_uart_and_refuses_nonsense(tmp_path: Path) -> None:
    from test_farm_config import MCU, mcu_problems

    from dfuhil.farm.loader import load_farm
    from dfuhil.procedures.image_sign import generate_key
    from dfuhil.sim.server import VirtualFarm

    (tmp_path / "keys").mkdir()
    generate_key(tmp_path / "keys" / "k.pem", "ecdsa-p256")
    stated = "      smp_uart: {rx_buf_count: 8, delivery: burst}\n      builds:"
    text = MCU.replace("      builds:", stated)
    (tmp_path / "b.yaml").write_text(text)
    spec = load_farm(tmp_path / "b.yaml").board("vdk").mcuboot
    assert spec is not None and spec.uart == SmpUart(rx_buf_count=8)
    plain = tmp_path / "plain.yaml"
    plain.write_text(MCU)
    plain_spec = load_farm(plain).board("vdk").mcuboot
    assert plain_spec is not None and plain_spec.uart == SmpUart()  # stock, burst
    farm = VirtualFarm(load_farm(tmp_path / "b.yaml"), time_scale=0.05)
    try:  # the virtual farm gives the board the UART boards.yaml describes
        assert farm.boards["vdk"].uart.bursts
    finally:
        farm.stop()
    farm = VirtualFarm(load_farm(plain), time_scale=0.05)
    try:  # nothing stated: a DK's J-Link VCOM, paced
        assert not farm.boards["vdk"].uart.bursts
    finally:
        farm.stop()
    wrong = "      smp_uart: {delivery: usb}\n      builds:"
    problems = mcu_problems(tmp_path, "      builds:", wrong)
    assert any("smp_uart" in p.field for p in problems), problems


# --- the netbufs behind the line buffers ------------------------------------------------------


def test_a_request_beyond_the_netbufs_is_never_answered(
    images: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Zephyr takes a netbuf for each request as its first line arrives and holds it until the
    request is answered; the work queue takes one for the answer. With 3 netbufs, an erase
    running and one echo waiting, a second echo finds none: no answer ever comes, the board
    logs the drop. In real time the erase of the whole secondary slot (16 pages, 1.4 s) is long
    against the three frames, which a hardware UART delivers in milliseconds."""
    build = NETBUF_BUILDS["3-netbufs"]
    secondary = build.geometry.secondary
    assert secondary is not None
    with smp_board(images["1.0.0-3-netbufs"], build, time_scale=1.0) as dut:
        dut.board.flash.load(secondary.start, b"\x3d\xb8\xf3\x96")  # a stale image: erased
        erase = SmpHeader(op=2, version=1, flags=0, length=1, group=1, seq=1, command_id=5)
        with Console(dut.serial) as console:
            seqs: list[int] = []
            console.attach_packets(lambda answer: seqs.append(answer[6]))
            for packet in (erase.pack() + cbor2.dumps({}), echo_packet(60, 2), echo_packet(60, 3)):
                console.send_packet(packet)
            end = time.monotonic() + 20.0  # a bound on a hang
            while len(seqs) < 2 and time.monotonic() < end:
                time.sleep(0.02)
            time.sleep(1.0)  # a third answer would follow the second at once
            console.attach_packets(None)
        assert dut.slot_bytes(secondary, 4) == b"\xff" * 4  # the erase ran
    assert seqs == [1, 2], seqs
    assert caplog.text.count("SMP UART: no free netbuf (2 busy): a frame dropped") == 1


def test_dfuhil_sends_one_request_at_a_time_to_a_build_with_udp(
    images: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """smp_svr with the UDP overlay keeps Zephyr's UDP defaults on every transport: 2 netbufs
    (MCUmgr params say so), one for the request and one for its answer. Over its serial port
    dfuhil keeps one request in flight and the image lands byte for byte, nothing dropped."""
    build = NETBUF_BUILDS["udp"]
    with smp_board(images["1.0.0-udp"], build) as dut:
        with SmpLink.over_console(Console(dut.serial), owns_console=True) as smp:
            assert smp.params is not None
            assert (smp.params.buf_size, smp.params.buf_count, smp.params.window) == (2048, 2, 1)
            result = smp.upload(images["2.0.0"])
        secondary = build.geometry.secondary
        assert secondary is not None
        assert dut.slot_bytes(secondary, len(images["2.0.0"])) == images["2.0.0"]
    assert result.window == 1, result
    assert "no free netbuf" not in caplog.text


def test_a_window_beyond_the_netbufs_is_cut_down_and_said(
    images: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """``--window 3`` against a board whose 2 netbufs hold one request: the extra requests
    would be dropped unanswered while the board writes flash, so dfuhil sends one at a time
    and says why."""
    build = NETBUF_BUILDS["udp"]
    with smp_board(images["1.0.0-udp"], build) as dut:
        with SmpLink.over_console(Console(dut.serial), owns_console=True) as smp:
            result = smp.upload(images["2.0.0"], window=3)
        secondary = build.geometry.secondary
        assert secondary is not None
        assert dut.slot_bytes(secondary, len(images["2.0.0"])) == images["2.0.0"]
    assert result.window == 1, result
    assert "a window of 3 is more than the board's 2 MCUmgr netbufs hold" in caplog.text
    assert "no free netbuf" not in caplog.text
