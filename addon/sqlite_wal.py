"""Opening llmgate's SQLite files: WAL mode, a busy timeout, and patience at start-up.

Switching a new file to WAL, and some schema statements racing another process
that is doing the same, fail with "database is locked" at once instead of
waiting for SQLite's busy handler. Processes (and the `llmgate` command) that
start together therefore retry their set-up for a while.

Every file is private to llmgate's user (`addon.private_files`): the main file
is created 0600 before SQLite opens it, so the `-wal` and `-shm` SQLite makes
get the same mode.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from addon.private_files import private_sqlite, tighten_sqlite_side_files

SETUP_PATIENCE = 30.0
WAL_RESTART_FRAMES = 2000  # ~8 MB of 4 KiB pages: the WAL file stays about this size


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


def connect_wal(
    path: str | Path,
    busy_timeout_ms: int = 30_000,
    synchronous: Literal["normal", "full"] = "normal",
) -> sqlite3.Connection:
    """An autocommit connection in WAL mode; `busy_timeout_ms=0` never waits for a lock.

    `synchronous`: in WAL mode "normal" keeps a commit through the process dying,
    "full" also through power loss (an fsync per commit).
    """
    if synchronous not in ("normal", "full"):
        raise ValueError(f"synchronous must be normal or full, not {synchronous!r}")
    db = Path(path)
    private_sqlite(db)
    conn = sqlite3.connect(
        str(db), timeout=busy_timeout_ms / 1000, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    # Made by SQLite just now with the main file's mode; checked again all the same.
    tighten_sqlite_side_files(db)
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL back into the file without blocking writers (PASSIVE).

    A passive checkpoint that a writer keeps appending behind never finds the WAL
    wholly copied, so the WAL never starts over: under steady load the quota file's
    grew by ~14 KB a call, for ever. Past WAL_RESTART_FRAMES a RESTART checkpoint
    waits for the writer, copies everything, and the next write starts the WAL over.
    """
    _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames > WAL_RESTART_FRAMES:
        conn.execute("PRAGMA wal_checkpoint(RESTART)")


def never_checkpoint(conn: sqlite3.Connection) -> None:
    """This connection's commits must stay short; another one checkpoints."""
    conn.execute("PRAGMA wal_autocheckpoint=0")
