"""``dfuhil image keygen|sign|show|check``: MCUboot images at the bench, the board in mind.

``sign`` is ``imgtool sign`` (its own library) with the board's settings filled in from
boards.yaml; ``show`` explains an image, including the two hashes people mix up; ``check`` says
whether a board's MCUboot would boot an image, rule by rule, before anything is uploaded.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from dfuhil.errors import InputError, Problem
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import BoardSpec
from dfuhil.formats.mcuboot import (
    SAMPLE_KEY_HASHES,
    ImageFormatError,
    ImageVersion,
    KeyFileError,
    McubootImage,
    PublicKey,
    TlvType,
    load_public_key,
    parse_image,
    verify_signature,
)
from dfuhil.formats.mcuboot_trailer import (
    MAGIC_ALIGN8,
    Flag,
    Magic,
    SwapType,
    TrailerLayout,
    read_trailer,
    trailer_magic,
)
from dfuhil.procedures.image_check import ImageFile, check_image, read_image_file
from dfuhil.procedures.image_sign import (
    KEY_KINDS,
    SignParams,
    board_sign_params,
    generate_key,
    image_hex,
    sign_image,
)

DEFAULT_BOARDS = Path("boards.yaml")


def _number(text: str) -> int:
    """``0x200`` or ``512``, for argparse."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0x200)") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``image`` with ``keygen``, ``sign``, ``show`` and ``check``."""
    image = subparsers.add_parser("image", help="MCUboot images: keys, sign, show, check")
    verbs = image.add_subparsers(dest="image_command", metavar="VERB", required=True)

    keygen = verbs.add_parser("keygen", help="make a signing key (imgtool keygen)")
    keygen.add_argument("-k", "--key", type=Path, required=True, metavar="FILE.pem")
    keygen.add_argument("-t", "--type", required=True, choices=KEY_KINDS)
    keygen.add_argument("--public", type=Path, metavar="FILE.pem", help="also write the public key")
    keygen.set_defaults(func=run_keygen)

    sign = verbs.add_parser(
        "sign",
        help="sign a build (imgtool sign); --board takes header, slot, alignment and key "
        "from boards.yaml",
    )
    sign.add_argument("infile", type=Path, metavar="IN.bin|IN.hex")
    sign.add_argument("outfile", type=Path, metavar="OUT.bin|OUT.hex")
    sign.add_argument("-k", "--key", type=Path, metavar="FILE.pem", help="private key")
    sign.add_argument("-v", "--version", required=True, help="major.minor.revision[+build]")
    sign.add_argument("--board", metavar="NAME", help="sign for this board of the farm")
    sign.add_argument("--boards", type=Path, default=DEFAULT_BOARDS, metavar="FILE")
    sign.add_argument("-H", "--header-size", type=_number, metavar="N")
    sign.add_argument("-S", "--slot-size", type=_number, metavar="N")
    sign.add_argument("--align", type=_number, metavar="N", help="flash write size (default 4)")
    sign.add_argument("--max-align", type=_number, metavar="N", help="BOOT_MAX_ALIGN (default 8)")
    sign.add_argument("-M", "--max-sectors", type=_number, metavar="N")
    sign.add_argument("--overwrite-only", action="store_true", default=None)
    sign.add_argument("--slot", choices=("primary", "secondary"), help="target slot (--board)")
    sign.add_argument("-F", "--rom-fixed", type=_number, metavar="ADDR")
    sign.add_argument("--pad", action="store_true", help="pad to the slot size (test request)")
    sign.add_argument("--confirm", action="store_true", help="pad and set image_ok (permanent)")
    sign.add_argument("--hex-addr", type=_number, metavar="ADDR", help="address of a .hex output")
    header = sign.add_mutually_exclusive_group()
    header.add_argument("--pad-header", action="store_true", default=None)
    header.add_argument("--no-pad-header", dest="pad_header", action="store_false")
    sign.set_defaults(func=run_sign)

    show = verbs.add_parser("show", help="header, TLVs, both hashes, key, trailer, validity")
    show.add_argument("file", type=Path, metavar="IMAGE")
    show.add_argument("-k", "--key", type=Path, metavar="FILE.pem", help="verify with this key")
    show.add_argument("--board", metavar="NAME", help="verify with this board's key")
    show.add_argument("--boards", type=Path, default=DEFAULT_BOARDS, metavar="FILE")
    show.set_defaults(func=run_show)

    check = verbs.add_parser("check", help="would the board's MCUboot boot this image?")
    check.add_argument("file", type=Path, metavar="IMAGE")
    check.add_argument("--board", required=True, metavar="NAME")
    check.add_argument("--boards", type=Path, default=DEFAULT_BOARDS, metavar="FILE")
    check.add_argument("--current", metavar="VERSION", help="version the board runs now")
    check.add_argument("--slot", choices=("primary", "secondary"), help="slot the image is for")
    check.add_argument(
        "--ble",
        action="store_true",
        help="the image will go over Bluetooth LE (SMP over GATT): the board needs two slots",
    )
    check.set_defaults(func=run_check)


def _board(args: argparse.Namespace) -> BoardSpec:
    return load_farm(args.boards).board(args.board)


# --- keygen ---------------------------------------------------------------------------------


def run_keygen(args: argparse.Namespace) -> int:
    public = generate_key(args.key, args.type, public=args.public)
    print(f"wrote {args.key} ({public.type} private key); key hash {public.key_hash.hex()}")
    if args.public is not None:
        print(f"wrote {args.public} (public key, for boards that only check images)")
    return 0


# --- sign -----------------------------------------------------------------------------------


_EXPLICIT = (
    ("header_size", "--header-size"),
    ("slot_size", "--slot-size"),
    ("align", "--align"),
    ("max_align", "--max-align"),
    ("max_sectors", "--max-sectors"),
    ("overwrite_only", "--overwrite-only"),
    ("rom_fixed", "--rom-fixed"),
)


def sign_params(args: argparse.Namespace) -> tuple[SignParams, Path | None]:
    """The sign options from --board and/or the explicit ones; a contradiction is refused."""
    if args.board is None:
        if args.slot is not None:
            raise InputError("--slot needs --board (it names one of the board's slots)")
        if args.header_size is None or args.slot_size is None:
            raise InputError(
                "give --board NAME (settings from boards.yaml), or --header-size and "
                "--slot-size as imgtool sign needs them"
            )
        defaults = SignParams()
        values = {
            name: getattr(args, name)
            if getattr(args, name) is not None
            else getattr(defaults, name)
            for name, _ in _EXPLICIT
        }
        return SignParams(**values), None
    board = _board(args)
    params = board_sign_params(board, args.slot)
    for name, option in _EXPLICIT:
        given = getattr(args, name)
        if given is not None and given != getattr(params, name):
            have = getattr(params, name)
            shown = f"0x{have:X}" if isinstance(have, int) and not isinstance(have, bool) else have
            raise InputError(
                f"{option} {getattr(args, name)} contradicts board {board.name} ({name} "
                f"{shown} from {args.boards}); drop the option or fix the boards file"
            )
    spec = board.mcuboot
    assert spec is not None
    return params, spec.key if spec.can_sign else None


def run_sign(args: argparse.Namespace) -> int:
    params, board_key = sign_params(args)
    key = args.key or board_key
    if key is None:
        raise InputError(
            "no private key: pass -k KEY.pem"
            + (" (the board's key file is public: it can check, not sign)" if args.board else "")
        )
    source = read_image_file(args.infile)
    signed = sign_image(
        source.data,
        key,
        args.version,
        params=params,
        pad=args.pad,
        confirm=args.confirm,
        pad_header=args.pad_header,
        source=str(args.infile),
    )
    image = parse_image(signed, source=str(args.outfile))
    if args.outfile.suffix.lower() == ".hex":
        address = _hex_address(args, params, source, image)
        _write_hex(args.outfile, signed, address)
        where = f" at 0x{address:X}"
    else:
        args.outfile.write_bytes(signed)
        where = ""
    print(
        f"wrote {args.outfile}{where}: version {_version_text(image.version)}, {len(signed)} bytes"
    )
    print(f"  image hash  {image.image_hash.hex() if image.image_hash else '-'}  (test/confirm)")
    print(f"  file SHA256 {hashlib.sha256(signed).hexdigest()}  (upload `sha`)")
    return 0


def _hex_address(
    args: argparse.Namespace, params: SignParams, source: ImageFile, image: McubootImage
) -> int:
    if args.hex_addr is not None:
        return int(args.hex_addr)
    if source.address is not None:
        padded = any(source.data[: params.header_size]) or args.pad_header
        return source.address - (image.header.hdr_size if padded else 0)
    if params.rom_fixed is not None:
        return params.rom_fixed
    if params.slot is not None:
        return params.slot.start
    raise InputError(
        Problem(str(args.outfile), None, "", "a .hex needs an address: pass --hex-addr or --board")
    )


def _write_hex(path: Path, signed: bytes, address: int) -> None:
    from dfuhil.formats.hexfile import hex_text

    path.write_text(hex_text(image_hex(signed, address)))


# --- show -----------------------------------------------------------------------------------


def _version_text(version: ImageVersion) -> str:
    base = f"{version.major}.{version.minor}.{version.revision}"
    return f"{base}+{version.build}" if version.build else base


def _tlv_value(image: McubootImage, tlv_type: int, data: bytes) -> str:
    if tlv_type == TlvType.KEYHASH:
        sample = SAMPLE_KEY_HASHES.get(data)
        note = f"  = MCUboot's sample key {sample}" if sample else ""
        return data.hex() + note
    if tlv_type == TlvType.SEC_CNT and len(data) == 4:
        return f"{int.from_bytes(data, 'little')}"
    if tlv_type in (TlvType.SHA256, TlvType.SHA384, TlvType.SHA512):
        return data.hex() + "  (the image hash)"
    text = data.hex()
    return text if len(text) <= 64 else text[:64] + "…"


def describe(
    data: bytes,
    source: str,
    *,
    key: PublicKey | None = None,
    key_name: str = "",
    max_align: int | None = None,
    address: int | None = None,
) -> list[str]:
    """What ``image show`` prints: every field a person debugging a DFU asks about."""
    image = parse_image(data, source=source)
    h = image.header
    where = f", at 0x{address:X} in the hex" if address is not None else ""
    out = [f"image        {source} ({len(data)} bytes{where})"]
    version = _version_text(h.version)
    smp = f" (SMP shows {h.version})" if h.version.build else ""
    out += [
        f"version      {version}{smp}",
        f"header       magic 0x{h.magic:08X}, header size 0x{h.hdr_size:X}, "
        f"image size 0x{h.img_size:X} ({h.img_size} bytes), protected TLVs 0x"
        f"{h.protect_tlv_size:X}",
        f"flags        0x{h.flags:08X} ({', '.join(h.flag_names()) or 'none'})",
        f"load address 0x{h.load_addr:08X}"
        + (" (ROM_FIXED: linked for the slot at this address)" if h.rom_fixed else ""),
        "TLVs",
    ]
    for tlv in image.tlvs:
        area = "protected  " if tlv.protected else "unprotected"
        value = _tlv_value(image, tlv.type, tlv.data)
        out.append(f"  {area} {tlv.name} (0x{tlv.type:02X}) {len(tlv.data)} bytes: {value}")
    out += [
        f"image hash   {image.image_hash.hex() if image.image_hash else '(none)'}",
        "             the SHA TLV: what `dfuhil mcuboot list` shows, what test/confirm take",
        f"file SHA256  {hashlib.sha256(data).hexdigest()}",
        "             of the whole file: what an SMP upload sends as `sha` (resume, match)",
    ]
    key_hash = image.key_hash
    if key_hash is None:
        out.append("key          no KEYHASH/PUBKEY TLV (unsigned)")
    else:
        sample = SAMPLE_KEY_HASHES.get(key_hash)
        what = (
            f"MCUboot's published sample key {sample}: anyone can sign with it"
            if sample
            else "not one of MCUboot's sample keys"
        )
        out.append(f"key          hash {key_hash.hex()}: {what}")
    out += _trailer_lines(data, image, max_align)
    out += _validity_lines(image, key, key_name)
    return out


def _trailer_lines(data: bytes, image: McubootImage, max_align: int | None) -> list[str]:
    tail = data[image.size :]
    if not tail or all(b == 0xFF for b in tail):
        return ["trailer      none (not padded)"]
    if max_align is None:
        magic = data[-16:]
        max_align = 8
        if magic != MAGIC_ALIGN8 and int.from_bytes(magic[:2], "little") in (16, 32):
            max_align = int.from_bytes(magic[:2], "little")
            if magic != trailer_magic(max_align):
                max_align = 8
    layout = TrailerLayout(len(data), max_align=max_align)
    state = read_trailer(lambda a, n: data[a : a + n], 0, layout)
    request = "none"
    if state.magic == Magic.GOOD:
        request = "permanent (image_ok set)" if state.image_ok == Flag.SET else "test"
    elif state.magic == Magic.BAD:
        request = f"unreadable: bad magic for BOOT_MAX_ALIGN {max_align}"
    swap = state.swap_type.name.lower() if state.swap_type != SwapType.NONE else "none"
    return [
        f"trailer      padded to 0x{len(data):X}: magic {state.magic.name.lower()}, image_ok "
        f"{state.image_ok.name.lower()}, copy_done {state.copy_done.name.lower()}, swap_info "
        f"{swap}; in a secondary slot MCUboot reads request: {request}"
    ]


def _validity_lines(image: McubootImage, key: PublicKey | None, key_name: str) -> list[str]:
    hash_state = "OK" if image.hash_ok else "MISMATCH (corrupted)"
    encryption = image.encryption()
    if encryption is not None and not image.hash_ok:
        # The hash covers the plaintext; only an MCUboot with the decryption key can check it.
        hash_state = f"not checked: encrypted ({encryption})"
    if image.image_hash is None:
        hash_state = "no hash TLV"
    if key is None:
        sig = "not checked (pass --key KEY.pem or --board NAME)"
        if image.signature_tlv is None:
            sig = "none: unsigned"
    else:
        problem = verify_signature(image, key)
        sig = f"valid ({key_name})" if problem is None else f"INVALID: {problem}"
    return [f"valid        hash {hash_state}; signature {sig}"]


def run_show(args: argparse.Namespace) -> int:
    loaded = read_image_file(args.file)
    key: PublicKey | None = None
    key_name = ""
    max_align: int | None = None
    try:
        if args.key is not None:
            key, key_name = load_public_key(args.key), str(args.key)
        elif args.board is not None:
            board = _board(args)
            spec = board.mcuboot
            if spec is None:
                raise InputError(f"board {board.name} has no MCUboot (no mcuboot: block)")
            key, key_name = spec.public_key(), f"the key of board {board.name}"
            max_align = spec.max_align
    except KeyFileError as exc:
        raise InputError(str(exc)) from None
    try:
        lines = describe(
            loaded.data,
            str(args.file),
            key=key,
            key_name=key_name,
            max_align=max_align,
            address=loaded.address,
        )
    except ImageFormatError as exc:
        raise InputError(Problem(str(args.file), None, "", _unprefixed(exc, args.file))) from None
    print("\n".join(lines))
    return 0


def _unprefixed(exc: Exception, path: Path) -> str:
    return str(exc).removeprefix(f"{path}: ")


# --- check ----------------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    board = _board(args)
    current = None
    if args.current is not None:
        try:
            current = ImageVersion.parse(args.current)
        except ValueError as exc:
            raise InputError(Problem("", None, "--current", str(exc))) from None
    loaded = read_image_file(args.file)
    report = check_image(
        loaded.data,
        board,
        source=str(args.file),
        current=current,
        slot=args.slot,
        address=loaded.address,
        transport="ble" if args.ble else None,
    )
    print(report.text())
    return 0 if report.ok else InputError.exit_code
