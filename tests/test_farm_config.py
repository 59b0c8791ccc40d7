"""boards.yaml: valid files resolve to the model, every bad input is a located, fixable problem.

Most bad-input tests replace one line of BASE with another single line, so every line number
asserted below is the line number in BASE.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from dfuhil.cli import boards as cli
from dfuhil.errors import InfrastructureError, InputError, Problem
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import Farm, FlashLayout, LineFaults, Region
from dfuhil.farm.rig import Rig
from dfuhil.formats.chips import CHIPS
from dfuhil.procedures.image_sign import generate_key
from dfuhil.sim.state import SimState, VirtualBoardState

REPO = Path(__file__).resolve().parents[1]

BASE = textwrap.dedent(
    r"""
    version: 1
    virtual_farm:
      time_scale: 0.1
    flash_layouts:
      l52:
        chip: nRF52832_xxAA
        regions:
          softdevice: {start: 0x0, size: 0x26000}
          application: {start: 0x26000, size: 0x51000}
          mbr_params: {start: 0x77000, size: 0x1000}
          bootloader: {start: 0x78000, size: 0x6000}
          device_page_backup: {start: 0x7E000, size: 0x1000}
          device_page: {start: 0x7F000, size: 0x1000}
    firmware_sets:
      fw52:
        chip: nRF52832_xxAA
        softdevice: {file: fw/sd.hex}
        application: {file: fw/app.hex, banner: 'app \d+ started'}
    boards:
      - name: vdk-a
        chip: nrf52832
        board_type: PCA10040
        probe: {backend: virtual}
        roles: [provisioning, mesh-root]
        firmware: fw52
        flash_layout: l52
      - name: dk-b
        chip: nRF52832_xxAA
        probe: {backend: jlink, snr: 683123456, ip: 10.0.0.7}
        serial: {port: /dev/serial/by-id/usb-SEGGER_J-Link_000683123456-if00, baud: 1000000}
        leds: {pins: [17, 18], active_low: false}
        roles: [mesh-node]
        flash_layout: l52
    """
).lstrip()


def write(tmp_path: Path, text: str, name: str = "boards.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, *, check_files: bool = False) -> list[Problem]:
    with pytest.raises(InputError) as info:
        load_farm(path, check_files=check_files)
    problems: list[Problem] = info.value.problems
    return problems


def edited(tmp_path: Path, old: str, new: str, **kwargs: bool) -> list[Problem]:
    """Problems of BASE with ``old`` replaced by ``new`` (both on one line)."""
    assert BASE.count(old) == 1, old
    return problems_of(write(tmp_path, BASE.replace(old, new)), **kwargs)


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(str(p) for p in problems)
    return problems[0]


def assert_problem(p: Problem, line: int | None, field: str, *words: str) -> None:
    assert (p.line, p.field) == (line, field), str(p)
    for word in words:
        assert word in p.message, str(p)


# --- valid files ----------------------------------------------------------------------------


def test_base_resolves_to_the_model(tmp_path: Path) -> None:
    farm = load_farm(write(tmp_path, BASE))
    assert isinstance(farm, Farm)
    assert farm.path == tmp_path / "boards.yaml"
    assert farm.time_scale == 0.1
    assert [b.name for b in farm.boards] == ["vdk-a", "dk-b"]
    vdk, dk = farm.boards
    assert vdk.chip is CHIPS["nrf52832_xxaa"]
    assert vdk.line == 20 and dk.line == 27
    assert vdk.is_virtual and not dk.is_virtual
    assert vdk.board_type is not None and vdk.board_type.pca == "PCA10040"
    assert str(vdk.probe) == "virtual 900000001"
    assert str(dk.probe) == "jlink 683123456 @10.0.0.7"
    assert dk.probe.speed_khz == 2000
    assert vdk.serial.is_virtual and (vdk.serial.baud, vdk.serial.rtscts) == (115200, False)
    assert dk.serial.baud == 1000000 and not dk.serial.is_virtual
    assert (vdk.leds.pins, vdk.leds.active_low) == ((17, 18, 19, 20), True)
    assert (dk.leds.pins, dk.leds.active_low) == ((17, 18), False)
    assert vdk.roles == ("provisioning", "mesh-root")
    assert dk.firmware is None


def test_firmware_and_layout_resolution(tmp_path: Path) -> None:
    vdk = load_farm(write(tmp_path, BASE)).board("vdk-a")
    assert vdk.firmware is not None
    images = vdk.firmware.images()
    assert [i.role for i in images] == ["softdevice", "application"]
    assert images[0].file == tmp_path / "fw" / "sd.hex"
    assert images[1].banner == r"app \d+ started"
    layout = vdk.layout
    assert layout.name == "l52" and layout.chip is vdk.chip
    assert layout.region("bootloader") == Region("bootloader", 0x78000, 0x6000)
    assert layout.find("slot0") is None
    with pytest.raises(KeyError, match="device_page_backup"):
        layout.region("slot0")
    hash(vdk)  # boards are usable as cache keys


def test_region_helpers() -> None:
    region = Region("app", 0x26000, 0x1000)
    assert region.end == 0x27000
    assert region.contains(0x26000) and region.contains(0x26FFC, 4)
    assert not region.contains(0x26FFE, 4) and not region.contains(0x25FFF)


def test_defaults_hex_strings_and_inline_sets(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        version: 1
        boards:
          - name: v1
            chip: nRF52840_xxAA
            probe: {backend: virtual, snr: 42}
            firmware:
              chip: nrf52840
              bootloader: {file: /abs/mcuboot.hex}
            flash_layout:
              chip: nRF52840_xxAA
              regions:
                mcuboot: {start: "0x0", size: "0xC000"}
                slot0: {start: 0xC000, size: 786432}
        """
    )
    farm = load_farm(write(tmp_path, text))
    board = farm.board("v1")
    assert farm.time_scale == 1.0
    assert board.probe.snr == 42 and board.leds.pins == ()
    assert board.layout.region("slot0") == Region("slot0", 0xC000, 0xC0000)
    assert board.firmware is not None and board.firmware.bootloader is not None
    assert board.firmware.bootloader.file == Path("/abs/mcuboot.hex")
    assert board.board_type is None


