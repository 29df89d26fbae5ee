"""Gemini `generateContent` as a translation codec: provider and caller side.

The wire format is camelCase JSON. Tool calls may have no ids; thinking comes as
parts flagged `thought`, and Gemini's thought signatures ride on the part that
follows the thinking (a function call, or text).
"""

from __future__ import annotations

import logging
import mimetypes
from functools import partial
from typing import Any

from addon.protocols.base import as_str, lenient_parts
from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ContentPart,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
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
    seal,
)
from addon.protocols.gemini.content import _parts
from addon.protocols.gemini.fields import _get
from addon.protocols.gemini.pieces import (
    PROTOCOL,
    args_object,
    call_part,
    finish_reason,
    thought_part,
    usage_metadata,
)
from addon.protocols.gemini.protocol import Gemini
from addon.protocols.gemini.reply import _candidate, gemini_finish, gemini_usage
from addon.protocols.gemini.stream_codec import GeminiStreamDecoder, GeminiStreamEncoder

log = logging.getLogger("llmgate")
# Gemini 3 refuses a function call in the current turn that lacks a thought
# signature. For calls it did not make itself (another provider's history), the
# Gemini API documents dummy values that skip that check:
# https://ai.google.dev/gemini-api/docs/thought-signatures (FAQ: "context_engineering_is_
# the_way_to_go" or "skip_thought_signature_validator").
FOREIGN_SIGNATURE = "skip_thought_signature_validator"
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
_ROLE = {"user": "user", "tool": "user", "assistant": "model"}


def caller_signature(signature: str | None, issuer: str | None) -> str | None:
    """A signature as a Gemini caller holds it: Gemini's own as is, a foreign one sealed."""
    if not signature:
        return None
    if issuer == PROTOCOL:
        return signature
    return seal(issuer or "unknown", signature)


def image_part(image: ImagePart) -> dict[str, Any] | None:
    if image.data:
        mime = image.media_type or "image/png"
        return {"inlineData": {"mimeType": mime, "data": image.data}}
    if image.url:
        mime = image.media_type or mimetypes.guess_type(image.url)[0] or "image/jpeg"
        return {"fileData": {"fileUri": image.url, "mimeType": mime}}
    log_dropped("an image whose bytes were not kept", PROTOCOL)
    return None


# --- request ----------------------------------------------------------------------------


def _tool_names(messages: list[Message]) -> dict[str, str]:
    return {
        part.id: part.name
        for message in messages
        for part in message.content
        if isinstance(part, ToolUsePart) and part.id
    }


def _result_parts(result: ToolResultPart, names: dict[str, str]) -> list[dict[str, Any]]:
    text = "".join(p.text for p in result.content if isinstance(p, TextPart))
    name = result.name or names.get(result.tool_use_id or "")
    if not name:
        log_dropped("a tool result whose call is unknown (named 'unknown')", PROTOCOL)
        name = "unknown"
    response: dict[str, Any] = {"functionResponse": {"name": name}}
    if result.tool_use_id:
        response["functionResponse"]["id"] = result.tool_use_id
    response["functionResponse"]["response"] = {"error" if result.is_error else "output": text}
    # Images beside the response, in the same user turn: every Gemini model reads
    # those, while images inside functionResponse.parts need Gemini 3.
    images = [image_part(p) for p in result.content if isinstance(p, ImagePart)]
    return [response, *(p for p in images if p is not None)]


