"""The small surface every wire-protocol module implements.

Protocol modules never import mitmproxy: they turn bytes and parsed JSON into
canonical objects and back, and they read usage from bodies and stream events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError

from addon.protocols import jsonedit, strictjson
from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ContentPart,
    ImagePart,
    Message,
    ProtocolError,
    Role,
    TextPart,
    ThinkingPart,
    ToolUsePart,
    Usage,
)


@dataclass
class StreamEvent:
    """One event of a streamed reply: an SSE event, or one element of a JSON-array stream."""

    data: str
    event: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class _ToolCall:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamState:
    """What a stream reader has learned so far; enough to audit a partial stream."""

    model: str | None = None
    usage: Usage | None = None
    stop_reason: str | None = None
    error: str | None = None
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: dict[str, _ToolCall] = field(default_factory=dict)
    events: int = 0
    # Protocol-private bookkeeping that must survive from one event to the next
    # (raw usage fields merged so far, tool calls seeded with complete arguments).
    scratch: dict[str, Any] = field(default_factory=dict)

    def tool_call(self, key: str) -> _ToolCall:
        return self.tool_calls.setdefault(key, _ToolCall())

    def response(self) -> CanonicalResponse:
        content: list[ContentPart] = []
        if self.thinking:
            content.append(ThinkingPart(text="".join(self.thinking)))
        if self.text:
            content.append(TextPart(text="".join(self.text)))
        for call in self.tool_calls.values():
            raw = "".join(call.arguments)
            try:
                args: Any = json.loads(raw) if raw else {}
            except (ValueError, RecursionError):
                args = raw
            content.append(ToolUsePart(id=call.id, name=call.name, arguments=args))
        return CanonicalResponse(
            model=self.model, content=content, stop_reason=self.stop_reason, usage=self.usage
        )


class WireProtocol:
    """Base class; one subclass per wire format, registered in `addon.protocols`."""

    name: ClassVar[str]
    provider: ClassVar[str]  # the route `provider` that speaks this protocol
    credential_header: ClassVar[str] = "authorization"

    # --- requests -----------------------------------------------------------------
    def parse_request(self, body: Any, path: str) -> CanonicalRequest:
        raise NotImplementedError

    def model_from_path(self, path: str) -> str | None:
        """Protocols that carry the model in the URL (Gemini) override this."""
        return None

    def path_with_model(self, path: str, model: str) -> str:
        return path

    def is_stream_request(self, body: Any, path: str) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    def edit_request(
        self, raw: bytes, body: dict[str, Any], *, model: str | None, max_tokens: int | None = None
    ) -> tuple[bytes, bool]:
        """Apply the edits llmgate must make, touching no other byte.

        `body` is `raw` already parsed. Returns the new body and whether llmgate
        asked for stream usage the caller did not ask for (the tap then hides it
        from the caller again).
        """
        edited = raw
        if model is not None and self.model_in_body:
            edited = jsonedit.set_top_level(edited, "model", model)
        if max_tokens is not None:
            for key, value in self.max_tokens_edits(body, max_tokens):
                edited = jsonedit.set_top_level(edited, key, value)
        return edited, False

    model_in_body: ClassVar[bool] = True

    def max_tokens_edits(self, body: dict[str, Any], limit: int) -> list[tuple[str, Any]]:
        """Top-level (key, value) pairs that cap the reply at `limit` tokens."""
        return [("max_tokens", limit)]

    # --- responses ----------------------------------------------------------------
    def parse_response(self, body: Any) -> CanonicalResponse:
        raise NotImplementedError

    def read_usage(self, body: Any) -> Usage | None:
        """Just the usage of a buffered reply: the ledger's hot path skips the content."""
        return self.parse_response(body).usage

    def feed_event(self, state: StreamState, event: StreamEvent) -> bool:
        """Update `state` from one stream event; True when it carried output content."""
        raise NotImplementedError

    # --- stream text, for scanning and redacting replies as they stream ---------
    def stream_text(self, event: StreamEvent) -> str | None:
        """The answer text this event adds, or None when it is not a text delta."""
        return None

    def with_stream_text(self, event: StreamEvent, text: str) -> StreamEvent:
        """A copy of a text-delta event carrying `text` instead."""
        raise NotImplementedError

    def with_held_text(self, event: StreamEvent, text: str) -> StreamEvent:
        """An extra event after text event `event`, carrying text the scanner held back.

        Most protocols can simply repeat the event; one whose text event may also open
        a block (Anthropic's `content_block_start`) must not open it twice.
        """
        return self.with_stream_text(event, text)

    def error_event(self, status: int, kind: str, message: str) -> StreamEvent:
        """An in-stream error in this protocol's format, to end a blocked stream."""
        return StreamEvent(data=json.dumps(self.error_body(status, kind, message)), event="error")

    def hides_event(self, event: StreamEvent) -> bool:
        """True for an event llmgate injected and the caller must not see."""
        return False

    # --- errors -------------------------------------------------------------------
    def error_body(self, status: int, kind: str, message: str) -> dict[str, Any]:
        raise NotImplementedError


def event_json(event: StreamEvent) -> dict[str, Any] | None:
    try:
        data = json.loads(event.data)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def replace_event_data(event: StreamEvent, data: dict[str, Any] | list[Any]) -> StreamEvent:
    return StreamEvent(
        data=json.dumps(data, ensure_ascii=False, separators=(",", ":")), event=event.event
    )


# Where an event keeps a piece of reply text: (the object holding it, its key).
TextSlot = tuple[dict[str, Any], str]


def slots_text(slots: list[TextSlot]) -> str | None:
    """The reply text in an event's slots; None when it has none, so is no text event."""
    return "".join(holder[key] for holder, key in slots) if slots else None