def test_select_and_board_lookup(tmp_path: Path) -> None:
    farm = load_farm(write(tmp_path, BASE))
    assert [b.name for b in farm.select()] == ["vdk-a", "dk-b"]
    assert [b.name for b in farm.select(names=["dk-b", "vdk-a"])] == ["vdk-a", "dk-b"]
    assert [b.name for b in farm.select(roles=["mesh-root"])] == ["vdk-a"]
    assert farm.select(names=["dk-b"], roles=["mesh-root"]) == []
    assert [b.name for b in farm.virtual_boards()] == ["vdk-a"]
    with pytest.raises(InputError) as info:
        farm.board("dk-c")
    problem = only(info.value.problems)
    assert problem.file == str(tmp_path / "boards.yaml")
    assert "dk-c" in problem.message and "vdk-a, dk-b" in problem.message
    with pytest.raises(InputError):
        farm.select(names=["nope"])


def test_check_files_passes_when_images_exist(tmp_path: Path) -> None:
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "sd.hex").write_text(":00000001FF\n")
    (tmp_path / "fw" / "app.hex").write_text(":00000001FF\n")
    assert len(load_farm(write(tmp_path, BASE), check_files=True).boards) == 2


def test_lab_example_is_valid() -> None:
    farm = load_farm(REPO / "boards.lab.example.yaml")
    assert sorted(b.chip.name for b in farm.boards) == sorted(c.name for c in CHIPS.values())
    assert not farm.virtual_boards()
    assert any(b.probe.ip for b in farm.boards)
    assert any(b.serial.port.startswith("rfc2217://") for b in farm.boards)
    assert all(b.roles for b in farm.boards)
    mcuboot = [b for b in farm.boards if b.mcuboot is not None]
    assert mcuboot and mcuboot[0].layout.source is not None  # from a Partition Manager file
    assert mcuboot[0].layout.region("settings_storage").end == mcuboot[0].chip.flash_size
    assert mcuboot[0].mcuboot is not None and mcuboot[0].mcuboot.mode == "swap-move"


# --- unreadable files -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    problem = only(problems_of(path))
    assert (problem.file, problem.line, problem.field) == (str(path), None, "")
    assert "file not found" in problem.message and "--boards PATH" in problem.message


def test_file_is_reported_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, BASE.replace("version: 1", "version: 3"))
    with pytest.raises(InputError) as info:
        load_farm("boards.yaml")
    assert only(info.value.problems).file == "boards.yaml"


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "    roles: [mesh-node]", "    roles: [mesh-node"))
    assert problem.line == 33 and problem.field == ""
    assert "YAML syntax error" in problem.message


def test_duplicate_yaml_key_is_located(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "    roles: [mesh-node]", "    chip: nRF52832_xxAA"))
    assert problem.line == 32 and "duplicate key" in problem.message


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "empty"), ("# nothing here\n", "empty"), ("- a\n- b\n", "top level")],
)
def test_not_a_farm(tmp_path: Path, text: str, words: str) -> None:
    assert words in only(problems_of(write(tmp_path, text))).message


# --- pydantic-level problems ----------------------------------------------------------------


def test_version_other_than_1(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "version: 1", "version: 2"))
    assert_problem(problem, 1, "version", "unsupported version 2", "version 1")


def test_missing_version_and_boards(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "virtual_farm: {time_scale: 1}\n"))
    fields = sorted(p.field for p in problems)
    assert fields == ["boards", "version"]
    assert all(p.line == 1 and "missing" in p.message for p in problems)


def test_unknown_top_level_key_has_its_own_line(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "  time_scale: 0.1", "  time_scale: 0.1\nboard: []"))
    assert_problem(problem, 4, "board", "unknown key 'board'", "did you mean 'boards'")


