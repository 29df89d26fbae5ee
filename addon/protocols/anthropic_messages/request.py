"""Anthropic requests: the messages and settings in canonical form."""

from __future__ import annotations

from typing import Any, Literal

from addon.protocols.anthropic_messages.content import _blocks
from addon.protocols.base import (
    WireProtocol,
    as_int,
    as_str,
    build_request,
    dig,
    optional_dict,
    optional_int,
    optional_list,
    optional_number,
    require_list,
    require_model,
    require_object,
    stop_list,
)
from addon.protocols.canonical import (
    CanonicalRequest,
    Message,
    ProtocolError,
    Reasoning,
    ResponseFormat,
    TextPart,
    Tool,
    ToolChoice,
)

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


def effort_of(budget: int) -> Effort:
    if budget <= 1024:
        return "minimal"
    if budget <= 4096:
        return "low"
    return "medium" if budget <= 16384 else "high"


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


class AnthropicMessagesRequests(WireProtocol):
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
