"""Mesh DFU pre-flight (procedures/mesh_check.py) on real device pages and real packages.

Pages are the generator's bytes (formats.devpage.device_page_entries) or entries laid out by
hand, parsed back with the device page reader; packages are built by formats.meshpkg from an
Intel HEX file, signed with real P-256 keys.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from intelhex import IntelHex
from simfarm import RunningFarm, SimBoard, running_farm

from dfuhil.errors import DfuhilError, ProductError
from dfuhil.formats.chips import CHIPS
from dfuhil.formats.devpage import (
    METADATA,
    TERMINATOR,
    BootloaderConfig,
    DevicePage,
    EntryType,
    device_page_entries,
    encode_entry,
)
from dfuhil.formats.meshdfu import FrameReader
from dfuhil.formats.meshkeys import SigningKey, generate_key
from dfuhil.formats.meshpkg import MeshPackage
from dfuhil.formats.softdevice import (
    SD_INFO_STRUCT_ADDRESS,
    SOFTDEVICES,
    InstalledSoftDevice,
    build_info_struct,
    read_installed_softdevice,
)
from dfuhil.links.mesh_serial import MeshSerialLink
from dfuhil.procedures.bootloader_verify import VerifyReport, verify_bootloader
from dfuhil.procedures.mesh_check import (
    Mismatch,
    PreflightError,
    check_package,
    preflight_notes,
    read_board_state,
)

CHIP = CHIPS["nrf52832_xxaa"]
S132 = SOFTDEVICES["s132_7.2.0"]
APP_START = 0x26000  # s132's end: SEGMENT_APP start on this page
IMAGE = bytes(range(256)) * 2


def page_of(content: bytes) -> DevicePage:
    raw = content + b"\xff" * (CHIP.page_size - len(content))
    parsed = DevicePage.parse(raw, CHIP.device_page_address)
    assert parsed is not None
    return parsed


def generated_page(**config: Any) -> DevicePage:
    return page_of(device_page_entries(CHIP, S132, BootloaderConfig(**config)))


def hand_page(
    *, flags: int = 0xFFFFFFFF, app_length: int = 0x51000, with_flags: bool = True
) -> DevicePage:
    """SEGMENT_APP, SEGMENT_SD, SEGMENT_BL, VERSION (company 0x59, app 1 v1), [FLAGS]."""
    entries = [
        encode_entry(EntryType.SEGMENT_APP, struct.pack("<II", APP_START, app_length)),
        encode_entry(EntryType.SEGMENT_SD, struct.pack("<II", 0x1000, 0x26000)),
        encode_entry(EntryType.SEGMENT_BL, struct.pack("<II", 0x78000, 0x6000)),
        encode_entry(EntryType.VERSION, struct.pack("<HBBIHI", 0x0101, 1, 1, 0x59, 1, 1)),
    ]
    if with_flags:
        entries.append(encode_entry(EntryType.FLAGS, struct.pack("<I", flags)))
    return page_of(METADATA + b"".join(entries) + TERMINATOR)


def installed(sd_name: str = "s132_7.2.0") -> InstalledSoftDevice:
    info = build_info_struct(SOFTDEVICES[sd_name])

    def read(address: int, length: int) -> bytes:
        assert address == SD_INFO_STRUCT_ADDRESS
        return info[:length]

    found = read_installed_softdevice(read)
    assert found is not None
    return found


@pytest.fixture
def app_hex(tmp_path: Path) -> Path:
    ih = IntelHex()
    ih.frombytes(IMAGE, offset=APP_START)
    path = tmp_path / "blinky.hex"
    ih.write_hex_file(str(path))
    return path


def package(
    app_hex: Path,
    *,
    company: int = 0x59,
    app_id: int = 1,
    version: int = 2,
    sd_req: list[int] | None = None,
    key: SigningKey | None = None,
) -> MeshPackage:
    return MeshPackage.build(app_hex, company, app_id, version, sd_req=sd_req, key=key)


def fields(found: list[Mismatch]) -> list[str]:
    return [m.field for m in found]


# --- fits --------------------------------------------------------------------------------------


def test_an_upgrade_fits_the_generators_default_page(app_hex: Path) -> None:
    assert check_package(package(app_hex), generated_page(), installed(), "dk1") == []


def test_explicit_sd_req_that_matches_fits(app_hex: Path) -> None:
    pkg = package(app_hex, sd_req=[0x00CB, 0x0101])
    assert check_package(pkg, generated_page(), installed(), "dk1") == []


# --- identity and version ----------------------------------------------------------------------


def test_same_version_is_refused_with_the_exact_fix(app_hex: Path) -> None:
    found = check_package(package(app_hex, version=1), generated_page(), installed(), "dk1")
    assert [str(m) for m in found] == [
        "application_version: package 1, board 1 — version must be strictly higher than the "
        "installed one; rebuild the package with --application-version 2 (the same package "
        "sent twice is never installed)"
    ]


def test_downgrade_is_refused(app_hex: Path) -> None:
    found = check_package(
        package(app_hex, version=3), generated_page(application_version=7), installed(), "dk1"
    )
    assert found == [
        Mismatch(
            "application_version",
            "3",
            "7",
            "version must be strictly higher than the installed one; rebuild the package with "
            "--application-version 8 (a downgrade is never installed)",
        )
    ]


def test_other_company_and_application_are_both_reported(app_hex: Path) -> None:
    found = check_package(
        package(app_hex, company=0x1234, app_id=9), generated_page(), installed(), "dk1"
    )
    assert fields(found) == ["company_id", "application_id"]
    assert str(found[0]).startswith("company_id: package 0x1234, board 0x59 — ")
    assert "--company-id 0x59" in found[0].fix
    assert "--application-id 1" in found[1].fix


def test_application_not_intact_takes_any_version(app_hex: Path) -> None:
    page = hand_page(flags=0xFFFFFFFB)  # app_intact cleared
    pkg = package(app_hex, version=1)
    assert check_package(pkg, page, installed(), "dk1") == []
    assert any("not intact" in n for n in preflight_notes(pkg, page, installed()))


# --- the device page itself --------------------------------------------------------------------


def test_no_device_page_says_how_to_flash_one(app_hex: Path) -> None:
    found = check_package(package(app_hex), None, installed(), "dk1")
    assert fields(found) == ["device_page"]
    assert "dfuhil provision --board dk1 --steps device_page" in found[0].fix
    assert "dfuhil devpage" in found[0].fix


def test_page_without_flags_is_incomplete(app_hex: Path) -> None:
    found = check_package(package(app_hex), hand_page(with_flags=False), installed(), "dk1")
    assert fields(found) == ["device_page"]
    assert "FLAGS" in found[0].board_value
    assert "flash the device page" in found[0].fix


# --- signatures --------------------------------------------------------------------------------


def test_key_on_board_refuses_an_unsigned_package(app_hex: Path) -> None:
    key = generate_key()
    found = check_package(
        package(app_hex), generated_page(public_key=key.public_key), installed(), "dk1"
    )
    assert fields(found) == ["signature"]
    assert found[0].package_value == "unsigned"
    assert found[0].board_value.startswith("public key " + key.public_key[:8].hex().upper())
    assert "--key-file" in found[0].fix


def test_key_on_board_refuses_a_package_signed_with_another_key(app_hex: Path) -> None:
    board_key, other_key = generate_key(), generate_key()
    found = check_package(
        package(app_hex, key=other_key),
        generated_page(public_key=board_key.public_key),
        installed(),
        "dk1",
    )
    assert fields(found) == ["signature"]
    assert found[0].package_value.startswith("signed with another key")


def test_key_on_board_takes_a_package_signed_with_it(app_hex: Path) -> None:
    key = generate_key()
    page = generated_page(public_key=key.public_key)
    assert check_package(package(app_hex, key=key), page, installed(), "dk1") == []


def test_signed_package_on_a_board_without_key_fits_with_a_note(app_hex: Path) -> None:
    pkg = package(app_hex, key=generate_key())
    page = generated_page()
    assert check_package(pkg, page, installed(), "dk1") == []
    notes = preflight_notes(pkg, page, installed())
    assert any("signature is not checked" in n for n in notes)


# --- placement ---------------------------------------------------------------------------------


def test_image_longer_than_the_application_segment(app_hex: Path) -> None:
    found = check_package(package(app_hex), hand_page(app_length=256), installed(), "dk1")
    assert fields(found) == ["length"]
    assert found[0].package_value == "512 bytes"
    assert found[0].board_value == "SEGMENT_APP 0x26000+0x100 (256 bytes)"


# --- SoftDevice requirement --------------------------------------------------------------------


def test_sd_req_not_matching_the_installed_softdevice(app_hex: Path) -> None:
    found = check_package(package(app_hex, sd_req=[0x00CB]), generated_page(), installed(), "dk1")
    assert fields(found) == ["sd_req"]
    text = str(found[0])
    assert text.startswith("sd_req: package 0x00CB, board 0x0101 (s132_7.2.0) installed — ")
    assert "--sd-req 0x0101" in text


def test_sd_req_falls_back_to_the_device_page_without_an_installed_softdevice(
    app_hex: Path,
) -> None:
    found = check_package(package(app_hex, sd_req=[0x00CB]), generated_page(), None, "dk1")
    assert found[0].board_value == "0x0101 (s132_7.2.0) per the device page"


def test_device_page_for_another_softdevice_is_noted(app_hex: Path) -> None:
    notes = preflight_notes(package(app_hex), generated_page(), installed("s132_7.0.1"))
    assert any("0x0101" in n and "0x00CB" in n for n in notes)


# --- reading the board, reporting --------------------------------------------------------------


class FlashProbe:
    """A probe's read() over a sparse flash image; unwritten flash reads as 0xFF."""

    def __init__(self, contents: dict[int, bytes]) -> None:
        self.contents = contents

    def read(self, address: int, length: int) -> bytes:
        out = bytearray(b"\xff" * length)
        for start, data in self.contents.items():
            for i, byte in enumerate(data):
                if address <= start + i < address + length:
                    out[start + i - address] = byte
        return bytes(out)


