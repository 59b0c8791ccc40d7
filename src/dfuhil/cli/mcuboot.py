"""``dfuhil mcuboot list|upload|upgrade|test|confirm|erase|reset|echo|diagnose``: mcumgr at the rig.

The verbs of the Zephyr flow (``mcumgr image upload``, ``image list``, ``image test <hash>``,
``reset``, ``image confirm``), against a board of the farm (``--board``, port and baud from
boards.yaml, SMP over UDP with ``--transport udp``, over Bluetooth LE with ``--transport ble``),
a bare port (``--port``), a UDP address (``--udp``) or a board on the air (``--ble NAME`` or
address, through the HCI controller ``--hci``: by default the virtual farm's radio for a
virtual board, else boards.yaml ``ble_hci``). With ``--board`` the console stays the port's
owner, so the boot log that follows a reset lands in reports/logs/<board>.log and is shown and
diagnosed; ``upload`` first checks the image against the board (``dfuhil image check``), and
``test``/``confirm`` refuse a hash no slot holds before sending anything. ``upgrade`` is the
whole flow in one command that exits 0 only when the new image runs for good
(dfuhil.procedures.mcuboot_upgrade).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dfuhil.cli.options import add_farm_options
from dfuhil.cli.report_plot import plot_option
from dfuhil.formats.mcuboot_trailer import MODES

if TYPE_CHECKING:
    from dfuhil.farm.model import BoardSpec
    from dfuhil.farm.rig import Rig
    from dfuhil.links.console import Console
    from dfuhil.links.smp_link import SlotState, SmpLink

REPORTS_DIR = Path("reports")
DEFAULT_BAUD = 115200
# Device seconds a reset is given to print its boot log when no banner tells it is over.
RESET_WAIT_S = 3.0
BOOT_DEVICE_S = 60.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mcuboot = subparsers.add_parser(
        "mcuboot", help="MCUboot DFU over SMP (mcumgr image list/upload/test/confirm, reset)"
    )
    verbs = mcuboot.add_subparsers(dest="mcuboot_command", metavar="VERB", required=True)

    listing = verbs.add_parser("list", help="the image slots: version, hash, flags")
    _target(listing)
    listing.set_defaults(func=run_list)

    upload = verbs.add_parser("upload", help="upload a signed image (resumes an interrupted one)")
    upload.add_argument("image", type=Path, metavar="IMAGE", help="signed .bin (or .hex)")
    _target(upload)
    upload.add_argument("--no-check", action="store_true", help="skip the image check (--board)")
    upload.add_argument(
        "--no-resume", action="store_true", help="start over even if the board holds a partial one"
    )
    upload.add_argument(
        "--window",
        type=int,
        metavar="N",
        help="requests in flight (default: what the server's buffers and its UART line buffers "
        "hold; 1 = smpclient's pace)",
    )
    upload.add_argument(
        "--image", dest="image_number", type=int, default=0, metavar="N", help="SMP image number"
    )
    plot_option(upload, "throughput over time, a resumed upload marked")
    upload.set_defaults(func=run_upload)

    upgrade = verbs.add_parser(
        "upgrade",
        help="check, upload, test, reset, see it boot, confirm, re-check: exit 0 only when the "
        "new image runs for good",
    )
    upgrade.add_argument("image", type=Path, metavar="IMAGE", help="signed .bin (or .hex)")
    _target(upgrade)
    upgrade.add_argument(
        "--confirm",
        choices=("host", "app"),
        help="who confirms the new image (default: the board's firmware set; host otherwise)",
    )
    upgrade.add_argument(
        "--mode",
        choices=MODES,
        help="MCUboot's upgrade mode for --port/--udp (default: asked over SMP)",
    )
    upgrade.add_argument(
        "--banner",
        metavar="REGEX",
        help="the application's boot banner on the console (default: the board's firmware set; "
        "without one, the SMP server answering again counts as the boot)",
    )
    upgrade.add_argument(
        "--no-readback",
        action="store_true",
        help="with --board: trust SMP alone, skip the probe read-back of the slots",
    )
    upgrade.add_argument(
        "--window", type=int, metavar="N", help="upload requests in flight (see upload)"
    )
    upgrade.set_defaults(func=run_upgrade)

    test = verbs.add_parser("test", help="mark an image for a test boot (reverted if unconfirmed)")
    test.add_argument(
        "hash", metavar="HASH", help="image hash or unique prefix (see `list`), or the image file"
    )
    _target(test)
    test.set_defaults(func=run_test)

    confirm = verbs.add_parser("confirm", help="confirm the running image, or make HASH permanent")
    confirm.add_argument(
        "hash", nargs="?", metavar="HASH", help="image hash, unique prefix, or the image file"
    )
    _target(confirm)
    confirm.set_defaults(func=run_confirm)

    erase = verbs.add_parser("erase", help="erase an image slot (default: the secondary)")
    erase.add_argument("--slot", type=int, metavar="N", help="slot number (server default: 1)")
    _target(erase)
    erase.set_defaults(func=run_erase)

    reset = verbs.add_parser("reset", help="reset the board and show its boot log")
    reset.add_argument(
        "--boot-mode", type=int, metavar="N", help="1: reboot into MCUboot's serial recovery"
    )
    reset.add_argument(
        "--wait",
        type=float,
        metavar="S",
        help="seconds to show the boot log (default: until the app's banner with --board)",
    )
    _target(reset)
    reset.set_defaults(func=run_reset)

    echo = verbs.add_parser("echo", help="SMP echo: is an SMP server listening?")
    echo.add_argument("text", metavar="TEXT")
    _target(echo)
    echo.set_defaults(func=run_echo)

    diagnose = verbs.add_parser(
        "diagnose", help="causes and fixes for the MCUboot/Zephyr failure lines of a boot log"
    )
    diagnose.add_argument("log", metavar="LOG", help="a log file (a board's log), or - for stdin")
    diagnose.set_defaults(func=run_diagnose)


def _target(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--board", metavar="NAME", help="board in the farm (boards.yaml)")
    where.add_argument("--port", metavar="PATH", help="serial port (device path or pyserial URL)")
    where.add_argument("--udp", metavar="HOST:PORT", help="SMP over UDP")
    where.add_argument(
        "--ble",
        metavar="NAME_OR_ADDRESS",
        help="SMP over Bluetooth LE: the board's advertised name or its address",
    )
    add_farm_options(parser)
    parser.add_argument(
        "--transport",
        choices=("serial", "udp", "ble"),
        default="serial",
        help="with --board: which of its SMP transports (default serial)",
    )
    parser.add_argument(
        "--hci",
        metavar="TRANSPORT",
        help="with --ble / --transport ble: the Bluetooth controller as bumble names it (usb:0, "
        "serial:/dev/ttyACM0,1000000; default: the virtual farm's radio for a virtual board, "
        "else boards.yaml ble_hci)",
    )
    parser.add_argument("--baud", type=int, metavar="BAUD", help=f"default {DEFAULT_BAUD}")
    parser.add_argument(
        "--timeout", type=float, default=2.5, metavar="S", help="seconds per request (2.5)"
    )
    parser.add_argument(
        "--buf-size",
        type=int,
        metavar="BYTES",
        help="the server's SMP buffer, for servers that do not report it (MCUboot serial "
        "recovery without BOOT_MGMT_MCUMGR_PARAMS)",
    )


# --- the connection ---------------------------------------------------------------------------


@dataclass
class Target:
    link: SmpLink
    who: str
    board: BoardSpec | None
    console: Console | None
    time_scale: float = 1.0
    rig: Rig | None = None


def _log_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit("/", 1)[-1]) or "port"


def _board_console(args: argparse.Namespace, rig: Rig, board: BoardSpec) -> Console:
    from dfuhil.farm.rig import console_protocol
    from dfuhil.links.console import Console

    return Console(
        rig.serial_url(board),
        baud=args.baud or board.serial.baud,
        rtscts=board.serial.rtscts,
        log_path=REPORTS_DIR / "logs" / f"{board.name}.log",
        name=board.name,
        open_timeout=2.0,
        protocol=console_protocol(board),
    )


@contextmanager
def _connected(
    args: argparse.Namespace, *, boot_log: bool = False, ota: bool = False
) -> Iterator[Target]:
    """The SMP link the target options name; ``boot_log``: with --board over UDP or BLE, the
    board's console is opened too, so the boot log after a reset is seen; ``ota``: an image
    will be sent, so a board BLE cannot update (one slot) is refused before any radio use."""
    from dfuhil.cli.options import open_rig
    from dfuhil.errors import InputError, Problem
    from dfuhil.links.smp_link import SmpLink

    log_dir = REPORTS_DIR / "logs"
    stack = ExitStack()
    if args.board is not None:
        if args.transport == "ble":
            _ble_preflight(args, ota=ota)  # bad input refused before the farm or the radio
        rig, board = open_rig(args)
        scale = rig.time_scale(board)
        if args.transport == "udp":
            address = rig.smp_udp(board)
            if address is None:
                raise InputError(
                    Problem(
                        str(args.boards),
                        board.line,
                        f"boards[{board.name}].smp_udp",
                        "the board has no SMP over UDP; use the serial transport",
                    )
                )
            console = stack.enter_context(_board_console(args, rig, board)) if boot_log else None
            target = Target(SmpLink.over_udp(address, name=board.name, timeout_s=args.timeout),
                            board.name, board, console, scale, rig)  # fmt: skip
        elif args.transport == "ble":
            from dfuhil.links.smp_ble_hci import ble_target, resolve_hci

            where = ble_target(rig.farm, board)
            hci = resolve_hci(args.hci, farm=rig.farm, board=board, sim=rig.sim)
            console = stack.enter_context(_board_console(args, rig, board)) if boot_log else None
            link = SmpLink.over_ble(where, hci, name=board.name, timeout_s=args.timeout)
            target = Target(link, board.name, board, console, scale, rig)
        else:
            console = _board_console(args, rig, board)
            mcuboot = board.mcuboot
            link = SmpLink.over_console(
                console,
                timeout_s=args.timeout,
                buf_size=args.buf_size,
                owns_console=True,
                uart=mcuboot.uart if mcuboot is not None else None,
            )
            target = Target(link, board.name, board, console, scale, rig)
    elif args.port is not None:
        link = SmpLink.open_serial(
            args.port,
            baud=args.baud or DEFAULT_BAUD,
            log_path=log_dir / f"{_log_name(args.port)}.log",
            timeout_s=args.timeout,
            buf_size=args.buf_size,
        )
        target = Target(link, args.port, None, link.console)
    elif args.ble is not None:
        target = _ble_target(args, ota=ota)
    else:
        target = Target(SmpLink.over_udp(args.udp, timeout_s=args.timeout), args.udp, None, None)
    with stack, target.link:
        yield target


def _ble_preflight(args: argparse.Namespace, *, ota: bool) -> None:
    """``--board B --transport ble``: a board without the ble transport, or (``ota``) without a
    secondary slot, is refused from boards.yaml alone."""
    from dfuhil.farm.loader import load_farm
    from dfuhil.links.smp_ble_hci import ble_target
    from dfuhil.procedures.image_check import refuse_ble_ota

    farm = load_farm(args.boards)
    board = farm.board(args.board)
    ble_target(farm, board)
    if ota:
        refuse_ble_ota(board, str(args.boards))


def _ble_target(args: argparse.Namespace, *, ota: bool) -> Target:
    """``--ble NAME_OR_ADDRESS``: a farm board advertising it is named in errors, and a virtual
    one is reached through the running farm's radio unless ``--hci`` says otherwise."""
    from dfuhil.farm.loader import load_farm
    from dfuhil.farm.rig import Rig
    from dfuhil.links.smp_ble_hci import board_advertising, resolve_hci
    from dfuhil.links.smp_link import SmpLink
    from dfuhil.sim.state import load_state

    farm = load_farm(args.boards) if args.boards.is_file() else None
    board = board_advertising(farm, args.ble) if farm is not None else None
    if ota and board is not None:
        from dfuhil.procedures.image_check import refuse_ble_ota

        refuse_ble_ota(board, str(args.boards))
    sim = load_state(args.sim_state) if board is not None and board.is_virtual else None
    hci = resolve_hci(args.hci, farm=farm, board=board, sim=sim)
    name = board.name if board is not None else args.ble
    link = SmpLink.over_ble(args.ble, hci, name=name, timeout_s=args.timeout)
    rig = Rig(farm, sim) if farm is not None and board is not None else None
    scale = rig.time_scale(board) if rig is not None and board is not None else 1.0
    return Target(link, name, board, None, scale, rig)


