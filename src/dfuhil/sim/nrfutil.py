"""A stand-in for nRF Util's ``nrfutil device`` that drives the virtual farm's boards.

Put first on PATH under the name ``nrfutil`` (:func:`install_shim`; ``dfuhil sim serve`` does it
next to its state file), it lets anything that runs ``nrfutil --json device ...`` (dfuhil's own
nrfutil backend, a script, west) drive a virtual board by its probe serial number, through the
farm's debug port (found by ``DFUHIL_SIM_STATE``, else ``.dfuhil/sim-state.json``).

What it follows, field by field, and where from (Nordic's nRF Util docs, docs.nordicsemi.com
bundle ``nrfutil``, late 2026):

- Command line: ``--json``/``--json-pretty``/``--skip-overhead`` are global flags before the
  command ("nrfutil --json", "device --json" pages); device verbs ``list``, ``device-info``,
  ``core-info``, ``read --address --bytes --width --direct --to-file``, ``write --address
  --value``, ``erase --all|--uicr|--pages A-B``, ``program --firmware --options
  chip_erase_mode=..,verify=..,reset=..``, ``reset --reset-kind``, ``halt``, ``go``,
  ``recover``, ``batch-execute --batch-file|--batch-json``; selection ``--serial-number
  SN[,SN]``, ``--traits``, ``--remote-jlink``; ``--append-batch PATH`` and ``--generate`` on
  the recordable verbs (the "device batch-execute" and "Batch operations and structured output"
  pages). ``nrfutil device --version``.
- Output ("Managing command output for scripting", "Message format"): one JSON object per line,
  ``{"type": task_begin|task_progress|task_end|info|log, "data": {...}}``; ``--skip-overhead``
  keeps only the ``data`` of ``info`` messages, so a task's payload is also sent as ``info``
  just before its ``task_end``. Field names inside ``task_*`` follow what
  Zephyr's nrfutil runner reads (``scripts/west_commands/runners/nrfutil.py``):
  ``data.task.description``, ``data.result``, ``data.error`` (null, or ``{code, description}``),
  ``data.progress.progressPercentage`` / ``.description``, and ``data.data.devices[]`` with
  ``serialNumber`` and ``traits.jlink`` in ``list``'s task_end. A failed task exits with 1
  ("nrfutil exits with 1 regardless of the failure", same runner).
- ``device-info``: ``{"deviceInfo": {"jlink": {"deviceFamily": "NRF52_FAMILY",
  "deviceVersion": "NRF52840_xxAA_REV2", "serialNumber": ...}}}`` (nrfutil-device changelog).
- Batch files: ``{"nrfutil_device_version": V, "operations": [{"operationId": "1",
  "operation": {"type": ..., ...}, "core": ...}]}`` (Zephyr's runner, Nordic's batch example);
  a file whose ``nrfutil_device_version`` differs from this command's is refused (docs).

Chosen where the docs say nothing (a real nrfutil may differ; dfuhil's backend reads these):
error codes (:data:`ERRORS`), the ``read`` result (``--to-file`` writes an Intel HEX, as
documented; without it a task_end ``data.memoryData = [{address, values}]``), the ``read``/
``write`` batch operation fields (the CLI flags' names), serial numbers compared as numbers
(``683000001`` selects ``000683000001``), and a J-Link held by another process: an exclusive
lock per serial number next to the state file, the way one J-Link serves one host process.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from dfuhil.formats.chips import FICR_BASE, UICR_BASE, Chip, find_chip
from dfuhil.sim.wire import decode_bytes, encode_bytes, recv_message, send_message

VERSION = "2.19.2"  # the nrfutil-device release this stand-in follows
JLINK_VERSION = "JLink_V8.10f"
STATE_ENV = "DFUHIL_SIM_STATE"
DEFAULT_STATE = Path(".dfuhil/sim-state.json")
RAM_BASE = 0x20000000

# Error codes and descriptions this stand-in reports (chosen: see the module docstring).
NOT_FOUND, BUSY, NO_POWER, PROTECTED, VERIFY_FAILED, ACCESS, BAD_ARGUMENT = 2, 3, 4, 5, 6, 7, 8
ERRORS = {
    1: "Generic error",
    NOT_FOUND: "Device not found",
    BUSY: "J-Link is in use by another process",
    NO_POWER: "Could not connect to the device: the target has no power",
    PROTECTED: "The device is read-back protected",
    VERIFY_FAILED: "Verification failed",
    ACCESS: "Memory access failed",
    BAD_ARGUMENT: "Invalid argument",
}
# pynrfjprog codes the debug port answers with -> this command's codes.
_PORT_CODES = {-10: NOT_FOUND, -102: NO_POWER, -90: PROTECTED, -20: ACCESS, -3: ACCESS}
RECORDABLE = ("program", "erase", "recover", "reset", "read", "write", "halt", "go")
RESET_KINDS = ("RESET_SYSTEM", "RESET_PIN", "RESET_HARD", "RESET_DEBUG", "RESET_DEFAULT")
ERASE_MODES = ("ERASE_ALL", "ERASE_RANGES_TOUCHED_BY_FIRMWARE", "ERASE_NONE")


class DeviceError(Exception):
    """A failed operation: the task ends with ``result: fail`` and this code."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code