def _model_parts(parts: list[ContentPart]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # Gemini puts the signature of its thinking on the part after it (text or a
    # call), so a thinking part's signature waits for the next part; `holder` is the
    # thought part to fall back on when that part has a signature of its own.
    carried: str | None = None
    holder: dict[str, Any] | None = None
    for part in parts:
        if isinstance(part, ThinkingPart):
            if part.issuer != PROTOCOL:
                log_dropped(f"thinking issued by {part.issuer or 'an unknown provider'}", PROTOCOL)
                continue
            if part.text:
                out.append(holder := thought_part(part.text, None))
            if part.signature:
                carried = part.signature
            continue
        if isinstance(part, TextPart):
            if not part.text:
                continue
            wire: dict[str, Any] = {"text": part.text}
        elif isinstance(part, ToolUsePart):
            signature = part.signature if part.issuer == PROTOCOL else FOREIGN_SIGNATURE
            args = args_object(part.arguments, "a tool call")
            wire = call_part(part.id, part.name, args, signature)
        elif isinstance(part, ImagePart):
            image = image_part(part)
            if image is None:
                continue
            wire = image
        else:
            log_dropped(f"a {part.type} part in a model turn", PROTOCOL)
            continue
        if carried:
            target = holder if "thoughtSignature" in wire else wire
            if target is not None:
                target["thoughtSignature"] = carried
            carried = None
        holder = None
        out.append(wire)
    if carried and holder is not None:
        holder["thoughtSignature"] = carried
    elif carried:
        out.append({"text": "", "thoughtSignature": carried})
    return out


def _user_parts(parts: list[ContentPart], names: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            if part.text:
                out.append({"text": part.text})
        elif isinstance(part, ImagePart):
            image = image_part(part)
            if image is not None:
                out.append(image)
        elif isinstance(part, ToolResultPart):
            out.extend(_result_parts(part, names))
        else:
            log_dropped(f"a {part.type} part in a user turn", PROTOCOL)
    return out


def _contents(request: CanonicalRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """(contents, system texts found among the messages)."""
    names = _tool_names(request.messages)
    contents: list[dict[str, Any]] = []
    system: list[str] = []
    for message in request.messages:
        if message.role == "system":
            system += [p.text for p in message.content if isinstance(p, TextPart)]
            continue
        role = _ROLE[message.role]
        if role == "model":
            parts = _model_parts(message.content)
        else:
            parts = _user_parts(message.content, names)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents, system


def _generation_config(request: CanonicalRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = list(request.stop)
    fmt = request.response_format
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema_:
            # responseJsonSchema takes full JSON Schema; responseSchema only an OpenAPI subset.
            config["responseJsonSchema"] = fmt.schema_
    reasoning = request.reasoning
    if reasoning is not None:
        if not reasoning.enabled:
            config["thinkingConfig"] = {"thinkingBudget": 0}
        else:
            thinking: dict[str, Any] = {"includeThoughts": True}
            budget = reasoning.budget_tokens or EFFORT_BUDGET.get(reasoning.effort or "")
            if budget:
                thinking["thinkingBudget"] = budget
            config["thinkingConfig"] = thinking
    return config


def _tool_config(request: CanonicalRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice is None:
        return None
    mode = {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}[choice.mode]
    config: dict[str, Any] = {"mode": mode}
    if choice.mode == "tool" and choice.name:
        config["allowedFunctionNames"] = [choice.name]
    return {"functionCallingConfig": config}


def encode_request(request: CanonicalRequest, model: str, stream: bool) -> EncodedRequest:
    contents, extra_system = _contents(request)
    body: dict[str, Any] = {"contents": contents}
    system = [s for s in (request.system, *extra_system) if s]
    if system:
        body["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    if request.tools:
        declarations = []
        for tool in request.tools:
            decl: dict[str, Any] = {"name": tool.name}
            if tool.description:
                decl["description"] = tool.description
            if tool.parameters:
                # Full JSON Schema, unlike `parameters` (an OpenAPI subset).
                decl["parametersJsonSchema"] = tool.parameters
            declarations.append(decl)
        body["tools"] = [{"functionDeclarations": declarations}]
    tool_config = _tool_config(request)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    dropped = []
    if request.parallel_tool_calls is False:
        dropped.append("parallel_tool_calls=false")
    if request.metadata:
        dropped.append("metadata")
    for what in dropped:
        log_dropped(what, PROTOCOL)
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    name = model.removeprefix("models/")
    return EncodedRequest(
        path=f"/v1beta/models/{name}:{method}",
        body=body,
        headers={"content-type": "application/json"},
        dropped=dropped,
    )


# --- replies ----------------------------------------------------------------------------


def decode_parts(parts: Any) -> list[ContentPart]:
    """A candidate's parts with every signature kept and issued by Gemini; id-less
    calls become `call_<k>`."""
    out = lenient_parts(partial(_parts, keep_signatures=True), parts, "content")
    calls = 0
    for part in out:
        if isinstance(part, ToolUsePart):
            part.id = part.id or f"call_{calls}"
            part.arguments = {} if part.arguments is None else part.arguments
            calls += 1
        if isinstance(part, ToolUsePart | ThinkingPart):
            part.issuer = PROTOCOL
    return out


def decode_reply(body: Any) -> CanonicalResponse:
    body = body if isinstance(body, dict) else {}
    candidate = _candidate(body)
    parts = decode_parts(_get(_get(candidate, "content"), "parts"))
    reason = as_str(_get(candidate, "finishReason"))
    blocked = as_str(_get(_get(body, "promptFeedback"), "blockReason"))
    called = any(isinstance(p, ToolUsePart) for p in parts)
    return CanonicalResponse(
        id=as_str(_get(body, "responseId")),
        model=as_str(_get(body, "modelVersion")),
        content=parts,
        stop_reason=reason or blocked,
        finish=gemini_finish(reason, called=called) or ("content_filter" if blocked else None),
        usage=gemini_usage(_get(body, "usageMetadata")),
    )


def decode_error(body: Any) -> tuple[str, str]:
    if isinstance(body, list) and body:
        body = body[0]
    error = _get(body, "error")
    if isinstance(error, dict):
        kind = as_str(error.get("status")) or str(error.get("code") or "")
        return kind, as_str(error.get("message")) or ""
    if isinstance(body, str):
        return "", body
    return "", ""


def reply_parts(content: list[ContentPart]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            out.append({"text": part.text})
        elif isinstance(part, ThinkingPart):
            out.append(thought_part(part.text, caller_signature(part.signature, part.issuer)))
        elif isinstance(part, ToolUsePart):
            args = args_object(part.arguments, "a tool call")
            signature = caller_signature(part.signature, part.issuer)
            out.append(call_part(part.id, part.name, args, signature))
        elif isinstance(part, ImagePart):
            image = image_part(part)
            if image is not None:
                out.append(image)
        else:
            log_dropped(f"a {part.type} part in a reply", PROTOCOL)
    return out


def encode_reply(reply: CanonicalResponse) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": reply_parts(reply.content)},
        "index": 0,
    }
    candidate["finishReason"] = finish_reason(reply.finish) or "STOP"
    body: dict[str, Any] = {"candidates": [candidate]}
    if reply.usage is not None:
        body["usageMetadata"] = usage_metadata(reply.usage)
    if reply.model:
        body["modelVersion"] = reply.model
    if reply.id:
        body["responseId"] = reply.id
    return body


class GeminiCodec(Codec):
    protocol = PROTOCOL

    def encode_request(
        self, request: CanonicalRequest, model: str, stream: bool, provider: str
    ) -> EncodedRequest:
        return encode_request(request, model, stream)

    def decode_reply(self, body: Any) -> CanonicalResponse:
        return decode_reply(body)

    def stream_decoder(self) -> StreamDecoder:
        return GeminiStreamDecoder()

    def decode_error(self, status: int, body: Any) -> tuple[str, str]:
        return decode_error(body)

    def encode_reply(self, reply: CanonicalResponse, caller: CallerView) -> dict[str, Any]:
        return encode_reply(reply)

    def stream_encoder(self, caller: CallerView) -> StreamEncoder:
        return GeminiStreamEncoder(Gemini(), upstream=getattr(caller, "upstream", None))