def test_unknown_nested_key(tmp_path: Path) -> None:
    problem = only(
        edited(tmp_path, "{backend: jlink, snr: 683123456, ip:", "{backend: jlink, snr: 68, ipp:")
    )
    assert_problem(problem, 29, "boards[dk-b].probe.ipp", "did you mean 'ip'", "speed_khz")


def test_unknown_key_in_region(tmp_path: Path) -> None:
    problems = edited(tmp_path, "{start: 0x77000, size: 0x1000}", "{start: 0x77000, sise: 0x1000}")
    field = "flash_layouts.l52.regions.mbr_params"
    assert [(p.line, p.field) for p in problems] == [(10, f"{field}.size"), (10, f"{field}.sise")]
    assert "required key 'size' is missing" in problems[0].message
    assert "did you mean 'size'" in problems[1].message


def test_unknown_key_in_inline_firmware(tmp_path: Path) -> None:
    problem = only(
        edited(tmp_path, "    firmware: fw52", "    firmware: {chip: nrf52832, app: {file: a}}")
    )
    assert_problem(problem, 25, "boards[vdk-a].firmware.app", "unknown key", "application")


def test_wrong_types(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "snr: 683123456", "snr: '683123456'"))
    assert_problem(problem, 29, "boards[dk-b].probe.snr", "expected an integer", "'683123456'")
    problem = only(edited(tmp_path, "    firmware: fw52", "    firmware: 52"))
    assert_problem(problem, 25, "boards[vdk-a].firmware", "name of a firmware set")


def test_time_scale_range(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "time_scale: 0.1", "time_scale: 11"))
    assert_problem(problem, 3, "virtual_farm.time_scale", "less than or equal to 10")


def test_bad_board_name(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "- name: vdk-a", "- name: vdk a"))
    assert_problem(problem, 20, "boards[0].name", "letters, digits")


def test_backend_must_be_known(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "{backend: virtual}", "{backend: stlink}"))
    assert_problem(problem, 23, "boards[vdk-a].probe.backend", "'jlink' or 'virtual'")


def test_bad_baud(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "baud: 1000000", "baud: 115201"))
    assert_problem(problem, 30, "boards[dk-b].serial.baud", "115201", "115200, 230400")


def test_bad_port_and_ip(tmp_path: Path) -> None:
    problems = edited(
        tmp_path,
        "ip: 10.0.0.7}",
        "ip: 10.0.0.300}\n    serial: {port: COM3}",
    )
    # the edit adds a duplicate serial key on line 30: ruamel reports that first
    assert "duplicate key" in only(problems).message
    problems = edited(
        tmp_path,
        "/dev/serial/by-id/usb-SEGGER_J-Link_000683123456-if00",
        "tcp://10.0.0.8:4001",
    )
    assert_problem(only(problems), 30, "boards[dk-b].serial.port", "rfc2217://host:port")
    problems = edited(tmp_path, "ip: 10.0.0.7}", "ip: 10.0.0.300}")
    assert_problem(only(problems), 29, "boards[dk-b].probe.ip", "IPv4")


def test_banner_must_be_a_regex(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, r"banner: 'app \d+ started'", "banner: 'app (started'"))
    assert_problem(problem, 18, "firmware_sets.fw52.application.banner", "regex")


def test_mesh_serial_firmware_has_no_text_banner(tmp_path: Path) -> None:
    problem = only(
        edited(tmp_path, r"banner: 'app \d+ started'}", r"banner: 'x', protocol: mesh-serial}")
    )
    assert_problem(problem, 18, "firmware_sets.fw52.application", "DEVICE_STARTED")


def test_mesh_serial_boot_pattern_is_the_device_started_event(tmp_path: Path) -> None:
    farm = load_farm(
        write(tmp_path, BASE.replace(r"banner: 'app \d+ started'}", "protocol: mesh-serial}"))
    )
    app = farm.board("vdk-a").firmware.application  # type: ignore[union-attr]
    assert app is not None and app.protocol == "mesh-serial"
    assert app.boot_pattern == r"DEVICE_STARTED mode=APPLICATION\b"


def test_radio_settings(tmp_path: Path) -> None:
    radio = "  radio: {loss: 0.05, neighbours: {vdk-a: [dk-b]}, seed: 7}\n"
    farm = load_farm(
        write(tmp_path, BASE.replace("  time_scale: 0.1\n", f"  time_scale: 0.1\n{radio}"))
    )
    assert (farm.radio.loss, farm.radio.seed) == (0.05, 7)
    assert farm.radio.hears("dk-b", "vdk-a") and farm.radio.hears("vdk-a", "dk-b")
    assert not farm.radio.hears("vdk-a", "vdk-a")
    assert load_farm(write(tmp_path, BASE)).radio.hears("vdk-a", "dk-b")  # default: all


