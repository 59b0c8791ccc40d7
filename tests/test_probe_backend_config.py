"""boards.yaml's probe backends: nrfutil, pynrfjprog (or its former name jlink), virtual; the
farm-wide probe_backend default; a J-Link Remote Server address; allow_recover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfuhil.cli import main
from dfuhil.errors import InputError, Problem
from dfuhil.farm.loader import load_farm

HEAD = """\
version: 1
{top}flash_layouts:
  l52:
    chip: nRF52832_xxAA
    regions:
      app: {{start: 0x26000, size: 0x51000}}
boards:
  - name: dk
    chip: nRF52832_xxAA
    probe: {probe}
    serial: {{port: /dev/ttyACM0}}
    flash_layout: l52
"""


def farm_file(tmp_path: Path, probe: str, top: str = "") -> Path:
    path = tmp_path / "boards.yaml"
    path.write_text(HEAD.format(probe=probe, top=top), encoding="utf-8")
    return path


def problems(path: Path) -> list[Problem]:
    with pytest.raises(InputError) as info:
        load_farm(path)
    found: list[Problem] = info.value.problems
    return found


def test_nrfutil_board_with_remote_jlink_server(tmp_path: Path) -> None:
    farm = load_farm(
        farm_file(tmp_path, "{backend: nrfutil, snr: 683000001, remote: 192.0.2.7:19021}")
    )
    probe = farm.board("dk").probe
    assert (probe.tool, probe.kind, probe.chosen) == ("nrfutil", "jlink", "board")
    assert (probe.ip, probe.port, probe.remote) == ("192.0.2.7", 19021, "192.0.2.7:19021")
    assert str(probe) == "nrfutil 683000001 @192.0.2.7:19021"


def test_jlink_is_pynrfjprogs_former_name(tmp_path: Path) -> None:
    probe = load_farm(farm_file(tmp_path, "{backend: jlink, snr: 5}")).board("dk").probe
    assert (probe.tool, probe.kind) == ("pynrfjprog", "jlink")


def test_farm_default_applies_to_boards_without_a_backend(tmp_path: Path) -> None:
    path = farm_file(tmp_path, "{snr: 5}", top="probe_backend: pynrfjprog\n")
    probe = load_farm(path).board("dk").probe
    assert (probe.backend, probe.chosen) == ("pynrfjprog", "farm")
    assert str(probe) == "pynrfjprog (farm) 5"


@pytest.mark.parametrize("on_path", [True, False])
def test_auto_default_is_nrfutil_when_it_is_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_path: bool
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if on_path:
        exe = bin_dir / "nrfutil"
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    probe = load_farm(farm_file(tmp_path, "{snr: 5}")).board("dk").probe
    assert (probe.backend, probe.chosen) == ("nrfutil" if on_path else "pynrfjprog", "auto")


def test_unknown_backend_is_located(tmp_path: Path) -> None:
    (problem,) = problems(farm_file(tmp_path, "{backend: nrfjprog, snr: 5}"))
    assert (problem.line, problem.field) == (10, "boards[dk].probe.backend")
    for word in ("'nrfutil'", "'pynrfjprog'", "'virtual'"):
        assert word in problem.message


def test_unknown_farm_default_is_located(tmp_path: Path) -> None:
    (problem,) = problems(farm_file(tmp_path, "{snr: 5}", top="probe_backend: jlink\n"))
    assert (problem.line, problem.field) == (2, "probe_backend")
    assert "'auto'" in problem.message


def test_bad_remote_address(tmp_path: Path) -> None:
    (problem,) = problems(farm_file(tmp_path, "{backend: nrfutil, snr: 5, remote: 'h:99999'}"))
    assert problem.field == "boards[dk].probe.remote"
    assert "HOST:PORT" in problem.message


def test_remote_and_ip_together(tmp_path: Path) -> None:
    (problem,) = problems(
        farm_file(tmp_path, "{backend: nrfutil, snr: 5, ip: 192.0.2.1, remote: 'h:1'}")
    )
    assert problem.field == "boards[dk].probe" and "not both" in problem.message


def test_nrfutil_without_snr_names_nrfutil_device_list(tmp_path: Path) -> None:
    (problem,) = problems(farm_file(tmp_path, "{backend: nrfutil}"))
    assert problem.field == "boards[dk].probe.snr"
    assert "nrfutil device list" in problem.message


def test_boards_list_shows_backend_and_where_it_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = farm_file(tmp_path, "{snr: 5, allow_recover: true}", top="probe_backend: nrfutil\n")
    assert main(["boards", "list", str(path), "--json"]) == 0
    (board,) = json.loads(capsys.readouterr().out)
    assert board["probe"]["backend"] == "nrfutil"
    assert board["probe"]["chosen"] == "farm"
    assert board["probe"]["allow_recover"] is True
    assert main(["boards", "list", str(path)]) == 0
    assert "nrfutil (farm) 5" in capsys.readouterr().out
