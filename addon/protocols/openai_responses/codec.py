"""OpenAI Responses, caller side only: a canonical reply as a `response` object.

No provider speaks Responses in translation (`/v1/responses` is only ever
forwarded to OpenAI as it is), so this codec encodes replies and streams for
Responses callers and nothing else. What the Responses service keeps on its own
side (stored responses, built-in tools) has no canonical form: `untranslatable`
names it so that the router can refuse the call or say what it dropped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from addon.protocols.base import as_list
from addon.protocols.canonical import (
    CanonicalResponse,
    ImagePart,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
)
from addon.protocols.codec import CallerView, Codec, StreamEncoder, log_dropped, seal
from addon.protocols.openai_responses.pieces import (
    call_item,
    ending,
    envelope,
    message_item,
    new_id,
    reasoning_item,
    response_id,
)
from addon.protocols.openai_responses.stream_codec import ResponsesStreamEncoder

PROTOCOL = "openai_responses"
# Input items that point at state or results only OpenAI holds.
_SERVER_ITEMS = ("item_reference", "mcp_list_tools", "mcp_approval_request", "compaction")
_CALL_ITEMS = ("function_call", "custom_tool_call")


def upstream_of(caller: CallerView) -> str:
    """The protocol the reply came from, which a sealed signature must name.

    Stream deltas carry no issuer, so the caller view has to say it; until it
    does, signatures are sealed as `unknown` and no provider will accept them back.
    """
    return getattr(caller, "upstream", None) or "unknown"


def arguments_text(arguments: Any) -> str:
    if arguments is None:
        return "{}"
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _output(reply: CanonicalResponse, upstream: str, item_status: str) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    for part in reply.content:
        if isinstance(part, TextPart):
            last = output[-1] if output else None
            if last is not None and last["type"] == "message":
                last["content"][0]["text"] += part.text
            else:
                output.append(message_item(new_id("msg"), part.text, item_status))
        elif isinstance(part, ThinkingPart):
            sealed = None
            if part.signature is not None or part.issuer is not None:
                sealed = seal(part.issuer or upstream, part.signature or "")
            output.append(reasoning_item(new_id("rs"), part.text, sealed))
        elif isinstance(part, ToolUsePart):
            if part.signature:
                # A function_call item has no slot for it; parse_request puts it back.
                sealed = seal(part.issuer or upstream, part.signature)
                output.append(reasoning_item(new_id("rs"), "", sealed))
            call_id = part.id or new_id("call")
            args = arguments_text(part.arguments)
            output.append(call_item(new_id("fc"), call_id, part.name, args, "completed"))
        elif isinstance(part, ImagePart | ToolResultPart):
            log_dropped(f"a reply {part.type} part", PROTOCOL)
    return output


def untranslatable(body: Any) -> list[str]:
    """What a Responses call asks for that only OpenAI's Responses service can do.

    `parse_request` leaves these out of the canonical request; whoever translates
    the call decides whether to refuse it or drop them and log the list.
    """
    if not isinstance(body, dict):
        return []
    out: list[str] = []
    for spec in as_list(body.get("tools")):
        kind = spec.get("type", "function") if isinstance(spec, dict) else None
        if kind != "function":
            out.append(f"tool:{kind}")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in ("function", "allowed_tools"):
        out.append(f"tool_choice:{choice.get('type')}")
    for key in ("previous_response_id", "conversation", "prompt", "background"):
        if body.get(key):
            out.append(key)
    for item in as_list(body.get("input")):
        kind = item.get("type") if isinstance(item, dict) else None
        server_call = isinstance(kind, str) and kind.endswith("_call") and kind not in _CALL_ITEMS
        if kind in _SERVER_ITEMS or server_call:
            out.append(f"input:{kind}")
    return out


class OpenAIResponsesCodec(Codec):
    protocol = PROTOCOL

    def encode_reply(self, reply: CanonicalResponse, caller: CallerView) -> dict[str, Any]:
        """The whole `response` object, as `POST /v1/responses` returns it."""
        status, incomplete, error = ending(reply.finish, reply.stop_reason)
        item_status = "incomplete" if status == "incomplete" else "completed"
        return envelope(
            caller,
            rid=response_id(reply.id),
            model=reply.model,
            created_at=int(time.time()),
            status=status,
            output=_output(reply, upstream_of(caller), item_status),
            usage=reply.usage,
            incomplete=incomplete,
            error=error,
        )

    def stream_encoder(self, caller: CallerView) -> StreamEncoder:
        return ResponsesStreamEncoder(caller, upstream_of(caller))
