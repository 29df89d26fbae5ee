"""The `llmgate` read commands on a ledger filled by real calls through a real proxy.

Each command runs as the real program would (`python -m addon.cli`), its output piped
at COLUMNS=80: whole ids and model names, JSON and CSV that parse, ISO times, ids
that `show` accepts in every form the log line, the header and `tail` print, report
totals that add up, and one-line errors for bad input.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import (
    HEADER_REPLY,
    HEADER_STATUS,
    HEADER_TOOL_ARGS,
    HEADER_TOOL_CALL,
    Emulator,
)
from tests.proxy import ROOT, Proxy

REQUEST_ID = "x-llmgate-request-id"
# Longer than any 80-column table would leave a model column.
LONG_MODEL = "openai/gpt-4o-mini-with-a-very-long-name-for-narrow-terminals-2026-11-30"
SECRET = "AKIAZ7QX3MPLW5RJT2HK"  # an AWS access key id shape the scanner blocks
ISO_TIME = re.compile(r"\b20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")
TOOLS: Any = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("read_file", "list_dir")
]
TOOLS_ANTHROPIC: Any = [{"name": "read_file", "input_schema": {"type": "object"}}]


@dataclass
class Ledger:
    proxy: Proxy
    db: Path
    chat_session: str
    stream_session: str
    tool_ids: list[str]  # the openai session's call ids: first call, its follow-up
    stream_id: str  # the streamed anthropic call
    blocked_id: str  # denied: a secret in the prompt
    failed_id: str  # the upstream answered 500
    reply_text: str


def llmgate(db: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": str(columns), "PATH": "/usr/bin:/bin", "LLMGATE_DB": str(db)}
    return subprocess.run(
        [sys.executable, "-m", "addon.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def ok(db: Path, *args: str, cut: bool = False) -> str:
    """The output of a command that must succeed; nothing cut unless the data itself
    holds an ellipsis (`cut`: a finding's excerpt is stored masked, `AKIAZ…T2HK`)."""
    out = llmgate(db, *args)
    assert out.returncode == 0 and not out.stderr, out
    assert cut or "…" not in out.stdout, out.stdout
    return out.stdout


def as_json(db: Path, *args: str) -> Any:
    return json.loads(ok(db, *args, "--json", cut=True))


@pytest.fixture(scope="module")
def ledger(
    tmp_path_factory: pytest.TempPathFactory,
    confdir: Path,
    policies_dir: Path,
    emulator_server: Emulator,
) -> Iterator[Ledger]:
    """A proxy with a ledger of its own, and the calls the tests read back."""
    db = tmp_path_factory.mktemp("cli-ledger") / "audit.db"
    with Proxy(
        policies_dir, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as proxy:
        emulator_server.reset()
        tag = secrets.token_hex(4)
        chat_session, stream_session = f"cli-chat-{tag}", f"cli-stream-{tag}"
        oa = openai.OpenAI(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
        # 1. A session of two buffered calls: parallel tool calls, then their results.
        tools = {HEADER_TOOL_CALL: "read_file,list_dir", HEADER_TOOL_ARGS: '{"path": "/etc"}'}
        session = {"x-llmgate-session": chat_session}
        messages: Any = [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": "look around"}]  # fmt: skip
        raw = oa.chat.completions.with_raw_response.create(
            model=LONG_MODEL, messages=messages, tools=TOOLS, extra_headers=tools | session
        )
        message = raw.parse().choices[0].message
        ids = [raw.headers[REQUEST_ID]]
        messages.append(message.model_dump(exclude_none=True))
        messages += [
            {"role": "tool", "tool_call_id": c.id, "content": f"result of {c.function.name}"}
            for c in message.tool_calls or []
        ]
        raw = oa.chat.completions.with_raw_response.create(
            model=LONG_MODEL,
            messages=messages,
            tools=TOOLS,
            extra_headers=session | {HEADER_REPLY: "all done"},
        )
        ids.append(raw.headers[REQUEST_ID])
        # 2. A streamed Anthropic call in a session of its own, offering a tool.
        reply_text = f"streamed words {tag} reassembled"
        an = anthropic.Anthropic(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
        with an.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "say something"}],
            tools=TOOLS_ANTHROPIC,
            extra_headers={"x-llmgate-session": stream_session, HEADER_REPLY: reply_text},
        ) as stream:
            stream.get_final_message()
            stream_id = stream.response.headers[REQUEST_ID]
        # 3. A call denied for a secret in its prompt, in the chat session.
        with pytest.raises(openai.BadRequestError) as blocked:
            oa.chat.completions.create(
                model=LONG_MODEL,
                messages=[{"role": "user", "content": f"my key is {SECRET}"}],
                extra_headers=session,
            )
        blocked_id = blocked.value.response.headers[REQUEST_ID]
        # 4. A call the upstream fails.
        with pytest.raises(openai.InternalServerError) as failed:
            oa.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "fail please"}],
                extra_headers={HEADER_STATUS: "500"},
            )
        failed_id = failed.value.response.headers[REQUEST_ID]
        for request_id in [*ids, stream_id, blocked_id, failed_id]:
            proxy.row(request_id)
        yield Ledger(proxy, db, chat_session, stream_session, ids, stream_id, blocked_id,
                     failed_id, reply_text)  # fmt: skip


