"""SMP over Bluetooth LE: dfuhil's bumble transport against an SMP GATT peripheral.

The peripheral (``ble_peer``) runs on an in-process bumble LocalLink and answers with the
virtual farm's SMP server pieces, so answers are real SMP bytes; requests are smpclient's own
message classes (what SmpLink sends). What is checked: a board found by name or address, the
negotiated ATT MTU sizing every write, messages split over several writes and notifications and
put back together by the SMP header's length, an upload that lands byte for byte, the bytes on
GATT equal to what the serial transport frames, and each bad input refused before any SMP
request is written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from ble_peer import BlePeer, host_hci, serve_hci
from bumble.link import LocalLink
from smp import header as smphdr
from smpclient.requests.os_management import EchoWrite
from smpfarm import GEOMETRY, app_body, app_build, make_key, sign

from dfuhil.cli import main
from dfuhil.errors import InfrastructureError, InputError, ProductError
from dfuhil.farm.loader import load_farm
from dfuhil.formats.smp import SerialFrameDecoder, SmpPacket, encode_frames
from dfuhil.links.async_loop import LoopThread
from dfuhil.links.smp_ble import BleTransport, Reassembler
from dfuhil.links.smp_ble_hci import board_advertising, resolve_hci
from dfuhil.links.smp_ble_scan import BleTarget
from dfuhil.links.smp_link import SmpLink
from dfuhil.sim.state import load_state

SECONDARY = GEOMETRY.secondary
assert SECONDARY is not None


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("ble-test")
    yield thread
    thread.close()


@pytest.fixture
def link() -> LocalLink:
    return LocalLink()


def start(loop: LoopThread, link: LocalLink, **kwargs: object) -> BlePeer:
    peer = BlePeer(link, **kwargs)  # type: ignore[arg-type]
    loop.run(peer.start())
    return peer


def ble(loop: LoopThread, link: LocalLink, target: str = "dfuhil-smp", **kw: float) -> SmpLink:
    return SmpLink.over_ble(
        target, host_hci(link), name="vdk-ble", loop=loop, scan_timeout_s=kw.get("scan", 2.0)
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("ble-image")
    body = app_body(app_build(), "2.0.0", 3000)
    return sign(directory, body, "2.0.0", make_key(directory)).read_bytes()


# --- reassembly -------------------------------------------------------------------------------


def test_reassembler_splits_by_the_smp_header_length_whatever_the_fragments() -> None:
    one = bytes(EchoWrite(d="a" * 300))
    two = bytes(EchoWrite(d="bc"))
    stream = one + two
    for cut in (1, 7, 8, 9, 20, 244, len(one), len(one) + 3):
        r = Reassembler()
        out = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert out == [one, two], cut
        assert r.pending == 0
    r = Reassembler()
    assert r.feed(one[:-1]) == [] and r.pending == len(one) - 1  # incomplete: held, not given


def test_target_is_an_address_or_a_name() -> None:
    assert BleTarget.parse("c0:11:22:33:44:55").address == "C0:11:22:33:44:55"
    assert BleTarget.parse("C0:11:22:33:44:55/P").address == "C0:11:22:33:44:55/P"
    assert BleTarget.parse("Zephyr SMP").name == "Zephyr SMP"
    with pytest.raises(InputError, match="--ble"):
        BleTarget.parse(" ")


# --- talking to the board ---------------------------------------------------------------------


def test_list_and_echo_by_name_with_the_negotiated_mtu(loop: LoopThread, link: LocalLink) -> None:
    peer = start(loop, link)
    with ble(loop, link) as smp:
        transport = smp._transport
        assert isinstance(transport, BleTransport) and transport.link is not None
        assert transport.link.att_mtu == 498  # the smp_svr overlay's MTU, negotiated
        assert transport.mtu == 495
        assert smp.params is not None and smp.params.buf_size == 2475
        assert transport.max_unencoded_size == 2475  # the server reassembles up to its buffer
        text = "x" * 1200  # one request over three writes, one answer over three notifications
        assert smp.echo(text) == text
        assert smp.image_list() == []  # an empty primary: no valid image
    echo = [m for m in peer.requests if m[4:6] == b"\x00\x00" and m[7] == 0]
    assert echo and len(echo[-1]) > 1200
    assert max(len(w) for w in peer.writes) == 495
    assert sum(len(n) > 0 for n in peer.notifications) >= 4


def test_found_by_address_too(loop: LoopThread, link: LocalLink) -> None:
    start(loop, link)
    with ble(loop, link, "c0:11:22:33:44:55") as smp:
        assert smp.echo("hi") == "hi"


def test_upload_spans_writes_and_lands_byte_for_byte(
    loop: LoopThread, link: LocalLink, image: bytes
) -> None:
    peer = start(loop, link)
    with ble(loop, link) as smp:
        result = smp.upload(image)
        slots = smp.image_list()
    assert result.size == len(image)
    assert peer.flash.read(SECONDARY.start, len(image)) == image
    assert [s.slot for s in slots] == [1] and slots[0].version.startswith("2.0.0")
    # Every upload request bigger than one write went out as several writes, and the peer got
    # back the exact messages (a chunk over GATT is the whole SMP message).
    uploads = [m for m in peer.requests if m[4:6] == b"\x00\x01" and m[7] == 1]
    assert len(uploads) >= 2 and max(len(m) for m in uploads) > 495
    assert len(peer.writes) > len(peer.requests)


def test_a_small_mtu_makes_small_writes_and_still_uploads(
    loop: LoopThread, link: LocalLink, image: bytes
) -> None:
    peer = start(loop, link, mtu=23)  # a device that keeps the ATT default
    with ble(loop, link) as smp:
        assert smp._transport.mtu == 20
        smp.upload(image)
    assert max(len(w) for w in peer.writes) == 20
    assert max(len(n) for n in peer.notifications) <= 20
    assert peer.flash.read(SECONDARY.start, len(image)) == image


def test_before_mcumgr_params_a_message_fits_one_write(loop: LoopThread, link: LocalLink) -> None:
    start(loop, link)
    transport = BleTransport(host_hci(link), board="vdk-ble", scan_timeout_s=2.0)
    loop.run(transport.connect("dfuhil-smp", 2.0))
    try:
        assert transport.max_unencoded_size == transport.mtu == 495
        transport.initialize(2475)
        assert transport.max_unencoded_size == 2475
    finally:
        loop.run(transport.disconnect())


def test_gatt_bytes_are_the_serial_bytes_without_the_framing(
    loop: LoopThread, link: LocalLink, image: bytes
) -> None:
    """What went over GATT, cut where the SMP headers say, is what the serial transport frames
    (``encode_frames`` around each message) and what smpclient's request classes produce."""
    peer = start(loop, link)
    with ble(loop, link) as smp:
        smp.echo("same bytes")
        smp.upload(image)
    stream = b"".join(peer.writes)
    assert stream == b"".join(peer.requests)  # nothing but the messages, back to back
    for message in peer.requests:
        decoder = SerialFrameDecoder()
        items = decoder.feed(encode_frames(message))
        assert [i.data for i in items if isinstance(i, SmpPacket)] == [message]
    echo = next(m for m in peer.requests if b"same bytes" in m)
    header = smphdr.Header.loads(echo[: smphdr.Header.SIZE])
    ours = EchoWrite(d="same bytes")
    theirs = bytes(ours)
    # smpclient's bytes with the sequence number SmpLink's client chose
    assert theirs[:6] + bytes([header.sequence]) + theirs[7:] == echo


