"""SQL views over the ledger: the answers `llmgate` prints, for anyone with SQL.

The ledger creates them at start (`ensure_views`), and the command line reads
through them, so `sqlite-utils`, `datasette`, `psql` and the CLI agree. Times are
ISO-8601 in UTC (`2026-11-30T04:35:07Z`); `short_id` is the last 12 characters of
a request id, as the log line and `llmgate tail` print it.

One text per view for both dialects: the few functions they do not share (time
formatting, the last characters of a string, string aggregation) are fragments per
dialect (`_FRAGMENTS`); counts are `sum(case ...)`, which both accept, and token
sums are cast to bigint (PostgreSQL's sum of a bigint is a numeric).

A SQLite ledger opened read-only (the CLI on a file an older llmgate wrote) gets
the same views as TEMP views (`ensure_views(conn, temp=True)`): they live only in
that connection and write nothing to the file. On PostgreSQL each view carries a
comment with the digest of its text, so a start re-creates only changed views.
"""

from __future__ import annotations

import hashlib
import sqlite3

from addon.ledger.db import LedgerDB
from addon.ledger.schema import Dialect

_FRAGMENTS: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "iso": "strftime('%Y-%m-%dT%H:%M:%SZ', {0}, 'unixepoch')",
        "day": "date({0}, 'unixepoch')",
        "short": "substr({0}, -12)",
        # Sorted, as PostgreSQL's string_agg(... order by): SQLite 3.40 has no ORDER BY
        # in an aggregate, but concatenates a subquery's rows in its order.
        "users": (
            "(select group_concat(v) from (select distinct q.{0} as v from requests q"
            " where q.session_id = r.session_id and q.{0} is not null order by 1))"
        ),
        "tools": (
            "(select group_concat(name, ', ') from (select distinct t.name from tool_calls t"
            " where {0} order by t.name))"
        ),
    },
    "postgresql": {
        "iso": ("to_char(to_timestamp({0}) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"),
        "day": "to_char(to_timestamp({0}) at time zone 'UTC', 'YYYY-MM-DD')",
        "short": "right({0}, 12)",
        "users": "string_agg(distinct r.{0}, ',' order by r.{0})",
        "tools": (
            "(select string_agg(distinct t.name, ', ' order by t.name) from tool_calls t where {0})"
        ),
    },
}

# Every status a call can end in, in the order reports show them. A row whose
# status is none of these (never written by this llmgate) counts as `other`.
STATUSES = ("completed", "failed", "cancelled", "denied", "interrupted", "pending")


def count_if(condition: str) -> str:
    """How many rows meet `condition`, in SQL both dialects accept."""
    return f"sum(case when {condition} then 1 else 0 end)"


def int_sum(column: str) -> str:
    """A sum of integers as an integer in both dialects, 0 for none."""
    return f"cast(coalesce(sum({column}), 0) as bigint)"


_STATUS_SUMS = ",\n    ".join(count_if(f"status = '{s}'") + f" as {s}" for s in STATUSES)
_KNOWN = ", ".join(f"'{s}'" for s in STATUSES)


