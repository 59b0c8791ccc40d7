"""One readable line per SMP packet, for the per-board log.

A board log full of base64 frames tells nobody anything; one line per packet that says
``IMAGE upload WRITE seq=12 {off: 4096, data: <1004 bytes>}`` shows at a glance where an
upload stalled, next to the boot lines that explain why.
"""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2

from dfuhil.formats.smp import Group, ImageCmd, Op, OsCmd, SmpHeader, split_messages

__all__ = ["describe_packet"]

_COMMANDS: dict[int, type[ImageCmd] | type[OsCmd]] = {Group.OS: OsCmd, Group.IMAGE: ImageCmd}
_SHOWN_BYTES = 4  # a hash shows as its first bytes, like git's short hashes
_MAX_TEXT = 40


def _name(header: SmpHeader) -> str:
    try:
        group = Group(header.group).name
    except ValueError:
        group = f"group{header.group}"
    table = _COMMANDS.get(header.group)
    command = f"id{header.command_id}"
    if table is not None:
        with contextlib.suppress(ValueError):
            command = table(header.command_id).name.lower()
    try:
        op = Op(header.op).name
    except ValueError:
        op = f"op{header.op}"
    return f"{group} {command} {op} seq={header.seq} v{header.version + 1}"


def _value(key: str, value: Any) -> str:
    if isinstance(value, bytes):
        if key == "data" or len(value) > 32:
            return f"<{len(value)} bytes>"
        return value[:_SHOWN_BYTES].hex() + ("…" if len(value) > _SHOWN_BYTES else "")
    if isinstance(value, str):
        return repr(value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "…")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(str(k), v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(key, v) for v in value) + "]"
    return str(value)


def describe_packet(packet: bytes) -> str:
    """``SMP IMAGE upload WRITE seq=3 v2 {off: 0, len: 20480, ...}`` (every message in it)."""
    try:
        messages = split_messages(packet)
    except ValueError as exc:
        return f"SMP malformed packet ({len(packet)} bytes): {exc}"
    parts = []
    for header, payload in messages:
        try:
            body = _value("", cbor2.loads(payload)) if payload else "{}"
        except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
            body = f"<{len(payload)} bytes of bad CBOR: {exc}>"
        parts.append(f"SMP {_name(header)} {body}")
    return " | ".join(parts) or "SMP empty packet"
