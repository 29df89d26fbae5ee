"""Google Gemini `generateContent` / `streamGenerateContent`, direct and on Vertex AI.

The model lives in the URL, not the body. Bodies may spell fields in camelCase or
in the protobuf snake_case (the Google SDKs and Vertex send either), so every
lookup goes through `_get`. A stream is SSE with `alt=sse`, else one JSON array
whose elements arrive one by one; either way each event is one response object.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal
from urllib.parse import quote, unquote

from addon.protocols.base import (
    StreamEvent,
    StreamState,
    TextSlot,
    WireProtocol,
    add_tool_delta,
    append_parts,
    as_int,
    as_list,
    as_str,
    build_request,
    error_summary,
    fill_slots,
    lenient_parts,
    load_event,
    merge_raw_usage,
    replace_event_data,
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
    Role,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)

# The module, not the name: addon.translate.codec imports this package in turn.
from addon.translate import codec as _codec

_MODEL_IN_PATH = re.compile(r"/models/(?P<model>[^/:?]+):(?P<method>[A-Za-z]+)")
_ROLES: dict[str | None, Role] = {"model": "assistant", "function": "tool", "tool": "tool"}
_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Part kinds `_part` reads before code parts: one of these is never reply text.
_NON_TEXT_PARTS = ("functionCall", "functionResponse", "inlineData", "fileData")
_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")


def _get(obj: Any, camel: str) -> Any:
    """obj[camelCase], falling back to obj[snake_case]; None if obj is not an object."""
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    return obj.get(_CAMEL_HUMP.sub("_", camel).lower())


def _get_dict(obj: Any, camel: str) -> dict[str, Any]:
    value = _get(obj, camel)
    return value if isinstance(value, dict) else {}


def gemini_usage(raw: Any) -> Usage | None:
    prompt = as_int(_get(raw, "promptTokenCount"))
    candidates = as_int(_get(raw, "candidatesTokenCount"))
    thoughts = as_int(_get(raw, "thoughtsTokenCount"))
    if prompt is None and candidates is None and thoughts is None:
        return None
    # Tool-use prompt tokens (e.g. search results fed back) are billed as input
    # but counted apart from the prompt; cached tokens are counted inside it.
    tool_prompt = as_int(_get(raw, "toolUsePromptTokenCount")) or 0
    return Usage(
        input_tokens=(prompt or 0) + tool_prompt,
        output_tokens=(candidates or 0) + (thoughts or 0),
        cache_read_tokens=as_int(_get(raw, "cachedContentTokenCount")) or 0,
        reasoning_tokens=thoughts or 0,
    )


# Gemini's finishReason in canonical words; a candidate that called a function
# stops with STOP, which `gemini_finish` turns into tool_calls.
_FINISH: dict[str, Finish] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"),
        "content_filter",
    ),
}


def gemini_finish(reason: str | None, *, called: bool) -> Finish | None:
    if reason is None:
        return None
    finish = _FINISH.get(reason, "error")
    return "tool_calls" if finish == "stop" and called else finish


def _signed(part: dict[str, Any]) -> tuple[str | None, str | None]:
    """(signature, issuer) of a part's thoughtSignature, unsealed when llmgate sealed it."""
    raw = as_str(_get(part, "thoughtSignature"))
    if not raw:
        return None, None
    issuer, signature = _codec.unseal(raw, "gemini")
    return signature, issuer


def _media(data: dict[str, Any], *, inline: bool) -> ImagePart | None:
    mime = as_str(_get(data, "mimeType"))
    if not (mime or "").startswith("image/"):
        # Audio, video and documents have no canonical part; skip them.
        return None
    if inline:
        return ImagePart(media_type=mime, has_inline_data=True, data=as_str(_get(data, "data")))
    return ImagePart(media_type=mime, url=as_str(_get(data, "fileUri")))


