"""jsonedit must change exactly one value span, or insert one key, and nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.protocols.jsonedit import set_top_level, top_level_spans


def changed_region[S: (str, bytes)](before: S, after: S) -> tuple[int, int]:
    """The [start, end) of `before` that differs from `after` (empty for a pure insertion)."""
    limit = min(len(before), len(after))
    prefix = 0
    while prefix < limit and before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and before[-1 - suffix] == after[-1 - suffix]:
        suffix += 1
    return prefix, len(before) - suffix


def test_replaces_value_in_place() -> None:
    raw = b'{ "model" :  "gpt-4o",\n  "stream": true }'
    out = set_top_level(raw, "model", "gpt-4o-mini")
    assert out == b'{ "model" :  "gpt-4o-mini",\n  "stream": true }'


def test_appends_missing_key_after_last_value() -> None:
    raw = b'{\n  "a": 1,\n  "b": [1, 2]\n}'
    out = set_top_level(raw, "c", {"x": True})
    assert out == b'{\n  "a": 1,\n  "b": [1, 2],"c":{"x":true}\n}'
    assert json.loads(out) == {"a": 1, "b": [1, 2], "c": {"x": True}}


def test_appends_to_empty_object() -> None:
    assert set_top_level(b"{ }", "k", 1) == b'{ "k":1}'
    assert set_top_level(b"{}", "k", "v") == b'{"k":"v"}'


def test_no_op_when_value_unchanged_returns_same_bytes() -> None:
    raw = b'{"model": "m",   "n": 1.50}'
    assert set_top_level(raw, "model", "m") is raw
    assert set_top_level(raw, "n", 1.5) is raw


def test_true_is_not_one() -> None:
    # `1 == True` in Python; in JSON they are different values.
    raw = b'{"flag": 1}'
    assert json.loads(set_top_level(raw, "flag", True)) == {"flag": True}
    assert set_top_level(raw, "flag", True) == b'{"flag": true}'


def test_keeps_unknown_fields_unicode_and_escapes() -> None:
    raw = '{"note":"h\\u00e9llo — ✓","model":"a","zz":{"deep":[null,1e3]}}'.encode()
    out = set_top_level(raw, "model", "modèle-✓")
    assert out == '{"note":"h\\u00e9llo — ✓","model":"modèle-✓","zz":{"deep":[null,1e3]}}'.encode()


def test_duplicate_key_edits_the_occurrence_json_uses() -> None:
    raw = b'{"model": "a", "model": "b"}'
    out = set_top_level(raw, "model", "c")
    assert out == b'{"model": "a", "model": "c"}'
    assert json.loads(out) == {"model": "c"}


def test_lone_surrogate_value_is_escaped() -> None:
    out = set_top_level(b"{}", "k", "\ud800")
    assert out == b'{"k":"\\ud800"}'


@pytest.mark.parametrize(
    "raw", [b"[]", b'"x"', b"", b"   ", b'{"a": 1', b'{"a" 1}', b'{"a": 1 "b": 2}']
)
def test_malformed_input_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        set_top_level(raw, "k", 1)


# --- property test ------------------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(_text, json_values, max_size=6)
_formats: list[dict[str, Any]] = [
    {},
    {"indent": 2},
    {"separators": (",", ":")},
    {"indent": "\t", "ensure_ascii": False},
    {"ensure_ascii": False, "separators": (" , ", " :  ")},
]


@settings(max_examples=400, deadline=None)
@given(
    obj=_objects,
    fmt=st.sampled_from(_formats),
    pad=st.sampled_from(["", " ", "\n  ", "\r\n"]),
    value=json_values,
    data=st.data(),
)
def test_set_top_level_property(
    obj: dict[str, Any], fmt: dict[str, Any], pad: str, value: Any, data: st.DataObject
) -> None:
    text = pad + json.dumps(obj, **fmt) + pad
    raw = text.encode()
    key = data.draw(st.sampled_from(sorted(obj)) if obj and data.draw(st.booleans()) else _text)

    out = set_top_level(raw, key, value)

    assert json.loads(out) == {**obj, key: value}
    after = out.decode()
    start, end = changed_region(text, after)
    if key in obj:
        value_start, value_end = top_level_spans(text)[0][key]
        # Only bytes inside the old value may differ.
        assert value_start <= start and end <= value_end or out == raw
    else:
        # A pure insertion: every original byte is still there, in order, around it.
        assert start == end
