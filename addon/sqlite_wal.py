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

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from addon.private_files import private_sqlite, tighten_sqlite_side_files

SETUP_PATIENCE = 30.0
WAL_RESTART_FRAMES = 2000  # ~8 MB of 4 KiB pages: the WAL file stays about this size
CHECKPOINT_PAUSE_S = 0.5  # a Checkpointer's least time between two checkpoints

log = logging.getLogger("llmgate")


def is_locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock (worth a wait)."""
    return "locked" in str(exc) or "busy" in str(exc)


def retry_locked[T](step: Callable[[], T], patience: float = SETUP_PATIENCE) -> T:
    deadline = time.monotonic() + patience
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
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
    wholly copied, so the WAL never starts over: under steady load the quota's WAL
    file grew by ~14 KB a call, for ever. Past WAL_RESTART_FRAMES a RESTART checkpoint
    waits for the writer, copies everything, and the next write starts the WAL over.
    """
    _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames > WAL_RESTART_FRAMES:
        conn.execute("PRAGMA wal_checkpoint(RESTART)")


def never_checkpoint(conn: sqlite3.Connection) -> None:
    """This connection's commits must stay short; another one checkpoints."""
    conn.execute("PRAGMA wal_autocheckpoint=0")


def checkpoint_when_behind(conn: sqlite3.Connection) -> None:
    """This connection's commits checkpoint only once the WAL has outgrown what a
    `Checkpointer` keeps it under: a writer faster than its checkpointer is slowed by
    its own checkpoints, as SQLite does by default, instead of growing the WAL."""
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_RESTART_FRAMES}")


class Checkpointer:
    """Checkpoints one WAL file on a thread and a connection of its own.

    Why: SQLite's automatic checkpoint runs inside the commit that crosses its
    threshold, fsyncs included, so the committing thread waits milliseconds for it.
    When that thread is the ledger's writer, every call that needs a commit from it
    meanwhile (a strict audit's opening row) waits too: that was most of the p99 at
    one connection (BENCH.md). The writers call `wrote()` after their commits; a
    checkpoint follows, at most one per CHECKPOINT_PAUSE_S.
    """

    def __init__(self, path: str | Path, synchronous: Literal["normal", "full"]) -> None:
        self.path, self._synchronous = Path(path), synchronous
        self.checkpoints = 0  # run to the end, copied or not
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"llmgate-checkpoint-{self.path.name}", daemon=True
        )
        self._thread.start()

    def wrote(self) -> None:
        self._due.set()

    def close(self) -> None:
        self._stopping.set()
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stopping.is_set():
                self._due.wait()
                if self._stopping.is_set():
                    break
                self._due.clear()
                try:
                    conn = conn or connect_wal(self.path, 0, self._synchronous)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except Exception as exc:  # noqa: BLE001 - the writers' fallback remains
                    log.warning("checkpoint of %s skipped: %s", self.path.name, exc)
                # Fewer, larger checkpoints: each one's fsyncs cost the same. A writer
                # that appends faster meanwhile checkpoints itself past
                # WAL_RESTART_FRAMES (checkpoint_when_behind); this pause also keeps
                # the checkpoint lock free for it.
                self._stopping.wait(CHECKPOINT_PAUSE_S)
        finally:
            if conn is not None:
                conn.close()
