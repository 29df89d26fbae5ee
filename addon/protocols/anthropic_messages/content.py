"""Anthropic content blocks in canonical form, read alike in a request's messages
and in a reply."""

from __future__ import annotations

from typing import Any

from addon.protocols.base import as_str, image_from_url
from addon.protocols.canonical import (
    ContentPart,
    ImagePart,
    ProtocolError,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
)
from addon.protocols.signatures import unseal

NAME = "anthropic_messages"

# Client tools, server tools (web search, tool search, code execution) and MCP
# tools are all calls the model made; only who runs them differs.
_TOOL_USE = ("tool_use", "server_tool_use", "mcp_tool_use")


def _image(block: dict[str, Any]) -> ImagePart:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64":
        return ImagePart(
            media_type=as_str(source.get("media_type")),
            has_inline_data=True,
            data=as_str(source.get("data")),
        )
    return image_from_url(source.get("url"), as_str(source.get("media_type")))


def _document_text(block: dict[str, Any]) -> list[ContentPart]:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return [TextPart(text=source["data"])]
    if source.get("type") == "content":
        texts = _blocks(source.get("content"), "document.source.content")
        return [p for p in texts if isinstance(p, TextPart)]
    # PDFs and file references carry no text we can read here.
    return []


def _tool_result(block: dict[str, Any], where: str) -> ToolResultPart:
    content = [
        p
        for p in _blocks(block.get("content"), f"{where}.content")
        if isinstance(p, TextPart | ImagePart)
    ]
    return ToolResultPart(
        tool_use_id=as_str(block.get("tool_use_id")),
        content=content,
        is_error=block.get("is_error") is True,
    )


def _block(block: dict[str, Any], where: str) -> list[ContentPart]:
    kind = block.get("type")
    if kind == "image":
        return [_image(block)]
    if kind == "document":
        return _document_text(block)
    if kind in _TOOL_USE:
        name = as_str(block.get("name")) or ""
        return [ToolUsePart(id=as_str(block.get("id")), name=name, arguments=block.get("input"))]
    if kind == "tool_result":
        return [_tool_result(block, where)]
    if kind == "thinking":
        issuer, signature = _signature(block.get("signature"))
        text = as_str(block.get("thinking")) or ""
        return [ThinkingPart(text=text, signature=signature, issuer=issuer)]
    if kind == "redacted_thinking":
        issuer, signature = _signature(block.get("data"))
        return [ThinkingPart(redacted=True, signature=signature, issuer=issuer)]
    if kind == "compaction" and isinstance(block.get("content"), str):
        # A summary standing in for earlier turns: prompt text like any other.
        return [TextPart(text=block["content"])]
    if kind == "search_result":
        texts = _blocks(block.get("content"), f"{where}.content")
        return [p for p in texts if isinstance(p, TextPart)]
    if isinstance(block.get("text"), str):
        return [TextPart(text=block["text"])]
    # Server tool results, tool references and newer block types carry no prompt text.
    return []


def _blocks(content: Any, where: str) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)] if content else []
    if not isinstance(content, list):
        raise ProtocolError(f"'{where}' must be a string or a list of blocks")
    parts: list[ContentPart] = []
    for block in content:
        if not isinstance(block, dict):
            raise ProtocolError(f"'{where}' has a block that is not an object")
        new = _block(block, where)
        carrier = _call_signature(parts)
        if new and isinstance(new[0], ToolUsePart) and carrier:
            # A reply encoder put another provider's signature for this call (Gemini's
            # thoughtSignature) in an empty thinking block just before it: back on the call.
            parts.pop()
            new[0].signature, new[0].issuer = carrier.signature, carrier.issuer
        parts.extend(new)
    return parts


def _signature(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, str) or not value:
        return None, None
    return unseal(value, NAME)


def _call_signature(parts: list[ContentPart]) -> ThinkingPart | None:
    """The last part, when it is an empty thinking block carrying a foreign signature."""
    last = parts[-1] if parts else None
    if not isinstance(last, ThinkingPart) or last.text or last.redacted or not last.signature:
        return None
    return last if last.issuer not in (None, NAME) else None
