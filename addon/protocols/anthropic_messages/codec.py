"""Anthropic Messages as a provider (requests out, replies in) and as a caller.

Anthropic is the strictest of the formats about conversation shape: roles
alternate, the first turn is the user's, tool results live in a user turn and
come before anything else in it, and text blocks may not be empty. The encoder
reshapes whatever the caller sent to fit rather than let Anthropic refuse it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from addon.protocols.anthropic_messages.content import NAME
from addon.protocols.anthropic_messages.pieces import (
    STOP_REASON,
    message_id,
    thinking_signature,
    tool_id,
    usage_fields,
)
from addon.protocols.anthropic_messages.reply import _ERROR_TYPES, anthropic_usage, finish_of
from addon.protocols.anthropic_messages.stream_codec import (
    AnthropicStreamDecoder,
    AnthropicStreamEncoder,
)
from addon.protocols.base import as_list, as_str
from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ContentPart,
    ImagePart,
    Message,
    Reasoning,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from addon.protocols.codec import (
    CallerView,
    Codec,
    EncodedRequest,
    StreamDecoder,
    StreamEncoder,
    log_dropped,
)

log = logging.getLogger("llmgate")

DEFAULT_MAX_TOKENS = 4096
_MIN_BUDGET = 1024
_EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
# Anthropic refuses a conversation that opens with the assistant; this stands in
# for the user turn the caller did not send.
OPENING_TEXT = "…"


class _Request:
    """One canonical request being encoded; collects what it had to leave out."""

    def __init__(self, request: CanonicalRequest) -> None:
        self.request = request
        self.dropped: list[str] = []

    def drop(self, what: str) -> None:
        self.dropped.append(what)
        log_dropped(what, NAME)

    # --- content ---------------------------------------------------------------
    def image(self, part: ImagePart) -> dict[str, Any] | None:
        if part.data and part.media_type:
            source = {"type": "base64", "media_type": part.media_type, "data": part.data}
        elif part.url:
            source = {"type": "url", "url": part.url}
        else:
            self.drop("an image without its bytes or URL")
            return None
        return {"type": "image", "source": source}

    def block(self, part: ContentPart, fallback_id: str) -> dict[str, Any] | None:
        if isinstance(part, TextPart):
            # Anthropic refuses empty text blocks.
            return {"type": "text", "text": part.text} if part.text else None
        if isinstance(part, ImagePart):
            return self.image(part)
        if isinstance(part, ToolUsePart):
            if part.signature:
                self.drop(f"a tool call signature issued by {part.issuer}")
            return {
                "type": "tool_use",
                "id": tool_id(part.id, fallback_id),
                "name": part.name,
                "input": object_input(part.arguments, self.dropped),
            }
        if isinstance(part, ToolResultPart):
            return self.tool_result(part, fallback_id)
        return self.thinking(part)

    def tool_result(self, part: ToolResultPart, fallback_id: str) -> dict[str, Any]:
        content = [b for b in (self.block(p, fallback_id) for p in part.content) if b]
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": tool_id(part.tool_use_id, fallback_id),
        }
        if content:
            block["content"] = content
        if part.is_error:
            block["is_error"] = True
        return block

    def thinking(self, part: ThinkingPart) -> dict[str, Any] | None:
        # Anthropic verifies every thinking block it is sent back, so only its own pass.
        if part.issuer != NAME or not part.signature:
            self.drop(f"a thinking block from {part.issuer or 'an unsigned source'}")
            return None
        if part.redacted:
            return {"type": "redacted_thinking", "data": part.signature}
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}

    def messages(self) -> tuple[list[dict[str, Any]], list[str]]:
        turns: list[dict[str, Any]] = []
        system: list[str] = []
        for m, message in enumerate(self.request.messages):
            if message.role == "system":
                # Anthropic has one system prompt, before the conversation.
                system.extend(p.text for p in message.content if isinstance(p, TextPart))
                continue
            blocks = self.turn_blocks(message, m)
            if not blocks:
                continue
            role = "assistant" if message.role == "assistant" else "user"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        for turn in turns:
            if turn["role"] == "user":
                # Tool results must open the user turn that answers the calls.
                turn["content"].sort(key=lambda b: b["type"] != "tool_result")
        if not turns or turns[0]["role"] != "user":
            log.info("llmgate translation: conversation opened with a user turn for %s", NAME)
            turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_TEXT}]})
        last = turns[-1]["content"][-1]
        if turns[-1]["role"] == "assistant" and last["type"] == "text":
            # A prefilled final assistant turn may not end in whitespace.
            last["text"] = last["text"].rstrip() or OPENING_TEXT
        return turns, system

    def turn_blocks(self, message: Message, m: int) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        for k, part in enumerate(message.content):
            block = self.block(part, f"call_{m}_{k}")
            if block is not None:
                blocks.append(block)
        return blocks

    # --- generation settings ----------------------------------------------------
    def tools(self, body: dict[str, Any]) -> None:
        request = self.request
        if not request.tools:
            if request.tool_choice and request.tool_choice.mode != "none":
                self.drop("a tool choice without tools")
            return
        tools = []
        for tool in request.tools:
            spec: dict[str, Any] = {"name": tool.name}
            if tool.description:
                spec["description"] = tool.description
            spec["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
            if tool.strict:
                spec["strict"] = True
            tools.append(spec)
        body["tools"] = tools
        choice = request.tool_choice
        mode = choice.mode if choice else "auto"
        out: dict[str, Any] = {"type": {"required": "any"}.get(mode, mode)}
        if mode == "tool":
            out["name"] = choice.name if choice else None
        if request.parallel_tool_calls is False and mode != "none":
            out["disable_parallel_tool_use"] = True
        if choice or len(out) > 1:
            body["tool_choice"] = out

    def thinking_budget(self, body: dict[str, Any], reasoning: Reasoning) -> None:
        if not reasoning.enabled:
            body["thinking"] = {"type": "disabled"}
            return
        budget = reasoning.budget_tokens or _EFFORT_BUDGET[reasoning.effort or "medium"]
        budget = max(budget, _MIN_BUDGET)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if body["max_tokens"] <= budget:
            # The budget is part of max_tokens; keep the room the caller asked for the answer.
            body["max_tokens"] = budget + (self.request.max_tokens or DEFAULT_MAX_TOKENS)
            log.info("llmgate translation: max_tokens raised to fit the thinking budget")
        for key in ("temperature", "top_p"):
            if key in body:
                del body[key]
                self.drop(f"{key} (Anthropic refuses it with thinking enabled)")

    def sampling(self, body: dict[str, Any]) -> None:
        request = self.request
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)
            if request.temperature > 1:
                log.info("llmgate translation: temperature clamped to 1 for %s", NAME)
        if request.top_p is not None:
            if "temperature" in body:
                # Current Claude models refuse temperature and top_p together.
                self.drop("top_p next to temperature")
            else:
                body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)

    def output_format(self, body: dict[str, Any]) -> None:
        fmt = self.request.response_format
        if fmt is None:
            return
        if fmt.type == "json_schema" and fmt.schema_:
            body["output_config"] = {"format": {"type": "json_schema", "schema": fmt.schema_}}
        else:
            self.drop("JSON mode without a schema")

    def encode(self, model: str, stream: bool) -> EncodedRequest:
        request = self.request
        messages, moved_system = self.messages()
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": messages,
        }
        system = [s for s in ([request.system] if request.system else []) + moved_system if s]
        if system:
            body["system"] = "\n\n".join(system)
        self.tools(body)
        self.sampling(body)
        if request.reasoning is not None:
            conflict = _thinking_conflict(body)
            if request.reasoning.enabled and conflict:
                self.drop(f"reasoning (Anthropic refuses thinking {conflict})")
            else:
                self.thinking_budget(body, request.reasoning)
        self.output_format(body)
        user_id = request.metadata.get("user_id")
        if isinstance(user_id, str):
            body["metadata"] = {"user_id": user_id}
        if set(request.metadata) - {"user_id"}:
            self.drop("metadata other than user_id")
        if stream:
            body["stream"] = True
        headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
        return EncodedRequest("/v1/messages", body, headers, self.dropped)


def _thinking_conflict(body: dict[str, Any]) -> str | None:
    """Why Anthropic would refuse thinking for this request, if it would.

    A forced tool is the caller's contract (often its structured output), and a
    tool loop begun without thinking (by another provider, or unsigned) cannot gain
    it midway: in both cases thinking gives way rather than the call failing.
    """
    if body.get("tool_choice", {}).get("type") in ("any", "tool"):
        return "when a tool call is forced"
    assistant = [t for t in body["messages"] if t["role"] == "assistant"]
    last = assistant[-1]["content"] if assistant else []
    if any(b["type"] == "tool_use" for b in last) and last[0]["type"] not in (
        "thinking",
        "redacted_thinking",
    ):
        return "in a tool loop whose last call came without thinking"
    return None


def _reply_block(block: Any) -> ContentPart | None:
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "text":
        return TextPart(text=as_str(block.get("text")) or "")
    if kind == "thinking":
        text = as_str(block.get("thinking")) or ""
        return ThinkingPart(text=text, signature=as_str(block.get("signature")), issuer=NAME)
    if kind == "redacted_thinking":
        return ThinkingPart(redacted=True, signature=as_str(block.get("data")), issuer=NAME)
    if kind == "tool_use":
        name = as_str(block.get("name")) or ""
        return ToolUsePart(id=as_str(block.get("id")), name=name, arguments=block.get("input"))
    # Server tools ran at Anthropic; the caller has neither the tool nor a way to
    # send its result back, so only their effect on the text reaches it.
    log_dropped(f"a {kind} reply block", "the caller")
    return None


def _reply_content(reply: CanonicalResponse, upstream: str | None) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in reply.content:
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ThinkingPart):
            issuer = part.issuer or upstream
            signature = thinking_signature(issuer, part.signature)
            if part.redacted:
                blocks.append({"type": "redacted_thinking", "data": signature})
            else:
                blocks.append({"type": "thinking", "thinking": part.text, "signature": signature})
        elif isinstance(part, ToolUsePart):
            if part.signature:
                issuer = part.issuer or upstream or "gemini"
                # The signature travels in an empty thinking block before the call;
                # the request decoder puts it back on the call.
                sealed = thinking_signature(issuer, part.signature)
                blocks.append({"type": "thinking", "thinking": "", "signature": sealed})
            blocks.append(
                {
                    "type": "tool_use",
                    "id": tool_id(part.id, f"toolu_{len(blocks)}"),
                    "name": part.name,
                    "input": object_input(part.arguments, []),
                }
            )
    return blocks


def object_input(arguments: Any, dropped: list[str]) -> dict[str, Any]:
    """Anthropic's tool input is an object; other JSON is wrapped, never lost."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError, RecursionError):
            arguments = json.loads(arguments)
    if isinstance(arguments, dict):
        return arguments
    what = "tool arguments that are not a JSON object (wrapped as {'value': ...})"
    dropped.append(what)
    log_dropped(what, NAME)
    return {"value": arguments}