def test_line_faults_per_virtual_board(tmp_path: Path) -> None:
    faults = "  line_faults: {vdk-a: {bit_error_rate: 1.0e-5, stall_s: 2, seed: 9}}\n"
    farm = load_farm(
        write(tmp_path, BASE.replace("  time_scale: 0.1\n", f"  time_scale: 0.1\n{faults}"))
    )
    (name, line), *others = farm.line_faults
    assert name == "vdk-a" and not others
    assert (line.bit_error_rate, line.stall_s, line.seed, line.direction) == (1e-5, 2, 9, "both")
    assert line.any() and not LineFaults().any()
    assert load_farm(write(tmp_path, BASE)).line_faults == ()


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("dk-b: {drop_rate: 0.01}", ("virtual_farm.line_faults.dk-b", "virtual boards: vdk-a")),
        ("vdk-a: {drop_rate: 2}", ("virtual_farm.line_faults.vdk-a.drop_rate", "0.5")),
        ("vdk-a: {flips: 0.1}", ("virtual_farm.line_faults.vdk-a.flips",)),
    ],
)
def test_line_faults_name_a_virtual_board_and_sane_rates(
    tmp_path: Path, entry: str, words: tuple[str, ...]
) -> None:
    faults = f"  line_faults: {{{entry}}}\n"
    problem = only(
        problems_of(
            write(tmp_path, BASE.replace("  time_scale: 0.1\n", f"  time_scale: 0.1\n{faults}"))
        )
    )
    assert_problem(problem, 4, *words)


def test_radio_neighbour_must_be_a_board(tmp_path: Path) -> None:
    radio = "  radio: {neighbours: {vdk-a: [dk-x]}}\n"
    problem = only(
        problems_of(
            write(tmp_path, BASE.replace("  time_scale: 0.1\n", f"  time_scale: 0.1\n{radio}"))
        )
    )
    assert_problem(problem, 4, "virtual_farm.radio.neighbours.vdk-a", "dk-x", "dk-b")


def test_radio_loss_range(tmp_path: Path) -> None:
    radio = "  radio: {loss: 1.5}\n"
    problem = only(
        problems_of(
            write(tmp_path, BASE.replace("  time_scale: 0.1\n", f"  time_scale: 0.1\n{radio}"))
        )
    )
    assert_problem(problem, 4, "virtual_farm.radio.loss", "less than 1")


def test_region_number_strings(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "{start: 0x78000, size:", "{start: '0x78OOO', size:"))
    assert_problem(problem, 11, "flash_layouts.l52.regions.bootloader.start", "not a number")


def test_board_that_is_not_a_mapping(tmp_path: Path) -> None:
    problem = only(problems_of(write(tmp_path, BASE + "  - dk-c\n")))
    assert_problem(problem, 34, "boards[2]", "expected a mapping")


def test_no_boards(tmp_path: Path) -> None:
    problem = only(problems_of(write(tmp_path, "version: 1\nboards: []\n")))
    assert_problem(problem, 2, "boards", "at least one")


# --- cross-checks ---------------------------------------------------------------------------


def test_unknown_chip(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "    chip: nrf52832\n", "    chip: nrf52999\n"))
    assert_problem(problem, 21, "boards[vdk-a].chip", "nrf52999", "nRF52840_xxAA")


def test_unknown_chip_in_layout_and_firmware_set(tmp_path: Path) -> None:
    text = BASE.replace("    chip: nRF52832_xxAA\n    regions", "    chip: nRF9160\n    regions")
    text = text.replace("  fw52:\n    chip: nRF52832_xxAA", "  fw52:\n    chip: nRF52\n")
    problems = problems_of(write(tmp_path, text))
    assert [(p.line, p.field) for p in problems] == [
        (6, "flash_layouts.l52.chip"),
        (16, "firmware_sets.fw52.chip"),
    ]
    assert all("known chips" in p.message for p in problems)


def test_unknown_board_type(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "board_type: PCA10040", "board_type: PCA10059"))
    assert_problem(problem, 22, "boards[vdk-a].board_type", "PCA10059", "PCA10056 (nRF52840 DK)")


def test_board_type_must_carry_the_chip(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "board_type: PCA10040", "board_type: pca10056"))
    assert_problem(
        problem, 22, "boards[vdk-a].board_type", "carries nRF52840_xxAA", "not nRF52832_xxAA"
    )


def test_layout_and_firmware_for_another_chip(tmp_path: Path) -> None:
    text = BASE.replace("    chip: nrf52832\n", "    chip: nrf52833\n")
    text = text.replace("board_type: PCA10040", "board_type: PCA10100")
    problems = problems_of(write(tmp_path, text))
    assert [(p.line, p.field) for p in problems] == [
        (25, "boards[vdk-a].firmware"),
        (26, "boards[vdk-a].flash_layout"),
    ]
    assert "firmware set 'fw52' is for nRF52832_xxAA" in problems[0].message
    assert "but the board is nRF52833_xxAA" in problems[1].message


