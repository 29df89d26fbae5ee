"""The Codex CLI end to end: `codex exec` -> mitmdump + llmgate -> emulator, offline.

Codex talks to the real host api.openai.com through HTTPS_PROXY; the test route table
sends `gpt-*` to the emulator. Codex's first transport is the Responses API's WebSocket
mode, its fallback POST /v1/responses (tests/agents.py says when it falls back).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import DEFAULT_MODEL, CodexRunner, codex_version
from tests.conftest import CALLER_KEY
from tests.emulator import HEADER_REPLY, Emulator, Hit
from tests.proxy import Proxy
from tests.strict import wait_until

REPLY = "Codex reached the llmgate emulator."


def _response_creates(emulator: Emulator) -> list[Hit]:
    """The model calls the emulator answered: WebSocket response.create messages and
    POST /v1/responses requests."""

    def is_call(hit: Hit) -> bool:
        if hit.websocket:
            return hit.error is None and hit.json().get("type") == "response.create"
        return hit.method == "POST" and hit.path.endswith("/responses")

    return [hit for hit in emulator.hits if is_call(hit)]


def test_pinned_codex_is_installed(codex: CodexRunner) -> None:
    out = subprocess.run(
        [str(codex.executable), "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == f"codex-cli {codex_version()}", out


def test_codex_exec_completes_through_the_proxy(codex: CodexRunner, emulator: Emulator) -> None:
    emulator.set_default_controls({HEADER_REPLY: REPLY})
    result = codex("say hi", api_key=CALLER_KEY)

    assert result.ok, result.describe()
    assert REPLY in result.stdout, result.describe()
    calls = _response_creates(emulator)
    assert calls, f"no model call reached the emulator: {emulator.hits}\n{result.describe()}"
    assert {hit.json()["model"] for hit in calls} == {DEFAULT_MODEL}


def test_codex_uses_the_responses_websocket(codex: CodexRunner, emulator: Emulator) -> None:
    emulator.set_default_controls({HEADER_REPLY: REPLY})
    result = codex("say hi", api_key=CALLER_KEY)

    assert result.ok, result.describe()
    assert REPLY in result.stdout, result.describe()
    assert not result.fell_back_to_https, result.describe()
    handshakes = emulator.handshakes
    assert handshakes and all(h.status == 101 for h in handshakes), handshakes
    calls = _response_creates(emulator)
    assert calls and all(hit.websocket for hit in calls), emulator.hits
    assert {hit.json()["model"] for hit in calls} == {DEFAULT_MODEL}
    assert calls[-1].json()["input"], "the turn's response.create carries the prompt"


def test_codex_calls_carry_its_session_and_client(
    codex: CodexRunner, emulator: Emulator, proxy: Proxy
) -> None:
    """Every message of the run is one call of Codex's session, named by its client."""
    emulator.set_default_controls({HEADER_REPLY: REPLY})
    result = codex("say hi", api_key=CALLER_KEY)
    assert result.ok, result.describe()
    calls = _response_creates(emulator)
    session = calls[-1].headers["session-id"]  # what Codex sent on the upgrade

    def session_rows() -> list[dict]:
        rows = proxy.query("select * from requests where session_id = ?", session)
        return rows if len(rows) == len(calls) else []

    rows = wait_until(session_rows, timeout=10)
    assert {row["client"] for row in rows} == {f"codex_exec/{codex_version()}"}
    assert {row["transport"] for row in rows} == {"websocket"}


# --------------------------------------------------------------------------- no gateway


