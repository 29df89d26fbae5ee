"""Identity, model policy and quotas, through running llmgate proxies and the official SDKs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import anthropic
import bcrypt
import openai
import pytest

from addon.quota.worker import quota_path
from tests.conftest import UPSTREAM_KEYS, emulator_policy
from tests.emulator import Emulator, input_tokens_for
from tests.proxy import ROOT, Proxy
from tests.strict import wait_until

REQUEST_ID = "x-llmgate-request-id"
HELLO = [{"role": "user", "content": "hi"}]

POLICIES = """\
identity:
  default_user: null
  groups: {carol: [strict]}
policies:
  - name: everyone
    applies_to: {users: ["*"]}
    allowed_models: ["gpt-*", "claude-*", "team-default", "claude-team", "byok-*"]
    denied_models: ["gpt-4-32k*", "claude-2*"]
    max_input_tokens_per_call: 2000
    max_output_tokens: {limit: 1000, action: clamp}
  - name: strict-group
    applies_to: {groups: [strict]}
    max_output_tokens: {limit: 100, action: deny}
  - name: racers
    applies_to: {groups: [racers]}
    quota_windows: [{window_seconds: 3600, scope: user, max_requests: 50}]
  - name: budget
    applies_to: {users: [budget]}
    quota_windows: [{window_seconds: 3600, scope: user, max_output_tokens: 250}]
  - name: screened
    applies_to: {users: [screened]}
    quota_windows: [{window_seconds: 3600, scope: user, max_requests: 1}]
  - name: retry
    applies_to: {users: [retry]}
    quota_windows: [{window_seconds: 8, scope: user, max_requests: 2}]
  - name: settler
    applies_to: {users: [settler]}
    quota_windows:
      - {window_seconds: 60, scope: user, max_requests: 100}
      - {window_seconds: 86400, scope: user, max_input_tokens: 5000000,
         max_output_tokens: 500000, max_cost_usd: 20}
"""


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory, emulator_server: Emulator) -> Path:
    directory = tmp_path_factory.mktemp("policy-policies")
    (directory / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (directory / "policy.yaml").write_text(POLICIES)
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    return directory


@pytest.fixture(scope="module")
def policy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("policy-ledger") / "audit.db"


@pytest.fixture(scope="module")
def gate(
    policy_dir: Path, policy_db: Path, confdir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    with Proxy(
        policy_dir, policy_db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        yield running


@pytest.fixture(scope="module")
def keys(gate: Proxy) -> dict[str, str]:
    """Keys issued with the real `llmgate keys issue` command."""

    def issue(user: str, *groups: str) -> str:
        args = [sys.executable, "-m", "addon.cli", "--db", str(gate.db), "keys", "issue", user]
        for group in groups:
            args += ["--group", group]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]

    return {
        "bob": issue("bob", "dev"),
        "carol": issue("carol"),
        "racer": issue("racer", "racers"),
        "racer2": issue("racer2", "racers"),
        "budget": issue("budget"),
        "retry": issue("retry"),
        "screened": issue("screened"),
        "settler": issue("settler"),
        "revoked": issue("mallory"),
    }


def quota_totals(gate: Proxy, user: str) -> dict[str, float]:
    """The quota rows of a user, summed straight from the file: not through the store."""
    with closing(sqlite3.connect(quota_path(gate.db), timeout=10)) as conn:
        row = conn.execute(
            "SELECT COUNT(*), TOTAL(requests), TOTAL(input_tokens), TOTAL(output_tokens),"
            " TOTAL(cost_nusd), TOTAL(settled = 0) FROM quota_ledger WHERE scope_key = ?",
            (f"user:{user}",),
        ).fetchone()
    names = ("rows", "requests", "input_tokens", "output_tokens", "cost_nusd", "unsettled")
    return dict(zip(names, row, strict=True))


def all_settled(gate: Proxy, user: str) -> None:
    """Settles land on the quota worker after the reply: wait for the user's last one."""
    wait_until(
        lambda: quota_totals(gate, user)["unsettled"] == 0,
        what=f"the quota settles of {user}",
    )


def oa(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, http_client=proxy.http_client(), max_retries=0)


def an(proxy: Proxy, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, http_client=proxy.http_client(), max_retries=0)


# --- identity -------------------------------------------------------------------------