def test_undefined_references(tmp_path: Path) -> None:
    text = BASE.replace("firmware: fw52", "firmware: fw53").replace(
        "    flash_layout: l52\n  - name: dk-b", "    flash_layout: l53\n  - name: dk-b"
    )
    problems = problems_of(write(tmp_path, text))
    assert [(p.line, p.field) for p in problems] == [
        (25, "boards[vdk-a].firmware"),
        (26, "boards[vdk-a].flash_layout"),
    ]
    assert "no firmware set named 'fw53'" in problems[0].message
    assert "fw52" in problems[0].message
    assert "no flash layout named 'l53'; defined under flash_layouts: l52" in problems[1].message


def test_reference_to_a_broken_definition_is_not_reported_twice(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "    softdevice: {file: fw/sd.hex}", "    softdevice: {}"))
    assert_problem(problem, 17, "firmware_sets.fw52.softdevice.file", "missing")


def test_region_not_page_aligned(tmp_path: Path) -> None:
    problems = edited(
        tmp_path,
        "mbr_params: {start: 0x77000, size: 0x1000}",
        "mbr_params: {start: 0x77100, size: 0x800}",
    )
    assert [(p.line, p.field) for p in problems] == [
        (10, "flash_layouts.l52.regions.mbr_params.start"),
        (10, "flash_layouts.l52.regions.mbr_params.size"),
    ]
    assert "page size 0x1000" in problems[0].message


def test_region_beyond_flash(tmp_path: Path) -> None:
    problem = only(
        edited(tmp_path, "{start: 0x7F000, size: 0x1000}", "{start: 0x80000, size: 4096}")
    )
    assert_problem(
        problem, 13, "flash_layouts.l52.regions.device_page", "ends at 0x81000", "512 KiB"
    )


def test_overlapping_regions(tmp_path: Path) -> None:
    problem = only(
        edited(tmp_path, "{start: 0x26000, size: 0x51000}", "{start: 0x25000, size: 0x51000}")
    )
    assert_problem(
        problem, 9, "flash_layouts.l52.regions.application", "'application'", "'softdevice'"
    )


def test_duplicate_board_name(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "- name: dk-b", "- name: vdk-a"))
    assert_problem(problem, 27, "boards[1].name", "duplicate board name 'vdk-a'", "line 20")


def test_duplicate_probe_snr(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "{backend: virtual}", "{backend: virtual, snr: 683123456}"))
    assert_problem(problem, 29, "boards[dk-b].probe.snr", "duplicate probe snr 683123456")


def test_automatic_snr_collision(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "snr: 683123456, ip: 10.0.0.7", "snr: 900000001"))
    assert_problem(problem, 29, "boards[dk-b].probe.snr", "boards[vdk-a] (line 20)")
    text = textwrap.dedent(
        """
        version: 1
        boards:
          - name: dk-a
            chip: nrf52840
            probe: {backend: jlink, snr: 900000002}
            serial: {port: /dev/ttyACM0}
            flash_layout: {chip: nrf52840, regions: {all: {start: 0, size: 0x100000}}}
          - name: vdk-b
            chip: nrf52840
            probe: {backend: virtual}
            flash_layout: {chip: nrf52840, regions: {all: {start: 0, size: 0x100000}}}
        """
    ).lstrip()
    problem = only(problems_of(write(tmp_path, text)))
    assert_problem(problem, 10, "boards[vdk-b].probe", "automatic probe snr", "explicit snr")


def test_duplicate_serial_port(tmp_path: Path) -> None:
    text = BASE.replace(
        "{backend: virtual}", "{backend: virtual}\n    serial: {port: /dev/ttyACM0}"
    )
    text = text.replace("/dev/serial/by-id/usb-SEGGER_J-Link_000683123456-if00", "/dev/ttyACM0")
    problem = only(problems_of(write(tmp_path, text)))
    assert_problem(problem, 31, "boards[dk-b].serial.port", "duplicate serial port")


def test_jlink_without_snr(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "snr: 683123456, ip: 10.0.0.7", "speed_khz: 4000"))
    assert_problem(problem, 29, "boards[dk-b].probe.snr", "needs snr", "nrfjprog --ids")


def test_snr_range(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "snr: 683123456", "snr: 0x100000000"))
    assert_problem(problem, 29, "boards[dk-b].probe.snr", "less than or equal to 4294967295")


def test_ip_on_virtual_probe(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "{backend: virtual}", "{backend: virtual, ip: lab-pi}"))
    assert_problem(problem, 23, "boards[vdk-a].probe.ip", "remove ip")


def test_virtual_port_on_jlink_board(tmp_path: Path) -> None:
    problem = only(
        edited(tmp_path, "/dev/serial/by-id/usb-SEGGER_J-Link_000683123456-if00", "virtual")
    )
    assert_problem(problem, 30, "boards[dk-b].serial.port", "only exists on the virtual farm")


def test_jlink_board_needs_serial(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "    serial: {port: /dev/serial/by-id/", "    #"))
    assert_problem(problem, 27, "boards[dk-b].serial", "needs serial")


