"""Where a decided call goes: its route's request and, in order, its fallbacks'.

For each route: the secret (a 502 when it is not set), the upstream URL, the
credential header and either the caller's body with llmgate's few edits (same
protocol) or the canonical request encoded for the provider
(`addon.translate.plan`).
"""

from __future__ import annotations

import logging

from addon.call import Attempt, Call, Rejection, Rewrite
from addon.config import PROVIDER_BY_HOST, GatewayConfig, Route
from addon.credentials import (
    CREDENTIAL_HEADERS,
    SecretStore,
    credential_header,
    strip_credential_params,
)
from addon.policy import Denial, EffectivePolicy, check_model, check_unparsed
from addon.protocols import PROTOCOLS, WireProtocol
from addon.routes import serves, upstream_for, upstream_protocol
from addon.safety.screening import redact_json
from addon.translate.plan import translate_call

log = logging.getLogger("llmgate")


def admit_other(
    call: Call, policy: EffectivePolicy, config: GatewayConfig, raw_path: str, secrets: SecretStore
) -> Rewrite | Rejection | None:
    """Endpoints llmgate does not parse pass through to the host the caller named.

    A virtual key cannot go to a provider, so such a call, when the policy allows
    its path, is sent through the first route of that host's provider that has a
    secret, re-keyed.
    """
    denial = check_unparsed(policy, call.path, governed=call.virtual_key)
    if denial is not None:
        return Rejection.deny(denial)
    if not call.virtual_key:
        return None
    provider = PROVIDER_BY_HOST.get(call.host)
    route = next((r for r in config.routes if r.provider == provider and r.api_key_secret), None)
    if route is None:
        return Rejection.deny(
            Denial(
                403,
                "virtual_key_without_secret",
                f"no route with an api_key_secret serves {call.host}, so an llmgate key "
                "cannot be used for this endpoint",
            )
        )
    call.route = route
    call.protocol = next(p for p in PROTOCOLS.values() if p.provider == provider)
    return plan_rewrite(call, raw_path, None, secrets)


def _credentials(
    route: Route, protocol: WireProtocol, secrets: SecretStore
) -> tuple[dict[str, str], tuple[str, ...]] | Rejection:
    """Headers to set and to drop so that only the route's secret reaches the upstream."""
    set_headers = dict(route.extra_headers)
    if not route.api_key_secret:
        return set_headers, ()
    secret = secrets.get(route.api_key_secret)
    if secret is None:
        return Rejection(
            502,
            "missing_secret",
            f"route '{route.id}' needs the secret {route.api_key_secret}, which is not set. "
            f"Export {route.api_key_secret} or add it to the LLMGATE_SECRETS file.",
        )
    name, value = credential_header(protocol.credential_header, secret)
    set_headers[name] = value
    return set_headers, CREDENTIAL_HEADERS


def plan_rewrite(
    call: Call, raw_path: str, raw_body: bytes | None, secrets: SecretStore
) -> Rewrite | Rejection:
    """`raw_path` is the caller's path as sent; `call.path` is stripped of credentials.

    With no body (an endpoint llmgate does not parse) only the upstream and the
    credentials change.
    """
    assert call.protocol and call.route
    model = call.upstream_model or (call.request.model if call.request else "")
    return _same_protocol(call, call.route, model, raw_path, raw_body, secrets)


def plan_attempts(
    call: Call,
    policy: EffectivePolicy,
    config: GatewayConfig,
    raw_path: str,
    raw_body: bytes,
    secrets: SecretStore,
) -> Rewrite | Rejection:
    """Plan the route's own attempt and then its fallbacks'; the first one's rewrite.

    A fallback that could not serve this call (another caller protocol only, a
    model the policy refuses, a secret that is not set) is left out with a log
    line: the call is still decided by its own route.
    """
    assert call.route and call.upstream_model
    primary = _attempt(call, call.route, call.upstream_model, raw_path, raw_body, secrets)
    if isinstance(primary, Rejection):
        return primary
    call.attempts = [primary]
    call.caller_body = raw_body
    for route_id in call.route.fallbacks:
        attempt = _fallback(call, config.route(route_id), policy, raw_path, raw_body, secrets)
        if isinstance(attempt, str):
            log.info("llmgate: %s: fallback route %r left out: %s", call.id, route_id, attempt)
        else:
            call.attempts.append(attempt)
    return primary.rewrite


def _fallback(
    call: Call,
    route: Route,
    policy: EffectivePolicy,
    raw_path: str,
    raw_body: bytes,
    secrets: SecretStore,
) -> Attempt | str:
    assert call.request
    if not serves(route, call.protocol_name):
        return f"it does not serve {call.protocol_name} callers"
    upstream_model = route.upstream_model or call.request.model
    denial = check_model(policy, call.request.model, upstream_model, route)
    if denial is None and call.virtual_key and not route.api_key_secret:
        return "it has no api_key_secret for an llmgate key"
    if denial is not None:
        return f"the policy refuses it ({denial.reason})"
    attempt = _attempt(call, route, upstream_model, raw_path, raw_body, secrets)
    return attempt.message if isinstance(attempt, Rejection) else attempt


def _attempt(
    call: Call,
    route: Route,
    upstream_model: str,
    raw_path: str,
    raw_body: bytes,
    secrets: SecretStore,
) -> Attempt | Rejection:
    protocol = upstream_protocol(route.provider, call.protocol_name)
    if protocol == call.protocol_name:
        rewrite = _same_protocol(call, route, upstream_model, raw_path, raw_body, secrets)
        translation = None
    else:
        credentials = _credentials(route, PROTOCOLS[protocol], secrets)
        if isinstance(credentials, Rejection):
            return credentials
        planned = translate_call(call, route, upstream_model, protocol, credentials[0])
        if isinstance(planned, Rejection):
            return planned
        rewrite, translation = planned
    if isinstance(rewrite, Rejection):
        return rewrite
    return Attempt(route, upstream_model, protocol, rewrite, translation)


def _same_protocol(
    call: Call,
    route: Route,
    upstream_model: str,
    raw_path: str,
    raw_body: bytes | None,
    secrets: SecretStore,
) -> Rewrite | Rejection:
    assert call.protocol
    protocol = call.protocol
    credentials = _credentials(route, protocol, secrets)
    if isinstance(credentials, Rejection):
        return credentials
    set_headers, drop = credentials
    # A caller's own key may ride in the query string (Gemini's ?key=).
    path = strip_credential_params(raw_path) if route.api_key_secret else raw_path
    body = None
    if raw_body is not None and call.request is not None:
        model_change = upstream_model if upstream_model != call.request.model else None
        if model_change and protocol.model_from_path(path):
            path = protocol.path_with_model(path, model_change)
        body, call.hide_injected = protocol.edit_request(
            raw_body, call.body, model=model_change, max_tokens=call.clamp_max_tokens
        )
        if call.request_screening is not None:
            body = redact_json(body, call.request_screening.values("redact"))
    label = f"route secret {route.api_key_secret}" if route.api_key_secret else "caller key"
    return Rewrite(upstream_for(route, path), body, set_headers, drop, label)