def test_read_board_state_reads_page_and_softdevice() -> None:
    probe = FlashProbe(
        {
            CHIP.device_page_address: device_page_entries(CHIP, S132, BootloaderConfig()),
            SD_INFO_STRUCT_ADDRESS: build_info_struct(S132),
        }
    )
    page, sd = read_board_state(probe, CHIP)
    assert page is not None and page.version is not None
    assert page.version.company_id == 0x59
    assert page.segment(EntryType.SEGMENT_APP) == (0x26000, 0x51000)
    assert sd is not None and sd.fwid == 0x0101


def test_erased_board_has_neither() -> None:
    assert read_board_state(FlashProbe({}), CHIP) == (None, None)


def test_preflight_error_lists_every_mismatch_with_exit_code_2(app_hex: Path) -> None:
    found = check_package(
        package(app_hex, company=7, version=1), generated_page(), installed(), "dk1"
    )
    error = PreflightError("dk1", "app.zip", found)
    assert isinstance(error, DfuhilError)
    assert error.exit_code == 2
    lines = str(error).splitlines()
    assert lines[0] == "package app.zip does not fit board dk1 (nothing was sent):"
    assert lines[1:] == [f"  - {m}" for m in found]
    assert len(found) == 2


# --- bootloader_verify.py's checks ---------------------------------------------------------------