def test_led_pin_not_on_chip(tmp_path: Path) -> None:
    problem = only(edited(tmp_path, "pins: [17, 18]", "pins: [17, 35]"))
    assert_problem(problem, 31, "boards[dk-b].leds.pins[1]", "no GPIO pin 35", "0..31 (P0)")


def test_missing_firmware_file(tmp_path: Path) -> None:
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "sd.hex").write_text(":00000001FF\n")
    problem = only(problems_of(write(tmp_path, BASE), check_files=True))
    assert_problem(problem, 18, "firmware_sets.fw52.application.file", "app.hex", "make firmware")


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    text = (
        BASE.replace("version: 1", "version: 0")
        .replace("{start: 0x26000, size: 0x51000}", "{start: 0x26000, size: 0x51001}")
        .replace("board_type: PCA10040", "board_type: PCA1")
        .replace("{backend: virtual}", "{backend: virtual, ip: x}")
        .replace("baud: 1000000", "baud: 7")
        .replace("leds: {pins: [17, 18], active_low: false}", "leds: {pins: [99], active_lo: 1}")
    )
    problems = problems_of(write(tmp_path, text))
    assert [(p.line, p.field) for p in problems] == [
        (1, "version"),
        (9, "flash_layouts.l52.regions.application.size"),
        (10, "flash_layouts.l52.regions.mbr_params"),  # 0x51001 bytes overlap it
        (22, "boards[vdk-a].board_type"),
        (23, "boards[vdk-a].probe.ip"),
        (30, "boards[dk-b].serial.baud"),
        (31, "boards[dk-b].leds.active_lo"),
    ]
    assert all(p.file == str(tmp_path / "boards.yaml") for p in problems)


def test_a_schema_error_does_not_hide_cross_checks(tmp_path: Path) -> None:
    text = BASE.replace(
        "{backend: jlink, snr: 683123456, ip: 10.0.0.7}", "{backend: jlink, snr: -1}"
    )
    text = text.replace("    chip: nRF52832_xxAA\n    probe", "    chip: nRF5\n    probe")
    problems = problems_of(write(tmp_path, text))
    assert [(p.line, p.field) for p in problems] == [
        (28, "boards[dk-b].chip"),
        (29, "boards[dk-b].probe.snr"),
    ]
    text = BASE.replace("baud: 1000000", "baud: 1").replace("pins: [17, 18]", "pins: [40]")
    problems = problems_of(write(tmp_path, text))
    assert [p.field for p in problems] == ["boards[dk-b].serial.baud", "boards[dk-b].leds.pins[0]"]


# --- command line ---------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fw").mkdir()
    for name in ("sd.hex", "app.hex"):
        (tmp_path / "fw" / name).write_text(":00000001FF\n")
    path = write(tmp_path, BASE)
    assert run_cli(["boards", "check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: 2 boards OK\n"


def test_check_prints_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BASE.replace("version: 1", "version: 2"))
    assert run_cli(["boards", "check", str(path)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path}:1: version: unsupported version 2")
    assert f"{path}:17: firmware_sets.fw52.softdevice.file: file not found" in lines[1]
    assert len(lines) == 3


def test_check_default_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(["boards", "check"]) == 2
    assert capsys.readouterr().out == "boards.yaml: file not found; pass --boards PATH\n"


def test_list_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["boards", "list", str(write(tmp_path, BASE))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        *("name", "chip", "board", "type", "roles", "probe", "serial", "port"),
        *("lives", "held", "by"),
    ]
    assert lines[1].split() == [
        "vdk-a",
        "nRF52832_xxAA",
        "PCA10040",
        "provisioning,",
        "mesh-root",
        "virtual",
        "900000001",
        "virtual",
        "local",
        "-",
    ]
    assert "jlink 683123456 @10.0.0.7" in lines[2]


def test_list_rich_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")  # 8 columns: 80 would wrap the headers
    assert run_cli(["boards", "list", str(write(tmp_path, BASE))]) == 0
    out = capsys.readouterr().out
    assert "vdk-a" in out and "serial port" in out


def test_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["boards", "list", "--json", str(write(tmp_path, BASE))]) == 0
    boards = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in boards] == ["vdk-a", "dk-b"]
    assert boards[0]["probe"] == {
        "backend": "virtual",
        "chosen": "board",
        "snr": 900000001,
        "ip": None,
        "remote": None,
        "speed_khz": 2000,
        "allow_recover": False,
    }
    assert boards[0]["firmware"]["images"]["softdevice"]["file"] == str(tmp_path / "fw/sd.hex")
    assert boards[1]["serial"] == {
        "port": "/dev/serial/by-id/usb-SEGGER_J-Link_000683123456-if00",
        "baud": 1000000,
        "rtscts": False,
    }
    assert boards[1]["firmware"] is None and boards[1]["flash_layout"] == "l52"


def test_list_bad_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        run_cli(["boards", "list", str(write(tmp_path, "version: 1\n"))])


