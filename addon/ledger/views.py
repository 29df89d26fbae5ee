"""SQL views over the ledger: the answers `llmgate` prints, for anyone with SQLite.

The ledger creates them at start (`ensure_views`, CREATE VIEW IF NOT EXISTS), and
the command line reads through them, so `sqlite-utils`, `datasette` and the CLI
agree. Times are ISO-8601 in UTC (`2026-11-30T04:35:07Z`); `short_id` is the last
12 characters of a request id, as the log line and `llmgate tail` print it.

A ledger opened read-only (the CLI on a file an older llmgate wrote) gets the same
views as TEMP views (`ensure_views(conn, temp=True)`): they live only in that
connection and write nothing to the file.
"""

from __future__ import annotations

import sqlite3

ISO = "'%Y-%m-%dT%H:%M:%SZ'"


def _iso(column: str) -> str:
    return f"strftime({ISO}, {column}, 'unixepoch')"


# Every status a call can end in, in the order reports show them. A row whose
# status is none of these (never written by this llmgate) counts as `other`.
STATUSES = ("completed", "failed", "cancelled", "denied", "interrupted", "pending")

_STATUS_SUMS = ",\n    ".join(f"sum(status = '{s}') as {s}" for s in STATUSES)
_KNOWN = ", ".join(f"'{s}'" for s in STATUSES)

VIEWS: dict[str, str] = {
    # One row per call, with ISO times, the short id and its findings counted.
    "calls": f"""
select
    r.id,
    substr(r.id, -12) as short_id,
    {_iso("r.started_at")} as started,
    {_iso("r.finished_at")} as finished,
    date(r.started_at, 'unixepoch') as day,
    r.started_at,
    r.user,
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
    substr(c.request_id, -12) as short_id,
    c.session_id,
    c.call_id,
    c.name,
    c.arguments,
    {_iso("c.created_at")} as called,
    c.created_at,
    r.request_id as result_request_id,
    {_iso("r.created_at")} as answered,
    r.result_bytes,
    r.result_images,
    r.is_error,
    r.excerpt as result_excerpt
from tool_calls c
left join tool_calls r on r.id = (
    select min(x.id) from tool_calls x
    where x.kind = 'result' and x.call_id = c.call_id and x.id > c.id
      and x.session_id is c.session_id
)
where c.kind = 'call'""",
    # One row per agent session: who, with what, when, how much, and what it ran.
    "sessions_summary": f"""
select
    r.session_id,
    group_concat(distinct r.user) as user,
    group_concat(distinct r.client) as client,
    {_iso("min(r.started_at)")} as first_call,
    {_iso("max(r.started_at)")} as last_call,
    min(r.started_at) as first_at,
    max(r.started_at) as last_at,
    count(*) as calls,
    coalesce(sum(r.input_tokens), 0) as input_tokens,
    coalesce(sum(r.output_tokens), 0) as output_tokens,
    sum(r.cost_usd) as cost_usd,
    (select group_concat(name, ', ') from (
        select distinct t.name from tool_calls t
        where t.session_id = r.session_id and t.kind = 'call' and t.name is not null
        order by t.name)) as tools_used,
    (select count(*) from tool_calls t
        where t.session_id = r.session_id and t.kind = 'call') as tool_calls,
    (select count(*) from findings f join requests q on q.id = f.request_id
        where q.session_id = r.session_id) as findings,
    sum(r.status = 'denied') as denials
from requests r
where r.session_id is not null
group by r.session_id""",
    # What one session did, in order: its calls, tool calls, tool results, findings
    # and denials (`llmgate session ID`).
    "session_events": f"""
select session_id, started_at as at, {_iso("started_at")} as time,
    case when status = 'denied' then 'denial' else 'call' end as kind,
    id as request_id, substr(id, -12) as short_id,
    case when upstream_model is not null and upstream_model != coalesce(model, '')
         then coalesce(model, '-') || '->' || upstream_model else model end as name,
    status, reason as detail, input_tokens, output_tokens, cost_usd,
    null as call_id, null as result_bytes, null as is_error
from requests where session_id is not null
union all
select session_id, created_at, {_iso("created_at")}, 'tool_' || kind,
    request_id, substr(request_id, -12),
    coalesce(name, (select c.name from tool_calls c
                    where c.kind = 'call' and c.call_id = t.call_id and c.id < t.id
                    order by c.id desc limit 1)),
    null, case when kind = 'call' then arguments else excerpt end, null, null, null,
    call_id, result_bytes, is_error
from tool_calls t where session_id is not null
union all
select q.session_id, f.created_at, {_iso("f.created_at")}, 'finding',
    f.request_id, substr(f.request_id, -12), f.category,
    f.action, f.phase || ' ' || coalesce(f.location, '') || ': ' || f.detector, null, null, null,
    null, null, null
from findings f join requests q on q.id = f.request_id
where q.session_id is not null""",
    "cost_by_user_day": """
select date(started_at, 'unixepoch') as day, user, count(*) as calls,
    coalesce(sum(input_tokens), 0) as input_tokens,
    coalesce(sum(output_tokens), 0) as output_tokens,
    sum(cost_usd) as cost_usd
from requests
group by day, user""",
    # Every status counted in a column, per day and user: the columns add up to calls.
    "status_by_user_day": f"""
select date(started_at, 'unixepoch') as day, user, count(*) as calls,
    {_STATUS_SUMS},
    sum(status not in ({_KNOWN}) or status is null) as other
from requests
group by day, user""",
}


def ensure_views(conn: sqlite3.Connection, *, temp: bool = False) -> None:
    """Create every view that is missing or out of date (TEMP ones with `temp`, for a
    read-only file: a temp view hides a stored one of the same name)."""
    kind = "TEMP VIEW" if temp else "VIEW"
    schema = "sqlite_temp_master" if temp else "sqlite_master"
    stored = dict(conn.execute(f"select name, sql from {schema} where type = 'view'").fetchall())
    for name, sql in VIEWS.items():
        statement = f"CREATE {kind} IF NOT EXISTS [{name}] AS {sql}"
        if name in stored and stored[name] != _as_stored(statement):
            conn.execute(f"DROP VIEW IF EXISTS {'temp.' if temp else ''}[{name}]")
        conn.execute(statement)


def _as_stored(statement: str) -> str:
    # SQLite keeps a view's text as written, less "IF NOT EXISTS" and "TEMP".
    return statement.replace("TEMP VIEW", "VIEW").replace(" IF NOT EXISTS", "", 1)


def missing_views(conn: sqlite3.Connection) -> list[str]:
    have = {
        row[0]
        for row in conn.execute(
            "select name from sqlite_master where type = 'view'"
            " union select name from sqlite_temp_master where type = 'view'"
        )
    }
    return [name for name in VIEWS if name not in have]
