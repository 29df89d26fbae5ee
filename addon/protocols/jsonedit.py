"""Surgical edits of a JSON object's top-level keys that leave every other byte alone.

Re-serialising a caller's body would reorder nothing but would still change
whitespace, number spelling and escapes, and it would make "what the caller sent"
and "what the provider got" differ in ways nobody asked for. These helpers only
replace the value span of one key, or insert one key before the closing brace.
"""

from __future__ import annotations

import json
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

_WS = " \t\n\r"
_decoder = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def top_level_spans(text: str) -> tuple[dict[str, tuple[int, int]], int]:
    """Map each top-level key to its value's (start, end); also the closing brace index."""
    i = _skip_ws(text, 0)
    if _at(text, i) != "{":
        raise ValueError("not a JSON object")
    spans: dict[str, tuple[int, int]] = {}
    i = _skip_ws(text, i + 1)
    if _at(text, i) == "}":
        return spans, i
    while True:
        if _at(text, i) != '"':
            raise ValueError(f"expected a key at offset {i}")
        key, i = scanstring(text, i + 1)
        i = _skip_ws(text, i)
        if _at(text, i) != ":":
            raise ValueError(f"expected ':' at offset {i}")
        start = _skip_ws(text, i + 1)
        _, end = _decoder.raw_decode(text, start)
        spans[key] = (start, end)
        i = _skip_ws(text, end)
        if _at(text, i) == "}":
            return spans, i
        if _at(text, i) != ",":
            raise ValueError(f"expected ',' at offset {i}")
        i = _skip_ws(text, i + 1)


def _at(text: str, i: int) -> str:
    # A truncated body must fail as malformed JSON, not with an IndexError.
    return text[i] if i < len(text) else ""


def _dump(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate has no UTF-8 spelling; only its \u escape is valid JSON.
        text = json.dumps(value, separators=(",", ":"))
    return text


def _same(a: Any, b: Any) -> bool:
    # `==` would call `1` equal to `true` and `1.0`; compare the JSON spellings instead.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def set_top_level(raw: bytes, key: str, value: Any) -> bytes:
    """Set `key` to `value`: replace its value in place, or append it if absent."""
    text = raw.decode("utf-8")
    spans, close = top_level_spans(text)
    if key in spans:
        start, end = spans[key]
        if _same(json.loads(text[start:end]), value):
            return raw
        text = text[:start] + _dump(value) + text[end:]
    else:
        # Right after the last value rather than before the brace, so that any
        # whitespace the caller put before the brace stays after the new key.
        at = max(end for _, end in spans.values()) if spans else close
        sep = "," if spans else ""
        text = text[:at] + f"{sep}{_dump(key)}:{_dump(value)}" + text[at:]
    return text.encode("utf-8")
