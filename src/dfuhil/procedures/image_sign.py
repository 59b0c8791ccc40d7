"""Sign MCUboot images and make keys, through imgtool's own Python API.

dfuhil never re-implements signing: the bytes a board receives are the bytes ``imgtool sign``
would write, so an image signed here passes ``imgtool verify`` and a real MCUboot alike. What
this module adds is the board: with :func:`board_sign_params` the header size, slot size, write
alignment, trailer estimate and ROM_FIXED address come from boards.yaml instead of a command
line copied from a wiki, and every imgtool failure becomes an :class:`InputError` that says
what to change.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from imgtool import image as imgtool_image
from imgtool import keys as imgtool_keys
from imgtool.version import decode_version
from intelhex import IntelHex

from dfuhil.errors import InputError, Problem
from dfuhil.farm.model import BoardSpec, Region
from dfuhil.formats.mcuboot import ImageVersion, PublicKey, parse_image
from dfuhil.formats.mcuboot_trailer import Mode, TrailerLayout, field_write
from dfuhil.procedures.image_check import SlotName, max_image_size, target_slot

KEY_KINDS = ("ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072")
_GENERATORS: dict[str, Any] = {
    "ecdsa-p256": imgtool_keys.ECDSA256P1.generate,
    "ecdsa-p384": imgtool_keys.ECDSA384P1.generate,
    "ed25519": imgtool_keys.Ed25519.generate,
    "rsa-2048": lambda: imgtool_keys.RSA.generate(key_size=2048),
    "rsa-3072": lambda: imgtool_keys.RSA.generate(key_size=3072),
}
# Modes without a swap status area: imgtool's --overwrite-only trailer estimate fits them.
NO_STATUS_MODES: tuple[Mode, ...] = (
    "overwrite-only",
    "direct-xip",
    "direct-xip-revert",
    "single-slot",
)


@dataclass(frozen=True)
class SignParams:
    """imgtool's sign options that describe the target, not the image.

    ``slot_size`` 0 skips imgtool's fit check (and padding is then impossible).
    ``max_image_size`` is the board's own budget (mode rules such as swap-move's spare
    sector), checked before imgtool runs. ``mode`` lets ``confirm`` set image_ok in modes where
    imgtool's overwrite-only estimate would drop it.
    """

    header_size: int = 0x200
    slot_size: int = 0
    align: int = 4  # imgtool --align: the flash write size
    max_align: int = 8
    max_sectors: int = 128
    overwrite_only: bool = False
    rom_fixed: int | None = None
    max_image_size: int | None = None
    mode: Mode | None = None
    slot: Region | None = None  # the slot the image is meant for (where a .hex is placed)


def _fail(message: str, source: str = "", field: str = "") -> InputError:
    return InputError(Problem(source, None, field, message))


def board_sign_params(board: BoardSpec, slot: SlotName | None = None) -> SignParams:
    """Sign options for ``board`` from boards.yaml.

    Direct-xip images are linked for one slot: ``slot`` is required there and becomes the
    ROM_FIXED load address MCUboot checks. Elsewhere ``slot`` only picks the size to fit.
    """
    spec = board.mcuboot
    if spec is None:
        raise _fail(
            f"board {board.name} has no MCUboot (its firmware set has no mcuboot: block); "
            "pass the sign options (--header-size, --slot-size, ...) yourself"
        )
    xip = spec.mode in ("direct-xip", "direct-xip-revert")
    if xip and slot is None:
        raise _fail(
            f"board {board.name} runs {spec.mode}: an image is linked for one slot and MCUboot "
            "checks its ROM_FIXED address; pass --slot primary or --slot secondary"
        )
    region = target_slot(spec, board, slot)
    return SignParams(
        header_size=spec.header_size,
        slot_size=region.size,
        align=spec.write_size,
        max_align=spec.max_align,
        max_sectors=spec.max_sectors,
        overwrite_only=spec.mode in NO_STATUS_MODES,
        rom_fixed=region.start if xip else None,
        max_image_size=max_image_size(spec, board, region),
        mode=spec.mode,
        slot=region,
    )


def imgtool_version(version: str | ImageVersion) -> Any:
    """imgtool's SemiSemVersion, after dfuhil's own check (which explains bad input better)."""
    parsed = version if isinstance(version, ImageVersion) else ImageVersion.parse(str(version))
    text = f"{parsed.major}.{parsed.minor}.{parsed.revision}+{parsed.build}"
    return decode_version(text)


def load_signing_key(key_path: Path) -> Any:
    """imgtool's key object for a private PEM; public or unreadable keys are refused."""
    try:
        key = imgtool_keys.load(str(key_path))
    except FileNotFoundError:
        raise _fail("key file not found", str(key_path)) from None
    except Exception as exc:  # imgtool raises bare Exception for unsupported keys
        raise _fail(f"not a key imgtool can sign with ({exc})", str(key_path)) from None
    if key is None:
        raise _fail("the key is password-protected; give an unencrypted PEM", str(key_path))
    if not (hasattr(key, "sign") or hasattr(key, "sign_digest")):
        raise _fail(
            "a public key cannot sign; give the private key (imgtool getpub made this one)",
            str(key_path),
        )
    return key


