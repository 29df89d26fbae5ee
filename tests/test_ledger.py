"""Pricing, cost and the audit writer."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from addon import sqlite_wal
from addon.config import Pricing
from addon.ledger.pricing import Pricer, cost_usd, estimate_tokens, load_pricing
from addon.ledger.store import cap_body
from addon.ledger.writer import AuditWriter
from addon.protocols.canonical import Usage
from addon.sqlite_wal import WAL_RESTART_FRAMES, connect_wal
from tests.postgres_server import ledger_at, ledger_rows
from tests.proxy import ROOT

__all__ = ["ledger_at"]  # the fixture, parametrised over SQLite and PostgreSQL


def test_longest_prefix_wins_and_route_pricing_overrides() -> None:
    table = load_pricing(ROOT / "policies" / "pricing.yaml")
    # Rates from addon/ledger/data/pricing.yaml (policies/pricing.yaml adds none).
    mini = table.price_for("gpt-4o-mini-2024-07-18")
    assert mini is not None and (mini.input, mini.output, mini.cache_read) == (0.15, 0.60, 0.075)
    full = table.price_for("gpt-4o-2024-08-06")
    assert full is not None and (full.input, full.output, full.cache_read) == (2.50, 10.00, 1.25)
    assert table.price_for("no-such-model") is None
    own = Pricing(input=1, output=2)
    assert Pricer(table).price("gpt-4o", own) is own


def test_cost_uses_all_four_token_kinds() -> None:
    price = Pricing(input=3, output=15, cache_read=0.3, cache_write=3.75)
    usage = Usage(input_tokens=1_000_000 + 200 + 100, output_tokens=10,
                  cache_read_tokens=200, cache_write_tokens=100)  # fmt: skip
    expected = (1_000_000 * 3 + 200 * 0.3 + 100 * 3.75 + 10 * 15) / 1_000_000
    assert cost_usd(usage, price) == pytest.approx(expected)
    assert cost_usd(usage, None) is None


def test_unpriced_model_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer(load_pricing(None))
    assert pricer.price("mystery", None) is None
    assert pricer.price("mystery", None) is None
    assert sum("mystery" in r.message for r in caplog.records) == 1


def test_estimate_is_four_characters_per_token() -> None:
    assert estimate_tokens(["abcd", "efghi"]) == 3
    assert estimate_tokens([]) == 0


def test_payload_cap_marks_truncation() -> None:
    assert cap_body(b"short", 10) == ("short", False)
    text, truncated = cap_body("é".encode() * 10, 5)
    assert truncated and text.startswith("éé") and "truncated, 20 bytes" in text


def test_writer_batches_and_flushes_everything_on_close(ledger_at: str | Path) -> None:
    writer = AuditWriter(ledger_at)
    for i in range(500):
        writer.insert("requests", {"id": f"r{i}", "status": "pending", "started_at": i})
        writer.update("requests", f"r{i}", {"status": "completed"})
    writer.close()
    assert ledger_rows(ledger_at, "select count(*), min(status), max(status) from requests") == [
        (500, "completed", "completed"),
    ]  # fmt: skip
    if isinstance(ledger_at, Path):
        conn = sqlite3.connect(ledger_at)
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:  # sqlite3's own `with` does not close
        return conn.execute(sql).fetchall()


def test_unknown_columns_are_dropped_and_named_once(
    tmp_path: Path, ledger_at: str | Path, caplog: pytest.LogCaptureFixture
) -> None:
    column = f"no_such_{tmp_path.name}"  # named once per process: a name of this test's own
    writer = AuditWriter(ledger_at)
    for i in range(3):
        writer.insert("requests", {"id": f"r{i}", "status": "pending", column: "v4lue"})
    writer.update("requests", "r0", {column: 1})  # nothing left to write
    writer.close()
    assert ledger_rows(writer.path, "select count(*) from requests") == [(3,)]
    said = [r.getMessage() for r in caplog.records if column in r.getMessage()]
    assert len(said) == 1 and "v4lue" not in said[0]


def test_synchronous_is_applied(tmp_path: Path) -> None:
    for setting, code in (("normal", 1), ("full", 2)):
        with closing(connect_wal(tmp_path / "a.db", synchronous=setting)) as conn:
            assert conn.execute("pragma synchronous").fetchone() == (code,)
    with pytest.raises(ValueError):
        connect_wal(tmp_path / "a.db", synchronous="off")  # type: ignore[arg-type]
    writer = AuditWriter(tmp_path / "a.db", synchronous="full")
    writer.insert("requests", {"id": "r"})
    writer.close()
    assert rows(tmp_path / "a.db", "select id from requests") == [("r",)]


def _write_payloads(writer: AuditWriter, first: int, count: int, pace: float = 0) -> None:
    """`count` payload rows of 16 KB each, a flush (so a commit) every 64 (~1 MB), and
    `pace` seconds of sleep after each flush."""
    body = "x" * 16_384
    for i in range(first, first + count):
        writer.insert("payloads", {"request_id": f"r{i}", "request_body": body})
        if i % 64 == 63:
            writer.flush()
            time.sleep(pace)
    writer.flush()


def test_the_ledger_wal_is_checkpointed_beside_the_writer_not_in_its_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread of its own checkpoints the ledger; the writer's commits do not (a
    checkpoint's fsyncs kept durable rows waiting behind them: BENCH.md, the p99 at
    one connection) until the WAL has outgrown WAL_RESTART_FRAMES."""
    monkeypatch.setattr(sqlite_wal, "CHECKPOINT_PAUSE_S", 0.05)
    wal = tmp_path / "a.db-wal"
    writer = AuditWriter(tmp_path / "a.db")
    checkpointer = f"llmgate-checkpoint-{(tmp_path / 'a.db').name}"
    try:
        assert checkpointer in {t.name for t in threading.enumerate()}
        _write_payloads(writer, 0, 16 * 64, pace=0.1)  # ~16 MB, 1 MB each 0.1 s
        assert wal.stat().st_size < 4_000_000  # seen: 1.2 MB, one commit of 1 MB
    finally:
        writer.close()
    assert checkpointer not in {t.name for t in threading.enumerate()}
    assert rows(tmp_path / "a.db", "select count(*) from payloads") == [(16 * 64,)]

    # Without its checkpointer, the writer's commits let the WAL grow past SQLite's
    # automatic threshold (1,000 pages, ~4 MB) up to its own (WAL_RESTART_FRAMES).
    writer = AuditWriter(tmp_path / "b.db")
    try:
        assert writer._checkpointer is not None
        writer._checkpointer.close()
        _write_payloads(writer, 0, 768)  # ~12 MB
        assert (tmp_path / "b.db-wal").stat().st_size > 6_000_000  # default: <= ~5.2 MB
    finally:
        writer.close()