# --- bad input: refused before any SMP request is written --------------------------------------


def test_a_name_nobody_advertises_lists_what_was_seen(loop: LoopThread, link: LocalLink) -> None:
    peer = start(loop, link)
    with pytest.raises(InfrastructureError) as err:
        ble(loop, link, "no-such-board", scan=1.0).connect()
    text = str(err.value)
    assert "board vdk-ble" in text and "'no-such-board'" in text
    assert "dfuhil-smp C0:11:22:33:44:55" in text  # what was on the air
    assert "CONFIG_BT_DEVICE_NAME" in text
    assert peer.writes == []


def test_two_boards_advertising_one_name_is_refused_listing_both(
    loop: LoopThread, link: LocalLink
) -> None:
    one = start(loop, link)
    two = start(loop, link, address="C0:11:22:33:44:66")
    with pytest.raises(InputError) as err:
        ble(loop, link).connect()
    text = str(err.value)
    assert "C0:11:22:33:44:55" in text and "C0:11:22:33:44:66" in text
    assert "board vdk-ble" in text and "address" in text
    assert one.writes == [] and two.writes == []


@pytest.mark.parametrize(
    ("hci", "says"),
    [
        ("serial:/dev/dfuhil-no-such-dongle,1000000", "cannot open the Bluetooth HCI controller"),
        ("usb:7", "cannot open the Bluetooth HCI controller"),
        ("nonsense-scheme:1", "not a bumble HCI transport name"),
    ],
)
def test_an_hci_that_cannot_be_opened_is_an_infrastructure_error(
    loop: LoopThread, hci: str, says: str
) -> None:
    link = SmpLink.over_ble("dfuhil-smp", hci, name="vdk-ble", loop=loop, scan_timeout_s=0.5)
    with pytest.raises(InfrastructureError) as err:
        link.connect()
    text = str(err.value)
    assert says in text and "board vdk-ble" in text and "remedy:" in text
    assert "Traceback" not in text