def sign_image(
    body: bytes,
    key_path: Path,
    version: str | ImageVersion,
    *,
    params: SignParams | None = None,
    pad: bool = False,
    confirm: bool = False,
    pad_header: bool | None = None,
    non_bootable: bool = False,
    security_counter: int | None = None,
    source: str = "image",
) -> bytes:
    """``imgtool sign`` of ``body`` with ``key_path``: the signed image as bytes.

    ``pad_header`` None: prepend the header room unless ``body`` already starts with
    ``header_size`` zero bytes (a Zephyr build reserves it). ``pad`` pads to the slot size and
    writes the trailer magic (a TEST request in a secondary slot); ``confirm`` also sets
    image_ok (a permanent request, or an already confirmed primary image).
    """
    p = params or SignParams()
    if (pad or confirm) and not p.slot_size:
        raise _fail("padding needs the slot size; pass --slot-size or --board", source)
    if pad_header is None:
        pad_header = any(body[: p.header_size]) or len(body) < p.header_size
    size_estimate = len(body) + (p.header_size if pad_header else 0)
    if p.max_image_size is not None and size_estimate > p.max_image_size:
        raise _fail(
            f"the image would be at least 0x{size_estimate:X} bytes ({size_estimate}) before "
            f"its TLVs, but the board's slot takes at most 0x{p.max_image_size:X} "
            f"({p.max_image_size}) in {p.mode}; shrink the build or enlarge the slots",
            source,
        )
    key = load_signing_key(key_path)
    try:
        image = imgtool_image.Image(
            version=imgtool_version(version),
            header_size=p.header_size,
            pad_header=pad_header,
            pad=pad or confirm,
            confirm=confirm,
            align=p.align,
            slot_size=p.slot_size,
            max_sectors=p.max_sectors,
            overwrite_only=p.overwrite_only,
            rom_fixed=p.rom_fixed,
            max_align=p.max_align,
            security_counter=security_counter,
            non_bootable=non_bootable,
        )
        signed = _run_imgtool(image, body, key)
    except click.ClickException as exc:
        raise _fail(f"imgtool refused to sign: {exc.format_message()}", source) from None
    except ValueError as exc:
        raise _fail(f"imgtool refused to sign: {exc}", source) from None
    if p.max_image_size is not None:
        size = parse_image(signed, source=source).size
        if size > p.max_image_size:
            raise _fail(
                f"the signed image is 0x{size:X} bytes ({size}), but the board's slot takes at "
                f"most 0x{p.max_image_size:X} ({p.max_image_size}) in {p.mode} (trailer"
                f"{' and the spare move sector' if p.mode == 'swap-move' else ''} excluded); "
                "shrink the build or enlarge the slots",
                source,
            )
    if confirm and p.overwrite_only and p.mode not in (None, "overwrite-only"):
        # imgtool writes no image_ok with its overwrite-only estimate; these modes read it.
        layout = TrailerLayout(len(signed), max_align=p.max_align, status_records=0)
        offset, flag = field_write(layout, "image_ok", 0x01)
        signed = signed[:offset] + flag + signed[offset + len(flag) :]
    return signed


