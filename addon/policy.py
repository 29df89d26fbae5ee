"""Model policy: which rules apply to a caller, and what they allow for one call.

Merge rule. Every rule whose `applies_to` names the caller applies. A rule that
names the user exactly is more specific than one that names one of the user's
groups, which is more specific than a wildcard (`"*"`). For each field, the most
specific rule that sets it wins (rules of equal specificity: the later one in file
order). Quota windows are the exception: every window of every applying rule is
enforced, so an organisation-wide cap cannot be escaped by a per-user rule.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from addon.config import OutputCap, PolicyRule, QuotaWindow, Route
from addon.protocols.canonical import CanonicalRequest

_MERGED_FIELDS = (
    "allowed_models",
    "denied_models",
    "max_input_tokens_per_call",
    "max_output_tokens",
    "allowed_routes",
    "allowed_providers",
    "allow_unparsed",
    "allowed_endpoints",
)


@dataclass(frozen=True)
class EffectivePolicy:
    rules: tuple[str, ...] = ()
    allowed_models: list[str] | None = None
    denied_models: list[str] | None = None
    max_input_tokens_per_call: int | None = None
    max_output_tokens: OutputCap | None = None
    allowed_routes: list[str] | None = None
    allowed_providers: list[str] | None = None
    allow_unparsed: bool | None = None
    allowed_endpoints: list[str] | None = None
    quota_windows: tuple[QuotaWindow, ...] = ()


@dataclass(frozen=True)
class Denial:
    status: int
    reason: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def _specificity(rule: PolicyRule, user: str, groups: list[str]) -> int | None:
    """2 = names the user, 1 = names a group, 0 = wildcard, None = does not apply."""
    target = rule.applies_to
    if user in target.users:
        return 2
    if any(g in target.groups for g in groups):
        return 1
    if "*" in target.users or "*" in target.groups:
        return 0
    return None


def effective_policy(rules: list[PolicyRule], user: str, groups: list[str]) -> EffectivePolicy:
    applying = [
        (rank, index, rule)
        for index, rule in enumerate(rules)
        if (rank := _specificity(rule, user, groups)) is not None
    ]
    applying.sort(key=lambda item: (item[0], item[1]))
    merged: dict[str, object] = {}
    windows: list[QuotaWindow] = []
    for _, _, rule in applying:
        for name in _MERGED_FIELDS:
            value = getattr(rule, name)
            if value is not None:
                merged[name] = value
        windows.extend(rule.quota_windows)
    return EffectivePolicy(
        rules=tuple(rule.name for _, _, rule in applying),
        quota_windows=tuple(windows),
        **merged,  # type: ignore[arg-type]
    )


def _matches_any(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def check_model(
    policy: EffectivePolicy, requested: str, upstream: str, route: Route
) -> Denial | None:
    """Denied models win over allowed ones; both the requested and the upstream model count."""
    models = dict.fromkeys((requested, upstream))
    for model in models:
        if policy.denied_models and _matches_any(model, policy.denied_models):
            return Denial(403, "model_not_allowed", f"model '{model}' is denied by policy")
        if policy.allowed_models is not None and not _matches_any(model, policy.allowed_models):
            return Denial(403, "model_not_allowed", f"model '{model}' is not in allowed_models")
    if policy.allowed_routes is not None and not _matches_any(route.id, policy.allowed_routes):
        return Denial(403, "route_not_allowed", f"route '{route.id}' is not allowed for you")
    if policy.allowed_providers is not None and route.provider not in policy.allowed_providers:
        return Denial(403, "provider_not_allowed", f"provider '{route.provider}' is not allowed")
    return None


def check_size(
    policy: EffectivePolicy, request: CanonicalRequest, estimated_input: int
) -> tuple[Denial | None, int | None]:
    """Per-call caps. Returns a denial, or the max_tokens value to clamp the call to."""
    cap = policy.max_input_tokens_per_call
    if cap is not None and estimated_input > cap:
        return (
            Denial(
                400,
                "input_too_large",
                f"the prompt is about {estimated_input} tokens; policy allows {cap} per call",
            ),
            None,
        )
    out = policy.max_output_tokens
    if out is None:
        return None, None
    if request.max_tokens is not None and request.max_tokens <= out.limit:
        return None, None
    if out.action == "deny":
        asked = "no limit" if request.max_tokens is None else str(request.max_tokens)
        return (
            Denial(
                400,
                "output_too_large",
                f"max tokens {asked} is above the policy limit of {out.limit}; "
                f"ask for at most {out.limit}",
            ),
            None,
        )
    return None, out.limit


def check_unparsed(policy: EffectivePolicy, path: str, governed: bool) -> Denial | None:
    """An endpoint llmgate does not parse (batches, files, model lists, ...).

    `governed`: llmgate would put its own credential on the call (the caller used an
    llmgate key, or the route injects a secret). Such a call spends the team's
    account with no model policy and no quota, so it needs an explicit
    `allowed_endpoints` glob; a caller's own key passes and is recorded.
    """
    if policy.allow_unparsed is False:
        return Denial(
            403,
            "unparsed_not_allowed",
            "policy forbids calls to LLM endpoints llmgate cannot parse",
        )
    if not governed:
        return None
    bare = path.split("?", 1)[0]
    if policy.allowed_endpoints and _matches_any(bare, policy.allowed_endpoints):
        return None
    return Denial(
        403,
        "endpoint_not_allowed",
        f"llmgate does not parse {bare}, so it cannot apply model policy or quotas to it, "
        "and it will not put the team's credential on it. An operator can allow it with a "
        "path glob in the policy's allowed_endpoints.",
    )
