"""Structure-aware mutators: start from a valid file and break it the way files really break.

Random bytes stop at the first magic number; a fuzzer that is to reach the checks behind it must
keep most of the structure. So every strategy here takes a valid seed (a signed image, a zip, a
YAML or JSON document) and applies a few mutations that a truncated download, a hand edit, a
lying length field or a hostile device would make: fields set to boundary values, lengths that
lie, members dropped, values of the wrong type, numbers too big for their field, text cut in
the middle of a line, invalid UTF-8.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

# Values that break length and offset arithmetic: zero, one, sign and width boundaries.
INTERESTING = (
    0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 0x3FF, 0x400, 0xFFF,
    0x1000, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF,
)  # fmt: skip

Field = tuple[int, int]  # (offset, width in bytes) of a little-endian integer field


def _int_value(draw: st.DrawFn, width: int, size: int) -> int:
    near = [max(0, size + d) for d in (-4, -1, 0, 1, 4)]
    value = draw(
        st.one_of(
            st.sampled_from(INTERESTING + tuple(near)),
            st.integers(0, (1 << (8 * width)) - 1),
        )
    )
    return value & ((1 << (8 * width)) - 1)


@st.composite
def mutated_bytes(
    draw: st.DrawFn, base: bytes, fields: Sequence[Field] = (), max_ops: int = 4
) -> bytes:
    """``base`` with 1..max_ops mutations; ``fields`` are the known integer fields to target."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        ops = ["flip", "byte", "int", "truncate", "insert", "delete", "duplicate", "extend"]
        if fields:
            ops += ["field", "field", "field"]  # the structure is where the checks are
        op = draw(st.sampled_from(ops))
        size = len(data)
        if op == "field":
            offset, width = draw(st.sampled_from(list(fields)))
            if offset + width <= size:
                value = _int_value(draw, width, size)
                data[offset : offset + width] = value.to_bytes(width, "little")
            continue
        if op == "extend":
            data += draw(st.sampled_from([b"\x00", b"\xff"])) * draw(st.integers(1, 64))
            continue
        if op == "insert":
            at = draw(st.integers(0, size))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
            continue
        if not size:
            continue
        at = draw(st.integers(0, size - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4]))
            if at + width <= size:
                value = _int_value(draw, width, size)
                order = draw(st.sampled_from(["little", "big"]))
                data[at : at + width] = value.to_bytes(width, order)  # type: ignore[arg-type]
        elif op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "duplicate":
            end = min(size, at + draw(st.integers(1, 32)))
            data[at:at] = data[at:end]
    return bytes(data)


# --- JSON and YAML documents --------------------------------------------------------------------

HUGE_INT = "1" * 5000  # past CPython's 4300-digit int parsing limit: ValueError, not a decode error
DEEP = "[" * 3000 + "]" * 3000  # past the recursion limit of json and YAML parsers
_HUGE, _DEEP = "\x00huge\x00", "\x00deep\x00"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from(INTERESTING),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["0x10", "-1", "", "0xFFFFFFFFFF", "1e3", "none", "true", _HUGE, _DEEP]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


@st.composite
def mutated_tree(draw: st.DrawFn, base: Any, max_ops: int = 3) -> Any:
    """A copy of a JSON/YAML document tree with values replaced, keys dropped or added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_ops))):
        path = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "rename", "wrap"]))
        if not path:
            if op == "replace":
                doc = draw(values)
            continue
        parent, last = _get(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
        elif op == "add" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        elif op == "rename" and isinstance(parent, dict):
            parent[str(last) + draw(st.sampled_from(["s", "_", "X", " "]))] = parent.pop(last)
        elif op == "wrap":
            parent[last] = [parent[last]]
    return doc


def json_text(doc: Any) -> str:
    """JSON with the sentinels turned into a 5000-digit number and a 3000-deep array."""
    text = json.dumps(doc, indent=2, default=str)
    return text.replace(json.dumps(_HUGE), HUGE_INT).replace(json.dumps(_DEEP), DEEP)


# Hand-edited YAML going wrong in the ways the parser has to say where: duplicate keys, tabs,
# aliases and merge keys, tags, a second document, a flow mapping left open, an alias bomb.
YAML_SNIPPETS = (
    "a: 1\na: 2\n",
    "\tkey: value\n",
    "x: &anchor {a: 1}\ny: *anchor\nz: {<<: *anchor, b: 2}\n",
    "x: !!python/object:os.system {}\n",
    "---\nsecond: document\n",
    "key: {unclosed: [1, 2\n",
    "? [complex, key]\n: value\n",
    "key: *undefined\n",
    "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7)),
    "a: &a [1, *a]\n",
    "key: " + HUGE_INT + "\n",
    "key: 0x" + "F" * 40 + "\n",
    "key: " + DEEP + "\n",
    "\ufeffkey: value\n",
    "key: !!binary AAAA\n",
    "key: .inf\n",
    "- list\n- at top\n",
    "key: 'unterminated\n",
)


@st.composite
def mutated_text(
    draw: st.DrawFn, base: str, snippets: Sequence[str] = (), max_ops: int = 3
) -> bytes:
    """A text file edited by a careless hand: lines lost, doubled, cut, snippets pasted in."""
    lines = base.splitlines(keepends=True)
    tail = b""
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["delete", "duplicate", "cut", "snippet", "char", "binary"]))
        if op == "snippet" and snippets:
            at = draw(st.integers(0, len(lines)))
            indent = draw(st.sampled_from(["", "  ", "    "]))
            snippet = draw(st.sampled_from(list(snippets)))
            lines[at:at] = [indent + s for s in snippet.splitlines(keepends=True)]
            continue
        if op == "binary":
            tail = draw(st.sampled_from([b"\xff\xfe", b"\x80abc", b"\x00", b"\xc3("]))
            continue
        if not lines:
            continue
        at = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            del lines[at]
        elif op == "duplicate":
            lines.insert(at, lines[at])
        elif op == "cut":
            line = lines[at]
            lines[at:] = [line[: draw(st.integers(0, len(line)))]]
        elif op == "char":
            line = lines[at]
            pos = draw(st.integers(0, len(line)))
            char = draw(st.sampled_from([*":-{}[]#&*!|>'\"%@`\t ,", "\u00e9", "\x00"]))
            lines[at] = line[:pos] + char + line[pos:]
    body = "".join(lines).encode("utf-8", errors="surrogatepass")
    if tail:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + tail + body[at:]
    return body


def u32(value: int) -> bytes:
    return struct.pack("<I", value)
