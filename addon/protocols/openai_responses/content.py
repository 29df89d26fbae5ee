"""Responses items in canonical form, read alike in a request's input and in a
reply's output."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote_to_bytes

from addon.protocols import signatures as seals
from addon.protocols.base import as_list, as_str, json_arguments
from addon.protocols.canonical import (
    ContentPart,
    ImagePart,
    ProtocolError,
    TextPart,
    ThinkingPart,
    ToolUsePart,
)

NAME = "openai_responses"

_TOOL_CALLS = ("function_call", "custom_tool_call")


def _content_parts(content: Any, where: str) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)] if content else []
    if not isinstance(content, list):
        raise ProtocolError(f"'{where}.content' must be a string or a list of parts")
    parts: list[ContentPart] = []
    for item in content:
        if not isinstance(item, dict):
            raise ProtocolError(f"'{where}.content' has a part that is not an object")
        kind = item.get("type")
        if kind == "input_image":
            parts.append(_image(item))
        elif kind == "refusal" and isinstance(item.get("refusal"), str):
            parts.append(TextPart(text=item["refusal"]))
        elif isinstance(item.get("text"), str):
            # input_text, output_text, and any newer text-bearing part.
            parts.append(TextPart(text=item["text"]))
    return parts


def _image(item: dict[str, Any]) -> ImagePart:
    """An input_image: a URL, inline bytes in a data: URL, or an uploaded file's id.

    A file id names bytes only OpenAI holds, so it becomes an image with nothing
    another provider could fetch.
    """
    url = item.get("image_url")
    if not isinstance(url, str) or not url.startswith("data:"):
        return ImagePart(url=url if isinstance(url, str) else None)
    header, _, payload = url[5:].partition(",")
    media_type, _, params = header.partition(";")
    if "base64" in params.split(";"):
        data = payload
    else:
        # A percent-encoded data: URL; providers all want base64.
        data = base64.b64encode(unquote_to_bytes(payload)).decode()
    return ImagePart(media_type=media_type or None, has_inline_data=True, data=data)


def _reasoning_text(item: dict[str, Any]) -> str:
    pieces = [
        part["text"]
        for key in ("summary", "content")
        for part in as_list(item.get(key))
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]
    return "\n\n".join(pieces)


def _reasoning_part(item: dict[str, Any]) -> ThinkingPart:
    text = _reasoning_text(item)
    sealed = as_str(item.get("encrypted_content"))
    issuer, signature = seals.unseal(sealed, NAME) if sealed else (None, None)
    return ThinkingPart(
        text=text,
        # Reasoning that only came back encrypted is there but unreadable.
        redacted=not text and bool(sealed),
        signature=signature,
        issuer=issuer,
        item_id=as_str(item.get("id")),
    )


def _tool_use(item: dict[str, Any]) -> ToolUsePart:
    raw = item.get("arguments", item.get("input"))
    return ToolUsePart(
        id=as_str(item.get("call_id")) or as_str(item.get("id")),
        name=as_str(item.get("name")) or "",
        arguments=json_arguments(raw),
    )
