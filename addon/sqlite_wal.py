"""Opening llmgate's SQLite files: WAL mode, a busy timeout, and patience at start-up.

Switching a new file to WAL, and some schema statements racing another process
that is doing the same, fail with "database is locked" at once instead of
waiting for SQLite's busy handler. Processes (and the `llmgate` command) that
start together therefore retry their set-up for a while.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

SETUP_PATIENCE = 30.0


def retry_locked[T](step: Callable[[], T], patience: float = SETUP_PATIENCE) -> T:
    deadline = time.monotonic() + patience
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def connect_wal(path: str | Path, busy_timeout_ms: int = 30_000) -> sqlite3.Connection:
    """An autocommit connection in WAL mode; `busy_timeout_ms=0` never waits for a lock."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn
