"""Read boards.yaml into a :class:`~dfuhil.farm.model.Farm`, or say precisely what is wrong.

The file is edited by hand in a lab, usually in a hurry, so the loader reports *every* problem at
once, each with the line a text editor shows and a dotted field path, instead of stopping at the
first. Three passes: ruamel.yaml round-trip parsing (which keeps line numbers), pydantic per item
(a broken board must not hide the problems of the next one), then cross-checks against the chip
catalogue and the rest of the file.
"""

from __future__ import annotations

import difflib
import functools
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml.comments import CommentedBase, CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from dfuhil.errors import InputError, Problem
from dfuhil.farm.model import (
    PRIMARY_SLOT,
    SCRATCH_AREA,
    SECONDARY_SLOT,
    BleSpec,
    BoardSpec,
    Farm,
    FirmwareSet,
    FlashLayout,
    ImageRef,
    LedSpec,
    LineFaults,
    McubootSpec,
    PowerSpec,
    ProbeSpec,
    RadioSpec,
    Region,
    SerialSpec,
)
from dfuhil.farm.schema import (
    BOARD_NAME_RE,
    UNION_TAGS,
    VIRTUAL_PORT,
    BleLinkSchema,
    BleSchema,
    BoardSchema,
    FarmSchema,
    FirmwareSetSchema,
    FlashLayoutSchema,
    LedSchema,
    LineFaultsSchema,
    McubootSchema,
    PowerSchema,
    ProbeSchema,
    RadioSchema,
    SerialSchema,
)
from dfuhil.formats.ble_link import LinkConfig
from dfuhil.formats.chips import (
    BOARD_TYPES,
    BoardType,
    Chip,
    chip_names,
    find_board_type,
    find_chip,
)
from dfuhil.formats.mcuboot import KeyFileError, load_public_key
from dfuhil.formats.mcuboot_build import SerialRecovery
from dfuhil.formats.pm_static import read_pm_static
from dfuhil.formats.smp_uart import SmpUart
from dfuhil.formats.yamltext import load_round_trip

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)
S = TypeVar("S")
R = TypeVar("R")
K = TypeVar("K")

VIRTUAL_SNR_BASE = 900_000_000
IMAGE_ROLES = ("softdevice", "bootloader", "application", "device_page")
MISSING_FILE_FIX = (
    "run `make firmware` for the virtual farm's sample images, or drop your images in firmware/"
)
_SECTIONS: dict[str, type[dict[Any, Any]] | type[list[Any]]] = {
    "flash_layouts": dict,
    "firmware_sets": dict,
    "boards": list,
}


def load_farm(path: str | Path, *, check_files: bool = False) -> Farm:
    """Load and fully check a farm description; raise InputError listing every problem."""
    file = str(path)
    raw = _read_yaml(Path(path), file)
    report = _Report(file, raw)
    parsed = _validate(raw, report)
    farm = _Resolver(parsed, report, Path(path), check_files).farm()
    if report.problems or farm is None:
        raise InputError(report.sorted())
    return farm


# --- pass 1: YAML -------------------------------------------------------------------------


def _read_yaml(path: Path, file: str) -> CommentedMap:
    """Parse with line numbers kept; every failure becomes one located Problem."""

    def fail(message: str, line: int | None = None) -> InputError:
        return InputError(Problem(file=file, line=line, field="", message=message))

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("file not found; pass --boards PATH") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    try:
        data = load_round_trip(text)
    except MarkedYAMLError as exc:
        raise fail(*_describe_yaml_error(exc)) from None
    except (YAMLError, ValueError) as exc:
        raise fail(f"YAML error: {exc}") from None
    if data is None:
        raise fail("the file is empty; start from boards.lab.example.yaml")
    if not isinstance(data, CommentedMap):
        raise fail("expected a mapping at the top level (version: 1, boards: [...])", 1)
    return data


