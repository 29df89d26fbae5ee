"""The decisions for one call, over plain values: admit, route, rewrite, settle.

`addon.gateway` is the only module that knows flows; it hands this module the
parts of a request it needs and applies what comes back. That keeps every
decision testable without a proxy.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from addon.config import GatewayConfig, Route
from addon.credentials import (
    CREDENTIAL_HEADERS,
    SecretStore,
    credential_header,
    strip_credential_params,
)
from addon.ledger import Pricer, cost_usd, estimate_tokens
from addon.protocols import PROTOCOLS, WireProtocol
from addon.protocols.canonical import CanonicalRequest, ProtocolError, Usage, part_texts
from addon.routes import Upstream, match_route, upstream_for
from addon.streaming import StreamTap


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Call:
    """What llmgate knows about one intercepted call, from request to audit close."""

    id: str
    started_at: float
    protocol_name: str
    host: str
    path: str
    user: str | None = None
    client_ip: str | None = None
    protocol: WireProtocol | None = None
    request: CanonicalRequest | None = None
    route: Route | None = None
    upstream_model: str | None = None
    stream: bool = False
    hide_injected: bool = False
    tap: StreamTap | None = None
    closed: bool = False

    def open_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": self.started_at,
            "user": self.user,
            "client_ip": self.client_ip,
            "protocol": self.protocol_name,
            "host": self.host,
            "path": self.path,
            "model": self.request.model if self.request else None,
            "upstream_model": self.upstream_model,
            "provider": self.route.provider if self.route else None,
            "route": self.route.id if self.route else None,
            "stream": int(self.stream),
            "status": "pending",
        }


@dataclass
class Rejection:
    """llmgate answers the call itself, in the caller's wire format."""

    status: int
    kind: str
    message: str
    outcome: str = "failed"  # the audit status: failed, or denied for policy decisions
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, protocol: WireProtocol | None) -> bytes:
        if protocol is None:
            payload: dict[str, Any] = {"error": {"message": self.message, "code": self.kind}}
        else:
            payload = protocol.error_body(self.status, self.kind, self.message)
        return json.dumps(payload).encode()


@dataclass
class Rewrite:
    """Everything the gateway must change on the outgoing request."""

    upstream: Upstream
    body: bytes
    set_headers: dict[str, str]
    drop_headers: tuple[str, ...]


def parse_call(call: Call, raw_body: bytes) -> Rejection | None:
    """Fill in the canonical request; a body that is not a valid call is rejected with 400."""
    protocol = PROTOCOLS[call.protocol_name]
    call.protocol = protocol
    try:
        body = json.loads(raw_body)
    except ValueError as exc:
        return Rejection(400, "invalid_json", f"request body is not valid JSON: {exc}")
    try:
        call.request = protocol.parse_request(body, call.path)
    except ProtocolError as exc:
        return Rejection(400, "invalid_request", str(exc))
    call.stream = protocol.is_stream_request(body, call.path)
    return None


def choose_route(call: Call, config: GatewayConfig) -> Rejection | None:
    assert call.protocol and call.request
    model = call.request.model
    route = match_route(config.routes, model, call.protocol.provider)
    if route is None:
        return Rejection(
            404,
            "no_route",
            f"llmgate has no route for model '{model}' on provider '{call.protocol.provider}'. "
            "Add a route whose model_pattern matches it to your policy file.",
        )
    call.route = route
    call.upstream_model = route.upstream_model or model
    return None


def plan_rewrite(
    call: Call, raw_path: str, raw_body: bytes, secrets: SecretStore
) -> Rewrite | Rejection:
    """`raw_path` is the caller's path as sent; `call.path` is stripped of credentials."""
    assert call.protocol and call.route and call.upstream_model
    protocol, route = call.protocol, call.route
    set_headers = dict(route.extra_headers)
    drop: tuple[str, ...] = ()
    if route.api_key_secret:
        secret = secrets.get(route.api_key_secret)
        if secret is None:
            return Rejection(
                502,
                "missing_secret",
                f"route '{route.id}' needs the secret {route.api_key_secret}, which is not set. "
                f"Export {route.api_key_secret} or add it to the LLMGATE_SECRETS file.",
            )
        drop = CREDENTIAL_HEADERS
        name, value = credential_header(protocol.credential_header, secret)
        set_headers[name] = value
    # A caller's own key may ride in the query string (Gemini's ?key=).
    path = strip_credential_params(raw_path) if route.api_key_secret else raw_path
    model_change = call.upstream_model if call.upstream_model != call.request.model else None
    if model_change and protocol.model_from_path(path):
        path = protocol.path_with_model(path, model_change)
    body, injected = protocol.edit_request(raw_body, model=model_change)
    call.hide_injected = injected
    return Rewrite(upstream_for(route, path), body, set_headers, drop)


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
        usage, state_error = state.usage, state.error
        output_texts = part_texts(state.response().content)
        received = call.tap.bytes_received > 0
        if call.tap.first_token_at is not None:
            fields["ttft_ms"] = round((call.tap.first_token_at - call.started_at) * 1000, 3)
    elif response_body and call.protocol and http_status and http_status < 400:
        received = True
        try:
            parsed = call.protocol.parse_response(json.loads(response_body))
            usage = parsed.usage
            output_texts = part_texts(parsed.content)
        except (ValueError, ProtocolError):
            output_texts = [response_body.decode("utf-8", "replace")]

    if cancelled:
        fields["status"] = "cancelled"
    elif error or state_error or (http_status or 0) >= 400:
        fields["status"] = "failed"
    else:
        fields["status"] = "completed"
    fields["error"] = error or state_error

    successful_reply = http_status is not None and http_status < 400
    if usage is not None:
        fields["usage_source"] = "reported"
    elif received and successful_reply and call.request is not None:
        # The provider said nothing: estimate both sides rather than write a zero.
        usage = Usage(
            input_tokens=estimate_tokens(call.request.texts()),
            output_tokens=estimate_tokens(output_texts),
        )
        fields["usage_source"] = "estimated"
    else:
        fields["usage_source"] = "none"
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
