"""Verbs for the nRF5 SDK for Mesh DFU files: ``devpage`` and ``mesh keys|genpkg|show``.

They stand in for the SDK's device_page_generator.py and nrfutil's mesh branch (Python 2 only,
no longer installable), with the same options and the same output bytes, so lab scripts and
docs written for Nordic's tools carry over. The verbs that drive boards (``mesh dfu``,
``mesh check``, ...) live in ``mesh_transfer`` and are added to the same group.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from intelhex import IntelHex

from dfuhil.cli import mesh_transfer
from dfuhil.cli.options import add_farm_options
from dfuhil.errors import InputError, Problem
from dfuhil.formats.chips import CHIPS, Chip, chip_names, find_chip
from dfuhil.formats.softdevice import SOFTDEVICES, SoftDevice, find_softdevice

# device_page_generator.py's defaults (nRF5 SDK for Mesh v5.0.0).
DEFAULT_DEVICE = "nrf52832_xxAA"
DEFAULT_SOFTDEVICE = "s132_7.2.0"
UICR_START = 0x10000000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``devpage`` and ``mesh`` (with ``keys``, ``genpkg``, ``show`` and any extra verbs)."""
    devpage = subparsers.add_parser(
        "devpage",
        help="write a mesh bootloader device page (as device_page_generator.py) or show one",
    )
    devpage.add_argument("-d", "--device", metavar="CHIP", help=f"default {DEFAULT_DEVICE}")
    devpage.add_argument(
        "-sd", "--softdevice", default=DEFAULT_SOFTDEVICE, help=f"default {DEFAULT_SOFTDEVICE}"
    )
    devpage.add_argument(
        "-c",
        "--bootloader-config",
        type=Path,
        metavar="CONFIG.json",
        help='{"bootloader_config": {...}} (default: the SDK default values)',
    )
    devpage.add_argument(
        "-o",
        "--output-file",
        type=Path,
        metavar="OUT.hex",
        help="default bin/device_page_<DEVICE>_<SOFTDEVICE>.hex",
    )
    shows = devpage.add_mutually_exclusive_group()
    shows.add_argument("--show", type=Path, metavar="FILE.hex", help="show the page in a hex file")
    shows.add_argument(
        "--show-board", dest="board", metavar="NAME", help="read and show a board's device page"
    )
    add_farm_options(devpage)
    devpage.set_defaults(func=run_devpage)

    mesh = subparsers.add_parser("mesh", help="mesh DFU signing keys and packages (nrfutil mesh)")
    mesh_commands = mesh.add_subparsers(dest="mesh_command", metavar="VERB", required=True)

    keys = mesh_commands.add_parser("keys", help="generate a signing key or show its public key")
    keys.add_argument("key_file", type=Path, metavar="FILE")
    action = keys.add_mutually_exclusive_group(required=True)
    action.add_argument("--gen-key", action="store_true", help="generate a P-256 key into FILE")
    action.add_argument(
        "--show-vk", choices=("hex", "code", "pem"), help="print the verification (public) key"
    )
    keys.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    keys.set_defaults(func=run_keys)

    genpkg = mesh_commands.add_parser(
        "genpkg", help="make a mesh DFU zip (as `nrfutil dfu genpkg --mesh`)"
    )
    genpkg.add_argument("zipfile", type=Path, metavar="OUT.zip")
    genpkg.add_argument("--application", type=Path, required=True, metavar="APP.hex")
    genpkg.add_argument("--company-id", required=True, metavar="ID", help="decimal or 0x hex")
    genpkg.add_argument("--application-id", required=True, metavar="N")
    genpkg.add_argument("--application-version", required=True, metavar="N")
    genpkg.add_argument(
        "--sd-req",
        metavar="0xNN[,0xNN]",
        help="SoftDevice FWIDs, comma-separated, or 'none' (default 0xFFFE: any)",
    )
    genpkg.add_argument("--key-file", type=Path, metavar="KEY", help="sign with this PEM key")
    genpkg.add_argument(
        "-d", "--device", metavar="CHIP", help="with -sd: refuse an image outside the app segment"
    )
    genpkg.add_argument("-sd", "--softdevice", help="with -d: the SoftDevice on the device")
    genpkg.set_defaults(func=run_genpkg)

    show = mesh_commands.add_parser("show", help="describe a mesh DFU zip")
    show.add_argument("package", type=Path, metavar="PKG.zip")
    show.set_defaults(func=run_show)

    mesh_transfer.register(mesh_commands)