def _describe_yaml_error(exc: MarkedYAMLError) -> tuple[str, int | None]:
    """ruamel's problem and context, without its multi-line source excerpt and notes."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    parts = [p for p in (exc.context, exc.problem) if p]
    if exc.context_mark is not None and exc.problem_mark is not None and exc.context:
        parts[0] = f"{exc.context} (line {exc.context_mark.line + 1})"
    return "YAML syntax error: " + ", ".join(parts), line


def _plain(node: Any) -> Any:
    """ruamel's round-trip types as plain Python, so strict pydantic sees ints, strs, dicts."""
    if isinstance(node, Mapping):
        return {_plain(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    for kind in (int, float, str):
        if isinstance(node, kind):
            return kind(node)
    return node


# --- locating problems --------------------------------------------------------------------


def _key_line(node: CommentedMap, key: Any) -> int | None:
    try:
        return int(node.lc.key(key)[0]) + 1
    except (KeyError, TypeError, AttributeError):  # merged (<<) keys have no position
        return None


def _item_line(node: CommentedSeq, index: int) -> int | None:
    try:
        return int(node.lc.item(index)[0]) + 1
    except (KeyError, TypeError, AttributeError):
        return None


def _node_line(node: Any) -> int | None:
    return int(node.lc.line) + 1 if isinstance(node, CommentedBase) else None


def _locate(raw: CommentedMap, loc: Loc) -> tuple[int | None, list[str | int]]:
    """Follow ``loc`` through the parsed YAML: the deepest line reached, and the shown path.

    Steps that do not exist in the YAML are pydantic's own (union tags, ``[key]``) and are
    dropped, except a missing last key, which is exactly what the user has to add. In the shown
    path, list indexes are ints and mapping keys are strs (even a key written as ``1:``).
    """
    node: Any = raw
    line = _node_line(raw)
    shown: list[str | int] = []
    steps = [s for s in loc if s not in UNION_TAGS and s != "[key]"]
    for i, step in enumerate(steps):
        if isinstance(node, CommentedMap) and step in node:
            line = _key_line(node, step) or _node_line(node) or line
            node = node[step]
            shown.append(str(step))
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
            line = _item_line(node, step) or line
            node = node[step]
            shown.append(step)
        elif i == len(steps) - 1:
            shown.append(str(step))
    return line, shown


def _board_labels(raw: CommentedMap) -> dict[int, str]:
    """``boards[dk-a]`` reads better than ``boards[3]``, but only when the name is unambiguous."""
    boards = raw.get("boards")
    if not isinstance(boards, list):
        return {}
    names = [b.get("name") if isinstance(b, Mapping) else None for b in boards]
    return {
        i: n
        for i, n in enumerate(names)
        if isinstance(n, str) and BOARD_NAME_RE.match(n) and names.count(n) == 1
    }


def _render(shown: Sequence[str | int], labels: Mapping[int, str]) -> str:
    """``boards[dk-a].probe.snr``: list items in brackets (boards by name), keys dotted."""
    text = ""
    for i, step in enumerate(shown):
        if isinstance(step, int):
            label = labels.get(step, str(step)) if shown[:i] == ["boards"] else str(step)
            text += f"[{label}]"
        else:
            text += f".{step}" if text else step
    return text


@dataclass
class _Report:
    """Collects located problems; knows how to turn a loc into FILE:LINE and a field path."""

    file: str
    raw: CommentedMap
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._labels = _board_labels(self.raw)

    def add(self, loc: Loc, message: str) -> None:
        line, shown = _locate(self.raw, loc)
        self.problems.append(Problem(self.file, line, _render(shown, self._labels), message))

    def line(self, loc: Loc) -> int | None:
        return _locate(self.raw, loc)[0]

    def where(self, loc: Loc) -> str:
        """How to point at another place in the same file from a message."""
        line, shown = _locate(self.raw, loc)
        return f"{_render(shown, self._labels)} (line {line})"

    def add_validation_error(self, prefix: Loc, error: ValidationError) -> None:
        for detail in error.errors(include_url=False):
            loc = prefix + tuple(detail["loc"])
            self.add(loc, _message(detail, loc))

    def sorted(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: p.line or 0)


# --- pass 2: pydantic ---------------------------------------------------------------------


_EXPECTED = {
    "model_type": "a mapping (key: value)",
    "dict_type": "a mapping (key: value)",
    "list_type": "a list",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
}


def _describe_value(value: Any) -> str:
    """A YAML reader's name for a value: 'a mapping', 'the string "x"', 'null'."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(detail: ErrorDetails, loc: Loc) -> str:
    """Reword pydantic's messages so they say what to do in YAML terms."""
    kind = detail["type"]
    key = next((s for s in reversed(loc) if s != "[key]" and s not in UNION_TAGS), "")
    if kind == "extra_forbidden":
        return _unknown_key_message(str(key), _allowed_keys(loc[:-1]))
    if kind == "missing":
        return f"required key {key!r} is missing; add it"
    msg = detail["msg"]
    if "[key]" in loc or msg.startswith("Keys should be strings"):
        return f"the key {key!r} must be a string (a name); quote it"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    got = _describe_value(detail.get("input"))
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got}"
    if msg.startswith("Input should be "):
        return f"should be {msg.removeprefix('Input should be ')}, got {got}"
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


def _unknown_key_message(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}allowed here: {', '.join(allowed)}"


def _members(tp: Any) -> list[Any]:
    """Flatten Annotated[...] and unions to their member types."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _allowed_keys(loc: Loc) -> list[str]:
    """The keys the schema allows at ``loc``, for 'unknown key' messages."""
    types: list[Any] = [FarmSchema]
    for step in (s for s in loc if s not in UNION_TAGS):
        following: list[Any] = []
        for tp in (m for t in types for m in _members(t)):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if isinstance(step, str) and step in tp.model_fields:
                    following.append(tp.model_fields[step].annotation)
            elif get_origin(tp) is list and isinstance(step, int):
                following.append(get_args(tp)[0])
            elif get_origin(tp) is dict:
                following.append(get_args(tp)[1])
        types = following
    for tp in (m for t in types for m in _members(t)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return list(tp.model_fields)
    return []


@dataclass
class _Parsed:
    """What pass 2 accepted; names in ``broken_*`` failed validation and were reported."""

    top: FarmSchema | None
    layouts: dict[str, FlashLayoutSchema]
    firmware_sets: dict[str, FirmwareSetSchema]
    boards: list[_BoardParts]
    broken_layouts: set[str]
    broken_firmware_sets: set[str]


def _validate(raw: CommentedMap, report: _Report) -> _Parsed:
    """Validate the top level and each section item on its own, reporting every error."""
    plain = _plain(raw)
    shell = dict(plain)
    for section, kind in _SECTIONS.items():
        if isinstance(plain.get(section), kind):
            shell[section] = kind()
    top: FarmSchema | None = None
    try:
        top = FarmSchema.model_validate(shell)
    except ValidationError as exc:
        report.add_validation_error((), exc)
    layouts, broken_layouts = _validate_named(
        plain.get("flash_layouts"), "flash_layouts", FlashLayoutSchema, report
    )
    sets, broken_sets = _validate_named(
        plain.get("firmware_sets"), "firmware_sets", FirmwareSetSchema, report
    )
    return _Parsed(
        top=top,
        layouts=layouts,
        firmware_sets=sets,
        boards=_validate_boards(plain.get("boards"), report),
        broken_layouts=broken_layouts,
        broken_firmware_sets=broken_sets,
    )


def _validate_named(
    items: Any, section: str, model: type[M], report: _Report
) -> tuple[dict[str, M], set[str]]:
    good: dict[str, M] = {}
    broken: set[str] = set()
    if not isinstance(items, dict):
        return good, broken
    for name, item in items.items():
        if not isinstance(name, str):
            report.add((section, name), f"names must be strings; quote {name!r}")
            continue
        try:
            good[name] = model.model_validate(item)
        except ValidationError as exc:
            report.add_validation_error((section, name), exc)
            broken.add(name)
    return good, broken


@dataclass(frozen=True)
class _BoardParts:
    """The fields of one board that passed validation.

    A field that failed is None and named in ``failed``, so a board with one typo still gets
    every cross-check that does not depend on the typo, instead of none at all.
    """

    index: int
    failed: frozenset[str] = frozenset()
    name: str | None = None
    chip: str | None = None
    board_type: str | None = None
    probe: ProbeSchema | None = None
    serial: SerialSchema | None = None
    leds: LedSchema | None = None
    roles: tuple[str, ...] = ()
    firmware: str | FirmwareSetSchema | None = None
    flash_layout: str | FlashLayoutSchema | None = None
    smp_udp: str | None = None
    place: str | None = None
    lab_host: str | None = None
    power: PowerSchema | None = None
    ble: BleSchema | None = None

    @classmethod
    def of(cls, index: int, board: BoardSchema) -> _BoardParts:
        """Every field of a board that validated as a whole."""
        values = {name: getattr(board, name) for name in BoardSchema.model_fields}
        values["roles"] = tuple(board.roles)
        return cls(index=index, **values)

    @classmethod
    def partial(cls, index: int, item: Any, error: ValidationError) -> _BoardParts | None:
        """Re-validate field by field the fields the error does not mention."""
        if not isinstance(item, dict):
            return None
        fields = BoardSchema.model_fields
        failed = {e["loc"][0] for e in error.errors() if e["loc"] and e["loc"][0] in fields}
        values: dict[str, Any] = {}
        for name in fields.keys() - failed:
            if name in item:
                try:
                    values[name] = _field_adapter(name).validate_python(item[name])
                except ValidationError:  # pragma: no cover - already passed as part of the board
                    failed.add(name)
        if "roles" in values:
            values["roles"] = tuple(values["roles"])
        return cls(index=index, failed=frozenset(str(f) for f in failed), **values)

    @property
    def label(self) -> str:
        """A name for inline layouts and firmware sets."""
        return self.name or f"#{self.index}"


@functools.cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(BoardSchema.model_fields[name].rebuild_annotation())


def _validate_boards(items: Any, report: _Report) -> list[_BoardParts]:
    if not isinstance(items, list):
        return []
    if not items:
        report.add(("boards",), "no boards; add at least one (see boards.lab.example.yaml)")
    parts: list[_BoardParts] = []
    for index, item in enumerate(items):
        try:
            parts.append(_BoardParts.of(index, BoardSchema.model_validate(item)))
        except ValidationError as exc:
            report.add_validation_error(("boards", index), exc)
            partial = _BoardParts.partial(index, item, exc)
            if partial is not None:
                parts.append(partial)
    return parts


# --- pass 3: cross-checks -----------------------------------------------------------------


def _known_chips() -> str:
    return ", ".join(chip_names())


def _known_board_types() -> str:
    return ", ".join(f"{b.pca} ({b.title})" for b in BOARD_TYPES.values())


def _pin_ranges(chip: Chip) -> str:
    """Valid flat pin numbers per port, e.g. '0..31 (P0), 32..41 (P1)'."""
    spans = [f"{32 * n}..{32 * n + port.pins - 1} (P{n})" for n, port in enumerate(chip.gpio_ports)]
    return ", ".join(spans)


def _size_text(size: int) -> str:
    return f"0x{size:X} = {size // 1024} KiB" if size % 1024 == 0 else f"0x{size:X}"


class _Resolver:
    """Pass 3: follow references, fill defaults, cross-check, build the model."""

    def __init__(self, parsed: _Parsed, report: _Report, path: Path, check_files: bool) -> None:
        self.parsed = parsed
        self.report = report
        self.path = path
        self.base_dir = Path(os.path.abspath(path)).parent
        self.check_files = check_files

    def farm(self) -> Farm | None:
        layouts = self._named(self.parsed.layouts, "flash_layouts", self._layout)
        sets = self._named(self.parsed.firmware_sets, "firmware_sets", self._firmware_set)
        boards = [self._board(parts, layouts, sets) for parts in self.parsed.boards]
        self._check_unique(self.parsed.boards)
        top = self.parsed.top
        if top is None or any(b is None for b in boards):
            return None
        resolved = tuple(b for b in boards if b is not None)
        radio = self._radio(top.virtual_farm.radio, {b.name for b in resolved})
        line_faults = self._line_faults(top.virtual_farm.line_faults, resolved)
        return Farm(
            path=self.path,
            boards=resolved,
            time_scale=top.virtual_farm.time_scale,
            radio=radio,
            line_faults=line_faults,
            coordinator=top.coordinator,
            ble_hci=top.ble_hci,
        )

    def _line_faults(
        self, schema: dict[str, LineFaultsSchema], boards: tuple[BoardSpec, ...]
    ) -> tuple[tuple[str, LineFaults], ...]:
        """Per-board line faults; only virtual boards have a virtual line to fault."""
        virtual = {b.name for b in boards if b.is_virtual}
        for name in schema:
            if name not in virtual:
                self.report.add(
                    ("virtual_farm", "line_faults", name),
                    f"no virtual board named {name!r}; line faults apply to virtual boards "
                    f"only (virtual boards: {', '.join(sorted(virtual)) or 'none'})",
                )
        return tuple(
            (name, LineFaults(**faults.model_dump())) for name, faults in sorted(schema.items())
        )

    def _radio(self, schema: RadioSchema, names: set[str]) -> RadioSpec:
        loc: Loc = ("virtual_farm", "radio", "neighbours")
        for board, heard in schema.neighbours.items():
            for name in [board, *heard]:
                if name not in names:
                    self.report.add(
                        (*loc, board),
                        f"no board named {name!r} (boards: {', '.join(sorted(names))})",
                    )
        neighbours = tuple((b, tuple(h)) for b, h in sorted(schema.neighbours.items()))
        return RadioSpec(loss=schema.loss, neighbours=neighbours, seed=schema.seed)

    @staticmethod
    def _named(
        items: dict[str, S], section: str, resolve: Callable[[str, S, Loc], R | None]
    ) -> dict[str, R | None]:
        return {name: resolve(name, schema, (section, name)) for name, schema in items.items()}

    def _chip(self, name: str, loc: Loc) -> Chip | None:
        chip = find_chip(name)
        if chip is None:
            self.report.add(loc, f"unknown chip {name!r}; known chips: {_known_chips()}")
        return chip

    # flash layouts

    def _layout(self, name: str, schema: FlashLayoutSchema, loc: Loc) -> FlashLayout | None:
        chip = self._chip(schema.chip, (*loc, "chip"))
        if schema.pm_static is not None:
            return self._pm_layout(name, chip, schema.pm_static, loc)
        assert schema.regions is not None
        regions = {n: Region(n, r.start, r.size) for n, r in schema.regions.items()}
        if chip is not None:
            for region in regions.values():
                self._check_region(chip, region, (*loc, "regions", region.name))
        self._check_overlaps(list(regions.values()), (*loc, "regions"))
        return FlashLayout(name=name, chip=chip, regions=regions) if chip else None

    def _pm_layout(
        self, name: str, chip: Chip | None, pm_static: str, loc: Loc
    ) -> FlashLayout | None:
        """Regions from a Partition Manager file; its own problems name its own lines."""
        path = Path(os.path.normpath(self.base_dir / pm_static))
        try:
            table = read_pm_static(path)
        except InputError as exc:
            line = self.report.line((*loc, "pm_static"))
            where = f"{self.report.file}:{line}" if line else self.report.file
            for problem in exc.problems:
                message = f"{problem.message} (read for flash layout {name!r}, {where})"
                self.report.problems.append(replace(problem, message=message))
            return None
        regions = {p.name: Region(p.name, p.address, p.size) for p in table.partitions}
        containers = frozenset(p.name for p in table.partitions if p.is_container)
        if chip is not None:
            # Partitions inside a span (mcuboot_pad, app) need not be whole pages; the span does.
            nested = table.nested()
            for region in regions.values():
                self._check_region(
                    chip, region, (*loc, "pm_static"), pages=region.name not in nested
                )
        if chip is None:
            return None
        return FlashLayout(name, chip, regions, containers=containers, source=path)

    def _check_region(self, chip: Chip, region: Region, loc: Loc, *, pages: bool = True) -> None:
        # From a pm_static file, loc is the pm_static key: name the partition in the message.
        pm = loc[-1] == "pm_static"
        what = f"partition {region.name!r}: " if pm else ""
        for key, value in (("start", region.start), ("size", region.size)) if pages else ():
            if value % chip.page_size:
                self.report.add(
                    loc if pm else (*loc, key),
                    f"{what}{'address' if pm and key == 'start' else key} 0x{value:X} is not a "
                    f"multiple of the {chip.name} page size 0x{chip.page_size:X}; regions must "
                    "be whole pages",
                )
        if region.end > chip.flash_size:
            self.report.add(
                loc,
                f"{what}ends at 0x{region.end:X}, beyond the end of {chip.name} flash "
                f"(0x{chip.flash_size:X}, flash size {_size_text(chip.flash_size)}); "
                "shrink or move it",
            )

    def _check_overlaps(self, regions: list[Region], loc: Loc) -> None:
        for j, later in enumerate(regions):
            for earlier in regions[:j]:
                if later.start < earlier.end and earlier.start < later.end:
                    self.report.add(
                        (*loc, later.name),
                        f"region {later.name!r} (0x{later.start:X}..0x{later.end:X}) overlaps "
                        f"region {earlier.name!r} (0x{earlier.start:X}..0x{earlier.end:X}); "
                        "make them disjoint",
                    )

    # firmware sets

    def _firmware_set(self, name: str, schema: FirmwareSetSchema, loc: Loc) -> FirmwareSet | None:
        chip = self._chip(schema.chip, (*loc, "chip"))
        images = {role: self._image(role, schema, loc) for role in (*IMAGE_ROLES, "dfu_update")}
        mcuboot = None
        if schema.mcuboot is not None:
            mcuboot = self._mcuboot(schema.mcuboot, (*loc, "mcuboot"))
        if chip is None:
            return None
        return FirmwareSet(name=name, chip=chip, **images, mcuboot=mcuboot)

    def _file(self, relative: str) -> Path:
        return Path(os.path.normpath(self.base_dir / relative))

    def _mcuboot(self, schema: McubootSchema, loc: Loc) -> McubootSpec:
        key = self._file(schema.key)
        if self.check_files:
            self._check_key(key, schema.allow_sample_keys, (*loc, "key"))
        builds = tuple((name, self._file(file)) for name, file in schema.builds.items())
        for name, file in builds if self.check_files else ():
            if not file.is_file():
                self.report.add(
                    (*loc, "builds", name), f"file not found: {file}; {MISSING_FILE_FIX}"
                )
        sr = schema.serial_recovery
        return McubootSpec(
            mode=schema.mode,
            key=key,
            header_size=schema.header_size,
            max_align=schema.max_align,
            write_size=schema.write_size,
            max_sectors=schema.max_sectors,
            downgrade_prevention=schema.downgrade_prevention,
            allow_sample_keys=schema.allow_sample_keys,
            confirm=schema.confirm,
            transports=tuple(schema.transports),
            dfu_lock_timeout_ms=schema.dfu_lock_timeout_ms,
            serial_recovery=None if sr is None else SerialRecovery(wait_ms=sr.wait_ms),
            builds=builds,
            smp_uart=None if schema.smp_uart is None else SmpUart(**schema.smp_uart.model_dump()),
            ble_link=LinkConfig(**(schema.ble_link or BleLinkSchema()).model_dump()),
        )

    def _check_key(self, key: Path, allow_sample: bool, loc: Loc) -> None:
        """The key MCUboot trusts must load, and be no published sample key unless allowed."""
        if not key.is_file():
            self.report.add(
                loc,
                f"key file not found: {key}; point it at the PEM your MCUboot was built with "
                "(CONFIG_BOOT_SIGNATURE_KEY_FILE), or make one with `dfuhil image keygen`",
            )
            return
        try:
            public = load_public_key(key)
        except KeyFileError as exc:
            self.report.add(loc, str(exc))
            return
        if public.sample_key and not allow_sample:
            self.report.add(
                loc,
                f"{key.name} is MCUboot's published sample key {public.sample_key}: anyone can "
                "sign images for a board that trusts it. Use your own key (`dfuhil image "
                "keygen`), or set allow_sample_keys: true for a development board",
            )

    def _image(self, role: str, schema: FirmwareSetSchema, loc: Loc) -> ImageRef | None:
        image = getattr(schema, role)
        if image is None:
            return None
        file = Path(os.path.normpath(self.base_dir / image.file))
        if self.check_files and not file.is_file():
            self.report.add((*loc, role, "file"), f"file not found: {file}; {MISSING_FILE_FIX}")
        return ImageRef(role=role, file=file, banner=image.banner, protocol=image.protocol)

    # boards

    def _board(
        self,
        parts: _BoardParts,
        layouts: Mapping[str, FlashLayout | None],
        sets: Mapping[str, FirmwareSet | None],
    ) -> BoardSpec | None:
        loc: Loc = ("boards", parts.index)
        chip = self._chip(parts.chip, (*loc, "chip")) if parts.chip is not None else None
        board_type = self._board_type(parts.board_type, chip, (*loc, "board_type"))
        probe = self._probe(parts.index, parts.probe, (*loc, "probe")) if parts.probe else None
        serial = self._serial(parts, (*loc, "serial"))
        leds = None if "leds" in parts.failed else self._leds(parts, board_type, chip, loc)
        layout = self._board_layout(parts, layouts, chip, (*loc, "flash_layout"))
        firmware = self._board_firmware(parts, sets, chip, (*loc, "firmware"))
        if firmware is not None and firmware.mcuboot is not None and layout is not None:
            self._mcuboot_layout(firmware, layout, (*loc, "flash_layout"))
        self._smp_udp(parts, firmware, (*loc, "smp_udp"))
        self._ble(parts, firmware, (*loc, "ble"))
        self._power(parts, (*loc, "power"))
        if (
            parts.failed
            or parts.name is None
            or chip is None
            or probe is None
            or serial is None
            or leds is None
            or layout is None
            or (parts.firmware is not None and firmware is None)
        ):
            return None
        return BoardSpec(
            name=parts.name,
            chip=chip,
            board_type=board_type,
            probe=probe,
            serial=serial,
            leds=leds,
            roles=parts.roles,
            firmware=firmware,
            layout=layout,
            line=self.report.line(loc) or 0,
            smp_udp=parts.smp_udp,
            place=parts.place,
            lab_host=parts.lab_host,
            ble=BleSpec(name=parts.ble.name, address=parts.ble.address) if parts.ble else None,
            power=PowerSpec(parts.power.model, parts.power.host, parts.power.index)
            if parts.power
            else None,
        )

    def _power(self, board: _BoardParts, loc: Loc) -> None:
        """A supply switch is driven through labgrid, so the board needs its place."""
        if board.power is not None and board.place is None and "place" not in board.failed:
            self.report.add(
                loc,
                "the switch is driven through labgrid (labgrid-client power): add place: NAME, "
                "the labgrid place whose exporter publishes this switch",
            )

    def _ble(self, board: _BoardParts, firmware: FirmwareSet | None, loc: Loc) -> None:
        """A board on the air needs a name to be found by, and firmware that serves SMP there."""
        if "ble" in board.failed or firmware is None:
            return
        wants_ble = bool(firmware.mcuboot and "ble" in firmware.mcuboot.transports)
        if wants_ble and board.ble is None:
            self.report.add(
                loc[:-1],
                f"firmware set {firmware.name!r} speaks SMP over ble, but the board has no ble; "
                "add ble: {name: NAME} (the build's CONFIG_BT_DEVICE_NAME)",
            )
        elif board.ble is not None and not wants_ble:
            self.report.add(
                loc,
                f"the board's firmware set {firmware.name!r} lists no ble transport "
                "(mcuboot.transports); add ble there or remove the board's ble",
            )

    def _smp_udp(self, board: _BoardParts, firmware: FirmwareSet | None, loc: Loc) -> None:
        """A UDP transport needs an address; 'virtual' only on the virtual farm."""
        wants_udp = bool(firmware and firmware.mcuboot and "udp" in firmware.mcuboot.transports)
        if "smp_udp" in board.failed or board.probe is None:
            return
        virtual = board.probe.backend == "virtual"
        if board.smp_udp is None:
            if wants_udp:
                fix = "smp_udp: virtual" if virtual else "smp_udp: HOST:PORT (the board's address)"
                self.report.add(
                    loc[:-1],
                    f"firmware set {firmware.name if firmware else ''!r} speaks SMP over udp, "
                    f"but the board has no smp_udp; add {fix}",
                )
        elif board.smp_udp == VIRTUAL_PORT and not virtual:
            self.report.add(
                loc,
                "'virtual' only exists on the virtual farm; give this board's host:port",
            )
        elif board.smp_udp != VIRTUAL_PORT and virtual:
            self.report.add(
                loc, "a virtual board's UDP port is assigned by the virtual farm; write 'virtual'"
            )
        elif not wants_udp and firmware is not None:
            self.report.add(
                loc,
                "the board's firmware set lists no udp transport (mcuboot.transports); add udp "
                "there or remove smp_udp",
            )

    def _mcuboot_layout(self, firmware: FirmwareSet, layout: FlashLayout, loc: Loc) -> None:
        """The layout must have the slots the firmware set's MCUboot mode works with."""
        spec = firmware.mcuboot
        assert spec is not None
        mode = spec.mode
        slots = layout.mcuboot_slots()
        what = f"firmware set {firmware.name!r} runs MCUboot in {mode}"
        needed = [(PRIMARY_SLOT, slots.primary, "the slot MCUboot boots")]
        if mode != "single-slot":
            needed.append((SECONDARY_SLOT, slots.secondary, "where updates are uploaded"))
        if mode == "swap-scratch":
            needed.append((SCRATCH_AREA, slots.scratch, "the scratch area of the swap"))
        missing = [(n, why) for n, region, why in needed if region is None]
        for name, why in missing:
            other = " or use mode single-slot (serial recovery)" if name == SECONDARY_SLOT else ""
            self.report.add(
                loc,
                f"{what}, which needs a {name!r} region ({why}); flash layout {layout.name!r} "
                f"has {', '.join(layout.regions) or 'none'}. Add it{other}",
            )
        if missing:
            return
        sector = layout.chip.page_size
        areas = [r for r in (slots.primary, slots.secondary) if r is not None]
        if mode == "single-slot":
            areas = areas[:1]
        largest = max(areas, key=lambda r: r.size)
        sectors = largest.size // sector
        if spec.trailer(largest.size).status_records and sectors > spec.max_sectors:
            self.report.add(
                loc,
                f"{largest.name} has {sectors} sectors of {sector // 1024} KiB but "
                f"mcuboot.max_sectors is {spec.max_sectors} (BOOT_MAX_IMG_SECTORS): MCUboot "
                f"cannot swap it; raise max_sectors to at least {sectors}",
            )
        for region in areas:
            trailer = spec.trailer(region.size)
            room = region.size - trailer.size - (sector if mode == "swap-move" else 0)
            if room < spec.header_size + 1024:
                self.report.add(
                    loc,
                    f"{region.name} (0x{region.size:X} bytes) leaves no room for an image after "
                    f"the {mode} trailer (0x{trailer.size:X} bytes); enlarge the slot",
                )
        if slots.scratch is not None and mode == "swap-scratch" and slots.scratch.size < sector:
            self.report.add(
                loc,
                f"{SCRATCH_AREA} must hold at least one {sector // 1024} KiB sector; enlarge it",
            )

    def _board_type(self, name: str | None, chip: Chip | None, loc: Loc) -> BoardType | None:
        if name is None:
            return None
        board_type = find_board_type(name)
        if board_type is None:
            self.report.add(loc, f"unknown board type {name!r}; known: {_known_board_types()}")
        elif chip is not None and chip.name not in board_type.chips:
            self.report.add(
                loc,
                f"{board_type.pca} ({board_type.title}) carries {', '.join(board_type.chips)}, "
                f"not {chip.name}; fix chip or board_type",
            )
        return board_type

    def _probe(self, index: int, schema: ProbeSchema, loc: Loc) -> ProbeSpec | None:
        if schema.backend != "virtual":
            backend, chosen = self._backend(schema)
            if schema.snr is None:
                lister = "nrfutil device list" if backend == "nrfutil" else "nrfjprog --ids"
                self.report.add(
                    (*loc, "snr"),
                    f"a {backend} probe needs snr: the J-Link serial number "
                    f"(on the probe's label, or `{lister}`)",
                )
                return None
            host, port = schema.ip, None
            if schema.remote is not None:
                host, _, text = schema.remote.rpartition(":")
                host, port = (host, int(text)) if host else (schema.remote, None)
            return ProbeSpec(
                backend,
                schema.snr,
                host,
                schema.speed_khz,
                port=port,
                allow_recover=schema.allow_recover,
                chosen=chosen,
            )
        for key in ("ip", "remote"):
            if getattr(schema, key) is not None:
                self.report.add(
                    (*loc, key),
                    f"a virtual probe has no network address; remove {key} (or use backend: "
                    "nrfutil)",
                )
                return None
        snr = schema.snr if schema.snr is not None else VIRTUAL_SNR_BASE + index + 1
        return ProbeSpec("virtual", snr, None, schema.speed_khz, allow_recover=schema.allow_recover)

    def _backend(
        self, schema: ProbeSchema
    ) -> tuple[Literal["nrfutil", "pynrfjprog", "jlink"], Literal["board", "farm", "auto"]]:
        """The board's own backend, else the farm's probe_backend (``auto``: nrfutil on PATH)."""
        if schema.backend is not None and schema.backend != "virtual":
            return schema.backend, "board"
        default = self.parsed.top.probe_backend if self.parsed.top is not None else "auto"
        if default != "auto":
            return default, "farm"
        return ("nrfutil" if shutil.which("nrfutil") else "pynrfjprog"), "auto"

    def _serial(self, board: _BoardParts, loc: Loc) -> SerialSpec | None:
        schema = board.serial
        if "serial" in board.failed or board.probe is None:
            return None
        jlink = board.probe.backend != "virtual"
        if schema is None:
            if jlink:
                self.report.add(
                    loc,
                    "a J-Link board needs serial: {port: /dev/serial/by-id/..., baud: 115200} "
                    "(the J-Link VCOM or the UART adapter wired to the board)",
                )
                return None
            return SerialSpec(port=VIRTUAL_PORT, baud=115200, rtscts=False)
        if jlink and schema.port == VIRTUAL_PORT:
            self.report.add(
                (*loc, "port"),
                "port 'virtual' only exists on the virtual farm; give this J-Link board its "
                "device path (ls /dev/serial/by-id/) or an rfc2217:// URL",
            )
            return None
        return SerialSpec(schema.port, schema.baud, schema.flow_control == "rtscts")

    def _leds(
        self, board: _BoardParts, board_type: BoardType | None, chip: Chip | None, loc: Loc
    ) -> LedSpec | None:
        schema = board.leds
        loc = (*loc, "leds")
        default_low = board_type.leds_active_low if board_type else True
        if schema is None:
            return LedSpec(board_type.leds if board_type else (), default_low)
        if schema.pins is None:
            if board_type is None:
                self.report.add(
                    (*loc, "pins"), "no pins and no board_type to take them from; list pins"
                )
                return None
            return LedSpec(board_type.leds, schema.active_low)
        if chip is not None and not self._pins_exist(chip, schema.pins, (*loc, "pins")):
            return None
        return LedSpec(tuple(schema.pins), schema.active_low)

    def _pins_exist(self, chip: Chip, pins: Iterable[int], loc: Loc) -> bool:
        ok = True
        for i, pin in enumerate(pins):
            try:
                chip.gpio_port_of(pin)
            except ValueError:
                ok = False
                self.report.add(
                    (*loc, i),
                    f"{chip.name} has no GPIO pin {pin}; valid pins: {_pin_ranges(chip)}",
                )
        return ok

    def _board_layout(
        self,
        board: _BoardParts,
        layouts: Mapping[str, FlashLayout | None],
        chip: Chip | None,
        loc: Loc,
    ) -> FlashLayout | None:
        ref = board.flash_layout
        if ref is None:
            return None
        if isinstance(ref, FlashLayoutSchema):
            layout = self._layout(f"inline:{board.label}", ref, loc)
        else:
            layout = self._lookup(ref, layouts, self.parsed.broken_layouts, "flash layout", loc)
        if layout is not None:
            self._same_chip(chip, layout.chip, f"flash layout {layout.name!r}", loc)
        return layout

    def _board_firmware(
        self,
        board: _BoardParts,
        sets: Mapping[str, FirmwareSet | None],
        chip: Chip | None,
        loc: Loc,
    ) -> FirmwareSet | None:
        ref = board.firmware
        if ref is None:
            return None
        if isinstance(ref, FirmwareSetSchema):
            firmware = self._firmware_set(f"inline:{board.label}", ref, loc)
        else:
            broken = self.parsed.broken_firmware_sets
            firmware = self._lookup(ref, sets, broken, "firmware set", loc)
        if firmware is not None:
            self._same_chip(chip, firmware.chip, f"firmware set {firmware.name!r}", loc)
        return firmware

    def _lookup(
        self, name: str, defined: Mapping[str, R | None], broken: set[str], what: str, loc: Loc
    ) -> R | None:
        """Follow a reference by name; a definition that was itself broken is not re-reported."""
        if name in defined:
            return defined[name]
        if name not in broken:
            section = "flash_layouts" if what == "flash layout" else "firmware_sets"
            have = ", ".join(sorted({*defined, *broken})) or "none"
            self.report.add(loc, f"no {what} named {name!r}; defined under {section}: {have}")
        return None

    def _same_chip(self, chip: Chip | None, other: Chip, what: str, loc: Loc) -> None:
        if chip is not None and other != chip:
            self.report.add(
                loc,
                f"{what} is for {other.name} but the board is {chip.name}; "
                f"use one made for {chip.name}",
            )

    def _check_unique(self, boards: list[_BoardParts]) -> None:
        """Names, probe serial numbers and real serial ports must each name one board."""
        names: dict[str, int] = {}
        snrs: dict[int, int] = {}
        ports: dict[str, int] = {}
        own = "each board needs its own"
        for board in boards:
            index = board.index
            loc: Loc = ("boards", index)
            if board.name is not None:
                self._unique(names, board.name, index, (*loc, "name"), "board name", own)
            if board.probe is None:
                pass
            elif board.probe.snr is not None:
                snr_loc: Loc = (*loc, "probe", "snr")
                self._unique(snrs, board.probe.snr, index, snr_loc, "probe snr", own)
            elif board.probe.backend == "virtual":
                auto = VIRTUAL_SNR_BASE + index + 1
                fix = "give this probe an explicit snr"
                self._unique(snrs, auto, index, (*loc, "probe"), "automatic probe snr", fix)
            if board.serial and board.serial.port != VIRTUAL_PORT:
                port_loc: Loc = (*loc, "serial", "port")
                self._unique(ports, board.serial.port, index, port_loc, "serial port", own)

    def _unique(
        self, seen: dict[K, int], key: K, index: int, loc: Loc, what: str, fix: str
    ) -> None:
        first = seen.setdefault(key, index)
        if first != index:
            other = self.report.where(("boards", first))
            self.report.add(loc, f"duplicate {what} {key!r}: {other} has it too; {fix}")
