"""Anthropic replies, buffered or streamed as block events: their content, usage
and text, and the errors llmgate answers in Anthropic's shape."""

from __future__ import annotations

import json
from typing import Any

from addon.protocols.anthropic_messages.content import _TOOL_USE, _blocks
from addon.protocols.base import (
    StreamEvent,
    StreamState,
    TextSlot,
    WireProtocol,
    add_tool_delta,
    as_int,
    as_list,
    as_str,
    dig,
    error_summary,
    fill_slots,
    lenient_parts,
    load_event,
    merge_raw_usage,
    replace_event_data,
    require_object,
    slots_text,
)
from addon.protocols.canonical import CanonicalResponse, Finish, Usage

_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
FINISH: dict[str, Finish] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_of(stop_reason: str | None) -> Finish | None:
    return FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else None


def anthropic_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    counts = {key: as_int(raw.get(key)) for key in _TOKEN_FIELDS}
    if all(value is None for value in counts.values()):
        return None
    totals = {key: value or 0 for key, value in counts.items()}
    # Compaction runs as an extra sampling pass of the same model that the
    # top-level counts leave out; it is billed, so the ledger must include it.
    # Advisor iterations are left out on purpose: they are billed at another
    # model's rates, which this request's price cannot express.
    for iteration in as_list(raw.get("iterations")):
        if isinstance(iteration, dict) and iteration.get("type") == "compaction":
            for key in _TOKEN_FIELDS:
                totals[key] += as_int(iteration.get(key)) or 0
    cache_write = totals["cache_creation_input_tokens"]
    cache_read = totals["cache_read_input_tokens"]
    return Usage(
        input_tokens=totals["input_tokens"] + cache_write + cache_read,
        output_tokens=totals["output_tokens"],
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=as_int(dig(raw, "output_tokens_details", "thinking_tokens")) or 0,
    )


class AnthropicMessagesReplies(WireProtocol):
    # --- responses ----------------------------------------------------------------
    def read_usage(self, body: Any) -> Usage | None:
        return anthropic_usage(body.get("usage")) if isinstance(body, dict) else None

    def parse_response(self, body: Any) -> CanonicalResponse:
        body = require_object(body, "response body")
        content = body.get("content")
        # The compaction summary restates the prompt; it is not part of the answer.
        blocks = [
            block
            for block in (content if isinstance(content, list) else [])
            if isinstance(block, dict) and block.get("type") != "compaction"
        ]
        stop_reason = as_str(body.get("stop_reason"))
        return CanonicalResponse(
            id=as_str(body.get("id")),
            model=as_str(body.get("model")),
            content=lenient_parts(_blocks, blocks, "content"),
            stop_reason=stop_reason,
            finish=finish_of(stop_reason),
            usage=anthropic_usage(body.get("usage")),
        )

    def feed_event(self, state: StreamState, event: StreamEvent) -> bool:
        data = load_event(event)
        kind = data.get("type") if isinstance(data, dict) else event.event
        if kind == "error" or event.event == "error":
            state.error = error_summary(data, fallback=event.data.strip())
            return False
        if not isinstance(data, dict):
            return False
        if kind == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
            state.model = as_str(message.get("model")) or state.model
            self._read_usage(state, message.get("usage"))
        elif kind == "message_delta":
            stop = as_str(dig(data, "delta", "stop_reason"))
            state.stop_reason = stop or state.stop_reason
            # The final counts ride on the same event as the stop reason.
            self._read_usage(state, data.get("usage"))
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict):
                return self._block_start(state, str(data.get("index")), block)
        elif kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                return self._block_delta(state, str(data.get("index")), delta)
        return False

    @staticmethod
    def _read_usage(state: StreamState, raw: Any) -> None:
        if isinstance(raw, dict):
            # message_start gives the first counts, message_delta the final
            # cumulative ones; a later value wins for every field it carries.
            state.usage = anthropic_usage(merge_raw_usage(state, raw)) or state.usage

    @staticmethod
    def _block_start(state: StreamState, key: str, block: dict[str, Any]) -> bool:
        kind = block.get("type")
        if kind in _TOOL_USE:
            seed = block.get("input")
            add_tool_delta(
                state,
                key,
                call_id=block.get("id"),
                name=block.get("name"),
                # The start usually has `input: {}` and the deltas bring the rest.
                arguments=_seed(seed),
                complete=True,
            )
            return True
        text = slots_text(_block_text_slots(block))
        if text:
            state.text.append(text)
            return True
        thinking = as_str(block.get("thinking")) if kind == "thinking" else None
        if thinking:
            state.thinking.append(thinking)
            return True
        # A redacted thinking block is output even though it has no readable text.
        return kind == "redacted_thinking" or (kind == "compaction" and bool(block.get("content")))

    @staticmethod
    def _block_delta(state: StreamState, key: str, delta: dict[str, Any]) -> bool:
        kind = delta.get("type")
        if _delta_text_slots(delta):
            state.text.append(delta["text"])
            return bool(delta["text"])
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            state.thinking.append(delta["thinking"])
            return bool(delta["thinking"])
        if kind == "input_json_delta":
            partial = delta.get("partial_json")
            add_tool_delta(state, key, arguments=partial)
            return bool(partial)
        # The compaction summary is generated output, but not part of the answer.
        return kind == "compaction_delta" and bool(delta.get("content"))

    # --- errors -------------------------------------------------------------------
    def stream_text(self, event: StreamEvent) -> str | None:
        return slots_text(_text_slots(load_event(event)))

    def with_stream_text(self, event: StreamEvent, text: str) -> StreamEvent:
        data = load_event(event)
        fill_slots(_text_slots(data), text)
        return replace_event_data(event, data)

    def with_held_text(self, event: StreamEvent, text: str) -> StreamEvent:
        """Held text after a block's start goes in a delta: a second start would open
        a second block."""
        data = load_event(event)
        if not isinstance(data, dict) or data.get("type") != "content_block_start":
            return self.with_stream_text(event, text)
        delta = {
            "type": "content_block_delta",
            "index": data.get("index"),
            "delta": {"type": "text_delta", "text": text},
        }
        return replace_event_data(
            StreamEvent(data="", event="content_block_delta" if event.event else None), delta
        )

    def error_body(self, status: int, kind: str, message: str) -> dict[str, Any]:
        error_type = _ERROR_TYPES.get(status)
        if error_type is None:
            error_type = "api_error" if status >= 500 else "invalid_request_error"
        return {"type": "error", "error": {"type": error_type, "message": message}}


def _block_text_slots(block: dict[str, Any]) -> list[TextSlot]:
    """A text block's start may already carry text, which is reply text like a delta's.

    It normally carries "", and then the start stays a structural event, one that
    releases what the scanner held back from the block before.
    """
    if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
        return [(block, "text")]
    return []


def _delta_text_slots(delta: dict[str, Any]) -> list[TextSlot]:
    if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
        return [(delta, "text")]
    return []


def _text_slots(data: Any) -> list[TextSlot]:
    """The reply text of a stream event, found where `feed_event` records it."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "content_block_start" and isinstance(data.get("content_block"), dict):
        return _block_text_slots(data["content_block"])
    if kind == "content_block_delta" and isinstance(data.get("delta"), dict):
        return _delta_text_slots(data["delta"])
    return []


def _seed(value: Any) -> str | None:
    """Tool input that came complete with the block start; `{}` means the deltas follow."""
    return json.dumps(value, ensure_ascii=False) if value else None
