"""The ledger on PostgreSQL, through real llmgate proxies (`LLMGATE_DB=postgresql://…`).

- SDK calls (a session with tool calls, a streamed call, a denial, an upstream
  failure) land in PostgreSQL, and every `llmgate` read command prints the same
  output for them as it does for the same rows in a SQLite ledger;
- strict audit: with the cluster stopped, calls get 503 audit_unavailable and
  nothing goes upstream; once it is back the same process records calls again;
- kill -9 with streams in flight: a restart closes the dead process's rows as
  interrupted/process_ended (its advisory lock is free) and spares a live one's.

The clusters are real (`tests/postgres_server.py`): one shared, and one of its own
for the test that stops it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from addon.ledger.db import open_db
from addon.ledger.recovery import is_alive
from addon.ledger.schema import TABLES, q
from addon.ledger.store import open_database
from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import HEADER_REPLY, HEADER_STATUS, HEADER_TOOL_ARGS, HEADER_TOOL_CALL, Emulator
from tests.hostile import REQUEST_ID, assert_error_format
from tests.postgres_server import PostgresServer, ledger_rows, shared_server
from tests.proxy import ROOT, Proxy
from tests.test_e2e_ledger_faults import (
    QUOTA,
    chat,
    health,
    start_streams,
    wait_for,
    write_policies,
)

SECRET = "AKIAZ7QX3MPLW5RJT2HK"  # an AWS access key id shape the scanner blocks
TOOLS: Any = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("read_file", "list_dir")
]


def pg_proxy(
    tmp_path: Path,
    name: str,
    policies: Path,
    confdir: Path,
    emulator: Emulator,
    url: str,
    **env: str,
) -> Proxy:
    """A proxy on the PostgreSQL ledger at `url`; its local files (quota, HMAC key)
    under tmp_path/state, shared by the proxies of one test as on one machine."""
    environment = {**UPSTREAM_KEYS, "LLMGATE_DB": url, "XDG_STATE_HOME": str(tmp_path / "state")}
    return Proxy(
        policies, tmp_path / f"{name}.db", confdir, upstream_ca=emulator.ca_path,
        env=environment | env,
    ).start()  # fmt: skip


def pending(url: str) -> list[str]:
    return [r[0] for r in ledger_rows(url, "select id from requests where status = 'pending'")]


def unsettled_reservations(tmp_path: Path) -> int:
    quota = tmp_path / "state" / "llmgate" / "audit.db.quota"
    return ledger_rows(quota, "select count(*) from quota_ledger where settled = 0")[0][0]


# --- SDK calls in PostgreSQL, and the CLI alike on both -------------------------------


def llmgate(db: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "80", "PATH": "/usr/bin:/bin", "LLMGATE_DB": str(db)}
    return subprocess.run([sys.executable, "-m", "addon.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)  # fmt: skip


def copy_to_sqlite(url: str, path: Path) -> None:
    """Every row of the PostgreSQL ledger, as it is, into a new SQLite ledger."""
    source, target = open_db(url, read_only=True), open_database(path)
    try:
        for table in [*TABLES, "virtual_keys"]:
            rows = source.rows(f"select * from {q(table)}")
            if not rows:
                continue
            names = ", ".join(q(c) for c in rows[0])
            marks = ", ".join("?" * len(rows[0]))
            with target.transaction():
                target.executemany(
                    f"insert into {q(table)} ({names}) values ({marks})",
                    [tuple(r.values()) for r in rows],
                )
    finally:
        source.close()
        target.close()


def test_sdk_calls_land_in_postgresql_and_every_read_command_prints_the_same_on_sqlite(
    tmp_path: Path, policies_dir: Path, confdir: Path, emulator_server: Emulator
) -> None:
    url = shared_server().new_database()
    tag = secrets.token_hex(4)
    session = {"x-llmgate-session": f"pg-chat-{tag}"}
    with pg_proxy(tmp_path, "proxy", policies_dir, confdir, emulator_server, url) as proxy:
        oa = openai.OpenAI(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
        tools = {HEADER_TOOL_CALL: "read_file,list_dir", HEADER_TOOL_ARGS: '{"path": "/etc"}'}
        messages: Any = [{"role": "user", "content": "look around"}]
        raw = oa.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS, extra_headers=tools | session
        )
        message = raw.parse().choices[0].message
        ids = [raw.headers[REQUEST_ID]]
        messages.append(message.model_dump(exclude_none=True))
        messages += [
            {"role": "tool", "tool_call_id": c.id, "content": f"result of {c.function.name}"}
            for c in message.tool_calls or []
        ]
        raw = oa.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS,
            extra_headers=session | {HEADER_REPLY: "all done"},
        )  # fmt: skip
        ids.append(raw.headers[REQUEST_ID])
        an = anthropic.Anthropic(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
        with an.messages.stream(
            model="claude-haiku-4-5", max_tokens=100,
            messages=[{"role": "user", "content": "say something"}],
            extra_headers={"x-llmgate-session": f"pg-stream-{tag}", HEADER_REPLY: "streamed"},
        ) as stream:  # fmt: skip
            stream.get_final_message()
            ids.append(stream.response.headers[REQUEST_ID])
        with pytest.raises(openai.BadRequestError) as blocked:
            oa.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"my key is {SECRET}"}],
                extra_headers=session,
            )
        ids.append(blocked.value.response.headers[REQUEST_ID])
        with pytest.raises(openai.InternalServerError) as failed:
            oa.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "fail please"}],
                extra_headers={HEADER_STATUS: "500"},
            )  # fmt: skip
        ids.append(failed.value.response.headers[REQUEST_ID])
        statuses = [proxy.row(i)["status"] for i in ids]
    assert statuses == ["completed", "completed", "completed", "denied", "failed"]
    # In PostgreSQL itself: the rows, the tool calls linked to their results, a finding.
    assert ledger_rows(url, "select count(*) from requests") == [(5,)]
    assert ledger_rows(url, "select count(*) from tool_calls where kind = 'call'") == [(2,)]
    assert ledger_rows(url, "select count(*) from tool_call_results"
                            " where result_request_id is not null") == [(2,)]  # fmt: skip
    assert ledger_rows(url, "select count(*) from findings") >= [(1,)]
    assert SECRET not in json.dumps(ledger_rows(url, "select * from payloads"))

    sqlite_copy = tmp_path / "copy.db"
    copy_to_sqlite(url, sqlite_copy)
    short = ids[0][-12:]
    commands = [
        ["tail", "-n", "10"], ["tail", "--json"], ["tail", "--csv"],
        ["tail", "--status", "denied"], ["tail", "--user", "anonymous"], ["tail", "--since", "all"],
        ["show", ids[0]], ["show", short, "--json"], ["show", ids[2]], ["show", ids[3], "--json"],
        ["sessions"], ["sessions", "--json", "--since", "all"], ["session", f"pg-chat-{tag}"],
        ["session", f"pg-chat-{tag}", "--json"], ["session", f"pg-stream-{tag}", "--csv"],
        *(["report", "--by", by, "--since", "all"] for by in
          ("user", "model", "client", "session", "route", "day")),
        ["report", "--json"], ["keys", "list"],
    ]  # fmt: skip
    for command in commands:
        on_pg, on_sqlite = llmgate(url, *command), llmgate(sqlite_copy, *command)
        assert on_pg.returncode == 0 and not on_pg.stderr, (command, on_pg)
        assert on_pg.stdout == on_sqlite.stdout, command
        assert on_pg.stdout.strip(), command
    # doctor: the same ledger report (its gateway part is the unreachable proxy's error).
    reports = []
    for db in (url, sqlite_copy):
        done = llmgate(db, "doctor", "--json", "--proxy", "127.0.0.1:9")
        report = json.loads(done.stdout)
        reports.append({k: v for k, v in report.items() if k != "db"})
    assert reports[0] == reports[1]
    # An unknown id is the same one-line error on both.
    missing = [llmgate(db, "show", "nosuchid").stderr for db in (url, sqlite_copy)]
    assert missing[0] == missing[1] and "no call" in missing[0]


# --- strict audit with the cluster down -----------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.remove()


def test_strict_audit_refuses_while_postgresql_is_down_and_recovers_after(
    tmp_path: Path, confdir: Path, emulator: Emulator, own_cluster: PostgresServer
) -> None:
    url = own_cluster.new_database()
    policies = write_policies(tmp_path / "policies", emulator, "audit: {on_failure: refuse}\n")
    proxy = pg_proxy(tmp_path, "strict", policies, confdir, emulator, url)
    try:
        first = chat(proxy)
        assert first.status_code == 200
        proxy.row(first.headers[REQUEST_ID])
        own_cluster.stop()
        hits = len(emulator.hits)
        answers = [chat(proxy) for _ in range(5)]
        for answer in answers:
            assert_error_format("openai", answer, 503, "audit_unavailable")
        assert len(emulator.hits) == hits  # nothing went upstream
        report = health(proxy)["ledger"]
        assert report["rows_lost"] >= 5 and "OperationalError" in report["last_error"], report
        own_cluster.start()
        # The writer reconnects on its own: no restart of llmgate.
        again = wait_for(
            lambda: (r := chat(proxy)).status_code == 200 and r, timeout=30, what="a 200"
        )
        assert proxy.row(again.headers[REQUEST_ID])["status"] == "completed"
        assert len(emulator.hits) == hits + 1
        # The restart ended the lease's session; its keeper takes the lock again, so
        # no other process's recovery takes this live one for dead.
        instance = health(proxy)["instance_id"]
        wait_for(lambda: is_alive(url, instance), timeout=20, what="the lease taken again")
    finally:
        proxy.stop()
    refused = [a.headers[REQUEST_ID] for a in answers]
    stored = ledger_rows(url, "select id from requests")
    assert not {r[0] for r in stored} & set(refused)  # refused calls were never on record


# --- kill -9, then a restart ------------------------------------------------------------


def test_kill_9_on_postgresql_then_restart_closes_the_dead_rows_and_spares_a_live_one(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    url = shared_server().new_database()
    policies = write_policies(tmp_path / "policies", emulator, QUOTA)
    victim = pg_proxy(tmp_path, "victim", policies, confdir, emulator, url)
    survivor = pg_proxy(tmp_path, "survivor", policies, confdir, emulator, url)
    try:
        start_streams(victim, 6, pause_ms=2000)
        wait_for(lambda: len(pending(url)) == 6, what="six streams in flight")
        victim.kill()
        dead = set(pending(url))
        assert len(dead) == 6 and unsettled_reservations(tmp_path) == 6
        start_streams(survivor, 2, pause_ms=500)
        wait_for(lambda: len(pending(url)) == 8, what="the survivor's streams")
        # The server ends the killed process's sessions, and with them its lease.
        restarted = pg_proxy(tmp_path, "restarted", policies, confdir, emulator, url)
        try:
            still = set(pending(url))
            assert not (still & dead) and len(still) == 2  # the live process's calls
            closed = ledger_rows(
                url,
                f"select status, reason from requests where id in ({','.join('?' * 6)})",
                *dead,
            )
            assert set(closed) == {("interrupted", "process_ended")}
            wait_for(lambda: pending(url) == [], timeout=30, what="the survivor's calls")
            assert unsettled_reservations(tmp_path) == 0
            assert "closed the pending calls of 1 ended process" in restarted.log()
        finally:
            restarted.stop()
    finally:
        survivor.stop()
        victim.stop()
    assert pending(url) == []
