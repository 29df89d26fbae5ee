"""Responses replies, buffered or streamed as named events: their content, usage
and text, and the errors llmgate answers in the Responses shape."""

from __future__ import annotations

import json
from typing import Any

from addon.protocols.base import (
    StreamEvent,
    StreamState,
    TextSlot,
    WireProtocol,
    add_tool_delta,
    as_str,
    dig,
    error_summary,
    fill_slots,
    lenient_parts,
    load_event,
    replace_event_data,
    require_object,
    slots_text,
)
from addon.protocols.canonical import CanonicalResponse, ContentPart, Finish, ToolUsePart, Usage
from addon.protocols.openai_chat.reply import openai_error_body, openai_usage
from addon.protocols.openai_responses.content import (
    _TOOL_CALLS,
    _content_parts,
    _reasoning_part,
    _tool_use,
)

_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
_TEXT_DELTAS = ("response.output_text.delta", "response.refusal.delta")
_THINKING_DELTAS = ("response.reasoning_summary_text.delta", "response.reasoning_text.delta")
_ARGUMENT_DELTAS = (
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
)


def responses_usage(raw: Any) -> Usage | None:
    return openai_usage(
        raw, "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"
    )


def _output_parts(output: Any) -> list[ContentPart]:
    parts: list[ContentPart] = []
    for item in output if isinstance(output, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            parts.extend(_content_parts(item.get("content"), "output"))
        elif kind == "reasoning":
            parts.append(_reasoning_part(item))
        elif kind in _TOOL_CALLS:
            parts.append(_tool_use(item))
    return parts


def _stop_reason(response: dict[str, Any]) -> str | None:
    reason = as_str(dig(response, "incomplete_details", "reason"))
    return reason or as_str(response.get("status"))


def _finish(response: dict[str, Any], content: list[ContentPart]) -> Finish | None:
    status = response.get("status")
    if status == "completed":
        return "tool_calls" if any(isinstance(p, ToolUsePart) for p in content) else "stop"
    if status == "incomplete":
        reason = dig(response, "incomplete_details", "reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "error" if status == "failed" else None


class OpenAIResponsesReplies(WireProtocol):
    # --- responses ----------------------------------------------------------------
    def read_usage(self, body: Any) -> Usage | None:
        return responses_usage(body.get("usage")) if isinstance(body, dict) else None

    def parse_response(self, body: Any) -> CanonicalResponse:
        body = require_object(body, "response body")
        content = lenient_parts(_output_parts, body.get("output"))
        return CanonicalResponse(
            id=as_str(body.get("id")),
            model=as_str(body.get("model")),
            content=content,
            stop_reason=_stop_reason(body),
            finish=_finish(body, content),
            usage=responses_usage(body.get("usage")),
        )

    def feed_event(self, state: StreamState, event: StreamEvent) -> bool:
        data = load_event(event)
        kind = _kind(data, event)
        if kind == "error":
            state.error = error_summary(data, fallback=event.data.strip())
            return False
        if not isinstance(data, dict):
            return False
        response = data.get("response")
        if isinstance(response, dict):
            self._read_response(state, kind, response)
            return False
        delta = data.get("delta")
        if _text_slots(data, kind) and delta:
            state.text.append(delta)
            return True
        if kind in _THINKING_DELTAS and isinstance(delta, str) and delta:
            state.thinking.append(delta)
            return True
        item_id = as_str(data.get("item_id")) or str(data.get("output_index"))
        if kind in _ARGUMENT_DELTAS:
            add_tool_delta(state, item_id, arguments=delta)
            return bool(delta)
        if kind == "response.function_call_arguments.done":
            # Only fills in arguments no delta delivered.
            if not state.tool_call(item_id).arguments:
                add_tool_delta(state, item_id, arguments=data.get("arguments"), complete=True)
            return False
        item = data.get("item")
        if (
            kind == "response.output_item.added"
            and isinstance(item, dict)
            and item.get("type") in _TOOL_CALLS
        ):
            key = as_str(item.get("id")) or str(data.get("output_index"))
            add_tool_delta(
                state,
                key,
                call_id=item.get("call_id"),
                name=item.get("name"),
                arguments=item.get("arguments", item.get("input")),
                complete=True,
            )
            return True
        return False

    @staticmethod
    def _read_response(state: StreamState, kind: str | None, response: dict[str, Any]) -> None:
        if isinstance(response.get("model"), str):
            state.model = response["model"]
        if kind not in _FINAL_EVENTS:
            return
        state.stop_reason = _stop_reason(response)
        usage = responses_usage(response.get("usage"))
        if usage is not None:
            state.usage = usage
        if kind == "response.failed":
            state.error = error_summary(response.get("error"), fallback="response failed")

    # --- errors -------------------------------------------------------------------
    def error_body(self, status: int, kind: str, message: str) -> dict[str, Any]:
        return openai_error_body(status, kind, message)

    def stream_text(self, event: StreamEvent) -> str | None:
        data = load_event(event)
        return slots_text(_text_slots(data, _kind(data, event)))

    def with_stream_text(self, event: StreamEvent, text: str) -> StreamEvent:
        data = load_event(event)
        fill_slots(_text_slots(data, _kind(data, event)), text)
        return replace_event_data(event, data)

    def websocket_error(self, status: int, kind: str, message: str) -> dict[str, Any]:
        """The WebSocket mode's error event: the HTTP status and the HTTP API's error object."""
        return {"type": "error", "status": status, **self.error_body(status, kind, message)}

    def error_event(self, status: int, kind: str, message: str) -> StreamEvent:
        # The Responses stream's own error event shape.
        payload = {"type": "error", "code": kind, "message": message, "param": None}
        return StreamEvent(data=json.dumps(payload), event="error")


def _kind(data: Any, event: StreamEvent) -> str | None:
    """The event's type; the SSE `event:` line names it when the JSON does not."""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) and kind else event.event


def _text_slots(data: Any, kind: str | None) -> list[TextSlot]:
    """The reply text an event carries: an answer or a refusal delta."""
    if kind in _TEXT_DELTAS and isinstance(data, dict) and isinstance(data.get("delta"), str):
        return [(data, "delta")]
    return []