def test_flash_layout_hash_ignores_dict() -> None:
    chip = CHIPS["nrf52832_xxaa"]
    a = FlashLayout("x", chip, {"a": Region("a", 0, 4096)})
    b = FlashLayout("x", chip, {"a": Region("a", 0, 4096)})
    assert a == b and hash(a) == hash(b)


# --- MCUboot boards ---------------------------------------------------------------------------

MCU = textwrap.dedent(
    """
    version: 1
    flash_layouts:
      l40:
        chip: nRF52840_xxAA
        regions:
          mcuboot: {start: 0x0, size: 0xC000}
          mcuboot_primary: {start: 0xC000, size: 0x76000}
          mcuboot_secondary: {start: 0x82000, size: 0x76000}
          settings_storage: {start: 0xF8000, size: 0x8000}
    firmware_sets:
      mcu:
        chip: nRF52840_xxAA
        bootloader: {file: fw/mcuboot.hex}
        application: {file: fw/app.hex, banner: 'Booting Zephyr OS build'}
        mcuboot:
          mode: swap-move
          key: keys/k.pem
          transports: [serial, udp]
          dfu_lock_timeout_ms: 5000
          builds: {update: fw/update.bin}
    boards:
      - name: vdk
        chip: nRF52840_xxAA
        probe: {backend: virtual}
        smp_udp: virtual
        roles: [mcuboot, swap-move]
        firmware: mcu
        flash_layout: l40
    """
).lstrip()
# The public half of MCUboot's root-ed25519.pem (spec §1.8: raw key d4b31ba4...).
SAMPLE_ED25519_PUB = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEA1LMbpJo63T+CXRDKfzG1Cw3ofzfMxJ8aQDpcEyD/tOA=\n"
    "-----END PUBLIC KEY-----\n"
)


def mcu_problems(tmp_path: Path, old: str = "", new: str = "", **kwargs: bool) -> list[Problem]:
    assert MCU.count(old) == 1 or not old, old
    return problems_of(write(tmp_path, MCU.replace(old, new) if old else MCU), **kwargs)


def test_mcuboot_block_resolves(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    generate_key(tmp_path / "keys" / "k.pem", "ecdsa-p256")
    board = load_farm(write(tmp_path, MCU)).board("vdk")
    spec = board.mcuboot
    assert spec is not None and board.firmware is not None and board.firmware.mcuboot is spec
    assert (spec.mode, spec.key, spec.header_size, spec.max_align, spec.write_size) == (
        "swap-move",
        tmp_path / "keys" / "k.pem",
        0x200,
        8,
        4,
    )
    assert (spec.confirm, spec.transports, spec.dfu_lock_timeout_ms) == (
        "host",
        ("serial", "udp"),
        5000,
    )
    assert spec.build("update") == tmp_path / "fw" / "update.bin"
    assert spec.build_names == ("update",)
    with pytest.raises(KeyError, match="builds: update"):
        spec.build("nope")
    assert spec.can_sign and spec.public_key().type == "ecdsa-p256"
    assert board.smp_udp == "virtual"
    geometry = spec.geometry(board.layout)
    assert (geometry.primary.start, geometry.primary.size, geometry.sector_size) == (
        0xC000,
        0x76000,
        4096,
    )
    assert geometry.secondary is not None and geometry.secondary.start == 0x82000
    assert spec.trailer(0x76000).size == 128 * 3 * 4 + 48
    hash(board)


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        (
            "      mode: swap-move",
            "      mode: swap-mov",
            16,
            "firmware_sets.mcu.mcuboot.mode",
            "'swap-scratch', 'swap-move'",
        ),
        (
            "      key: keys/k.pem",
            "      key: keys/k.pem\n      keys: x",
            18,
            "firmware_sets.mcu.mcuboot.keys",
            "did you mean 'key'?",
        ),
        (
            "      mode: swap-move",
            "      mode: direct-xip\n      downgrade_prevention: true",
            15,
            "firmware_sets.mcu.mcuboot",
            "not allow it with direct-xip",
        ),
        (
            "      mode: swap-move",
            "      mode: single-slot",
            15,
            "firmware_sets.mcu.mcuboot",
            "add serial_recovery: {wait_ms: 0}",
        ),
        (
            "      transports: [serial, udp]",
            "      transports: [serial]",
            15,
            "firmware_sets.mcu.mcuboot",
            "with one transport there is nothing to lock",
        ),
        (
            "      mode: swap-move",
            "      mode: swap-move\n      max_align: 12",
            17,
            "firmware_sets.mcu.mcuboot.max_align",
            "should be 8, 16 or 32",
        ),
        (
            "    smp_udp: virtual",
            "    smp_udp: 'localhost'",
            25,
            "boards[vdk].smp_udp",
            "not a UDP endpoint",
        ),
    ],
)
def test_mcuboot_block_errors(
    tmp_path: Path, old: str, new: str, line: int, field: str, words: str
) -> None:
    assert_problem(only(mcu_problems(tmp_path, old, new)), line, field, words)


