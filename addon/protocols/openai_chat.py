"""OpenAI Chat Completions (`POST .../chat/completions`).

Also spoken by OpenAI-compatible vendors (OpenRouter, Groq, vLLM, ...), so the
reader accepts their common extensions: `reasoning` / `reasoning_content` deltas
and an `event: error` in the middle of a 200 stream.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from addon.protocols import jsonedit
from addon.protocols.base import (
    StreamEvent,
    StreamState,
    TextSlot,
    WireProtocol,
    add_tool_delta,
    as_int,
    as_list,
    as_str,
    build_request,
    dig,
    error_summary,
    fill_slots,
    image_from_url,
    json_arguments,
    lenient_parts,
    load_event,
    optional_dict,
    optional_int,
    optional_list,
    optional_number,
    replace_event_data,
    require_list,
    require_model,
    require_object,
    slots_text,
    stop_list,
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

_SYSTEM_ROLES = ("system", "developer")
_TOOL_ROLES = ("tool", "function")
# Vendors disagree on the name of the reasoning field; all of them are thinking.
_REASONING_KEYS = ("reasoning_content", "reasoning")

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

_EFFORTS = ("minimal", "low", "medium", "high")
# Efforts newer than the canonical scale are its top.
_EFFORT_ALIASES = {"xhigh": "high", "max": "high"}

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


def _content_parts(content: Any, where: str) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)] if content else []
    if not isinstance(content, list):
        raise ProtocolError(f"'{where}.content' must be a string or a list of parts")
    parts: list[ContentPart] = []
    for item in content:
        if isinstance(item, str):
            parts.append(TextPart(text=item))
            continue
        if not isinstance(item, dict):
            raise ProtocolError(f"'{where}.content' has a part that is not an object")
        kind = item.get("type")
        if kind == "image_url":
            image = item.get("image_url")
            parts.append(_image(image.get("url") if isinstance(image, dict) else image))
        elif kind == "refusal" and isinstance(item.get("refusal"), str):
            parts.append(TextPart(text=item["refusal"]))
        elif isinstance(item.get("text"), str):
            # "text" and any newer text-bearing part type.
            parts.append(TextPart(text=item["text"]))
        # Audio and file parts carry no text worth keeping and are skipped.
    return parts


def _image(url: Any) -> ImagePart:
    """An image part, keeping a data: URL's bytes (as base64) for translation."""
    part = image_from_url(url)
    if not (isinstance(url, str) and url.startswith("data:")):
        return part
    header, _, payload = url[5:].partition(",")
    if header.endswith(";base64"):
        part.data = payload.strip()
    else:
        # A plain data: URL is percent-encoded bytes; canonical data is base64.
        part.data = base64.b64encode(unquote_to_bytes(payload)).decode()
    return part


def _text_only(content: Any, where: str) -> list[str]:
    return [p.text for p in _content_parts(content, where) if isinstance(p, TextPart)]


def _tool_calls(message: dict[str, Any]) -> list[ContentPart]:
    parts: list[ContentPart] = []
    for call in as_list(message.get("tool_calls")):
        if not isinstance(call, dict):
            continue
        specs = (call.get("function"), call.get("custom"))
        fn = next((spec for spec in specs if isinstance(spec, dict)), {})
        raw_args = fn.get("arguments", fn.get("input"))
        parts.append(
            ToolUsePart(
                id=as_str(call.get("id")),
                name=as_str(fn.get("name")) or "",
                arguments=json_arguments(raw_args),
            )
        )
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        parts.append(
            ToolUsePart(
                name=as_str(legacy.get("name")) or "",
                arguments=json_arguments(legacy.get("arguments")),
            )
        )
    return parts


def _reasoning(message: dict[str, Any]) -> list[ContentPart]:
    for key in _REASONING_KEYS:
        value = message.get(key)
        if isinstance(value, str) and value:
            return [ThinkingPart(text=value)]
    return []


def _assistant_parts(message: dict[str, Any]) -> list[ContentPart]:
    parts = _reasoning(message) + _content_parts(message.get("content"), "assistant message")
    if isinstance(message.get("refusal"), str):
        parts.append(TextPart(text=message["refusal"]))
    return parts + _tool_calls(message)


def _tool(spec: Any) -> Tool | None:
    if not isinstance(spec, dict):
        return None
    # {"type": "function", "function": {...}}, {"type": "custom", "custom": {...}},
    # or a legacy `functions` entry that is the declaration itself.
    inner = spec.get(as_str(spec.get("type")) or "function")
    decl = inner if isinstance(inner, dict) else spec
    name = as_str(decl.get("name")) or as_str(spec.get("type"))
    if not name:
        return None
    params = decl.get("parameters")
    strict = decl.get("strict")
    return Tool(
        name=name,
        description=as_str(decl.get("description")),
        parameters=params if isinstance(params, dict) else None,
        strict=strict if isinstance(strict, bool) else None,
    )


