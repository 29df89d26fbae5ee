"""Warnings about a valid configuration that will not do what it seems to.

Errors stop llmgate; these do not, but each names something an operator almost
certainly did not mean: a route no call can reach, a secret that is not there,
a model whose calls will have no cost. `llmgate check` prints them; the gateway
can log them at start-up. Every check is conservative: it warns only when the
problem is certain.
"""

from __future__ import annotations

from typing import Protocol

from addon.config import GatewayConfig, Route
from addon.ledger.pricing import PricingTable
from addon.routes import served_callers

# fnmatch reads these as wildcards too; patterns holding them are not reasoned about.
_OTHER_WILDCARDS = frozenset("?[")


class Secrets(Protocol):
    def get(self, name: str) -> str | None: ...


def config_warnings(config: GatewayConfig, pricing: PricingTable, secrets: Secrets) -> list[str]:
    return [
        *shadowed_routes(config),
        *missing_secrets(config, secrets),
        *unpriced_models(config, pricing),
    ]


def covers(earlier: str, later: str) -> bool:
    """Whether every model `later` matches is matched by `earlier` (exact, prefix*, *suffix, *)."""
    if earlier == "*" or earlier == later:
        return True
    if _OTHER_WILDCARDS & set(earlier + later):
        return False
    later_exact = "*" not in later
    if earlier.endswith("*"):
        prefix = earlier[:-1]
        # A later prefix pattern is covered when it is at least as specific.
        return (later_exact or later.endswith("*")) and later.rstrip("*").startswith(prefix)
    if earlier.startswith("*"):
        suffix = earlier[1:]
        return (later_exact or later.startswith("*")) and later.lstrip("*").endswith(suffix)
    return False  # an exact pattern covers only itself, handled above


def _callers(route: Route) -> set[str]:
    return {caller for caller, _ in served_callers(route)}


def shadowed_routes(config: GatewayConfig) -> list[str]:
    """Routes no call can reach: an earlier route matches all their models, for every
    caller protocol they serve.

    A fallback route hidden by a user's route is the point of fallbacks, not a mistake.
    """
    user = {id(route) for route in config.user_routes}
    out: list[str] = []
    for index, route in enumerate(config.routes):
        for earlier in config.routes[:index]:
            if id(route) not in user and id(earlier) in user:
                continue
            if _callers(route) <= _callers(earlier) and covers(
                earlier.model_pattern, route.model_pattern
            ):
                out.append(
                    f"route {route.id!r} (model_pattern {route.model_pattern!r}) is shadowed: "
                    f"no call naming a model can reach it, because the earlier route "
                    f"{earlier.id!r} (model_pattern {earlier.model_pattern!r}) matches every "
                    "model it matches for every caller it serves (narrow one with `callers`)"
                )
                break
    return out


def missing_secrets(config: GatewayConfig, secrets: Secrets) -> list[str]:
    users: dict[str, list[str]] = {}
    for route in config.routes:
        if route.api_key_secret and secrets.get(route.api_key_secret) is None:
            users.setdefault(route.api_key_secret, []).append(route.id)
    return [
        f"secret {name} is not set in the environment nor in the LLMGATE_SECRETS file: "
        f"calls on route(s) {', '.join(map(repr, ids))} will fail (502 missing_secret)"
        for name, ids in users.items()
    ]


def unpriced_models(config: GatewayConfig, pricing: PricingTable) -> list[str]:
    """Models a route certainly sends upstream that neither the route nor the table prices."""
    out: list[str] = []
    for route in config.routes:
        model = _model_sent(route)
        if model is None or route.pricing is not None or pricing.price_for(model) is not None:
            continue
        out.append(
            f"route {route.id!r}: no price for model {model!r}: its calls get cost_usd NULL "
            "and windows with max_cost_usd refuse them; add it to pricing.yaml or give the "
            "route a `pricing`"
        )
    return out


def _model_sent(route: Route) -> str | None:
    if route.upstream_model:
        return route.upstream_model
    pattern = route.model_pattern
    return None if "*" in pattern or _OTHER_WILDCARDS & set(pattern) else pattern
