"""Hand-edited YAML (boards.yaml, pm_static.yml) parsed with limits, so no file can hang dfuhil.

ruamel.yaml follows the YAML spec to the letter: brackets nested a few thousand deep take it
many seconds before it dies of a RecursionError, and ten lines of nested aliases expand to ten
million values (the "billion laughs"). Neither is a farm description, so such a text is
refused with a ``ValueError`` the callers already turn into a located InputError. A redefined
anchor is legal YAML: its warning is not printed.
"""

from __future__ import annotations

import warnings
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import ReusedAnchorWarning

MAX_NESTING = 64  # brackets or indentation levels; a farm file needs four or five
MAX_VALUES = 100_000  # values after alias expansion; boards.yaml for 100 boards has ~5000


class YamlLimitError(ValueError):
    """The text is YAML, but not one dfuhil reads: nested too deep, or too big."""


def load_round_trip(text: str) -> Any:
    """``YAML(typ="rt").load(text)`` (line numbers kept) within the limits above."""
    depth, line = _flow_depth(text)
    if depth > MAX_NESTING:
        raise YamlLimitError(
            f"brackets nested {depth} deep at line {line} (at most {MAX_NESTING}); "
            "is a closing ] or } missing?"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReusedAnchorWarning)
        try:
            data = YAML(typ="rt").load(text)
        except RecursionError:
            raise YamlLimitError(
                f"values nested more than {MAX_NESTING} levels deep; check the indentation"
            ) from None
    _expanded_size(data, {})
    return data


def _flow_depth(text: str) -> tuple[int, int]:
    """Deepest [ / { nesting outside quoted scalars and comments, and its line.

    A quote opens a scalar only where a scalar may start (after a space, a line start or a
    flow indicator), as in YAML: the apostrophe of ``board's`` is text, not a quote.
    """
    depth = deepest = 0
    line = deepest_line = 1
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        previous = text[i - 1] if i else "\n"
        if char == "\n":
            line += 1
        elif char in "'\"" and previous in " \t\n[{,:-?":
            i, line = _skip_quoted(text, i, line)
            continue
        elif char == "#" and previous in " \t\n":
            newline = text.find("\n", i)
            i = n if newline < 0 else newline
            continue
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        elif char in "]}":
            depth = max(0, depth - 1)
        i += 1
    return deepest, deepest_line


def _skip_quoted(text: str, start: int, line: int) -> tuple[int, int]:
    """Index after the quoted scalar opening at ``start`` ('' and \\" escapes), and the line."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
        elif quote == '"' and char == "\\":
            i += 1
        elif char == quote:
            if quote == "'" and text[i + 1 : i + 2] == "'":
                i += 1
            else:
                return i + 1, line
        i += 1
    return i, line


def _expanded_size(node: Any, sizes: dict[int, int], depth: int = 0) -> int:
    """How many values ``node`` holds with aliases expanded; shared nodes are counted once."""
    if not isinstance(node, dict | list):
        return 1
    key = id(node)
    if key in sizes:
        return sizes[key]
    if depth > MAX_NESTING:
        raise YamlLimitError(f"values nested more than {MAX_NESTING} levels deep")
    children = list(node.values()) if isinstance(node, dict) else node
    size = 1 + sum(_expanded_size(child, sizes, depth + 1) for child in children)
    if size > MAX_VALUES:
        raise YamlLimitError(
            f"aliases expand to more than {MAX_VALUES} values; a farm file needs far fewer "
            "(an alias bomb?)"
        )
    sizes[key] = size
    return size