# --- verbs ------------------------------------------------------------------------------------


def print_slots(slots: list[SlotState]) -> None:
    print(f"{'image':>5} {'slot':>4}  {'version':<12} {'flags':<36} hash")
    for s in slots:
        flags = " ".join(s.flags()) or "-"
        print(f"{s.image:>5} {s.slot:>4}  {s.version:<12} {flags:<36} {s.hash_hex or '-'}")
    if not slots:
        print("(no slot holds a valid image)")


def run_list(args: argparse.Namespace) -> int:
    with _connected(args) as target:
        print_slots(target.link.image_list())
    return 0


def run_upload(args: argparse.Namespace) -> int:
    from dfuhil.errors import InputError
    from dfuhil.procedures.image_check import check_image, read_image_file
    from dfuhil.procedures.mcuboot_dfu import image_info, running_version

    loaded = read_image_file(args.image)  # a missing or unreadable file: nothing is opened
    try:
        info = image_info(loaded.data, str(args.image))
    except InputError:
        if not args.no_check:
            raise
        info = None  # --no-check: send it as it is (the board will have its say)
    with _connected(args, ota=True) as target:
        board = target.board
        if board is not None and board.mcuboot is not None and not args.no_check:
            current = running_version(target.link.image_list())
            report = check_image(
                loaded.data,
                board,
                source=str(args.image),
                current=current,
                address=loaded.address,
                transport=target.link.kind,
            )
            if not report.ok:
                print(report.text())
                report.raise_if_refused()
            print(f"{target.who}: image check passed ({len(report.findings)} rules)")
        params = target.link.params
        print(
            f"{target.who}: uploading {args.image} ({len(loaded.data)} bytes"
            + (f", v{info.version}" if info else "")
            + f") over {target.link.where}"
            + (f" ({target.link.radio})" if target.link.radio else "")
            + (f"; {params}" if params else ""),
            flush=True,
        )
        from dfuhil.cli.progress_bar import ProgressBar
        from dfuhil.cli.report_plot import recording
        from dfuhil.report import traces

        with recording(args.plot), ProgressBar(target.who) as bar:
            result = target.link.upload(
                loaded.data,
                progress=traces.tee("smp", target.who, bar),
                resume=not args.no_resume,
                image=args.image_number,
                window=args.window,
            )
            if result.start_offset:
                traces.mark("smp", target.who, "resume", result.start_offset, when_reached=True)
    print(f"{target.who}: upload done: {result.summary()}")
    if info is not None:
        print(f"image hash: {info.image_hash.hex()}")
        print(f"file SHA256 (not for test/confirm): {info.file_sha256.hex()}")
        where = f"--board {args.board}" if args.board else "..."
        print(f"next: dfuhil mcuboot test {info.image_hash.hex()[:16]} {where}, then reset")
    return 0


