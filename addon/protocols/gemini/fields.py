"""Gemini's field names: camelCase, or the protobuf snake_case that the Google
SDKs and Vertex send as well."""

from __future__ import annotations

import re
from typing import Any

_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")


def _get(obj: Any, camel: str) -> Any:
    """obj[camelCase], falling back to obj[snake_case]; None if obj is not an object."""
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    return obj.get(_CAMEL_HUMP.sub("_", camel).lower())


def _get_dict(obj: Any, camel: str) -> dict[str, Any]:
    value = _get(obj, camel)
    return value if isinstance(value, dict) else {}
