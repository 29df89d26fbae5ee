"""Pieces of Gemini JSON that both codecs write, the buffered reply's and the stream's."""

from __future__ import annotations

import json
from typing import Any

from addon.protocols.canonical import Finish, Usage
from addon.protocols.codec import log_dropped

PROTOCOL = "gemini"
_FINISH_OUT: dict[str, str] = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "error": "OTHER",
}


def args_object(args: Any, what: str) -> dict[str, Any]:
    """Gemini `args` must be an object: JSON text is parsed, anything else wrapped."""
    if args is None:
        return {}
    if isinstance(args, str):
        if not args.strip():
            return {}
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            log_dropped(f"{what}: arguments that are not JSON (wrapped as 'value')", PROTOCOL)
            return {"value": args}
    if isinstance(args, dict):
        return args
    log_dropped(f"{what}: arguments that are not an object (wrapped as 'value')", PROTOCOL)
    return {"value": args}


def usage_metadata(usage: Usage) -> dict[str, int]:
    """Written so that `gemini_usage` reads back the same Usage (cache writes aside:
    Gemini has no field for them)."""
    out = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": max(usage.output_tokens - usage.reasoning_tokens, 0),
        "totalTokenCount": usage.input_tokens + usage.output_tokens,
    }
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cache_read_tokens:
        out["cachedContentTokenCount"] = usage.cache_read_tokens
    return out


def finish_reason(finish: Finish | None) -> str | None:
    return _FINISH_OUT.get(finish) if finish else None


def thought_part(text: str, signature: str | None) -> dict[str, Any]:
    part: dict[str, Any] = {"text": text, "thought": True}
    if signature:
        part["thoughtSignature"] = signature
    return part


def call_part(
    call_id: str | None, name: str, args: dict[str, Any], signature: str | None
) -> dict[str, Any]:
    call: dict[str, Any] = {"name": name, "args": args}
    if call_id:
        call["id"] = call_id
    part: dict[str, Any] = {"functionCall": call}
    if signature:
        part["thoughtSignature"] = signature
    return part
