"""Who a caller is, and the virtual keys behind it, to the field: each test kills
mutants that test_policy's one precedence test lets through (see MUTATION.md)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from addon.config import IdentitySettings
from addon.identity import Caller, Identifier, find_virtual_key, has_stray_key
from addon.keys import KeyIdentity, KeyStore, hash_key, hint

KEY = "lg-abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture
def keys(tmp_path: Path):
    store = KeyStore(tmp_path / "keys.db")
    yield store
    store.close()


@pytest.mark.parametrize(
    ("headers", "path", "found"),
    [
        ([(b"Authorization", f"Bearer {KEY}".encode())], "/", KEY),
        ([(b"AUTHORIZATION", f"  BEARER \t {KEY}  ".encode())], "/", KEY),
        ([(b"authorization", f"Token {KEY}".encode())], "/", KEY),
        ([(b"x-api-key", KEY.encode())], "/", KEY),
        ([(b"X-Goog-Api-Key", b"LG-Upper-Case-Key")], "/", "LG-Upper-Case-Key"),
        ([(b"api-key", b"lg-")], "/", "lg-"),  # shaped like a key is enough: refuse it
        ([(b"Authorization", b"Bearer sk-provider-key")], "/", None),
        ([(b"x-api-key", b"sk-ant-1"), (b"api-key", f"{KEY}".encode())], "/", KEY),
        ([(b"X-Other", KEY.encode())], "/", None),  # not a credential slot
        ([(b"Authorization", f"Bearer {KEY} extra".encode())], "/", None),
        ([], f"/v1beta/m:generateContent?alt=sse&key={KEY}", KEY),
        ([], "/m?API_KEY=%20lg-percent%2Dencoded%20", "lg-percent-encoded"),
        ([], f"/m?apikey={KEY}", KEY),
        ([], f"/m?Access_Token={KEY}", KEY),
        ([], f"/m?other={KEY}", None),
        ([], "/m?key=AIza-provider", None),
        ([], f"/m#key={KEY}", None),
        ([(b"Authorization", b"Bearer sk-1")], f"/m?key={KEY}", KEY),
        ([(b"Host", b"h"), (b"User-Agent", b"u"), (b"x-api-key", KEY.encode())], "/", KEY),
        ([], f"/m?a=1?b&key={KEY}", KEY),  # the first "?" starts the query
        ([], f"/m?key={KEY}?x", f"{KEY}?x"),
    ],
)
def test_find_virtual_key(headers: list[tuple[bytes, bytes]], path: str, found: str | None) -> None:
    assert find_virtual_key(headers, path) == found


@pytest.mark.parametrize(
    ("headers", "path", "stray"),
    [
        ([(b"X-Trace", f"id {KEY}".encode())], "/", True),
        ([(b"Authorization", f"Bearer {KEY}".encode())], "/", False),
        ([(b"X-API-KEY", KEY.encode())], "/", False),
        ([(b"X-Trace", b"lg-short")], "/", False),
        ([(b"X-Trace", b"nothing here")], f"/m?key={KEY}", False),
        ([], f"/m?q={KEY}", True),
        ([], f"/m?KEY={KEY}&q=1", False),
        ([], "/m?q=lg-short", False),
        ([], f"/m{KEY}", False),
        ([], "/m?q=\udcff", False),  # a raw byte must not raise
        ([], f"/m?q=1?key={KEY}", True),  # the key sits inside the value of q
    ],
)
def test_has_stray_key(headers: list[tuple[bytes, bytes]], path: str, stray: bool) -> None:
    assert has_stray_key(headers, path) is stray


def test_identify_field_by_field(keys: KeyStore) -> None:
    key = keys.issue("kim", ["ml", "staff"])
    settings = IdentitySettings(
        default_user="anon",
        client_addresses={"10.0.0.0/8": "wide", "10.1.0.0/16": "narrow", "10.1.2.0/24": "tiny"},
        groups={"kim": ["staff", "ops"], "narrow": ["net"], "anon": ["guests"], "pat": ["p"]},
    )
    who = Identifier(settings, keys)
    bearer = [(b"Authorization", f"Bearer {key}".encode())]
    assert who.identify(bearer, "/", "pat", "10.1.2.3") == Caller(
        "kim", ("ml", "staff", "ops"), "virtual_key", True
    )
    assert who.identify(iter(bearer), "/", None, None) == Caller(
        "kim", ("ml", "staff", "ops"), "virtual_key", True
    )  # headers may be a one-shot iterable: both the stray and the key check read them
    assert who.identify([], "/", "pat", "10.1.2.3") == Caller("pat", ("p",), "proxy_auth")
    assert who.identify([], "/", "", "10.1.2.3") == Caller("tiny", (), "client_address")
    assert who.identify([], "/", None, "10.1.9.9") == Caller("narrow", ("net",), "client_address")
    assert who.identify([], "/", None, "10.200.0.1") == Caller("wide", (), "client_address")
    assert who.identify([], "/", None, "192.0.2.1") == Caller("anon", ("guests",), "default")
    assert who.identify([], "/", None, "not-an-ip") == Caller("anon", ("guests",), "default")
    assert who.identify([], "/", None, None) == Caller("anon", ("guests",), "default")
    assert who.identify([], "/", None, "") == Caller("anon", ("guests",), "default")


def test_a_bad_or_stray_key_is_refused_before_anything_else(keys: KeyStore) -> None:
    who = Identifier(IdentitySettings(default_user="anon"), keys)
    bad = [(b"x-api-key", b"lg-never-issued-000000")]
    assert who.identify(bad, "/", "pat", None) == Caller(
        None, (), "virtual_key", virtual_key=True, bad_key=True
    )
    stray = [(b"X-Forwarded", b"lg-abcdefghijkl")]
    assert who.identify(stray, "/", "pat", None) == Caller(None, (), "none", stray_key=True)
    assert who.identify([], "/?q=lg-abcdefghijkl", "pat", None) == Caller(
        None, (), "none", stray_key=True
    )
    # No key store at all: every key is one llmgate cannot vouch for.
    nokeys = Identifier(IdentitySettings(default_user="anon"), None)
    assert nokeys.identify(bad, "/", None, None) == Caller(
        None, (), "virtual_key", virtual_key=True, bad_key=True
    )


def test_no_default_user_refuses_the_unidentified() -> None:
    who = Identifier(
        IdentitySettings(default_user=None, client_addresses={"10.0.0.0/8": "ten"}), None
    )
    assert who.identify([], "/", None, "192.0.2.1") == Caller(None, (), "none")
    assert who.identify([], "/", None, "10.0.0.1") == Caller("ten", (), "client_address")
    assert Caller("u") == Caller("u", (), "default", False, False, False)


def test_an_ipv6_client_matches_its_network() -> None:
    settings = IdentitySettings(
        default_user=None, client_addresses={"2001:db8::/32": "v6", "2001:db8:1::/48": "v6-narrow"}
    )
    who = Identifier(settings, None)
    assert who.identify([], "/", None, "2001:db8:1::5") == Caller("v6-narrow", (), "client_address")
    assert who.identify([], "/", None, "2001:db8:2::5") == Caller("v6", (), "client_address")


def test_networks_with_host_bits_and_both_ip_versions() -> None:
    settings = IdentitySettings(
        default_user=None,
        client_addresses={"10.1.2.3/8": "ten", "2001:db8::1/32": "v6", "10.1.0.0/16": "ten-one"},
    )
    who = Identifier(settings, None)
    assert who.identify([], "/", None, "10.9.9.9") == Caller("ten", (), "client_address")
    assert who.identify([], "/", None, "10.1.9.9") == Caller("ten-one", (), "client_address")
    assert who.identify([], "/", None, "2001:db8::7") == Caller("v6", (), "client_address")


def test_hash_and_hint() -> None:
    assert hash_key("lg-test") == "879e9a36199fb7c93c28cd10434f123db487f5178a1cbd64a0d2d7300ab24cea"
    assert hint(KEY) == "lg-abcd…0123"


def test_issue_lookup_revoke_list(keys: KeyStore, tmp_path: Path) -> None:
    first = keys.issue("kim", ["ml", "staff"])
    second = keys.issue("lee", [])
    assert first.startswith("lg-") and len(first) == 35 and first != second
    assert keys.lookup(first) == KeyIdentity("kim", ("ml", "staff"))
    assert keys.lookup(second) == KeyIdentity("lee", ())
    assert keys.lookup("lg-never-issued") is None
    listed = keys.list()
    assert [(r["key_hint"], r["user"], r["groups"], r["revoked_at"]) for r in listed] == [
        (hint(first), "kim", '["ml", "staff"]', None),
        (hint(second), "lee", "[]", None),
    ]
    assert listed[0]["created_at"] <= listed[1]["created_at"]
    with closing(sqlite3.connect(tmp_path / "keys.db")) as conn:
        stored = conn.execute("select key_hash, key_hint from virtual_keys").fetchall()
    assert sorted(stored) == sorted(
        [(hash_key(first), hint(first)), (hash_key(second), hint(second))]
    )

    assert keys.revoke(hint(first)) == 1
    assert keys.lookup(first) is None
    assert keys.revoke(first) == 0  # already revoked: nothing to do
    assert keys.revoke(hash_key(second)) == 1
    assert keys.lookup(second) is None
    third = keys.issue("kim", ["ml"])
    assert keys.revoke(third) == 1
    assert keys.revoke("no-such-key") == 0
    revoked = [r for r in keys.list() if r["revoked_at"] is not None]
    assert len(revoked) == 3
    assert all(r["revoked_at"] >= r["created_at"] for r in revoked)


def test_a_key_store_reopens_with_its_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.db")
    key = store.issue("kim", ["ml"])
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.lookup(key)  # closed means closed
    again = KeyStore(tmp_path / "k.db")
    assert again.lookup(key) == KeyIdentity("kim", ("ml",))
    again.close()
