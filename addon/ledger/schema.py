"""The ledger's one schema definition, rendered for SQLite and for PostgreSQL.

A small module rather than SQLAlchemy: the ledger is five flat tables, a keys table
and a few indexes, whose columns are one of three types. Rendering that for two
dialects is a dict lookup per column; SQLAlchemy Core would add a large dependency
and its own connection and statement layer in the writer's hot path (which issues
plain cached statements), while the views still need per-dialect SQL either way.

The column maps keep Python types (`str`, `int`, `float`): `store.clean_row` coerces
values to them before anything reaches either database.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

REQUEST_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": float,
    "finished_at": float,
    "user": str,
    "groups": str,
    "client_ip": str,
    "protocol": str,
    "host": str,
    "path": str,
    "model": str,
    "upstream_model": str,
    "provider": str,
    "route": str,
    "stream": int,
    "status": str,
    "http_status": int,
    "error": str,
    "reason": str,
    "input_tokens": int,
    "output_tokens": int,
    "cache_read_tokens": int,
    "cache_write_tokens": int,
    "reasoning_tokens": int,
    "usage_source": str,
    "cost_usd": float,
    "latency_ms": float,
    "ttft_ms": float,
    "upstream_host": str,
    "transport": str,
    "instance_id": str,
    "upstream_protocol": str,
    "session_id": str,
    "client": str,
    "tools_offered": str,
}

PAYLOAD_COLUMNS: dict[str, type] = {
    "request_id": str,
    "request_headers": str,
    "request_body": str,
    "request_truncated": int,
    "response_headers": str,
    "response_body": str,
    "response_truncated": int,
    # A translated call: the request as it left, in the provider's protocol.
    "upstream_request_body": str,
    "upstream_request_truncated": int,
}

# A tool call the model made (`kind` call), or a tool result the client sent back
# (`kind` result), linked to its call by `call_id`. Arguments and excerpts are
# stored redacted and capped (`ledger.tool_calls`).
TOOL_CALL_COLUMNS: dict[str, type] = {
    "id": int,
    "request_id": str,
    "session_id": str,
    "kind": str,
    "call_id": str,
    "name": str,
    "arguments": str,
    "result_bytes": int,
    "result_images": int,
    "is_error": int,
    "excerpt": str,
    "created_at": float,
}

# One row per upstream tried, for calls whose route has fallbacks.
ATTEMPT_COLUMNS: dict[str, type] = {
    "id": int,
    "request_id": str,
    "attempt": int,
    "route": str,
    "upstream_host": str,
    "upstream_protocol": str,
    "status": int,
    "reason": str,
    "error": str,
    "started_at": float,
    "latency_ms": float,
}

FINDING_COLUMNS: dict[str, type] = {
    "id": int,
    "request_id": str,
    "phase": str,
    "location": str,
    "category": str,
    "detector": str,
    "action": str,
    "excerpt": str,
    "value_hmac": str,
    "created_at": float,
}

# Virtual keys (addon/keys.py): only hashes and hints, never a key.
KEY_COLUMNS: dict[str, type] = {
    "key_hash": str,
    "key_hint": str,
    "user": str,
    "groups": str,
    "created_at": float,
    "revoked_at": float,
}


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, type]
    pk: str
    not_null: frozenset[str] = field(default_factory=frozenset)


# The tables the writer writes, by name (what `clean_row` checks against).
TABLES: dict[str, dict[str, type]] = {
    "requests": REQUEST_COLUMNS,
    "payloads": PAYLOAD_COLUMNS,
    "findings": FINDING_COLUMNS,
    "attempts": ATTEMPT_COLUMNS,
    "tool_calls": TOOL_CALL_COLUMNS,
}
PRIMARY_KEYS = {
    "requests": "id",
    "payloads": "request_id",
    "findings": "id",
    "attempts": "id",
    "tool_calls": "id",
}
SCHEMA: list[Table] = [
    *(Table(name, columns, PRIMARY_KEYS[name]) for name, columns in TABLES.items()),
    Table(
        "virtual_keys",
        KEY_COLUMNS,
        "key_hash",
        frozenset({"key_hint", "user", "groups", "created_at"}),
    ),
]
# (table, columns). Named as sqlite-utils named them, so ledgers it made keep theirs.
INDEXES: list[tuple[str, tuple[str, ...]]] = [
    ("tool_calls", ("request_id",)),
    ("tool_calls", ("session_id", "created_at")),
    ("tool_calls", ("call_id",)),
    ("requests", ("session_id", "started_at")),
    ("attempts", ("request_id",)),
    ("requests", ("started_at",)),
    ("requests", ("user", "started_at")),
    # Crash recovery and `llmgate doctor` look up the pending rows of each instance.
    ("requests", ("status", "instance_id")),
    ("findings", ("request_id",)),
]

_TYPES: dict[Dialect, dict[type, str]] = {
    "sqlite": {str: "TEXT", int: "INTEGER", float: "FLOAT"},
    # bigint: SQLite's INTEGER is 64-bit; double precision: PostgreSQL's real is 32-bit.
    "postgresql": {str: "text", int: "bigint", float: "double precision"},
}


def q(name: str) -> str:
    """A quoted identifier both dialects accept (`user` is reserved in PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def column_sql(dialect: Dialect, table: Table, name: str) -> str:
    kind = table.columns[name]
    if name == table.pk:
        if kind is int:
            # Ids the database assigns: SQLite's rowid alias, PostgreSQL's identity.
            if dialect == "sqlite":
                return f"{q(name)} INTEGER PRIMARY KEY"
            return f"{q(name)} bigint generated by default as identity primary key"
        return f"{q(name)} {_TYPES[dialect][kind]} PRIMARY KEY"
    not_null = " NOT NULL" if name in table.not_null else ""
    return f"{q(name)} {_TYPES[dialect][kind]}{not_null}"


def create_table_sql(dialect: Dialect, table: Table) -> str:
    columns = ",\n    ".join(column_sql(dialect, table, name) for name in table.columns)
    return f"CREATE TABLE IF NOT EXISTS {q(table.name)} (\n    {columns}\n)"


def add_column_sql(dialect: Dialect, table: Table, name: str) -> str:
    # A column added later cannot be NOT NULL without a default: rows already exist.
    kind = _TYPES[dialect][table.columns[name]]
    return f"ALTER TABLE {q(table.name)} ADD COLUMN {q(name)} {kind}"


def index_name(table: str, columns: tuple[str, ...]) -> str:
    return f"idx_{table}_{'_'.join(columns)}"


def create_index_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(q(c) for c in columns)
    return f"CREATE INDEX IF NOT EXISTS {q(index_name(table, columns))} ON {q(table)} ({names})"


class UnknownColumnError(ValueError):
    """A statement named a column its table lacks (a bug in llmgate, not in a call)."""


@functools.lru_cache(maxsize=512)
def statement_sql(dialect: Dialect, kind: str, table: str, columns: tuple[str, ...]) -> str:
    """One statement per (dialect, kind, table, column set), with `?` placeholders.

    kind: insert (replace a row with the same key), append (plain INSERT) or update
    (the key is the last parameter). The hot path uses these cached statements.
    """
    unknown = set(columns) - set(TABLES[table])
    if unknown:
        raise UnknownColumnError(f"{table} has no column(s) {sorted(unknown)}")
    pk = PRIMARY_KEYS[table]
    if kind == "update":
        assignments = ", ".join(f"{q(c)} = ?" for c in columns)
        return f"UPDATE {q(table)} SET {assignments} WHERE {q(pk)} = ?"
    names = ", ".join(q(c) for c in columns)
    values = ", ".join("?" * len(columns))
    if kind != "insert":
        return f"INSERT INTO {q(table)} ({names}) VALUES ({values})"
    if dialect == "sqlite":
        return f"INSERT OR REPLACE INTO {q(table)} ({names}) VALUES ({values})"
    others = [c for c in columns if c != pk]
    action = (
        "DO UPDATE SET " + ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in others)
        if others
        else "DO NOTHING"
    )
    return f"INSERT INTO {q(table)} ({names}) VALUES ({values}) ON CONFLICT ({q(pk)}) {action}"