@pytest.fixture
def bare_proxy(
    tmp_path: Path, confdir: Path, policies_dir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    """mitmdump without llmgate, mapping api.openai.com to the emulator: checks Codex, the
    harness and the emulator's WebSocket mode apart from the gateway."""
    remap = f"|^https://api\\.openai\\.com/|{emulator_server.url}/"
    with Proxy(
        policies_dir,
        tmp_path / "bare.db",
        confdir,
        upstream_ca=emulator_server.ca_path,
        addon=False,
        extra_args=["--map-remote", remap],
    ) as running:
        yield running


def test_codex_websocket_through_bare_mitmproxy(
    bare_proxy: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    emulator.set_default_controls({HEADER_REPLY: REPLY})
    codex = CodexRunner(bare_proxy.url, bare_proxy.ca_path, tmp_path)
    result = codex("say hi", api_key=CALLER_KEY)

    assert result.ok, result.describe()
    assert REPLY in result.stdout, result.describe()
    assert not result.fell_back_to_https, result.describe()
    (handshake,) = emulator.handshakes
    assert handshake.status == 101
    assert handshake.headers["authorization"] == f"Bearer {CALLER_KEY}"
    assert handshake.headers["openai-beta"].startswith("responses_websockets=")
    assert handshake.extensions.startswith("permessage-deflate")
    calls = _response_creates(emulator)
    assert calls and all(hit.websocket and hit.connection == handshake.connection for hit in calls)
    assert {hit.json()["model"] for hit in calls} == {DEFAULT_MODEL}
    # Codex 0.171 warms the socket up (generate: false), then sends the turn chained to it.
    *warmups, turn = [hit.json() for hit in calls]
    assert all(w["generate"] is False for w in warmups)
    assert turn.get("generate", True) is not False and turn["input"]
    if warmups:
        assert turn["previous_response_id"].startswith("resp_emu")


# --------------------------------------------------------------------------- llmgate decides

GITHUB_TOKEN = "ghp_" + "Zq8Lm2Xv7Rt4Np1Ks9Wd3Hf6Jb5Gc0Ya2Ue7T"
CODEX_POLICY = """\
policies:
  - name: codex-quota
    applies_to: {users: [codex-quota]}
    quota_windows:
      - {window_seconds: 3600, scope: user, max_requests: 1}
"""


@pytest.fixture(scope="module")
def gate(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    """A proxy of its own: the session routes plus a one-request quota for one user."""
    from addon.keys import KeyStore
    from tests.conftest import UPSTREAM_KEYS, emulator_policy

    policies = tmp_path_factory.mktemp("codex-policies")
    (policies / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (policies / "codex.yaml").write_text(CODEX_POLICY)
    db = tmp_path_factory.mktemp("codex-ledger") / "audit.db"
    keys = KeyStore(db)
    gate_keys = {user: keys.issue(user, []) for user in ("codex-user", "codex-quota")}
    keys.close()
    with Proxy(
        policies, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        running.keys = gate_keys  # type: ignore[attr-defined]
        yield running


def _rows(gate: Proxy, user: str, count: int) -> list[dict]:
    return sorted(gate.closed_rows(user, count), key=lambda r: r["started_at"])


def test_a_codex_run_is_recorded_call_by_call_with_reported_usage(
    gate: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    from tests.conftest import UPSTREAM_KEYS
    from tests.emulator import expected_usage

    emulator.set_default_controls({HEADER_REPLY: REPLY})
    key = gate.keys["codex-user"]  # type: ignore[attr-defined]
    result = CodexRunner(gate.url, gate.ca_path, tmp_path)("say hi", api_key=key)
    assert result.ok, result.describe()
    assert REPLY in result.stdout and not result.fell_back_to_https, result.describe()

    calls = _response_creates(emulator)
    rows = _rows(gate, "codex-user", len(calls))
    assert len(rows) == len(calls), "one row per response.create message, none for the upgrade"
    for row, hit in zip(rows, calls, strict=True):
        assert (row["protocol"], row["transport"]) == ("openai_responses", "websocket")
        assert (row["model"], row["status"], row["route"]) == (DEFAULT_MODEL, "completed", "openai")
        usage = expected_usage(hit.body, REPLY)
        if hit.json().get("generate") is False:  # the warm-up generates nothing
            usage = usage._replace(output_tokens=0)
        assert row["usage_source"] == "reported"
        assert (row["input_tokens"], row["output_tokens"]) == tuple(usage)
        # gpt-5.5 is priced by its longest listed prefix, gpt-5: $1.25 in, $10.00 out
        # per million tokens (addon/ledger/data/pricing.yaml), no cached tokens here.
        cost = (usage.input_tokens * 1.25 + usage.output_tokens * 10.00) / 1_000_000
        assert row["cost_usd"] == pytest.approx(cost, rel=1e-9), (row["cost_usd"], cost)
    # The virtual key never left llmgate: the upstream saw only the route's secret.
    assert {h.headers["authorization"] for h in emulator.handshakes} == {
        f"Bearer {UPSTREAM_KEYS['UPSTREAM_OPENAI_KEY']}"
    }
    assert all(key not in hit.body.decode() for hit in emulator.hits)


def test_a_secret_in_a_codex_prompt_is_blocked_before_the_upstream(
    gate: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    key = gate.keys["codex-user"]  # type: ignore[attr-defined]
    before = len(gate.query("select id from requests where reason = 'safety_block'"))
    result = CodexRunner(gate.url, gate.ca_path, tmp_path)(
        f"deploy with my token {GITHUB_TOKEN}", api_key=key
    )
    assert not result.ok, result.describe()
    assert "llmgate blocked this request" in result.stderr + result.stdout, result.describe()
    assert all(GITHUB_TOKEN not in hit.body.decode() for hit in emulator.hits)
    deadline = time.monotonic() + 10
    while len(gate.query("select id from requests where reason = 'safety_block'")) <= before:
        assert time.monotonic() < deadline, "no safety_block row"
        time.sleep(0.05)
    blocked = gate.query("select * from requests where reason = 'safety_block'")[-1]
    assert (blocked["status"], blocked["transport"]) == ("denied", "websocket")
    findings = gate.query("select * from findings where request_id = ?", blocked["id"])
    assert [f["detector"] for f in findings] == ["github_token"]
    assert GITHUB_TOKEN.encode() not in gate.db.read_bytes()


def test_a_one_request_quota_lets_one_codex_run_through_and_denies_the_next(
    gate: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    emulator.set_default_controls({HEADER_REPLY: REPLY})
    key = gate.keys["codex-quota"]  # type: ignore[attr-defined]
    runner = CodexRunner(gate.url, gate.ca_path, tmp_path)
    first = runner("say hi", api_key=key)
    assert first.ok and REPLY in first.stdout, first.describe()
    turns_before = [h for h in _response_creates(emulator) if h.json().get("generate") is not False]

    second = runner("say hi again", api_key=key)
    assert not second.ok, second.describe()
    turns = [h for h in _response_creates(emulator) if h.json().get("generate") is not False]
    assert turns == turns_before, "the second run's turn must never reach the upstream"
    # Each run warms its socket up (no request of the caller's), then sends its turn.
    rows = gate.closed_rows("codex-quota", 4)
    denied = [r for r in rows if r["status"] == "denied"]
    assert denied and all(r["reason"] == "quota_exceeded" for r in denied), rows
    completed_turns = [r for r in rows if r["status"] == "completed" and r["output_tokens"]]
    assert len(completed_turns) == 1, rows
