"""The Claude Code CLI end to end, translated: `claude -p` speaks Anthropic Messages to
api.anthropic.com through HTTPS_PROXY; llmgate routes `claude-*` to an OpenAI-compatible
server that speaks only Chat Completions (provider `openai_chat`, here the emulator),
translates each call there and each reply back, and records it.

The run reads a file with the CLI's Read tool: the emulator's first reply is a Chat tool
call to `Read`, its second (the request now holds the tool result) a text reply. See
tests/claude_code.py for how the CLI is run offline and what it sends.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.claude_code import DEFAULT_MODEL, ClaudeCodeRunner, claude_code_version
from tests.emulator import (
    HEADER_REPLY,
    HEADER_TOOL_ARGS,
    HEADER_TOOL_CALL,
    Emulator,
    Hit,
    expected_usage,
)
from tests.proxy import ROOT, Proxy

UPSTREAM_MODEL = "local-coder"
# The route's own price (USD per million tokens): a self-hosted model is in no price table.
PRICE_IN, PRICE_OUT = 0.25, 2.00
USER = "claude-code-user"
# What Claude Code asks api.anthropic.com for besides model calls once its nonessential
# traffic is off: its managed settings. llmgate refuses both (not a model endpoint); the
# CLI carries on without them.
SETTINGS_PATHS = {"/api/claude_code/settings", "/api/claude_code/policy_limits"}


def _routes(emulator_url: str) -> str:
    return (
        "routes:\n"
        f'  - {{id: claude-to-chat, model_pattern: "claude-*", provider: openai_chat,\n'
        f'     endpoint: "{emulator_url}", api_key_secret: UPSTREAM_OPENAI_KEY,\n'
        f"     upstream_model: {UPSTREAM_MODEL},\n"
        f"     pricing: {{input: {PRICE_IN}, output: {PRICE_OUT}}}}}\n"
    )


@pytest.fixture(scope="module")
def gate(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    """A proxy of its own whose only route sends `claude-*` to the emulator's Chat
    Completions endpoint."""
    from addon.keys import KeyStore
    from tests.conftest import UPSTREAM_KEYS

    policies = tmp_path_factory.mktemp("claude-code-policies")
    (policies / "routes.yaml").write_text(_routes(emulator_server.url))
    shutil.copy(ROOT / "policies" / "pricing.yaml", policies / "pricing.yaml")
    db = tmp_path_factory.mktemp("claude-code-ledger") / "audit.db"
    keys = KeyStore(db)
    key = keys.issue(USER, [])
    keys.close()
    with Proxy(
        policies, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        running.key = key  # type: ignore[attr-defined]
        yield running


@pytest.fixture
def claude(gate: Proxy, tmp_path: Path) -> ClaudeCodeRunner:
    return ClaudeCodeRunner(gate.url, gate.ca_path, tmp_path)


def _chat_calls(emulator: Emulator) -> list[Hit]:
    return [h for h in emulator.hits if h.method == "POST" and "/chat/completions" in h.path]


def _rows(gate: Proxy, model_calls: int, timeout: float = 10) -> list[dict]:
    """The user's closed rows, oldest first, once the model calls' rows are all there."""
    deadline = time.monotonic() + timeout
    while True:
        rows = sorted(gate.closed_rows(USER), key=lambda r: r["started_at"])
        if sum(r["protocol"] == "anthropic_messages" for r in rows) >= model_calls:
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)


def test_pinned_claude_code_is_installed(claude: ClaudeCodeRunner) -> None:
    out = subprocess.run(
        [str(claude.executable), "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == f"{claude_code_version()} (Claude Code)", out


def test_claude_code_reads_a_file_through_a_chat_completions_upstream(
    claude: ClaudeCodeRunner, gate: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    from tests.conftest import UPSTREAM_KEYS

    token = f"notes-{secrets.token_hex(8)}"
    project = tmp_path / "project"
    project.mkdir()
    notes = project / "notes.txt"
    notes.write_text(f"{token}\nthe second line\n")
    reply = f"The first line of notes.txt is {token}"
    tool_args = json.dumps({"file_path": str(notes)})
    emulator.set_default_controls(
        {HEADER_TOOL_CALL: "Read", HEADER_TOOL_ARGS: tool_args, HEADER_REPLY: reply}
    )

    result = claude(
        "Read the file notes.txt and tell me its first line",
        api_key=gate.key,  # type: ignore[attr-defined]
        workdir=project,
    )

    calls = _chat_calls(emulator)
    assert result.ok, f"{result.describe()}\nemulator hits: {emulator.hits}"
    final = result.result()
    assert (final["subtype"], final["is_error"], final["num_turns"]) == ("success", False, 2)
    assert token in final["result"], final
    # What the CLI made of the translated streams: a Read tool_use block, which it ran and
    # answered with a tool_result holding the file, then the text.
    tool_use, text = result.messages("assistant")
    ((use,), (said,)) = tool_use["content"], text["content"]
    assert (use["type"], use["name"]) == ("tool_use", "Read")
    assert use["input"] == {"file_path": str(notes)}
    assert said == {"type": "text", "text": reply}
    ((answer,),) = [m["content"] for m in result.messages("user")]
    assert (answer["type"], answer["tool_use_id"]) == ("tool_result", use["id"])
    assert token in json.dumps(answer["content"]) and not answer.get("is_error"), answer

    # The upstream got valid Chat Completions requests, with the route's model and key.
    assert [h.invalid for h in emulator.hits] == [None] * len(emulator.hits)
    assert len(calls) == 2, [h.json() for h in calls]
    first, second = (hit.json() for hit in calls)
    for body in (first, second):
        assert body["model"] == UPSTREAM_MODEL
        assert body["stream"] is True
        assert any(t["function"]["name"] == "Read" for t in body["tools"])
    for hit in calls:
        assert hit.headers["authorization"] == f"Bearer {UPSTREAM_KEYS['UPSTREAM_OPENAI_KEY']}"
    assert token not in calls[0].body.decode()
    # The follow-up answers the assistant's tool call with a `tool` message holding the
    # file's contents.
    roles = [m["role"] for m in second["messages"]]
    assert roles[-2:] == ["assistant", "tool"], roles
    assistant, tool = second["messages"][-2:]
    (tool_call,) = assistant["tool_calls"]
    assert tool_call["function"]["name"] == "Read"
    assert json.loads(tool_call["function"]["arguments"]) == {"file_path": str(notes)}
    assert tool["tool_call_id"] == tool_call["id"]
    assert token in json.dumps(tool["content"])

    # The ledger: one row per call, Anthropic Messages in, Chat Completions out, with the
    # usage the upstream reported, priced at the route's price.
    rows = _rows(gate, model_calls=len(calls))
    model_rows = [r for r in rows if r["protocol"] == "anthropic_messages"]
    assert len(model_rows) == len(calls), rows
    for row, hit, sent in zip(model_rows, calls, (tool_args, reply), strict=True):
        assert (row["path"], row["stream"]) == ("/v1/messages?beta=true", 1), row
        assert (row["status"], row["route"], row["model"]) == (
            "completed",
            "claude-to-chat",
            DEFAULT_MODEL,
        ), row
        assert (row["upstream_protocol"], row["upstream_model"]) == (
            "openai_chat",
            UPSTREAM_MODEL,
        ), row
        assert row["usage_source"] == "reported", row
        usage = expected_usage(hit.body, sent)
        assert (row["input_tokens"], row["output_tokens"]) == tuple(usage), row
        cost = (usage.input_tokens * PRICE_IN + usage.output_tokens * PRICE_OUT) / 1_000_000
        assert row["cost_usd"] == pytest.approx(cost, rel=1e-9), row
    # Nothing else went anywhere: the settings fetches were refused at the gate.
    others = [r for r in rows if r["protocol"] != "anthropic_messages"]
    assert {r["path"] for r in others} <= SETTINGS_PATHS, others
    assert all(r["status"] == "denied" for r in others), others
    assert emulator.hits == calls, "the upstream saw the model calls and nothing else"
    # The virtual key never left llmgate.
    key = gate.key  # type: ignore[attr-defined]
    assert all(key not in hit.body.decode() + json.dumps(hit.headers) for hit in emulator.hits)


SESSION_USER = "claude-session-user"


def llmgate(db: Path, *args: str) -> str:
    """The installed `llmgate` command (pyproject's entry point), piped at 80 columns."""
    program = Path(sys.executable).parent / "llmgate"
    out = subprocess.run(
        [str(program), "--db", str(db), *args],
        capture_output=True,
        text=True,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode == 0 and not out.stderr, out
    return out.stdout


def test_two_claude_code_prompts_make_one_session_the_cli_shows(
    claude: ClaudeCodeRunner, gate: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    """`claude -p` twice, the second resuming the first's session, one of them using
    the Read tool: `llmgate sessions` shows one session of the claude-cli client with
    every call and the tool, and `llmgate session ID --json` links the Read call to the
    result Claude Code sent back."""
    from addon.keys import KeyStore

    keys = KeyStore(gate.db)
    key = keys.issue(SESSION_USER, [])
    keys.close()
    token = f"notes-{secrets.token_hex(8)}"
    project = tmp_path / "project"
    project.mkdir()
    notes = project / "notes.txt"
    notes.write_text(f"{token}\nthe second line\n")
    emulator.set_default_controls(
        {
            HEADER_TOOL_CALL: "Read",
            HEADER_TOOL_ARGS: json.dumps({"file_path": str(notes)}),
            HEADER_REPLY: f"The first line is {token}",
        }
    )
    first = claude("Read notes.txt and tell me its first line", api_key=key, workdir=project)
    assert first.ok, first.describe()
    session_id = first.session_id()
    emulator.set_default_controls({HEADER_REPLY: "It was a notes file."})
    second = claude(
        "What kind of file was it?",
        api_key=key,
        workdir=project,
        home=first.home,
        args=["--resume", session_id],
    )
    assert second.ok, second.describe()
    assert second.session_id() == session_id, "--resume kept the session"
    model_calls = len(_chat_calls(emulator))
    assert model_calls >= 3, emulator.hits  # the tool call, its answer, the second prompt
    rows = gate.closed_rows(SESSION_USER)
    assert sum(r["protocol"] == "anthropic_messages" for r in rows) == model_calls

    (session,) = json.loads(llmgate(gate.db, "sessions", "--user", SESSION_USER, "--json"))
    assert session["session_id"] == session_id
    assert session["client"].startswith("claude-cli/"), session
    assert session["calls"] >= model_calls >= 2
    assert "Read" in session["tools_used"].split(", "), session
    plain = llmgate(gate.db, "sessions", "--user", SESSION_USER)
    assert session_id in plain and session["client"] in plain  # whole, at 80 columns

    timeline = json.loads(llmgate(gate.db, "session", session_id, "--json"))
    reads = [c for c in timeline["tool_calls"] if c["name"] == "Read"]
    assert len(reads) == 1, timeline["tool_calls"]
    (read,) = reads
    assert json.loads(read["arguments"]) == {"file_path": str(notes)}
    result = read["result"]
    assert result is not None and result["is_error"] is False, read
    assert token in result["excerpt"] and result["bytes"] > len(token)
    assert result["request_id"] != read["request_id"]
    assert sum(e["kind"] == "call" for e in timeline["events"]) >= model_calls
    shown = llmgate(gate.db, "session", session_id)
    assert "tool_call" in shown and "Read" in shown and session_id in shown
