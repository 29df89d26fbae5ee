"""The ledger's tables: columns, schema, and what a value must be to be stored."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from addon.ledger.db import LedgerDB, open_db
from addon.ledger.migrations import migrate
from addon.ledger.schema import (
    ATTEMPT_COLUMNS,
    FINDING_COLUMNS,
    PAYLOAD_COLUMNS,
    PRIMARY_KEYS,
    REQUEST_COLUMNS,
    TABLES,
    TOOL_CALL_COLUMNS,
)
from addon.sqlite_wal import retry_locked

__all__ = [
    "ATTEMPT_COLUMNS",
    "FINDING_COLUMNS",
    "PAYLOAD_COLUMNS",
    "PRIMARY_KEYS",
    "REQUEST_COLUMNS",
    "TABLES",
    "TOOL_CALL_COLUMNS",
]

log = logging.getLogger("llmgate.audit")

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
    location: str | Path, synchronous: Literal["normal", "full"] = "normal"
) -> LedgerDB:
    """Open (and create or migrate) the ledger: a SQLite file in WAL mode, so readers
    never block the writer, or a PostgreSQL database (`postgresql://` URL)."""
    db = open_db(location, synchronous=synchronous)
    try:
        retry_locked(lambda: migrate(db))
    except BaseException:
        db.close()
        raise
    return db


def storable_text(value: str) -> str:
    """A string SQLite can store and a log can print: no lone surrogates."""
    if value.isascii():
        return value
    return value.encode("utf-8", "replace").decode("utf-8")


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- what a value must be to be stored -----------------------------------------

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
