"""`dfuhil image keygen|sign|show|check` at the command line, and against imgtool's own CLI.

Images signed by `imgtool sign` must read the same in dfuhil as dfuhil's own, and dfuhil's
must pass `imgtool verify` and `imgtool dumpinfo`. With Ed25519 (deterministic signatures) the
two signers must even produce the same bytes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from intelhex import IntelHex

from dfuhil.cli import main
from dfuhil.formats.mcuboot import TlvType, parse_image

BIN = Path(sys.executable).parent
IMGTOOL = str(BIN / "imgtool")
BODY = bytes((i * 7) & 0xFF for i in range(6000))
SAMPLE_ED25519_HASH = bytes.fromhex(
    "c1907fa4eac7fae3840a78902b6f0710b037e9968e5c6274a12a28790c7d4e3c"
)

FARM = textwrap.dedent(
    """
    version: 1
    flash_layouts:
      l:
        chip: nRF52840_xxAA
        regions:
          mcuboot: {start: 0x0, size: 0xC000}
          mcuboot_primary: {start: 0xC000, size: 0x20000}
          mcuboot_secondary: {start: 0x2C000, size: 0x20000}
    firmware_sets:
      move:
        chip: nRF52840_xxAA
        mcuboot: {mode: swap-move, key: p256.pem}
      xip:
        chip: nRF52840_xxAA
        mcuboot: {mode: direct-xip, key: ed.pem}
      checkonly:
        chip: nRF52840_xxAA
        mcuboot: {mode: swap-move, key: p256.pub.pem}
    boards:
      - {name: move, chip: nRF52840_xxAA, probe: {backend: virtual}, firmware: move,
         flash_layout: l}
      - {name: xip, chip: nRF52840_xxAA, probe: {backend: virtual}, firmware: xip,
         flash_layout: l}
      - {name: checkonly, chip: nRF52840_xxAA, probe: {backend: virtual}, firmware: checkonly,
         flash_layout: l}
    """
).lstrip()


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def imgtool(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMGTOOL, *(str(a) for a in argv)], capture_output=True, text=True, check=False
    )


@pytest.fixture
def farm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A farm file in the test's directory (the working directory too), keys and a body."""
    monkeypatch.chdir(tmp_path)
    assert (
        run(
            capsys,
            "image",
            "keygen",
            "-k",
            "p256.pem",
            "-t",
            "ecdsa-p256",
            "--public",
            "p256.pub.pem",
        )[0]
        == 0
    )
    assert run(capsys, "image", "keygen", "-k", "ed.pem", "-t", "ed25519")[0] == 0
    (tmp_path / "boards.yaml").write_text(FARM)
    (tmp_path / "app.bin").write_bytes(BODY)
    return tmp_path


def test_keygen_writes_keys_imgtool_reads_and_never_overwrites(
    farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "image", "keygen", "-k", "r.pem", "-t", "rsa-2048")
    assert code == 0 and "(rsa-2048 private key); key hash" in out
    assert imgtool("keyinfo", "-k", "r.pem").stdout.strip().lower() == "private"
    assert "rsa_pub_key" in imgtool("getpub", "-k", "r.pem").stdout
    before = (farm / "ed.pem").read_bytes()
    code, out, err = run(capsys, "image", "keygen", "-k", "ed.pem", "-t", "ed25519")
    assert code == 2 and "refusing to overwrite" in err and "Traceback" not in err
    assert (farm / "ed.pem").read_bytes() == before