def all_ids(ledger: Ledger) -> list[str]:
    return [*ledger.tool_ids, ledger.stream_id, ledger.blocked_id, ledger.failed_id]


# --- sessions and session -------------------------------------------------------------


def test_sessions_lists_each_session_with_its_tools_findings_and_denials(ledger: Ledger) -> None:
    rows = {r["session_id"]: r for r in as_json(ledger.db, "sessions")}
    chat = rows[ledger.chat_session]
    assert chat["calls"] == 3 and chat["denials"] == 1 and chat["findings"] >= 1, chat
    assert chat["tools_used"] == "list_dir, read_file"
    assert chat["client"].startswith("OpenAI/Python "), chat
    assert ISO_TIME.fullmatch(chat["first_call"]) and ISO_TIME.fullmatch(chat["last_call"])
    assert chat["input_tokens"] > 0 and chat["output_tokens"] > 0
    stream = rows[ledger.stream_session]
    assert (stream["calls"], stream["tools_used"], stream["denials"]) == (1, None, 0)
    assert stream["client"].startswith("Anthropic/Python "), stream
    # Piped at 80 columns: whole session ids and client names, on one line each.
    plain = ok(ledger.db, "sessions")
    (line,) = [x for x in plain.splitlines() if ledger.chat_session in x]
    assert chat["client"] in line and "list_dir, read_file" in line
    assert ISO_TIME.search(line)
    assert ok(ledger.db, "sessions", "--user", "nobody-at-all").count("\n") == 1  # the header
    assert ok(ledger.db, "sessions", "--since", "2099-01-01").count("\n") == 1
    parsed = list(csv.DictReader(io.StringIO(ok(ledger.db, "sessions", "--csv"))))
    assert {r["session_id"] for r in parsed} >= {ledger.chat_session, ledger.stream_session}


def test_session_shows_the_timeline_and_links_tool_calls_to_their_results(
    ledger: Ledger,
) -> None:
    data = as_json(ledger.db, "session", ledger.chat_session)
    assert data["session"]["session_id"] == ledger.chat_session
    calls = data["tool_calls"]
    assert [c["name"] for c in calls] == ["read_file", "list_dir"]
    for call in calls:
        assert call["request_id"] == ledger.tool_ids[0]
        assert json.loads(call["arguments"]) == {"path": "/etc"}
        result = call["result"]
        assert result["request_id"] == ledger.tool_ids[1]
        assert result["excerpt"] == f"result of {call['name']}" and result["is_error"] is False
        assert result["bytes"] == len(result["excerpt"])
    kinds = [e["kind"] for e in data["events"]]
    assert kinds.count("call") == 2 and kinds.count("denial") == 1
    assert kinds.count("tool_call") == 2 and kinds.count("tool_result") == 2
    assert "finding" in kinds
    denial = next(e for e in data["events"] if e["kind"] == "denial")
    assert denial["request_id"] == ledger.blocked_id and denial["detail"], denial
    # The plain timeline: every call's short id, the whole model name, the tools.
    plain = ok(ledger.db, "session", ledger.chat_session)
    for request_id in (*ledger.tool_ids, ledger.blocked_id):
        assert request_id[-12:] in plain
    assert LONG_MODEL in plain and "read_file" in plain and '{"path": "/etc"}' in plain
    assert denial["detail"] in plain and SECRET not in plain
    # Any unique prefix of a session id will do.
    assert as_json(ledger.db, "session", ledger.stream_session[:-2])["session"]["calls"] == 1