def run_upgrade(args: argparse.Namespace) -> int:
    from dfuhil.cli.progress_bar import ProgressBar
    from dfuhil.errors import InputError, Problem, ProductError
    from dfuhil.procedures.image_check import read_image_file
    from dfuhil.procedures.mcuboot_dfu import image_info
    from dfuhil.procedures.mcuboot_upgrade import UpgradeSettings, upgrade

    loaded = read_image_file(args.image)  # a missing or unreadable file: nothing is opened
    image_info(loaded.data, str(args.image))  # not an MCUboot image: refused before connecting
    with _connected(args, boot_log=True, ota=True) as target, ExitStack() as stack:
        board = target.board
        if board is not None:
            if board.mcuboot is None:
                raise InputError(
                    Problem(
                        str(args.boards),
                        board.line,
                        f"boards[{board.name}].firmware",
                        "the board's firmware set has no mcuboot: block (mode, key, "
                        "confirm); nothing was sent",
                    )
                )
            settings = UpgradeSettings.for_board(board, target.time_scale)
        else:
            settings = UpgradeSettings()
        settings = replace(
            settings,
            window=args.window,
            confirm=args.confirm or settings.confirm,
            mode=args.mode or settings.mode,
            banner=args.banner or settings.banner,
        )
        read = None
        if board is not None and target.rig is not None and not args.no_readback:
            probe = stack.enter_context(target.rig.probe(board))  # a missing probe: before upload
            read = probe.read
        bar = stack.enter_context(ProgressBar(target.who))
        result = upgrade(
            target.link,
            loaded.data,
            source=str(args.image),
            settings=settings,
            board=board,
            console=target.console,
            read=read,
            say=lambda line: print(line, flush=True),
            progress=bar,
        )
    if not result.ok:
        raise ProductError(result.text())
    print(result.text())
    return 0


