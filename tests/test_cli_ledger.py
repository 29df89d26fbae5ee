"""`llmgate report`, `sessions` and `show` on rows no proxy run leaves easily (every
status, a truncated stream, fallback attempts), written with the ledger's own
AuditWriter so they cannot drift from the schema; on SQLite and on PostgreSQL, whose
outputs must be the same (`test_every_read_prints_the_same_on_both_backends`)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from addon.cli import main
from addon.ledger.writer import AuditWriter
from tests.postgres_server import ledger_at, shared_server
from tests.proxy import ROOT

__all__ = ["ledger_at"]  # the fixture, parametrised over SQLite and PostgreSQL

STATUSES = ["completed", "failed", "cancelled", "denied", "interrupted", "pending"]
INSTANCE = "00000000feedf00d"
NOW = 1_790_000_000.0  # 2026-09-21T...Z, fixed so the ISO times are known


def rid(n: int) -> str:
    return f"{INSTANCE}{n:016x}"


@pytest.fixture
def db(ledger_at: str | Path) -> str | Path:
    return write_ledger(ledger_at)


def write_ledger(path: str | Path) -> str | Path:
    writer = AuditWriter(path)
    for n, status in enumerate([*STATUSES, "completed", "weird-status"]):
        writer.insert(
            "requests",
            {
                "id": rid(n),
                "started_at": NOW + n,
                "finished_at": NOW + n + 0.5,
                "status": status,
                "user": "alice" if n % 2 else "bob",
                "model": "gpt-4o-mini",
                "route": "openai",
                "protocol": "anthropic_messages",
                "path": "/v1/messages",
                "session_id": "sess-1",
                "client": "claude-cli/2.1.0",
                "input_tokens": 10,
                "output_tokens": 5,
                "cost_usd": 0.001,
                "usage_source": "reported",
                "stream": 1,
            },
        )
    # A streamed Anthropic reply cut by the payload cap: `show` reads what is there.
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "type": "message",
         "role": "assistant", "model": "claude-x", "content": [], "usage": {"input_tokens": 3,
         "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Hello "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "there"}}),
    ]  # fmt: skip
    sse = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events)
    writer.insert(
        "payloads",
        {
            "request_id": rid(0),
            "request_body": json.dumps(
                {
                    "model": "claude-x",
                    "max_tokens": 10,
                    "stream": True,
                    "system": "Be brief.",
                    "messages": [{"role": "user", "content": "Hi"}],
                }  # fmt: skip
            ),
            "response_headers": json.dumps({"content-type": "text/event-stream"}),
            "response_body": sse + "event: content_bl\n[llmgate: truncated, 9999 bytes in all]",
            "response_truncated": 1,
        },
    )
    writer.insert_many(
        "attempts",
        [
            {"request_id": rid(0), "attempt": 1, "route": "primary", "status": 503,
             "reason": "upstream_unavailable", "started_at": NOW, "latency_ms": 12.0},
            {"request_id": rid(0), "attempt": 2, "route": "backup", "status": 200,
             "started_at": NOW + 0.1, "latency_ms": 40.0},
        ],
    )  # fmt: skip
    writer.close()
    return path


def run(db: str | Path, *args: str) -> str:
    env = {"COLUMNS": "80", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "addon.cli", "--db", str(db), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


def test_report_counts_every_status_in_a_column_and_totals_add_up(db: str | Path) -> None:
    data = json.loads(run(db, "report", "--by", "user", "--since", "all", "--json"))
    totals = data["totals"]
    assert totals["calls"] == 8
    assert [totals[s] for s in STATUSES] == [2, 1, 1, 1, 1, 1] and totals["other"] == 1
    assert totals["input_tokens"] == 80 and totals["cost_usd"] == pytest.approx(0.008)
    assert sorted(r["user"] for r in data["rows"]) == ["alice", "bob"]
    plain = run(db, "report", "--by", "session", "--since", "all").splitlines()
    assert plain[0].split() == ["session", "calls", *STATUSES, "other", "input", "output",
                                "cost", "$", "unpriced"]  # fmt: skip
    assert plain[-1].split()[:8] == ["total", "8", "2", "1", "1", "1", "1", "1"]
    # The default window is the last 24 hours: these rows are older.
    empty = json.loads(run(db, "report", "--json"))
    assert empty["rows"] == [] and empty["totals"]["calls"] == 0


def test_sessions_counts_denials_and_gives_iso_times(db: str | Path) -> None:
    (row,) = json.loads(run(db, "sessions", "--json"))
    assert (row["session_id"], row["calls"], row["denials"]) == ("sess-1", 8, 1)
    assert row["first_call"] == "2026-09-21T14:13:20Z" and row["last_call"].endswith("Z")
    assert row["client"] == "claude-cli/2.1.0" and row["tools_used"] is None


def test_show_reassembles_a_truncated_stream_and_lists_attempts(db: str | Path) -> None:
    plain = run(db, "show", rid(0)[-12:])
    assert "[system]" in plain and "Be brief." in plain and "Hi" in plain
    assert "Hello there" in plain and "[llmgate: truncated, 9999 bytes in all]" in plain
    assert "--- attempts (2) ---" in plain and "upstream_unavailable" in plain
    assert "started:        2026-09-21T14:13:20Z" in plain
    data = json.loads(run(db, "show", rid(0), "--json"))
    assert [a["route"] for a in data["attempts"]] == ["primary", "backup"]
    assert data["reply"]["content"] == [{"type": "text", "text": "Hello there"}]


def test_a_terminal_gets_a_rich_table_that_cuts_nothing(db: str | Path) -> None:
    """On a terminal (a pty 60 columns wide) the table folds long cells, never cuts."""
    controller, terminal = pty.openpty()
    env = {"COLUMNS": "60", "LINES": "50", "PATH": "/usr/bin:/bin", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "addon.cli", "--db", str(db), "tail"],
        stdout=terminal, stderr=terminal, env=env, cwd=ROOT,
    )  # fmt: skip
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(30) == 0
    screen = b"".join(chunks).decode()
    assert "┃" in screen or "│" in screen  # a rich table
    assert "…" not in screen
    for n in range(8):
        assert rid(n)[-12:] in screen


def test_main_in_process_gives_one_line_errors(
    db: str | Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for args in (["show", "nope"], ["session", "nope"], ["tail", "--since", "soon"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--db", str(db), *args])
        assert exit_.value.code == 1
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_every_read_prints_the_same_on_both_backends(tmp_path: Path) -> None:
    sqlite_db = write_ledger(tmp_path / "audit.db")
    postgres_db = write_ledger(shared_server().new_database())
    commands = [
        ["tail"], ["tail", "--json"], ["tail", "--csv"], ["tail", "--status", "pending"],
        ["tail", "--user", "alice", "--since", "2026-09-01"], ["show", rid(0)],
        ["show", rid(0)[-12:], "--json"], ["show", rid(3), "--csv"], ["sessions"],
        ["sessions", "--user", "bob", "--json"], ["session", "sess-1"],
        ["session", "sess", "--json"], ["session", "sess-1", "--csv"],
        *(["report", "--by", by, "--since", "all"] for by in
          ("user", "model", "client", "session", "route", "day")),
        ["report", "--by", "day", "--since", "all", "--json"], ["report", "--csv"],
        ["keys", "list"],
    ]  # fmt: skip
    for command in commands:
        assert run(postgres_db, *command) == run(sqlite_db, *command), command
