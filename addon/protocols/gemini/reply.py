"""Gemini replies, buffered or streamed: their content, usage and text, and the
errors llmgate answers in Gemini's shape."""

from __future__ import annotations

import json
from typing import Any

from addon.protocols.base import (
    StreamEvent,
    StreamState,
    TextSlot,
    WireProtocol,
    add_tool_delta,
    as_int,
    as_list,
    as_str,
    error_summary,
    fill_slots,
    lenient_parts,
    load_event,
    merge_raw_usage,
    replace_event_data,
    require_object,
    slots_text,
)
from addon.protocols.canonical import (
    CanonicalResponse,
    Finish,
    TextPart,
    ThinkingPart,
    ToolUsePart,
    Usage,
)
from addon.protocols.gemini.content import _part, _parts, _text_slot
from addon.protocols.gemini.fields import _get, _get_dict

_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def gemini_usage(raw: Any) -> Usage | None:
    prompt = as_int(_get(raw, "promptTokenCount"))
    candidates = as_int(_get(raw, "candidatesTokenCount"))
    thoughts = as_int(_get(raw, "thoughtsTokenCount"))
    if prompt is None and candidates is None and thoughts is None:
        return None
    # Tool-use prompt tokens (e.g. search results fed back) are billed as input
    # but counted apart from the prompt; cached tokens are counted inside it.
    tool_prompt = as_int(_get(raw, "toolUsePromptTokenCount")) or 0
    return Usage(
        input_tokens=(prompt or 0) + tool_prompt,
        output_tokens=(candidates or 0) + (thoughts or 0),
        cache_read_tokens=as_int(_get(raw, "cachedContentTokenCount")) or 0,
        reasoning_tokens=thoughts or 0,
    )


# Gemini's finishReason in canonical words; a candidate that called a function
# stops with STOP, which `gemini_finish` turns into tool_calls.
_FINISH: dict[str, Finish] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"),
        "content_filter",
    ),
}


def gemini_finish(reason: str | None, *, called: bool) -> Finish | None:
    if reason is None:
        return None
    finish = _FINISH.get(reason, "error")
    return "tool_calls" if finish == "stop" and called else finish


def _candidate(body: dict[str, Any]) -> dict[str, Any]:
    """Candidate 0: with candidateCount > 1 the others are alternatives."""
    for candidate in as_list(_get(body, "candidates")):
        if isinstance(candidate, dict) and candidate.get("index", 0) == 0:
            return candidate
    return {}


class GeminiReplies(WireProtocol):
    # --- responses ----------------------------------------------------------------
    def read_usage(self, body: Any) -> Usage | None:
        return gemini_usage(_get(body, "usageMetadata")) if isinstance(body, dict) else None

    def parse_response(self, body: Any) -> CanonicalResponse:
        body = require_object(body, "response body")
        candidate = _candidate(body)
        content = _get_dict(candidate, "content")
        parts = lenient_parts(_parts, _get(content, "parts"), "content")
        called = any(isinstance(p, ToolUsePart) for p in parts)
        reason = as_str(_get(candidate, "finishReason"))
        blocked = as_str(_get(_get_dict(body, "promptFeedback"), "blockReason"))
        return CanonicalResponse(
            id=as_str(_get(body, "responseId")),
            model=as_str(_get(body, "modelVersion")),
            content=parts,
            stop_reason=reason or blocked,
            finish=gemini_finish(reason, called=called) or ("content_filter" if blocked else None),
            usage=gemini_usage(_get(body, "usageMetadata")),
        )

    def feed_event(self, state: StreamState, event: StreamEvent) -> bool:
        data = load_event(event)
        # Be forgiving if a whole JSON-array stream arrives as one event.
        chunks = data if isinstance(data, list) else [data]
        carried = False
        for chunk in chunks:
            if isinstance(chunk, dict):
                carried = self._feed_chunk(state, chunk) or carried
        return carried

    @staticmethod
    def _feed_chunk(state: StreamState, chunk: dict[str, Any]) -> bool:
        if chunk.get("error"):
            state.error = error_summary(chunk)
            return False
        state.model = as_str(_get(chunk, "modelVersion")) or state.model
        raw_usage = _get(chunk, "usageMetadata")
        if isinstance(raw_usage, dict):
            # Cumulative counts; a later chunk may omit a field an earlier one had.
            state.usage = gemini_usage(merge_raw_usage(state, raw_usage)) or state.usage
        blocked = as_str(_get(_get_dict(chunk, "promptFeedback"), "blockReason"))
        candidate = _candidate(chunk)
        state.stop_reason = as_str(_get(candidate, "finishReason")) or blocked or state.stop_reason
        carried = False
        for part in as_list(_get(_get_dict(candidate, "content"), "parts")):
            converted = _part(part) if isinstance(part, dict) else None
            if isinstance(converted, ThinkingPart) and converted.text:
                state.thinking.append(converted.text)
            elif isinstance(converted, TextPart):
                state.text.append(converted.text)
            elif isinstance(converted, ToolUsePart):
                # Gemini streams each function call whole, never in pieces.
                key = converted.id or str(len(state.tool_calls))
                args = json.dumps(converted.arguments or {}, ensure_ascii=False)
                add_tool_delta(
                    state,
                    key,
                    call_id=converted.id,
                    name=converted.name,
                    arguments=args,
                    complete=True,
                )
            else:
                continue
            carried = True
        return carried

    # --- errors -------------------------------------------------------------------
    def stream_text(self, event: StreamEvent) -> str | None:
        return slots_text(_event_slots(load_event(event)))

    def with_stream_text(self, event: StreamEvent, text: str) -> StreamEvent:
        data = load_event(event)
        fill_slots(_event_slots(data), text)
        return replace_event_data(event, data)

    def error_event(self, status: int, kind: str, message: str) -> StreamEvent:
        return StreamEvent(data=json.dumps(self.error_body(status, kind, message)))

    def error_body(self, status: int, kind: str, message: str) -> dict[str, Any]:
        code = _STATUSES.get(status)
        if code is None:
            code = "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"
        return {
            "error": {
                "code": status,
                "message": message,
                "status": code,
                # google.rpc.ErrorInfo is where Google APIs put a machine-readable reason.
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": kind,
                        "domain": "llmgate",
                    }
                ],
            }
        }


def _event_slots(data: Any) -> list[TextSlot]:
    """The reply text slots of an event, read as `feed_event` reads it: every chunk of
    it, candidate 0 of each."""
    slots: list[TextSlot] = []
    for chunk in data if isinstance(data, list) else [data]:
        if not isinstance(chunk, dict):
            continue
        for part in as_list(_get(_get_dict(_candidate(chunk), "content"), "parts")):
            slot = _text_slot(part) if isinstance(part, dict) else None
            if slot is not None:
                slots.append(slot)
    return slots