def test_mode_without_the_slots_it_needs(tmp_path: Path) -> None:
    p = only(mcu_problems(tmp_path, "      mode: swap-move", "      mode: swap-scratch"))
    assert_problem(p, 28, "boards[vdk].flash_layout", "swap-scratch", "'mcuboot_scratch'", "Add it")
    gone = "      mcuboot_secondary: {start: 0x82000, size: 0x76000}\n"
    problems = problems_of(write(tmp_path, MCU.replace(gone, "")))
    assert (
        "needs a 'mcuboot_secondary' region (where updates are uploaded)" in only(problems).message
    )
    assert "or use mode single-slot" in problems[0].message


def test_too_many_sectors_for_the_status_area(tmp_path: Path) -> None:
    p = only(
        mcu_problems(
            tmp_path, "      mode: swap-move", "      mode: swap-move\n      max_sectors: 64"
        )
    )
    assert_problem(p, 29, "boards[vdk].flash_layout", "118 sectors", "at least 118")


def test_udp_needs_an_address_of_the_right_kind(tmp_path: Path) -> None:
    p = only(mcu_problems(tmp_path, "    smp_udp: virtual\n", ""))
    assert_problem(p, 22, "boards[vdk]", "speaks SMP over udp", "add smp_udp: virtual")
    p = only(mcu_problems(tmp_path, "    smp_udp: virtual", "    smp_udp: 127.0.0.1:1337"))
    assert_problem(p, 25, "boards[vdk].smp_udp", "assigned by the virtual farm")
    p = only(
        mcu_problems(
            tmp_path,
            "      transports: [serial, udp]\n      dfu_lock_timeout_ms: 5000\n",
            "",
        )
    )
    assert_problem(p, 23, "boards[vdk].smp_udp", "lists no udp transport")


def test_key_file_checks(tmp_path: Path) -> None:
    p = only([q for q in mcu_problems(tmp_path, check_files=True) if q.field.endswith("key")])
    assert_problem(p, 17, "firmware_sets.mcu.mcuboot.key", "key file not found", "keygen")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.pem").write_text("not a key\n")
    keys = [q for q in mcu_problems(tmp_path, check_files=True) if q.field.endswith("key")]
    assert "not a PEM private or public key" in only(keys).message
    (tmp_path / "keys" / "k.pem").write_text(SAMPLE_ED25519_PUB)
    keys = [q for q in mcu_problems(tmp_path, check_files=True) if q.field.endswith("key")]
    assert "published sample key root-ed25519.pem" in only(keys).message
    allowed = MCU.replace(
        "      key: keys/k.pem", "      key: keys/k.pem\n      allow_sample_keys: true"
    )
    farm_problems = problems_of(write(tmp_path, allowed), check_files=True)
    assert not [q for q in farm_problems if q.field.endswith("key")]
    builds = [q for q in farm_problems if "builds" in q.field]
    assert_problem(only(builds), 21, "firmware_sets.mcu.mcuboot.builds.update", "file not found")
    # A public key checks but cannot sign.
    board = load_farm(write(tmp_path, allowed)).board("vdk")
    assert board.mcuboot is not None and not board.mcuboot.can_sign


def test_rig_smp_udp(tmp_path: Path) -> None:
    """Virtual boards get their UDP port from the running farm, real ones from boards.yaml."""
    (tmp_path / "keys").mkdir()
    generate_key(tmp_path / "keys" / "k.pem", "ecdsa-p256")
    real = MCU.replace("probe: {backend: virtual}", "probe: {backend: jlink, snr: 1}").replace(
        "smp_udp: virtual", "smp_udp: 192.0.2.7:1337\n    serial: {port: /dev/ttyACM0}"
    )
    dk = load_farm(write(tmp_path, real, "real.yaml")).board("vdk")
    assert Rig(load_farm(tmp_path / "real.yaml")).smp_udp(dk) == "192.0.2.7:1337"
    farm = load_farm(write(tmp_path, MCU))
    vdk = farm.board("vdk")
    with pytest.raises(InfrastructureError, match="no virtual farm is running"):
        Rig(farm).smp_udp(vdk)
    board = VirtualBoardState("vdk", "/dev/pts/9", 1, "127.0.0.1:1", smp_udp="127.0.0.1:4242")
    state = SimState(tmp_path / "s.json", 1, 0.1, "boards.yaml", {"vdk": board})
    assert Rig(farm, state).smp_udp(vdk) == "127.0.0.1:4242"
    silent = replace(board, smp_udp=None)
    with pytest.raises(InfrastructureError, match="reports no SMP UDP port"):
        Rig(farm, replace(state, boards={"vdk": silent})).smp_udp(vdk)
    serial_only = MCU.replace("    smp_udp: virtual\n", "").replace(
        "      transports: [serial, udp]\n      dfu_lock_timeout_ms: 5000\n", ""
    )
    farm = load_farm(write(tmp_path, serial_only))
    assert Rig(farm, state).smp_udp(farm.board("vdk")) is None
