"""The ledger's background writer.

The event loop never touches SQLite: hooks enqueue small operations and one
writer thread applies them in batches, one transaction per batch. `close()`
drains the queue, so every row reaches the file on shutdown.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from addon.ledger.store import (
    FINDING_COLUMNS,
    PAYLOAD_COLUMNS,
    REQUEST_COLUMNS,
    open_database,
    storable_text,
)

log = logging.getLogger("llmgate.audit")


_Op = tuple[str, str, Any]
_STOP = ("stop", "", None)


class AuditWriter:
    """Owns the database connection; everything else talks to it through `submit`."""

    def __init__(self, path: str | Path, batch_size: int = 2048, linger: float = 0.1) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[_Op] = queue.Queue()
        self._batch_size = batch_size
        self._linger = linger
        self._db = open_database(self.path)
        self._thread = threading.Thread(target=self._run, name="llmgate-audit", daemon=True)
        self._thread.start()

    # --- the API hooks call; each returns at once -------------------------------
    def insert(self, table: str, row: dict[str, Any]) -> None:
        self._queue.put(("insert", table, row))

    def update(self, table: str, key: str, fields: dict[str, Any]) -> None:
        self._queue.put(("update", table, (key, fields)))

    def insert_many(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._queue.put(("append", table, row))

    def flush(self) -> None:
        """Block until everything submitted so far is committed (tests, CLI, shutdown)."""
        self._queue.put(("flush", "", None))
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # --- the writer thread -------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Sleep, rather than wait on the queue, while ops pile up: a waiting
            # thread is woken by every put, and each wake-up takes the GIL from
            # the event loop. One commit per linger also costs far less than one
            # per op.
            if batch[0][0] not in ("stop", "flush"):
                time.sleep(self._linger)
            while len(batch) < self._batch_size and batch[-1][0] not in ("stop", "flush"):
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(op[0] == "stop" for op in batch)
            try:
                self._apply([op for op in batch if op[0] not in ("stop", "flush")])
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                self._db.conn.close()
                return

    def _apply(self, batch: list[_Op]) -> None:
        if not batch:
            return
        statements = []
        for kind, table, payload in batch:
            try:
                statements.append(_statement(kind, table, payload))
            except sqlite3.Error as exc:
                log.error("audit %s on %s dropped: %r", kind, table, exc)
        try:
            with self._db.conn:
                self._db.conn.execute("BEGIN IMMEDIATE")
                # Statements of one shape go to SQLite in one call. The sort is
                # stable and puts every insert before every update, so a row is
                # always created before it is changed, as it was queued.
                statements.sort(key=lambda st: (not st[0].startswith("INSERT"), st[0]))
                for sql, group in itertools.groupby(statements, key=lambda st: st[0]):
                    self._db.conn.executemany(sql, [params for _, params in group])
        except sqlite3.Error as exc:
            # One bad row must not lose the batch: retry each statement on its own.
            log.error("audit batch failed (%r); retrying singly", exc)
            for sql, params in statements:
                try:
                    with self._db.conn:
                        self._db.conn.execute(sql, params)
                except sqlite3.Error as one_exc:
                    log.error("audit write lost (%s): %r", sql.split(" (")[0], one_exc)


_TABLES = {"requests": REQUEST_COLUMNS, "payloads": PAYLOAD_COLUMNS, "findings": FINDING_COLUMNS}
_PKS = {"requests": "id", "payloads": "request_id", "findings": "id"}


@functools.lru_cache(maxsize=256)
def _sql(kind: str, table: str, columns: tuple[str, ...]) -> str:
    """One statement per (kind, table, column set).

    sqlite-utils owns the schema; the hot path uses plain cached statements,
    because its per-call table introspection cost more CPU than the write itself.
    """
    unknown = set(columns) - set(_TABLES[table])
    if unknown:
        raise sqlite3.OperationalError(f"{table} has no column(s) {sorted(unknown)}")
    if kind == "update":
        assignments = ", ".join(f"[{c}] = ?" for c in columns)
        return f"UPDATE [{table}] SET {assignments} WHERE [{_PKS[table]}] = ?"
    verb = "INSERT OR REPLACE" if kind == "insert" else "INSERT"
    names = ", ".join(f"[{c}]" for c in columns)
    return f"{verb} INTO [{table}] ({names}) VALUES ({', '.join('?' * len(columns))})"


def _param(value: Any) -> Any:
    return storable_text(value) if isinstance(value, str) else value


def _statement(kind: str, table: str, payload: Any) -> tuple[str, tuple[Any, ...]]:
    if kind == "update":
        key, fields = payload
        return _sql(kind, table, tuple(fields)), (*map(_param, fields.values()), key)
    return _sql(kind, table, tuple(payload)), tuple(map(_param, payload.values()))
