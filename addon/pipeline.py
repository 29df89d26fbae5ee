"""The decisions for one call, over plain values: admit, route, rewrite, settle.

`addon.gateway` is the only module that knows flows; it hands this module the
parts of a request it needs and applies what comes back. That keeps every
decision testable without a proxy.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from addon.call import Call, Rejection
from addon.config import GatewayConfig, SafetySettings
from addon.credentials import (
    CREDENTIAL_HEADERS,
)
from addon.ledger.pricing import Pricer, cost_usd, estimate_tokens
from addon.ledger.store import storable_text
from addon.policy import Denial, EffectivePolicy, check_model, check_size
from addon.protocols import PROTOCOLS, strictjson
from addon.protocols.canonical import ContentPart, ProtocolError, Usage, part_texts
from addon.routes import match_route
from addon.safety.scanner import Scanner
from addon.safety.screening import Located, request_locations, screen

log = logging.getLogger("llmgate")


def decode_body(raw_body: bytes) -> Any | Rejection:
    """The body, decoded strictly once; a body two readers could read two ways is a 400."""
    try:
        return strictjson.loads(raw_body)
    except strictjson.BodyError as exc:
        return Rejection(400, "invalid_json", f"request body refused: {exc}")


def parse_call(call: Call, raw_body: bytes) -> Rejection | None:
    """Fill in the canonical request; a body that is not a valid call is rejected with 400."""
    body = decode_body(raw_body)
    return body if isinstance(body, Rejection) else parse_body(call, body)


def parse_body(call: Call, body: Any) -> Rejection | None:
    """`parse_call` for a body already decoded."""
    protocol = PROTOCOLS[call.protocol_name]
    call.protocol = protocol
    try:
        call.request = protocol.parse_request(body, call.path)
    except ProtocolError as exc:
        return Rejection(400, "invalid_request", str(exc))
    except RecursionError:
        return Rejection(400, "invalid_request", "the request nests too deeply to be read")
    if call.request.max_tokens is not None and call.request.max_tokens < 1:
        # A negative limit must not shrink a token reservation (the provider refuses it).
        return Rejection(400, "invalid_request", "the maximum output tokens must be at least 1")
    call.stream = protocol.is_stream_request(body, call.path)
    call.body = body
    return None


def choose_route(call: Call, config: GatewayConfig) -> Rejection | None:
    assert call.protocol and call.request
    model = call.request.model
    # WebSocket messages are not translated: only routes that speak Responses.
    translate = call.transport == "http"
    route = match_route(config.routes, model, call.protocol_name, translate=translate)
    if route is None:
        return Rejection(
            404,
            "no_route",
            f"llmgate has no route for model '{model}' that serves {call.protocol_name} "
            "callers. Add a route whose model_pattern matches it to your policy file.",
        )
    call.route = route
    call.upstream_model = route.upstream_model or model
    return None


def unauthenticated(call: Call) -> Rejection:
    if call.stray_key:
        message = (
            "an llmgate key was found outside the credential slots; llmgate refuses to forward "
            "it. Send it as 'Authorization: Bearer lg-…' or in x-api-key / x-goog-api-key."
        )
    elif call.virtual_key:
        message = "this llmgate key is unknown or revoked; ask for a new one (llmgate keys issue)"
    else:
        message = (
            "llmgate could not tell who you are: authenticate to the proxy, use an llmgate key, "
            "or call from a mapped client address"
        )
    return Rejection(401, "unauthenticated", message, "denied")


def check_policy(call: Call, policy: EffectivePolicy) -> Rejection | None:
    """Model, route and per-call size rules; sets the clamp when the policy clamps."""
    assert call.request and call.route and call.upstream_model
    denial = check_model(policy, call.request.model, call.upstream_model, call.route)
    if denial is None and call.virtual_key and not call.route.api_key_secret:
        denial = Denial(
            403,
            "virtual_key_without_secret",
            f"route '{call.route.id}' has no api_key_secret, so an llmgate key cannot be "
            "used on it. Call with your own provider key, or give the route a secret.",
        )
    if denial is None:
        call.estimated_input = estimate_tokens(call.request.texts())
        denial, call.clamp_max_tokens = check_size(policy, call.request, call.estimated_input)
    return Rejection.deny(denial) if denial else None


def screen_request(
    call: Call,
    scanner: Scanner,
    settings: SafetySettings,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> Rejection | None:
    """Scan every prompt location and header value; `block` refuses the call before it goes out.

    Credential headers are the one place a key belongs, so they are not scanned.
    """
    assert call.request
    locations = request_locations(call.request) + [
        (f"header {name.decode('latin-1').lower()}", value.decode("latin-1"))
        for name, value in headers
        if name.lower().decode("latin-1") not in CREDENTIAL_HEADERS and value
    ]
    call.request_screening = screen(scanner, settings, "request", locations)
    if call.request_screening.blocking is None:
        return None
    return Rejection(400, "safety_block", call.request_screening.block_message("request"), "denied")


def screen_reply(call: Call, body: bytes, scanner: Scanner, settings: SafetySettings) -> bool:
    """Scan a buffered reply; True when a `block` action means it must not be delivered."""
    assert call.protocol
    content = reply_content(call, 200, body)
    if not content:
        return False
    locations = [("reply", text) for text in part_texts(content) if text]
    call.reply_screening = screen(scanner, settings, "response", locations)
    return call.reply_screening.blocking is not None


def reply_findings(call: Call, scanner: Scanner, settings: SafetySettings) -> list[Located]:
    """The reply's findings; a stream nobody needed to rewrite is scanned whole, now."""
    if call.guard is not None:
        return call.guard.items
    if call.reply_screening is None and call.tap is not None and settings.enabled:
        text = "".join(part_texts(reply_content(call, None, b"")))
        call.reply_screening = screen(scanner, settings, "response", [("stream", text)])
    return call.reply_screening.items if call.reply_screening else []


