"""One connection to the ledger, SQLite or PostgreSQL, behind one small interface.

`LLMGATE_DB` (the `llmgate_db` option, the CLI's `--db`) is a file path for SQLite
or a `postgresql://` URL. Everything above this module writes SQL with `?`
placeholders and double-quoted identifiers, which both dialects accept once the
placeholders are psycopg's `%s`; what differs beyond that (view fragments,
`greatest`/`max`) asks `LedgerDB.dialect`.

PostgreSQL connections run in autocommit; `transaction()` opens an explicit one.
A PostgreSQL connection that broke (the server restarted) is reopened on next use,
so a long-lived writer or key store recovers without a restart of llmgate.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from addon.ledger.schema import Dialect
from addon.sqlite_wal import connect_wal

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(_PG_SCHEMES)


def ledger_location(option: str) -> str | Path:
    """The `llmgate_db` option as a URL (PostgreSQL) or an expanded path (SQLite)."""
    return option if is_postgres(option) else Path(option).expanduser()


def local_state_path(location: str | Path) -> Path:
    """Where the files that stay on this machine go (the HMAC key, SQLite quotas):
    beside a SQLite ledger; with PostgreSQL, the default ledger path's directory."""
    if isinstance(location, str) and is_postgres(location):
        from addon.ledger.store import default_db_path

        return Path(default_db_path())
    return Path(location)


def describe_location(location: str | Path) -> str:
    """The ledger's location for messages: a URL without its password."""
    text = str(location)
    if not is_postgres(text) or "@" not in text:
        return text
    scheme, rest = text.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


def database_errors() -> tuple[type[Exception], ...]:
    """The exceptions either driver raises for a database that cannot answer."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


class LedgerDB:
    """A DB-API connection and the paramstyle adapter for its dialect."""

    def __init__(self, dialect: Dialect, raw: Any, reopen: Callable[[], Any]) -> None:
        self.dialect: Dialect = dialect
        self.raw = raw
        self._reopen = reopen

    # --- statements ----------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """A cursor over the statement's result."""
        if self.dialect == "sqlite":
            return self.raw.execute(sql, params)
        self._ensure_open()
        if not params:
            return self.raw.execute(sql)  # no placeholders: `%` stays literal
        return self.raw.execute(_pg(sql), [_pg_value(v) for v in params])

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> None:
        if self.dialect == "sqlite":
            self.raw.executemany(sql, seq)
            return
        self._ensure_open()
        # psycopg 3 pipelines executemany: one round trip for the whole group.
        with self.raw.cursor() as cursor:
            cursor.executemany(_pg(sql), [[_pg_value(v) for v in row] for row in seq])

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: SQLite takes the write lock at once (BEGIN IMMEDIATE)."""
        if self.dialect == "postgresql":
            self._ensure_open()
            with self.raw.transaction():
                yield
            return
        if self.raw.in_transaction:  # a ROLLBACK that failed earlier: start clean
            self.raw.execute("ROLLBACK")
        self.raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # the next transaction tries again
                self.raw.execute("ROLLBACK")
            raise
        self.raw.execute("COMMIT")

    # --- what is there ---------------------------------------------------------------
    def tables(self) -> set[str]:
        if self.dialect == "sqlite":
            sql = "select name from sqlite_master where type = 'table'"
        else:
            sql = (
                "select table_name from information_schema.tables"
                " where table_schema = current_schema() and table_type = 'BASE TABLE'"
            )
        return {row[0] for row in self.execute(sql).fetchall()}

    def views(self) -> set[str]:
        if self.dialect == "sqlite":
            sql = (
                "select name from sqlite_master where type = 'view'"
                " union select name from sqlite_temp_master where type = 'view'"
            )
        else:
            sql = (
                "select table_name from information_schema.views"
                " where table_schema = current_schema()"
            )
        return {row[0] for row in self.execute(sql).fetchall()}

    def columns(self, table: str) -> list[str]:
        if self.dialect == "sqlite":
            return [row[1] for row in self.execute(f'PRAGMA table_info("{table}")').fetchall()]
        return [
            row[0]
            for row in self.execute(
                "select column_name from information_schema.columns where table_schema"
                " = current_schema() and table_name = ? order by ordinal_position",
                (table,),
            ).fetchall()
        ]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()

    def _ensure_open(self) -> None:
        if self.raw.closed or self.raw.broken:
            with contextlib.suppress(Exception):
                self.raw.close()
            self.raw = self._reopen()


def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_value(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL, which SQLite stores: keep the rest of the value.
    if type(value) is str and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def open_db(
    location: str | Path,
    *,
    synchronous: Literal["normal", "full"] = "normal",
    read_only: bool = False,
    busy_timeout_ms: int = 30_000,
) -> LedgerDB:
    """A connection to the ledger at `location`; no schema work (see `store.open_database`)."""
    if isinstance(location, str) and is_postgres(location):
        from addon.ledger.postgres import connect

        url = location

        def reopen() -> Any:
            return connect(url, read_only=read_only)

        return LedgerDB("postgresql", reopen(), reopen)
    path = Path(location)
    if read_only:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        return LedgerDB("sqlite", conn, lambda: conn)
    conn = connect_wal(path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)
    return LedgerDB("sqlite", conn, lambda: conn)
