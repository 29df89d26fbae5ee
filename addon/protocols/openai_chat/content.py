"""Chat message content in canonical form, read alike in a request's history and
in a reply."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote_to_bytes

from addon.protocols.base import as_list, as_str, image_from_url, json_arguments
from addon.protocols.canonical import (
    ContentPart,
    ImagePart,
    ProtocolError,
    TextPart,
    ThinkingPart,
    ToolUsePart,
)

# Vendors disagree on the name of the reasoning field; all of them are thinking.
_REASONING_KEYS = ("reasoning_content", "reasoning")


def _content_parts(content: Any, where: str) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)] if content else []
    if not isinstance(content, list):
        raise ProtocolError(f"'{where}.content' must be a string or a list of parts")
    parts: list[ContentPart] = []
    for item in content:
        if isinstance(item, str):
            parts.append(TextPart(text=item))
            continue
        if not isinstance(item, dict):
            raise ProtocolError(f"'{where}.content' has a part that is not an object")
        kind = item.get("type")
        if kind == "image_url":
            image = item.get("image_url")
            parts.append(_image(image.get("url") if isinstance(image, dict) else image))
        elif kind == "refusal" and isinstance(item.get("refusal"), str):
            parts.append(TextPart(text=item["refusal"]))
        elif isinstance(item.get("text"), str):
            # "text" and any newer text-bearing part type.
            parts.append(TextPart(text=item["text"]))
        # Audio and file parts carry no text worth keeping and are skipped.
    return parts


def _image(url: Any) -> ImagePart:
    """An image part, keeping a data: URL's bytes (as base64) for translation."""
    part = image_from_url(url)
    if not (isinstance(url, str) and url.startswith("data:")):
        return part
    header, _, payload = url[5:].partition(",")
    if header.endswith(";base64"):
        part.data = payload.strip()
    else:
        # A plain data: URL is percent-encoded bytes; canonical data is base64.
        part.data = base64.b64encode(unquote_to_bytes(payload)).decode()
    return part


def _tool_calls(message: dict[str, Any]) -> list[ContentPart]:
    parts: list[ContentPart] = []
    for call in as_list(message.get("tool_calls")):
        if not isinstance(call, dict):
            continue
        specs = (call.get("function"), call.get("custom"))
        fn = next((spec for spec in specs if isinstance(spec, dict)), {})
        raw_args = fn.get("arguments", fn.get("input"))
        parts.append(
            ToolUsePart(
                id=as_str(call.get("id")),
                name=as_str(fn.get("name")) or "",
                arguments=json_arguments(raw_args),
            )
        )
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        parts.append(
            ToolUsePart(
                name=as_str(legacy.get("name")) or "",
                arguments=json_arguments(legacy.get("arguments")),
            )
        )
    return parts


def _reasoning(message: dict[str, Any]) -> list[ContentPart]:
    for key in _REASONING_KEYS:
        value = message.get(key)
        if isinstance(value, str) and value:
            return [ThinkingPart(text=value)]
    return []


def _assistant_parts(message: dict[str, Any]) -> list[ContentPart]:
    parts = _reasoning(message) + _content_parts(message.get("content"), "assistant message")
    if isinstance(message.get("refusal"), str):
        parts.append(TextPart(text=message["refusal"]))
    return parts + _tool_calls(message)
