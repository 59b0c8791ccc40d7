"""Twister hardware maps to and from boards.yaml.

A twister hardware map (Zephyr ``scripts/schemas/twister/hwmap-schema.yaml``) is a list of
entries with ``connected``, ``id`` (the probe's serial number), ``platform`` (a Zephyr board, or
a list of them), ``product`` and ``runner`` required, and ``serial``, ``baud``, ``fixtures``,
``notes``, ``runner_params``, ... optional. ``west twister --generate-hardware-map`` writes
``id``, ``product``, ``runner``, ``serial``, ``connected`` and leaves ``platform: unknown``.

Import turns each connected entry into a boards.yaml board and says which fields it had to guess
(the chip from the platform, the name, the flash layout it cannot know). Export writes a map
twister can use for the farm's real boards (virtual boards have no device twister could flash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from dfuhil.errors import InputError, Problem
from dfuhil.farm.model import Farm

# Zephyr board targets (hardware model v2) of the DKs in the chip catalogue.
PLATFORMS: dict[str, tuple[str, str]] = {  # platform -> (chip, board type)
    "nrf51dk/nrf51822": ("nRF51422_xxAC", "PCA10028"),
    "nrf52dk/nrf52832": ("nRF52832_xxAA", "PCA10040"),
    "nrf52833dk/nrf52833": ("nRF52833_xxAA", "PCA10100"),
    "nrf52840dk/nrf52840": ("nRF52840_xxAA", "PCA10056"),
}
BOARD_PLATFORMS = {board_type: platform for platform, (_, board_type) in PLATFORMS.items()}
# west runners that flash through a J-Link with Nordic's tools -> dfuhil probe backends.
# "jlink" (SEGGER's runner, what --generate-hardware-map writes) names no Nordic tool: the board
# then takes the farm's probe_backend.
RUNNERS = {"nrfutil": "nrfutil", "nrfjprog": "pynrfjprog", "jlink": None}
REQUIRED = ("connected", "id", "platform", "product", "runner")
NOTE_PREFIX = "dfuhil board "


@dataclass
class Imported:
    """The boards.yaml text drafted from a map, and what had to be guessed or skipped."""

    text: str
    guesses: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def export_hwmap(farm: Farm) -> tuple[list[dict[str, Any]], list[str]]:
    """A twister map of the farm's real boards, and a note per board left out."""
    entries: list[dict[str, Any]] = []
    notes = []
    for board in farm.boards:
        if board.is_virtual:
            notes.append(f"{board.name}: virtual, no device for twister to flash")
            continue
        platform = BOARD_PLATFORMS.get(board.board_type.pca if board.board_type else "", "unknown")
        entry: dict[str, Any] = {
            "connected": True,
            "id": f"{board.probe.snr:012d}",
            "platform": platform,
            "product": "J-Link",
            "runner": "nrfutil" if board.probe.tool == "nrfutil" else "nrfjprog",
            "serial": board.serial.port,
            "baud": board.serial.baud,
            "notes": f"{NOTE_PREFIX}{board.name} ({board.chip.name})",
        }
        if board.roles:
            entry["fixtures"] = list(board.roles)
        entries.append(entry)
    return entries, notes


def dump_hwmap(entries: list[dict[str, Any]], path: Path) -> None:
    yaml = YAML()
    yaml.default_flow_style = False
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(entries, out)


def import_hwmap(path: Path) -> Imported:
    """Read a twister map; every problem of the file at once, as FILE:LINE: field: message."""
    try:
        raw = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(Problem(str(path), None, "", f"cannot read: {exc.strerror}")) from None
    except YAMLError as exc:
        raise InputError(Problem(str(path), None, "", f"not YAML: {exc}")) from None
    if not isinstance(raw, CommentedSeq):
        raise InputError(
            Problem(str(path), 1, "", "a hardware map is a list of entries (- id: ..., ...)")
        )
    problems: list[Problem] = []
    result = Imported("")
    lines = ["boards:"]
    for index, entry in enumerate(raw):
        where = f"[{index}]"
        line = raw.lc.item(index)[0] + 1 if index < len(raw) else None
        if not isinstance(entry, CommentedMap):
            problems.append(Problem(str(path), line, where, "an entry is a mapping"))
            continue
        board = _entry(path, entry, where, line, problems, result)
        if board is not None:
            lines += board
    if problems:
        raise InputError(problems)
    if len(lines) == 1:
        lines = ["boards: []"]
    result.text = "\n".join(lines) + "\n"
    return result


