"""Anthropic Messages (`POST /v1/messages`).

Usage needs care here: Anthropic's `input_tokens` counts only uncached prompt
tokens, and with server-side compaction the top-level counts leave out the
compaction pass, which is reported in `usage.iterations` and billed all the same.
"""

from __future__ import annotations

import json
from typing import Any, Literal

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
    lenient_parts,
    load_event,
    merge_raw_usage,
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
from addon.protocols.signatures import unseal

NAME = "anthropic_messages"

# Client tools, server tools (web search, tool search, code execution) and MCP
# tools are all calls the model made; only who runs them differs.
_TOOL_USE = ("tool_use", "server_tool_use", "mcp_tool_use")
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
Mode = Literal["auto", "none", "required", "tool"]
_CHOICE_MODES: dict[str, Mode] = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}
Effort = Literal["minimal", "low", "medium", "high"]
_EFFORTS: dict[str, Effort] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}


def finish_of(stop_reason: str | None) -> Finish | None:
    return FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else None


def effort_of(budget: int) -> Effort:
    if budget <= 1024:
        return "minimal"
    if budget <= 4096:
        return "low"
    return "medium" if budget <= 16384 else "high"


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


def _image(block: dict[str, Any]) -> ImagePart:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64":
        return ImagePart(
            media_type=as_str(source.get("media_type")),
            has_inline_data=True,
            data=as_str(source.get("data")),
        )
    return image_from_url(source.get("url"), as_str(source.get("media_type")))


def _document_text(block: dict[str, Any]) -> list[ContentPart]:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return [TextPart(text=source["data"])]
    if source.get("type") == "content":
        texts = _blocks(source.get("content"), "document.source.content")
        return [p for p in texts if isinstance(p, TextPart)]
    # PDFs and file references carry no text we can read here.
    return []


def _tool_result(block: dict[str, Any], where: str) -> ToolResultPart:
    content = [
        p
        for p in _blocks(block.get("content"), f"{where}.content")
        if isinstance(p, TextPart | ImagePart)
    ]
    return ToolResultPart(
        tool_use_id=as_str(block.get("tool_use_id")),
        content=content,
        is_error=block.get("is_error") is True,
    )


def _block(block: dict[str, Any], where: str) -> list[ContentPart]:
    kind = block.get("type")
    if kind == "image":
        return [_image(block)]
    if kind == "document":
        return _document_text(block)
    if kind in _TOOL_USE:
        name = as_str(block.get("name")) or ""
        return [ToolUsePart(id=as_str(block.get("id")), name=name, arguments=block.get("input"))]
    if kind == "tool_result":
        return [_tool_result(block, where)]
    if kind == "thinking":
        issuer, signature = _signature(block.get("signature"))
        text = as_str(block.get("thinking")) or ""
        return [ThinkingPart(text=text, signature=signature, issuer=issuer)]
    if kind == "redacted_thinking":
        issuer, signature = _signature(block.get("data"))
        return [ThinkingPart(redacted=True, signature=signature, issuer=issuer)]
    if kind == "compaction" and isinstance(block.get("content"), str):
        # A summary standing in for earlier turns: prompt text like any other.
        return [TextPart(text=block["content"])]
    if kind == "search_result":
        texts = _blocks(block.get("content"), f"{where}.content")
        return [p for p in texts if isinstance(p, TextPart)]
    if isinstance(block.get("text"), str):
        return [TextPart(text=block["text"])]
    # Server tool results, tool references and newer block types carry no prompt text.
    return []


def _blocks(content: Any, where: str) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)] if content else []
    if not isinstance(content, list):
        raise ProtocolError(f"'{where}' must be a string or a list of blocks")
    parts: list[ContentPart] = []
    for block in content:
        if not isinstance(block, dict):
            raise ProtocolError(f"'{where}' has a block that is not an object")
        new = _block(block, where)
        carrier = _call_signature(parts)
        if new and isinstance(new[0], ToolUsePart) and carrier:
            # A reply encoder put another provider's signature for this call (Gemini's
            # thoughtSignature) in an empty thinking block just before it: back on the call.
            parts.pop()
            new[0].signature, new[0].issuer = carrier.signature, carrier.issuer
        parts.extend(new)
    return parts