def test_ed25519_signatures_are_byte_identical_to_imgtool(
    farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["-H", "0x200", "-S", "0x20000", "--align", "4", "-v", "1.2.3+4"]
    for extra in ([], ["--pad"], ["--confirm"]):
        theirs = imgtool(
            "sign", "-k", "ed.pem", "--pad-header", *options, *extra, "app.bin", "t.bin"
        )
        assert theirs.returncode == 0, theirs.stderr
        code, out, _ = run(
            capsys, "image", "sign", "-k", "ed.pem", *options, *extra, "app.bin", "d.bin"
        )
        assert code == 0 and "image hash" in out and "file SHA256" in out
        assert (farm / "d.bin").read_bytes() == (farm / "t.bin").read_bytes(), extra


def test_dfuhil_images_pass_imgtool_verify_and_dumpinfo(
    farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "image", "sign", "--board", "move", "-v", "2.0.1", "--confirm", "app.bin", "s.bin"
    )
    assert code == 0, out
    verified = imgtool("verify", "-k", "p256.pem", "s.bin")
    assert verified.returncode == 0 and "correctly validated" in verified.stdout
    assert "Image version: 2.0.1+0" in verified.stdout
    dump = imgtool("dumpinfo", "s.bin")
    assert dump.returncode == 0, dump.stderr
    assert "hdr_size:           0x200" in dump.stdout and "KEYHASH" in dump.stdout
    assert "image_ok:    SET (0x1)" in dump.stdout  # --confirm
    assert "0x77 0xc2 0x95 0xf3" in dump.stdout  # the trailer magic
    other = imgtool("verify", "-k", "ed.pem", "s.bin")
    assert "correctly validated" not in other.stdout


def test_imgtool_signed_images_read_the_same(
    farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = imgtool(
        "sign",
        "-k",
        "p256.pem",
        "-H",
        "0x200",
        "--pad-header",
        "-S",
        "0x20000",
        "--align",
        "4",
        "-v",
        "1.4.0",
        "app.bin",
        "t.bin",
    )
    assert signed.returncode == 0, signed.stderr
    assert (
        run(capsys, "image", "sign", "--board", "move", "-v", "1.4.0", "app.bin", "d.bin")[0] == 0
    )
    views = {}
    for name in ("t.bin", "d.bin"):
        code, out, _ = run(capsys, "image", "show", name, "--board", "move")
        assert code == 0
        # ECDSA signatures are random: everything but the signature, file hash and name agree.
        views[name] = [
            line
            for line in out.splitlines()
            if not line.startswith(("image ", "file SHA256", "  unprotected ECDSA_SIG"))
        ]
        assert "signature valid (the key of board move)" in out
        code, out, _ = run(capsys, "image", "check", name, "--board", "move")
        assert code == 0 and out.splitlines()[-1].startswith("OK: move")
    assert views["t.bin"] == views["d.bin"]
    # Same body, header and version: the same image hash, whoever signed.
    tb, db = parse_image((farm / "t.bin").read_bytes()), parse_image((farm / "d.bin").read_bytes())
    assert tb.image_hash == db.image_hash and tb.raw != db.raw


def test_show_labels_both_hashes_keys_and_the_trailer(
    farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "image", "sign", "--board", "move", "-v", "1.0.0+7", "--pad", "app.bin", "s.bin")
    data = (farm / "s.bin").read_bytes()
    image = parse_image(data)
    code, out, _ = run(capsys, "image", "show", "s.bin")
    assert code == 0
    assert "version      1.0.0+7 (SMP shows 1.0.0.7)" in out
    assert f"image hash   {image.image_hash.hex()}" in out  # type: ignore[union-attr]
    assert "what test/confirm take" in out and "what an SMP upload sends as `sha`" in out
    assert "not one of MCUboot's sample keys" in out
    assert "padded to 0x20000: magic good, image_ok unset" in out and "request: test" in out
    assert "signature not checked" in out
    # A KEYHASH equal to MCUboot's root-ed25519.pem: named as the sample key it is.
    keyhash = image.find(TlvType.KEYHASH)
    assert keyhash is not None
    at = keyhash.offset + 4
    (farm / "forged.bin").write_bytes(data[:at] + SAMPLE_ED25519_HASH + data[at + 32 :])
    code, out, _ = run(capsys, "image", "show", "forged.bin", "-k", "p256.pem")
    assert "= MCUboot's sample key root-ed25519.pem" in out
    assert "MCUboot's published sample key root-ed25519.pem: anyone can sign with it" in out
    assert "signature INVALID: signed with MCUboot's sample key root-ed25519.pem" in out


def test_hex_in_and_out(farm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = IntelHex()
    body.frombytes(BODY, offset=0xC200)  # a build linked behind the header
    body.write_hex_file("app.hex")
    code, out, _ = run(
        capsys,
        "image",
        "sign",
        "--board",
        "move",
        "--slot",
        "primary",
        "-v",
        "1.0.0",
        "app.hex",
        "s.hex",
    )
    assert code == 0 and "wrote s.hex at 0xC000" in out
    ih = IntelHex("s.hex")
    assert ih.minaddr() == 0xC000
    code, out, _ = run(capsys, "image", "show", "s.hex")
    assert ", at 0xC000 in the hex" in out
    # The hex sits in the primary slot: right for --slot primary, wrong for an update.
    assert run(capsys, "image", "check", "s.hex", "--board", "move", "--slot", "primary")[0] == 0
    code, out, _ = run(capsys, "image", "check", "s.hex", "--board", "move")
    assert code == 2 and "the .hex places the image at 0xC000" in out
    # A padded hex keeps only the image and its trailer, not 100 KiB of 0xFF.
    run(capsys, "image", "sign", "--board", "move", "-v", "1.0.0", "--pad", "app.bin", "p.hex")
    padded = IntelHex("p.hex")
    assert padded.minaddr() == 0x2C000 and padded.maxaddr() == 0x2C000 + 0x20000 - 1
    assert len(padded) < 8000
    verified = imgtool("verify", "-k", "p256.pem", "s.hex")
    assert "correctly validated" in verified.stdout


def test_check_refuses_with_every_failed_rule(
    farm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(
        capsys,
        "image",
        "sign",
        "-k",
        "ed.pem",
        "-H",
        "0x100",
        "-S",
        "0x20000",
        "-v",
        "1.0.0",
        "app.bin",
        "bad.bin",
    )
    code, out, err = run(capsys, "image", "check", "bad.bin", "--board", "move")
    assert code == 2 and err == ""
    lines = out.splitlines()
    assert (
        lines[0]
        == "bad.bin on board move (MCUboot swap-move, slot mcuboot_secondary 0x2C000..0x4C000):"
    )
    assert any(line.startswith("  FAIL  header size") for line in lines)
    assert any(line.startswith("  FAIL  signature") for line in lines)
    assert any("fix: sign with --header-size 0x200" in line for line in lines)
    assert lines[-1] == "REFUSED: 2 of 8 rules failed; nothing was sent to the board"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sign", "--board", "xip", "-v", "1.0.0", "app.bin", "o.bin"], "pass --slot primary"),
        (
            ["sign", "--board", "move", "-H", "0x100", "-v", "1.0.0", "app.bin", "o.bin"],
            "--header-size 256 contradicts board move (header_size 0x200",
        ),
        (
            ["sign", "-k", "ed.pem", "-v", "1.0.0", "app.bin", "o.bin"],
            "--header-size and --slot-size",
        ),
        (["sign", "--board", "checkonly", "-v", "1.0.0", "app.bin", "o.bin"], "no private key"),
        (["sign", "--board", "move", "-v", "1.x", "app.bin", "o.bin"], "'1.x' is not a version"),
        (
            [
                "sign",
                "-k",
                "p256.pub.pem",
                "-H",
                "0x200",
                "-S",
                "0x20000",
                "-v",
                "1.0.0",
                "app.bin",
                "o.bin",
            ],
            "a public key cannot sign",
        ),
        (["sign", "--board", "move", "-v", "1.0.0", "nope.bin", "o.bin"], "image file not found"),
        (["sign", "--board", "nope", "-v", "1.0.0", "app.bin", "o.bin"], "no board named 'nope'"),
        (["show", "app.bin"], "image header magic is 0x150E0700, not 0x96F3B83D"),
        (["check", "app.bin", "--board", "move", "--current", "x"], "is not a version"),
    ],
)
def test_bad_input_is_a_clear_error(
    farm: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    code, _, err = run(capsys, "image", *argv)
    assert code == 2 and words in err, err
    assert "Traceback" not in err and not (farm / "o.bin").exists()


def test_a_truncated_file_as_a_subprocess(farm: Path) -> None:
    """The installed entry point: one line, exit 2, no traceback."""
    subprocess.run(
        [
            str(BIN / "dfuhil"),
            "image",
            "sign",
            "--board",
            "move",
            "-v",
            "1.0.0",
            "app.bin",
            "s.bin",
        ],
        check=True,
        capture_output=True,
    )
    (farm / "t.bin").write_bytes((farm / "s.bin").read_bytes()[:3000])
    done = subprocess.run(
        [str(BIN / "dfuhil"), "image", "show", "t.bin"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("dfuhil: t.bin: ") and "truncated" in done.stderr
    assert "Traceback" not in done.stderr
