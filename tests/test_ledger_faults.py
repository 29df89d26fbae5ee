"""The audit writer under faults: bad values, a dying thread, a full disk; durable
inserts; and recovery of the rows and reservations of llmgate processes that died."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from addon import cli
from addon.config import QuotaWindow
from addon.ledger.recovery import (
    INTERRUPTED_ERROR,
    InstanceLease,
    close_abandoned,
    is_alive,
    lock_path,
)
from addon.ledger.store import ENCODE_ERROR, UNSTORED_PAYLOAD
from addon.ledger.writer import AuditWriter
from addon.quota.store import QuotaStore
from addon.quota.windows import AppliedWindow, Demand
from tests.postgres_server import ledger_at, ledger_rows
from tests.proxy import ROOT

__all__ = ["ledger_at"]  # the fixture, parametrised over SQLite and PostgreSQL


def rows(db: Path, sql: str, *params: object) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:  # sqlite3's own `with` does not close
        return conn.execute(sql, params).fetchall()


def normal_rows(writer: AuditWriter, n: int) -> None:
    for i in range(n):
        writer.insert("requests", {"id": f"ok{i}", "status": "pending", "started_at": float(i)})


class Odd:
    """Neither JSON nor str can render it; its message would quote a body."""

    def __str__(self) -> str:
        raise ValueError("sk-secret-from-a-body")


@pytest.fixture
def writer(ledger_at: str | Path) -> Iterator[AuditWriter]:
    w = AuditWriter(ledger_at)
    yield w
    w.close()


KILLERS = {
    "lone surrogate": {"user": "al\ud800ice"},
    "int beyond int64": {"input_tokens": 10**20},
    "odd type": {"model": frozenset({"x"})},
}


@pytest.mark.parametrize("killer", list(KILLERS))
def test_a_historical_killer_then_100_rows_give_101_rows(
    ledger_at: str | Path, killer: str
) -> None:
    writer = AuditWriter(ledger_at)
    writer.insert("requests", {"id": "bad", "status": "pending", **KILLERS[killer]})
    normal_rows(writer, 100)
    writer.close()
    assert ledger_rows(ledger_at, "select count(*) from requests") == [(101,)]
    health = writer.health()
    assert (health["rows_written"], health["rows_lost"]) == (101, 0)


def test_all_three_killers_in_one_row_are_stored_as_sane_values(writer: AuditWriter) -> None:
    writer.insert("requests", {"id": "bad", "status": "pending", "user": "al\ud800ice",
                               "input_tokens": 10**20, "output_tokens": -(10**19),
                               "model": {"x": [1]}, "route": frozenset({"y"}),
                               "cost_usd": math.nan,
                               "latency_ms": math.inf, "stream": True})  # fmt: skip
    normal_rows(writer, 100)
    writer.update("requests", "bad", {"cache_read_tokens": 2**63, "reasoning_tokens": 2**63 - 1})
    writer.flush()
    assert ledger_rows(writer.path, "select count(*) from requests") == [(101,)]
    stored = ledger_rows(
        writer.path,
        'select "user", input_tokens, output_tokens, model, route, cost_usd, latency_ms, stream,'
        " cache_read_tokens, reasoning_tokens, reason from requests where id = 'bad'",
    )
    assert stored == [("al?ice", None, None, '{"x": [1]}', "frozenset({'y'})",
                       None, None, 1, None, 2**63 - 1, None)]  # fmt: skip


def test_an_unrenderable_value_gives_a_reduced_row_that_keeps_its_mark(
    writer: AuditWriter, caplog: pytest.LogCaptureFixture
) -> None:
    writer.insert("requests", {"id": "odd", "status": "pending", "started_at": 5.0, "user": Odd()})
    writer.insert("payloads", {"request_id": "odd", "request_body": Odd()})
    writer.insert_many("findings", [{"request_id": "odd", "phase": "request", "category": "secret",
                                     "detector": "d", "action": "redact", "excerpt": Odd(),
                                     "created_at": 6.0}])  # fmt: skip
    # The close succeeds, but the row must stay findable as reduced.
    writer.update("requests", "odd", {"status": "completed", "reason": None, "finished_at": 7.0})
    writer.flush()
    stored = ledger_rows(writer.path, 'select id, started_at, finished_at, status, reason, "user"'
                                      " from requests")  # fmt: skip
    assert stored == [("odd", 5.0, 7.0, "completed", ENCODE_ERROR, None)]
    assert ledger_rows(writer.path, "select request_body from payloads") == [(UNSTORED_PAYLOAD,)]
    assert ledger_rows(writer.path, "select category, excerpt, created_at from findings") == [
        ("secret", None, 6.0)
    ]
    assert writer.health()["rows_reduced"] == 3
    assert "sk-secret" not in caplog.text


def test_the_callers_never_see_an_exception(writer: AuditWriter) -> None:
    writer.insert("requests", None)  # type: ignore[arg-type]
    writer.insert("no_such_table", {"id": "x"})
    writer.update("requests", 42, {"status": "x"})  # type: ignore[arg-type]
    writer.update("requests", "k", None)  # type: ignore[arg-type]
    writer.insert("requests", {})

    def broken() -> Iterator[dict]:
        yield {"request_id": "r", "phase": "request"}
        raise RuntimeError("generator broke")

    writer.insert_many("findings", broken())
    writer.flush()
    health = writer.health()
    assert health["rows_lost"] == 6 and health["alive"]
    assert ledger_rows(writer.path, "select count(*) from findings") == [(1,)]


def test_raise_once_loses_nothing_and_counts_a_restart(
    ledger_at: str | Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LLMGATE_TEST_FAULTS", "ledger_raise_once")
    writer = AuditWriter(ledger_at)
    normal_rows(writer, 50)
    writer.flush()
    health = writer.health()
    assert health["restarts"] == 1 and health["alive"]
    assert (health["rows_written"], health["rows_lost"], health["queue_depth"]) == (50, 0, 0)
    assert health["last_error"] == "RuntimeError"
    normal_rows(writer, 60)  # and the new thread goes on writing
    writer.close()
    assert ledger_rows(ledger_at, "select count(*) from requests") == [(60,)]  # 50 replaced
    assert writer.health()["rows_written"] == 110
    assert any("ended unexpectedly" in r.getMessage() for r in caplog.records)


def test_a_full_disk_counts_every_loss(
    ledger_at: str | Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LLMGATE_TEST_FAULTS", "ledger_disk_full")
    writer = AuditWriter(ledger_at)
    normal_rows(writer, 5)
    writer.update("requests", "ok1", {"status": "completed"})
    writer.flush()
    health = writer.health()
    assert (health["rows_written"], health["rows_reduced"], health["rows_lost"]) == (0, 0, 6)
    assert health["last_error"] == "OperationalError: database or disk is full"
    assert health["last_error_at"] and health["alive"] and health["restarts"] == 0
    losses = [r for r in caplog.records if r.levelno == logging.ERROR and "lost" in r.message]
    assert len(losses) == 6 and all("ok1" not in r.getMessage() for r in losses)
    writer.close()
    assert ledger_rows(ledger_at, "select count(*) from requests") == [(0,)]


def test_insert_durably_returns_once_committed_without_the_linger(ledger_at: str | Path) -> None:
    writer = AuditWriter(ledger_at, linger=30.0)

    async def main() -> tuple[bool, float, list[tuple]]:
        writer.insert("requests", {"id": "plain", "status": "pending"})  # starts a linger
        await asyncio.sleep(0.05)
        began = time.monotonic()
        ok = await writer.insert_durably("requests", {"id": "durable", "status": "pending"})
        took = time.monotonic() - began
        # A second connection, at once: the row, and the one queued before it, are there.
        return ok, took, ledger_rows(ledger_at, "select id from requests order by id")

    try:
        ok, took, found = asyncio.run(main())
    finally:
        writer.close()
    assert ok and took < 5.0
    assert found == [("durable",), ("plain",)]


def test_insert_durably_is_false_when_the_disk_is_full(
    ledger_at: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMGATE_TEST_FAULTS", "ledger_disk_full")
    writer = AuditWriter(ledger_at)
    try:
        ok = asyncio.run(writer.insert_durably("requests", {"id": "d", "status": "pending"}))
    finally:
        writer.close()
    assert ok is False
    assert writer.health()["rows_lost"] == 1


def test_insert_durably_is_false_once_closed(writer: AuditWriter) -> None:
    writer.close()
    assert asyncio.run(writer.insert_durably("requests", {"id": "d"})) is False
    assert writer.health()["alive"] is False


# --- recovery -------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """\
    import sys, time
    from addon.ledger.recovery import InstanceLease
    lease = InstanceLease(sys.argv[1], sys.argv[2])
    print("ready", flush=True)
    time.sleep(120)
    """
)


def hold_lease(db: str | Path, instance: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), instance],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def test_close_abandoned_closes_dead_instances_and_leaves_live_ones(ledger_at: str | Path) -> None:
    db = ledger_at
    dead, live, own, old = "dead000000000000", "live000000000000", "own0000000000000", "0ld0" * 4
    writer = AuditWriter(db)
    for instance in (dead, live, own):
        for n in range(2):
            writer.insert("requests", {"id": f"{instance}{n:016x}", "started_at": 100.0,
                                       "status": "pending", "instance_id": instance})  # fmt: skip
    writer.insert("requests", {"id": f"{dead}{9:016x}", "status": "completed",
                               "instance_id": dead, "started_at": 100.0})  # fmt: skip
    # Written before the instance_id column existed: attributed by its id's prefix.
    writer.insert("requests", {"id": f"{old}{1:016x}", "status": "pending", "started_at": 100.0})
    writer.close()

    killed = hold_lease(db, dead)
    holder = hold_lease(db, live)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert is_alive(db, live) and not is_alive(db, dead)
        with InstanceLease(db, own):
            found = close_abandoned(db, own, now=103.5)
        assert sorted(found) == sorted([dead, old])
        by_status = ledger_rows(db, "select substr(id, 1, 16), status, count(*) from requests"
                             " group by 1, 2 order by 1, 2")  # fmt: skip
        assert by_status == [(old, "interrupted", 1), (dead, "completed", 1),
                             (dead, "interrupted", 2), (live, "pending", 2),
                             (own, "pending", 2)]  # fmt: skip
        closed = ledger_rows(db, "select reason, error, finished_at, latency_ms from requests"
                          " where status = 'interrupted'")  # fmt: skip
        assert set(closed) == {("process_ended", INTERRUPTED_ERROR, 103.5, 3500.0)}
        if isinstance(db, Path):  # SQLite: the leases are lock files beside the ledger
            dead_lock, live_lock = lock_path(db, dead), lock_path(db, live)
            assert dead_lock is not None and not dead_lock.exists()
            assert live_lock is not None and live_lock.exists()
            assert oct(os.stat(live_lock.parent).st_mode & 0o777) == "0o700"
            assert oct(os.stat(live_lock).st_mode & 0o777) == "0o600"
        assert close_abandoned(db, own) == []  # nothing left to do; live still alone
    finally:
        holder.kill()
        holder.wait()
    # PostgreSQL ends the killed holder's session (and its lock) as it sees the socket close.
    deadline = time.monotonic() + 10
    while is_alive(db, live) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert close_abandoned(db, own) == [live]
    pending = ledger_rows(db, "select distinct instance_id from requests where status = 'pending'")
    assert pending == [(own,)]  # never closed by its own recovery


def test_a_lease_is_exclusive_and_removed_on_close(ledger_at: str | Path) -> None:
    db = ledger_at
    lease = InstanceLease(db, "abc")
    with pytest.raises(RuntimeError):
        InstanceLease(db, "abc")
    assert is_alive(db, "abc")
    lease.close()
    assert not is_alive(db, "abc")
    if isinstance(db, Path):
        assert not lease.path.exists()
        with pytest.raises(ValueError):
            InstanceLease(db, "../escape")


def test_release_instances_releases_only_dead_unsettled_reservations(tmp_path: Path) -> None:
    dead, live = "dead000000000000", "live000000000000"
    windows = [
        AppliedWindow(QuotaWindow(window_seconds=60, max_requests=100), "user:alice"),
        AppliedWindow(QuotaWindow(window_seconds=3600, max_input_tokens=10_000), "global"),
    ]
    with QuotaStore(tmp_path / "q.db") as store:
        for rid in (f"{dead}01", f"{dead}02", f"{dead}03", f"{live}01"):
            store.reserve(rid, windows, Demand(input_tokens=100), now=10.0)
        store.settle(f"{dead}03", Demand(input_tokens=40))
        assert store.release_instances([dead, ""]) == 4  # two reservations, two keys each
        after = store.states(windows, now=11.0)
        left = rows(tmp_path / "q.db", "select reservation_id, settled from quota_ledger"
                                       " group by 1 order by 1")  # fmt: skip
        assert left == [(f"{dead}03", 1), (f"{live}01", 0)]
        # The running totals agree with a recount from the ledger rows.
        with closing(sqlite3.connect(tmp_path / "q.db")) as conn:
            conn.execute("delete from quota_sums")
            conn.commit()
        assert store.states(windows, now=11.0) == after
    user = after[0]
    assert (user.used.requests, user.reserved.requests) == (1, 1)
    assert (after[1].used.input_tokens, after[1].reserved.input_tokens) == (40, 100)


# --- llmgate doctor ---------------------------------------------------------------


@pytest.fixture
def fake_gateway() -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy that answers every request itself, as llmgate answers /health."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            seen.append(self.path)
            body = json.dumps({"instance_id": "abc", "ledger": {"rows_lost": 2, "alive": True}})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def doctor_ledger(db: str | Path) -> None:
    writer = AuditWriter(db)
    writer.insert("requests", {"id": "dead000000000000" + "0" * 16, "status": "pending",
                               "instance_id": "dead000000000000", "started_at": 1.0})  # fmt: skip
    writer.insert("requests", {"id": "gone", "status": "interrupted", "started_at": 2.0})
    writer.insert("requests", {"id": "odd", "status": "pending", "user": Odd()})
    writer.update("requests", "odd", {"status": "completed", "reason": None})
    writer.close()


def test_doctor_reports_the_ledger_and_the_gateway(
    ledger_at: str | Path,
    fake_gateway: tuple[str, list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy, seen = fake_gateway
    db = ledger_at
    doctor_ledger(db)
    cli.main(["--db", str(db), "doctor", "--proxy", proxy, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert seen == ["http://llmgate.internal/health"]
    assert report["pending"] == [{"instance": "dead000000000000", "rows": 1,
                                  "oldest_started_at": 1.0, "alive": False}]  # fmt: skip
    assert report["interrupted"]["count"] == 1 and report["encode_errors"]["count"] == 1
    assert report["gateway"]["ledger"]["rows_lost"] == 2 and report["gateway_error"] is None
    cli.main(["--db", str(db), "doctor", "--proxy", proxy])
    text = capsys.readouterr().out
    assert "ledger.rows_lost" in text and "reason ledger_encode_error: 1" in text


def test_doctor_says_how_to_start_an_unreachable_gateway(
    ledger_at: str | Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ledger_at
    doctor_ledger(db)
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--db", str(db), "doctor", "--proxy", f"127.0.0.1:{port}"])
    assert exit_.value.code == 1
    out = capsys.readouterr()
    assert "cannot reach llmgate" in out.err and "./run.sh" in out.err
    assert "dead000000000000" in out.out
