"""Chat requests: the messages and settings in canonical form, and the edits
llmgate makes."""

from __future__ import annotations

from typing import Any

from addon.protocols import jsonedit
from addon.protocols.base import (
    WireProtocol,
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
    ImagePart,
    Message,
    ProtocolError,
    Reasoning,
    ResponseFormat,
    TextPart,
    Tool,
    ToolChoice,
    ToolResultPart,
)
from addon.protocols.openai_chat.content import _assistant_parts, _content_parts

_SYSTEM_ROLES = ("system", "developer")
_TOOL_ROLES = ("tool", "function")

_EFFORTS = ("minimal", "low", "medium", "high")
# Efforts newer than the canonical scale are its top.
_EFFORT_ALIASES = {"xhigh": "high", "max": "high"}


def _text_only(content: Any, where: str) -> list[str]:
    return [p.text for p in _content_parts(content, where) if isinstance(p, TextPart)]


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


class OpenAIChatRequests(WireProtocol):
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
