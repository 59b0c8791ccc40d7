"""Nordic Partition Manager files (``pm_static.yml``, a build's ``partitions.yml``) as regions.

An nRF Connect SDK build places MCUboot, its slots and the settings partition with the Partition
Manager; a lab that pins its layout keeps the result as ``pm_static.yml``. Reading that file
instead of retyping the addresses in boards.yaml means the farm can never disagree with the
firmware about where a slot starts. Format (one mapping per partition, extra keys ignored)::

    mcuboot_primary:
      address: 0xc000
      end_address: 0x82000        # optional; must equal address + size
      region: flash_primary       # optional, default; other regions (sram, external flash) skipped
      size: 0x76000
      span: [mcuboot_pad, app]    # a container: covers its members, overlaps them by design

Only ``flash_primary`` partitions are kept. Containers (``span``) must cover their members;
plain partitions must not overlap each other, and a container must not overlap a partition that
is not one of its members. Every problem is reported at once, as ``FILE:LINE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from dfuhil.errors import InputError, Problem
from dfuhil.formats.yamltext import load_round_trip

FLASH_REGION = "flash_primary"


@dataclass(frozen=True)
class Partition:
    """One Partition Manager partition ``[address, address + size)``; ``line`` is its key's."""

    name: str
    address: int
    size: int
    line: int | None = None
    span: tuple[str, ...] = ()

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def is_container(self) -> bool:
        """A ``span`` partition: a name for a run of other partitions (e.g. mcuboot_primary)."""
        return bool(self.span)

    def __str__(self) -> str:
        return f"{self.name} 0x{self.address:X}..0x{self.end:X}"


