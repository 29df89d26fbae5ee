"""Responses requests: the input items and settings in canonical form."""

from __future__ import annotations

from typing import Any

from addon.protocols.base import (
    WireProtocol,
    append_parts,
    as_str,
    build_request,
    dig,
    optional_dict,
    optional_int,
    optional_list,
    optional_number,
    require_model,
    require_object,
)
from addon.protocols.canonical import (
    CanonicalRequest,
    ContentPart,
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
)
from addon.protocols.openai_responses.content import (
    _TOOL_CALLS,
    _content_parts,
    _reasoning_part,
    _tool_use,
)

_TOOL_OUTPUTS = ("function_call_output", "custom_tool_call_output")


def _call_signature(part: ThinkingPart) -> bool:
    """A Gemini thought signature that rode on a function call.

    Responses has no slot for it on a function_call item, so the reply encoder
    sends it as a textless reasoning item right before the call; it goes back
    onto that call here.
    """
    return part.issuer == "gemini" and not part.text and bool(part.signature)


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


def as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


class OpenAIResponsesRequests(WireProtocol):
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