def _run_imgtool(image: Any, body: bytes, key: Any) -> bytes:
    """imgtool works on files and prints to stdout: give it a private temp dir and silence."""
    with tempfile.TemporaryDirectory(prefix="dfuhil-sign-") as tmp:
        infile, outfile = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        infile.write_bytes(body)
        with contextlib.redirect_stdout(io.StringIO()):
            image.load(str(infile))
            image.create(key, "hash", None)
            image.save(str(outfile))
        return outfile.read_bytes()


def sign_for_board(
    body: bytes,
    board: BoardSpec,
    version: str | ImageVersion,
    *,
    key_path: Path | None = None,
    slot: SlotName | None = None,
    pad: bool = False,
    confirm: bool = False,
    non_bootable: bool = False,
) -> bytes:
    """Sign ``body`` for ``board`` with the key its MCUboot trusts (or ``key_path``)."""
    params = board_sign_params(board, slot)
    spec = board.mcuboot
    assert spec is not None
    if key_path is None:
        if not spec.can_sign:
            raise _fail(
                f"board {board.name}'s key {spec.key} is a public key: dfuhil can check images "
                "with it but not sign; pass the private key"
            )
        key_path = spec.key
    return sign_image(
        body,
        key_path,
        version,
        params=params,
        pad=pad,
        confirm=confirm,
        non_bootable=non_bootable,
        source=f"image for {board.name}",
    )


def sign_build(
    board: BoardSpec,
    build: str,
    version: str | ImageVersion,
    **options: Any,
) -> bytes:
    """Sign the board's unsigned build ``build`` (boards.yaml ``mcuboot.builds``)."""
    spec = board.mcuboot
    if spec is None:
        raise _fail(f"board {board.name} has no MCUboot builds (no mcuboot: block)")
    try:
        path = spec.build(build)
    except KeyError as exc:
        raise _fail(str(exc.args[0]), field=f"{board.name}.mcuboot.builds") from None
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read build: {exc.strerror}", str(path)) from None
    return sign_for_board(body, board, version, **options)


def image_hex(signed: bytes, address: int) -> IntelHex:
    """``signed`` placed at ``address``; of a padded image only the image and its trailer
    (the erased gap between them stays out of the file, as imgtool's own .hex output)."""
    image = parse_image(signed)
    ih = IntelHex()
    ih.frombytes(signed[: image.size], offset=address)
    tail = signed[image.size :]
    first = next((i for i, b in enumerate(tail) if b != 0xFF), None)
    if first is not None:
        start = image.size + first - first % 4
        ih.frombytes(signed[start:], offset=address + start)
    return ih


# --- keys -----------------------------------------------------------------------------------


def generate_key(path: Path, kind: str, *, public: Path | None = None) -> PublicKey:
    """``imgtool keygen``: a new private key PEM at ``path`` (never overwrites a file)."""
    if kind not in _GENERATORS:
        raise _fail(f"unknown key type {kind!r}; use one of {', '.join(KEY_KINDS)}")
    for target in (path, public):
        if target is not None and target.exists():
            raise _fail(
                "exists; refusing to overwrite a key (a lost signing key bricks DFU for every "
                "board that trusts it). Choose another name or move the file away",
                str(target),
            )
    key = _GENERATORS[kind]()
    path.parent.mkdir(parents=True, exist_ok=True)
    key.export_private(str(path))
    if public is not None:
        key.export_public(str(public))
    return PublicKey.from_pem(path.read_bytes(), source=str(path))
