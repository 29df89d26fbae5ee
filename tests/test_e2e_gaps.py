"""Tests that bite (issue 10): behaviours a review found could break with every test green.

Each test here runs through a real mitmdump with llmgate, the emulator as the
upstream, and reads the ledger (and the quota file) the proxy wrote. Expected
values are literals worked out by hand, never computed with llmgate's code.
tests/mutations/check.sh applies the mutation each test is meant to catch and
checks that the test then fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import Emulator
from tests.hostile import ENDPOINTS, REQUEST_ID, WIRE, assert_refused
from tests.proxy import Proxy
from tests.strict import wait_until

HELLO = [{"role": "user", "content": "hi"}]
CHAT = "https://api.openai.com/v1/chat/completions"
RESPONSES = "https://api.openai.com/v1/responses"
MESSAGES = "https://api.anthropic.com/v1/messages"
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"

# A fake GitHub token (ghp_ + 36 characters, mixed case and digits: the default
# policy blocks it in prompts), assembled so that no file holds one whole.
SECRET = "ghp_" + "Xq7Lm2Rv9Tb4Nc8Kd1Wf" + "6Hj3Gp5Ys0Ze7Ua2"

GAPS_POLICY = """\
audit: {{payload_max_bytes: 64}}
routes:
  # An OpenAI-compatible vendor serving Claude (as OpenRouter does), which reports
  # explicit cache writes in the OpenAI usage object.
  # Only for OpenAI callers: Anthropic callers of claude-* keep their own route.
  - {{id: openrouter-claude, model_pattern: "claude-*", provider: openai,
     endpoint: "{emulator_url}", api_key_secret: UPSTREAM_OPENAI_KEY,
     callers: [openai_chat, openai_responses]}}
policies:
  - name: tight-output
    applies_to: {{users: [settle-failed, settle-reset, settle-cancelled]}}
    quota_windows: [{{window_seconds: 3600, scope: user, max_output_tokens: 150}}]
  - name: cost-budget
    applies_to: {{users: [coster]}}
    quota_windows: [{{window_seconds: 3600, scope: user, max_cost_usd: 5}}]
  - name: openai-route-only
    applies_to: {{users: [route-limited]}}
    allowed_routes: [openai]
  - name: anthropic-only
    applies_to: {{users: [provider-limited]}}
    allowed_providers: [anthropic]
  - name: parsed-only
    applies_to: {{users: [no-unparsed]}}
    allow_unparsed: false
"""
USERS = (
    "settle-failed", "settle-reset", "settle-cancelled", "coster",
    "route-limited", "provider-limited", "no-unparsed",
)  # fmt: skip


@pytest.fixture(scope="module")
def gaps(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("gaps-policies")
    (directory / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (directory / "gaps.yaml").write_text(GAPS_POLICY.format(emulator_url=emulator_server.url))
    db = tmp_path_factory.mktemp("gaps-ledger") / "audit.db"
    # The usual umask, so that the HMAC key's 0600 is llmgate's doing, not the umask's.
    old = os.umask(0o022)
    try:
        proxy = Proxy(
            directory, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
        ).start()
    finally:
        os.umask(old)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def keys(gaps: Proxy) -> dict[str, str]:
    """A virtual key per user, issued with the real `llmgate keys issue` (all at once:
    each command is a Python start-up)."""
    cli = [sys.executable, "-m", "addon.cli", "--db", str(gaps.db), "keys", "issue"]
    running = {
        user: subprocess.Popen([*cli, user], stdout=subprocess.PIPE, text=True) for user in USERS
    }
    issued = {}
    for user, process in running.items():
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, (user, out)
        issued[user] = out.strip().splitlines()[-1]
    return issued


def oa(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, http_client=proxy.http_client(), max_retries=0)


def post(
    proxy: Proxy, url: str, body: bytes | dict[str, Any], headers: dict[str, str]
) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with proxy.http_client(timeout=30) as client:
        return client.post(
            url, content=content, headers={"content-type": "application/json", **headers}
        )


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- 1. a failed or cancelled call's reservation is settled ------------------------------
#
# The tight-output window allows 150 output tokens an hour; each call here reserves
# its max tokens, 100. Settled, a call that broke counts only what it used (well
# under 50), so the next call fits: used + 100 <= 150. Left reserved, it counts 100,
# and 100 + 100 > 150 refuses the next call with 429.


def quota_rows(proxy: Proxy, reservation_id: str) -> list[tuple[int, int, int, int]]:
    """(settled, requests, input_tokens, output_tokens) of a reservation, per scope key."""
    conn = sqlite3.connect(f"file:{proxy.db}.quota?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(
            "select settled, requests, input_tokens, output_tokens from quota_ledger"
            " where reservation_id = ?",
            (reservation_id,),
        ).fetchall()
    finally:
        conn.close()


def settled_rows(proxy: Proxy, reservation_id: str) -> list[tuple[int, int, int, int]]:
    """The reservation's rows once settled (settles are batched 20 ms after the call)."""
    deadline = time.monotonic() + 3
    while True:
        rows = quota_rows(proxy, reservation_id)
        if rows and all(settled == 1 for settled, *_ in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"reservation {reservation_id} never settled: {rows}")
        time.sleep(0.05)