# --- parsing helpers -------------------------------------------------------------------------


def parse_int(text: str, option: str) -> int:
    """Decimal or 0x hex. A leading zero is refused: nrfutil read it as octal."""
    value = text.strip()
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", value):
        return int(value, 16)
    if re.fullmatch(r"0|[1-9][0-9]*", value):
        return int(value)
    hint = " (nrfutil read a leading 0 as octal; drop it or write 0x)" if value[:1] == "0" else ""
    raise InputError(Problem("", None, option, f"{text!r} is not a decimal or 0x number{hint}"))


def parse_sd_req(text: str | None) -> list[int] | None:
    """None (option absent) -> default; 'none' -> []; else comma-separated numbers."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    return [parse_int(part, "--sd-req") for part in text.split(",")]


def resolve_chip(name: str) -> Chip:
    chip = find_chip(name)
    if chip is None:
        raise InputError(
            Problem(
                "", None, "--device", f"unknown chip {name!r} (known: {', '.join(chip_names())})"
            )
        )
    return chip


def resolve_softdevice(name: str) -> SoftDevice:
    sd = find_softdevice(name)
    if sd is None:
        raise InputError(
            Problem(
                "",
                None,
                "--softdevice",
                f"unknown SoftDevice {name!r} (known: {', '.join(SOFTDEVICES)})",
            )
        )
    return sd


# --- devpage ---------------------------------------------------------------------------------


def run_devpage(args: argparse.Namespace) -> int:
    if args.show is not None:
        return _show_hex(args.show, args.device)
    if args.board is not None:
        return _show_board(args)
    return _write_devpage(args)


def _write_devpage(args: argparse.Namespace) -> int:
    from dfuhil.formats.devpage import (
        BootloaderConfig,
        device_page_hex_text,
        load_bootloader_config,
    )

    device = args.device or DEFAULT_DEVICE
    chip = resolve_chip(device)
    sd = resolve_softdevice(args.softdevice)
    config = (
        load_bootloader_config(args.bootloader_config)
        if args.bootloader_config is not None
        else BootloaderConfig()
    )
    text = device_page_hex_text(chip, sd, config)
    out: Path = args.output_file or Path("bin") / f"device_page_{device}_{args.softdevice}.hex"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="ascii", newline="\n")
    except OSError as exc:
        raise InputError(Problem(str(out), None, "", f"cannot write: {exc.strerror}")) from None
    print(f"Wrote device page for {device} with the {args.softdevice} SoftDevice to {out}.")
    return 0


def _flash_bytes(ih: IntelHex, start: int, size: int) -> bytes:
    """``size`` bytes from ``start``; what the hex does not hold reads as erased flash."""
    out = bytearray(b"\xff" * size)
    for seg_start, seg_end in ih.segments():
        lo, hi = max(seg_start, start), min(seg_end, start + size)
        if lo < hi:
            out[lo - start : hi - start] = bytes(ih.gets(lo, hi - lo))
    return bytes(out)


def _guess_chip(ih: IntelHex, file: str) -> Chip:
    """The smallest flash that holds the hex's highest flash address: its last page is the
    device page (a generator file holds just that page, a flash dump ends there)."""
    ends = [end for start, end in ih.segments() if start < UICR_START]
    if not ends:
        raise InputError(Problem(file, None, "", "holds no flash data"))
    top = max(ends)
    fitting = sorted((c for c in CHIPS.values() if c.flash_size >= top), key=lambda c: c.flash_size)
    if not fitting:
        raise InputError(Problem(file, None, "", f"data up to 0x{top:X} fits no known chip"))
    return fitting[0]


def _show_hex(path: Path, device: str | None) -> int:
    from dfuhil.formats.devpage import DevicePage, describe
    from dfuhil.formats.hexfile import read_hex

    ih = read_hex(path)
    chip = resolve_chip(device) if device else _guess_chip(ih, str(path))
    page = _flash_bytes(ih, chip.device_page_address, chip.page_size)
    backup = _flash_bytes(ih, chip.device_page_backup_address, chip.page_size)
    parsed = DevicePage.parse(page, chip.device_page_address, backup)
    if parsed is None:
        raise InputError(
            Problem(
                str(path),
                None,
                "",
                f"no device page at 0x{chip.device_page_address:X} or backup page at "
                f"0x{chip.device_page_backup_address:X} (erased or absent); pass -d CHIP if the "
                "file is for another chip",
            )
        )
    print(describe(parsed))
    return 0


def _show_board(args: argparse.Namespace) -> int:
    from dfuhil.cli.options import open_rig
    from dfuhil.formats.devpage import describe, read_device_page

    rig, board = open_rig(args)
    with rig.probe(board) as probe:
        page = read_device_page(probe.read, board.chip)
    chip = board.chip
    if page is None:
        print(
            f"{board.name}: no device page: 0x{chip.device_page_address:X} and the backup page "
            f"0x{chip.device_page_backup_address:X} are erased"
        )
        return 1
    print(f"{board.name} ({chip.name}):")
    print(describe(page))
    return 0


# --- mesh keys / genpkg / show ---------------------------------------------------------------


def run_keys(args: argparse.Namespace) -> int:
    from dfuhil.formats import meshkeys

    path: Path = args.key_file
    if args.gen_key:
        if path.exists() and not args.force:
            raise InputError(
                Problem(str(path), None, "", "already exists; pass --force to replace this key")
            )
        meshkeys.write_key(meshkeys.generate_key(), path, overwrite=args.force)
        print(f"Generated key at: {path}")
        return 0
    key = meshkeys.load_key(path)
    if args.show_vk == "hex":
        print("\n".join(meshkeys.verification_key_lines(key)))
    elif args.show_vk == "code":
        print("\n".join(meshkeys.verification_key_code(key)))
    else:
        print(meshkeys.public_key_pem(key), end="")
    return 0


def run_genpkg(args: argparse.Namespace) -> int:
    from dfuhil.formats.devpage import app_segment
    from dfuhil.formats.meshkeys import load_key
    from dfuhil.formats.meshpkg import MeshPackage

    problems: list[Problem] = []
    values: dict[str, int] = {}
    for option in ("--company-id", "--application-id", "--application-version"):
        try:
            values[option] = parse_int(getattr(args, option[2:].replace("-", "_")), option)
        except InputError as exc:
            problems += exc.problems
    try:
        sd_req = parse_sd_req(args.sd_req)
    except InputError as exc:
        problems += exc.problems
    if (args.device is None) != (args.softdevice is None):
        problems.append(
            Problem("", None, "--device", "give -d CHIP and -sd SOFTDEVICE together, or neither")
        )
    if problems:
        raise InputError(problems)
    segment = None
    if args.device is not None:
        segment = app_segment(resolve_chip(args.device), resolve_softdevice(args.softdevice))
    key = load_key(args.key_file) if args.key_file is not None else None
    pkg = MeshPackage.build(
        args.application,
        company_id=values["--company-id"],
        application_id=values["--application-id"],
        application_version=values["--application-version"],
        sd_req=sd_req,
        key=key,
        app_segment=segment,
    )
    pkg.write(args.zipfile)
    init = pkg.init
    print(
        f"Zip created at {args.zipfile}: {pkg.kind} {pkg.bin_name}, {init.length} bytes, "
        f"company 0x{init.company_id:08X}, app id {init.application_id}, version "
        f"{init.application_version}, {'signed' if init.signed else 'unsigned'}"
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from dfuhil.formats.meshpkg import describe, read_package

    print(describe(read_package(args.package)))
    return 0
