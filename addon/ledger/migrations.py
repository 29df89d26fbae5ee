"""Versioned schema migrations, run at start on either backend.

`schema_version` holds one row per migration applied. Migration 1 is the ledger
as llmgate wrote it before migrations existed: it creates what is missing and adds
the columns an older file lacks, so an existing SQLite ledger without the table is
recognised and stamped 1 with nothing lost. A later schema change is a new entry
in `MIGRATIONS`, written against `schema.py` so both dialects get it.

Processes that start together on one ledger take turns: SQLite's write lock
(BEGIN IMMEDIATE) or a PostgreSQL transaction-scoped advisory lock, held for the
whole run, so each migration is applied exactly once. Views are brought up to date
in the same transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from addon.ledger.db import LedgerDB
from addon.ledger.schema import (
    INDEXES,
    SCHEMA,
    add_column_sql,
    create_index_sql,
    create_table_sql,
)
from addon.ledger.views import ensure_views, views_current

log = logging.getLogger("llmgate.audit")
# The advisory lock migrations take on PostgreSQL ("lmgate"); instance leases hash
# their ids into the same 64-bit space, which a collision with this would only delay.
MIGRATION_LOCK = 0x6C6D67617465


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[LedgerDB], None]


def _tables_and_indexes(db: LedgerDB) -> None:
    for table in SCHEMA:
        db.execute(create_table_sql(db.dialect, table))
        have = set(db.columns(table.name))
        for name in table.columns:
            if name not in have:  # a ledger an older llmgate made
                db.execute(add_column_sql(db.dialect, table, name))
    for table_name, columns in INDEXES:
        db.execute(create_index_sql(table_name, columns))


MIGRATIONS: list[Migration] = [
    Migration(
        1, "requests, payloads, findings, attempts, tool_calls, virtual_keys", _tables_and_indexes
    ),
]
LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_version"
    " (version INTEGER PRIMARY KEY, description TEXT, applied_at FLOAT)",
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_version"
    " (version integer PRIMARY KEY, description text, applied_at double precision)",
}


def current_version(db: LedgerDB) -> int:
    """The newest migration applied; 0 for a ledger that has none (or no table)."""
    if "schema_version" not in db.tables():
        return 0
    return int(db.scalar("select coalesce(max(version), 0) from schema_version") or 0)


def migrate(db: LedgerDB) -> list[int]:
    """Apply the migrations the ledger lacks and refresh the views; the versions applied."""
    applied: list[int] = []
    if db.dialect == "sqlite" and current_version(db) == LATEST and views_current(db):
        # Nothing to do: a second store opening the file must not take the write lock
        # (another process may hold it, and a 30 s wait for nothing is a stall).
        return applied
    with db.transaction():
        if db.dialect == "postgresql":
            db.execute("select pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        db.execute(_VERSION_TABLE[db.dialect])
        version = current_version(db)
        if version > LATEST:
            log.warning(
                "audit: the ledger's schema is version %d, newer than this llmgate's %d",
                version,
                LATEST,
            )
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            migration.apply(db)
            db.execute(
                "insert into schema_version (version, description, applied_at) values (?, ?, ?)",
                (migration.version, migration.description, time.time()),
            )
            applied.append(migration.version)
        ensure_views(db)
    if applied:
        log.info("audit: ledger schema migrated to version %d", applied[-1])
    return applied
