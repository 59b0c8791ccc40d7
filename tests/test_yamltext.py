"""YAML read within limits: deep brackets and alias bombs are refused before ruamel spends
seconds on them; text that only looks deep (brackets in quotes or comments) and redefined
anchors are read as YAML says."""

from __future__ import annotations

import warnings

import pytest

from dfuhil.formats.yamltext import MAX_NESTING, YamlLimitError, load_round_trip


def test_brackets_in_quotes_and_comments_and_apostrophes_in_plain_text_do_not_count() -> None:
    deep = "[" * (MAX_NESTING + 10)
    text = f"a: \"{deep}\"\nb: '{deep}'' it''s'\n# {deep}\nc: the board's LED\nd: [[1]]\n"
    data = load_round_trip(text)
    assert data["d"] == [[1]]
    assert data["c"] == "the board's LED"


def test_brackets_nested_past_the_limit_are_refused_at_once_with_their_line() -> None:
    depth = 3000
    with pytest.raises(YamlLimitError, match=f"brackets nested {depth} deep at line 2"):
        load_round_trip("ok: 1\nkey: " + "[" * depth + "]" * depth + "\n")


def test_an_alias_bomb_is_refused_and_an_alias_to_itself_reads_as_null() -> None:
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7)
    )
    with pytest.raises(YamlLimitError, match="alias bomb"):
        load_round_trip(bomb)
    assert list(load_round_trip("a: &a [1, *a]\n")["a"]) == [1, None]


def test_a_redefined_anchor_is_yaml_and_prints_no_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_round_trip("x: &id [1]\ny: &id [2]\nz: *id\n")
    assert list(data["z"]) == [2]
    assert not caught