class AnthropicCodec(Codec):
    protocol = NAME

    def encode_request(
        self, request: CanonicalRequest, model: str, stream: bool, provider: str
    ) -> EncodedRequest:
        return _Request(request).encode(model, stream)

    def decode_reply(self, body: Any) -> CanonicalResponse:
        body = body if isinstance(body, dict) else {}
        parts = [p for p in map(_reply_block, as_list(body.get("content"))) if p is not None]
        stop_reason = as_str(body.get("stop_reason"))
        return CanonicalResponse(
            id=as_str(body.get("id")),
            model=as_str(body.get("model")),
            content=parts,
            stop_reason=stop_reason,
            finish=finish_of(stop_reason),
            usage=anthropic_usage(body.get("usage")),
        )

    def stream_decoder(self) -> StreamDecoder:
        return AnthropicStreamDecoder()

    def decode_error(self, status: int, body: Any) -> tuple[str, str]:
        if isinstance(body, str | bytes):
            try:
                body = json.loads(body)
            except (ValueError, RecursionError):
                body = {"error": {"message": body if isinstance(body, str) else ""}}
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        default = _ERROR_TYPES.get(status) or (
            "api_error" if status >= 500 else "invalid_request_error"
        )
        return as_str(error.get("type")) or default, as_str(error.get("message")) or ""

    def encode_reply(self, reply: CanonicalResponse, caller: CallerView) -> dict[str, Any]:
        content = _reply_content(reply, caller.upstream or None)
        finish = reply.finish or (
            "tool_calls" if any(b["type"] == "tool_use" for b in content) else "stop"
        )
        return {
            "id": message_id(reply.id),
            "type": "message",
            "role": "assistant",
            "model": reply.model or caller.request.model,
            "content": content,
            "stop_reason": STOP_REASON[finish],
            "stop_sequence": None,
            "usage": usage_fields(reply.usage or Usage()),
        }

    def stream_encoder(self, caller: CallerView) -> StreamEncoder:
        return AnthropicStreamEncoder(caller)