def view_sql(dialect: Dialect) -> dict[str, str]:
    f = _FRAGMENTS[dialect]

    def iso(column: str) -> str:
        return f["iso"].format(column)

    def short(column: str) -> str:
        return f["short"].format(column)

    return {
        # One row per call, with ISO times, the short id and its findings counted.
        "calls": f"""
select
    r.id,
    {short("r.id")} as short_id,
    {iso("r.started_at")} as started,
    {iso("r.finished_at")} as finished,
    {f["day"].format("r.started_at")} as day,
    r.started_at,
    r."user",
    r.client,
    r.session_id,
    r.protocol,
    r.model,
    r.upstream_model,
    r.route,
    r.stream,
    r.status,
    r.http_status,
    r.reason,
    r.input_tokens,
    r.output_tokens,
    r.usage_source,
    r.cost_usd,
    r.latency_ms,
    r.upstream_protocol,
    r.tools_offered,
    (select count(*) from findings f where f.request_id = r.id) as findings
from requests r""",
        # Each tool call the model made, with the result the client sent back for it
        # (the first `result` row with its call id recorded after it, in the same session).
        "tool_call_results": f"""
select
    c.id,
    c.request_id,
    {short("c.request_id")} as short_id,
    c.session_id,
    c.call_id,
    c.name,
    c.arguments,
    {iso("c.created_at")} as called,
    c.created_at,
    r.request_id as result_request_id,
    {iso("r.created_at")} as answered,
    r.result_bytes,
    r.result_images,
    r.is_error,
    r.excerpt as result_excerpt
from tool_calls c
left join tool_calls r on r.id = (
    select min(x.id) from tool_calls x
    where x.kind = 'result' and x.call_id = c.call_id and x.id > c.id
      and x.session_id is not distinct from c.session_id
)
where c.kind = 'call'""",
        # One row per agent session: who, with what, when, how much, and what it ran.
        "sessions_summary": f"""
select
    r.session_id,
    {f["users"].format('"user"')} as "user",
    {f["users"].format("client")} as client,
    {iso("min(r.started_at)")} as first_call,
    {iso("max(r.started_at)")} as last_call,
    min(r.started_at) as first_at,
    max(r.started_at) as last_at,
    count(*) as calls,
    {int_sum("r.input_tokens")} as input_tokens,
    {int_sum("r.output_tokens")} as output_tokens,
    sum(r.cost_usd) as cost_usd,
    {f["tools"].format("t.session_id = r.session_id and t.kind = 'call' and t.name is not null")}
        as tools_used,
    (select count(*) from tool_calls t
        where t.session_id = r.session_id and t.kind = 'call') as tool_calls,
    (select count(*) from findings f join requests q on q.id = f.request_id
        where q.session_id = r.session_id) as findings,
    {count_if("r.status = 'denied'")} as denials
from requests r
where r.session_id is not null
group by r.session_id""",
        # What one session did, in order: its calls, tool calls, tool results, findings
        # and denials (`llmgate session ID`). `seq` orders events of one instant as
        # they were recorded (a sort by time alone leaves ties to the engine).
        "session_events": f"""
select session_id, started_at as at, {iso("started_at")} as time,
    case when status = 'denied' then 'denial' else 'call' end as kind,
    id as request_id, {short("id")} as short_id,
    case when upstream_model is not null and upstream_model != coalesce(model, '')
         then coalesce(model, '-') || '->' || upstream_model else model end as name,
    status, reason as detail, input_tokens, output_tokens, cost_usd,
    null as call_id, null as result_bytes, null as is_error, 0 as seq
from requests where session_id is not null
union all
select session_id, created_at, {iso("created_at")}, 'tool_' || kind,
    request_id, {short("request_id")},
    coalesce(name, (select c.name from tool_calls c
                    where c.kind = 'call' and c.call_id = t.call_id and c.id < t.id
                    order by c.id desc limit 1)),
    null, case when kind = 'call' then arguments else excerpt end, null, null, null,
    call_id, result_bytes, is_error, t.id
from tool_calls t where session_id is not null
union all
select q.session_id, f.created_at, {iso("f.created_at")}, 'finding',
    f.request_id, {short("f.request_id")}, f.category,
    f.action, f.phase || ' ' || coalesce(f.location, '') || ': ' || f.detector, null, null, null,
    null, null, null, f.id
from findings f join requests q on q.id = f.request_id
where q.session_id is not null""",
        "cost_by_user_day": f"""
select {f["day"].format("started_at")} as day, "user", count(*) as calls,
    {int_sum("input_tokens")} as input_tokens,
    {int_sum("output_tokens")} as output_tokens,
    sum(cost_usd) as cost_usd
from requests
group by 1, 2""",
        # Every status counted in a column, per day and user: the columns add up to calls.
        "status_by_user_day": f"""
select {f["day"].format("started_at")} as day, "user", count(*) as calls,
    {_STATUS_SUMS},
    {count_if(f"status not in ({_KNOWN}) or status is null")} as other
from requests
group by 1, 2""",
    }


VIEW_NAMES = tuple(view_sql("sqlite"))


def ensure_views(db: LedgerDB, *, temp: bool = False) -> None:
    """Create every view that is missing or out of date (on SQLite, TEMP ones with
    `temp`, for a read-only file: a temp view hides a stored one of the same name)."""
    if db.dialect == "postgresql":
        _ensure_pg_views(db)
        return
    conn: sqlite3.Connection = db.raw
    kind = "TEMP VIEW" if temp else "VIEW"
    schema = "sqlite_temp_master" if temp else "sqlite_master"
    stored = dict(conn.execute(f"select name, sql from {schema} where type = 'view'").fetchall())
    for name, sql in view_sql("sqlite").items():
        statement = f"CREATE {kind} IF NOT EXISTS [{name}] AS {sql}"
        if name in stored and stored[name] != _as_stored(statement):
            conn.execute(f"DROP VIEW IF EXISTS {'temp.' if temp else ''}[{name}]")
        conn.execute(statement)


def views_current(db: LedgerDB) -> bool:
    """Whether every stored SQLite view is the one this llmgate would write (read only)."""
    conn: sqlite3.Connection = db.raw
    stored = dict(
        conn.execute("select name, sql from sqlite_master where type = 'view'").fetchall()
    )
    return all(
        stored.get(name) == _as_stored(f"CREATE VIEW IF NOT EXISTS [{name}] AS {sql}")
        for name, sql in view_sql("sqlite").items()
    )


def _as_stored(statement: str) -> str:
    # SQLite keeps a view's text as written, less "IF NOT EXISTS" and "TEMP".
    return statement.replace("TEMP VIEW", "VIEW").replace(" IF NOT EXISTS", "", 1)


def _ensure_pg_views(db: LedgerDB) -> None:
    """Re-create the views whose comment is not their text's digest. Run inside the
    migration transaction, under its lock: processes starting together queue."""
    stored = {
        row[0]: row[1]
        for row in db.execute(
            "select c.relname, obj_description(c.oid, 'pg_class') from pg_class c"
            " where c.relkind = 'v' and c.relnamespace = current_schema()::regnamespace"
        ).fetchall()
    }
    wanted = view_sql("postgresql")
    stale = [n for n, sql in wanted.items() if stored.get(n) != _digest(sql)]
    # Views may read each other one day: drop every stale one before creating any.
    for name in stale:
        db.execute(f'DROP VIEW IF EXISTS "{name}" CASCADE')
    for name in stale:
        db.execute(f'CREATE VIEW "{name}" AS {wanted[name]}')
        db.execute(f"COMMENT ON VIEW \"{name}\" IS '{_digest(wanted[name])}'")


def _digest(sql: str) -> str:
    return "llmgate " + hashlib.sha256(sql.encode()).hexdigest()[:16]


def missing_views(db: LedgerDB) -> list[str]:
    have = db.views()
    return [name for name in VIEW_NAMES if name not in have]