@dataclass(frozen=True)
class PartitionTable:
    """The ``flash_primary`` partitions of one file, in file order."""

    source: str
    partitions: tuple[Partition, ...]

    def get(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    def members(self, name: str) -> frozenset[str]:
        """Every partition a container spans, through nested spans (``mcuboot_primary_app``)."""
        found: set[str] = set()
        todo = list(self._span(name))
        while todo:
            member = todo.pop()
            if member not in found:
                found.add(member)
                todo.extend(self._span(member))
        return frozenset(found)

    def nested(self) -> frozenset[str]:
        """Partitions inside some container: their alignment is the container's business.

        That is every member of a container, and every container that names a part of another
        one (``mcuboot_primary_app`` = [app] inside ``mcuboot_primary`` = [mcuboot_pad, app]).
        """
        containers = [p for p in self.partitions if p.is_container]
        members = {p.name: self.members(p.name) for p in containers}
        inner = {
            p.name
            for p in containers
            for outer in containers
            if outer.name != p.name
            and members[p.name] < members[outer.name]
            and outer.address <= p.address
            and p.end <= outer.end
        }
        return frozenset(inner).union(*members.values())

    def _span(self, name: str) -> tuple[str, ...]:
        partition = self.get(name)
        return partition.span if partition is not None else ()


def read_pm_static(path: Path, *, shown: str | None = None) -> PartitionTable:
    """Read and check a pm_static.yml; raise InputError listing every problem.

    ``shown`` is how messages name the file (as the user wrote it); default ``str(path)``.
    """
    source = shown if shown is not None else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            Problem(
                source,
                None,
                "",
                "Partition Manager file not found; copy the build's partitions.yml "
                "(build/partitions.yml) there as pm_static.yml",
            )
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(Problem(source, None, "", f"cannot read: {reason}")) from None
    return parse_pm_static(text, source=source)


def parse_pm_static(text: str, *, source: str = "pm_static.yml") -> PartitionTable:
    """Parse pm_static.yml text (see the module docstring); raise InputError on any problem."""
    try:
        data = load_round_trip(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = ", ".join(p for p in (exc.context, exc.problem) if p)
        raise InputError(Problem(source, line, "", f"YAML syntax error: {what}")) from None
    except (YAMLError, ValueError) as exc:
        raise InputError(Problem(source, None, "", f"YAML error: {exc}")) from None
    if not isinstance(data, CommentedMap) or not data:
        raise InputError(
            Problem(
                source,
                1 if data is not None else None,
                "",
                "expected a mapping of partition names (mcuboot: {address: ..., size: ...})",
            )
        )
    problems: list[Problem] = []
    partitions: list[Partition] = []
    for name, entry in data.items():
        line = _key_line(data, name)
        partition = _partition(str(name), entry, line, source, problems)
        if partition is not None:
            partitions.append(partition)
    table = PartitionTable(source, tuple(partitions))
    problems += _check_spans(table)
    problems += _check_overlaps(table)
    if problems:
        raise InputError(sorted(problems, key=lambda p: p.line or 0))
    return table


def _key_line(node: CommentedMap, key: Any) -> int | None:
    try:
        return int(node.lc.key(key)[0]) + 1
    except (KeyError, TypeError, AttributeError):
        return None


def _number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            return None
    return None


def _partition(
    name: str, entry: Any, line: int | None, source: str, problems: list[Problem]
) -> Partition | None:
    """One entry as a flash_primary Partition; None for other regions or after a problem."""

    def bad(field: str, message: str, at: int | None = line) -> None:
        problems.append(Problem(source, at, f"{name}.{field}" if field else name, message))

    if not isinstance(entry, Mapping):
        bad("", "expected a mapping with address and size")
        return None
    region = entry.get("region", FLASH_REGION)
    if region != FLASH_REGION:
        return None  # RAM, external flash, OTP...: not the chip's code flash
    lines = {k: _key_line(entry, k) if isinstance(entry, CommentedMap) else None for k in entry}
    values: dict[str, int] = {}
    for key in ("address", "size"):
        if key not in entry:
            bad("", f"no {key}; every partition needs address and size")
            continue
        number = _number(entry[key])
        if number is None or number < 0:
            bad(key, f"{entry[key]!r} is not an address or size", lines.get(key) or line)
            continue
        values[key] = number
    if len(values) != 2:
        return None
    address, size = values["address"], values["size"]
    if "end_address" in entry:
        end = _number(entry["end_address"])
        if end != address + size:
            shown = f"0x{end:X}" if end is not None else repr(entry["end_address"])
            bad(
                "end_address",
                f"{shown} is not address + size (0x{address:X} + 0x{size:X} = "
                f"0x{address + size:X}); fix one of the three",
                lines.get("end_address") or line,
            )
            return None
    span = entry.get("span", [])
    if isinstance(span, str):
        span = [span]
    if not isinstance(span, list) or not all(isinstance(m, str) for m in span):
        bad("span", "expected a list of partition names", lines.get("span") or line)
        return None
    return Partition(name, address, size, line, tuple(span))


def _check_spans(table: PartitionTable) -> list[Problem]:
    """A container must name existing partitions and cover each of them."""
    problems: list[Problem] = []
    for container in (p for p in table.partitions if p.is_container):
        for name in container.span:
            member = table.get(name)
            if member is None:
                problems.append(
                    Problem(
                        table.source,
                        container.line,
                        f"{container.name}.span",
                        f"spans {name!r}, which is not a flash_primary partition of this file",
                    )
                )
            elif not (container.address <= member.address and member.end <= container.end):
                problems.append(
                    Problem(
                        table.source,
                        container.line,
                        container.name,
                        f"0x{container.address:X}..0x{container.end:X} does not cover its member "
                        f"{member} (line {member.line}); a span must contain what it spans",
                    )
                )
    return problems


def _check_overlaps(table: PartitionTable) -> list[Problem]:
    """Partitions that share flash must be a container and one of its members, nothing else."""
    problems: list[Problem] = []
    parts = [p for p in table.partitions if p.size > 0]
    members = {p.name: table.members(p.name) for p in parts if p.is_container}
    by_name = {p.name: p for p in parts}

    def leaves(p: Partition) -> list[Partition]:
        if not p.is_container:
            return [p]
        return [by_name[m] for m in members[p.name] if m in by_name and m not in members]

    for j, later in enumerate(parts):
        for earlier in parts[:j]:
            if not _overlap(later, earlier) or _related(later, earlier, members):
                continue
            if (later.is_container or earlier.is_container) and any(
                a is not b and _overlap(a, b) for a in leaves(later) for b in leaves(earlier)
            ):
                continue  # reported once, between the plain partitions inside
            problems.append(
                Problem(
                    table.source,
                    later.line,
                    later.name,
                    f"{later} overlaps {earlier} (line {earlier.line}); partitions must not "
                    "share flash (regenerate pm_static.yml from the build's partitions.yml)",
                )
            )
    return problems


def _overlap(a: Partition, b: Partition) -> bool:
    return a.address < b.end and b.address < a.end


def _related(a: Partition, b: Partition, members: Mapping[str, frozenset[str]]) -> bool:
    """Whether a and b may overlap: one spans the other, or both span the same partitions."""
    if b.name in members.get(a.name, ()) or a.name in members.get(b.name, ()):
        return True
    shared = members.get(a.name, frozenset()) & members.get(b.name, frozenset())
    return bool(shared)