def _entry(
    path: Path,
    entry: CommentedMap,
    where: str,
    line: int | None,
    problems: list[Problem],
    result: Imported,
) -> list[str] | None:
    def key_line(key: str) -> int | None:
        return entry.lc.key(key)[0] + 1 if key in entry else line

    def problem(key: str, message: str) -> None:
        problems.append(Problem(str(path), key_line(key), f"{where}.{key}", message))

    before = len(problems)
    for key in REQUIRED:
        if key not in entry:
            problem(key, f"missing; twister's hwmap schema requires {', '.join(REQUIRED)}")
    if "connected" in entry and not isinstance(entry["connected"], bool):
        problem("connected", "expected true or false")
    ident = str(entry.get("id", ""))
    if "id" in entry and not ident.isdigit():
        problem("id", f"{ident!r} is not a J-Link serial number (digits only)")
    runner = str(entry.get("runner", ""))
    if "runner" in entry and runner not in RUNNERS:
        problem(
            "runner",
            f"{runner!r}: dfuhil drives J-Links with Nordic's tools; use one of "
            f"{', '.join(RUNNERS)}",
        )
    if "baud" in entry and (isinstance(entry["baud"], bool) or not isinstance(entry["baud"], int)):
        problem("baud", "expected an integer")
    fixtures = entry.get("fixtures", [])
    if not isinstance(fixtures, list) or not all(isinstance(f, str) for f in fixtures):
        problem("fixtures", "expected a list of strings")
    if len(problems) > before:
        return None
    if not entry["connected"]:
        result.skipped.append(f"{where} id {ident}: connected: false")
        return None
    platforms = entry["platform"] if isinstance(entry["platform"], list) else [entry["platform"]]
    known = [str(p) for p in platforms if str(p) in PLATFORMS]
    name = _name(entry, ident, known)
    guessed = []
    if known:
        chip, board_type = PLATFORMS[known[0]]
        if len(platforms) > 1:
            guessed.append(f"chip {chip} from the first known platform {known[0]}")
    else:
        chip, board_type = "TODO", ""
        guessed.append(f"chip: platform {platforms[0]!r} names no DK dfuhil knows; write it")
    if not str(entry.get("notes", "")).startswith(NOTE_PREFIX):
        guessed.append(f"name {name}")
    guessed.append("flash_layout (a map has none)")
    serial = entry.get("serial")
    if serial is None:
        guessed.append("serial.port: the entry has none (serial_pty is not a port)")
    out = [f"  - name: {name}", f"    chip: {chip}"]
    if board_type:
        out.append(f"    board_type: {board_type}")
    backend = RUNNERS[runner]
    if backend is None:
        guessed.append("probe backend: runner jlink, so the farm's probe_backend")
        out.append(f"    probe: {{snr: {int(ident)}}}")
    else:
        out.append(f"    probe: {{backend: {backend}, snr: {int(ident)}}}")
    baud = entry.get("baud", 115200)
    out.append(f"    serial: {{port: '{serial or 'TODO'}', baud: {baud}}}")
    if fixtures:
        out.append(f"    roles: [{', '.join(fixtures)}]")
    out.append("    flash_layout: TODO")
    result.guesses.append(f"{name}: guessed " + "; ".join(guessed))
    return out


def _name(entry: CommentedMap, ident: str, platforms: list[str]) -> str:
    notes = str(entry.get("notes", ""))
    if notes.startswith(NOTE_PREFIX):
        return notes.removeprefix(NOTE_PREFIX).split()[0]
    stem = platforms[0].split("/")[0] if platforms else "board"
    return f"{stem}-{int(ident)}"