def _tool_choice(value: Any) -> ToolChoice | None:
    """`tool_choice`, or the legacy `function_call`; a shape we do not know is left to
    the provider to judge, not refused here."""
    if isinstance(value, str):
        return ToolChoice(mode=value) if value in ("auto", "none", "required") else None
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind == "allowed_tools":
        # A subset of tools the model may pick from: the canonical form keeps the mode.
        mode = dig(value, "allowed_tools", "mode")
        return ToolChoice(mode=mode) if mode in ("auto", "required") else None
    # {"type": "function", "function": {"name"}}, {"type": "custom", "custom": {...}},
    # or the legacy function_call {"name"}.
    inner = value.get(kind) if isinstance(kind, str) else None
    name = as_str(dig(inner, "name")) or as_str(value.get("name"))
    return ToolChoice(mode="tool", name=name) if name else None


def _response_format(value: Any) -> ResponseFormat | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind != "json_schema":
        return None  # "text" is the default
    spec = value.get("json_schema") if isinstance(value.get("json_schema"), dict) else {}
    schema = spec.get("schema")
    strict = spec.get("strict")
    return ResponseFormat(
        type="json_schema",
        name=as_str(spec.get("name")),
        schema=schema if isinstance(schema, dict) else None,
        strict=strict if isinstance(strict, bool) else None,
    )


def _reasoning_effort(value: Any) -> Reasoning | None:
    if value == "none":
        return Reasoning(enabled=False)
    effort = _EFFORT_ALIASES.get(value, value) if isinstance(value, str) else None
    return Reasoning(effort=effort) if effort in _EFFORTS else None


class OpenAIChat(WireProtocol):
    name = "openai_chat"
    provider = "openai"
    credential_header = "authorization"

    # --- requests -----------------------------------------------------------------
    def parse_request(self, body: Any, path: str) -> CanonicalRequest:
        body = require_object(body)
        model = require_model(body)
        system: list[str] = []
        messages: list[Message] = []
        for i, message in enumerate(require_list(body, "messages")):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise ProtocolError(f"'{where}' must be an object")
            role = message.get("role")
            if not isinstance(role, str):
                raise ProtocolError(f"'{where}.role' is required and must be a string")
            content = message.get("content")
            if role in _SYSTEM_ROLES:
                system.extend(_text_only(content, where))
            elif role in _TOOL_ROLES:
                result = ToolResultPart(
                    tool_use_id=as_str(message.get("tool_call_id")),
                    name=as_str(message.get("name")),
                    content=[
                        p
                        for p in _content_parts(content, where)
                        if isinstance(p, TextPart | ImagePart)
                    ],
                )
                messages.append(Message(role="tool", content=[result]))
            elif role == "assistant":
                messages.append(Message(role="assistant", content=_assistant_parts(message)))
            else:
                # "user", and any role a vendor invents: its text is still prompt text.
                messages.append(Message(role="user", content=_content_parts(content, where)))
        tools = [t for t in map(_tool, optional_list(body, "tools")) if t]
        tools += [t for t in map(_tool, optional_list(body, "functions")) if t]
        max_tokens = optional_int(body, "max_completion_tokens")
        parallel = body.get("parallel_tool_calls")
        return build_request(
            protocol=self.name,
            model=model,
            system="\n\n".join(system) if system else None,
            messages=messages,
            tools=tools,
            tool_choice=_tool_choice(body.get("tool_choice", body.get("function_call"))),
            parallel_tool_calls=parallel if isinstance(parallel, bool) else None,
            response_format=_response_format(body.get("response_format")),
            reasoning=_reasoning_effort(body.get("reasoning_effort")),
            max_tokens=max_tokens if max_tokens is not None else optional_int(body, "max_tokens"),
            temperature=optional_number(body, "temperature"),
            top_p=optional_number(body, "top_p"),
            stop=stop_list(body.get("stop"), "stop"),
            stream=body.get("stream") is True,
            metadata=optional_dict(body, "metadata"),
        )

    def max_tokens_edits(self, body: dict[str, Any], limit: int) -> list[tuple[str, Any]]:
        # `max_tokens` is deprecated and refused by reasoning models; cap whichever
        # field the caller used, and the current one when they used neither.
        fields = [f for f in ("max_completion_tokens", "max_tokens") if f in body]
        return [(f, limit) for f in fields or ["max_completion_tokens"]]

    def edit_request(
        self, raw: bytes, body: dict[str, Any], *, model: str | None, max_tokens: int | None = None
    ) -> tuple[bytes, bool]:
        """Also ask for the final usage chunk, which OpenAI only streams on request."""
        edited, _ = super().edit_request(raw, body, model=model, max_tokens=max_tokens)
        if body.get("stream") is not True:
            return edited, False
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return edited, False
        # Keep whatever else the caller put in stream_options.
        wanted = dict(options) if isinstance(options, dict) else {}
        wanted["include_usage"] = True
        return jsonedit.set_top_level(edited, "stream_options", wanted), True

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