def fill_slots(slots: list[TextSlot], text: str) -> None:
    """Put `text` in the first slot and empty the rest.

    The redactor releases one string per event, with no trace of where the slots'
    boundaries fell in it, so it cannot be split back among them.
    """
    for position, (holder, key) in enumerate(slots):
        holder[key] = text if position == 0 else ""


def require_object(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return body


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError("'model' is required and must be a non-empty string")
    return model


# --- helpers shared by the protocol modules -------------------------------------------


def build_request(**fields: Any) -> CanonicalRequest:
    """Construct the canonical request, reporting a wrongly typed field as a ProtocolError."""
    try:
        return CanonicalRequest(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError(f"invalid request field '{where}': {first['msg']}") from None


def require_list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"'{key}' is required and must be a list")
    return value


def optional_list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f"'{key}' must be a list")
    return value


def optional_dict(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"'{key}' must be an object")
    return value


def optional_number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"'{key}' must be a number")
    return value


def optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if as_int(value) is None:
        raise ProtocolError(f"'{key}' must be an integer")
    return value


def stop_list(value: Any, key: str) -> list[str]:
    """Stop sequences arrive as one string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ProtocolError(f"'{key}' must be a string or a list of strings")


def as_int(value: Any) -> int | None:
    """The value if it is a real integer (JSON `true` is not a token count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None when any level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def as_list(value: Any) -> list[Any]:
    """The value if it is a list, else empty: an odd field must not break iteration."""
    return value if isinstance(value, list) else []


def json_arguments(raw: Any) -> Any:
    """Tool arguments in a request travel as JSON text; kept raw when not valid JSON.

    They are refused, as a body would be, when they nest deeper than the body limit:
    the provider will parse them too.
    """
    if not isinstance(raw, str):
        return raw
    try:
        value = json.loads(raw)
        strictjson.check_value(value)
    except RecursionError:
        raise ProtocolError("tool call arguments nest too deeply to be read") from None
    except strictjson.BodyError as exc:
        raise ProtocolError(f"tool call arguments refused: {exc}") from None
    except ValueError:
        return raw
    return value


def image_from_url(url: Any, media_type: str | None = None) -> ImagePart:
    """A data: URL is inline bytes, which the canonical form does not keep."""
    if isinstance(url, str) and url.startswith("data:"):
        header = url[5:].split(",", 1)[0]
        return ImagePart(media_type=header.split(";", 1)[0] or media_type, has_inline_data=True)
    return ImagePart(url=url if isinstance(url, str) else None, media_type=media_type)


def append_parts(messages: list[Message], role: Role, parts: list[ContentPart]) -> None:
    """Add parts as a message, folding them into the previous one when the role repeats.

    Item-based formats (Responses, Gemini) split one turn into several items; folding
    keeps the canonical conversation turn-shaped whatever the wire format.
    """
    if messages and messages[-1].role == role:
        messages[-1].content.extend(parts)
    else:
        messages.append(Message(role=role, content=parts))


def lenient_parts(convert: Callable[..., list[ContentPart]], *args: Any) -> list[ContentPart]:
    """Reply content for the audit: a reply shape we do not know must not cost the ledger
    the usage that came with it, so a reply is never rejected over its content."""
    try:
        return convert(*args)
    except (ProtocolError, ValidationError):
        return []


def load_event(event: StreamEvent) -> Any:
    """The event's JSON, or None for `[DONE]`, keep-alives and data that is not JSON."""
    data = event.data.strip()
    if not data or data == "[DONE]":
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def error_summary(obj: Any, fallback: str = "", limit: int = 300) -> str:
    """A short "label: message" for the audit from any provider's error object."""
    err = obj.get("error") if isinstance(obj, dict) and obj.get("error") else obj
    if isinstance(err, str):
        return err[:limit]
    if not isinstance(err, dict):
        return (fallback or "the upstream reported an error")[:limit]
    label = next(
        (
            str(err[k])
            for k in ("status", "code", "type")
            if isinstance(err.get(k), str | int) and err[k] not in ("", "error")
        ),
        None,
    )
    message = err.get("message") if isinstance(err.get("message"), str) else fallback
    text = f"{label}: {message}" if label and message else label or message
    return (text or "the upstream reported an error")[:limit]


def merge_raw_usage(state: StreamState, raw: Any) -> dict[str, Any]:
    """Merge one event's usage fields over those seen so far; a later value wins per field.

    Providers that report usage more than once per stream (Anthropic, Gemini) send
    cumulative counts, but a later report may leave out a field an earlier one had.
    """
    merged: dict[str, Any] = state.scratch.setdefault("raw_usage", {})
    if isinstance(raw, dict):
        merged.update(raw)
    return merged


def add_tool_delta(
    state: StreamState,
    key: str,
    *,
    call_id: Any = None,
    name: Any = None,
    arguments: Any = None,
    complete: bool = False,
) -> None:
    """Record a piece of a streamed tool call.

    `complete` marks arguments that arrived whole with the call's start; should
    deltas follow anyway, they replace that seed rather than being appended to it.
    """
    call = state.tool_call(key)
    seeded: set[str] = state.scratch.setdefault("seeded_tool_calls", set())
    if isinstance(call_id, str) and call_id:
        call.id = call_id
    if isinstance(name, str) and name:
        call.name = name
    if not isinstance(arguments, str) or not arguments:
        return
    if complete:
        call.arguments = [arguments]
        seeded.add(key)
        return
    if key in seeded:
        seeded.discard(key)
        call.arguments = []
    call.arguments.append(arguments)
