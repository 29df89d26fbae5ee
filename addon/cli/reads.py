"""The ledger reads: `sessions`, `session`, `tail` and `report`, all through the
ledger's views (addon/ledger/views.py), so SQL users get the same answers."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from addon.cli.ledger import open_ledger, parse_since, resolve_id
from addon.cli.output import Column, emit, fmt, one_line, wants_rich, write
from addon.ledger.db import LedgerDB
from addon.ledger.views import STATUSES, count_if, int_sum


def _cost(value: Any) -> str:
    return "-" if value is None else f"{value:.6f}"


def _rows(conn: LedgerDB, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return conn.rows(sql, params)


# --- sessions -------------------------------------------------------------------

SESSION_COLUMNS = [
    Column("session_id", "session", whole=True),
    Column("user", "user", whole=True),
    Column("client", "client", whole=True),
    Column("first_call", "first call", whole=True),
    Column("last_call", "last call", whole=True),
    Column("calls", "calls", right=True),
    Column("input_tokens", "in", right=True),
    Column("output_tokens", "out", right=True),
    Column("cost_usd", "cost $", right=True, show=_cost),
    Column("tools_used", "tools"),
    Column("findings", "findings", right=True),
    Column("denials", "denials", right=True),
]


def cmd_sessions(args: argparse.Namespace) -> None:
    conn = open_ledger(args.db)
    where, params = ["1 = 1"], []
    since = parse_since(args.since)
    if since is not None:
        where.append("last_at >= ?")
        params.append(since)
    if args.user:
        where.append('session_id in (select session_id from requests where "user" = ?)')
        params.append(args.user)
    rows = _rows(
        conn,
        f"select * from sessions_summary where {' and '.join(where)} order by first_at",
        params,
    )
    for row in rows:
        row.pop("first_at")
        row.pop("last_at")
    emit(args, rows, SESSION_COLUMNS, title=f"llmgate sessions ({len(rows)})")


# --- session ----------------------------------------------------------------------

EVENT_COLUMNS = [
    Column("time", "time", whole=True),
    Column("kind", "event"),
    Column("short_id", "call", whole=True),
    Column("name", "model / tool", whole=True),
    Column("status", "status", whole=True),
    Column("tokens", "tokens", right=True),
    Column("cost_usd", "cost $", right=True, show=_cost),
    Column("detail", "detail", show=one_line),
]


def cmd_session(args: argparse.Namespace) -> None:
    conn = open_ledger(args.db)
    session = resolve_id(conn, args.id, table="sessions_summary")
    summary = conn.one("select * from sessions_summary where session_id = ?", (session,)) or {}
    events = _rows(
        conn,
        """select * from session_events where session_id = ?
           order by at, case kind when 'call' then 0 when 'denial' then 0
                                  when 'tool_result' then 1 when 'tool_call' then 2 else 3 end,
                    seq, request_id""",
        [session],
    )
    for event in events:
        event.pop("at")
        event.pop("seq")
        if event["kind"] in ("call", "denial"):
            event["tokens"] = f"{fmt(event['input_tokens'])}/{fmt(event['output_tokens'])}"
        elif event["kind"] == "tool_result":
            error = " error" if event["is_error"] else ""
            event["status"] = f"{fmt(event['result_bytes'])} bytes{error}"
    if args.json:
        tool_calls = _rows(
            conn,
            "select * from tool_call_results where session_id = ? order by id",
            [session],
        )
        summary.pop("first_at")
        summary.pop("last_at")
        data = {
            "session": summary,
            "events": events,
            "tool_calls": [_tool_call(row) for row in tool_calls],
        }
        write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    if not args.csv:
        head = (
            f"session {session}: user {summary['user'] or '-'}, client "
            f"{summary['client'] or '-'}, {summary['calls']} calls, "
            f"{summary['first_call']} to {summary['last_call']}, cost ${_cost(summary['cost_usd'])}"
        )
        write(head + "\n")
    emit(args, events, EVENT_COLUMNS)


def _tool_call(row: dict[str, Any]) -> dict[str, Any]:
    result = None
    if row["result_request_id"] is not None:
        result = {
            "request_id": row["result_request_id"],
            "time": row["answered"],
            "bytes": row["result_bytes"],
            "images": row["result_images"],
            "is_error": bool(row["is_error"]),
            "excerpt": row["result_excerpt"],
        }
    return {
        "call_id": row["call_id"],
        "name": row["name"],
        "arguments": row["arguments"],
        "request_id": row["request_id"],
        "time": row["called"],
        "result": result,
    }


# --- tail -------------------------------------------------------------------------

TAIL_COLUMNS = [
    Column("short_id", "id", whole=True),
    Column("started", "started", whole=True),
    Column("user", "user", whole=True),
    Column("models", "model", whole=True),
    Column("route", "route", whole=True),
    Column("status", "status", whole=True),
    Column("http_status", "http", right=True),
    Column("reason", "reason"),
    Column("input_tokens", "in", right=True),
    Column("output_tokens", "out", right=True),
    Column("cost_usd", "cost $", right=True, show=_cost),
    Column("latency_ms", "ms", right=True, show=lambda v: "-" if v is None else f"{v:.0f}"),
]


def cmd_tail(args: argparse.Namespace) -> None:
    conn = open_ledger(args.db)
    where, params = ["1 = 1"], []
    since = parse_since(args.since)
    for column, value in (("user", args.user), ("status", args.status), ("reason", args.reason)):
        if value is not None:
            where.append(f'"{column}" = ?')
            params.append(value)
    if since is not None:
        where.append("started_at >= ?")
        params.append(since)
    query = f"select * from calls where {' and '.join(where)}"
    rows = _rows(conn, f"{query} order by started_at desc, id desc limit ?", [*params, args.n])
    rows.reverse()
    if not args.follow:
        emit(args, [_tail_row(r) for r in rows], TAIL_COLUMNS, title=f"last {len(rows)} calls")
        return
    _follow(args, conn, query, params, rows)


def _tail_row(row: dict[str, Any]) -> dict[str, Any]:
    model, upstream = row["model"], row["upstream_model"]
    models = fmt(model) if upstream in (None, model) else f"{fmt(model)}->{upstream}"
    return row | {"models": models}


def _follow(
    args: argparse.Namespace,
    conn: LedgerDB,
    query: str,
    params: list[Any],
    rows: list[dict[str, Any]],
) -> None:
    """Print the last rows, then each call again whenever its status changes."""
    shown: dict[str, str] = {}
    first = True
    since = min((r["started_at"] for r in rows), default=time.time() - 60)
    while True:
        fresh = [r for r in rows if shown.get(r["id"]) != r["status"]]
        if fresh:
            batch = [_tail_row(r) for r in fresh]
            if args.json:  # one JSON object a line
                write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch))
            else:
                emit(args, batch, TAIL_COLUMNS, header=first or wants_rich())
            first = False
            shown.update((r["id"], r["status"]) for r in fresh)
        time.sleep(args.interval)
        rows = _rows(
            conn,
            f"{query} and started_at >= ? order by started_at, id",
            [*params, since],
        )
        unfinished = [r["started_at"] for r in rows if r["status"] == "pending"]
        if unfinished:
            since = min(unfinished)
        elif rows:
            since = rows[-1]["started_at"]


# --- report -----------------------------------------------------------------------

GROUPS = {
    "user": '"user"',
    "model": "coalesce(upstream_model, model)",
    "client": "client",
    "session": "session_id",
    "route": "route",
    "day": "day",
}
_NUMBERS = ["calls", *STATUSES, "other", "input_tokens", "output_tokens", "cost_usd", "unpriced"]


def cmd_report(args: argparse.Namespace) -> None:
    conn = open_ledger(args.db)
    since = parse_since(args.since) if args.hours is None else time.time() - args.hours * 3600
    statuses = ", ".join(count_if(f"status = '{s}'") + f" as {s}" for s in STATUSES)
    known = ", ".join(f"'{s}'" for s in STATUSES)
    unpriced = count_if("cost_usd is null and coalesce(usage_source, 'none') != 'none'")
    rows = _rows(
        conn,
        f"""select {GROUPS[args.by]} as "{args.by}", count(*) as calls, {statuses},
                   {count_if(f"status is null or status not in ({known})")} as other,
                   {int_sum("input_tokens")} as input_tokens,
                   {int_sum("output_tokens")} as output_tokens,
                   sum(cost_usd) as cost_usd,
                   {unpriced} as unpriced
            from calls where started_at >= ?
            group by 1 order by cost_usd desc nulls last, calls desc, 1""",
        [since if since is not None else float("-inf")],
    )
    totals: dict[str, Any] = {args.by: "total"}
    for key in _NUMBERS:
        values = [row[key] for row in rows if row[key] is not None]
        totals[key] = sum(values) if values else (0 if key != "cost_usd" else None)
    columns = [Column(args.by, args.by, whole=True)]
    columns += [
        Column(key, key.replace("_tokens", "").replace("cost_usd", "cost $"), right=True)
        for key in _NUMBERS
        if key != "other" or totals["other"]
    ]
    columns = [
        Column(c.key, c.header, c.right, _cost, c.whole) if c.key == "cost_usd" else c
        for c in columns
    ]
    window = "all time" if since is None else f"since {args.since or f'{args.hours:g}h'}"
    emit(args, rows, columns, title=f"llmgate usage by {args.by}, {window}", totals=totals)