def reply_content(call: Call, http_status: int | None, body: bytes) -> list[ContentPart]:
    """What the model answered, streamed or buffered, in canonical parts.

    Read once per call and kept: screening, settling, the findings and the
    tool-call rows all need it, and each read is a JSON parse or a rebuild of
    the stream's state. Called only once the reply is whole. An error answer
    has no content, whatever the upstream had said before llmgate refused it.
    """
    if call.tap is None and (http_status or 500) >= 400:
        return []
    if call.reply_parts is None:
        call.reply_parts = _read_reply(call, body)
    return call.reply_parts


def _read_reply(call: Call, body: bytes) -> list[ContentPart]:
    if call.tap is not None:
        return call.tap.state.response().content
    if not body or call.protocol is None or call.request is None:
        return []
    try:
        value = json.loads(body)
        call.reply_json = (body, value)
        return call.protocol.parse_response(value).content
    except (ValueError, RecursionError, ProtocolError):
        return []


def _reply_json(call: Call, body: bytes) -> Any:
    """`body` parsed, once per call: screening may have parsed this very body already."""
    read = call.reply_json
    if read is not None and (read[0] is body or read[0] == body):
        return read[1]
    return json.loads(body)


def stored_values(call: Call) -> dict[str, str]:
    """Every value any scanner found in this call: none of them is written to the ledger."""
    values: dict[str, str] = {}
    for screening in (call.request_screening, call.reply_screening):
        if screening is not None:
            values.update(screening.values())
    if call.guard is not None:
        values.update(call.guard.redacted_values())
    return values


def summary_line(call: Call, fields: dict[str, Any]) -> str:
    """One log line per call. It names the call, never its content or credentials."""
    model = call.request.model if call.request else "-"
    if call.upstream_model and call.upstream_model != model:
        model = f"{model}->{call.upstream_model}"
    cost = fields.get("cost_usd")
    return storable_text(
        f"{call.id[-12:]} {call.user or '-'} {call.protocol_name} {model} "
        f"route={call.route.id if call.route else '-'} {fields.get('status')} "
        f"{fields.get('http_status') or '-'} {fields.get('reason') or ''} "
        f"in={fields.get('input_tokens', '-')} out={fields.get('output_tokens', '-')} "
        f"({fields.get('usage_source')}) "
        f"cost={'-' if cost is None else f'${cost:.6f}'} {fields.get('latency_ms')}ms"
    ).replace("  ", " ")


def _upstream_error(status: int, body: bytes | None) -> str:
    """The row's `error` for a call the upstream refused: its status and error code.

    Only the code, never the message: providers quote (part of) the key they
    refused in it, and no credential goes into the ledger.
    """
    code = None
    try:
        error = json.loads(body or b"null")
        if isinstance(error, list) and error:  # Gemini's streamed array
            error = error[0]
        error = error.get("error") if isinstance(error, dict) else None
        if isinstance(error, dict):
            for key in ("code", "type", "status"):
                value = error.get(key)
                if isinstance(value, str) and _ERROR_CODE.fullmatch(value):
                    code = value
                    break
    except (ValueError, RecursionError):
        pass
    return f"upstream answered {status}" + (f" ({code})" if code else "")