# --- tail -----------------------------------------------------------------------------


def test_tail_prints_whole_models_short_ids_routes_and_reasons_at_80_columns(
    ledger: Ledger,
) -> None:
    plain = ok(ledger.db, "tail", "-n", "50")
    lines = plain.splitlines()
    assert lines[0].split()[:3] == ["id", "started", "user"]
    for request_id in all_ids(ledger):
        (line,) = [x for x in lines if x.startswith(request_id[-12:] + " ")]
        assert ISO_TIME.search(line), line
    blocked = next(x for x in lines if x.startswith(ledger.blocked_id[-12:]))
    row = ledger.proxy.row(ledger.blocked_id)
    reason = row["reason"]
    assert LONG_MODEL in blocked and "denied" in blocked and row["route"] in blocked
    assert reason and reason in blocked
    rows = as_json(ledger.db, "tail", "-n", "50")
    assert [r["id"] for r in rows][-len(all_ids(ledger)) :] == all_ids(ledger)
    assert all(r["short_id"] == r["id"][-12:] for r in rows)
    parsed = list(csv.DictReader(io.StringIO(ok(ledger.db, "tail", "--csv"))))
    assert parsed[-1]["id"] == ledger.failed_id and parsed[-1]["status"] == "failed"
    # Filters.
    denied = as_json(ledger.db, "tail", "--status", "denied")
    assert [r["id"] for r in denied] == [ledger.blocked_id]
    assert [r["id"] for r in as_json(ledger.db, "tail", "--reason", reason)] == [ledger.blocked_id]
    assert as_json(ledger.db, "tail", "--user", "nobody-at-all") == []
    assert len(as_json(ledger.db, "tail", "-n", "2", "--since", "1h")) == 2


