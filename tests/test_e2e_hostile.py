"""Hostile input through a running llmgate: every call is decided or refused, never passed.

Each refusal is checked three ways (`tests.hostile.assert_refused`): an error in the
caller's wire format carrying `x-llmgate-request-id`; a closed ledger row under that
id with the expected status, HTTP status and reason; and no request at the emulator.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from addon.keys import KeyStore
from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import Emulator
from tests.hostile import (
    CREDENTIAL_HEADER,
    EMULATOR_SERVER,
    ENDPOINTS,
    REQUEST_ID,
    WIRE,
    Listener,
    assert_refused,
    exchange,
    http_request,
    nested_array,
    nested_object,
    non_loopback_address,
    plain_exchange,
    valid_body,
    with_raw_member,
)
from tests.proxy import ROOT, Proxy

POLICY = """\
policies:
  - name: everyone
    applies_to: {users: ["*"]}
    denied_models: ["gpt-denied*", "claude-denied*", "gemini-denied*"]
  - name: one-shot
    applies_to: {users: [oneshot]}
    quota_windows: [{window_seconds: 3600, scope: user, max_requests: 1}]
  - name: batcher
    applies_to: {users: [batcher]}
    allowed_endpoints: ["/v1/batches*", "/v1/messages/batches*"]
  - name: token-budget
    applies_to: {users: [budgeter, budgeter2]}
    quota_windows: [{window_seconds: 3600, scope: user, max_output_tokens: 100}]