def _wanted_hash(text: str) -> tuple[str, bytes | None]:
    """A hash (prefix) as given, or an image file's image hash (and its file SHA256)."""
    from dfuhil.procedures.image_check import read_image_file
    from dfuhil.procedures.mcuboot_dfu import image_info

    path = Path(text)
    if not path.is_file():
        return text, None
    info = image_info(read_image_file(path).data, text)
    return info.image_hash.hex(), info.file_sha256


def _state_write(args: argparse.Namespace, *, confirm: bool) -> int:
    from dfuhil.procedures.mcuboot_dfu import find_slot

    wanted, file_sha = _wanted_hash(args.hash) if args.hash is not None else ("", None)
    with _connected(args) as target:
        image_hash = None
        if args.hash is not None:
            image_hash = find_slot(target.link.image_list(), wanted, file_sha256=file_sha).hash
        if confirm:
            slots = target.link.confirm(image_hash)
        else:
            assert image_hash is not None
            slots = target.link.test(image_hash)
        print_slots(slots)
    return 0


def run_test(args: argparse.Namespace) -> int:
    return _state_write(args, confirm=False)


def run_confirm(args: argparse.Namespace) -> int:
    return _state_write(args, confirm=True)


def run_erase(args: argparse.Namespace) -> int:
    with _connected(args) as target:
        target.link.erase(args.slot)
        print(f"{target.who}: slot {args.slot if args.slot is not None else 1} erased")
    return 0


