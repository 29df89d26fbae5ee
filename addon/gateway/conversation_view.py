"""The "LLM conversation" contentview: an LLM call in mitmweb as a conversation.

A request is shown as its system prompt and messages (roles, text, tool calls
with their arguments, tool results, thinking); a reply as the model's answer,
streamed replies reassembled from their events (SSE, or Gemini's JSON array),
then the stop reason, usage and, once llmgate closed the call, its cost.

The view is picked automatically (a high render priority) for the flows of the
four protocols llmgate parses, and never for any other flow. It reads the
protocol from the flow's `llmgate` metadata (which `flow_notes` fills in when the
call closes) or else from the request's method and path.
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http
from mitmproxy.contentviews import Contentview, Metadata

from addon.protocols import PROTOCOLS, WireProtocol
from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ContentPart,
    ImagePart,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from addon.protocols.detect import detect_protocol
from addon.streaming.replay import read_stream

VIEW_NAME = "LLM conversation"
# Above every built-in view (JSON says 1, raw 0.1): an LLM call is read as one.
PRIORITY = 10.0
# Arguments shorter than this stay on one line; longer ones are indented JSON.
_INLINE_ARGS = 100


class ConversationView(Contentview):
    name = VIEW_NAME  # type: ignore[assignment]  # the Protocol's property, as a constant
    syntax_highlight = "none"  # type: ignore[assignment]

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        if not data or _message_protocol(metadata) is None:
            return 0
        return PRIORITY

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        protocol = _message_protocol(metadata)
        if protocol is None:
            raise ValueError("not an LLM call llmgate knows")
        flow = metadata.flow
        notes = _notes(flow)
        message = metadata.http_message
        if isinstance(message, http.Request) or (
            isinstance(flow, http.HTTPFlow) and message is flow.request
        ):
            path = message.path if message is not None else ""
            return render_request(protocol, data, path, notes)
        status = message.status_code if isinstance(message, http.Response) else None
        content_type = metadata.content_type or ""
        return render_reply(protocol, data, content_type, status, notes)


conversation_view = ConversationView()


# --- which protocol ----------------------------------------------------------------
def _notes(flow: object) -> dict[str, Any]:
    metadata = getattr(flow, "metadata", None)
    notes = metadata.get("llmgate") if isinstance(metadata, dict) else None
    return notes if isinstance(notes, dict) else {}


def _message_protocol(metadata: Metadata) -> WireProtocol | None:
    """The protocol of this message, or None when the flow is no LLM call."""
    flow = metadata.flow
    if not isinstance(flow, http.HTTPFlow) or metadata.websocket_message is not None:
        return None
    message = metadata.http_message
    detected = detect_protocol(flow.request.method, flow.request.path)
    notes = _notes(flow)
    if message is flow.request:
        # The flow holds what went upstream, translated or not: the upstream's protocol.
        name = notes.get("upstream_protocol") or detected
        if name not in PROTOCOLS:
            name = notes.get("protocol") or detected
    else:
        # The reply is the one the caller got: in the caller's protocol.
        name = notes.get("protocol") or detected
    return PROTOCOLS.get(name) if isinstance(name, str) else None


# --- requests ----------------------------------------------------------------------
def render_request(
    protocol: WireProtocol, data: bytes, path: str, notes: dict[str, Any] | None = None
) -> str:
    body = json.loads(data)
    request = protocol.parse_request(body, path)
    lines = [_request_title(protocol, request), *_call_lines(notes or {})]
    if request.system:
        lines += ["", "[system]", *_indent(request.system)]
    for message in request.messages:
        lines += ["", f"[{message.role}]", *_parts(message.content)]
    if request.tools:
        lines += ["", "tools offered: " + ", ".join(tool.name for tool in request.tools)]
    return "\n".join(lines) + "\n"


def _request_title(protocol: WireProtocol, request: CanonicalRequest) -> str:
    words = [f"LLM request · {protocol.name} · model {request.model or '?'}"]
    if request.stream:
        words.append("streamed")
    if request.max_tokens is not None:
        words.append(f"max_tokens {request.max_tokens}")
    if request.reasoning is not None and request.reasoning.enabled:
        effort = request.reasoning.effort or request.reasoning.budget_tokens
        words.append(f"reasoning {effort}" if effort else "reasoning")
    return " · ".join(words)


def _call_lines(notes: dict[str, Any]) -> list[str]:
    """What llmgate knows of the call: who made it, and what it became."""
    words = []
    if notes.get("user"):
        words.append(f"user {notes['user']}")
    if notes.get("host"):
        words.append(f"called {notes['host']}")
    if notes.get("upstream_model") and notes.get("upstream_model") != notes.get("model"):
        words.append(f"sent as {notes['upstream_model']}")
    if notes.get("status"):
        status = str(notes["status"])
        words.append(f"{status}: {notes['reason']}" if notes.get("reason") else status)
    if notes.get("request_id"):
        words.append(f"request {notes['request_id']}")
    return [" · ".join(words)] if words else []


# --- replies -----------------------------------------------------------------------
def render_reply(
    protocol: WireProtocol,
    data: bytes,
    content_type: str,
    status: int | None,
    notes: dict[str, Any] | None = None,
) -> str:
    notes = notes or {}
    framing = _framing(protocol, data, content_type)
    error: str | None = None
    if framing is not None:
        state = read_stream(protocol, data, framing)
        response = state.response()
        error = state.error
        title = f"LLM reply · {protocol.name} · streamed ({state.events} events)"
    else:
        body = json.loads(data)
        if status is not None and status >= 400 or _is_error_body(body):
            return _render_error(protocol, body, status, notes)
        response = protocol.parse_response(body)
        title = f"LLM reply · {protocol.name}"
    if response.model:
        title += f" · model {response.model}"
    lines = [title, *_call_lines(notes), "", "[assistant]"]
    parts = _parts(response.content)
    lines += parts or ["    (no content)"]
    if error:
        lines += ["", f"error in the stream: {error}"]
    lines += ["", *_outcome(response, notes)]
    return "\n".join(lines) + "\n"


def _framing(protocol: WireProtocol, data: bytes, content_type: str) -> str | None:
    if content_type.startswith("text/event-stream"):
        return "sse"
    head = data.lstrip()[:1]
    if protocol.name == "gemini" and head == b"[":
        return "json_array"
    if head in (b"{", b"["):
        return None
    # No content type (a saved flow, a test): SSE starts with one of its fields.
    if data.lstrip().startswith((b"data:", b"event:", b"id:", b":")):
        return "sse"
    return None


def _is_error_body(body: Any) -> bool:
    # A Responses reply always has an "error" key: null when it is no error.
    return isinstance(body, dict) and bool(body.get("error")) and not body.get("output")


def _render_error(
    protocol: WireProtocol, body: Any, status: int | None, notes: dict[str, Any]
) -> str:
    title = f"LLM reply · {protocol.name} · error" + (f" {status}" if status else "")
    lines = [title, *_call_lines(notes), ""]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or error.get("status")
        message = error.get("message")
        if kind:
            lines.append(f"type: {kind}")
        if message:
            lines += ["message:", *_indent(str(message))]
    elif isinstance(error, str):
        lines += ["message:", *_indent(error)]
    lines += ["", "body:", *_indent(json.dumps(body, indent=2, ensure_ascii=False))]
    return "\n".join(lines) + "\n"


def _outcome(response: CanonicalResponse, notes: dict[str, Any]) -> list[str]:
    lines = []
    if response.stop_reason:
        lines.append(f"stop: {response.stop_reason}")
    usage = response.usage
    if usage is not None:
        lines.append("usage: " + _usage(usage))
    elif notes.get("input_tokens") is not None or notes.get("output_tokens") is not None:
        tokens = f"{notes.get('input_tokens') or 0} in / {notes.get('output_tokens') or 0} out"
        lines.append(f"usage (llmgate): {tokens}")
    if notes.get("cost_usd") is not None:
        lines.append(f"cost: ${notes['cost_usd']:.6f}")
    return lines


def _usage(usage: Usage) -> str:
    text = f"{usage.input_tokens} in / {usage.output_tokens} out"
    extra = [
        f"{label} {value}"
        for label, value in (
            ("cache read", usage.cache_read_tokens),
            ("cache write", usage.cache_write_tokens),
            ("reasoning", usage.reasoning_tokens),
        )
        if value
    ]
    return text + (f" ({', '.join(extra)})" if extra else "")


# --- content parts -----------------------------------------------------------------
def _parts(parts: list[ContentPart]) -> list[str]:
    lines: list[str] = []
    for part in parts:
        if isinstance(part, TextPart):
            lines += _indent(part.text)
        elif isinstance(part, ThinkingPart):
            if part.redacted and not part.text:
                lines.append("    (thinking, redacted by the provider)")
            else:
                lines += ["    (thinking)", *_indent(part.text, 6)]
        elif isinstance(part, ToolUsePart):
            call_id = f"  id {part.id}" if part.id else ""
            lines.append(f"    → tool call {part.name}{call_id}")
            lines += _indent(_arguments(part.arguments), 6)
        elif isinstance(part, ToolResultPart):
            call_id = f"  id {part.tool_use_id}" if part.tool_use_id else ""
            name = f" {part.name}" if part.name else ""
            error = "  (error)" if part.is_error else ""
            lines.append(f"    ← tool result{name}{call_id}{error}")
            for inner in part.content:
                if isinstance(inner, TextPart):
                    lines += _indent(inner.text, 6)
                else:
                    lines.append(" " * 6 + _image(inner))
        elif isinstance(part, ImagePart):
            lines.append("    " + _image(part))
    return lines


def _arguments(arguments: Any) -> str:
    if arguments is None:
        return "(no arguments)"
    if isinstance(arguments, str):
        return arguments
    inline = json.dumps(arguments, ensure_ascii=False)
    if len(inline) <= _INLINE_ARGS:
        return inline
    return json.dumps(arguments, ensure_ascii=False, indent=2)


def _image(part: ImagePart) -> str:
    where = part.url if part.url and not part.url.startswith("data:") else None
    kind = part.media_type or "image"
    return f"[image {kind}{': ' + where if where else ''}]"


def _indent(text: str, width: int = 4) -> list[str]:
    pad = " " * width
    return [pad + line if line else "" for line in text.splitlines()] or [pad]