# --- output ---------------------------------------------------------------------------------


@dataclass
class Output:
    """Human text or JSON Lines, as the global flags ask."""

    json: bool
    pretty: bool
    skip_overhead: bool
    task_id: int = 0
    reported: bool = False  # a failed task already carried the error

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if not self.json:
            return
        if self.skip_overhead:
            if kind == "info":
                print(json.dumps(data, indent=2 if self.pretty else None), flush=True)
            return
        message = {"type": kind, "data": data}
        print(json.dumps(message, indent=2 if self.pretty else None), flush=True)

    def text(self, line: str) -> None:
        if not self.json:
            print(line, flush=True)

    @contextlib.contextmanager
    def task(self, name: str, description: str, snr: str | None) -> Iterator[dict[str, Any]]:
        """task_begin ... task_end around one operation; the yielded dict becomes ``data``."""
        self.task_id += 1
        task: dict[str, Any] = {"id": str(self.task_id), "description": description, "name": name}
        if snr is not None:
            task["data"] = {"serialNumber": snr}
        self.emit("task_begin", {"task": task})
        result: dict[str, Any] = {}
        try:
            yield result
        except DeviceError as exc:
            error = {"code": exc.code, "description": f"{ERRORS.get(exc.code, '')}: {exc}"}
            self.emit(
                "task_end",
                {"task": task, "message": str(exc), "result": "fail", "error": error},
            )
            self.text(f"Error: {description} failed: {error['description']}")
            self.reported = True
            raise
        if result:  # the payload alone, for --skip-overhead ("outputs only the data payload")
            self.emit("info", result)
        self.emit(
            "task_end",
            {"task": task, "message": "", "result": "success", "error": None, "data": result},
        )

    def progress(self, name: str, percent: int, description: str) -> None:
        progress = {"progressPercentage": percent, "description": description, "name": name}
        self.emit("task_progress", {"task": {"id": str(self.task_id)}, "progress": progress})


# --- the virtual probes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    snr: int
    serial_number: str  # as nrfutil prints J-Link serial numbers: 12 digits
    chip: Chip
    family: str
    device_version: str
    port: str