def test_virtual_key_user_is_attributed_and_never_forwarded(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    raw = oa(gate, keys["bob"]).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO
    )
    row = gate.row(raw.headers[REQUEST_ID])
    assert (row["user"], row["groups"], row["status"]) == ("bob", "dev", "completed")
    an(gate, keys["bob"]).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=HELLO)
    assert len(emulator.hits) == 2
    for hit in emulator.hits:
        assert "lg-" not in json.dumps(hit.headers) and b"lg-" not in hit.body
    assert (
        emulator.hits[0].headers["authorization"]
        == f"Bearer {UPSTREAM_KEYS['UPSTREAM_OPENAI_KEY']}"
    )
    assert emulator.hits[1].headers["x-api-key"] == UPSTREAM_KEYS["UPSTREAM_ANTHROPIC_KEY"]
    for secret in keys.values():
        assert secret.encode() not in b"".join(
            p.read_bytes() for p in gate.db.parent.glob("*") if p.is_file()
        )


def test_unidentified_and_revoked_callers_are_refused(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        oa(gate, "sk-not-an-llmgate-key").chat.completions.create(model="gpt-4o", messages=HELLO)
    row = gate.row(err.value.response.headers[REQUEST_ID])
    assert (row["status"], row["reason"], row["http_status"]) == ("denied", "unauthenticated", 401)

    cli = [sys.executable, "-m", "addon.cli", "--db", str(gate.db)]
    subprocess.run([*cli, "keys", "revoke", keys["revoked"]], check=True, capture_output=True)
    with pytest.raises(anthropic.AuthenticationError) as err2:
        an(gate, keys["revoked"]).messages.create(model="claude-x", max_tokens=5, messages=HELLO)
    assert err2.value.body["error"]["type"] == "authentication_error"
    assert "revoked" in err2.value.body["error"]["message"]
    assert emulator.hits == []


def test_virtual_key_on_a_route_without_secret_is_a_clear_error(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        oa(gate, keys["bob"]).chat.completions.create(model="byok-x", messages=HELLO)
    assert err.value.body["code"] == "virtual_key_without_secret"
    assert "api_key_secret" in err.value.body["message"]
    assert emulator.hits == []


def test_proxy_auth_and_client_address_users(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"wonderland", bcrypt.gensalt()).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "routes.yaml").write_text(emulator_policy(emulator.url))
    (tmp_path / "p" / "identity.yaml").write_text(
        f"identity: {{default_user: null, proxy_auth: '@{htpasswd}'}}\n"
    )
    with Proxy(tmp_path / "p", tmp_path / "a.db", confdir, upstream_ca=emulator.ca_path,
               env=UPSTREAM_KEYS) as proxy:  # fmt: skip
        proxy.url = proxy.url.replace("http://", "http://alice:wonderland@")
        raw = oa(proxy, "sk-own").chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO
        )
        assert proxy.row(raw.headers[REQUEST_ID])["user"] == "alice"
        proxy.url = proxy.url.replace("alice:wonderland@", "alice:wrong@")
        with pytest.raises(openai.APIConnectionError):
            oa(proxy, "sk-own").chat.completions.create(model="gpt-4o", messages=HELLO)

    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "routes.yaml").write_text(emulator_policy(emulator.url))
    (tmp_path / "q" / "identity.yaml").write_text(
        "identity: {default_user: null, client_addresses: {'10.0.0.0/8': far,"
        " '127.0.0.0/8': loopback-team, '127.0.0.1/32': this-host}}\n"
    )
    with Proxy(tmp_path / "q", tmp_path / "b.db", confdir, upstream_ca=emulator.ca_path,
               env=UPSTREAM_KEYS) as proxy:  # fmt: skip
        raw = oa(proxy, "sk-own").chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO
        )
        assert proxy.row(raw.headers[REQUEST_ID])["user"] == "this-host"


# --- model policy ---------------------------------------------------------------------


