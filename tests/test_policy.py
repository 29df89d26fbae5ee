"""Policy merging, model and size checks, and identity precedence, without a proxy."""

from __future__ import annotations

from pathlib import Path

from addon.config import IdentitySettings, PolicyRule, Route
from addon.identity import Identifier
from addon.keys import KeyStore
from addon.policy import check_model, check_size, effective_policy
from addon.protocols.canonical import CanonicalRequest

ROUTE = Route(id="r", provider="openai", endpoint="https://api.openai.com")


def rule(name: str, **fields: object) -> PolicyRule:
    return PolicyRule.model_validate({"name": name, **fields})


RULES = [
    rule("all", applies_to={"users": ["*"]}, allowed_models=["*"], max_input_tokens_per_call=100,
         quota_windows=[{"window_seconds": 60, "max_requests": 10}]),
    rule("alice", applies_to={"users": ["alice"]}, allowed_models=["gpt-4o"],
         quota_windows=[{"window_seconds": 3600, "max_requests": 100}]),
    rule("dev", applies_to={"groups": ["dev"]}, allowed_models=["gpt-*"], denied_models=["gpt-5*"],
         max_input_tokens_per_call=1000),
]  # fmt: skip


def test_most_specific_rule_wins_per_field_and_windows_add_up() -> None:
    alice = effective_policy(RULES, "alice", ["dev"])
    assert alice.rules == ("all", "dev", "alice")
    assert alice.allowed_models == ["gpt-4o"]  # user beats group beats wildcard
    assert alice.denied_models == ["gpt-5*"]  # only the group rule sets it
    assert alice.max_input_tokens_per_call == 1000
    assert [w.window_seconds for w in alice.quota_windows] == [60, 3600]
    bob = effective_policy(RULES, "bob", [])
    assert (bob.rules, bob.allowed_models, bob.max_input_tokens_per_call) == (("all",), ["*"], 100)


def test_model_checks_cover_requested_and_upstream_models() -> None:
    dev = effective_policy(RULES, "carol", ["dev"])
    assert check_model(dev, "gpt-4o", "gpt-4o", ROUTE) is None
    assert check_model(dev, "gpt-5", "gpt-5", ROUTE).reason == "model_not_allowed"
    assert check_model(dev, "gpt-alias", "gpt-5-mini", ROUTE).reason == "model_not_allowed"
    assert check_model(dev, "claude-x", "claude-x", ROUTE).status == 403


def test_output_cap_clamps_or_denies() -> None:
    request = CanonicalRequest(protocol="openai_chat", model="m", max_tokens=5000)
    clamp = effective_policy([rule("c", max_output_tokens={"limit": 100})], "u", [])
    assert check_size(clamp, request, 10) == (None, 100)
    deny = effective_policy(
        [rule("d", max_output_tokens={"limit": 100, "action": "deny"})], "u", []
    )
    denial, clamp_to = check_size(deny, request, 10)
    assert denial is not None and denial.reason == "output_too_large" and clamp_to is None
    small = request.model_copy(update={"max_tokens": 50})
    assert check_size(deny, small, 10) == (None, None)
    assert check_size(effective_policy(RULES, "u", []), small, 101)[0].reason == "input_too_large"


def test_identity_precedence(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "k.db")
    key = keys.issue("kim", ["ml"])
    settings = IdentitySettings(
        default_user="anon",
        client_addresses={"10.0.0.0/8": "wide", "10.1.0.0/16": "narrow"},
        groups={"kim": ["staff"], "narrow": ["ops"]},
    )
    who = Identifier(settings, keys)
    bearer = [(b"Authorization", f"Bearer {key}".encode())]
    assert who.identify(bearer, "/", "proxyuser", "10.1.2.3").user == "kim"
    assert who.identify(bearer, "/", None, None).groups == ("ml", "staff")
    assert who.identify([], f"/v1beta/x?key={key}", None, None).user == "kim"
    assert who.identify([], "/", "proxyuser", "10.1.2.3").user == "proxyuser"
    narrow = who.identify([], "/", None, "10.1.2.3")
    assert (narrow.user, narrow.groups, narrow.source) == ("narrow", ("ops",), "client_address")
    assert who.identify([], "/", None, "10.9.9.9").user == "wide"
    assert who.identify([], "/", None, "192.168.1.1").user == "anon"
    keys.revoke(key)
    revoked = who.identify(bearer, "/", None, None)
    assert revoked.user is None and revoked.bad_key
    strict = Identifier(IdentitySettings(default_user=None), keys)
    assert strict.identify([], "/", None, "1.2.3.4").user is None
    assert key not in str(keys.list())  # hints only, never the key