def test_tail_follow_prints_new_calls_as_they_close(ledger: Ledger) -> None:
    env = {"COLUMNS": "80", "PATH": "/usr/bin:/bin"}
    args = ["--db", str(ledger.db), "tail", "-f", "-n", "1", "--interval", "0.1"]
    follow = subprocess.Popen(
        [sys.executable, "-m", "addon.cli", *args], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline().split()[0] == "id"
        follow.stdout.readline()  # the last call
        oa = openai.OpenAI(
            api_key=CALLER_KEY, http_client=ledger.proxy.http_client(), max_retries=0
        )
        raw = oa.chat.completions.with_raw_response.create(
            model=LONG_MODEL, messages=[{"role": "user", "content": "hello"}]
        )
        new_id = raw.headers[REQUEST_ID]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = follow.stdout.readline()
            if line.startswith(new_id[-12:]) and "completed" in line:
                assert LONG_MODEL in line
                break
        else:
            raise AssertionError("tail -f never printed the new call")
    finally:
        follow.terminate()
        follow.wait(10)


# --- show -----------------------------------------------------------------------------


def test_show_accepts_the_header_the_log_line_and_the_tail_id(ledger: Ledger) -> None:
    full = ledger.tool_ids[0]
    tail_line = next(
        x for x in ok(ledger.db, "tail", "-n", "50").splitlines() if x.startswith(full[-12:])
    )
    log_id = next(
        line.split()[line.split().index(full[-12:])]
        for line in ledger.proxy.log().splitlines()
        if full[-12:] in line.split()
    )
    for given in (full, log_id, tail_line.split()[0], full[-5:], full.upper()[-12:]):
        shown = as_json(ledger.db, "show", given)
        assert shown["call"]["id"] == full, given
    # One instance's ids differ only at the end (a counter): a prefix of one names them
    # all, and says how many.
    for given in (full[:16], full[:-1]):
        out = llmgate(ledger.db, "show", given)
        assert out.returncode != 0 and out.stdout == ""
        (line,) = out.stderr.splitlines()
        assert re.search(r"\d+ calls match", line), line


def test_show_renders_the_conversation_tool_calls_and_results(ledger: Ledger) -> None:
    plain = ok(ledger.db, "show", ledger.tool_ids[1])
    assert f"id:             {ledger.tool_ids[1]}" in plain
    assert LONG_MODEL in plain and ISO_TIME.search(plain)
    for expected in ("[system]", "You are terse.", "[user]", "look around", "[assistant]",
                     "tool call read_file", "tool call list_dir", "result of read_file",
                     "--- reply ---", "all done"):  # fmt: skip
        assert expected in plain, expected
    assert "{'" not in plain and "started_at" not in plain  # no Python dicts, no epochs
    data = as_json(ledger.db, "show", ledger.tool_ids[1])
    assert data["call"]["started"].endswith("Z")
    assert data["reply"]["content"][0]["text"] == "all done"
    assert ok(ledger.db, "show", ledger.tool_ids[1], "--csv").startswith("id,")


def test_show_reassembles_a_streamed_reply(ledger: Ledger) -> None:
    plain = ok(ledger.db, "show", ledger.stream_id)
    assert ledger.reply_text in plain and "reassembled from" in plain
    assert "event: " not in plain and "data: " not in plain
    reply = as_json(ledger.db, "show", ledger.stream_id)["reply"]
    texts = [p["text"] for p in reply["content"] if p["type"] == "text"]
    assert texts == [ledger.reply_text]


def test_show_lists_findings_as_a_table_never_the_secret(ledger: Ledger) -> None:
    plain = ok(ledger.db, "show", ledger.blocked_id, cut=True)
    assert "--- findings (" in plain and "secrets" in plain and "denied" in plain
    assert SECRET not in plain
    findings = as_json(ledger.db, "show", ledger.blocked_id)["findings"]
    assert findings and all(ISO_TIME.fullmatch(f["time"]) for f in findings)
    assert {f["category"] for f in findings} == {"secrets"}


# --- report ---------------------------------------------------------------------------


STATUS_KEYS = ("completed", "failed", "cancelled", "denied", "interrupted", "pending", "other")


@pytest.mark.parametrize("by", ["user", "model", "client", "session", "route", "day"])
def test_report_totals_add_up_to_the_ledger(ledger: Ledger, by: str) -> None:
    data = as_json(ledger.db, "report", "--by", by, "--since", "all")
    count = ledger.proxy.query("select count(*) as n from requests")[0]["n"]
    rows, totals = data["rows"], data["totals"]
    assert totals["calls"] == sum(r["calls"] for r in rows) == count
    for row in [*rows, totals]:
        assert sum(row[k] for k in STATUS_KEYS) == row["calls"], row
    assert totals["failed"] >= 1 and totals["denied"] >= 1
    plain = ok(ledger.db, "report", "--by", by, "--since", "all")
    assert plain.splitlines()[-1].split()[:2] == ["total", str(count)]
    if by == "model":
        assert LONG_MODEL in plain
    parsed = list(csv.DictReader(io.StringIO(ok(ledger.db, "report", "--by", by, "--csv"))))
    assert parsed[-1][by] == "total"


# --- the views --------------------------------------------------------------------------


def test_the_views_exist_and_answer_as_the_cli(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.db)
    conn.row_factory = sqlite3.Row
    names = {r[0] for r in conn.execute("select name from sqlite_master where type = 'view'")}
    assert {"calls", "sessions_summary", "session_events", "tool_call_results",
            "cost_by_user_day", "status_by_user_day"} <= names  # fmt: skip
    cli = {r["session_id"]: r for r in as_json(ledger.db, "sessions")}
    for row in conn.execute("select * from sessions_summary"):
        view = {k: row[k] for k in row.keys() if k not in ("first_at", "last_at")}  # noqa: SIM118
        assert cli[row["session_id"]] == view
    linked = conn.execute(
        "select name, result_excerpt from tool_call_results where session_id = ? order by id",
        (ledger.chat_session,),
    ).fetchall()
    assert [tuple(r) for r in linked] == [
        ("read_file", "result of read_file"),
        ("list_dir", "result of list_dir"),
    ]
    by_day = as_json(ledger.db, "report", "--by", "day", "--since", "all")["totals"]
    cost = conn.execute("select sum(calls), sum(cost_usd) from cost_by_user_day").fetchone()
    assert cost[0] == by_day["calls"] and cost[1] == pytest.approx(by_day["cost_usd"])
    statuses = conn.execute("select * from status_by_user_day").fetchall()
    for row in statuses:
        assert sum(row[k] for k in STATUS_KEYS) == row["calls"]


def test_the_datasette_metadata_describes_the_tables_and_its_queries_run(ledger: Ledger) -> None:
    metadata = yaml.safe_load((ROOT / "datasette" / "metadata.yml").read_text())
    database = metadata["databases"]["audit"]
    conn = sqlite3.connect(ledger.db)
    names = {r[0] for r in conn.execute("select name from sqlite_master")}
    assert set(database["tables"]) <= names
    for name, query in database["queries"].items():
        conn.execute(query["sql"]).fetchall()  # runs, on this ledger
        assert query["title"], name
    found = conn.execute(database["queries"]["sessions_with_findings"]["sql"]).fetchall()
    assert ledger.chat_session in {r[0] for r in found}
    by_name = dict(
        (r[0], r[1]) for r in conn.execute(database["queries"]["tool_calls_by_name"]["sql"])
    )
    assert by_name == {"read_file": 1, "list_dir": 1}


# --- bad input ------------------------------------------------------------------------


def test_bad_input_is_one_line_on_stderr_and_a_failing_exit(ledger: Ledger, tmp_path: Path) -> None:
    not_a_ledger = tmp_path / "notes.txt"
    not_a_ledger.write_text("hello, not SQLite\n" * 100)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x)").connection.commit()
    cases = [
        (not_a_ledger, ["tail"]),
        (not_a_ledger, ["sessions"]),
        (other, ["report"]),
        (tmp_path / "missing.db", ["show", "abc"]),
        (tmp_path, ["tail"]),
        (ledger.db, ["show", "ffffffffffffffffffffff"]),
        (ledger.db, ["show", ""]),
        (ledger.db, ["session", "no-such-session"]),
        (ledger.db, ["tail", "-n", "-3"]),
        (ledger.db, ["tail", "-n", "many"]),
        (ledger.db, ["tail", "--since", "yesterday-ish"]),
        (ledger.db, ["sessions", "--since", "2h30"]),
        (ledger.db, ["report", "--by", "colour"]),
        (ledger.db, ["tail", "--json", "--csv"]),
    ]
    for db, args in cases:
        out = llmgate(db, *args)
        assert out.returncode != 0, (args, out)
        assert out.stdout == "" and len(out.stderr.splitlines()) == 1, (args, out)
        assert "Traceback" not in out.stderr and out.stderr.startswith("llmgate"), (args, out)


def test_a_ledger_without_views_is_read_through_temporary_ones(
    ledger: Ledger, tmp_path: Path
) -> None:
    """An older llmgate's file, opened read-only: the CLI answers and writes nothing."""
    copy = tmp_path / "old.db"
    source = sqlite3.connect(ledger.db)
    target = sqlite3.connect(copy)
    source.backup(target)
    for (name,) in target.execute("select name from sqlite_master where type = 'view'"):
        target.execute(f"drop view [{name}]")
    target.commit()
    target.close()
    before = copy.read_bytes()
    assert as_json(copy, "session", ledger.chat_session)["session"]["calls"] == 3
    assert copy.read_bytes() == before