def _function_response(data: dict[str, Any]) -> ToolResultPart:
    response = _get(data, "response")
    content: list[TextPart | ImagePart] = []
    if response:
        content.append(TextPart(text=json.dumps(response, ensure_ascii=False)))
    content += [
        p for p in _parts(_get(data, "parts"), "functionResponse") if isinstance(p, ImagePart)
    ]
    # By convention a failed call answers {"error": ...} instead of {"output": ...}.
    failed = isinstance(response, dict) and "error" in response
    return ToolResultPart(
        tool_use_id=as_str(_get(data, "id")),
        name=as_str(_get(data, "name")),
        content=content,
        is_error=failed,
    )


def _text_slot(part: dict[str, Any]) -> TextSlot | None:
    """Where a part keeps reply text: its text unless it is a thought, else the code
    the model wrote or what running it printed, which are conversation text too."""
    if isinstance(_get(part, "text"), str):
        return None if _get(part, "thought") is True else (part, "text")
    if any(isinstance(_get(part, key), dict) for key in _NON_TEXT_PARTS):
        return None
    for key, field in (("executableCode", "code"), ("codeExecutionResult", "output")):
        holder = _get_dict(part, key)
        if isinstance(holder.get(field), str) and holder[field]:
            return (holder, field)
    return None


def _part(part: dict[str, Any]) -> ContentPart | None:
    text = _get(part, "text")
    if isinstance(text, str) and _get(part, "thought") is True:
        signature, issuer = _signed(part)
        return ThinkingPart(text=text, signature=signature, issuer=issuer)
    slot = _text_slot(part)
    if slot is not None:
        holder, key = slot
        return TextPart(text=holder[key]) if holder[key] else None
    call = _get(part, "functionCall")
    if isinstance(call, dict):
        signature, issuer = _signed(part)
        return ToolUsePart(
            id=as_str(_get(call, "id")),
            name=as_str(_get(call, "name")) or "",
            arguments=_get(call, "args"),
            signature=signature,
            issuer=issuer,
        )
    response = _get(part, "functionResponse")
    if isinstance(response, dict):
        return _function_response(response)
    for key, inline in (("inlineData", True), ("fileData", False)):
        data = _get(part, key)
        if isinstance(data, dict):
            return _media(data, inline=inline)
    return None


def _parts(parts: Any, where: str, *, keep_signatures: bool = False) -> list[ContentPart]:
    """`keep_signatures`: a signature on a part that has no slot for one (text) becomes an
    empty signed thinking part in front of it, so it can travel back to Gemini."""
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise ProtocolError(f"'{where}.parts' must be a list")
    out: list[ContentPart] = []
    for part in parts:
        if not isinstance(part, dict):
            raise ProtocolError(f"'{where}.parts' has a part that is not an object")
        converted = _part(part)
        if keep_signatures and isinstance(converted, ThinkingPart):
            last = out[-1] if out else None
            if isinstance(last, ThinkingPart) and not last.signature and last.text:
                # One thought streamed as several parts is one thinking block: its
                # signature (on a later part) covers all of it.
                last.text += converted.text
                if converted.signature:
                    last.signature, last.issuer = converted.signature, converted.issuer
                continue
            if not converted.text:
                if converted.signature:
                    end_thinking(out, converted.signature, converted.issuer)
                continue
        if keep_signatures and not isinstance(converted, ThinkingPart | ToolUsePart):
            signature, issuer = _signed(part)
            if signature:
                end_thinking(out, signature, issuer)
        if converted is not None:
            out.append(converted)
    return out


def end_thinking(parts: list[ContentPart], signature: str, issuer: str | None) -> None:
    """A signature that ends the thinking before it: onto that thinking when it has
    none yet, else an empty thinking part of its own."""
    last = parts[-1] if parts else None
    if isinstance(last, ThinkingPart) and not last.signature:
        last.signature, last.issuer = signature, issuer
    else:
        parts.append(ThinkingPart(signature=signature, issuer=issuer))