def test_a_device_refusing_the_mtu_exchange_is_refused_before_any_write(
    loop: LoopThread, link: LocalLink
) -> None:
    peer = start(loop, link, refuse_mtu=True)
    with pytest.raises(ProductError, match="refused the ATT MTU exchange") as err:
        ble(loop, link).connect()
    assert "vdk-ble" in str(err.value)
    assert peer.writes == []


def test_a_device_without_the_smp_service_is_refused(loop: LoopThread, link: LocalLink) -> None:
    peer = start(loop, link, serve_smp=False)
    with pytest.raises(ProductError, match="no SMP characteristic"):
        ble(loop, link).connect()
    assert peer.writes == []


# --- the CLI, through an HCI controller served on a TCP port -----------------------------------


@pytest.fixture
def hci_port(loop: LoopThread, link: LocalLink) -> Iterator[str]:
    name, close = loop.run(serve_hci(link))
    yield name
    loop.run(close())


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def test_cli_list_and_upload_over_ble(
    loop: LoopThread,
    link: LocalLink,
    hci_port: str,
    image: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    peer = start(loop, link)
    signed = tmp_path / "app.signed.bin"
    signed.write_bytes(image)
    where = ["--ble", "dfuhil-smp", "--hci", hci_port, "--boards", str(tmp_path / "none.yaml")]
    code, out = cli(["mcuboot", "upload", str(signed), *where], capsys)
    assert code == 0, out
    assert "over BLE dfuhil-smp via tcp-client:127.0.0.1:" in out and "buf_size 2475" in out
    assert "ATT MTU 498 (495 B per write)" in out and "interval" in out  # negotiated, shown
    assert peer.flash.read(SECONDARY.start, len(image)) == image
    code, out = cli(["mcuboot", "list", *where], capsys)
    assert code == 0, out
    assert re.search(r"^\s+0\s+1\s+2\.0\.0", out, re.M), out


def test_cli_without_a_controller_asks_for_hci(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(
        ["mcuboot", "list", "--ble", "dfuhil-smp", "--boards", str(tmp_path / "none.yaml")],
        capsys,
    )
    assert code == 2 and "--hci" in out and "ble_hci" in out


def test_cli_unknown_name_is_exit_3_and_writes_nothing(
    loop: LoopThread,
    link: LocalLink,
    hci_port: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    peer = start(loop, link)
    code, out = cli(
        ["mcuboot", "list", "--ble", "nobody", "--hci", hci_port, "--timeout", "1",
         "--boards", str(tmp_path / "none.yaml")],
        capsys,
    )  # fmt: skip
    assert code == 3 and "'nobody'" in out and "dfuhil-smp" in out
    assert peer.writes == []


# --- boards of the farm: the HCI they default to, and the pre-flight refusals ------------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ble_farm(tmp_path: Path) -> Path:
    """The shipped boards.yaml with BLE on the swap-move board (advertising as the test peer)
    and on the single-slot one (a XIAO without external flash: one slot, serial recovery)."""
    text = (ROOT / "boards.yaml").read_text()
    for folder in ("firmware/", "examples/"):
        text = text.replace(f" {folder}", f" {ROOT}/{folder}")
    if "transports: [serial, udp, ble]" not in text:  # the swap-move set ships with ble now
        text = text.replace(
            "      transports: [serial, udp]\n      dfu_lock_timeout_ms: 5000",
            "      transports: [serial, udp, ble]\n      dfu_lock_timeout_ms: 5000",
            1,
        )
    text = text.replace(
        "      mode: single-slot\n", "      mode: single-slot\n      transports: [serial, ble]\n", 1
    )
    for board, name in (("vdk52840-swap-move", "dfuhil-smp"), ("vdk52832-single-slot", "xiao")):
        start = text.index(f"  - name: {board}\n")
        end = text.index("    flash_layout:", start)
        block = re.sub(r"    ble: \{[^}]*\}\n", "", text[start:end])  # the shipped one, if any
        text = text[:start] + block + f"    ble: {{name: {name}}}\n" + text[end:]
    path = tmp_path / "boards.yaml"
    path.write_text(text)
    return path


def sim_state(tmp_path: Path, hci: str) -> Path:
    """A running farm's state file whose radio is ``hci`` (this process stands in for it)."""
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps({"pid": os.getpid(), "time_scale": 0.1, "boards": {}, "ble_hci": hci})
    )
    return path


def test_a_virtual_board_is_reached_through_the_running_farms_radio(
    loop: LoopThread,
    link: LocalLink,
    hci_port: str,
    ble_farm: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start(loop, link)
    state = ["--boards", str(ble_farm), "--sim-state", str(sim_state(tmp_path, hci_port))]
    code, out = cli(["mcuboot", "echo", "hi", "--board", "vdk52840-swap-move",
                     "--transport", "ble", *state], capsys)  # fmt: skip
    assert code == 0 and out.strip() == "hi", out
    code, out = cli(["mcuboot", "echo", "by name", "--ble", "dfuhil-smp", *state], capsys)
    assert code == 0 and "by name" in out, out


def test_a_board_without_the_ble_transport_is_refused_before_the_radio(
    ble_farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--board", "vdk52840-swap-scratch", "--transport", "ble", "--boards", str(ble_farm)]
    code, out = cli(["mcuboot", "list", *where, "--hci", "serial:/dev/dfuhil-none"], capsys)
    assert code == 2, out
    assert "vdk52840-swap-scratch" in out and "no ble among its mcuboot transports" in out


def test_without_a_farm_radio_or_hci_the_error_asks_for_hci(
    ble_farm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = sim_state(tmp_path, "")
    code, out = cli(["mcuboot", "list", "--board", "vdk52840-swap-move", "--transport", "ble",
                     "--boards", str(ble_farm), "--sim-state", str(state)], capsys)  # fmt: skip
    assert code == 3 and "no Bluetooth radio" in out and "--hci" in out, out


@pytest.mark.parametrize("verb", ["upgrade", "upload"])
def test_ble_ota_on_a_single_slot_board_is_refused_before_any_radio_use(
    verb: str, ble_farm: Path, image: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = tmp_path / "app.signed.bin"
    signed.write_bytes(image)
    # The HCI named does not exist: reaching the radio would be exit 3, the refusal is exit 2.
    nowhere = ["--boards", str(ble_farm), "--hci", "serial:/dev/dfuhil-none"]
    for where in (["--board", "vdk52832-single-slot", "--transport", "ble"], ["--ble", "xiao"]):
        code, out = cli(["mcuboot", verb, str(signed), *where, *nowhere], capsys)
        assert code == 2, out
        assert "BLE OTA needs two slots" in out and "vdk52832-single-slot" in out
        assert "serial recovery" in out and "nothing was sent" in out


def test_image_check_ble_says_why_a_single_slot_board_cannot_take_it(
    ble_farm: Path, image: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = tmp_path / "app.signed.bin"
    signed.write_bytes(image)
    check = ["image", "check", str(signed), "--boards", str(ble_farm), "--ble", "--board"]
    code, out = cli([*check, "vdk52832-single-slot"], capsys)
    assert code == 2
    line = next(x for x in out.splitlines() if "transport" in x)
    assert "FAIL" in line and "BLE OTA needs two slots" in line and "single-slot" in line
    assert "use serial recovery" in out
    _code, out = cli([*check, "vdk52840-swap-move"], capsys)
    line = next(x for x in out.splitlines() if "transport" in x)
    assert "ok" in line and "secondary slot" in line


def test_smpclients_own_bumble_transport_agrees_with_the_peer(
    loop: LoopThread, link: LocalLink, hci_port: str, image: bytes
) -> None:
    """smpclient's own BLE host (SMPBumbleTransport) against the same peripheral: params, echo
    and an upload over its own chunking land the same image, so the peer is no private dialect
    between dfuhil's transport and its test."""
    from smpclient import SMPClient
    from smpclient.generics import success
    from smpclient.requests.os_management import MCUMgrParametersRead
    from smpclient.transport.bumble import SMPBumbleTransport

    peer = start(loop, link)

    async def session() -> tuple[int, str, int]:
        client = SMPClient(SMPBumbleTransport(hci=hci_port), "dfuhil-smp")
        await client.connect(10.0)
        try:
            params = await client.request(MCUMgrParametersRead())
            assert success(params)
            echo = await client.request(EchoWrite(d="smpclient"))
            assert success(echo)
            offsets = [offset async for offset in client.upload(image)]
            return params.buf_size, echo.r, offsets[-1]
        finally:
            await client.disconnect()

    buf_size, echoed, uploaded = loop.run(session())
    assert (buf_size, echoed, uploaded) == (2475, "smpclient", len(image))
    assert peer.flash.read(SECONDARY.start, len(image)) == image


def test_a_link_dropped_mid_upload_is_reported_and_the_next_upload_resumes(
    loop: LoopThread, link: LocalLink, tmp_path: Path
) -> None:
    big = sign(tmp_path, app_body(app_build(), "2.0.0", 7000), "2.0.0", make_key(tmp_path))
    data = big.read_bytes()
    # Writes: params 1, three ~2.4 kB chunks of five writes each: 13 is inside the third.
    peer = start(loop, link, drop_at_write=13)
    with pytest.raises(InfrastructureError, match="lost") as err, ble(loop, link) as smp:
        smp.upload(data)
    assert "board vdk-ble" in str(err.value)
    with ble(loop, link) as smp:
        result = smp.upload(data)
    assert result.start_offset > 2475  # from the device's offset, beyond the first chunk
    assert peer.flash.read(SECONDARY.start, len(data)) == data


def test_which_controller_a_board_uses(ble_farm: Path, tmp_path: Path) -> None:
    """--hci wins; a virtual board: the running farm's radio; a lab board: boards.yaml ble_hci;
    neither: an input error asking for --hci."""
    farm = load_farm(ble_farm)
    virtual = farm.board("vdk52840-swap-move")
    lab = replace(virtual, probe=replace(virtual.probe, backend="pynrfjprog"))
    state = load_state(sim_state(tmp_path, "tcp-client:127.0.0.1:9"))
    assert resolve_hci("usb:1", farm=farm, board=virtual, sim=state) == "usb:1"
    assert resolve_hci(None, farm=farm, board=virtual, sim=state) == "tcp-client:127.0.0.1:9"
    with pytest.raises(InfrastructureError, match="no virtual farm is running"):
        resolve_hci(None, farm=farm, board=virtual, sim=None)
    lab_farm = replace(farm, ble_hci="serial:/dev/ttyACM0,1000000")
    assert resolve_hci(None, farm=lab_farm, board=lab, sim=None) == "serial:/dev/ttyACM0,1000000"
    with pytest.raises(InputError, match="board vdk52840-swap-move: no Bluetooth controller"):
        resolve_hci(None, farm=farm, board=lab, sim=None)
    assert board_advertising(farm, "dfuhil-smp") == virtual
    assert board_advertising(farm, "xiao") == farm.board("vdk52832-single-slot")
    assert board_advertising(farm, "nobody") is None


def test_after_a_reset_drops_the_link_the_next_request_connects_again(
    loop: LoopThread, link: LocalLink
) -> None:
    peer = start(loop, link)
    with ble(loop, link) as smp:
        assert smp.echo("before") == "before"
        loop.run(peer.drop())
        assert smp.echo("after") == "after"  # found again by address, MTU negotiated again
        transport = smp._transport
        assert isinstance(transport, BleTransport) and transport.mtu == 495
    assert sum(m[4:6] == b"\x00\x00" and m[7] == 6 for m in peer.requests) == 1  # params once
