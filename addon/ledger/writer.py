"""The ledger's background writer.

The event loop does not wait for the database: hooks enqueue small operations and
one writer thread applies them in batches, one transaction per batch (on SQLite one
`executemany` per statement shape; on PostgreSQL the same through psycopg 3, which
pipelines each group in one round trip). `close()` drains the queue, so every row
reaches the ledger on shutdown. A PostgreSQL connection that broke (the server
restarted) is reopened for the next batch; the ops of a batch that failed meanwhile
are retried singly, then reduced, then counted as lost, as on SQLite.

Nothing a caller queues can stop the writer. Each op is made storable in the
caller's thread (`store.clean_row`); a batch that fails anyway is retried one op
at a time; an op that still fails is written in reduced form (`store.reduced_row`,
reason `ledger_encode_error`), and one that cannot be written at all is counted
as lost and logged. Should the thread end all the same, a supervisor thread
starts a new one on a fresh connection, which applies the interrupted batch
again. `health()` reports the counts.

On SQLite a checkpointer thread (`sqlite_wal.Checkpointer`) copies the WAL back;
the writer's own commits checkpoint only when it falls behind.

`insert_durably` is for rows that must be on disk before the call goes on: the
writer commits as soon as it sees one (group commit, with whatever else is
queued) instead of after the linger. `insert_journaled` puts such rows on disk in
the caller's thread instead, by one append to the instance's journal (journal.py),
and queues them as plain inserts.

One class for one thread's state (queue, batch, connections, counts, faults), so it
runs past the ~400-line mark rather than hand its internals to a second module.

Test-only: LLMGATE_TEST_FAULTS, read when a writer is made, is a comma-separated
list of faults to inject:
  ledger_raise_once  the next batch raises RuntimeError in the writer thread,
                     outside the per-op handling: the thread ends and the
                     supervisor replaces it.
  ledger_disk_full   every write raises
                     sqlite3.OperationalError("database or disk is full").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from addon.ledger.db import LedgerDB, is_postgres
from addon.ledger.health import Faults, WriterStats, describe_error, where
from addon.ledger.journal import Journal, SealedSegments
from addon.ledger.schema import Dialect, statement_sql
from addon.ledger.store import (
    ENCODE_ERROR,
    clean_row,
    open_database,
    reduce_op,
    storable_text,
)
from addon.sqlite_wal import (
    Checkpointer,
    checkpoint_when_behind,
)

log = logging.getLogger("llmgate.audit")

# (kind, table, payload, waiter, reduced). kind: insert, append (plain INSERT),
# update (payload: (key, fields)), flush (waiter: a threading.Event), retire
# (payload: a sealed journal segment, deleted once the ops before it are in) or stop.
# A durable insert's waiter is (loop, future).
_Op = tuple[str, str, Any, Any, bool]
_STOP: _Op = ("stop", "", None, None, False)
_CONTROL = ("stop", "flush")  # these end a batch; a retire rides in one
_NOT_WRITES = (*_CONTROL, "retire")
_REDUCED_IDS_MAX = 10_000
_BACKOFF_MAX = 5.0


class AuditWriter:
    """Owns the database connection; everything else talks to it through its queue."""

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 2048,
        linger: float = 0.1,
        *,
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        # A file path (SQLite) or a postgresql:// URL.
        self.path: str | Path = path if is_postgres(path) else Path(path)
        self._synchronous: Literal["normal", "full"] = synchronous
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        # Set only by durable ops, flush and close: plain puts never wake the writer.
        self._urgent = threading.Event()
        self._batch_size = batch_size
        self._linger = linger
        self._faults = Faults.from_environment()
        self._stats = WriterStats()
        self._inflight: list[_Op] = []  # taken from the queue, not yet applied
        self._inflight_deaths = 0
        self._backlog = False
        self._reduced_ids: set[str] = set()
        self._closing = False
        self._stopped = False
        self._journal: Journal | None = None  # set by open_journal
        # Until a commit succeeds, and from a failed write to the next success: the
        # journal declines, and strict calls wait for the ledger's own answer.
        self._failing = True
        self._sealed = SealedSegments()  # the writer thread's side of the journal
        # Opened here, so a ledger that cannot be opened stops the gateway's start.
        db = open_database(self.path, synchronous)
        self._dialect: Dialect = db.dialect
        self._checkpointer = (
            Checkpointer(self.path, synchronous) if self._dialect == "sqlite" else None
        )
        self._thread = self._start_writer(db)
        self._supervisor = threading.Thread(
            target=self._supervise, name="llmgate-audit-supervisor", daemon=True
        )
        self._supervisor.start()

    # --- the API hooks call; none of it raises ----------------------------------
    def insert(self, table: str, row: dict[str, Any]) -> None:
        self._submit("insert", table, row, None)

    def update(self, table: str, key: str, fields: dict[str, Any]) -> None:
        self._submit("update", table, (key, fields), None)

    def insert_many(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        try:
            for row in rows:
                self._submit("append", table, row, None)
        except Exception as exc:  # the iterable itself failed
            self._lose("append", table, exc)

    def open_journal(self, directory: Path, instance_id: str) -> None:
        """Let `insert_journaled` write to this instance's journal (journal.py). Called
        under the instance's lease, which keeps other processes from reading it. Only
        SQLite with `synchronous: normal`: a journal is as durable as its commits, and
        with `full` a row must wait for an fsync, on the writer's thread."""
        if self._dialect == "sqlite" and self._synchronous == "normal" and not self._closing:
            self._journal = Journal(directory, instance_id)

    def insert_journaled(self, table: str, *rows: dict[str, Any]) -> bool:
        """Put `rows` on disk now in one append to the journal, and queue them for the
        ledger; False when nothing was written (the caller uses `insert_durably`).

        Declines until the writer has committed once, and from any failed write until
        the next one succeeds: a strict call is then decided by the ledger itself.
        Rows journaled before a failure showed are kept in the journal and folded in
        once the ledger takes them again (or by the next process to start).

        Why: a SQLite commit of an opening row on the loop cost ~0.1 ms a call, one
        page per b-tree the row touches (BENCH.md); an append costs a few microseconds.
        """
        journal = self._journal
        if journal is None or self._closing or not self._thread.is_alive():
            return False
        if self._failing:
            # Rows appended before the failure showed may be missing from the ledger:
            # the writer folds the sealed segment in once a write succeeds.
            self._retire(journal.seal())
            return False
        try:
            ops = [self._prepare("insert", table, row, None) for row in rows]
        except Exception:  # noqa: BLE001 - the writer's path reduces, counts and logs it
            return False
        if any(op is None or op[4] for op in ops):
            return False
        appended = journal.append(table, [op[2] for op in ops if op is not None])
        if appended:
            for op in ops:
                self._queue.put(op)
        if not appended or journal.full:
            self._retire(journal.seal())
        return appended

    async def insert_durably(
        self, table: str, row: dict[str, Any], *, timeout: float = 10.0
    ) -> bool:
        """True once the transaction holding `row` has committed (in reduced form
        too: the call is on record); False if it was not (the write failed, the
        writer is down or closed, or `timeout` passed).

        Only cancellation propagates. A row queued while the writer is down is still
        written once a new writer runs, but the caller is told False.
        """
        try:
            loop = asyncio.get_running_loop()
            committed: asyncio.Future[bool] = loop.create_future()
            if not self._submit("insert", table, row, (loop, committed)):
                return False
            if not self._thread.is_alive():
                return False
            self._urgent.set()
            return await asyncio.wait_for(committed, timeout)
        except TimeoutError:
            log.error("audit: durable insert on %s not committed within %.1fs", table, timeout)
            return False
        except Exception as exc:
            log.error("audit: durable insert on %s failed (%s)", table, type(exc).__name__)
            return False

    def flush(self) -> None:
        """Block until everything submitted so far is committed (tests, CLI, shutdown)."""
        if self._closing:
            return
        done = threading.Event()
        self._queue.put(("flush", "", None, done, False))
        self._urgent.set()
        done.wait()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            if self._journal is not None:
                self._retire(self._journal.seal())
            self._queue.put(_STOP)
            self._urgent.set()
        self._supervisor.join()
        if self._checkpointer is not None:
            # After the writer's: the last connection to close runs a final checkpoint.
            self._checkpointer.close()

    def health(self) -> dict[str, Any]:
        """Cheap and thread-safe; every op ends written, reduced or lost."""
        return {
            "alive": self._thread.is_alive() and not self._closing,
            "queue_depth": self._queue.qsize() + len(self._inflight),
            **self._stats.snapshot(),
        }

    # --- queueing, in the caller's thread ---------------------------------------
    def _submit(self, kind: str, table: str, payload: Any, waiter: Any) -> bool:
        """Queue one op; False if it was not queued."""
        try:
            if self._closing:
                raise RuntimeError("the audit writer is closed")
            op = self._prepare(kind, table, payload, waiter)
            if op is None:
                return False
            self._queue.put(op)
            return True
        except Exception as exc:
            self._lose(kind, table, exc)
            return False

    def _prepare(self, kind: str, table: str, payload: Any, waiter: Any) -> _Op | None:
        """The op with storable values; its reduced form if that fails (raises if none)."""
        try:
            if kind == "update":
                key, fields = payload
                if not isinstance(key, str):
                    raise TypeError("the key is not a str")
                key = storable_text(str.__str__(key))
                cleaned = clean_row(table, fields)
                # Only columns the table lacks, each logged by clean_row: nothing to do.
                return (kind, table, (key, cleaned), waiter, False) if cleaned else None
            cleaned = clean_row(table, payload)
            if not cleaned:
                raise ValueError("no column of the table")
            return (kind, table, cleaned, waiter, False)
        except Exception as exc:
            self._stats.error(exc)
            smaller = reduce_op(kind, table, payload)
            if smaller is None:
                raise
            log.warning("audit %s on %s reduced: %s", kind, table, type(exc).__name__)
            return (kind, table, smaller, waiter, True)

    def _retire(self, segment: Path | None) -> None:
        if segment is not None:
            self._queue.put(("retire", "", segment, None, False))

    def _lose(self, kind: str, table: str, exc: BaseException) -> None:
        self._sealed.lost = True
        self._stats.count(lost=1)
        self._stats.error(exc)
        log.error("audit %s on %s lost: %s", kind, table, describe_error(exc))

    # --- the writer thread -------------------------------------------------------
    def _start_writer(self, db: LedgerDB) -> threading.Thread:
        if self._checkpointer is not None:
            # Checkpointing in its own commits, the writer kept durable rows waiting
            # behind the fsyncs (sqlite_wal.Checkpointer).
            checkpoint_when_behind(db.raw)
        thread = threading.Thread(target=self._run, args=(db,), name="llmgate-audit")
        thread.daemon = True
        thread.start()
        return thread

    def _run(self, conn: LedgerDB) -> None:
        try:
            while True:
                # A batch a failed writer left is applied first, so no op is lost.
                batch = self._inflight or self._take()
                self._inflight = batch
                if self._faults.raise_once:
                    self._faults.raise_once = False
                    raise RuntimeError("ledger_raise_once")
                if self._process(conn, batch):
                    self._stopped = True
                    return
        except BaseException as exc:
            # Reported here, by type and place only: the thread's default report
            # would print the message, and a message may quote a body.
            self._stats.error(exc)
            log.error("audit writer thread failed: %s", where(exc))
        finally:
            with contextlib.suppress(Exception):  # the supervisor opens a fresh one
                conn.close()

    def _take(self) -> list[_Op]:
        first = self._queue.get()
        batch = [first]
        # Sleep, rather than wait on the queue, while ops pile up: a waiting
        # thread is woken by every put, and each wake-up takes the GIL from the
        # event loop. Only durable ops, flush and close cut the sleep short.
        if first[0] not in _CONTROL and first[3] is None and not self._backlog:
            self._urgent.wait(self._linger)
        self._urgent.clear()
        while len(batch) < self._batch_size and batch[-1][0] not in _CONTROL:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        # A full batch means more is waiting: lingering would only add latency.
        self._backlog = len(batch) >= self._batch_size
        return batch

    def _process(self, conn: LedgerDB, batch: list[_Op]) -> bool:
        """Apply a batch, then tell whoever waits on it; True if it held the stop."""
        writes = [op for op in batch if op[0] not in _NOT_WRITES]
        self._sealed.begin_batch()
        outcomes = self._apply(conn, writes)
        if writes and self._checkpointer is not None:
            self._checkpointer.wrote()
        self._inflight = []
        self._inflight_deaths = 0
        _resolve([(op[3], ok) for op, ok in zip(writes, outcomes, strict=True) if op[3]])
        self._sealed.end_batch([op[2] for op in batch if op[0] == "retire"])
        if self._sealed.kept and not self._failing:
            for exc in self._sealed.fold_kept(conn):
                self._failing = True  # the journal declines until a write succeeds
                self._stats.error(exc)
        for op in batch:  # last: a flush returns once the journal is tidied too
            if op[0] == "flush":
                op[3].set()
        return any(op[0] == "stop" for op in batch)

    def _apply(self, conn: LedgerDB, ops: list[_Op]) -> list[bool]:
        if not ops:
            return []
        try:
            self._commit(conn, [self._statement(op) for op in ops])
        except Exception as exc:
            # One bad op must not lose the batch: retry each on its own.
            self._failing = True
            self._stats.error(exc)
            log.error("audit batch of %d failed (%s); retrying singly", len(ops), where(exc))
            outcomes = [self._apply_one(conn, op) for op in ops]
            self._failing = not all(outcomes)
            return outcomes
        self._failing = False
        reduced = sum(op[4] for op in ops)
        self._stats.count(written=len(ops) - reduced, reduced=reduced)
        return [True] * len(ops)

    def _apply_one(self, conn: LedgerDB, op: _Op) -> bool:
        kind, table, payload, waiter, reduced = op
        try:
            self._commit(conn, [self._statement(op)])
            self._stats.count(written=int(not reduced), reduced=int(reduced))
            return True
        except Exception as exc:
            self._stats.error(exc)
            error = exc
        smaller = None if reduced else reduce_op(kind, table, payload)
        if smaller is not None:
            try:
                self._commit(conn, [self._statement((kind, table, smaller, waiter, True))])
                self._stats.count(reduced=1)
                log.warning("audit %s on %s written reduced: %s", kind, table, where(error))
                return True
            except Exception as exc:
                self._stats.error(exc)
                error = exc
        self._lose(kind, table, error)
        return False

    def _commit(self, conn: LedgerDB, statements: list[tuple[str, tuple]]) -> None:
        with conn.transaction():
            self._faults.before_write()
            # Statements of one shape go to the database in one call. The sort is
            # stable and puts every insert before every update, so a row is
            # always created before it is changed, as it was queued.
            statements = sorted(statements, key=lambda st: (not st[0].startswith("INSERT"), st[0]))
            for sql, group in itertools.groupby(statements, key=lambda st: st[0]):
                conn.executemany(sql, [params for _, params in group])

    def _statement(self, op: _Op) -> tuple[str, tuple]:
        kind, table, payload, _, reduced = op
        if kind == "update":
            key, fields = payload
            if table == "requests" and "reason" in fields and key in self._reduced_ids:
                # The call's opening row was reduced (no user, no model...): keep
                # it findable by its reason whatever the close says.
                fields = {**fields, "reason": ENCODE_ERROR}
            return statement_sql(self._dialect, kind, table, tuple(fields)), (*fields.values(), key)
        if reduced and table == "requests":
            if len(self._reduced_ids) >= _REDUCED_IDS_MAX:
                # A call is closed within minutes of opening; forgetting old ids only
                # lets a very late close overwrite the reason.
                self._reduced_ids.clear()
            self._reduced_ids.add(payload["id"])
        return statement_sql(self._dialect, kind, table, tuple(payload)), tuple(payload.values())

    # --- the supervisor ----------------------------------------------------------
    def _supervise(self) -> None:
        while True:
            self._thread.join()
            if self._stopped:
                self._lose_leftovers()
                return
            self._stats.restarted()
            log.error("audit writer thread ended unexpectedly; starting a new one")
            self._inflight_deaths += 1
            if self._inflight and self._inflight_deaths > 1:
                # The same batch ended two writers: applying it again would loop.
                batch, self._inflight = self._inflight, []
                self._abandon(batch, RuntimeError("the batch stopped the writer twice"))
            if not self._restart():
                self._lose_leftovers()
                return

    def _restart(self) -> bool:
        """A new writer on a fresh connection; False if closing and none can be opened."""
        delay = 0.05
        while True:
            try:
                self._thread = self._start_writer(open_database(self.path, self._synchronous))
                return True
            except Exception as exc:
                self._stats.error(exc)
                log.error("audit writer cannot restart (%s); retrying", describe_error(exc))
                if self._closing:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    def _lose_leftovers(self) -> None:
        """Ops queued after the stop, or when no writer could be started, are lost."""
        leftovers = list(self._inflight)
        self._inflight = []
        while True:
            try:
                leftovers.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._abandon(leftovers, RuntimeError("the audit writer is closed"))

    def _abandon(self, ops: list[_Op], why: Exception) -> None:
        for op in ops:
            if op[0] == "flush":
                op[3].set()
            elif op[0] == "stop":
                self._queue.put(op)
            elif op[0] == "retire":
                pass  # the segment stays on disk, for the next process to fold
            else:
                self._lose(op[0], op[1], why)
                if op[3]:
                    _resolve([(op[3], False)])


def _resolve(waiters: list[tuple[Any, bool]]) -> None:
    """Settle durable inserts' futures: one wake-up per event loop, not per op."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
    for (loop, future), ok in waiters:
        by_loop.setdefault(loop, []).append((future, ok))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for future, ok in settled:
        if not future.done():  # a caller that timed out or was cancelled
            future.set_result(ok)
