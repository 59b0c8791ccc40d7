"""`--plot FILE` on the transfer verbs: the picture a test would attach, written by the command
(MCUboot upload on the virtual farm through its real pty; a mesh DFU through a scripted root)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_mcuboot_cli import Farm, cli_farm, fresh, run  # noqa: F401  (fixtures)
from test_mesh_transfer import (  # noqa: F401  (fixtures)
    END_SUCCESS,
    RAMPDOWN_S,
    ROLE_TARGET,
    SCALE,
    Device,
    Script,
    Wire,
    bank_available,
    dfu_event,
    unsigned_package,
    wire,
)

from dfuhil.formats.meshpkg import MeshPackage
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


def test_mesh_dfu_writes_its_progress_picture(
    wire: Wire,  # noqa: F811
    unsigned_package: MeshPackage,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    zip_path = tmp_path / "app.zip"
    unsigned_package.write(zip_path)
    picture = tmp_path / "dfu.png"
    # A serial target that ends its DFU with SUCCESS, so the command exits 0 on the truth.
    script = Script(
        started_as=ROLE_TARGET,
        after_last=[
            (RAMPDOWN_S + 0.5, dfu_event(0xA3, ROLE_TARGET, end=END_SUCCESS)),
            (RAMPDOWN_S + 0.6, bank_available()),
        ],
    )
    device = Device(wire.master, script)
    try:
        code, out = run(
            [
                *("mesh", "dfu", "-pkg", str(zip_path), "-p", wire.path, "-b", "115200"),
                *("--pacing", "fixed", "-i", "0", "--time-scale", str(SCALE)),
                *("--frame-log", str(tmp_path / "frames.log"), "--plot", str(picture)),
            ],
            capsys,
        )
    finally:
        device.stop()
    assert code == 0, out
    assert f"picture: {picture}" in out
    assert picture.read_bytes().startswith(PNG)
