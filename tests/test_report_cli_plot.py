"""`--plot FILE` on the transfer verbs: the picture a test would attach, written by the command
(MCUboot upload on the virtual farm through its real pty; a mesh DFU through a scripted root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_mcuboot_cli import Farm, cli_farm, fresh, run  # noqa: F401  (fixtures)

from dfuhil.procedures.image_sign import sign_build

PNG = b"\x89PNG\r\n\x1a\n"


def test_mcuboot_upload_writes_its_throughput_picture(
    fresh: Farm,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "update.bin"
    image.write_bytes(sign_build(fresh.board, "update", "1.1.0"))
    picture = tmp_path / "upload.png"
    code, out = run(fresh.args("mcuboot", "upload", image, "--plot", picture), capsys)
    assert code == 0, out
    assert f"picture: {picture}" in out
    assert picture.read_bytes().startswith(PNG)


def test_a_plot_into_a_missing_folder_is_refused_in_one_line(
    fresh: Farm,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "update.bin"
    image.write_bytes(sign_build(fresh.board, "update", "1.1.0"))
    code, out = run(
        fresh.args("mcuboot", "upload", image, "--plot", tmp_path / "nowhere" / "u.png"), capsys
    )
    assert code == 2, out
    assert "--plot" in out and "does not exist" in out
