"""OpenAI Chat Completions as a translation provider and caller.

As a provider it also serves OpenAI-compatible servers (vLLM, Ollama, Groq,
OpenRouter), so the request keeps to fields they share. Chat has no slot for
reasoning signatures or for thinking in the input: thinking sent to a Chat
provider is dropped, and a Chat caller receives thinking as `reasoning_content`
without its signature.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ImagePart,
    Message,
    Reasoning,
    TextPart,
    ThinkingPart,
    Tool,
    ToolResultPart,
    ToolUsePart,
)
from addon.protocols.codec import (
    CallerView,
    Codec,
    EncodedRequest,
    StreamDecoder,
    StreamEncoder,
    log_dropped,
)
from addon.protocols.openai_chat.pieces import (
    FINISH_TO_CHAT,
    PROTOCOL,
    chat_usage_body,
    error_fields,
)
from addon.protocols.openai_chat.protocol import OpenAIChat
from addon.protocols.openai_chat.stream_codec import ChatStreamDecoder, ChatStreamEncoder

_STATUS_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class OpenAIChatCodec(Codec):
    protocol = PROTOCOL

    # --- provider side -----------------------------------------------------------
    def encode_request(
        self, request: CanonicalRequest, model: str, stream: bool, provider: str
    ) -> EncodedRequest:
        dropped: list[str] = []
        body: dict[str, Any] = {"model": model, "messages": _messages(request, dropped)}
        if request.tools:
            body["tools"] = [_tool(tool) for tool in request.tools]
            # Both are refused by OpenAI when no tools are declared.
            if request.tool_choice is not None:
                choice = request.tool_choice
                body["tool_choice"] = (
                    {"type": "function", "function": {"name": choice.name}}
                    if choice.mode == "tool"
                    else choice.mode
                )
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.stop:
            body["stop"] = request.stop
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            # OpenAI's reasoning models refuse max_tokens; compatible servers only know it.
            key = "max_completion_tokens" if provider == "openai" else "max_tokens"
            body[key] = request.max_tokens
        if request.response_format is not None:
            body["response_format"] = _response_format(request)
        effort = _effort(request.reasoning)
        if effort is not None:
            body["reasoning_effort"] = effort
        elif request.reasoning is not None and not request.reasoning.enabled:
            # "none" is refused by non-reasoning models and older reasoning ones alike.
            dropped.append("disabled reasoning")
        if request.metadata:
            dropped.append("metadata")
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        for what in dropped:
            log_dropped(what, PROTOCOL)
        return EncodedRequest(
            path="/v1/chat/completions",
            body=body,
            headers={"content-type": "application/json"},
            dropped=dropped,
        )

    def decode_reply(self, body: Any) -> CanonicalResponse:
        reply = OpenAIChat().parse_response(body)
        for part in reply.content:
            if isinstance(part, ThinkingPart):
                part.issuer = PROTOCOL
        return reply

    def stream_decoder(self) -> StreamDecoder:
        return ChatStreamDecoder()

    def decode_error(self, status: int, body: Any) -> tuple[str, str]:
        if isinstance(body, bytes | str):
            try:
                body = json.loads(body)
            except (ValueError, RecursionError):
                text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
                return _status_kind(status), text.strip()[:300]
        _, kind, message = error_fields(body)
        return (kind if kind != "error" else _status_kind(status)), message

    # --- caller side -------------------------------------------------------------
    def encode_reply(self, reply: CanonicalResponse, caller: CallerView) -> dict[str, Any]:
        texts = [p.text for p in reply.content if isinstance(p, TextPart)]
        thinking = [p.text for p in reply.content if isinstance(p, ThinkingPart) and not p.redacted]
        calls = [p for p in reply.content if isinstance(p, ToolUsePart)]
        if any(isinstance(p, ThinkingPart) and (p.signature or p.redacted) for p in reply.content):
            log_dropped("a reasoning signature", PROTOCOL)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
            "refusal": None,
        }
        if thinking:
            message["reasoning_content"] = "".join(thinking)
        if calls:
            message["tool_calls"] = [_tool_call(call, f"call_{k}") for k, call in enumerate(calls)]
        if reply.finish is not None:
            finish = FINISH_TO_CHAT[reply.finish]
        else:
            finish = "tool_calls" if calls else "stop"
        out: dict[str, Any] = {
            "id": _chat_id(reply.id),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or caller.request.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
        }
        if reply.usage is not None:
            out["usage"] = chat_usage_body(reply.usage)
        return out

    def stream_encoder(self, caller: CallerView) -> StreamEncoder:
        return ChatStreamEncoder(caller)


# --- request encoding ------------------------------------------------------------------


def _messages(request: CanonicalRequest, dropped: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    # Chat tool messages hold text only, and must follow their assistant turn with
    # nothing in between: a result's images wait for the end of the turn's results.
    held_images: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        results = [p for p in message.content if isinstance(p, ToolResultPart)]
        rest = [p for p in message.content if not isinstance(p, ToolResultPart)]
        for result in results:
            out.append(_tool_message(result, held_images))
        if rest or not results:
            _flush(out, held_images)
        if message.role == "assistant":
            out.append(_assistant_message(message, i, dropped))
        elif message.role == "system":
            text = "".join(p.text for p in rest if isinstance(p, TextPart))
            out.append({"role": "system", "content": text})
        elif rest or not results:
            out.append({"role": "user", "content": _user_content(rest, dropped)})
    _flush(out, held_images)
    return out


def _flush(out: list[dict[str, Any]], held_images: list[dict[str, Any]]) -> None:
    if held_images:
        out.append({"role": "user", "content": list(held_images)})
        held_images.clear()


def _tool_message(result: ToolResultPart, held_images: list[dict[str, Any]]) -> dict[str, Any]:
    text = "\n".join(p.text for p in result.content if isinstance(p, TextPart))
    images = [_image(p) for p in result.content if isinstance(p, ImagePart)]
    if images:
        # Say which call the images answer, since they no longer sit beside its result.
        held_images.append({"type": "text", "text": f"Images from tool call {result.tool_use_id}:"})
        held_images.extend(images)
    # Chat has no error flag on a tool result; the model reads it from the text.
    return {
        "role": "tool",
        "tool_call_id": result.tool_use_id or "",
        "content": f"Error: {text}" if result.is_error else text,
    }


def _assistant_message(message: Message, i: int, dropped: list[str]) -> dict[str, Any]:
    texts = [p.text for p in message.content if isinstance(p, TextPart)]
    calls = [p for p in message.content if isinstance(p, ToolUsePart)]
    if any(isinstance(p, ThinkingPart) for p in message.content):
        _note(dropped, "thinking in the conversation history")
    if any(isinstance(p, ImagePart) for p in message.content):
        _note(dropped, "images in an assistant message")
    if any(isinstance(p, ToolUsePart) and p.signature for p in message.content):
        _note(dropped, "a tool call signature")
    # Content may be null only beside tool calls.
    content = "".join(texts) if texts or not calls else None
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        out["tool_calls"] = [_tool_call(call, f"call_{i}_{k}") for k, call in enumerate(calls)]
    return out


def _user_content(parts: list[Any], dropped: list[str]) -> str | list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            if part.url or part.data:
                content.append(_image(part))
            else:
                _note(dropped, "an image without its bytes")
        elif isinstance(part, ThinkingPart):
            _note(dropped, "thinking in the conversation history")
        elif isinstance(part, ToolUsePart):
            _note(dropped, "a tool call outside an assistant message")
    if all(item["type"] == "text" for item in content):
        return "".join(item["text"] for item in content)
    return content


def _image(part: ImagePart) -> dict[str, Any]:
    url = part.url
    if part.data:
        url = f"data:{part.media_type or 'image/png'};base64,{part.data}"
    return {"type": "image_url", "image_url": {"url": url or ""}}


def _tool_call(call: ToolUsePart, fallback_id: str) -> dict[str, Any]:
    args = call.arguments
    arguments = args if isinstance(args, str) else json.dumps({} if args is None else args)
    return {
        "id": call.id or fallback_id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def _tool(tool: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        fn["description"] = tool.description
    if tool.parameters is not None:
        fn["parameters"] = tool.parameters
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _response_format(request: CanonicalRequest) -> dict[str, Any]:
    fmt = request.response_format
    assert fmt is not None
    if fmt.type == "json_object" or fmt.schema_ is None:
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def _effort(reasoning: Reasoning | None) -> str | None:
    if reasoning is None or not reasoning.enabled:
        return None
    if reasoning.effort is not None:
        return reasoning.effort
    budget = reasoning.budget_tokens
    if budget is None:
        return None
    if budget <= 1024:
        return "minimal"
    if budget <= 4096:
        return "low"
    return "medium" if budget <= 16384 else "high"


def _note(dropped: list[str], what: str) -> None:
    if what not in dropped:
        dropped.append(what)


def _chat_id(value: str | None) -> str:
    if value and value.startswith("chatcmpl-"):
        return value
    return f"chatcmpl-{value or uuid.uuid4().hex}"


def _status_kind(status: int) -> str:
    return "server_error" if status >= 500 else _STATUS_KINDS.get(status, "invalid_request_error")
