"""Running the quota store for the gateway: inline when SQLite is free, else on a thread.

A reserve or a settle is well under 0.1 ms of SQLite work. Handing it to a thread
costs more than that (GIL hand-offs with the event loop, and two of our own
connections contending for SQLite's lock), so both run inline on a connection
that never waits: if another writer (another llmgate process) holds the lock,
the call fails at once with SQLITE_BUSY and the work goes to the worker thread,
which may wait. A settle handed over is queued and applied in a batch; since a
reserve completes before its call goes upstream, no settle can overtake its own
reserve. The quota tables live in their own file beside the ledger, so the audit
writer's batches never hold this lock.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from addon.quota.store import AppliedWindow, Demand, Exceeded, QuotaStore, WindowState

log = logging.getLogger("llmgate.quota")

# Settles wait this long to share one commit: a settle only frees budget, so a
# short delay can only make a window look fuller, never let a call through.
SETTLE_DELAY = 0.02
# Inline commits between two checkpoints on the worker thread (~a few hundred KB of WAL).
CHECKPOINT_EVERY = 200


def quota_path(ledger: str | Path) -> Path:
    """The quota tables' file, beside the ledger (and shared like it between processes)."""
    ledger = Path(ledger)
    return ledger.with_name(ledger.name + ".quota")


class QuotaWorker:
    def __init__(self, path: str | Path) -> None:
        self._fast = QuotaStore(path, busy_timeout_ms=0)
        # An automatic checkpoint would run inside an inline commit and stall the
        # event loop for milliseconds; the worker thread checkpoints instead.
        self._fast.never_checkpoint()
        self._store = QuotaStore(path)
        self._fast_writes = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmgate-quota")
        self._lock = threading.Lock()
        self._settles: list[tuple[str, Demand]] = []
        self._drain_queued = False
        self._pending: list[tuple[str, Demand]] = []  # touched only on the event loop

    async def reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> list[WindowState] | Exceeded:
        try:
            result = self._fast.reserve(reservation_id, windows, demand)
            self._wrote()
            return result
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._store.reserve, reservation_id, windows, demand
        )

    def settle(self, reservation_id: str, actual: Demand) -> None:
        """Queue a settle; queued settles are applied together a moment later, in one commit."""
        self._pending.append((reservation_id, actual))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(SETTLE_DELAY, self._flush)
            except RuntimeError:  # no event loop (tests, shutdown): apply now
                self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._fast.settle_many(batch)
            self._wrote()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                log.error("quota settle of %d calls failed: %s", len(batch), exc)
                return
        with self._lock:
            self._settles.extend(batch)
            if self._drain_queued:
                return
            self._drain_queued = True
        self._pool.submit(self._drain)

    def _wrote(self) -> None:
        self._fast_writes += 1
        if self._fast_writes % CHECKPOINT_EVERY == 0:
            self._pool.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            self._store.checkpoint()
        except sqlite3.Error as exc:
            log.warning("quota checkpoint skipped: %s", exc)

    def _drain(self) -> None:
        with self._lock:
            batch, self._settles = self._settles, []
            self._drain_queued = False
        if not batch:
            return
        try:
            self._store.settle_many(batch)
        except sqlite3.Error as exc:
            log.error("quota settle of %d calls failed: %s", len(batch), exc)

    def close(self) -> None:
        """Apply every queued settle, then close."""
        self._flush()
        self._pool.shutdown(wait=True)
        self._drain()
        self._fast.close()
        self._store.close()
