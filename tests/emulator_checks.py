"""What the emulator checks in a request before answering it.

``check_request`` says why a request would be rejected by the real provider (a 400), or
returns None. The rules are the providers' own (their API references and the errors
their servers return); each is cited by the reason string it produces, so a test that
sends a malformed translation sees exactly which rule it broke. The checks are strict
where the real API is strict, and silent about what it tolerates (extra keys inside
content parts, unknown tool definitions of newer server tools, ...).

Protocols: ``openai_chat``, ``openai_responses``, ``anthropic_messages``, ``gemini``
(as ``tests.emulator.detect_protocol`` names them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

__all__ = ["ALLOW_EMPTY_CHAT_MESSAGES", "REQUIRE_ANTHROPIC_VERSION", "check_request"]


# Two rules the real APIs enforce, named so that a test can relax them. OpenAI refuses
# ``"messages": []`` ("empty array"). Anthropic needs an ``anthropic-version`` header:
# not required here, because many hostile-input tests send raw requests without it
# (llmgate forwards a caller's headers as they are); a malformed value is refused, and
# the translation tests check that llmgate sets it on what it encodes.
REQUIRE_ANTHROPIC_VERSION = False
ALLOW_EMPTY_CHAT_MESSAGES = False


class _Invalid(Exception):
    """Raised by the checkers with the reason; caught by ``check_request``."""


def _fail(reason: str) -> None:
    raise _Invalid(reason)


def check_request(
    protocol: str, path: str, query: dict[str, Any], headers: dict[str, str], body: Any
) -> str | None:
    """Why this request is invalid for ``protocol`` (None when it is valid).

    ``path`` is the request path without the query string, ``query`` the parsed query
    (``parse_qs``), ``headers`` lower-cased names, ``body`` the parsed JSON body.
    """
    checker = _CHECKERS.get(protocol)
    if checker is None:
        return f"unknown protocol {protocol!r}"
    if not isinstance(body, dict):
        return "the request body is not a JSON object"
    try:
        checker(path, query, {k.lower(): v for k, v in headers.items()}, body)
    except _Invalid as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------- helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        _fail(f"{where} must be a string")
    if not empty and not value:
        _fail(f"{where} must be a non-empty string")
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(f"{where} must be an object")
    return value


def _list(value: Any, where: str, *, empty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        _fail(f"{where} must be a list")
    if not empty and not value:
        _fail(f"{where} must be a non-empty list")
    return value


def _range(body: dict[str, Any], key: str, low: float, high: float, where: str = "") -> None:
    if key in body and body[key] is not None:
        value = body[key]
        if not _is_num(value) or not low <= value <= high:
            _fail(f"{where}{key} must be a number between {low:g} and {high:g}")


_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
_BASE64_LOOSE = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")  # Gemini: URL-safe, padding optional


def _base64(value: Any, where: str, *, loose: bool = False) -> None:
    data = _str(value, where)
    if not (_BASE64_LOOSE if loose else _BASE64).match(data) or (loose and len(data) % 4 == 1):
        _fail(f"{where} is not base64")


def _unknown_keys(body: dict[str, Any], known: frozenset[str], where: str) -> None:
    extra = sorted(set(body) - known)
    if extra:
        _fail(f"{where}unknown field {extra[0]!r}")


# --------------------------------------------------------------------------- Anthropic

_ANTHROPIC_TOP = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "metadata",
        "thinking",
        "output_config",
        "output_format",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "cache_control",  # automatic prompt caching (a top-level breakpoint)
    }
)
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_ANTHROPIC_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
# Blocks the API accepts in a request besides the ones checked in detail: results of
# server tools (web search, code execution, MCP, tool search) replayed in the history.
_ANTHROPIC_SERVER_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
        "search_result",
        "tool_reference",
        "compaction",
    }
)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def _anthropic_source(source: Any, where: str, kinds: frozenset[str]) -> None:
    source = _obj(source, f"{where}.source")
    kind = source.get("type")
    if kind not in kinds:
        _fail(f"{where}.source.type must be one of {sorted(kinds)}")
    if kind == "base64":
        _str(source.get("media_type"), f"{where}.source.media_type")
        _base64(source.get("data"), f"{where}.source.data")
    elif kind == "url":
        _str(source.get("url"), f"{where}.source.url")
    elif kind == "text":
        _str(source.get("data"), f"{where}.source.data", empty=True)
    elif kind == "content":
        if not isinstance(source.get("content"), str | list):
            _fail(f"{where}.source.content must be a string or a list")
    elif kind == "file":
        _str(source.get("file_id"), f"{where}.source.file_id")


def _anthropic_text(block: dict[str, Any], where: str) -> None:
    text = _str(block.get("text"), f"{where}.text", empty=True)
    if not text:
        _fail(f"{where}: text content blocks must be non-empty")


def _anthropic_block(block: Any, where: str, role: str) -> str:
    block = _obj(block, where)
    kind = block.get("type")
    if kind == "text":
        _anthropic_text(block, where)
    elif kind == "image":
        _anthropic_source(block.get("source"), where, frozenset({"base64", "url", "file"}))
        source = block["source"]
        if source.get("type") == "base64" and source.get("media_type") not in _IMAGE_TYPES:
            _fail(f"{where}.source.media_type must be one of {sorted(_IMAGE_TYPES)}")
    elif kind == "document":
        kinds = frozenset({"base64", "url", "text", "content", "file"})
        _anthropic_source(block.get("source"), where, kinds)
    elif kind == "tool_use":
        if role != "assistant":
            _fail(f"{where}: tool_use blocks may only appear in assistant messages")
        if not _TOOL_ID.match(_str(block.get("id"), f"{where}.id")):
            _fail(f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        _str(block.get("name"), f"{where}.name")
        _obj(block.get("input"), f"{where}.input")
    elif kind == "tool_result":
        if role != "user":
            _fail(f"{where}: tool_result blocks may only appear in user messages")
        _str(block.get("tool_use_id"), f"{where}.tool_use_id")
        content = block.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                part_where = f"{where}.content.{j}"
                part = _obj(part, part_where)
                ptype = part.get("type")
                if ptype == "text":
                    _anthropic_text(part, part_where)
                elif ptype in ("image", "document", "search_result", "tool_reference"):
                    _anthropic_block(part, part_where, "user")
                else:
                    _fail(f"{part_where}.type: tool_result content may not hold {ptype!r}")
        elif content is not None and not isinstance(content, str):
            _fail(f"{where}.content must be a string or a list of blocks")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            _fail(f"{where}.is_error must be a boolean")
    elif kind == "thinking":
        if role != "assistant":
            _fail(f"{where}: thinking blocks may only appear in assistant messages")
        _str(block.get("thinking"), f"{where}.thinking", empty=True)
        _str(block.get("signature"), f"{where}.signature", empty=True)
    elif kind == "redacted_thinking":
        if role != "assistant":
            _fail(f"{where}: redacted_thinking blocks may only appear in assistant messages")
        _str(block.get("data"), f"{where}.data")
    elif kind in _ANTHROPIC_SERVER_BLOCKS:
        pass
    else:
        _fail(f"{where}.type: unknown content block type {kind!r}")
    return str(kind)


def _anthropic(path: str, query: dict[str, Any], headers: dict[str, str], body: Any) -> None:
    version = headers.get("anthropic-version")
    if version is None:
        if REQUIRE_ANTHROPIC_VERSION:
            _fail("anthropic-version: header is required")
    elif not re.fullmatch(r"\d{4}-\d{2}-\d{2}", version.strip()):
        _fail(f"anthropic-version: {version!r} is not a valid version")
    _unknown_keys(body, _ANTHROPIC_TOP, "")
    _str(body.get("model"), "model")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        _fail("max_tokens: a positive integer is required")
    if "stream" in body and not isinstance(body["stream"], bool):
        _fail("stream must be a boolean")
    _range(body, "temperature", 0, 1)
    _range(body, "top_p", 0, 1)
    if "top_k" in body and (not _is_int(body["top_k"]) or body["top_k"] < 0):
        _fail("top_k must be a non-negative integer")
    if "stop_sequences" in body:
        stops = _list(body["stop_sequences"], "stop_sequences", empty=True)
        for i, stop in enumerate(stops):
            _str(stop, f"stop_sequences.{i}")

    system = body.get("system")
    if isinstance(system, list):
        for i, block in enumerate(system):
            block = _obj(block, f"system.{i}")
            if block.get("type") != "text":
                _fail(f"system.{i}.type: only text blocks are allowed in system")
            _anthropic_text(block, f"system.{i}")
    elif system is not None and not isinstance(system, str):
        _fail("system must be a string or a list of text blocks")

    tool_names: set[str] = set()
    if "tools" in body:
        for i, tool in enumerate(_list(body["tools"], "tools", empty=True)):
            tool = _obj(tool, f"tools.{i}")
            name = _str(tool.get("name"), f"tools.{i}.name")
            if name in tool_names:
                _fail(f"tools: tool names must be unique ({name!r})")
            tool_names.add(name)
            if tool.get("type") not in (None, "custom"):
                continue  # a server tool (bash_20250124, web_search_20250305, ...)
            if not _ANTHROPIC_TOOL_NAME.match(name):
                _fail(f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            schema = _obj(tool.get("input_schema"), f"tools.{i}.input_schema")
            if schema.get("type") != "object":
                _fail(f"tools.{i}.input_schema.type: Input should be 'object'")
    if "tool_choice" in body:
        choice = _obj(body["tool_choice"], "tool_choice")
        if choice.get("type") not in ("auto", "any", "tool", "none"):
            _fail("tool_choice.type must be one of auto, any, tool, none")
        if choice["type"] == "tool":
            _str(choice.get("name"), "tool_choice.name")
    if "thinking" in body:
        thinking = _obj(body["thinking"], "thinking")
        kind = thinking.get("type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not _is_int(budget) or budget < 1024:
                _fail("thinking.budget_tokens: must be an integer >= 1024")
            if budget >= max_tokens:
                _fail("thinking.budget_tokens: must be less than max_tokens")
        elif kind not in ("disabled", "adaptive"):
            _fail("thinking.type must be one of enabled, disabled, adaptive")

    messages = _list(body.get("messages"), "messages")
    previous_tool_uses: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        message = _obj(message, where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            _fail(f"{where}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            _fail("messages.0.role: the first message must use the user role")
        if i > 0 and role == messages[i - 1].get("role"):
            _fail(f"{where}: roles must alternate between user and assistant")
        _unknown_keys(message, frozenset({"role", "content"}), f"{where}: ")
        content = message.get("content")
        last = i == len(messages) - 1
        tool_uses: list[str] = []
        if isinstance(content, str):
            if not content and not (last and role == "assistant"):
                _fail(
                    f"{where}: all messages must have non-empty content except for the "
                    "optional final assistant message"
                )
            blocks: list[Any] = []
        else:
            blocks = _list(content, f"{where}.content", empty=True)
            if not blocks and not (last and role == "assistant"):
                _fail(
                    f"{where}: all messages must have non-empty content except for the "
                    "optional final assistant message"
                )
        results: list[str] = []
        seen_other = False
        for j, block in enumerate(blocks):
            kind = _anthropic_block(block, f"{where}.content.{j}", role)
            if kind == "tool_use":
                if block["id"] in tool_uses:
                    _fail(f"{where}.content.{j}: tool_use ids must be unique")
                tool_uses.append(block["id"])
            elif kind == "tool_result":
                if seen_other:
                    _fail(
                        f"{where}.content.{j}: tool_result blocks must come first in the "
                        "user message, before any other content"
                    )
                if block["tool_use_id"] not in previous_tool_uses:
                    _fail(
                        f"{where}.content.{j}: unexpected `tool_use_id` found in "
                        "`tool_result` blocks: "
                        f"{block['tool_use_id']}. Each `tool_result` block must have a "
                        "corresponding `tool_use` block in the previous message."
                    )
                results.append(block["tool_use_id"])
            else:
                seen_other = True
        if role == "user" and previous_tool_uses:
            missing = [t for t in previous_tool_uses if t not in results]
            if missing:
                _fail(
                    f"messages.{i - 1}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message."
                )
        previous_tool_uses = tool_uses if role == "assistant" else []


# --------------------------------------------------------------------------- OpenAI Chat

# Chat Completions upstreams (OpenAI, OpenRouter, Groq, ...) each take their own extra
# parameters, so only the fields of the other protocols are refused: OpenAI answers them
# with "Unrecognized request argument supplied", and a translation that leaks them is a bug.
_CHAT_FOREIGN = frozenset(
    {
        "system",
        "input",
        "instructions",
        "contents",
        "systemInstruction",
        "system_instruction",
        "generationConfig",
        "generation_config",
        "stop_sequences",
        "max_output_tokens",
        "anthropic_version",
    }
)
_CHAT_USER_PARTS = frozenset({"text", "image_url", "input_audio", "file"})
_OPENAI_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _chat_parts(content: Any, where: str, allowed: frozenset[str]) -> None:
    for j, part in enumerate(_list(content, where, empty=True)):
        pw = f"{where}[{j}]"
        part = _obj(part, pw)
        kind = part.get("type")
        if kind not in allowed:
            _fail(f"{pw}.type: must be one of {sorted(allowed)}, got {kind!r}")
        if kind in ("text", "refusal"):
            _str(part.get(kind), f"{pw}.{kind}", empty=True)
        elif kind == "image_url":
            image = _obj(part.get("image_url"), f"{pw}.image_url")
            _str(image.get("url"), f"{pw}.image_url.url")
            if image.get("detail", "auto") not in ("auto", "low", "high"):
                _fail(f"{pw}.image_url.detail must be one of auto, low, high")
        elif kind == "input_audio":
            audio = _obj(part.get("input_audio"), f"{pw}.input_audio")
            _base64(audio.get("data"), f"{pw}.input_audio.data")
            if audio.get("format") not in ("wav", "mp3"):
                _fail(f"{pw}.input_audio.format must be 'wav' or 'mp3'")
        elif kind == "file":
            file = _obj(part.get("file"), f"{pw}.file")
            if not any(k in file for k in ("file_data", "file_id")):
                _fail(f"{pw}.file needs file_data or file_id")


def _chat_tool_call(call: Any, where: str) -> str:
    call = _obj(call, where)
    call_id = _str(call.get("id"), f"{where}.id")
    kind = call.get("type")
    if kind == "function":
        function = _obj(call.get("function"), f"{where}.function")
        _str(function.get("name"), f"{where}.function.name")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            _fail(f"{where}.function.arguments must be a string (JSON-encoded arguments)")
        try:
            json.loads(arguments)
        except ValueError:
            _fail(f"{where}.function.arguments is not valid JSON")
    elif kind == "custom":
        custom = _obj(call.get("custom"), f"{where}.custom")
        _str(custom.get("name"), f"{where}.custom.name")
        _str(custom.get("input"), f"{where}.custom.input", empty=True)
    else:
        _fail(f"{where}.type must be 'function' or 'custom'")
    return call_id


def _openai_chat(path: str, query: dict[str, Any], headers: dict[str, str], body: Any) -> None:
    if foreign := sorted(set(body) & _CHAT_FOREIGN):
        _fail(f"Unrecognized request argument supplied: {foreign[0]}")
    _str(body.get("model"), "model")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        _fail("stream must be a boolean")
    if body.get("stream_options") is not None and body.get("stream") is not True:
        _fail("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        _fail("max_tokens and max_completion_tokens cannot both be set")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        if body.get(key) is not None and (not _is_int(body[key]) or body[key] < 1):
            _fail(f"{key} must be a positive integer")
    _range(body, "temperature", 0, 2)
    _range(body, "top_p", 0, 1)
    _range(body, "presence_penalty", -2, 2)
    _range(body, "frequency_penalty", -2, 2)

    if body.get("tools") is not None:
        for i, tool in enumerate(_list(body["tools"], "tools", empty=True)):
            tool = _obj(tool, f"tools[{i}]")
            if tool.get("type") == "function":
                function = _obj(tool.get("function"), f"tools[{i}].function")
                name = _str(function.get("name"), f"tools[{i}].function.name")
                if not _OPENAI_FUNCTION_NAME.match(name):
                    _fail(
                        f"tools[{i}].function.name: string does not match pattern "
                        "'^[a-zA-Z0-9_-]{1,64}$'"
                    )
                if function.get("parameters") is not None:
                    _obj(function["parameters"], f"tools[{i}].function.parameters")
            elif tool.get("type") == "custom":
                _str(_obj(tool.get("custom"), f"tools[{i}].custom").get("name"), "name")
            else:
                _fail(f"tools[{i}].type must be 'function' or 'custom'")
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            _fail("tool_choice must be none, auto, required or an object")
    elif choice is not None:
        choice = _obj(choice, "tool_choice")
        if choice.get("type") == "function":
            _str(_obj(choice.get("function"), "tool_choice.function").get("name"), "name")
        elif choice.get("type") not in ("allowed_tools", "custom"):
            _fail("tool_choice.type must be function, custom or allowed_tools")

    messages = _list(body.get("messages"), "messages", empty=ALLOW_EMPTY_CHAT_MESSAGES)
    pending: list[str] = []  # tool call ids of the last assistant message, not yet answered
    answered: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        message = _obj(message, where)
        role = message.get("role")
        content = message.get("content")
        if role != "tool" and pending:
            _fail(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(pending)}"
            )
        if role in ("system", "developer"):
            if not isinstance(content, str):
                _chat_parts(content, f"{where}.content", frozenset({"text"}))
        elif role == "user":
            if not isinstance(content, str):
                _chat_parts(content, f"{where}.content", _CHAT_USER_PARTS)
        elif role == "assistant":
            calls = message.get("tool_calls")
            if calls is not None:
                ids = [
                    _chat_tool_call(c, f"{where}.tool_calls[{j}]")
                    for j, c in enumerate(_list(calls, f"{where}.tool_calls"))
                ]
                if len(set(ids)) != len(ids):
                    _fail(f"{where}.tool_calls: duplicate tool call ids")
                pending = ids
                answered = set()
            if content is None:
                if calls is None and message.get("function_call") is None:
                    _fail(f"{where}.content: content is required unless tool_calls is set")
            elif not isinstance(content, str):
                _chat_parts(content, f"{where}.content", frozenset({"text", "refusal"}))
        elif role == "tool":
            call_id = _str(message.get("tool_call_id"), f"{where}.tool_call_id")
            if call_id not in pending and call_id not in answered:
                _fail(
                    f"{where}: messages with role 'tool' must be a response to a preceding "
                    f"message with 'tool_calls' (no call {call_id!r})"
                )
            if call_id in pending:
                pending.remove(call_id)
                answered.add(call_id)
            if not isinstance(content, str):
                _chat_parts(content, f"{where}.content", frozenset({"text"}))
        elif role == "function":
            _str(message.get("name"), f"{where}.name")
        else:
            _fail(
                f"{where}.role: must be one of system, developer, user, assistant, tool, "
                f"function; got {role!r}"
            )
    if pending:
        _fail(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(pending)}"
        )


# --------------------------------------------------------------------------- Gemini

_GEMINI_PATHS = (
    re.compile(r"^/(v1|v1beta|v1alpha)/models/[^/:]+:(generateContent|streamGenerateContent)$"),
    re.compile(
        r"^/(v1|v1beta1)/projects/[^/]+/locations/[^/]+/publishers/google/models/[^/:]+"
        r":(generateContent|streamGenerateContent)$"
    ),
)
_GEMINI_TOP = frozenset(
    {
        "contents",
        "tools",
        "toolConfig",
        "safetySettings",
        "systemInstruction",
        "generationConfig",
        "cachedContent",
        "labels",  # Vertex AI
        "model",
    }
)
_GEMINI_DATA = frozenset(
    {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
    }
)
_GEMINI_PART_EXTRA = frozenset(
    {"thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
)
_GEMINI_GENERATION = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "_responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "imageConfig",
        "mediaResolution",
        "audioTimestamp",
        "routingConfig",
        "modelSelectionConfig",
    }
)


def _camel(key: str) -> str:
    """The proto JSON name of a field given in either form (``inline_data`` -> ``inlineData``)."""
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest) if rest and head else key


def _camel_keys(obj: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key)
        if name in out:
            _fail(f"{where}: field {name!r} given twice")
        out[name] = value
    return out


def _gemini_part(part: Any, where: str) -> dict[str, Any]:
    part = _camel_keys(_obj(part, where), where)
    _unknown_keys(part, _GEMINI_DATA | _GEMINI_PART_EXTRA, f"{where}: ")
    data = [k for k in part if k in _GEMINI_DATA]
    if len(data) != 1:
        _fail(
            f"{where}: a part must hold exactly one of text, inlineData, fileData, "
            f"functionCall, functionResponse, executableCode, codeExecutionResult (has {data})"
        )
    kind = data[0]
    value = part[kind]
    if kind == "text":
        _str(value, f"{where}.text", empty=True)
    elif kind == "inlineData":
        blob = _camel_keys(_obj(value, f"{where}.inlineData"), where)
        _str(blob.get("mimeType"), f"{where}.inlineData.mimeType")
        _base64(blob.get("data"), f"{where}.inlineData.data", loose=True)
    elif kind == "fileData":
        file = _camel_keys(_obj(value, f"{where}.fileData"), where)
        _str(file.get("fileUri"), f"{where}.fileData.fileUri")
    elif kind == "functionCall":
        call = _camel_keys(_obj(value, f"{where}.functionCall"), where)
        _str(call.get("name"), f"{where}.functionCall.name")
        if call.get("args") is not None:
            _obj(call["args"], f"{where}.functionCall.args")
        part[kind] = call
    elif kind == "functionResponse":
        resp = _camel_keys(_obj(value, f"{where}.functionResponse"), where)
        _str(resp.get("name"), f"{where}.functionResponse.name")
        _obj(resp.get("response"), f"{where}.functionResponse.response")
        part[kind] = resp
    elif kind in ("executableCode", "codeExecutionResult"):
        _obj(value, f"{where}.{kind}")
    if "thought" in part and not isinstance(part["thought"], bool):
        _fail(f"{where}.thought must be a boolean")
    if "thoughtSignature" in part:
        _base64(part["thoughtSignature"], f"{where}.thoughtSignature", loose=True)
    return part


def _gemini(path: str, query: dict[str, Any], headers: dict[str, str], body: Any) -> None:
    if not any(p.match(path) for p in _GEMINI_PATHS):
        _fail(f"no such method: {path} (expected /v1beta/models/<model>:generateContent)")
    if "alt" in query and query["alt"] not in (["sse"], ["json"]):
        _fail(f"alt must be 'sse' or 'json', got {query['alt']}")
    body = _camel_keys(body, "request")
    _unknown_keys(body, _GEMINI_TOP, "Invalid JSON payload received. Unknown name: ")

    if body.get("systemInstruction") is not None:
        system = _camel_keys(_obj(body["systemInstruction"], "systemInstruction"), "system")
        for j, part in enumerate(_list(system.get("parts"), "systemInstruction.parts")):
            _gemini_part(part, f"systemInstruction.parts[{j}]")
    if body.get("generationConfig") is not None:
        config = _camel_keys(_obj(body["generationConfig"], "generationConfig"), "config")
        _unknown_keys(config, _GEMINI_GENERATION, "generationConfig: unknown name ")
        _range(config, "temperature", 0, 2, "generationConfig.")
        _range(config, "topP", 0, 1, "generationConfig.")
    for i, tool in enumerate(_list(body.get("tools", []), "tools", empty=True)):
        tool = _camel_keys(_obj(tool, f"tools[{i}]"), f"tools[{i}]")
        declarations = tool.get("functionDeclarations")
        if declarations is None:
            continue
        for j, decl in enumerate(_list(declarations, f"tools[{i}].functionDeclarations")):
            where = f"tools[{i}].functionDeclarations[{j}]"
            decl = _camel_keys(_obj(decl, where), where)
            _str(decl.get("name"), f"{where}.name")
            if decl.get("parameters") is not None and decl.get("parametersJsonSchema") is not None:
                _fail(f"{where}: set at most one of parameters and parametersJsonSchema")
            for key in ("parameters", "parametersJsonSchema"):
                if decl.get(key) is not None:
                    _obj(decl[key], f"{where}.{key}")

    contents = _list(body.get("contents"), "contents")
    previous_calls: list[str] = []
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        content = _camel_keys(_obj(content, where), where)
        role = content.get("role", "user")
        if role not in ("user", "model"):
            _fail(f"{where}.role: Please use a valid role: user, model (got {role!r})")
        parts = [
            _gemini_part(p, f"{where}.parts[{j}]")
            for j, p in enumerate(_list(content.get("parts"), f"{where}.parts"))
        ]
        responses = [p["functionResponse"]["name"] for p in parts if "functionResponse" in p]
        calls = [p["functionCall"]["name"] for p in parts if "functionCall" in p]
        if responses:
            if role != "user":
                _fail(f"{where}: functionResponse parts belong in a user turn")
            if not previous_calls:
                _fail(
                    f"{where}: Please ensure that function response turn comes immediately "
                    "after a function call turn."
                )
            for name in responses:
                if name not in previous_calls:
                    _fail(
                        f"{where}: functionResponse {name!r} answers no functionCall of the "
                        "previous model turn"
                    )
            if len(responses) != len(previous_calls):
                _fail(
                    f"{where}: Please ensure that the number of function response parts is "
                    "equal to the number of function call parts of the function call turn."
                )
        if calls and role != "model":
            _fail(f"{where}: functionCall parts belong in a model turn")
        previous_calls = calls


# --------------------------------------------------------------------------- Responses

_RESPONSES_ITEMS = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "custom_tool_call",
        "custom_tool_call_output",
        "computer_call",
        "computer_call_output",
        "web_search_call",
        "file_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "item_reference",
        "compaction",
        "tool_search_call",
        "tool_search_output",
    }
)
_RESPONSES_PARTS = frozenset(
    {"input_text", "input_image", "input_file", "input_audio", "output_text", "refusal"}
)


def _openai_responses(path: str, query: dict[str, Any], headers: dict[str, str], body: Any) -> None:
    if body.get("prompt") is None:
        _str(body.get("model"), "model")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        _fail("stream must be a boolean")
    _range(body, "temperature", 0, 2)
    _range(body, "top_p", 0, 1)
    limit = body.get("max_output_tokens")
    if limit is not None and (not _is_int(limit) or limit < 16):
        _fail("max_output_tokens must be an integer >= 16")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str | list):
        _fail("instructions must be a string")
    if body.get("tools") is not None:
        for i, tool in enumerate(_list(body["tools"], "tools", empty=True)):
            tool = _obj(tool, f"tools[{i}]")
            _str(tool.get("type"), f"tools[{i}].type")
            if tool["type"] == "function":
                name = _str(tool.get("name"), f"tools[{i}].name")
                if not _OPENAI_FUNCTION_NAME.match(name):
                    _fail(f"tools[{i}].name: string does not match '^[a-zA-Z0-9_-]{{1,64}}$'")
    items = body.get("input")
    if items is None or isinstance(items, str):
        return
    for i, item in enumerate(_list(items, "input", empty=True)):
        where = f"input[{i}]"
        item = _obj(item, where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind not in _RESPONSES_ITEMS:
            _fail(f"{where}.type: unknown input item type {kind!r}")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                _fail(f"{where}.role must be one of user, assistant, system, developer")
            content = item.get("content")
            if not isinstance(content, str):
                for j, part in enumerate(_list(content, f"{where}.content", empty=True)):
                    part = _obj(part, f"{where}.content[{j}]")
                    if part.get("type") not in _RESPONSES_PARTS:
                        _fail(f"{where}.content[{j}].type: unknown part {part.get('type')!r}")
        elif kind in ("function_call", "custom_tool_call"):
            _str(item.get("call_id"), f"{where}.call_id")
            _str(item.get("name"), f"{where}.name")
            if kind == "function_call" and not isinstance(item.get("arguments"), str):
                _fail(f"{where}.arguments must be a string")
        elif kind.endswith("_call_output"):
            _str(item.get("call_id"), f"{where}.call_id")
            if kind in ("function_call_output", "custom_tool_call_output") and not isinstance(
                item.get("output"), str | list
            ):
                _fail(f"{where}.output must be a string or a list")
        elif kind == "reasoning":
            _list(item.get("summary"), f"{where}.summary", empty=True)


_CHECKERS: dict[str, Callable[[str, dict[str, Any], dict[str, str], Any], None]] = {
    "anthropic_messages": _anthropic,
    "openai_chat": _openai_chat,
    "gemini": _gemini,
    "openai_responses": _openai_responses,
}
