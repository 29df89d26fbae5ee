"""Pieces of Anthropic JSON that both codecs write, the buffered reply's and the
stream's."""

from __future__ import annotations

import re
import uuid
from typing import Any

from addon.protocols.anthropic_messages.content import NAME
from addon.protocols.canonical import Finish, Usage
from addon.protocols.codec import seal

STOP_REASON: dict[Finish, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}
_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def tool_id(value: str | None, fallback: str) -> str:
    """Anthropic's id pattern; the same mapping for tool_use and tool_result keeps pairs."""
    return _BAD_ID_CHARS.sub("_", value) if value else fallback


def message_id(value: str | None) -> str:
    if value and value.startswith("msg_") and not _BAD_ID_CHARS.search(value):
        return value
    return "msg_" + uuid.uuid4().hex


def usage_fields(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: `input_tokens` leaves out the cached prompt tokens."""
    fields: dict[str, Any] = {
        "input_tokens": max(
            usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0
        ),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }
    if usage.reasoning_tokens:
        fields["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return fields


def thinking_signature(issuer: str | None, signature: str | None) -> str:
    """What a caller gets in a thinking block's signature: only Anthropic's own is bare."""
    if issuer == NAME:
        return signature or ""
    return seal(issuer, signature or "") if issuer else ""
