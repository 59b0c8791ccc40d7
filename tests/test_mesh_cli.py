"""``dfuhil devpage`` and ``dfuhil mesh keys|genpkg|show`` through dfuhil.cli.main.

Outputs are compared with what Nordic's tools produce: the device page hex with an Intel HEX
encoding written out here from the format's definition, keys and signatures with python-ecdsa
(what nrfutil used).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import ecdsa
import pytest
from intelhex import IntelHex
from simfarm import RunningFarm, SimBoard, program_hex, running_farm
from test_devpage import SPEC_NRF52832_S132_7_2_0

from dfuhil.cli import build_parser, main

APP_START = 0x26000
APP_BYTES = bytes((i * 13 + 5) & 0xFF for i in range(2048))


def intel_hex(data: bytes, address: int, per_line: int = 16) -> str:
    """Intel HEX from its definition: type 04 upper-address records, 00 data, 01 end."""

    def record(kind: int, offset: int, payload: bytes) -> str:
        body = bytes([len(payload), offset >> 8, offset & 0xFF, kind]) + payload
        return ":" + (body + bytes([-sum(body) & 0xFF])).hex().upper()

    lines: list[str] = []
    upper = None
    for start in range(0, len(data), per_line):
        here = address + start
        if here >> 16 != upper:
            upper = here >> 16
            lines.append(record(4, 0, upper.to_bytes(2, "big")))
        lines.append(record(0, here & 0xFFFF, data[start : start + per_line]))
    lines.append(record(1, 0, b""))
    return "\n".join(lines) + "\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def app_hex(tmp_path: Path) -> Path:
    ih = IntelHex()
    ih.frombytes(APP_BYTES, offset=APP_START)
    path = tmp_path / "blinky.hex"
    ih.write_hex_file(str(path))
    return path


# --- devpage ----------------------------------------------------------------------------------


def test_devpage_defaults_write_the_spec_worked_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "devpage")
    assert code == 0
    written = tmp_path / "bin" / "device_page_nrf52832_xxAA_s132_7.2.0.hex"
    assert out.strip() == (
        "Wrote device page for nrf52832_xxAA with the s132_7.2.0 SoftDevice to "
        "bin/device_page_nrf52832_xxAA_s132_7.2.0.hex."
    )
    assert written.read_bytes() == intel_hex(SPEC_NRF52832_S132_7_2_0, 0x7F000).encode()


def test_devpage_with_config_and_case_insensitive_chip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p).get_verifying_key().to_string()
    config = tmp_path / "cfg.json"
    config.write_text(
        '{"bootloader_config": {"bootloader_id": 3, "bootloader_version": 4, "company_id": 89,'
        f' "application_id": 7, "application_version": 9, "public_key": "{key.hex()}"}}}}'
    )
    out_hex = tmp_path / "page.hex"
    code, _, _ = run(
        capsys, "devpage", "-d", "NRF52840_XXAA", "-sd", "s140_7.2.0", "-c", config, "-o", out_hex
    )
    assert code == 0
    ih = IntelHex(str(out_hex))
    assert ih.minaddr() == 0xFF000
    code, shown, _ = run(capsys, "devpage", "--show", out_hex)
    assert code == 0
    assert shown.splitlines()[0] == "device page at 0xFF000, 4096 bytes"
    assert f"ECDSA_PUBLIC_KEY  Qx {key[:32].hex()} Qy {key[32:].hex()}" in shown
    assert "bootloader id 3 version 4" in shown and "app id 0x0007 (7), app version 9" in shown
    assert "SEGMENT_APP       start 0x27000, length 0xD0000" in shown


def test_devpage_show_nrf51_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_hex = tmp_path / "p51.hex"
    assert run(capsys, "devpage", "-d", "nrf51422_xxAC", "-sd", "s130_2.0.1", "-o", out_hex)[0] == 0
    code, shown, _ = run(capsys, "devpage", "--show", out_hex)
    assert code == 0
    assert shown.splitlines()[0] == "device page at 0x3FC00, 1024 bytes"
    assert "sd 0x0087" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "nrf52999"], "--device: unknown chip 'nrf52999'"),
        (["-sd", "s999_1.0.0"], "--softdevice: unknown SoftDevice 's999_1.0.0'"),
        (["-sd", "s130_2.0.1"], "s130_2.0.1 is not a SoftDevice for nRF52832_xxAA"),
    ],
)
def test_devpage_bad_chip_or_softdevice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(capsys, "devpage", *args, "-o", tmp_path / "x.hex")
    assert code == 2
    assert message in err
    assert not (tmp_path / "x.hex").exists()


def test_devpage_bad_config_names_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(
        '{"bootloader_config": {\n"bootloader_id": 1, "bootloader_version": 1,\n'
        '"company_id": 89, "app_id": 1, "application_version": 1}}'
    )
    code, _, err = run(capsys, "devpage", "-c", config, "-o", tmp_path / "x.hex")
    assert code == 2
    assert f"{config}:3: app_id: unknown field; did you mean 'application_id'?" in err
    assert f"{config}: application_id: missing" in err


def test_devpage_show_without_a_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "devpage", "--show", tmp_path / "none.hex")
    assert code == 2 and "not found" in err
    app = tmp_path / "app.hex"
    ih = IntelHex()
    ih.frombytes(b"\x00" * 16, offset=0x26000)
    ih.write_hex_file(str(app))
    code, _, err = run(capsys, "devpage", "--show", app)
    assert code == 2
    assert f"{app}: no device page at 0x3FC00" in err  # the smallest chip holding 0x26010


SHOW_BOARD = SimBoard("devpage-52", "nRF52832_xxAA", "PCA10040", snr=682000101)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory.mktemp("devpage-farm"), [SHOW_BOARD]) as running:
        yield running


def test_devpage_show_board_reads_flash_through_the_probe(
    farm: RunningFarm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = farm.boards_file.parent / "sim-state.json"
    args = ["devpage", "--show-board", SHOW_BOARD.name]
    args += ["--boards", str(farm.boards_file), "--sim-state", str(state)]
    code, out, _ = run(capsys, *args)
    assert code == 1
    assert out.strip() == (
        f"{SHOW_BOARD.name}: no device page: 0x7F000 and the backup page 0x7E000 are erased"
    )
    page_hex = tmp_path / "page.hex"
    page_hex.write_text(intel_hex(SPEC_NRF52832_S132_7_2_0, 0x7F000))
    with farm.api(SHOW_BOARD.name) as api:
        program_hex(api, page_hex)
    code, out, _ = run(capsys, *args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{SHOW_BOARD.name} (nRF52832_xxAA):"
    assert lines[1] == "device page at 0x7F000, 4096 bytes"
    assert "+0x028 VERSION" in out
    assert "missing required entries: none" in out


# --- mesh keys --------------------------------------------------------------------------------


def test_gen_key_writes_an_nrfutil_compatible_key_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "private_key.txt"
    code, out, _ = run(capsys, "mesh", "keys", "--gen-key", path)
    assert code == 0 and out.strip() == f"Generated key at: {path}"
    first = path.read_bytes()
    sk = ecdsa.SigningKey.from_pem(first)
    assert sk.curve == ecdsa.NIST256p
    code, _, err = run(capsys, "mesh", "keys", "--gen-key", path)
    assert code == 2 and "already exists; pass --force" in err
    assert path.read_bytes() == first
    assert run(capsys, "mesh", "keys", "--gen-key", path, "--force")[0] == 0
    assert path.read_bytes() != first


def test_show_vk_matches_ecdsa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sk = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p)
    path = tmp_path / "key.pem"
    path.write_bytes(sk.to_pem())
    raw = sk.get_verifying_key().to_string()
    code, out, _ = run(capsys, "mesh", "keys", "--show-vk", "hex", path)
    assert code == 0
    assert out == f"Verification key Qx: {raw[:32].hex()}\nVerification key Qy: {raw[32:].hex()}\n"
    code, out, _ = run(capsys, "mesh", "keys", "--show-vk", "pem", path)
    assert code == 0 and out == sk.get_verifying_key().to_pem().decode()
    code, out, _ = run(capsys, "mesh", "keys", "--show-vk", "code", path)
    assert code == 0 and out.startswith(f"static uint8_t Qx[] = {{ 0x{raw[0]:02x}, ")


def test_show_vk_of_a_bad_key_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pub.pem"
    path.write_bytes(ecdsa.SigningKey.generate().get_verifying_key().to_pem())
    code, _, err = run(capsys, "mesh", "keys", "--show-vk", "hex", path)
    assert code == 2
    assert f"{path}: holds only a public key" in err and "--gen-key" in err


def test_keys_needs_an_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["mesh", "keys", str(tmp_path / "k.pem")])
    assert caught.value.code == 2
    assert "--gen-key" in capsys.readouterr().err


# --- mesh genpkg / show -------------------------------------------------------------------------


def test_genpkg_signed_then_show(
    tmp_path: Path, app_hex: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sk = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p)
    key = tmp_path / "private_key.txt"
    key.write_bytes(sk.to_pem())
    out_zip = tmp_path / "dfu.zip"
    code, out, _ = run(
        capsys,
        "mesh",
        "genpkg",
        out_zip,
        "--application",
        app_hex,
        "--company-id",
        "0x00000059",
        "--application-id",
        "1",
        "--application-version",
        "0x10",
        "--sd-req",
        "0x0101,0xCB",
        "--key-file",
        key,
        "-d",
        "nrf52832_xxAA",
        "-sd",
        "s132_7.2.0",
    )
    assert code == 0
    assert out.strip() == (
        f"Zip created at {out_zip}: application blinky.bin, 2048 bytes, company 0x00000059, "
        "app id 1, version 16, signed"
    )
    with zipfile.ZipFile(out_zip) as archive:
        dat, image = archive.read("blinky.dat"), archive.read("blinky.bin")
    assert image == APP_BYTES
    unsigned = bytes.fromhex("04 FFFFFFFF 00080000 00 59000000 0100 10000000")
    assert dat[:9] + b"\x00" + dat[74:] == unsigned
    assert sk.get_verifying_key().verify(dat[10:74], unsigned + image, hashfunc=hashlib.sha256)
    code, shown, _ = run(capsys, "mesh", "show", out_zip)
    assert code == 0
    assert "segments:    132 (128 data + 4 signature)" in shown
    assert "sd_req:      0x0101, 0x00CB" in shown
    assert f"sha256:      {hashlib.sha256(APP_BYTES).hexdigest()}" in shown


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (
            ["--company-id", "89x", "--application-id", "010", "--application-version", "1"],
            ["--company-id: '89x' is not a decimal", "--application-id: '010'", "octal"],
        ),
        (
            ["--company-id", "0x100000000", "--application-id", "1", "--application-version", "1"],
            ["--company-id: 4294967296 does not fit in 32 bits"],
        ),
        (
            [
                "--company-id",
                "1",
                "--application-id",
                "1",
                "--application-version",
                "1",
                "--sd-req",
                "0x101,zz",
            ],
            ["--sd-req: 'zz' is not a decimal or 0x number"],
        ),
        (
            [
                "--company-id",
                "1",
                "--application-id",
                "1",
                "--application-version",
                "1",
                "-d",
                "nrf52840_xxAA",
            ],
            ["give -d CHIP and -sd SOFTDEVICE together"],
        ),
        (
            [
                "--company-id",
                "1",
                "--application-id",
                "1",
                "--application-version",
                "1",
                "-d",
                "nrf52840_xxAA",
                "-sd",
                "s140_7.2.0",
            ],
            ["blinky.hex: data at 0x26000-0x267FF lies outside the application segment 0x27000"],
        ),
    ],
)
def test_genpkg_bad_input_is_exit_2_naming_the_option(
    tmp_path: Path,
    app_hex: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    messages: list[str],
) -> None:
    out_zip = tmp_path / "x.zip"
    code, _, err = run(capsys, "mesh", "genpkg", out_zip, "--application", app_hex, *args)
    assert code == 2
    for message in messages:
        assert message in err
    assert not out_zip.exists()


def test_genpkg_with_an_rsa_key_is_refused(
    tmp_path: Path, app_hex: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = tmp_path / "rsa.pem"
    key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    code, _, err = run(
        capsys, "mesh", "genpkg", tmp_path / "x.zip", "--application", app_hex,
        "--company-id", "1", "--application-id", "1", "--application-version", "1",
        "--key-file", key,
    )  # fmt: skip
    assert code == 2
    assert f"{key}: holds a key of type RSA" in err


def test_show_of_a_broken_zip_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 not really")
    code, _, err = run(capsys, "mesh", "show", path)
    assert code == 2
    assert f"{path}: not a zip file or truncated" in err


def test_mesh_verbs_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["mesh", "show", "x.zip"])
    assert args.mesh_command == "show"
    for verb in ("keys", "genpkg"):
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(["mesh", verb, "--help"])
        assert caught.value.code == 0
