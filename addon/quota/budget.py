"""Quota arithmetic for one call: which windows, how much to reserve, what to tell the caller."""

from __future__ import annotations

import math
from typing import Any

from addon.call import Call, Rejection
from addon.config import QuotaWindow
from addon.ledger.pricing import Pricer, cost_usd
from addon.protocols.canonical import Usage
from addon.quota.windows import AppliedWindow, Demand, Exceeded, WindowState


def bind_windows(
    user: str | None, groups: tuple[str, ...], windows: tuple[QuotaWindow, ...]
) -> list[AppliedWindow]:
    """Each window counts under its scope's key: the user, each of the user's groups, or all."""
    bound: list[AppliedWindow] = []
    for window in windows:
        if window.scope == "global":
            bound.append(AppliedWindow(window, "global"))
        elif window.scope == "user":
            bound.append(AppliedWindow(window, f"user:{user}"))
        else:
            bound.extend(AppliedWindow(window, f"group:{g}") for g in groups)
    return bound


def quota_demand(call: Call, pricer: Pricer, output_cap: int) -> Demand | Rejection:
    """One request, the estimated input, the output reservation, and what that would cost."""
    assert call.request and call.upstream_model
    asked = call.clamp_max_tokens or call.request.max_tokens or output_cap
    output = min(asked, output_cap) if asked > 0 else output_cap
    price = pricer.price(call.upstream_model, call.route.pricing if call.route else None)
    if price is None and any(w.window.max_cost_usd is not None for w in call.quota_windows):
        return Rejection(
            403,
            "unpriced_model",
            f"model '{call.upstream_model}' has no price, so the cost budget that applies to "
            "you cannot be enforced. Add it to pricing.yaml or to the route's pricing.",
            "denied",
        )
    if call.warmup:
        output = 0  # a warm-up generates nothing, and is no request of the caller's
    usage = Usage(input_tokens=call.estimated_input, output_tokens=output)
    cost = cost_usd(usage, price) or 0.0
    return Demand(0 if call.warmup else 1, call.estimated_input, output, cost)


def exact(value: float) -> str:
    """A quota amount as callers must read it: every digit, dollars to the nano-dollar.
    (`:g` wrote 10,000,000 tokens as 1e+07 and 1,234,567 as 1.23457e+06.)"""
    if isinstance(value, int):
        return str(value)
    return f"{value:.9f}".rstrip("0").rstrip(".")


def quota_rejection(exceeded: Exceeded) -> Rejection:
    window = exceeded.window
    limit, current = exact(exceeded.limit), exact(exceeded.current)
    wait = max(1, math.ceil(exceeded.retry_after))
    if exceeded.never_fits:
        message = (
            f"this call alone needs {exact(exceeded.requested)} against "
            f"{exceeded.limit_name}={limit} of quota window '{window.label}' "
            f"({exceeded.scope_key}); it can never fit. Ask for fewer tokens."
        )
    else:
        message = (
            f"quota window '{window.label}' ({exceeded.scope_key}, {window.window_seconds}s) "
            f"is at {current} of {exceeded.limit_name}={limit}; "
            f"retry in {wait}s"
        )
    return Rejection(429, "quota_exceeded", message, "denied", {"retry-after": str(wait)})


_LIMITS = {
    "requests": "max_requests",
    "input-tokens": "max_input_tokens",
    "output-tokens": "max_output_tokens",
    "cost-usd": "max_cost_usd",
}


def ratelimit_headers(states: list[WindowState], now: float) -> dict[str, str]:
    """`x-llmgate-ratelimit-*`, from the tightest window per kind.

    Prefixed with llmgate so that the provider's own `x-ratelimit-*` headers
    still reach the caller unchanged.
    """
    headers: dict[str, str] = {}
    left = [(state, state.remaining()) for state in states]  # once per window, not per kind
    for kind, limit_name in _LIMITS.items():
        tightest = None
        for state, remainders in left:
            limit = getattr(state.window, limit_name)
            remaining = remainders.get(limit_name)
            if limit is None or remaining is None:
                continue
            if tightest is None or remaining < tightest[1]:
                tightest = (limit, remaining, state.reset_at)
        if tightest is None:
            continue
        limit, remaining, reset_at = tightest
        headers[f"x-llmgate-ratelimit-limit-{kind}"] = exact(limit)
        headers[f"x-llmgate-ratelimit-remaining-{kind}"] = exact(max(remaining, 0))
        if reset_at is not None:
            headers[f"x-llmgate-ratelimit-reset-{kind}"] = f"{max(reset_at - now, 0):.3f}"
    return headers


def actual_demand(fields: dict[str, Any], requests: int = 1) -> Demand:
    """What a finished call really consumed, for settling its reservation."""
    return Demand(
        requests,
        fields.get("input_tokens") or 0,
        fields.get("output_tokens") or 0,
        fields.get("cost_usd") or 0.0,
    )
