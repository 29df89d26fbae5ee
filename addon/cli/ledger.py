"""Opening the ledger read-only, finding a call by any part of its id, reading times.

The read commands get a `LedgerDB` (addon/ledger/db.py): one interface over a SQLite
file or a PostgreSQL database, with `?` placeholders and dict rows either way, and
SQL both dialects answer alike (the views hide what differs).
"""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from addon.cli.output import CliError
from addon.ledger.db import LedgerDB, database_errors, describe_location, is_postgres, open_db
from addon.ledger.views import ensure_views, missing_views

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def open_ledger(db: str, *, views: bool = True) -> LedgerDB:
    """The ledger at `db` (a path or a postgresql:// URL), read-only, with its views;
    CliError if there is none.

    Without `views` (`doctor`), any SQLite file or PostgreSQL database will do."""
    if is_postgres(db):
        return _open_postgres(db, views=views)
    path = Path(db)
    if not path.exists():
        raise CliError(f"no ledger at {db}: start the proxy, or name one with --db or LLMGATE_DB")
    if not path.is_file():
        raise CliError(f"{db} is not a file")
    try:
        conn = open_db(path, read_only=True)
        tables = conn.tables()
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{db} is not an llmgate ledger ({exc})") from None
    if views and "requests" not in tables:
        raise CliError(f"{db} is not an llmgate ledger (it has no requests table)")
    if views and missing_views(conn):
        try:
            ensure_views(conn, temp=True)
        except sqlite3.Error as exc:
            raise CliError(
                f"{db} was written by an older llmgate ({exc}): start the gateway on it once"
            ) from None
    return conn


def _open_postgres(url: str, *, views: bool) -> LedgerDB:
    where = describe_location(url)
    try:
        conn = open_db(url, read_only=True)
        tables = conn.tables()
    except database_errors() as exc:
        raise CliError(f"cannot read the ledger {where}: {exc}") from None
    if views and "requests" not in tables:
        raise CliError(f"{where} is not an llmgate ledger (it has no requests table)")
    if views and missing_views(conn):
        # Views are made by the gateway's migrations; a read-only session cannot.
        raise CliError(f"{where} lacks llmgate's views: start the gateway on it once")
    return conn


def resolve_id(conn: LedgerDB, text: str, *, table: str = "requests") -> str:
    """The one id in `table` that is `text`, starts with it or ends with it."""
    key = "id" if table == "requests" else "session_id"
    given = text.strip()
    if not given:
        raise CliError("an empty id")
    exact = conn.scalar(f"select 1 from {table} where {key} = ? limit 1", (given,))
    if exact:
        return given
    escaped = given.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    matches = [
        row[0]
        for row in conn.execute(
            f"""select distinct {key} from {table}
                where {key} like ? escape '\\' or {key} like ? escape '\\' limit 1000""",
            (escaped + "%", "%" + escaped),
        ).fetchall()
    ]
    what = "call" if table == "requests" else "session"
    if not matches:
        raise CliError(f"no {what} has an id that starts or ends with {given!r}")
    if len(matches) > 1:
        count = f"{len(matches)}" if len(matches) < 1000 else "1000 or more"
        raise CliError(f"{count} {what}s match {given!r}: give more of the id")
    return str(matches[0])


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """`2h`, `30m`, `1d12h`, `90s`, `2w` ago, or an ISO date or time (UTC unless it
    says otherwise), as an epoch time; None for no limit (`all`)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    value = text.strip().lower()
    now = time.time() if now is None else now
    if _DURATION.fullmatch(value) or re.fullmatch(rf"(?:{_DURATION.pattern})+", value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
        return now - seconds
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--since {text!r}: give a duration (30m, 2h, 7d) or an ISO date or time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