def test_denied_model_is_403_in_both_formats_and_never_sent(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        oa(gate, keys["bob"]).chat.completions.create(model="gpt-4-32k-0613", messages=HELLO)
    assert err.value.body["code"] == "model_not_allowed"
    assert "gpt-4-32k-0613" in err.value.body["message"]
    row = gate.row(err.value.response.headers[REQUEST_ID])
    assert (row["status"], row["reason"], row["http_status"]) == (
        "denied",
        "model_not_allowed",
        403,
    )

    with pytest.raises(anthropic.PermissionDeniedError) as err2:
        an(gate, keys["bob"]).messages.create(model="claude-2.1", max_tokens=5, messages=HELLO)
    assert err2.value.body["type"] == "error"
    assert err2.value.body["error"]["type"] == "permission_error"
    assert gate.row(err2.value.response.headers[REQUEST_ID])["reason"] == "model_not_allowed"
    # Not in allowed_models at all:
    with pytest.raises(openai.PermissionDeniedError):
        oa(gate, keys["bob"]).chat.completions.create(model="o3-mini", messages=HELLO)
    assert emulator.hits == []


def test_output_cap_clamps_or_denies_and_input_cap_denies(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    an(gate, keys["bob"]).messages.create(model="claude-haiku-4-5", max_tokens=5000, messages=HELLO)
    assert emulator.hits[-1].json()["max_tokens"] == 1000  # clamped to the policy limit

    with pytest.raises(openai.BadRequestError) as err:
        oa(gate, keys["carol"]).chat.completions.create(
            model="gpt-4o", messages=HELLO, max_completion_tokens=500
        )
    assert err.value.body["code"] == "output_too_large"
    with pytest.raises(openai.BadRequestError) as err2:
        oa(gate, keys["bob"]).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "word " * 4000}]
        )
    assert err2.value.body["code"] == "input_too_large"
    assert gate.row(err2.value.response.headers[REQUEST_ID])["status"] == "denied"
    assert len(emulator.hits) == 1


# --- quotas ---------------------------------------------------------------------------


async def _burst(proxy: Proxy, key: str, count: int) -> list[int]:
    async with proxy.async_http_client(timeout=60) as client:

        async def one() -> int:
            response = await client.post(
                "https://api.openai.com/v1/chat/completions",
                json={"model": "gpt-4o", "messages": HELLO},
                headers={"authorization": f"Bearer {key}"},
            )
            return response.status_code

        return await asyncio.gather(*(one() for _ in range(count)))


