"""The verdict per node (procedures/mesh_outcome.py) from the bytes a serial node really sends.

Frames are written out by hand from serial_evt.h (DFU START 0xA2, END 0xA3, BANK_AVAILABLE
0xA4, DEVICE_STARTED 0x81) and fed through the frame reader; device pages are built with the
SDK generator's layout and changed the way the bootloader changes them.
"""

from __future__ import annotations

import struct

from dfuhil.formats.chips import find_chip
from dfuhil.formats.devpage import BootloaderConfig, DevicePage, device_page_hex
from dfuhil.formats.meshdfu import CommandResponse, FrameReader, app_fwid
from dfuhil.procedures.mesh_outcome import (
    NodeOutcome,
    PageWatch,
    SerialNodeLog,
    Verdict,
    app_version_fwid,
    confirm_mesh,
    page_outcome,
    table,
)
from dfuhil.sim.firmware.generate import default_softdevice

FWID = app_fwid(0x59, 1, 2)
CHIP = find_chip("nRF52832_xxAA")
assert CHIP is not None


def event(raw_hex: str) -> SerialNodeLog:
    log = SerialNodeLog()
    log.on_ack(CommandResponse.decode(bytes.fromhex("78 00")))  # the application's 3-byte ack
    for item in FrameReader().feed(bytes.fromhex(raw_hex)):
        log.on_frame(item, after_last=True)
    return log


def end(role: int, reason: int, fwid: bytes = FWID) -> str:
    payload = bytes([0xA3, role, 0x04]) + fwid + bytes([reason])
    return bytes([len(payload)]).hex() + payload.hex()


def test_every_error_end_reason_is_a_refusal_naming_it() -> None:
    for reason, name in [(3, "ERROR_PACKET_LOSS"), (4, "ERROR_UNAUTHORIZED"), (0x42, "66")]:
        row = event(end(1, reason)).outcome("root", FWID, 30.0)
        assert row.verdict is Verdict.REFUSED, row
        assert name in row.evidence and row.fix


def test_success_for_another_firmware_id_confirms_nothing() -> None:
    row = event(end(1, 0, app_fwid(0x59, 1, 7))).outcome("root", FWID, 30.0)
    assert row.verdict is Verdict.UNCONFIRMED


def test_a_relay_start_means_the_serial_node_installs_nothing() -> None:
    row = event("0D A2 02 04" + FWID.hex()).outcome("root", FWID, 30.0)
    assert row.verdict is Verdict.RELAYED
    assert "mesh check" in row.fix


def test_success_with_a_bank_is_confirmed() -> None:
    bank = bytes([0xA4, 0x04]) + FWID + struct.pack("<IIB", 0x51000, 8192, 0)
    log = event(end(1, 0) + bytes([len(bank)]).hex() + bank.hex())
    row = log.outcome("root", FWID, 30.0)
    assert row.confirmed and "bank available" in row.evidence


def test_a_bootloader_is_confirmed_only_by_the_application_it_started() -> None:
    log = SerialNodeLog()
    log.on_ack(CommandResponse.decode(bytes.fromhex("78 00 FC FF")))  # the bootloader's ack
    assert log.outcome("root", FWID, 60.0).verdict is Verdict.UNCONFIRMED
    for item in FrameReader().feed(bytes.fromhex("04 81 02 00 04")):
        log.on_frame(item, after_last=True)
    assert log.outcome("root", FWID, 60.0).confirmed


def test_silence_is_never_heard_and_truncated_events_are_ignored() -> None:
    log = event("02 A3 01 04 A2 01 04 00")  # an END and a START cut short
    assert log.outcome("root", FWID, 40.0).verdict is Verdict.NEVER_HEARD


def sample_raw(**changes: int) -> bytes:
    """The SDK generator's page for the sample config (version 1), with ``changes``."""
    assert CHIP is not None
    ih = device_page_hex(CHIP, default_softdevice(CHIP), BootloaderConfig(**changes))  # type: ignore[arg-type]
    return bytes(ih.tobinarray(start=ih.minaddr(), size=CHIP.page_size))


def sample_page(**changes: int) -> DevicePage:
    assert CHIP is not None
    page = DevicePage.parse(sample_raw(**changes), CHIP.device_page_address, None)
    assert page is not None
    return page


def test_a_page_is_confirmed_only_with_the_same_ids_and_version() -> None:
    wanted = app_version_fwid(89, 1, 2)
    assert page_outcome("a", sample_page(application_version=2), wanted, "").confirmed
    other = page_outcome("a", sample_page(application_version=2, application_id=3), wanted, "")
    assert other.verdict is Verdict.NOT_INSTALLED and other.fix
    assert page_outcome("a", None, wanted, "").verdict is Verdict.NOT_INSTALLED


def test_the_serial_nodes_refusal_replaces_its_unchanged_page_and_requests_add_a_row() -> None:
    raw = sample_raw()  # version 1
    assert CHIP is not None

    def read(address: int, length: int) -> bytes:
        return raw if address == CHIP.device_page_address else b"\xff" * length

    refused = NodeOutcome("root", Verdict.REFUSED, "DFU END ERROR_UNAUTHORIZED", "sign it")
    rows = confirm_mesh(
        refused,
        [PageWatch("root", read, CHIP), PageWatch("near", read, CHIP)],
        app_version_fwid(89, 1, 2),
        open_requests=(5, 9),
        last_request_age=3.0,
        timeout_s=0.0,
    )
    assert [r.verdict for r in rows] == [Verdict.REFUSED, Verdict.NOT_INSTALLED, Verdict.REQUESTING]
    assert "segments 5, 9" in rows[2].evidence
    lines = table(rows)
    assert lines[0].split() == ["node", "verdict", "evidence"]
    assert any(line.strip() == "fix: sign it" for line in lines)