def assert_next_call_fits(proxy: Proxy, key: str, remaining: int) -> None:
    """The next call (100 reserved) is admitted, leaving `remaining` output tokens."""
    raw = oa(proxy, key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, max_completion_tokens=100
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-llmgate-ratelimit-remaining-output-tokens"] == str(remaining)


def test_an_upstream_error_settles_its_reservation_to_nothing(
    gaps: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        oa(gaps, keys["settle-failed"]).chat.completions.create(
            model="gpt-4o", messages=HELLO, max_completion_tokens=100,
            extra_headers={"x-emulator-status": "500"},
        )  # fmt: skip
    failed = err.value.response.headers[REQUEST_ID]
    row = gaps.row(failed)
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 500, "upstream_error")
    # The upstream answered an error: one request, no tokens, nothing reserved.
    assert settled_rows(gaps, failed) == [(1, 1, 0, 0)]
    # 150 - 0 (the failed call, settled) - 100 (this call, reserved) = 50.
    assert_next_call_fits(gaps, keys["settle-failed"], 50)


def test_a_stream_the_upstream_breaks_settles_to_what_arrived(
    gaps: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "max_completion_tokens": 100, "stream": True}
    headers = {**bearer(keys["settle-reset"]), "x-emulator-reset-after": "2"}
    response = post(gaps, CHAT, body, headers)
    assert response.status_code == 200
    assert b'"upstream_reset"' in response.content  # the stream's own error event
    broken = response.headers[REQUEST_ID]
    row = gaps.row(broken)
    assert (row["status"], row["reason"]) == ("failed", "upstream_reset")
    # Two events arrived: the role chunk and "Hello from " (the reply's first third),
    # so the estimate is ceil(len("hi") / 4) = 1 in and ceil(11 / 4) = 3 out.
    assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == ("estimated", 1, 3)
    assert settled_rows(gaps, broken) == [(1, 1, 1, 3)]
    assert_next_call_fits(gaps, keys["settle-reset"], 47)  # 150 - 3 - 100


def test_a_stream_the_client_abandons_settles_to_what_arrived(
    gaps: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "max_completion_tokens": 100, "stream": True}
    headers = {
        **bearer(keys["settle-cancelled"]),
        "content-type": "application/json",
        "x-emulator-pause-ms": "300",
        "x-emulator-chunks": "6",
    }
    with (
        gaps.http_client(timeout=30) as client,
        client.stream("POST", CHAT, content=json.dumps(body).encode(), headers=headers) as resp,
    ):
        cancelled = resp.headers[REQUEST_ID]
        next(line for line in resp.iter_lines() if line.startswith("data:"))
    row = gaps.row(cancelled)
    assert row["status"] == "cancelled"
    # What arrived before the client left (one or two events) is estimated: a few tokens.
    [(settled, requests, _, output)] = settled_rows(gaps, cancelled)
    assert (settled, requests) == (1, 1) and output == row["output_tokens"] <= 5
    assert_next_call_fits(gaps, keys["settle-cancelled"], 50 - output)


# --- 2. OpenAI usage with explicit cache writes -------------------------------------------
#
# The emulator reports prompt_tokens = len(body) // 4 + 1 for the bytes it received
# (the caller's, unchanged on this route), 12 of them written to the cache
# (x-emulator-cache-write-tokens) and 10 output tokens. claude-haiku-4-5 in
# addon/ledger/data/pricing.yaml: input 1.00, output 5.00, cache_write 1.25 $/1M. So
#   cost = (P - 12) * 1.00 + 12 * 1.25 + 10 * 5.00 = P + 53 millionths of a dollar,
# where a reader that dropped the writes would charge P * 1.00 + 50 = P + 50.

CACHE_CASES = {
    # name: (url, body, its length, P = length // 4 + 1, cost = (P + 53) / 1e6)
    "chat": (
        CHAT,
        b'{"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Say hello"}]}',
        85, 22, 0.000075,  # 85 // 4 + 1 = 22; 22 + 53 = 75
    ),
    "chat-stream": (
        CHAT,
        b'{"model": "claude-haiku-4-5", "stream": true, "stream_options": {"include_usage": true},'
        b' "messages": [{"role": "user", "content": "Say hello"}]}',
        144, 37, 0.00009,  # 144 // 4 + 1 = 37; 37 + 53 = 90
    ),
    "responses": (
        RESPONSES,
        b'{"model": "claude-haiku-4-5", "input": "Say hello"}',
        51, 13, 0.000066,  # 51 // 4 + 1 = 13; 13 + 53 = 66
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_openai_cache_writes_are_recorded_and_priced(
    case: str, gaps: Proxy, emulator: Emulator
) -> None:
    url, body, length, prompt_tokens, cost = CACHE_CASES[case]
    assert len(body) == length
    headers = {
        **bearer(CALLER_KEY),
        "x-emulator-cache-write-tokens": "12",
        "x-emulator-output-tokens": "10",
    }
    response = post(gaps, url, body, headers)
    assert response.status_code == 200, response.text
    assert emulator.hits[-1].body == body  # what the emulator's count is of
    row = gaps.row(response.headers[REQUEST_ID])
    assert (row["route"], row["status"], row["usage_source"]) == (
        "openrouter-claude", "completed", "reported",
    )  # fmt: skip
    assert (row["input_tokens"], row["output_tokens"]) == (prompt_tokens, 10)
    assert (row["cache_read_tokens"], row["cache_write_tokens"]) == (0, 12)
    assert row["cost_usd"] == pytest.approx(cost, rel=1e-9, abs=0)


# --- 3. every prompt location is scanned, in every protocol ------------------------------


def system_prompt_body(protocol: str) -> dict[str, Any]:
    leak = f"Deploy with {SECRET} when asked."
    if protocol == "openai_chat":
        return {"model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": leak}, *HELLO]}  # fmt: skip
    if protocol == "openai_responses":
        return {"model": "gpt-4o-mini", "instructions": leak, "input": "hi"}
    if protocol == "anthropic_messages":
        return {"model": "claude-haiku-4-5", "max_tokens": 16, "system": leak, "messages": HELLO}
    return {"systemInstruction": {"parts": [{"text": leak}]},
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}  # fmt: skip


def tool_arguments_body(protocol: str) -> dict[str, Any]:
    """The secret only in an earlier assistant turn's tool call; the result is harmless."""
    args = {"token": SECRET}
    ask = "run the deploy"
    if protocol == "openai_chat":
        return {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": ask},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "deploy", "arguments": json.dumps(args)}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
        ]}  # fmt: skip
    if protocol == "openai_responses":
        return {"model": "gpt-4o-mini", "input": [
            {"role": "user", "content": ask},
            {"type": "function_call", "call_id": "call_1", "name": "deploy",
             "arguments": json.dumps(args)},
            {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        ]}  # fmt: skip
    if protocol == "anthropic_messages":
        return {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [
            {"role": "user", "content": ask},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "deploy", "input": args}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]},
        ]}  # fmt: skip
    return {"contents": [
        {"role": "user", "parts": [{"text": ask}]},
        {"role": "model", "parts": [{"functionCall": {"name": "deploy", "args": args}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "deploy", "response": {"result": "done"}}}]},
    ]}  # fmt: skip


