"""Twister hardware maps: export then import gives the same boards back; a map written by
``west twister --generate-hardware-map`` imports with its guesses named; a map with errors is
refused with every problem located FILE:LINE, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from dfuhil.cli import main
from dfuhil.farm.loader import load_farm

FARM = """\
version: 1
probe_backend: pynrfjprog
flash_layouts:
  l52: {chip: nRF52832_xxAA, regions: {app: {start: 0x26000, size: 0x51000}}}
  l40: {chip: nRF52840_xxAA, regions: {app: {start: 0x27000, size: 0xD0000}}}
boards:
  - {name: dk-a, chip: nRF52832_xxAA, board_type: PCA10040, roles: [mesh-root, provisioning],
     probe: {backend: nrfutil, snr: 683000001},
     serial: {port: /dev/serial/by-id/usb-SEGGER_J-Link_000683000001-if00, baud: 1000000},
     flash_layout: l52}
  - {name: dk-b, chip: nRF52840_xxAA, board_type: PCA10056, probe: {snr: 683000002},
     serial: {port: /dev/ttyACM4}, flash_layout: l40}
  - {name: sim, chip: nRF52832_xxAA, probe: {backend: virtual}, flash_layout: l52}
"""


def test_export_then_import_round_trips_the_real_boards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    farm_file = tmp_path / "boards.yaml"
    farm_file.write_text(FARM)
    hwmap = tmp_path / "map.yml"
    assert main(["boards", "export-hwmap", str(farm_file), "--out", str(hwmap)]) == 0
    assert "left out sim: virtual" in capsys.readouterr().out
    entries = YAML(typ="safe").load(hwmap.read_text())
    assert entries[0] == {
        "connected": True,
        "id": "000683000001",
        "platform": "nrf52dk/nrf52832",
        "product": "J-Link",
        "runner": "nrfutil",
        "serial": "/dev/serial/by-id/usb-SEGGER_J-Link_000683000001-if00",
        "baud": 1000000,
        "notes": "dfuhil board dk-a (nRF52832_xxAA)",
        "fixtures": ["mesh-root", "provisioning"],
    }
    assert entries[1]["runner"] == "nrfjprog" and entries[1]["platform"] == "nrf52840dk/nrf52840"

    draft = tmp_path / "draft.yaml"
    assert main(["boards", "import-hwmap", str(hwmap), "--out", str(draft)]) == 0
    layouts = FARM.split("boards:\n")[0]
    text = draft.read_text().replace("flash_layout: TODO", "flash_layout: l52", 1)
    back_file = tmp_path / "back.yaml"
    back_file.write_text(layouts + text.replace("flash_layout: TODO", "flash_layout: l40"))
    back = load_farm(back_file)
    original = load_farm(farm_file)
    for name in ("dk-a", "dk-b"):
        a, b = original.board(name), back.board(name)
        assert (a.chip, a.board_type, a.probe.snr, a.probe.tool) == (
            b.chip,
            b.board_type,
            b.probe.snr,
            b.probe.tool,
        )
        assert (a.serial, a.roles) == (b.serial, b.roles)


def test_a_generated_map_imports_with_its_guesses_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hwmap = tmp_path / "map.yml"
    hwmap.write_text(
        "- connected: true\n  id: '001050946562'\n  platform: unknown\n  product: J-Link\n"
        "  runner: jlink\n  serial: /dev/ttyACM0\n"
        "- connected: false\n  id: '001050946563'\n  platform: nrf52dk/nrf52832\n"
        "  product: J-Link\n  runner: nrfjprog\n"
    )
    assert main(["boards", "import-hwmap", str(hwmap)]) == 0
    out = capsys.readouterr().out
    assert "probe: {snr: 1050946562}" in out  # runner jlink: the farm's probe_backend decides
    assert "chip: TODO" in out and "serial: {port: '/dev/ttyACM0', baud: 115200}" in out
    assert "platform 'unknown' names no DK dfuhil knows" in out
    assert "name board-1050946562" in out and "flash_layout (a map has none)" in out
    assert "# skipped [1] id 001050946563: connected: false" in out


def test_a_map_with_errors_names_every_one_by_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hwmap = tmp_path / "map.yml"
    hwmap.write_text(
        "- connected: true\n"  # 1
        "  id: J683\n"  # 2: not a serial number
        "  platform: nrf52dk/nrf52832\n"
        "  product: J-Link\n"
        "  runner: pyocd\n"  # 5: not a Nordic J-Link runner
        "- connected: yes please\n"  # 6
        "  platform: nrf52dk/nrf52832\n"  # no id
        "  product: J-Link\n"
        "  runner: nrfutil\n"
        "  baud: fast\n"  # 10
    )
    assert main(["boards", "import-hwmap", str(hwmap)]) == 2
    err = capsys.readouterr().err
    assert f"{hwmap}:2: [0].id: 'J683' is not a J-Link serial number" in err
    assert f"{hwmap}:5: [0].runner: 'pyocd'" in err
    assert f"{hwmap}:6: [1].connected: expected true or false" in err
    assert f"{hwmap}:6: [1].id: missing" in err
    assert f"{hwmap}:10: [1].baud: expected an integer" in err
    assert "Traceback" not in err


def test_a_map_that_is_not_a_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hwmap = tmp_path / "map.yml"
    hwmap.write_text("id: 1\n")
    assert main(["boards", "import-hwmap", str(hwmap)]) == 2
    assert "a hardware map is a list of entries" in capsys.readouterr().err