def test_200_concurrent_requests_get_exactly_50_admissions(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    statuses = asyncio.run(_burst(gate, keys["racer"], 200))
    assert (statuses.count(200), statuses.count(429)) == (50, 150)
    assert len(emulator.hits) == 50
    rows = gate.closed_rows("racer", count=200)
    statuses_in_ledger = [r["status"] for r in rows]
    assert (statuses_in_ledger.count("completed"), statuses_in_ledger.count("denied")) == (50, 150)


def test_two_processes_sharing_one_database_admit_exactly_50_and_survive_restart(
    gate: Proxy, keys: dict[str, str], emulator: Emulator, policy_dir: Path, confdir: Path
) -> None:
    with Proxy(policy_dir, gate.db, confdir, upstream_ca=emulator.ca_path,
               env=UPSTREAM_KEYS) as second:  # fmt: skip

        async def both() -> list[int]:
            a, b = await asyncio.gather(
                _burst(gate, keys["racer2"], 100), _burst(second, keys["racer2"], 100)
            )
            return a + b

        statuses = asyncio.run(both())
    assert (statuses.count(200), statuses.count(429)) == (50, 150)
    assert len(emulator.hits) == 50
    # A fresh process on the same file still knows the window is full.
    with Proxy(policy_dir, gate.db, confdir, upstream_ca=emulator.ca_path,
               env=UPSTREAM_KEYS) as restarted:  # fmt: skip
        assert asyncio.run(_burst(restarted, keys["racer2"], 1)) == [429]


def test_token_budget_admits_nothing_past_settled_plus_reserved(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    # Each call reserves max_tokens=100 output tokens and settles to the 6 it used:
    # call k is admitted while 6*k + 100 <= 250, so exactly 26 calls pass.
    client = oa(gate, keys["budget"])
    admitted = 0
    for _ in range(40):
        try:
            client.chat.completions.create(
                model="gpt-4o", messages=HELLO, max_completion_tokens=100
            )
            admitted += 1
            # The arithmetic above counts each admitted call settled at 6 before the next.
            all_settled(gate, "budget")
        except openai.RateLimitError as err:
            message = err.body["message"]
            break
    assert admitted == 26
    assert "max_output_tokens=250" in message
    rows = gate.closed_rows("budget", count=27)
    assert sum(r["output_tokens"] or 0 for r in rows) == 26 * 6


def test_retry_after_is_the_time_until_budget_frees(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    client = oa(gate, keys["retry"])
    first = time.time()
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    # These sleeps are the behaviour under test, not a wait for something to land: the
    # calls must be apart in time so that Retry-After (about 8 - 3 = 5 s, when the first
    # call leaves the window) is told from the time until the second one leaves (7 s).
    time.sleep(2)
    client.chat.completions.create(model="gpt-4o", messages=HELLO)
    time.sleep(1)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    retry_after = float(err.value.response.headers["retry-after"])
    expected = first + 8 - time.time()  # the first call leaves the 8 s window
    assert abs(retry_after - expected) <= 1, (retry_after, expected)
    assert "retry" in err.value.body["message"]


def test_settled_counters_equal_the_ledger_and_headers_inform(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    client = oa(gate, keys["settler"])
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.headers["x-llmgate-ratelimit-limit-requests"] == "100"
    assert raw.headers["x-llmgate-ratelimit-remaining-requests"] == "99"
    list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    list(an(gate, keys["settler"]).messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=HELLO, stream=True))  # fmt: skip
    rows = gate.closed_rows("settler", count=3)
    # What the emulator reported, worked out here: input is len(body) // 4 + 1 of the
    # body it received, output 6 for its reply ("Hello from the llmgate emulator.":
    # 5 words + 1). Prices from addon/ledger/data/pricing.yaml, US$ per 1M tokens:
    # gpt-4o 2.50 in / 10.00 out, claude-haiku-4-5 1.00 in / 5.00 out.
    gpt_a, gpt_b, claude = (input_tokens_for(hit.body) for hit in emulator.hits)
    assert [hit.path for hit in emulator.hits] == [
        "/v1/chat/completions", "/v1/chat/completions", "/v1/messages",
    ]  # fmt: skip
    want_cost = ((gpt_a + gpt_b) * 2.50 + 2 * 6 * 10.00 + claude * 1.00 + 6 * 5.00) / 1e6
    want = {"requests": 3, "input_tokens": gpt_a + gpt_b + claude, "output_tokens": 18}
    ledger = {
        "requests": len(rows),
        "input_tokens": sum(r["input_tokens"] for r in rows),
        "output_tokens": sum(r["output_tokens"] for r in rows),
    }
    assert ledger == want
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(want_cost, rel=1e-9)
    all_settled(gate, "settler")
    # Both windows count under one key (user:settler): one row per call, all settled.
    quota = quota_totals(gate, "settler")
    assert (quota["rows"], quota["unsettled"]) == (3, 0)
    assert {k: int(quota[k]) for k in want} == want
    assert quota["cost_nusd"] / 1e9 == pytest.approx(want_cost, rel=1e-6)


def test_a_call_refused_by_screening_counts_in_no_window(
    gate: Proxy, keys: dict[str, str], emulator: Emulator
) -> None:
    # The reserve is sent before the prompt is screened (it runs while the call is
    # screened); a blocked call then releases it, so only the clean call counts.
    client = oa(gate, keys["screened"])
    leak = "AKIA" + "Q3EXAMPLE7RT2ZKD"  # an AWS key id, assembled so no file holds it
    with pytest.raises(openai.BadRequestError) as blocked:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"key id {leak}"}]
        )
    assert blocked.value.body["code"] == "safety_block"
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.headers["x-llmgate-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert len(emulator.hits) == 1
    all_settled(gate, "screened")
    quota = quota_totals(gate, "screened")
    assert (quota["rows"], quota["requests"]) == (2, 1)  # the blocked call's row counts 0


def test_cli_shows_quota_windows_and_the_ledger(
    gate: Proxy, keys: dict[str, str], policy_dir: Path
) -> None:
    client = oa(gate, keys["settler"])
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    request_id = raw.headers[REQUEST_ID]
    gate.row(request_id)
    all_settled(gate, "settler")  # `quota` below shows the settled counters
    cli = [sys.executable, "-m", "addon.cli", "--db", str(gate.db)]
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> str:
        return subprocess.run([*cli, *args], check=True, capture_output=True, text=True,
                              env=env).stdout  # fmt: skip

    quota = run("quota", "settler", "--policies", str(policy_dir))
    assert "max_requests=100" in quota and "user:settler" in quota
    assert "max_cost_usd=20" in quota and "resets in" in quota
    assert request_id[-12:] in run("tail", "-n", "500")  # what the log line prints
    assert "settler" in run("report", "--by", "user")
    shown = run("show", request_id)
    assert "completed" in shown and "gpt-4o" in shown
    assert "OK" in run("check", str(policy_dir))