def test_a_failed_checkpoint_is_logged_and_the_next_write_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_wal, "CHECKPOINT_PAUSE_S", 0.01)
    real_connect = sqlite_wal.connect_wal
    failures = [OSError("the disk went away")]

    def connect_once_failing(*args: object, **kwargs: object) -> sqlite3.Connection:
        if failures:
            raise failures.pop()
        return real_connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_wal, "connect_wal", connect_once_failing)
    wal = tmp_path / "a.db-wal"
    checkpointer = sqlite_wal.Checkpointer(tmp_path / "a.db", "normal")
    try:
        with closing(real_connect(tmp_path / "a.db")) as conn:
            sqlite_wal.never_checkpoint(conn)
            conn.execute("CREATE TABLE t (x TEXT)")
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
            checkpointer.wrote()
            deadline = time.monotonic() + 5
            while not any("skipped" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the failure was not logged"
                time.sleep(0.01)
            assert "the disk went away" in caplog.text
            assert checkpointer.checkpoints == 0
            size = wal.stat().st_size
            checkpointer.wrote()  # the thread went on: this one is checkpointed
            deadline = time.monotonic() + 5
            while checkpointer.checkpoints == 0:
                assert time.monotonic() < deadline, "no checkpoint after the failed one"
                time.sleep(0.01)
            # Wholly copied back, the WAL starts over: the same write again fits in it.
            conn.execute("INSERT INTO t VALUES (?)", ("y" * 100_000,))
            assert wal.stat().st_size == size
    finally:
        checkpointer.close()


def test_a_writer_faster_than_its_checkpointer_keeps_the_wal_bounded(tmp_path: Path) -> None:
    """Past WAL_RESTART_FRAMES the writer checkpoints in its own commits, and the
    checkpointer's pause leaves it the checkpoint lock: the WAL stays bounded."""
    wal = tmp_path / "a.db-wal"
    writer = AuditWriter(tmp_path / "a.db")
    try:
        # ~64 MB as fast as it goes: without checkpoints the WAL would hold it all.
        largest = 0
        for first in range(0, 4096, 256):
            _write_payloads(writer, first, 256)
            largest = max(largest, wal.stat().st_size)
        # Seen: 8.9 MB (4.5 MB when the writer checkpointed in every commit).
        assert largest < 4 * WAL_RESTART_FRAMES * 4096, f"the WAL grew to {largest / 1e6:.1f} MB"
    finally:
        writer.close()


# --- one schema, versioned migrations -----------------------------------------


def test_both_backends_get_the_same_tables_columns_and_views(tmp_path: Path) -> None:
    from addon.ledger.schema import SCHEMA
    from addon.ledger.store import open_database
    from addon.ledger.views import VIEW_NAMES
    from tests.postgres_server import shared_server

    shapes = []
    for location in (tmp_path / "a.db", shared_server().new_database()):
        db = open_database(location)
        try:
            shapes.append(
                (
                    {t: db.columns(t) for t in sorted(db.tables())},
                    {v: db.columns(v) for v in sorted(db.views())},
                    db.rows("select version, description from schema_version"),
                )
            )
        finally:
            db.close()
    assert shapes[0] == shapes[1]
    tables, views, versions = shapes[0]
    assert tables == {"schema_version": ["version", "description", "applied_at"]} | {
        t.name: list(t.columns) for t in SCHEMA
    }
    assert sorted(views) == sorted(VIEW_NAMES)
    assert [v["version"] for v in versions] == [1]


def test_a_ledger_from_before_migrations_is_recognised_and_stamped(tmp_path: Path) -> None:
    """A file an older llmgate made (no schema_version, fewer columns, its keys table)."""
    from addon.keys import KeyStore
    from addon.ledger.migrations import current_version
    from addon.ledger.store import open_database

    db_path = tmp_path / "old.db"
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE [requests] ([id] TEXT PRIMARY KEY, [started_at] FLOAT,"
                     " [user] TEXT, [status] TEXT)")  # fmt: skip
        conn.execute("CREATE TABLE virtual_keys (key_hash text primary key, key_hint text not"
                     " null, user text not null, groups text not null, created_at real not null,"
                     " revoked_at real)")  # fmt: skip
        conn.execute("INSERT INTO requests VALUES ('old1', 5.0, 'alice', 'completed')")
        conn.execute("INSERT INTO virtual_keys VALUES ('h', 'lg-abc…wxyz', 'bob', '[]', 1.0, null)")
        conn.commit()
    db = open_database(db_path)
    try:
        assert current_version(db) == 1
        assert "session_id" in db.columns("requests") and "tool_calls" in db.tables()
        assert db.rows('select id, "user", status from requests') == [
            {"id": "old1", "user": "alice", "status": "completed"}
        ]
    finally:
        db.close()
    assert [k["user"] for k in KeyStore(db_path).list()] == ["bob"]
    db = open_database(db_path)  # a second start applies nothing again
    try:
        assert db.scalar("select count(*) from schema_version") == 1
    finally:
        db.close()


def test_virtual_keys_live_in_either_backend(ledger_at: str | Path) -> None:
    from addon.keys import KeyStore

    store = KeyStore(ledger_at)
    try:
        key = store.issue("alice", ["eng"])
        found = store.lookup(key)
        assert found is not None and (found.user, found.groups) == ("alice", ("eng",))
        assert [row["user"] for row in store.list()] == ["alice"]
        assert store.revoke(key) == 1 and store.lookup(key) is None
    finally:
        store.close()