class VerifyBoard:
    """A probe's words and reset, and the device end of a pty that boots and echoes."""

    def __init__(self, master: int, words: dict[int, int], started: bytes | None) -> None:
        self.master = master
        self.words = words
        self.started = started
        self.echo = True
        self.resets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._answer, daemon=True)
        self._thread.start()

    board = "dk1"
    chip = CHIP

    def read_u32(self, address: int) -> int:
        return self.words.get(address, 0xFFFFFFFF)

    def reset(self) -> None:
        self.resets += 1
        if self.started is not None:
            os.write(self.master, self.started)

    def _answer(self) -> None:
        reader = FrameReader()
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            try:
                chunk = os.read(self.master, 256)
            except OSError:
                return
            for item in reader.feed(chunk):
                if item.opcode == 0x02 and self.echo:
                    os.write(self.master, bytes([len(item.payload) + 1, 0x82]) + item.payload)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


GOOD_WORDS = {
    0x10001014: 0x78000,  # UICR.BOOTLOADERADDR
    0x78000: 0x2000FD00,  # the bootloader's initial stack pointer
    0x10000010: 4096,  # FICR.CODEPAGESIZE
    0x10000014: 128,  # FICR.CODESIZE
    0x7F000: 0x08080104,  # device page metadata 04 01 08 08
}


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


def run_verify(
    pty_pair: tuple[int, str], words: dict[int, int], started: bytes | None, echo: bool = True
) -> VerifyReport:
    master, path = pty_pair
    board = VerifyBoard(master, words, started)
    board.echo = echo
    try:
        with MeshSerialLink(path, name="dk1") as link:
            return verify_bootloader(board, link, time_scale=0.01)
    finally:
        board.stop()