"""
PROTOCOLS = list(ENDPOINTS)
DEEP = 10_000
# A GitHub token of the right shape, assembled so no file holds one whole.
GITHUB_TOKEN = "ghp_" + "R8x2Kq7LmN4pZ0aB" + "c3D5eF6gH7iJ8kL9mN0o"
OPENAI_AUTH = f"Bearer {UPSTREAM_KEYS['UPSTREAM_OPENAI_KEY']}"


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory, emulator_server: Emulator) -> Path:
    directory = tmp_path_factory.mktemp("hostile-policies")
    (directory / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (directory / "policy.yaml").write_text(POLICY)
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    return directory


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-ledger") / "audit.db"


@pytest.fixture(scope="module")
def keys(hostile_db: Path) -> dict[str, str]:
    """Virtual keys, issued in the ledger file before the proxy starts."""
    store = KeyStore(hostile_db)
    try:
        return {
            "keyuser": store.issue("keyuser", ["hostile"]),
            "oneshot": store.issue("oneshot", []),
            "batcher": store.issue("batcher", []),
            "budgeter": store.issue("budgeter", []),
            "budgeter2": store.issue("budgeter2", []),
        }
    finally:
        store.close()


@pytest.fixture(scope="module")
def gate(
    hostile_dir: Path,
    hostile_db: Path,
    keys: dict[str, str],
    confdir: Path,
    emulator_server: Emulator,
) -> Iterator[Proxy]:
    with Proxy(
        hostile_dir, hostile_db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        yield running


def url(protocol: str, host: str | None = None, query: str = "") -> str:
    default_host, path = ENDPOINTS[protocol]
    return f"https://{host or default_host}{path}{query}"


def caller_headers(protocol: str, key: str = CALLER_KEY) -> dict[str, str]:
    name = CREDENTIAL_HEADER[protocol]
    value = f"Bearer {key}" if name == "authorization" else key
    return {name: value, "content-type": "application/json"}


def post(
    proxy: Proxy, target: str, content: bytes, headers: dict[str, str], **client: Any
) -> httpx2.Response:
    with proxy.http_client(timeout=30, **client) as http:
        return http.post(target, content=content, headers=headers)


def assert_forwarded(
    proxy: Proxy, emulator: Emulator, response: Any, *, user: str | None = None
) -> dict[str, Any]:
    """A 2xx the emulator produced, one hit, and a completed row."""
    assert response.status_code == 200, (response.status_code, response.content[:500])
    assert response.headers.get("server") == EMULATOR_SERVER
    row = proxy.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"]) == ("completed", 200), row
    if user is not None:
        assert row["user"] == user, row
    assert len(emulator.hits) == 1, [(h.method, h.path) for h in emulator.hits]
    return row


def assert_key_never_forwarded(emulator: Emulator, key: str) -> None:
    secret = key.removeprefix("lg-")
    for hit in emulator.hits:
        seen = json.dumps(hit.headers) + hit.path + hit.body.decode("utf-8", "replace")
        assert secret not in seen, hit
        assert "lg-" not in seen.lower(), hit


# --- 1. tool arguments nested 10,000 deep --------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai_chat", "openai_responses"])
def test_tool_call_arguments_nested_10000_deep_are_refused(
    protocol: str, gate: Proxy, emulator: Emulator
) -> None:
    """The arguments are a JSON *string*: the body is shallow, its payload is not."""
    arguments = nested_array(DEEP)
    if protocol == "openai_chat":
        body = valid_body(protocol)
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        body["messages"] += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    else:
        body = valid_body(protocol)
        body["input"] = [
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": arguments},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ]
    response = post(gate, url(protocol), json.dumps(body).encode(), caller_headers(protocol))
    assert_refused(gate, emulator, response, wire="openai", status=400,
                   reason=("invalid_request", "invalid_json"), outcome="failed")  # fmt: skip


def test_anthropic_tool_use_input_nested_10000_deep_is_refused(
    gate: Proxy, emulator: Emulator
) -> None:
    head = json.dumps(
        {
            "model": "claude-haiku-4-5",
            "max_tokens": 16,
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": "@@"}],
                },
            ],
        }  # fmt: skip
    )
    raw = head.replace('"@@"', nested_object(DEEP)).encode()
    response = post(gate, url("anthropic_messages"), raw, caller_headers("anthropic_messages"))
    assert_refused(gate, emulator, response, wire="anthropic", status=400,
                   reason=("invalid_request", "invalid_json"), outcome="failed")  # fmt: skip


# --- 2. a body nested 10,000 deep, each protocol -----------------------------------------


@pytest.mark.parametrize("shape", ["array", "object"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_body_nested_10000_deep_is_refused(
    protocol: str, shape: str, gate: Proxy, emulator: Emulator
) -> None:
    deep = nested_array(DEEP) if shape == "array" else nested_object(DEEP)
    raw = with_raw_member(valid_body(protocol), "metadata", deep)
    response = post(gate, url(protocol), raw, caller_headers(protocol))
    assert_refused(gate, emulator, response, wire=WIRE[protocol], status=400,
                   reason=("invalid_request", "invalid_json"), outcome="failed")  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nesting_just_past_the_limit_is_refused_and_just_within_is_not(
    protocol: str, gate: Proxy, emulator: Emulator
) -> None:
    """129 levels (128 is the documented limit) is refused; a tree of 100 goes through."""
    raw = deep_body(protocol, 129)
    response = post(gate, url(protocol), raw, caller_headers(protocol))
    assert_refused(gate, emulator, response, wire=WIRE[protocol], status=400,
                   reason=("invalid_request", "invalid_json"), outcome="failed")  # fmt: skip
    raw = deep_body(protocol, 100)
    assert_forwarded(gate, emulator, post(gate, url(protocol), raw, caller_headers(protocol)))


def deep_body(protocol: str, depth: int) -> bytes:
    """A valid call with a member nested `depth` levels, where the protocol allows free JSON:
    `metadata`, or for Gemini (which has no such field) a response JSON schema."""
    if protocol == "gemini":
        schema = '{"responseJsonSchema":' + nested_object(depth - 1) + "}"
        return with_raw_member(valid_body(protocol), "generationConfig", schema)
    return with_raw_member(valid_body(protocol), "metadata", nested_object(depth))


# --- 3. a raw 0xFF byte in the request target ----------------------------------------------


@pytest.mark.parametrize(
    ("target", "model"),
    [
        (b"/v1/chat/completions?x=\xff", "gpt-4o-mini"),
        (b"/v1/chat/completions?x=\xff&key=y", "gpt-4o-mini"),
        (b"/v1/chat/completions?x=\xff&key=y", "byok-model"),
        (b"/v1/chat/\xff", "gpt-4o-mini"),
    ],
    ids=["query", "query-with-key", "query-with-key-passthrough-route", "path"],
)
def test_a_raw_0xff_byte_in_the_target_is_refused(
    target: bytes, model: str, gate: Proxy, emulator: Emulator
) -> None:
    body = json.dumps(valid_body("openai_chat", model)).encode()
    request = http_request("POST", target, "api.openai.com", body,
                           {"authorization": f"Bearer {CALLER_KEY}"})  # fmt: skip
    response = exchange(gate, "api.openai.com:443", request, sni="api.openai.com")
    row = assert_refused(gate, emulator, response, wire="openai", status=400,
                         reason="invalid_request_target", outcome="failed")  # fmt: skip
    assert CALLER_KEY not in json.dumps(row)


# --- 4. encodings and ambiguous JSON ---------------------------------------------------------


def _encodings(protocol: str) -> dict[str, bytes]:
    text = json.dumps(valid_body(protocol))
    surrogate = json.dumps(valid_body(protocol, text="@@")).replace("@@", "\\ud800")
    if protocol == "gemini":
        first = json.dumps(valid_body(protocol, text="first"))[1:-1]
        duplicate = "{" + first + ", " + first.replace("first", "second") + "}"
    else:
        denied = {"openai_chat": "gpt-denied", "openai_responses": "gpt-denied",
                  "anthropic_messages": "claude-denied"}[protocol]  # fmt: skip
        duplicate = f'{{"model": "{denied}", ' + text[1:]
    return {
        "utf8-bom": b"\xef\xbb\xbf" + text.encode(),
        "utf16le-bom": b"\xff\xfe" + text.encode("utf-16-le"),
        "utf16le": text.encode("utf-16-le"),
        "utf16be-bom": b"\xfe\xff" + text.encode("utf-16-be"),
        "utf32le": text.encode("utf-32-le"),
        "lone-surrogate": surrogate.encode(),
        "low-surrogate": surrogate.replace("\\ud800", "\\udfff").encode(),
        "duplicate-keys": duplicate.encode(),
        "latin1": json.dumps(valid_body(protocol, text="caf\u00e9"), ensure_ascii=False).encode(
            "latin-1"
        ),
    }


ENCODINGS = list(_encodings("openai_chat"))


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ambiguous_bodies_are_refused(
    protocol: str, encoding: str, gate: Proxy, emulator: Emulator
) -> None:
    raw = _encodings(protocol)[encoding]
    response = post(gate, url(protocol), raw, caller_headers(protocol))
    assert_refused(gate, emulator, response, wire=WIRE[protocol], status=400,
                   reason=("invalid_json", "invalid_request"), outcome="failed")  # fmt: skip


def test_the_duplicate_key_body_is_really_two_readings(gate: Proxy, emulator: Emulator) -> None:
    """Guard for the case above: each reading alone is decided differently."""
    headers = caller_headers("openai_chat")
    denied = post(gate, url("openai_chat"), json.dumps(valid_body("openai_chat", "gpt-denied"))
                  .encode(), headers)  # fmt: skip
    assert denied.status_code == 403
    allowed = post(gate, url("openai_chat"), json.dumps(valid_body("openai_chat")).encode(),
                   headers)  # fmt: skip
    assert_forwarded(gate, emulator, allowed)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_non_json_number_literals_are_refused(
    protocol: str, literal: str, gate: Proxy, emulator: Emulator
) -> None:
    """Python's json reads NaN and Infinity; RFC 8259 has no such tokens, and a strict
    upstream parser refuses them: two readers, two readings, like a BOM."""
    body = valid_body(protocol)
    if protocol == "gemini":
        body["generationConfig"] = {"temperature": "@@"}
    else:
        body["temperature"] = "@@"
    raw = json.dumps(body).replace('"@@"', literal).encode()
    response = post(gate, url(protocol), raw, caller_headers(protocol))
    assert_refused(gate, emulator, response, wire=WIRE[protocol], status=400,
                   reason=("invalid_json", "invalid_request"), outcome="failed")  # fmt: skip


# --- 5. host aliases ------------------------------------------------------------------------


def _alias_urls(port: int) -> dict[str, str]:
    path = "/v1/chat/completions"
    return {
        "trailing-dot": f"https://api.openai.com.{path}",
        "upper-case": f"https://API.OPENAI.COM{path}",
        "mixed-case-dot": f"https://Api.OpenAI.Com.{path}",
        "http-localhost": f"http://localhost:{port}{path}",
        "https-localhost": f"https://localhost:{port}{path}",
        "http-127.0.0.2": f"http://127.0.0.2:{port}{path}",
        "https-127.0.0.1": f"https://127.0.0.1:{port}{path}",
        "http-[::ffff:127.0.0.1]": f"http://[::ffff:127.0.0.1]:{port}{path}",
        "http-[::1]": f"http://[::1]:{port}{path}",
    }


ALIASES = list(_alias_urls(1))


def send_to_alias(proxy: Proxy, target: str, body: bytes, headers: dict[str, str]) -> Any:
    """httpx2 for most; a raw absolute-form request for IPv6 literals, because httpx2
    writes `http://::1:port/...` without the brackets and mitmproxy rightly refuses it."""
    if "//[" not in target:
        return post(proxy, target, body, headers)
    host = target.split("/")[2]
    return plain_exchange(proxy, http_request("POST", target, host, body, headers))


@pytest.mark.parametrize("alias", ALIASES)
def test_host_aliases_are_intercepted_and_denied(
    alias: str, gate: Proxy, emulator: Emulator
) -> None:
    target = _alias_urls(emulator.port)[alias]
    body = json.dumps(valid_body("openai_chat", "gpt-denied-4")).encode()
    response = send_to_alias(gate, target, body, caller_headers("openai_chat"))
    assert_refused(gate, emulator, response, wire="openai", status=403,
                   reason="model_not_allowed", outcome="denied")  # fmt: skip


@pytest.mark.parametrize("alias", ALIASES)
def test_host_aliases_are_routed_and_re_keyed(
    alias: str, gate: Proxy, emulator: Emulator, keys: dict[str, str]
) -> None:
    target = _alias_urls(emulator.port)[alias]
    body = json.dumps(valid_body("openai_chat")).encode()
    response = send_to_alias(gate, target, body, caller_headers("openai_chat", keys["keyuser"]))
    row = assert_forwarded(gate, emulator, response, user="keyuser")
    assert row["route"] == "openai"
    assert emulator.hits[0].headers["authorization"] == OPENAI_AUTH
    assert_key_never_forwarded(emulator, keys["keyuser"])


@pytest.mark.parametrize("spelling", ["127.1", "2130706433", "0x7f000001", "0177.0.0.1"])
def test_legacy_ipv4_spellings_of_a_route_endpoint_are_intercepted(
    spelling: str, gate: Proxy, emulator: Emulator
) -> None:
    """inet_aton (and so the proxy's resolver) reads each of these as 127.0.0.1, the
    route endpoint's address: a CONNECT to it is a CONNECT to the emulator.

    The client trusts both the proxy's CA and the emulator's own, so that a tunnel
    llmgate did not decrypt shows up as the emulator's reply, not as a TLS failure.
    """
    context = gate.ssl_context()
    context.load_verify_locations(emulator.ca_path)
    context.check_hostname = False
    body = json.dumps(valid_body("openai_chat", "gpt-denied-4")).encode()
    request = http_request("POST", "/v1/chat/completions", f"{spelling}:{emulator.port}", body,
                           {"authorization": f"Bearer {CALLER_KEY}"})  # fmt: skip
    try:
        response = exchange(gate, f"{spelling}:{emulator.port}", request, context=context)
    except OSError as exc:
        # Refused at the connection, before any TLS: the only refusal an opaque
        # tunnel allows. Nothing may have reached the emulator, and it is recorded.
        assert emulator.hits == [], exc
        deadline = time.monotonic() + 10
        while not (rows := gate.query("select * from requests where host = ?", spelling)):
            assert time.monotonic() < deadline, f"refused ({exc!r}) but not recorded"
            time.sleep(0.05)
        assert [(r["status"], r["reason"]) for r in rows] == [("denied", "undecided_connection")]
        return
    assert_refused(gate, emulator, response, wire="openai", status=403,
                   reason="model_not_allowed", outcome="denied")  # fmt: skip


# --- 6. CONNECT target is not the TLS server name ---------------------------------------------


def test_connect_to_one_host_with_tls_for_an_llm_host_is_misdirected(
    gate: Proxy, emulator: Emulator
) -> None:
    with Listener(non_loopback_address()) as listener:
        body = json.dumps(valid_body("openai_chat")).encode()
        request = http_request("POST", "/v1/chat/completions", "api.openai.com", body,
                               {"authorization": f"Bearer {CALLER_KEY}"})  # fmt: skip
        target = f"{listener.host}:{listener.port}"
        response = exchange(gate, target, request, sni="api.openai.com")
        assert_refused(gate, emulator, response, wire="openai", status=421,
                       reason="misdirected_request", outcome="denied")  # fmt: skip
        time.sleep(0.3)
        assert bytes(listener.received) == b""
        assert listener.connections == 0


def test_connect_to_one_host_with_an_llm_host_header_in_plain_http_is_not_forwarded(
    gate: Proxy, emulator: Emulator
) -> None:
    """No TLS at all in the tunnel: only the Host header names the LLM host."""
    with Listener(non_loopback_address()) as listener:
        body = json.dumps(valid_body("openai_chat")).encode()
        request = http_request("POST", "/v1/chat/completions", "api.openai.com", body,
                               {"authorization": f"Bearer {CALLER_KEY}"})  # fmt: skip
        try:
            response = exchange(
                gate, f"{listener.host}:{listener.port}", request, tls=False, timeout=3
            )
        except OSError as exc:  # the listener never answers; a refusal would have
            response = exc
        time.sleep(0.3)
        leaked = bytes(listener.received)
        assert leaked == b"", f"the other host got the call: {leaked[:300]!r}"
        assert not isinstance(response, OSError), response
        assert_refused(gate, emulator, response, wire="openai", status=421,
                       reason="misdirected_request", outcome="denied")  # fmt: skip


# --- 7. virtual key spellings ---------------------------------------------------------------


def _spellings(key: str) -> dict[str, tuple[str, dict[str, str], str]]:
    """name -> (protocol, headers, query)."""
    encoded = "%6C" + key[1:]
    return {
        "BEARER": ("openai_chat", {"authorization": f"BEARER {key}"}, ""),
        "Bearer-tab": ("openai_chat", {"authorization": f"Bearer\t{key}"}, ""),
        "Token": ("openai_chat", {"authorization": f"Token {key}"}, ""),
        "bearer-spaces": ("openai_chat", {"authorization": f"bearer   {key}"}, ""),
        "bare-authorization": ("openai_responses", {"authorization": key}, ""),
        "x-api-key": ("anthropic_messages", {"x-api-key": key}, ""),
        "X-Api-Key-on-openai": ("openai_chat", {"X-Api-Key": key}, ""),
        "x-goog-api-key": ("gemini", {"x-goog-api-key": key}, ""),
        "api-key": ("openai_chat", {"api-key": key}, ""),
        "query-key-encoded": ("gemini", {}, f"?key={encoded}"),
        "query-KEY-upper": ("gemini", {}, f"?alt=json&KEY={key}"),
    }


SPELLINGS = list(_spellings("lg-x"))
UPSTREAM_CREDENTIAL = {
    "openai_chat": ("authorization", OPENAI_AUTH),
    "openai_responses": ("authorization", OPENAI_AUTH),
    "anthropic_messages": ("x-api-key", UPSTREAM_KEYS["UPSTREAM_ANTHROPIC_KEY"]),
    "gemini": ("x-goog-api-key", UPSTREAM_KEYS["UPSTREAM_GEMINI_KEY"]),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_a_virtual_key_identifies_and_is_re_keyed(
    spelling: str, gate: Proxy, emulator: Emulator, keys: dict[str, str]
) -> None:
    protocol, headers, query = _spellings(keys["keyuser"])[spelling]
    body = json.dumps(valid_body(protocol)).encode()
    response = post(
        gate, url(protocol, query=query), body, {**headers, "content-type": "application/json"}
    )
    row = assert_forwarded(gate, emulator, response, user="keyuser")
    assert row["groups"] == "hostile"
    name, value = UPSTREAM_CREDENTIAL[protocol]
    assert emulator.hits[0].headers[name] == value
    assert "key=" not in emulator.hits[0].path.lower()
    assert_key_never_forwarded(emulator, keys["keyuser"])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_an_unknown_virtual_key_is_refused(
    spelling: str, gate: Proxy, emulator: Emulator
) -> None:
    unknown = "lg-" + "Zq9" * 11
    protocol, headers, query = _spellings(unknown)[spelling]
    body = json.dumps(valid_body(protocol)).encode()
    response = post(
        gate, url(protocol, query=query), body, {**headers, "content-type": "application/json"}
    )
    row = assert_refused(gate, emulator, response, wire=WIRE[protocol], status=401,
                         reason="unauthenticated", outcome="denied")  # fmt: skip
    assert unknown[3:] not in json.dumps(row)


@pytest.mark.parametrize(
    ("protocol", "headers", "query"),
    [
        ("openai_chat", {"x-note": "lg-abcdefghijklmnop"}, ""),
        ("openai_chat", {"x-note": "see LG-ABCDEFGHIJKLMNOP here"}, ""),
        ("anthropic_messages", {"anthropic-beta": "lg-abcdefghijklmnop"}, ""),
        ("openai_chat", {}, "?note=lg-abcdefghijklmnop"),
        ("gemini", {}, "?alt=json&note=%6Cg-abcdefghijklmnop"),
    ],
    ids=["x-note", "x-note-upper", "anthropic-beta", "query-note", "query-note-encoded"],
)
def test_a_key_shaped_token_outside_the_credential_slots_is_refused(
    protocol: str, headers: dict[str, str], query: str, gate: Proxy, emulator: Emulator
) -> None:
    body = json.dumps(valid_body(protocol)).encode()
    all_headers = {**caller_headers(protocol), **headers}
    response = post(gate, url(protocol, query=query), body, all_headers)
    assert_refused(gate, emulator, response, wire=WIRE[protocol], status=401,
                   reason="unauthenticated", outcome="denied")  # fmt: skip


# --- 8. endpoints llmgate does not parse ------------------------------------------------------


UNPARSED = {
    "openai-batches": ("https://api.openai.com/v1/batches", "openai",
                       "authorization", OPENAI_AUTH),
    "anthropic-batches": ("https://api.anthropic.com/v1/messages/batches", "anthropic",
                          "x-api-key", UPSTREAM_KEYS["UPSTREAM_ANTHROPIC_KEY"]),
}  # fmt: skip
BATCH = json.dumps({"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}).encode()


def _key_headers(wire: str, key: str) -> dict[str, str]:
    if wire == "anthropic":
        return {"x-api-key": key, "content-type": "application/json"}
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


@pytest.mark.parametrize("endpoint", list(UNPARSED))
def test_unparsed_endpoint_with_a_virtual_key_is_refused(
    endpoint: str, gate: Proxy, emulator: Emulator, keys: dict[str, str]
) -> None:
    target, wire, _, _ = UNPARSED[endpoint]
    response = post(gate, target, BATCH, _key_headers(wire, keys["keyuser"]))
    assert_refused(gate, emulator, response, wire=wire, status=403,
                   reason="endpoint_not_allowed", outcome="denied")  # fmt: skip


@pytest.mark.parametrize("endpoint", list(UNPARSED))
def test_unparsed_endpoint_allowed_by_policy_goes_with_the_route_secret(
    endpoint: str, gate: Proxy, emulator: Emulator, keys: dict[str, str]
) -> None:
    target, wire, header, secret = UNPARSED[endpoint]
    response = post(gate, target, BATCH, _key_headers(wire, keys["batcher"]))
    assert REQUEST_ID in response.headers
    assert response.headers.get("server") == EMULATOR_SERVER  # the emulator's own 404
    row = gate.row(response.headers[REQUEST_ID])
    assert (row["user"], row["protocol"], row["http_status"]) == (
        "batcher", "other", response.status_code,
    )  # fmt: skip
    assert len(emulator.hits) == 1
    assert emulator.hits[0].headers[header] == secret
    assert emulator.hits[0].path == target.split(".com", 1)[1]
    assert_key_never_forwarded(emulator, keys["batcher"])


def test_unparsed_endpoint_with_the_callers_own_key_goes_to_the_named_host(
    gate: Proxy, emulator: Emulator
) -> None:
    target = f"https://localhost:{emulator.port}/v1/batches"
    response = post(gate, target, BATCH, _key_headers("openai", CALLER_KEY))
    assert REQUEST_ID in response.headers
    assert response.headers.get("server") == EMULATOR_SERVER
    row = gate.row(response.headers[REQUEST_ID])
    assert (row["user"], row["protocol"], row["path"]) == ("anonymous", "other", "/v1/batches")
    assert len(emulator.hits) == 1
    assert emulator.hits[0].headers["authorization"] == f"Bearer {CALLER_KEY}"


# --- 9. a secret in a custom header ------------------------------------------------------


def test_a_github_token_in_a_custom_header_is_blocked_and_never_stored(
    gate: Proxy, emulator: Emulator
) -> None:
    headers = {**caller_headers("openai_chat"), "x-debug": GITHUB_TOKEN}
    body = json.dumps(valid_body("openai_chat")).encode()
    response = post(gate, url("openai_chat"), body, headers)
    assert_refused(gate, emulator, response, wire="openai", status=400,
                   reason="safety_block", outcome="denied")  # fmt: skip
    assert GITHUB_TOKEN not in response.text
    request_id = response.headers[REQUEST_ID]
    deadline = time.monotonic() + 10
    while not (found := gate.query("select * from findings where request_id = ?", request_id)):
        assert time.monotonic() < deadline, "no findings row"
        time.sleep(0.05)
    assert {(f["detector"], f["action"], f["phase"]) for f in found} == {
        ("github_token", "block", "request")
    }
    assert found[0]["location"] == "header x-debug"
    gate.payload(request_id)  # the payload row is written too
    stored = b"".join(
        p.read_bytes() for p in sorted(gate.db.parent.glob("audit.db*")) if p.is_file()
    )
    assert GITHUB_TOKEN.encode() not in stored
    assert GITHUB_TOKEN[4:].encode() not in stored
    conn = sqlite3.connect(gate.db)
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    stored = b"".join(
        p.read_bytes() for p in sorted(gate.db.parent.glob("audit.db*")) if p.is_file()
    )
    assert GITHUB_TOKEN[4:].encode() not in stored
    assert GITHUB_TOKEN[4:] not in gate.log()


# --- 10. a quota of one request --------------------------------------------------------------


def test_a_quota_of_one_request_refuses_the_second(
    gate: Proxy, emulator: Emulator, keys: dict[str, str]
) -> None:
    body = json.dumps(valid_body("openai_chat")).encode()
    headers = caller_headers("openai_chat", keys["oneshot"])
    first = post(gate, url("openai_chat"), body, headers)
    assert_forwarded(gate, emulator, first, user="oneshot")
    second = post(gate, url("openai_chat"), body, headers)
    row = assert_refused(gate, emulator, second, wire="openai", status=429,
                         reason="quota_exceeded", outcome="denied", hits_before=1)  # fmt: skip
    assert row["user"] == "oneshot"
    retry_after = second.headers["retry-after"]
    assert retry_after.isdigit() and 0 < int(retry_after) <= 3600


def test_a_negative_max_tokens_does_not_make_room_in_a_token_budget(
    gate: Proxy, emulator: Emulator, keys: dict[str, str]
) -> None:
    """Budget: 100 output tokens. A call asking for max_tokens=-1,000,000 is sent first
    (a slow stream, if admitted); then two calls asking for 100 each must not both be
    admitted. The negative call may be refused outright (400) or admitted; admitted,
    it must not have reserved negative room while the others were decided."""
    headers = caller_headers("openai_chat", keys["budgeter"])
    negative = {**valid_body("openai_chat"), "max_tokens": -1_000_000, "stream": True}
    slow = {**headers, "x-emulator-pause-ms": "800", "x-emulator-chunks": "3"}
    hundred = json.dumps({**valid_body("openai_chat"), "max_tokens": 100}).encode()
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, gate, url("openai_chat"), json.dumps(negative).encode(), slow)
        deadline = time.monotonic() + 10
        while not in_flight.done() and not emulator.hits:
            assert time.monotonic() < deadline, "the negative call neither ran nor ended"
            time.sleep(0.01)
        first = post(gate, url("openai_chat"), hundred, headers)
        second = post(gate, url("openai_chat"), hundred, headers)
        answered = time.monotonic()
        refused_or_sent = in_flight.result()
    if refused_or_sent.status_code == 200:
        # It was in flight, its reservation held, when the second call was decided.
        assert emulator.hits[0].events_sent[-1] > answered
        hits_before = 2
    else:
        row = gate.row(refused_or_sent.headers[REQUEST_ID])
        assert (refused_or_sent.status_code, row["status"]) == (400, "failed"), row
        hits_before = 1
    assert first.status_code == 200, first.text
    assert_refused(gate, emulator, second, wire="openai", status=429,
                   reason="quota_exceeded", outcome="denied", hits_before=hits_before)  # fmt: skip


def test_a_token_budget_refuses_the_second_hundred(
    gate: Proxy, emulator: Emulator, keys: dict[str, str]
) -> None:
    """The control for the case above: without the negative call, the second is refused."""
    headers = caller_headers("openai_chat", keys["budgeter2"])
    hundred = json.dumps({**valid_body("openai_chat"), "max_tokens": 100}).encode()
    assert post(gate, url("openai_chat"), hundred, headers).status_code == 200
    second = post(gate, url("openai_chat"), hundred, headers)
    assert_refused(gate, emulator, second, wire="openai", status=429,
                   reason="quota_exceeded", outcome="denied", hits_before=1)  # fmt: skip
