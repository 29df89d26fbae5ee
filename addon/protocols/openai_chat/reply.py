"""Chat replies, buffered or streamed as chunks: their content, usage and text, and
the errors llmgate answers in OpenAI's shape (Responses answers them alike)."""

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
    dig,
    error_summary,
    fill_slots,
    lenient_parts,
    load_event,
    replace_event_data,
    require_object,
    slots_text,
)
from addon.protocols.canonical import CanonicalResponse, Finish, Usage
from addon.protocols.openai_chat.content import _REASONING_KEYS, _assistant_parts

# Chat's finish_reason words; `function_call` is the legacy name for tool calls and
# `error` an OpenRouter extension. Anything else a vendor invents ended normally.
FINISH_FROM_CHAT: dict[str, Finish] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def openai_usage(
    raw: Any, inputs: str, outputs: str, input_details: str, output_details: str
) -> Usage | None:
    """Normalise an OpenAI usage object; Chat and Responses differ only in the field names.

    OpenAI's input count already includes cached tokens and its output count
    already includes reasoning tokens, which is exactly the canonical meaning.
    """
    if not isinstance(raw, dict):
        return None
    input_tokens, output_tokens = as_int(raw.get(inputs)), as_int(raw.get(outputs))
    if input_tokens is None and output_tokens is None:
        return None
    return Usage(
        input_tokens=input_tokens or 0,
        output_tokens=output_tokens or 0,
        cache_read_tokens=as_int(dig(raw, input_details, "cached_tokens")) or 0,
        # Explicit prompt caching reports writes next to reads; absent means none.
        cache_write_tokens=as_int(dig(raw, input_details, "cache_write_tokens")) or 0,
        reasoning_tokens=as_int(dig(raw, output_details, "reasoning_tokens")) or 0,
    )


def chat_usage(raw: Any) -> Usage | None:
    return openai_usage(
        raw,
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    )


def openai_error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    if status >= 500:
        error_type = "server_error"
    else:
        error_type = _ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": None, "code": kind}}


class OpenAIChatReplies(WireProtocol):
    # --- responses ----------------------------------------------------------------
    def read_usage(self, body: Any) -> Usage | None:
        return chat_usage(body.get("usage")) if isinstance(body, dict) else None

    def parse_response(self, body: Any) -> CanonicalResponse:
        body = require_object(body, "response body")
        choice = first_choice(body.get("choices"))
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        stop_reason = as_str(choice.get("finish_reason"))
        return CanonicalResponse(
            id=as_str(body.get("id")),
            model=as_str(body.get("model")),
            content=lenient_parts(_assistant_parts, message),
            stop_reason=stop_reason,
            finish=chat_finish(stop_reason),
            usage=chat_usage(body.get("usage")),
        )

    def feed_event(self, state: StreamState, event: StreamEvent) -> bool:
        chunk = load_event(event)
        if event.event == "error" or (isinstance(chunk, dict) and chunk.get("error")):
            state.error = error_summary(chunk, fallback=event.data.strip())
            return False
        if not isinstance(chunk, dict):
            return False
        if isinstance(chunk.get("model"), str):
            state.model = chunk["model"]
        # Groq reported usage under `x_groq` before it supported include_usage.
        usage = chat_usage(chunk.get("usage")) or chat_usage(dig(chunk, "x_groq", "usage"))
        if usage is not None:
            state.usage = usage
        choice = first_choice(chunk.get("choices"))
        if isinstance(choice.get("finish_reason"), str):
            state.stop_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return False
        carried = False
        for holder, key in _text_slots(delta):
            if holder[key]:
                state.text.append(holder[key])
                carried = True
        for key in _REASONING_KEYS:
            value = delta.get(key)
            if isinstance(value, str) and value:
                state.thinking.append(value)
                carried = True
        for position, call in enumerate(as_list(delta.get("tool_calls"))):
            if not isinstance(call, dict):
                continue
            fn = call.get("function") if isinstance(call.get("function"), dict) else {}
            add_tool_delta(
                state,
                str(call.get("index", position)),
                call_id=call.get("id"),
                name=fn.get("name"),
                arguments=fn.get("arguments"),
            )
            carried = True
        return carried

    def hides_event(self, event: StreamEvent) -> bool:
        """The usage-only chunk exists only because llmgate asked for it."""
        chunk = load_event(event)
        return (
            isinstance(chunk, dict)
            and chunk.get("choices") == []
            and isinstance(chunk.get("usage"), dict)
        )

    # --- errors -------------------------------------------------------------------
    def error_body(self, status: int, kind: str, message: str) -> dict[str, Any]:
        return openai_error_body(status, kind, message)

    def stream_text(self, event: StreamEvent) -> str | None:
        return slots_text(_event_slots(load_event(event)))

    def with_stream_text(self, event: StreamEvent, text: str) -> StreamEvent:
        data = load_event(event)
        fill_slots(_event_slots(data), text)
        return replace_event_data(event, data)

    def error_event(self, status: int, kind: str, message: str) -> StreamEvent:
        # OpenAI streams errors as a plain data line; the SDK raises on it.
        return StreamEvent(data=json.dumps(self.error_body(status, kind, message)))


def chat_finish(reason: str | None) -> Finish | None:
    return FINISH_FROM_CHAT.get(reason, "stop") if reason else None


def _text_slots(delta: Any) -> list[TextSlot]:
    """The reply text of a choice's delta: its content, and a refusal, which the
    caller is shown just the same."""
    if not isinstance(delta, dict):
        return []
    return [(delta, key) for key in ("content", "refusal") if isinstance(delta.get(key), str)]


def _event_slots(chunk: Any) -> list[TextSlot]:
    """The text slots of a stream chunk, from the choice `feed_event` reads."""
    if not isinstance(chunk, dict):
        return []
    return _text_slots(first_choice(chunk.get("choices")).get("delta"))


def first_choice(choices: Any) -> dict[str, Any]:
    """Choice 0: with `n` > 1 the other choices are alternatives, not more of the reply."""
    if not isinstance(choices, list):
        return {}
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return {}