def run_echo(args: argparse.Namespace) -> int:
    with _connected(args) as target:
        print(target.link.echo(args.text))
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from dfuhil.procedures.boot_diagnosis import diagnose
    from dfuhil.procedures.mcuboot_dfu import wait_for_boot

    with _connected(args) as target:
        console = target.console
        if console is not None:
            console.skip_to_end()
        target.link.reset(boot_mode=args.boot_mode)
        print(f"{target.who}: reset requested", flush=True)
        if console is None:
            return 0
        app = target.board.firmware.application if target.board and target.board.firmware else None
        if args.wait is None and app is not None and app.banner and args.boot_mode is None:
            boot = wait_for_boot(
                console,
                banner=app.banner,
                timeout_s=BOOT_DEVICE_S * target.time_scale + 5.0,
                settle_s=0.5,
            )
            log = boot.log
        else:
            wait = args.wait if args.wait is not None else RESET_WAIT_S * target.time_scale + 0.5
            start = len(console.text())
            time.sleep(wait)
            log = console.text()[start:]
    sys.stdout.write(log if log.endswith("\n") or not log else log + "\n")
    result = diagnose(log)
    if not result.ok:
        print(result)
    if console.log_path is not None:
        print(f"{target.who}: full log {console.log_path}")
    return 0


def run_diagnose(args: argparse.Namespace) -> int:
    from dfuhil.errors import InputError, Problem
    from dfuhil.procedures.boot_diagnosis import diagnose

    if args.log == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.log).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise InputError(Problem(args.log, None, "", f"cannot read: {exc.strerror}")) from None
    result = diagnose(text)
    print(result)
    return 0 if result.ok else 1
