"""Pieces of Chat JSON that both codecs read or write, the buffered reply's and the
stream's."""

from __future__ import annotations

from typing import Any

from addon.protocols.base import as_int, as_str
from addon.protocols.canonical import Finish, Usage

PROTOCOL = "openai_chat"
FINISH_TO_CHAT: dict[Finish, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    # Chat has no word for a failed generation that still returned 200.
    "error": "stop",
}


def error_fields(obj: Any) -> tuple[int, str, str]:
    """(status, kind, message) of an error object, as Chat vendors send them."""
    err = obj.get("error") if isinstance(obj, dict) and obj.get("error") else obj
    if isinstance(err, str):
        return 500, "error", err
    if not isinstance(err, dict):
        return 500, "error", ""
    code, kind = err.get("code"), as_str(err.get("type"))
    # OpenRouter puts the HTTP status in `code`; Groq adds `status_code`.
    status = as_int(code) or as_int(err.get("status_code")) or 500
    if isinstance(code, str) and code:
        kind = code
    return status, kind or "error", as_str(err.get("message")) or ""


def chat_usage_body(usage: Usage) -> dict[str, Any]:
    """Usage as Chat writes it; `chat_usage` reads back the same `Usage`."""
    prompt_details: dict[str, int] = {"cached_tokens": usage.cache_read_tokens}
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