PROTOCOLS = list(ENDPOINTS)


def assert_secret_blocked(
    proxy: Proxy, emulator: Emulator, protocol: str, body: dict[str, Any], location: str
) -> None:
    host, path = ENDPOINTS[protocol]
    credential = "authorization" if WIRE[protocol] == "openai" else (
        "x-api-key" if protocol == "anthropic_messages" else "x-goog-api-key")  # fmt: skip
    value = f"Bearer {CALLER_KEY}" if credential == "authorization" else CALLER_KEY
    response = post(proxy, f"https://{host}{path}", body, {credential: value})
    row = assert_refused(proxy, emulator, response, wire=WIRE[protocol], status=400,
                         reason="safety_block", outcome="denied")  # fmt: skip
    assert SECRET.encode() not in response.content
    assert f"secrets (github_token) in {location}".encode() in response.content
    found = proxy.query(
        "select phase, detector, location, action from findings where request_id = ?", row["id"]
    )
    assert found == [
        {"phase": "request", "detector": "github_token", "location": location, "action": "block"}
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_secret_only_in_the_system_prompt_is_blocked(
    protocol: str, gaps: Proxy, emulator: Emulator
) -> None:
    assert_secret_blocked(gaps, emulator, protocol, system_prompt_body(protocol), "system")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_secret_only_in_tool_call_arguments_is_blocked(
    protocol: str, gaps: Proxy, emulator: Emulator
) -> None:
    # The tool call is the second turn (index 1), an assistant's, in every protocol.
    body = tool_arguments_body(protocol)
    assert_secret_blocked(gaps, emulator, protocol, body, "messages[1] (assistant)")


# --- 4. the caller's ?key= never reaches the upstream ---------------------------------------


@pytest.mark.parametrize(
    ("method", "query", "upstream_query"),
    [
        ("generateContent", f"?key={CALLER_KEY}", ""),
        ("streamGenerateContent", f"?alt=sse&key={CALLER_KEY}", "?alt=sse"),
    ],
    ids=["buffered", "stream"],
)
def test_a_gemini_callers_query_key_is_replaced_by_the_routes_key(
    method: str, query: str, upstream_query: str, gaps: Proxy, emulator: Emulator
) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    response = post(gaps, f"{GEMINI}:{method}{query}", body, {})
    assert response.status_code == 200, response.text
    [hit] = emulator.hits
    assert hit.path == f"/v1beta/models/gemini-2.5-flash:{method}{upstream_query}"
    assert hit.headers["x-goog-api-key"] == "AIza-upstream-gemini-0000"
    assert CALLER_KEY not in json.dumps(hit.headers) + hit.path
    row = gaps.row(response.headers[REQUEST_ID])
    assert (row["route"], row["path"]) == (
        "gemini", f"/v1beta/models/gemini-2.5-flash:{method}{upstream_query}",
    )  # fmt: skip


# --- 5. refusals and settings no test covered -------------------------------------------------


def test_a_cost_budget_refuses_a_model_without_a_price(
    gaps: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    # openai/* routes to the emulator, and no price table entry starts with "openai/".
    body = {"model": "openai/unpriced-model", "messages": HELLO}
    response = post(gaps, CHAT, body, bearer(keys["coster"]))
    assert_refused(gaps, emulator, response, wire="openai", status=403,
                   reason="unpriced_model", outcome="denied")  # fmt: skip
    assert "openai/unpriced-model" in response.json()["error"]["message"]
    # A priced model is admitted under the same budget.
    assert post(gaps, CHAT, {"model": "gpt-4o", "messages": HELLO},
                bearer(keys["coster"])).status_code == 200  # fmt: skip


def test_a_route_outside_allowed_routes_is_refused(
    gaps: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": HELLO}
    response = post(gaps, MESSAGES, body, {"x-api-key": keys["route-limited"]})
    row = assert_refused(gaps, emulator, response, wire="anthropic", status=403,
                         reason="route_not_allowed", outcome="denied")  # fmt: skip
    assert response.json()["error"]["type"] == "permission_error"
    assert (row["user"], row["route"]) == ("route-limited", "anthropic")
    # Its one allowed route still works.
    assert post(gaps, CHAT, {"model": "gpt-4o", "messages": HELLO},
                bearer(keys["route-limited"])).status_code == 200  # fmt: skip


def test_a_provider_outside_allowed_providers_is_refused(
    gaps: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    response = post(gaps, CHAT, {"model": "gpt-4o", "messages": HELLO},
                    bearer(keys["provider-limited"]))  # fmt: skip
    row = assert_refused(gaps, emulator, response, wire="openai", status=403,
                         reason="provider_not_allowed", outcome="denied")  # fmt: skip
    assert "openai" in response.json()["error"]["message"]
    assert row["user"] == "provider-limited"
    body = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": HELLO}
    assert post(gaps, MESSAGES, body, {"x-api-key": keys["provider-limited"]}).status_code == 200


def test_unparsed_endpoints_are_refused_when_the_policy_says_so(
    gaps: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    with gaps.http_client(timeout=30) as client:
        response = client.get(
            "https://api.openai.com/v1/models", headers=bearer(keys["no-unparsed"])
        )
    row = assert_refused(gaps, emulator, response, wire="openai", status=403,
                         reason="unparsed_not_allowed", outcome="denied")  # fmt: skip
    assert (row["user"], row["protocol"], row["path"]) == ("no-unparsed", "other", "/v1/models")


def test_payload_max_bytes_cuts_stored_bodies_with_the_marker(
    gaps: Proxy, emulator: Emulator
) -> None:
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"x" * 100 + b'"}]}'
    assert len(body) == 166  # 62 bytes up to the content's quote, 100 x, 4 to close
    response = post(gaps, CHAT, body, bearer(CALLER_KEY))
    assert response.status_code == 200
    stored = gaps.payload(response.headers[REQUEST_ID])
    # audit.payload_max_bytes is 64 for this proxy: the first 64 bytes, then the marker.
    assert stored["request_body"] == (
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "xx'
        "\n[llmgate: truncated, 166 bytes in all]"
    )
    assert stored["request_truncated"] == 1
    reply = response.content
    assert len(reply) > 64
    assert stored["response_body"] == (
        reply[:64].decode() + f"\n[llmgate: truncated, {len(reply)} bytes in all]"
    )
    assert stored["response_truncated"] == 1


def test_the_hmac_key_file_is_private_and_keys_the_findings(
    gaps: Proxy, emulator: Emulator
) -> None:
    key_file = Path(f"{gaps.db}.hmac-key")
    assert oct(stat.S_IMODE(key_file.stat().st_mode)) == "0o600"
    key_hex = key_file.read_text()
    assert len(key_hex) == 64 and int(key_hex, 16) >= 0
    response = post(gaps, CHAT, {"model": "gpt-4o", "messages": [
        {"role": "user", "content": f"my token {SECRET}"}]}, bearer(CALLER_KEY))  # fmt: skip
    assert response.status_code == 400
    request_id = response.headers[REQUEST_ID]
    gaps.row(request_id)  # the findings are written with the row
    [finding] = gaps.query("select value_hmac from findings where request_id = ?", request_id)
    expected = hmac.new(bytes.fromhex(key_hex), SECRET.encode(), hashlib.sha256).hexdigest()
    assert finding["value_hmac"] == expected


# --- proxies of their own: a broken quota store, an HMAC key left world-readable --------------


def own_proxy(directory: Path, confdir: Path, emulator: Emulator, policy: str) -> Proxy:
    (directory / "p").mkdir()
    (directory / "p" / "routes.yaml").write_text(emulator_policy(emulator.url))
    (directory / "p" / "own.yaml").write_text(textwrap.dedent(policy))
    return Proxy(directory / "p", directory / "audit.db", confdir,
                 upstream_ca=emulator.ca_path, env=UPSTREAM_KEYS)  # fmt: skip


def test_a_broken_quota_store_fails_closed_with_503(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    policy = """\
        policies:
          - name: everyone
            quota_windows: [{window_seconds: 60, scope: user, max_requests: 1000}]
        """
    with own_proxy(tmp_path, confdir, emulator, policy) as proxy:
        body = {"model": "gpt-4o", "messages": HELLO}
        assert post(proxy, CHAT, body, bearer(CALLER_KEY)).status_code == 200

        def first_call_written() -> bool:  # its row and settle, written behind
            with closing(sqlite3.connect(f"{proxy.db}.quota", timeout=10)) as conn:
                return conn.execute("SELECT settled FROM quota_ledger").fetchall() == [(1,)]

        wait_until(first_call_written, what="the first call's quota row, settled")
        # The quota file now holds a database without llmgate's ledger table, as
        # after a bad restore: every reserve fails inside SQLite. (A lock held by
        # another process would do too, but only after the store's 30 s busy wait;
        # a file unlinked or replaced under the running proxy goes unnoticed, since
        # SQLite keeps the open inode.)
        conn = sqlite3.connect(f"{proxy.db}.quota", timeout=10, isolation_level=None)
        conn.execute("DROP TABLE quota_ledger")
        conn.close()
        # The proxy owns the quota file (addon/quota/lease.py), so it decides the next
        # call from memory, without reading the file, and fails to write it behind
        # (SETTLE_DELAY later). From then on it refuses every call.
        assert post(proxy, CHAT, body, bearer(CALLER_KEY)).status_code == 200
        wait_until(lambda: "not written yet" in proxy.log(), what="the failed write behind")
        response = post(proxy, CHAT, body, bearer(CALLER_KEY))
        assert_refused(proxy, emulator, response, wire="openai", status=503,
                       reason="quota_unavailable", outcome="failed", hits_before=2)  # fmt: skip
        assert response.headers["retry-after"] == "1"
        assert "quota store unavailable" in proxy.log()


def test_the_llmgate_command_takes_the_quota_file_over_from_a_proxy_deciding_from_memory(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    """While the proxy is the quota file's only user it decides from memory; `llmgate
    quota` opens the file too, so the proxy writes everything out and hands it over
    once, and its window counts on through SQLite: the calls before and after add up.
    (A proxy of its own: a mitmproxy script reload also opens the file a second time,
    and the shared proxies of other modules may have had one.)"""
    policy = """\
        policies:
          - name: everyone
            quota_windows: [{window_seconds: 3600, scope: user, max_requests: 3}]
        """
    with own_proxy(tmp_path, confdir, emulator, policy) as proxy:
        body = {"model": "gpt-4o", "messages": HELLO}
        for _ in range(2):
            assert post(proxy, CHAT, body, bearer(CALLER_KEY)).status_code == 200

        def written() -> list[tuple[str]]:  # the two rows, written behind
            with closing(sqlite3.connect(f"{proxy.db}.quota", timeout=10)) as conn:
                keys = conn.execute("SELECT scope_key FROM quota_ledger").fetchall()
            return keys if len(keys) == 2 else []

        scope_key = wait_until(written, what="the two calls' quota rows")[0][0]
        assert "reserves now go through SQLite" not in proxy.log()  # it still owns the file
        shown = subprocess.run(
            [sys.executable, "-m", "addon.cli", "--db", str(proxy.db), "quota",
             scope_key.removeprefix("user:"), "--policies", str(tmp_path / "p")],
            check=True, capture_output=True, text=True, timeout=60,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        ).stdout  # fmt: skip
        # The row reads used, reserved, remaining: the two calls decided from memory.
        [(used, reserved, left)] = re.findall(r"max_requests=3\W+(\d+)\W+(\d+)\W+(\d+)", shown)
        assert (int(used) + int(reserved), int(left)) == (2, 1), shown
        assert proxy.log().count("reserves now go through SQLite") == 1
        third = post(proxy, CHAT, body, bearer(CALLER_KEY))
        assert third.status_code == 200
        assert third.headers["x-llmgate-ratelimit-remaining-requests"] == "0"
        assert post(proxy, CHAT, body, bearer(CALLER_KEY)).status_code == 429
        assert len(emulator.hits) == 3


def test_a_world_readable_hmac_key_is_tightened_and_kept(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    key_file = tmp_path / "audit.db.hmac-key"
    key_file.write_text("5a" * 32)
    key_file.chmod(0o644)
    with own_proxy(tmp_path, confdir, emulator, "{}\n") as proxy:
        assert oct(stat.S_IMODE(key_file.stat().st_mode)) == "0o600"
        assert key_file.read_text() == "5a" * 32
        response = post(proxy, CHAT, {"model": "gpt-4o", "messages": [
            {"role": "user", "content": f"my token {SECRET}"}]}, bearer(CALLER_KEY))  # fmt: skip
        assert response.status_code == 400
        request_id = response.headers[REQUEST_ID]
        proxy.row(request_id)
        [finding] = proxy.query("select value_hmac from findings where request_id = ?", request_id)
    expected = hmac.new(bytes([0x5A] * 32), SECRET.encode(), hashlib.sha256).hexdigest()
    assert finding["value_hmac"] == expected