class Farm:
    """The virtual farm's probes, through its debug port."""

    def __init__(self, state_path: Path) -> None:
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError) as exc:
            raise DeviceError(
                NOT_FOUND,
                f"no virtual farm: cannot read {state_path} ({exc}); start one with "
                "`dfuhil sim serve` or set DFUHIL_SIM_STATE",
            ) from None
        self.lock_dir = state_path.parent
        self.boards: dict[int, str] = {}
        for entry in state.get("boards", {}).values():
            self.boards[int(entry["snr"])] = str(entry["probe"]["endpoint"]).removeprefix("unix:")
        self._socks: dict[str, socket.socket] = {}
        self._locks: list[int] = []

    def call(self, snr: int, method: str, **args: Any) -> Any:
        path = self.boards[snr]
        sock = self._socks.get(path)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError as exc:
                raise DeviceError(NOT_FOUND, f"virtual farm not reachable: {exc}") from None
            self._socks[path] = sock
        send_message(sock, {"method": method, "snr": snr, "args": args})
        answer = recv_message(sock)
        if answer is None:
            raise DeviceError(NOT_FOUND, "the virtual farm closed its debug port")
        if "err" in answer:
            code = _PORT_CODES.get(int(answer["err"]), 1)
            raise DeviceError(code, str(answer.get("msg", "")))
        return answer["ok"]

    def device(self, snr: int) -> Device:
        info = self.call(snr, "device")
        chip = find_chip(str(info["chip"]))
        assert chip is not None, info
        return Device(
            snr=snr,
            serial_number=f"{snr:012d}",
            chip=chip,
            family=f"{info['family']}_FAMILY",
            device_version=str(info["device_version"]),
            port=str(info["serial"]),
        )

    def select(self, serial_numbers: str | None) -> list[Device]:
        if serial_numbers is None:
            return [self.device(snr) for snr in sorted(self.boards)]
        chosen = []
        for text in serial_numbers.split(","):
            try:
                snr = int(text.strip(), 10)
            except ValueError:
                raise DeviceError(BAD_ARGUMENT, f"invalid serial number {text!r}") from None
            if snr not in self.boards:
                raise DeviceError(NOT_FOUND, f"no device with serial number {text.strip()}")
            chosen.append(self.device(snr))
        return chosen

    def hold(self, device: Device) -> None:
        """One process per J-Link, as with a real probe; a second one is told it is busy."""
        fd = os.open(self.lock_dir / f"jlink-{device.snr}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            held = f"J-Link {device.serial_number} is held by another process"
            raise DeviceError(BUSY, held) from None
        self._locks.append(fd)


# --- operations -----------------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    try:
        return value if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        raise DeviceError(BAD_ARGUMENT, f"{what}: {value!r} is not a number") from None


def _power(device: Device, farm: Farm) -> None:
    status = farm.call(device.snr, "status")
    if not status.get("powered", True):
        raise DeviceError(NO_POWER, f"{device.serial_number}: target voltage is 0 V")


def _read(farm: Farm, device: Device, address: int, length: int) -> bytes:
    return decode_bytes(farm.call(device.snr, "read", address=address, length=length))


def _erase_for(farm: Farm, device: Device, segments: list[tuple[int, bytes]], mode: str) -> None:
    chip = device.chip
    if mode == "ERASE_ALL":
        farm.call(device.snr, "erase_all")
        return
    if mode != "ERASE_RANGES_TOUCHED_BY_FIRMWARE":
        return
    pages: set[int] = set()
    uicr = False
    for start, data in segments:
        if start >= UICR_BASE:
            uicr = True
            continue
        first = start - start % chip.page_size
        pages.update(range(first, start + len(data), chip.page_size))
    for page in sorted(pages):
        farm.call(device.snr, "erase_page", address=page)
    if uicr:
        farm.call(device.snr, "erase_uicr")


def _hex_segments(path: str) -> list[tuple[int, bytes]]:
    from intelhex import IntelHex

    try:
        image = IntelHex(path)
    except Exception as exc:  # intelhex raises its own hierarchy and OSError
        raise DeviceError(BAD_ARGUMENT, f"cannot read firmware {path}: {exc}") from None
    return [(start, image.tobinstr(start=start, end=end - 1)) for start, end in image.segments()]


def program(
    farm: Farm, device: Device, out: Output, firmware: str, options: dict[str, str]
) -> None:
    mode = options.get("chip_erase_mode", "ERASE_RANGES_TOUCHED_BY_FIRMWARE")
    if mode not in ERASE_MODES:
        raise DeviceError(BAD_ARGUMENT, f"chip_erase_mode {mode!r}; one of {ERASE_MODES}")
    segments = _hex_segments(firmware)
    _erase_for(farm, device, segments, mode)
    total = sum(len(d) for _, d in segments) or 1
    done = 0
    for start, data in segments:
        farm.call(device.snr, "write", address=start, data=encode_bytes(data), control=True)
        done += len(data)
        out.progress("program", done * 100 // total, f"Programming {done} of {total} bytes")
    if options.get("verify", "VERIFY_NONE") == "VERIFY_READ":
        for start, data in segments:
            if _read(farm, device, start, len(data)) != data:
                raise DeviceError(VERIFY_FAILED, f"read-back differs in 0x{start:08X}..")
    reset = options.get("reset", "RESET_NONE")
    if reset != "RESET_NONE":
        do_reset(farm, device, reset)


def do_reset(farm: Farm, device: Device, kind: str) -> None:
    if kind not in RESET_KINDS:
        raise DeviceError(BAD_ARGUMENT, f"reset kind {kind!r}; one of {', '.join(RESET_KINDS)}")
    if kind == "RESET_PIN":
        farm.call(device.snr, "pin_reset")
    elif kind == "RESET_HARD":
        farm.call(device.snr, "hard_reset")
    else:  # nrfutil's system reset leaves the core running (unlike pynrfjprog's sys_reset)
        farm.call(device.snr, "sys_reset")
        farm.call(device.snr, "go")


def erase(farm: Farm, device: Device, op: dict[str, Any]) -> None:
    kind = op.get("kind", "all")
    if kind == "all":
        farm.call(device.snr, "erase_all")
    elif kind == "uicr":
        farm.call(device.snr, "erase_uicr")
    elif kind == "pages":
        first, _, last = str(op.get("pages", "")).partition("-")
        start, end = _int(first, "pages"), _int(last or first, "pages")
        size = device.chip.page_size
        for page in range(start - start % size, end + 1, size):
            farm.call(device.snr, "erase_page", address=page)
    else:
        raise DeviceError(BAD_ARGUMENT, f"erase kind {kind!r}; one of all, uicr, pages")


def read(farm: Farm, device: Device, op: dict[str, Any]) -> dict[str, Any]:
    address = _int(op.get("address"), "address")
    width = _int(op.get("width", 32 if address % 4 == 0 else 8), "width")
    length = _int(op.get("bytes", width // 8), "bytes")
    data = _read(farm, device, address, length)
    target = op.get("toFile")
    if target:
        from intelhex import IntelHex

        image = IntelHex()
        image.frombytes(data, offset=address)
        image.write_hex_file(str(target))
        return {"file": str(target)}
    step = width // 8
    values = [int.from_bytes(data[i : i + step], "little") for i in range(0, len(data), step)]
    return {"memoryData": [{"address": address, "values": values}]}


def write(farm: Farm, device: Device, op: dict[str, Any]) -> None:
    address = _int(op.get("address"), "address")
    value = _int(op.get("value"), "value")
    nvm = address < device.chip.flash_size or UICR_BASE <= address < UICR_BASE + 0x1000
    raw = value.to_bytes(4, "little")
    farm.call(device.snr, "write", address=address, data=encode_bytes(raw), control=nvm)


def core_info(device: Device) -> dict[str, Any]:
    chip = device.chip
    return {
        "codeAddress": 0,
        "codeSize": chip.flash_size,
        "codePageSize": chip.page_size,
        "uicrAddress": UICR_BASE,
        "uicrSize": chip.uicr_size,
        "ficrAddress": FICR_BASE,
        "ramAddress": RAM_BASE,
        "ramSize": chip.ram_size,
    }


def device_info(device: Device) -> dict[str, Any]:
    return {
        "serialNumber": device.serial_number,
        "deviceInfo": {
            "jlink": {
                "deviceFamily": device.family,
                "deviceVersion": device.device_version,
                "serialNumber": device.serial_number,
                "jlinkObFirmwareVersion": "J-Link virtual (dfuhil)",
            }
        },
    }


def list_entry(device: Device) -> dict[str, Any]:
    return {
        "serialNumber": device.serial_number,
        "traits": {"jlink": True, "seggerUsb": True, "serialPorts": True, "usb": True},
        "serialPorts": [{"comName": device.port, "path": device.port, "vcom": 0}],
        "usb": {
            "manufacturer": "SEGGER",
            "product": "J-Link",
            "serialNumber": device.serial_number,
        },
    }


OP_DESCRIPTIONS = {
    "program": "Program",
    "erase": "Erase",
    "recover": "Recover",
    "reset": "Reset",
    "read": "Read memory",
    "write": "Write memory",
    "halt": "Halt",
    "go": "Run",
}


def run_operation(farm: Farm, device: Device, out: Output, op: dict[str, Any]) -> None:
    """One operation, as a direct verb or a batch entry, reported as one task."""
    kind = str(op.get("type"))
    if kind not in OP_DESCRIPTIONS:
        with out.task(kind, f"Unknown operation {kind}", device.serial_number):
            raise DeviceError(BAD_ARGUMENT, f"operation type {kind!r} is not supported")
    with out.task(kind, OP_DESCRIPTIONS[kind], device.serial_number) as result:
        _power(device, farm)
        if kind == "program":
            firmware = op.get("firmware", {})
            path = firmware.get("file") if isinstance(firmware, dict) else None
            if not path:
                raise DeviceError(BAD_ARGUMENT, "program needs firmware.file")
            program(farm, device, out, str(path), dict(op.get("options", {})))
        elif kind == "erase":
            erase(farm, device, op)
        elif kind == "recover":
            farm.call(device.snr, "erase_all")
        elif kind == "reset":
            do_reset(farm, device, str(op.get("kind") or op.get("option") or "RESET_SYSTEM"))
        elif kind == "read":
            result.update(read(farm, device, op))
        elif kind == "write":
            write(farm, device, op)
        elif kind == "halt":
            farm.call(device.snr, "halt")
        else:
            farm.call(device.snr, "go")


# --- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="nrfutil", add_help=True)
    top.add_argument("--json", action="store_true")
    top.add_argument("--json-pretty", action="store_true")
    top.add_argument("--skip-overhead", action="store_true")
    top.add_argument("--log-output", default="file")
    top.add_argument("--log-level", default="info")
    top.add_argument("-V", "--version", action="store_true")
    commands = top.add_subparsers(dest="command")
    device = commands.add_parser("device")
    device.add_argument("--version", dest="device_version", action="store_true")
    verbs = device.add_subparsers(dest="verb")

    def verb(name: str, recordable: bool = False) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name)
        # Global output flags may also follow the verb (Nordic's own examples put them there).
        for flag in ("--json", "--json-pretty", "--skip-overhead"):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS)
        parser.add_argument("--serial-number")
        parser.add_argument("--traits")
        parser.add_argument("--remote-jlink")
        parser.add_argument("--family")
        parser.add_argument("--core", default="Application")
        if recordable:
            parser.add_argument("--append-batch", metavar="PATH")
            parser.add_argument("--generate", action="store_true")
        return parser

    verb("list")
    verb("device-info")
    verb("core-info")
    p = verb("read", True)
    p.add_argument("--address", required=True)
    p.add_argument("--bytes")
    p.add_argument("--width")
    p.add_argument("--direct", action="store_true")
    p.add_argument("--to-file")
    p = verb("write", True)
    p.add_argument("--address", required=True)
    p.add_argument("--value", required=True)
    p.add_argument("--width")
    p.add_argument("--direct", action="store_true")
    p = verb("erase", True)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--all", action="store_true")
    kind.add_argument("--uicr", action="store_true")
    kind.add_argument("--pages")
    p = verb("program", True)
    p.add_argument("--firmware", required=True)
    p.add_argument("--options", default="")
    p = verb("reset", True)
    p.add_argument("--reset-kind", default="RESET_SYSTEM")
    for name in ("halt", "go", "recover"):
        verb(name, True)
    p = verb("batch-execute")
    p.add_argument("--batch-file")
    p.add_argument("--batch-json")
    return top


def _operation(args: argparse.Namespace) -> dict[str, Any]:
    """The batch form of a direct verb (``--generate`` prints it, ``--append-batch`` stores it)."""
    verb = args.verb
    op: dict[str, Any] = {"type": verb}
    if verb == "program":
        pairs = [item.split("=", 1) for item in args.options.split(",") if item]
        if any(len(pair) != 2 for pair in pairs):
            raise DeviceError(BAD_ARGUMENT, f"--options {args.options!r}: write key=value,...")
        op["firmware"] = {"file": os.path.abspath(args.firmware)}
        op["options"] = dict(pairs)
    elif verb == "erase":
        op["kind"] = "uicr" if args.uicr else "pages" if args.pages else "all"
        if args.pages:
            op["pages"] = args.pages
    elif verb == "reset":
        op["kind"] = args.reset_kind
    elif verb == "read":
        op["address"] = _int(args.address, "--address")
        for key in ("bytes", "width"):
            if getattr(args, key) is not None:
                op[key] = _int(getattr(args, key), f"--{key}")
        if args.to_file:
            op["toFile"] = os.path.abspath(args.to_file)
    elif verb == "write":
        op["address"] = _int(args.address, "--address")
        op["value"] = _int(args.value, "--value")
    return {"operation": op, "core": args.core}


def _batch(args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        text = Path(args.batch_file).read_text() if args.batch_file else args.batch_json
        batch = json.loads(text or "")
    except (OSError, ValueError) as exc:
        raise DeviceError(BAD_ARGUMENT, f"unreadable batch: {exc}") from None
    version = batch.get("nrfutil_device_version") if isinstance(batch, dict) else None
    if version is not None and version != VERSION:
        raise DeviceError(
            BAD_ARGUMENT,
            f"batch file made by nrfutil-device {version}, this is {VERSION}; regenerate it",
        )
    operations = batch.get("operations") if isinstance(batch, dict) else None
    if not isinstance(operations, list):
        raise DeviceError(BAD_ARGUMENT, "batch has no operations list")
    return [entry.get("operation", {}) for entry in operations if isinstance(entry, dict)]


def _version(out: Output) -> None:
    out.emit(
        "info",
        {
            "name": "nrfutil-device",
            "version": VERSION,
            "classification": "nrf-external",
            "dependencies": [{"name": "JlinkARM", "version": JLINK_VERSION}],
        },
    )
    out.text(f"nrfutil-device {VERSION} (dfuhil virtual farm)\nJLink version: {JLINK_VERSION}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    out = Output(args.json or args.json_pretty, args.json_pretty, args.skip_overhead)
    if args.command is None:
        if args.version:
            out.emit("info", {"name": "nrfutil", "version": "8.1.1"})
            out.text("nrfutil 8.1.1 (dfuhil virtual farm)")
            return 0
        parser.print_usage(sys.stderr)
        return 2
    if args.device_version:
        _version(out)
        return 0
    if args.verb is None:
        print("nrfutil device: a subcommand is required", file=sys.stderr)
        return 2
    try:
        return _run(args, out)
    except DeviceError as exc:
        if not out.reported:  # failed before any operation began: selection, batch file
            with contextlib.suppress(DeviceError), out.task(args.verb, "Find devices", None):
                raise exc
        return 1


def _run(args: argparse.Namespace, out: Output) -> int:
    if args.verb in RECORDABLE and (args.generate or args.append_batch):
        op = _operation(args)
        if args.generate:
            out.emit("info", op)
            out.text(json.dumps(op))
        else:
            _append(Path(args.append_batch), op)
        return 0
    if args.remote_jlink:
        raise DeviceError(NOT_FOUND, "virtual probes are not behind a J-Link Remote Server")
    state = Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)
    farm = Farm(state)
    if args.verb == "list":
        with out.task("list", "List devices", None) as result:
            devices = farm.select(args.serial_number)
            result["devices"] = [list_entry(d) for d in devices]
        for d in devices:
            out.text(f"{d.serial_number}\nproduct         J-Link\nports           {d.port}")
            out.text("traits          jlink, seggerUsb, serialPorts, usb\n")
        out.text(f"Found {len(devices)} supported device(s)")
        return 0
    if args.serial_number is None:
        raise DeviceError(BAD_ARGUMENT, "select the device with --serial-number")
    devices = farm.select(args.serial_number)
    for device in devices:
        farm.hold(device)
        if args.verb == "device-info":
            with out.task("device-info", "Device info", device.serial_number) as result:
                result.update(device_info(device))
            out.text(f"{device.serial_number}: {device.device_version}")
        elif args.verb == "core-info":
            with out.task("core-info", "Core info", device.serial_number) as result:
                result.update(core_info(device))
            out.text(shlex.join(f"{k}={v}" for k, v in core_info(device).items()))
        elif args.verb == "batch-execute":
            for op in _batch(args):
                run_operation(farm, device, out, op)
        else:
            run_operation(farm, device, out, _operation(args)["operation"])
    return 0


def _append(path: Path, op: dict[str, Any]) -> None:
    batch: dict[str, Any] = {"nrfutil_device_version": VERSION, "operations": []}
    if path.exists():
        try:
            batch = json.loads(path.read_text())
        except ValueError as exc:
            raise DeviceError(BAD_ARGUMENT, f"{path} is not a batch file: {exc}") from None
    operations = batch.setdefault("operations", [])
    operations.append({"operationId": str(len(operations) + 1), **op})
    path.write_text(json.dumps(batch, indent=4) + "\n")


def install_shim(state_file: Path) -> Path:
    """Write ``<state dir>/bin/nrfutil`` (this stand-in, bound to that farm); its folder is what
    goes first on PATH."""
    bin_dir = state_file.resolve().parent / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "nrfutil"
    text = (
        "#!/bin/sh\n"
        "# dfuhil's virtual farm: nrfutil device for its virtual boards (dfuhil.sim.nrfutil)\n"
        f': "${{{STATE_ENV}:={state_file.resolve()}}}"\n'
        f"export {STATE_ENV}\n"
        f'exec {shlex.quote(sys.executable)} -m dfuhil.sim.nrfutil "$@"\n'
    )
    if not shim.exists() or shim.read_text() != text:
        tmp = shim.with_name(f".nrfutil.{os.getpid()}.tmp")  # parallel workers write it too
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, shim)
    return bin_dir


def _exit(code: int) -> NoReturn:
    sys.stdout.flush()
    raise SystemExit(code)


if __name__ == "__main__":
    _exit(main())
