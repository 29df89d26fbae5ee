"""Decoding a caller's JSON body once, strictly.

A body that two readers could read two ways is refused, because llmgate decides
on what it reads and the provider acts on what it reads:
- a duplicate key (`{"model": "denied", "model": "allowed"}`): Python keeps the
  last value, other parsers the first;
- a byte-order mark, or UTF-16/32: `json.loads(bytes)` sniffs and accepts them,
  while llmgate's byte-exact edits and most providers expect UTF-8;
- a lone surrogate escape (`"\\ud800"`): it has no UTF-8 spelling, so it cannot be
  stored, logged or re-encoded;
- nesting deeper than `MAX_DEPTH`: deep enough for any real tool schema, shallow
  enough that no recursive reader (ours, pydantic's, the provider's) overflows;
- `NaN`, `Infinity` and numbers that overflow a double (`1e999`): not JSON, and
  read as anything from an error to infinity;
- integers outside the signed 64-bit range: JavaScript and Go readers round or
  refuse them, Python keeps them exactly.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 128


class BodyError(ValueError):
    """The body is not strict UTF-8 JSON; the message says what to fix."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(f"duplicate key {key!r} in a JSON object")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


# Numbers are checked in `check_value`'s walk, which visits every node anyway:
# parse_float/parse_int hooks would cost a Python call per number while parsing.
_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON document; `BodyError` for anything a strict reader would refuse."""
    if isinstance(raw, bytes):
        if raw[:3] == b"\xef\xbb\xbf" or raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise BodyError("the body starts with a byte-order mark; send UTF-8 without one")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(f"the body is not UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    if text[:1] == "\ufeff":
        raise BodyError("the body starts with a byte-order mark; send UTF-8 without one")
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise BodyError(f"JSON nested deeper than {max_depth} levels") from None
    except BodyError:
        raise
    except ValueError as exc:
        raise BodyError(f"not valid JSON: {exc}") from None
    check_value(value, max_depth)
    return value


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Depth, encodability and number range of an already parsed value (iterative: no
    recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                raise BodyError(f"JSON nested deeper than {max_depth} levels")
            for key, item in node.items():
                _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                raise BodyError(f"JSON nested deeper than {max_depth} levels")
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str):
            _check_text(node)
        elif isinstance(node, float):
            if math.isinf(node):
                raise BodyError("a number is too large for a double (e.g. 1e999)")
        elif isinstance(node, int) and not -(2**63) <= node < 2**63:
            raise BodyError(f"the integer {str(node)[:40]}… is outside the 64-bit range")


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError("a string holds a lone surrogate (\\ud800-\\udfff) escape") from None
