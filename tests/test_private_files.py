"""The ledger, the quota file, the key store and the HMAC key are private to llmgate's user."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon.keys import KeyStore
from addon.ledger.writer import AuditWriter
from addon.quota.worker import QuotaWorker, quota_path
from addon.safety.screening import load_hmac_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    # The usual umask: without llmgate's care, new files would be 0644.
    old = os.umask(0o022)
    yield
    os.umask(old)


def close(*stores: AuditWriter | QuotaWorker | KeyStore) -> None:
    for store in stores:
        store.close()


def open_stores(db: Path) -> tuple[AuditWriter, QuotaWorker, KeyStore]:
    """What the gateway opens for LLMGATE_DB, in the same order."""
    audit = AuditWriter(db)
    quota = QuotaWorker(quota_path(db))
    keys = KeyStore(db)
    load_hmac_key(db.with_name(db.name + ".hmac-key"))
    return audit, quota, keys


def every_file(db: Path) -> list[Path]:
    quota = quota_path(db)
    return [
        db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"),
        quota, quota.with_name(quota.name + "-wal"), quota.with_name(quota.name + "-shm"),
        quota.with_name(quota.name + ".owner"), quota.with_name(quota.name + ".guests"),
        db.with_name(db.name + ".hmac-key"),
    ]  # fmt: skip


def test_every_file_is_created_0600_in_a_0700_directory(tmp_path: Path) -> None:
    db = tmp_path / "state" / "llmgate" / "audit.db"
    audit, quota, keys = open_stores(db)
    try:
        keys.issue("alice", [])
        audit.insert("requests", {"id": "r1", "status": "pending", "started_at": 1.0})
        audit.flush()
        modes = {path.name: oct(mode(path)) for path in every_file(db)}
        assert modes == {path.name: "0o600" for path in every_file(db)}
        assert oct(mode(db.parent)) == "0o700"
        assert sorted(p.name for p in db.parent.iterdir()) == sorted(modes)
    finally:
        close(audit, quota, keys)


def test_an_existing_directory_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    audit, quota, keys = open_stores(tmp_path / "audit.db")
    close(audit, quota, keys)
    assert oct(mode(tmp_path)) == "0o755"
    assert oct(mode(tmp_path / "audit.db")) == "0o600"


def test_files_left_0644_by_an_older_llmgate_are_tightened_with_one_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "audit.db"
    # An old ledger and quota file with live -wal/-shm, and an HMAC key, all 0644.
    holders = []
    for path in (db, quota_path(db)):
        conn = sqlite3.connect(path)
        conn.execute("pragma journal_mode=wal")
        conn.execute("create table t (x)")
        holders.append(conn)
    key = db.with_name(db.name + ".hmac-key")
    key.write_text("ab" * 32)
    old = [path for path in every_file(db) if path.exists()]  # no lock files yet
    for path in old:
        path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="llmgate")
    audit, quota, keys = open_stores(db)
    try:
        assert {path.name: oct(mode(path)) for path in old} == {p.name: "0o600" for p in old}
        lines = [r.getMessage() for r in caplog.records if r.name == "llmgate"]
        for path in old:
            [line] = [line for line in lines if line.startswith(f"{path} ")]
            assert "from 0644 to 0600" in line
        assert len(lines) == len(old)
    finally:
        close(audit, quota, keys)
        for conn in holders:
            conn.close()


def test_a_second_store_on_the_same_file_keeps_the_first_ones_lock(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops this process's POSIX locks on it, SQLite's too.

    Opening a second store must therefore not open and close the database file:
    here, while one connection holds the write lock, another store is opened on
    the same file; another process must still find the database locked.
    """
    db = tmp_path / "audit.db"
    first = KeyStore(db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    second = KeyStore(db)  # passes through private_sqlite again
    probe = textwrap.dedent(
        f"""
        import sqlite3
        conn = sqlite3.connect({str(db)!r}, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            print("acquired")
        except sqlite3.OperationalError as exc:
            print(exc)
        """
    )
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert result.stdout.strip() == "database is locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        close(first, second)