def _pair_tool_ids(parts: list[ContentPart], position: int, previous: list[ContentPart]) -> None:
    """Give id-less calls `call_<position>_<k>` and id-less responses the id of the earliest
    unanswered call of the same name in the previous model turn (`previous`)."""
    calls = [p for p in parts if isinstance(p, ToolUsePart)]
    for k, call in enumerate(calls):
        if call.id is None:
            call.id = f"call_{position}_{k}"
    answered = {p.tool_use_id for p in parts if isinstance(p, ToolResultPart) and p.tool_use_id}
    pending = [p for p in previous if isinstance(p, ToolUsePart) and p.id not in answered]
    for result in parts:
        if not isinstance(result, ToolResultPart):
            continue
        if result.tool_use_id is None:
            match = next((c for c in pending if c.name == result.name), None)
            if match is not None:
                result.tool_use_id = match.id
                pending.remove(match)
        elif result.name is None:
            match = next((c for c in previous if c.id == result.tool_use_id), None)
            result.name = match.name if match is not None else None


def _system(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if not isinstance(value, dict):
        raise ProtocolError("'systemInstruction' must be an object with parts")
    texts = [
        p.text for p in _parts(_get(value, "parts"), "systemInstruction") if isinstance(p, TextPart)
    ]
    return "\n\n".join(texts) if texts else None


def _tools(value: Any) -> list[Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError("'tools' must be a list")
    tools: list[Tool] = []
    for spec in value:
        if not isinstance(spec, dict):
            continue
        for decl in as_list(_get(spec, "functionDeclarations")):
            if not isinstance(decl, dict) or not as_str(_get(decl, "name")):
                continue
            params = _get(decl, "parametersJsonSchema") or _json_schema(_get(decl, "parameters"))
            tools.append(
                Tool(
                    name=_get(decl, "name"),
                    description=as_str(_get(decl, "description")),
                    parameters=params if isinstance(params, dict) else None,
                )
            )
        # Built-in tools (googleSearch, codeExecution, urlContext, ...) by their key.
        tools += [
            Tool(name=key)
            for key in spec
            if key not in ("functionDeclarations", "function_declarations")
        ]
    return tools


def _json_schema(schema: Any) -> Any:
    """`parameters` is an OpenAPI subset whose types are upper case (OBJECT, STRING);
    JSON Schema, which every other protocol takes, wants them lower case."""
    if isinstance(schema, list):
        return [_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out[key] = value.lower()
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties", "not"):
            out[key] = _json_schema(value)
        else:
            out[key] = value
    return out


def _tool_choice(value: Any) -> ToolChoice | None:
    config = _get_dict(value, "functionCallingConfig")
    mode = as_str(_get(config, "mode"))
    if mode is None:
        return None
    mode = mode.upper()
    if mode == "NONE":
        return ToolChoice(mode="none")
    if mode == "ANY":
        names = [n for n in as_list(_get(config, "allowedFunctionNames")) if isinstance(n, str)]
        # Several allowed names have no canonical form: any tool may then be called.
        if len(names) == 1:
            return ToolChoice(mode="tool", name=names[0])
        return ToolChoice(mode="required")
    return ToolChoice(mode="auto")  # AUTO, VALIDATED and anything newer


def _response_format(config: dict[str, Any]) -> ResponseFormat | None:
    if as_str(_get(config, "responseMimeType")) != "application/json":
        return None
    schema = _get(config, "responseJsonSchema") or _json_schema(_get(config, "responseSchema"))
    if isinstance(schema, dict):
        return ResponseFormat(type="json_schema", schema=schema)
    return ResponseFormat(type="json_object")


Effort = Literal["minimal", "low", "medium", "high"]
_LEVELS: dict[str, Effort] = {e: e for e in ("minimal", "low", "medium", "high")}


def _reasoning(config: dict[str, Any]) -> Reasoning | None:
    thinking = _get(config, "thinkingConfig")
    if not isinstance(thinking, dict):
        return None
    budget = as_int(_get(thinking, "thinkingBudget"))
    # Gemini 3 takes a level instead of a budget.
    level = _LEVELS.get((as_str(_get(thinking, "thinkingLevel")) or "").lower())
    if budget == 0:
        return Reasoning(enabled=False)
    if budget is not None and budget > 0:
        return Reasoning(budget_tokens=budget, effort=level or budget_effort(budget))
    # -1 is "dynamic": thinking on, the model picks the budget.
    return Reasoning(effort=level)


def budget_effort(budget: int) -> Effort:
    if budget <= 1024:
        return "minimal"
    if budget <= 4096:
        return "low"
    return "medium" if budget <= 16384 else "high"


def _number(config: dict[str, Any], camel: str, *, integer: bool = False) -> Any:
    value = _get(config, camel)
    if value is None:
        return None
    valid = as_int(value) is not None if integer else isinstance(value, int | float)
    if not valid or isinstance(value, bool):
        raise ProtocolError(f"'generationConfig.{camel}' must be a number")
    return value


def _candidate(body: dict[str, Any]) -> dict[str, Any]:
    """Candidate 0: with candidateCount > 1 the others are alternatives."""
    for candidate in as_list(_get(body, "candidates")):
        if isinstance(candidate, dict) and candidate.get("index", 0) == 0:
            return candidate
    return {}


class Gemini(WireProtocol):
    name = "gemini"
    provider = "gemini"
    credential_header = "x-goog-api-key"

    # --- requests -----------------------------------------------------------------
    def model_from_path(self, path: str) -> str | None:
        match = _MODEL_IN_PATH.search(path.split("?", 1)[0])
        return unquote(match["model"]) if match else None

    def path_with_model(self, path: str, model: str) -> str:
        bare, sep, query = path.partition("?")
        match = _MODEL_IN_PATH.search(bare)
        if match is None:
            return path
        # Callers name models "gemini-x" or "models/gemini-x"; the path wants the former.
        segment = quote(model.removeprefix("models/"), safe="-._~@")
        start, end = match.span("model")
        return bare[:start] + segment + bare[end:] + sep + query

    def is_stream_request(self, body: Any, path: str) -> bool:
        match = _MODEL_IN_PATH.search(path.split("?", 1)[0])
        return match is not None and match["method"] == "streamGenerateContent"

    # The model is swapped in the path; a `model` key would be an unknown field.
    model_in_body = False

    def max_tokens_edits(self, body: dict[str, Any], limit: int) -> list[tuple[str, Any]]:
        # The cap is nested, so only the generation config object is re-serialised.
        if "generation_config" in body and "generationConfig" not in body:
            config = dict(body["generation_config"] or {})
            config["max_output_tokens"] = limit
            return [("generation_config", config)]
        config = dict(body.get("generationConfig") or {})
        config["maxOutputTokens"] = limit
        return [("generationConfig", config)]

    def parse_request(self, body: Any, path: str) -> CanonicalRequest:
        body = require_object(body)
        model = self.model_from_path(path)
        if not model:
            raise ProtocolError(
                "the URL path must name the model: .../models/{model}:generateContent"
            )
        contents = _get(body, "contents")
        if not isinstance(contents, list):
            raise ProtocolError("'contents' is required and must be a list")
        messages: list[Message] = []
        previous: list[ContentPart] = []
        for i, content in enumerate(contents):
            where = f"contents[{i}]"
            if not isinstance(content, dict):
                raise ProtocolError(f"'{where}' must be an object")
            role = _ROLES.get(as_str(content.get("role")), "user")
            parts = _parts(_get(content, "parts"), where, keep_signatures=True)
            _pair_tool_ids(parts, i, previous)
            if role == "assistant":
                previous = parts
            append_parts(messages, role, parts)
        config = _get(body, "generationConfig")
        if config is not None and not isinstance(config, dict):
            raise ProtocolError("'generationConfig' must be an object")
        config = config or {}
        labels = _get(body, "labels")
        return build_request(
            protocol=self.name,
            model=model,
            system=_system(_get(body, "systemInstruction")),
            messages=messages,
            tools=_tools(_get(body, "tools")),
            tool_choice=_tool_choice(_get(body, "toolConfig")),
            response_format=_response_format(config),
            reasoning=_reasoning(config),
            max_tokens=_number(config, "maxOutputTokens", integer=True),
            temperature=_number(config, "temperature"),
            top_p=_number(config, "topP"),
            stop=stop_list(_get(config, "stopSequences"), "generationConfig.stopSequences"),
            stream=self.is_stream_request(body, path),
            metadata=labels if isinstance(labels, dict) else {},
        )

    # --- responses ----------------------------------------------------------------
    def read_usage(self, body: Any) -> Usage | None:
        return gemini_usage(_get(body, "usageMetadata")) if isinstance(body, dict) else None

    def parse_response(self, body: Any) -> CanonicalResponse:
        body = require_object(body, "response body")
        candidate = _candidate(body)
        content = _get_dict(candidate, "content")
        parts = lenient_parts(_parts, _get(content, "parts"), "content")
        called = any(isinstance(p, ToolUsePart) for p in parts)
        reason = as_str(_get(candidate, "finishReason"))
        blocked = as_str(_get(_get_dict(body, "promptFeedback"), "blockReason"))
        return CanonicalResponse(
            id=as_str(_get(body, "responseId")),
            model=as_str(_get(body, "modelVersion")),
            content=parts,
            stop_reason=reason or blocked,
            finish=gemini_finish(reason, called=called) or ("content_filter" if blocked else None),
            usage=gemini_usage(_get(body, "usageMetadata")),
        )

    def feed_event(self, state: StreamState, event: StreamEvent) -> bool:
        data = load_event(event)
        # Be forgiving if a whole JSON-array stream arrives as one event.
        chunks = data if isinstance(data, list) else [data]
        carried = False
        for chunk in chunks:
            if isinstance(chunk, dict):
                carried = self._feed_chunk(state, chunk) or carried
        return carried

    @staticmethod
    def _feed_chunk(state: StreamState, chunk: dict[str, Any]) -> bool:
        if chunk.get("error"):
            state.error = error_summary(chunk)
            return False
        state.model = as_str(_get(chunk, "modelVersion")) or state.model
        raw_usage = _get(chunk, "usageMetadata")
        if isinstance(raw_usage, dict):
            # Cumulative counts; a later chunk may omit a field an earlier one had.
            state.usage = gemini_usage(merge_raw_usage(state, raw_usage)) or state.usage
        blocked = as_str(_get(_get_dict(chunk, "promptFeedback"), "blockReason"))
        candidate = _candidate(chunk)
        state.stop_reason = as_str(_get(candidate, "finishReason")) or blocked or state.stop_reason
        carried = False
        for part in as_list(_get(_get_dict(candidate, "content"), "parts")):
            converted = _part(part) if isinstance(part, dict) else None
            if isinstance(converted, ThinkingPart) and converted.text:
                state.thinking.append(converted.text)
            elif isinstance(converted, TextPart):
                state.text.append(converted.text)
            elif isinstance(converted, ToolUsePart):
                # Gemini streams each function call whole, never in pieces.
                key = converted.id or str(len(state.tool_calls))
                args = json.dumps(converted.arguments or {}, ensure_ascii=False)
                add_tool_delta(
                    state,
                    key,
                    call_id=converted.id,
                    name=converted.name,
                    arguments=args,
                    complete=True,
                )
            else:
                continue
            carried = True
        return carried

    # --- errors -------------------------------------------------------------------
    def stream_text(self, event: StreamEvent) -> str | None:
        return slots_text(_event_slots(load_event(event)))

    def with_stream_text(self, event: StreamEvent, text: str) -> StreamEvent:
        data = load_event(event)
        fill_slots(_event_slots(data), text)
        return replace_event_data(event, data)

    def error_event(self, status: int, kind: str, message: str) -> StreamEvent:
        return StreamEvent(data=json.dumps(self.error_body(status, kind, message)))

    def error_body(self, status: int, kind: str, message: str) -> dict[str, Any]:
        code = _STATUSES.get(status)
        if code is None:
            code = "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"
        return {
            "error": {
                "code": status,
                "message": message,
                "status": code,
                # google.rpc.ErrorInfo is where Google APIs put a machine-readable reason.
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": kind,
                        "domain": "llmgate",
                    }
                ],
            }
        }


def _event_slots(data: Any) -> list[TextSlot]:
    """The reply text slots of an event, read as `feed_event` reads it: every chunk of
    it, candidate 0 of each."""
    slots: list[TextSlot] = []
    for chunk in data if isinstance(data, list) else [data]:
        if not isinstance(chunk, dict):
            continue
        for part in as_list(_get(_get_dict(_candidate(chunk), "content"), "parts")):
            slot = _text_slot(part) if isinstance(part, dict) else None
            if slot is not None:
                slots.append(slot)
    return slots