def _signature(value: Any) -> tuple[str | None, str | None]:
    if not isinstance(value, str) or not value:
        return None, None
    return unseal(value, NAME)


def _call_signature(parts: list[ContentPart]) -> ThinkingPart | None:
    """The last part, when it is an empty thinking block carrying a foreign signature."""
    last = parts[-1] if parts else None
    if not isinstance(last, ThinkingPart) or last.text or last.redacted or not last.signature:
        return None
    return last if last.issuer not in (None, NAME) else None


def _system(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if not isinstance(value, list):
        raise ProtocolError("'system' must be a string or a list of text blocks")
    texts = [p.text for p in _blocks(value, "system") if isinstance(p, TextPart)]
    return "\n\n".join(texts) if texts else None


def _tool(spec: Any) -> Tool | None:
    if not isinstance(spec, dict):
        return None
    name = as_str(spec.get("name")) or as_str(spec.get("type"))
    if not name:
        return None
    schema = spec.get("input_schema")
    strict = spec.get("strict")
    return Tool(
        name=name,
        description=as_str(spec.get("description")),
        parameters=schema if isinstance(schema, dict) else None,
        strict=strict if isinstance(strict, bool) else None,
    )


def _tool_choice(value: Any) -> tuple[ToolChoice | None, bool | None]:
    """Anthropic's tool_choice also carries the parallel-calls switch."""
    if not isinstance(value, dict):
        return None, None
    mode = _CHOICE_MODES.get(as_str(value.get("type")) or "", "auto")
    name = as_str(value.get("name")) if mode == "tool" else None
    disable = value.get("disable_parallel_tool_use")
    parallel = (not disable) if isinstance(disable, bool) else None
    return ToolChoice(mode=mode, name=name), parallel


def _response_format(body: dict[str, Any]) -> ResponseFormat | None:
    # `output_config.format` is the GA field; `output_format` the earlier beta one.
    fmt = dig(body, "output_config", "format") or body.get("output_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("schema")
    return ResponseFormat(type="json_schema", schema=schema if isinstance(schema, dict) else None)


def _reasoning(body: dict[str, Any]) -> Reasoning | None:
    thinking = body.get("thinking")
    effort = _EFFORTS.get(as_str(dig(body, "output_config", "effort")) or "")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return Reasoning(enabled=False)
    if kind == "enabled":
        budget = as_int(dig(thinking, "budget_tokens"))
        if budget is not None:
            return Reasoning(budget_tokens=budget, effort=effort or effort_of(budget))
    if kind is not None or effort is not None:
        # Adaptive thinking, or an effort level alone: the model sizes its budget.
        return Reasoning(effort=effort)
    return None


class AnthropicMessages(WireProtocol):
    name = "anthropic_messages"
    provider = "anthropic"
    credential_header = "x-api-key"

    # --- requests -----------------------------------------------------------------
    def parse_request(self, body: Any, path: str) -> CanonicalRequest:
        body = require_object(body)
        model = require_model(body)
        messages: list[Message] = []
        tool_choice, parallel = _tool_choice(body.get("tool_choice"))
        for i, message in enumerate(require_list(body, "messages")):
            where = f"messages[{i}].content"
            if not isinstance(message, dict):
                raise ProtocolError(f"'messages[{i}]' must be an object")
            role = "assistant" if message.get("role") == "assistant" else "user"
            messages.append(Message(role=role, content=_blocks(message.get("content"), where)))
        return build_request(
            protocol=self.name,
            model=model,
            system=_system(body.get("system")),
            messages=messages,
            tools=[t for t in map(_tool, optional_list(body, "tools")) if t],
            tool_choice=tool_choice,
            parallel_tool_calls=parallel,
            response_format=_response_format(body),
            reasoning=_reasoning(body),
            max_tokens=optional_int(body, "max_tokens"),
            temperature=optional_number(body, "temperature"),
            top_p=optional_number(body, "top_p"),
            stop=stop_list(body.get("stop_sequences"), "stop_sequences"),
            stream=body.get("stream") is True,
            metadata=optional_dict(body, "metadata"),
        )

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
