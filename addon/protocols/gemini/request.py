"""Gemini requests: the model in the URL path, the body in canonical form, and the
edits llmgate makes to both."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import quote, unquote

from addon.protocols.base import (
    WireProtocol,
    append_parts,
    as_int,
    as_list,
    as_str,
    build_request,
    require_object,
    stop_list,
)
from addon.protocols.canonical import (
    CanonicalRequest,
    ContentPart,
    Message,
    ProtocolError,
    Reasoning,
    ResponseFormat,
    Role,
    TextPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
)
from addon.protocols.gemini.content import _parts
from addon.protocols.gemini.fields import _get, _get_dict

_MODEL_IN_PATH = re.compile(r"/models/(?P<model>[^/:?]+):(?P<method>[A-Za-z]+)")
_ROLES: dict[str | None, Role] = {"model": "assistant", "function": "tool", "tool": "tool"}


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


class GeminiRequests(WireProtocol):
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