_ERROR_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def refusal_fields(call: Call, rejection: Rejection) -> dict[str, Any]:
    """The closing fields of a call llmgate answered itself."""
    finished = time.time()
    return {
        "status": rejection.outcome,
        "http_status": rejection.status,
        "error": rejection.message,
        "reason": rejection.kind,
        "usage_source": "none",
        "finished_at": finished,
        "latency_ms": round((finished - call.started_at) * 1000, 3),
    }


def internal_error_fields(call: Call, http_status: int | None = None) -> dict[str, Any]:
    """The closing fields of a call llmgate itself failed on."""
    failure = Rejection(0, "internal_error", "llmgate internal error")
    return refusal_fields(call, failure) | {"http_status": http_status}


def settle(
    call: Call,
    *,
    http_status: int | None,
    response_body: bytes | None,
    error: str | None,
    cancelled: bool,
    pricer: Pricer,
    now: float | None = None,
) -> dict[str, Any]:
    """The audit row's closing fields: status, usage, its source, cost, latency."""
    finished = time.time() if now is None else now
    fields: dict[str, Any] = {
        "finished_at": finished,
        "http_status": http_status,
        "latency_ms": round((finished - call.started_at) * 1000, 3),
    }
    state_error = None
    usage: Usage | None = None
    output_texts: list[str] = []
    received = False
    if call.tap is not None:
        state = call.tap.state
        usage, state_error = state.usage, state.error or call.tap.failure
        output_texts = part_texts(reply_content(call, http_status, b""))
        received = call.tap.bytes_received > 0
        if call.tap.first_token_at is not None:
            fields["ttft_ms"] = round((call.tap.first_token_at - call.started_at) * 1000, 3)
    elif response_body and call.protocol and http_status and http_status < 400:
        received = True
        try:
            body = _reply_json(call, response_body)
            usage = call.protocol.read_usage(body)
            if usage is None:
                # Only an estimate needs the reply's text.
                output_texts = part_texts(call.protocol.parse_response(body).content)
        except (ValueError, RecursionError, ProtocolError):
            output_texts = [response_body.decode("utf-8", "replace")]

    translation = call.translation
    if translation is not None and translation.usage is not None:
        # The provider's own report, before the caller's protocol had to express it.
        usage = translation.usage
    if call.attempted and call.serving is not None:
        # A fallback may have served: the row names the route that did.
        serving = call.serving
        fields.update(
            route=serving.route.id,
            provider=serving.route.provider,
            upstream_model=serving.upstream_model,
            upstream_protocol=serving.upstream_protocol,
            upstream_host=serving.rewrite.upstream.host,
        )

    if cancelled:
        fields["status"] = "cancelled"
    elif error or state_error or (http_status or 0) >= 400:
        fields["status"] = "failed"
    else:
        fields["status"] = "completed"
    fields["error"] = error or state_error
    if call.upstream_failure is not None:
        # The dispatcher answered for a broken upstream, or ended the stream.
        failure = call.upstream_failure
        fields.update(status=failure.outcome, reason=failure.reason, error=failure.message)
    elif call.tap is not None and call.tap.failure is not None:
        fields["reason"] = getattr(call.tap, "failure_reason", None) or "internal_error"
    elif fields["status"] == "failed" and http_status is not None and http_status >= 400:
        fields["reason"] = "upstream_error"
        fields["error"] = fields["error"] or _upstream_error(http_status, response_body)

    successful_reply = http_status is not None and http_status < 400
    if usage is not None:
        fields["usage_source"] = "reported"
    elif received and successful_reply and call.request is not None and not call.warmup:
        # The provider said nothing: estimate both sides rather than write a zero.
        usage = Usage(
            input_tokens=estimate_tokens(call.request.texts()),
            output_tokens=estimate_tokens(output_texts),
        )
        fields["usage_source"] = "estimated"
    else:
        fields["usage_source"] = "none"
    blocked = call.guard.blocked if call.guard else None
    if blocked is None and call.reply_screening is not None:
        blocked = call.reply_screening.blocking
    if blocked is not None:
        what = f"{blocked.finding.category} ({blocked.finding.detector})"
        fields.update(status="failed", reason="safety_block", error=f"reply blocked: {what}")
    if usage is not None:
        fields.update(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        if call.upstream_model:
            price = pricer.price(call.upstream_model, call.route.pricing if call.route else None)
            fields["cost_usd"] = cost_usd(usage, price)
    return fields
