"""The ledger's tables: columns, schema, and what a value must be to be stored."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from addon.ledger.views import ensure_views
from addon.sqlite_wal import connect_wal, retry_locked

log = logging.getLogger("llmgate.audit")

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

TRUNCATION_MARKER = "\n[llmgate: truncated, {total} bytes in all]"


def default_db_path() -> str:
    """Under the XDG state directory, so the ledger outlives the checkout."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "llmgate" / "audit.db")


def cap_body(body: bytes, limit: int) -> tuple[str, bool]:
    """Decode a body for storage, cut to `limit` bytes with a marker saying so."""
    if len(body) <= limit:
        return body.decode("utf-8", errors="replace"), False
    kept = body[:limit].decode("utf-8", errors="ignore")
    return kept + TRUNCATION_MARKER.format(total=len(body)), True


def open_database(
    path: str | Path, synchronous: Literal["normal", "full"] = "normal"
) -> sqlite_utils.Database:
    """Open (and create) the ledger: WAL mode, so readers never block the writer."""
    db = sqlite_utils.Database(connect_wal(path, synchronous=synchronous))
    retry_locked(lambda: _ensure_schema(db))
    return db


def _ensure_schema(db: sqlite_utils.Database) -> None:
    _ensure_table(db, "requests", REQUEST_COLUMNS, pk="id")
    _ensure_table(db, "payloads", PAYLOAD_COLUMNS, pk="request_id")
    _ensure_table(db, "findings", FINDING_COLUMNS, pk="id")
    _ensure_table(db, "attempts", ATTEMPT_COLUMNS, pk="id")
    _ensure_table(db, "tool_calls", TOOL_CALL_COLUMNS, pk="id")
    db["tool_calls"].create_index(["request_id"], if_not_exists=True)
    db["tool_calls"].create_index(["session_id", "created_at"], if_not_exists=True)
    db["tool_calls"].create_index(["call_id"], if_not_exists=True)
    db["requests"].create_index(["session_id", "started_at"], if_not_exists=True)
    db["attempts"].create_index(["request_id"], if_not_exists=True)
    db["requests"].create_index(["started_at"], if_not_exists=True)
    db["requests"].create_index(["user", "started_at"], if_not_exists=True)
    # Crash recovery and `llmgate doctor` look up the pending rows of each instance.
    db["requests"].create_index(["status", "instance_id"], if_not_exists=True)
    db["findings"].create_index(["request_id"], if_not_exists=True)
    ensure_views(db.conn)


def _ensure_table(db: sqlite_utils.Database, name: str, columns: dict[str, type], pk: str) -> None:
    table = db[name]
    if not table.exists():
        table.create(columns, pk=pk)  # type: ignore[union-attr]
        return
    # Newer llmgate versions add columns; an older file gains them in place.
    missing = {c: t for c, t in columns.items() if c not in table.columns_dict}  # type: ignore[union-attr]
    for column, kind in missing.items():
        table.add_column(column, kind)  # type: ignore[union-attr]


def storable_text(value: str) -> str:
    """A string SQLite can store and a log can print: no lone surrogates."""
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- what a value must be to be stored -----------------------------------------

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
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The reason of a row written in reduced form (`reduced_row`), for `llmgate doctor`.
ENCODE_ERROR = "ledger_encode_error"
UNSTORED_PAYLOAD = "[llmgate: this payload could not be stored]"
_FINDING_KEPT = ("phase", "category", "detector", "action")

_dropped_columns: set[tuple[str, str]] = set()