def test_verify_passes_a_board_in_application_mode(pty_pair: tuple[int, str]) -> None:
    report = run_verify(pty_pair, GOOD_WORDS, bytes.fromhex("04 81 02 00 04"))
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == [
        "UICR.BOOTLOADERADDR",
        "device page",
        "reset, DEVICE_STARTED",
        "serial echo",
    ]
    assert "initial SP 0x2000FD00" in report.checks[0].detail
    assert "0x7F000" in report.checks[1].detail
    assert report.checks[2].detail == "81 02 00 04: in application"
    assert report.lines()[-1] == "Bootloader verification OK."
    report.raise_for_failures()


def test_verify_passes_a_board_in_bootloader_mode(pty_pair: tuple[int, str]) -> None:
    report = run_verify(pty_pair, GOOD_WORDS, bytes.fromhex("04 81 01 00 04"))
    assert report.ok, str(report)
    assert report.checks[2].detail.endswith("in bootloader")


def test_verify_reports_every_failure(pty_pair: tuple[int, str]) -> None:
    report = run_verify(pty_pair, {0x10000010: 4096, 0x10000014: 128}, None, echo=False)
    assert not report.ok
    assert len(report.failures) == 4
    assert "not set (0xFFFFFFFF)" in report.checks[0].detail
    assert "not present; flash the device page" in report.checks[1].detail
    assert "nothing on" in report.checks[2].detail
    assert "no answer to 03 02 AA BB" in report.checks[3].detail
    with pytest.raises(ProductError) as caught:
        report.raise_for_failures()
    assert str(caught.value).startswith("board dk1: bootloader verification failed:")
    assert str(caught.value).count("FAILED") == 4


def test_verify_refuses_a_stack_pointer_outside_ram_and_a_foreign_page(
    pty_pair: tuple[int, str],
) -> None:
    words = GOOD_WORDS | {0x78000: 0x00012345, 0x7F000: 0x12345678}
    report = run_verify(pty_pair, words, bytes.fromhex("04 81 03 00 04"))
    assert [c.ok for c in report.checks] == [False, False, False, True]
    assert "not a RAM address" in report.checks[0].detail
    assert "invalid (expected 0x08080104)" in report.checks[1].detail
    assert "invalid start sequence" in report.checks[2].detail


# --- the command line, against a virtual board -------------------------------------------------

VBOARD = "vmesh1"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    directory = tmp_path_factory.mktemp("meshfarm")
    with running_farm(directory, [SimBoard(VBOARD, "nRF52832_xxAA", "PCA10040", 910000401)]) as f:
        with f.api(VBOARD) as api:
            api.write(
                CHIP.device_page_address, device_page_entries(CHIP, S132, BootloaderConfig()), True
            )
            api.write(SD_INFO_STRUCT_ADDRESS, build_info_struct(S132), True)
        yield f


def board_args(farm: RunningFarm) -> list[str]:
    return [
        "--board",
        VBOARD,
        "--boards",
        str(farm.boards_file),
        "--sim-state",
        str(farm.state.path),
    ]


def test_cli_check_says_the_package_fits(
    farm: RunningFarm, app_hex: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dfuhil.cli import main

    zip_path = tmp_path / "up.zip"
    package(app_hex, version=2).write(zip_path)
    assert main(["mesh", "check", str(zip_path), *board_args(farm)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"package {zip_path} fits board {VBOARD}")


def test_cli_check_lists_mismatches_with_exit_code_2(
    farm: RunningFarm, app_hex: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dfuhil.cli import main

    zip_path = tmp_path / "same.zip"
    package(app_hex, version=1, sd_req=[0x00CB]).write(zip_path)
    assert main(["mesh", "check", str(zip_path), *board_args(farm)]) == 2
    out = capsys.readouterr().out
    assert f"does not fit board {VBOARD}" in out
    assert "  - application_version: package 1, board 1 — " in out
    assert "  - sd_req: package 0x00CB, board 0x0101 (s132_7.2.0) installed — " in out


def test_cli_dfu_on_a_board_runs_the_preflight_first(
    farm: RunningFarm, app_hex: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dfuhil.cli import main

    zip_path = tmp_path / "other.zip"
    package(app_hex, company=0x1234).write(zip_path)
    log = tmp_path / "frames.log"
    args = ["mesh", "dfu", "-pkg", str(zip_path), *board_args(farm), "--frame-log", str(log)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"does not fit board {VBOARD} (nothing was sent)" in err
    assert "company_id: package 0x1234, board 0x59" in err
    assert not log.exists()
