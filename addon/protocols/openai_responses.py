"""OpenAI Responses (`POST /v1/responses`).

The input is a list of typed items rather than chat messages, and a stream is a
sequence of named events that ends with `response.completed` (or `.incomplete`
/ `.failed`) carrying the whole response, usage included.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from addon.protocols.base import (
    StreamEvent,
    StreamState,
    TextSlot,
    WireProtocol,
    add_tool_delta,
    append_parts,
    as_list,
    as_str,
    build_request,
    dig,
    error_summary,
    fill_slots,
    json_arguments,
    lenient_parts,
    load_event,
    optional_dict,
    optional_int,
    optional_list,
    optional_number,
    replace_event_data,
    require_model,
    require_object,
    slots_text,
)
from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ContentPart,
    Finish,
    ImagePart,
    Message,
    ProtocolError,
    Reasoning,
    ResponseFormat,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from addon.protocols.openai_chat import openai_error_body, openai_usage

# A module, not the name: addon.translate.codec imports addon.protocols, so the
# name does not exist yet when the import starts from that side.
from addon.translate import codec as seals

NAME = "openai_responses"

_TOOL_CALLS = ("function_call", "custom_tool_call")
_TOOL_OUTPUTS = ("function_call_output", "custom_tool_call_output")
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


def _content_parts(content: Any, where: str) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)] if content else []
    if not isinstance(content, list):
        raise ProtocolError(f"'{where}.content' must be a string or a list of parts")
    parts: list[ContentPart] = []
    for item in content:
        if not isinstance(item, dict):
            raise ProtocolError(f"'{where}.content' has a part that is not an object")
        kind = item.get("type")
        if kind == "input_image":
            parts.append(_image(item))
        elif kind == "refusal" and isinstance(item.get("refusal"), str):
            parts.append(TextPart(text=item["refusal"]))
        elif isinstance(item.get("text"), str):
            # input_text, output_text, and any newer text-bearing part.
            parts.append(TextPart(text=item["text"]))
    return parts


def _image(item: dict[str, Any]) -> ImagePart:
    """An input_image: a URL, inline bytes in a data: URL, or an uploaded file's id.

    A file id names bytes only OpenAI holds, so it becomes an image with nothing
    another provider could fetch.
    """
    url = item.get("image_url")
    if not isinstance(url, str) or not url.startswith("data:"):
        return ImagePart(url=url if isinstance(url, str) else None)
    header, _, payload = url[5:].partition(",")
    media_type, _, params = header.partition(";")
    if "base64" in params.split(";"):
        data = payload
    else:
        # A percent-encoded data: URL; providers all want base64.
        data = base64.b64encode(unquote_to_bytes(payload)).decode()
    return ImagePart(media_type=media_type or None, has_inline_data=True, data=data)


def _reasoning_text(item: dict[str, Any]) -> str:
    pieces = [
        part["text"]
        for key in ("summary", "content")
        for part in as_list(item.get(key))
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]
    return "\n\n".join(pieces)


def _reasoning_part(item: dict[str, Any]) -> ThinkingPart:
    text = _reasoning_text(item)
    sealed = as_str(item.get("encrypted_content"))
    issuer, signature = seals.unseal(sealed, NAME) if sealed else (None, None)
    return ThinkingPart(
        text=text,
        # Reasoning that only came back encrypted is there but unreadable.
        redacted=not text and bool(sealed),
        signature=signature,
        issuer=issuer,
        item_id=as_str(item.get("id")),
    )


def _call_signature(part: ThinkingPart) -> bool:
    """A Gemini thought signature that rode on a function call.

    Responses has no slot for it on a function_call item, so the reply encoder
    sends it as a textless reasoning item right before the call; it goes back
    onto that call here.
    """
    return part.issuer == "gemini" and not part.text and bool(part.signature)


def _tool_use(item: dict[str, Any]) -> ToolUsePart:
    raw = item.get("arguments", item.get("input"))
    return ToolUsePart(
        id=as_str(item.get("call_id")) or as_str(item.get("id")),
        name=as_str(item.get("name")) or "",
        arguments=json_arguments(raw),
    )


def _tool(spec: Any) -> Tool | None:
    """A function tool; built-in tools (web_search, file_search, mcp, custom, ...) run on
    OpenAI's side or take free text, so no other provider can be given them: they are
    listed by `untranslatable` instead."""
    if not isinstance(spec, dict) or spec.get("type", "function") != "function":
        return None
    name = as_str(spec.get("name"))
    if not name:
        return None
    params = spec.get("parameters")
    strict = spec.get("strict")
    return Tool(
        name=name,
        description=as_str(spec.get("description")),
        parameters=params if isinstance(params, dict) else None,
        strict=strict if isinstance(strict, bool) else None,
    )


def _tool_choice(raw: Any) -> ToolChoice | None:
    if raw in ("auto", "none", "required"):
        return ToolChoice(mode=raw)
    if not isinstance(raw, dict):
        return None
    kind = raw.get("type")
    if kind == "function" and as_str(raw.get("name")):
        return ToolChoice(mode="tool", name=raw["name"])
    if kind == "allowed_tools" and raw.get("mode") in ("auto", "required"):
        # The allowed subset narrows the tools; the mode is all that carries.
        return ToolChoice(mode=raw["mode"])
    return None  # a built-in tool's choice: see `untranslatable`


def _response_format(text: Any) -> ResponseFormat | None:
    fmt = dig(text, "format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.get("type") != "json_schema":
        return None
    schema, strict = fmt.get("schema"), fmt.get("strict")
    return ResponseFormat(
        type="json_schema",
        name=as_str(fmt.get("name")),
        schema=schema if isinstance(schema, dict) else None,
        strict=strict if isinstance(strict, bool) else None,
    )


def _reasoning(raw: Any) -> Reasoning | None:
    if not isinstance(raw, dict):
        return None
    effort = raw.get("effort")
    if effort == "none":
        return Reasoning(enabled=False)
    if effort in ("minimal", "low", "medium", "high"):
        return Reasoning(effort=effort)
    if effort == "xhigh":
        return Reasoning(effort="high")
    # Asking for a summary asks for reasoning, at the model's own effort.
    return Reasoning() if raw.get("summary") else None


def _input_messages(items: list[Any], system: list[str]) -> list[Message]:
    messages: list[Message] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"'{where}' must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                system.extend(
                    p.text
                    for p in _content_parts(item.get("content"), where)
                    if isinstance(p, TextPart)
                )
                continue
            role = "assistant" if role == "assistant" else "user"
            append_parts(messages, role, _content_parts(item.get("content"), where))
        elif kind in _TOOL_CALLS:
            call = _tool_use(item)
            held = _last_part(messages)
            if kind == "function_call" and isinstance(held, ThinkingPart) and _call_signature(held):
                messages[-1].content.pop()
                call.signature, call.issuer = held.signature, held.issuer
            append_parts(messages, "assistant", [call])
        elif kind in _TOOL_OUTPUTS:
            output = item.get("output")
            content = [
                p for p in _content_parts(output, where) if isinstance(p, TextPart | ImagePart)
            ]
            result = ToolResultPart(tool_use_id=as_str(item.get("call_id")), content=content)
            append_parts(messages, "tool", [result])
        elif kind == "reasoning":
            append_parts(messages, "assistant", [_reasoning_part(item)])
        # item_reference, built-in tool calls and newer item types carry no prompt text.
    return messages


def _last_part(messages: list[Message]) -> ContentPart | None:
    if messages and messages[-1].role == "assistant" and messages[-1].content:
        return messages[-1].content[-1]
    return None


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


def as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


class OpenAIResponses(WireProtocol):
    name = NAME
    provider = "openai"
    credential_header = "authorization"

    def max_tokens_edits(self, body: dict[str, Any], limit: int) -> list[tuple[str, Any]]:
        return [("max_output_tokens", limit)]

    # --- requests -----------------------------------------------------------------
    def parse_request(self, body: Any, path: str) -> CanonicalRequest:
        body = require_object(body)
        model = require_model(body)
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolError("'instructions' must be a string")
        system = [instructions] if instructions else []
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            messages = [Message(role="user", content=[TextPart(text=raw_input)])]
        elif isinstance(raw_input, list):
            messages = _input_messages(raw_input, system)
        elif raw_input is None:
            # Legal: the conversation may live server-side (previous_response_id, prompt).
            messages = []
        else:
            raise ProtocolError("'input' must be a string or a list of items")
        return build_request(
            protocol=self.name,
            model=model,
            system="\n\n".join(system) if system else None,
            messages=messages,
            tools=[t for t in map(_tool, optional_list(body, "tools")) if t],
            tool_choice=_tool_choice(body.get("tool_choice")),
            parallel_tool_calls=as_bool(body.get("parallel_tool_calls")),
            response_format=_response_format(body.get("text")),
            reasoning=_reasoning(body.get("reasoning")),
            max_tokens=optional_int(body, "max_output_tokens"),
            temperature=optional_number(body, "temperature"),
            top_p=optional_number(body, "top_p"),
            stream=body.get("stream") is True,
            metadata=optional_dict(body, "metadata"),
        )

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
