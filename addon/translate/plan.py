"""A decided call, encoded for a provider of another protocol: its rewrite and the
translation its reply will need."""

from __future__ import annotations

import json

from addon.call import Call, Rejection, Rewrite
from addon.config import Route
from addon.credentials import CREDENTIAL_HEADERS
from addon.protocols.codec import CallerView, log_dropped
from addon.protocols.openai_responses.codec import untranslatable
from addon.routes import upstream_for
from addon.safety.screening import redact_json
from addon.translate.registry import codec
from addon.translate.reply import Translation

# Headers that belong to the caller's protocol (versions, betas, organisations,
# SDK client tags): meaningless, or misleading, to a provider of another one.
PROTOCOL_HEADER_PREFIXES = ("anthropic-", "openai-", "x-goog-", "content-type")


def translate_call(
    call: Call, route: Route, upstream_model: str, protocol: str, credential: dict[str, str]
) -> tuple[Rewrite, Translation] | Rejection:
    """`credential` holds the headers that carry the route's secret (and its extra
    headers). A route without a secret sends no credential at all: the caller's
    key was made for the caller's provider, not this one."""
    assert call.request
    refused, dropped = _out_of_reach(call)
    if refused:
        return Rejection(
            400,
            "untranslatable",
            f"route '{route.id}' sends this call to a {protocol} provider, which cannot carry "
            f"{', '.join(refused)}: that state lives only at OpenAI. Send the whole "
            "conversation in `input` instead, or use a route to OpenAI's Responses API.",
        )
    request = call.request
    if call.clamp_max_tokens is not None:
        request = request.model_copy(update={"max_tokens": call.clamp_max_tokens})
    encoded = codec(protocol).encode_request(request, upstream_model, call.stream, route.provider)
    body = json.dumps(encoded.body, ensure_ascii=False, separators=(",", ":")).encode()
    if call.request_screening is not None:
        # A redaction applies to what leaves, whatever protocol it leaves in.
        body = redact_json(body, call.request_screening.values("redact"))
    if call.protocol_name == "openai_chat" and call.stream:
        # The Chat encoder always ends with a usage chunk; a caller that did not ask
        # for one must not see it.
        options = call.body.get("stream_options")
        call.hide_injected = not (isinstance(options, dict) and options.get("include_usage"))
    set_headers = {"content-type": "application/json", **encoded.headers, **credential}
    label = f"route secret {route.api_key_secret}" if route.api_key_secret else "no credential"
    rewrite = Rewrite(
        upstream_for(route, encoded.path),
        body,
        set_headers,
        CREDENTIAL_HEADERS,
        label,
        drop_prefixes=PROTOCOL_HEADER_PREFIXES,
    )
    view = CallerView(
        request=call.request, body=call.body, path=call.path, stream=call.stream, upstream=protocol
    )
    translation = Translation(
        call.protocol_name, protocol, view, dropped=[*dropped, *encoded.dropped]
    )
    for what in dropped:  # the codec logs what it drops itself
        log_dropped(what, protocol)
    return rewrite, translation


def _out_of_reach(call: Call) -> tuple[list[str], list[str]]:
    """What a call asks for that no other protocol has: server-side state (refused,
    since the answer would be wrong without it) and built-in tools (dropped)."""
    if call.protocol_name != "openai_responses":
        return [], []
    problems = untranslatable(call.body)
    tools = [p for p in problems if p.startswith(("tool:", "tool_choice:"))]
    return [p for p in problems if p not in tools], tools
