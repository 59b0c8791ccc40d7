"""`--plot FILE` on the transfer verbs: the picture a test would attach, written by the command
(MCUboot upload on the virtual farm through its real pty; a mesh DFU through a scripted root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_mcuboot_cli import Farm, cli_farm, fresh, run  # noqa: F401  (fixtures)

from dfuhil.procedures.image_sign import sign_build

PNG = b"\x89PNG\r\n\x1a\n"


def upload(farm: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str], plot: Path) -> str:
    image = tmp_path / "update.bin"
    image.write_bytes(sign_build(farm.board, "update", "1.1.0"))
    code, out = run(farm.args("mcuboot", "upload", image, "--plot", plot), capsys)
    return f"exit {code}\n{out}"


def test_mcuboot_upload_writes_its_throughput_picture(
    fresh: Farm,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    picture = tmp_path / "upload.png"
    out = upload(fresh, tmp_path, capsys, picture)
    assert out.startswith("exit 0") and f"picture: {picture}" in out, out
    assert picture.read_bytes().startswith(PNG)


def test_a_plot_into_a_missing_folder_is_refused_in_one_line(
    fresh: Farm,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = upload(fresh, tmp_path, capsys, tmp_path / "nowhere" / "u.png")
    assert out.startswith("exit 2") and "--plot" in out and "does not exist" in out, out
