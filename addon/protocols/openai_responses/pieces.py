"""The `response` object and its output items, which both codecs write: the
buffered reply's and the stream's."""

from __future__ import annotations

import uuid
from typing import Any

from addon.protocols.base import as_list
from addon.protocols.canonical import Usage
from addon.protocols.codec import CallerView


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_id(upstream_id: str | None) -> str:
    """The provider's id, kept for tracing, under the prefix Responses callers expect."""
    if not upstream_id:
        return new_id("resp")
    return upstream_id if upstream_id.startswith("resp_") else f"resp_{upstream_id}"


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    """Usage as `responses_usage` reads it back (input includes cached, output reasoning)."""
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def ending(finish: str | None, stop_reason: str | None) -> tuple[str, Any, Any]:
    """(status, incomplete_details, error) for a finish."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}, None
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}, None
    if finish == "error":
        message = f"the model stopped with an error ({stop_reason or 'unknown'})"
        return "failed", None, {"code": "server_error", "message": message}
    return "completed", None, None


def envelope(
    caller: CallerView,
    *,
    rid: str,
    model: str | None,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    incomplete: Any = None,
    error: Any = None,
) -> dict[str, Any]:
    """The `response` object, echoing the request's settings as the Responses API does."""
    body = caller.body
    parallel = body.get("parallel_tool_calls")
    reasoning = body.get("reasoning")
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": model or caller.request.model,
        "output": output,
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": None,
        "reasoning": reasoning if isinstance(reasoning, dict) else {"effort": None},
        # Nothing is stored: the id cannot be retrieved or continued from.
        "store": False,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": as_list(body.get("tools")),
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "usage": usage_json(usage),
    }


def reasoning_item(rid: str, text: str, sealed: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": rid, "type": "reasoning", "summary": []}
    if text:
        item["summary"] = [{"type": "summary_text", "text": text}]
    if sealed is not None:
        item["encrypted_content"] = sealed
    return item


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(mid: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    }


def call_item(fid: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": fid,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
