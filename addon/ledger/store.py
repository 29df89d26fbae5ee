"""The ledger's tables: columns, schema, and what a value must be to be stored."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import sqlite_utils

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
}

PAYLOAD_COLUMNS: dict[str, type] = {
    "request_id": str,
    "request_headers": str,
    "request_body": str,
    "request_truncated": int,
    "response_headers": str,
    "response_body": str,
    "response_truncated": int,
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


def open_database(path: str | Path) -> sqlite_utils.Database:
    """Open (and create) the ledger: WAL mode, so readers never block the writer."""
    db = sqlite_utils.Database(connect_wal(path))
    retry_locked(lambda: _ensure_schema(db))
    return db


def _ensure_schema(db: sqlite_utils.Database) -> None:
    _ensure_table(db, "requests", REQUEST_COLUMNS, pk="id")
    _ensure_table(db, "payloads", PAYLOAD_COLUMNS, pk="request_id")
    _ensure_table(db, "findings", FINDING_COLUMNS, pk="id")
    db["requests"].create_index(["started_at"], if_not_exists=True)
    db["requests"].create_index(["user", "started_at"], if_not_exists=True)
    db["findings"].create_index(["request_id"], if_not_exists=True)


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