def clean_row(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` as values sqlite3 binds and SQLite stores without error.

    Raises for an unknown table, a row that is not a mapping, or a value whose
    `str` raises; the writer then stores `reduced_row` instead.
    """
    columns = TABLES[table]
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name not in columns:
            _drop_column(table, name)
            continue
        # Exact types first: they are nearly every value, and cost one comparison.
        kind = type(value)
        if kind is str:
            if not value.isascii():
                value = storable_text(value)
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                value = None  # see _coerce
        elif kind is float:
            if not math.isfinite(value):
                value = None
        elif value is not None:
            value = _coerce(value)
        out[name] = value
    return out


def _coerce(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        # Outside int64 (sqlite3 raises OverflowError) the value is NULL, not
        # clamped: no real count is that large, so it is a wrong number either
        # way, and a clamped INT64_MAX would make SUM() in reports and quotas
        # fail with "integer overflow", where SUM() skips a NULL.
        number = int(value)
        return number if INT64_MIN <= number <= INT64_MAX else None
    if isinstance(value, float):
        real = float(value)
        return real if math.isfinite(real) else None  # SQLite stores NaN as NULL anyway
    if isinstance(value, str):
        return storable_text(str.__str__(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return storable_text(bytes(value).decode("utf-8", "replace"))
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        text = str(value)
    return storable_text(text)


def _drop_column(table: str, name: object) -> None:
    # A column the schema lacks is a bug in llmgate, not in a call: say it once
    # per name (never the value), not once per row. Bounded, whatever the names.
    if (table, str(name)) in _dropped_columns or len(_dropped_columns) > 100:
        return
    _dropped_columns.add((table, str(name)))
    log.warning("audit: table %s has no column %.64r; its values are dropped", table, name)


def reduced_row(table: str, row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The least of a row that still records the call, or None if even that cannot be had.

    Used when a row cannot be cleaned or written as it is: the call keeps its row,
    marked with ENCODE_ERROR (requests) or UNSTORED_PAYLOAD (payloads).
    """
    try:
        if table == "requests":
            out = {
                "id": _text(row.get("id")),
                "started_at": _when(row.get("started_at")),
                "finished_at": _when(row.get("finished_at")),
                "status": _status(row.get("status")),
                "reason": ENCODE_ERROR,
            }
        elif table == "payloads":
            out = {"request_id": _text(row.get("request_id")), "request_body": UNSTORED_PAYLOAD}
        elif table == "findings":
            out = {"request_id": _text(row.get("request_id"))}
            out |= {name: _text(row.get(name)) for name in _FINDING_KEPT}
            out["created_at"] = _when(row.get("created_at"))
        else:
            return None
    except Exception:  # an odd mapping: nothing of it can be trusted
        return None
    key = "id" if table == "requests" else "request_id"
    return out if out[key] is not None else None


def reduced_update(table: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """What an update that cannot be written becomes; None when nothing of it can be."""
    try:
        if table == "requests":
            out: dict[str, Any] = {"reason": ENCODE_ERROR}
            if "status" in fields:
                out["status"] = _status(fields["status"])
            if "finished_at" in fields:
                out["finished_at"] = _when(fields["finished_at"])
            return out
        if table == "payloads":
            response = any(isinstance(k, str) and k.startswith("response_") for k in fields)
            return {("response_body" if response else "request_body"): UNSTORED_PAYLOAD}
    except Exception:
        return None
    return None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return storable_text(str.__str__(value))
    return None


def _status(value: object) -> str:
    return storable_text(value) if type(value) is str else "failed"


def _when(value: object) -> float | None:
    try:
        if type(value) in (int, float):
            when = float(value)  # type: ignore[arg-type]
            return when if math.isfinite(when) else None
    except OverflowError:
        pass
    return None


def reduce_op(kind: str, table: str, payload: Any) -> Any:
    """An insert's or update's payload in reduced form; None when nothing of it can be stored."""
    if kind != "update":
        return reduced_row(table, payload)
    try:
        key, fields = payload
    except Exception:
        return None
    key, smaller = _text(key), reduced_update(table, fields)
    return None if key is None or smaller is None else (key, smaller)


@functools.lru_cache(maxsize=256)
def statement_sql(kind: str, table: str, columns: tuple[str, ...]) -> str:
    """One statement per (kind, table, column set).

    sqlite-utils owns the schema; the hot path uses plain cached statements,
    because its per-call table introspection cost more CPU than the write itself.
    """
    unknown = set(columns) - set(TABLES[table])
    if unknown:
        raise sqlite3.OperationalError(f"{table} has no column(s) {sorted(unknown)}")
    if kind == "update":
        assignments = ", ".join(f"[{c}] = ?" for c in columns)
        return f"UPDATE [{table}] SET {assignments} WHERE [{PRIMARY_KEYS[table]}] = ?"
    verb = "INSERT OR REPLACE" if kind == "insert" else "INSERT"
    names = ", ".join(f"[{c}]" for c in columns)
    return f"{verb} INTO [{table}] ({names}) VALUES ({', '.join('?' * len(columns))})"
