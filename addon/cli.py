"""`llmgate`: read the audit ledger and check policy files from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

from addon.checks import config_warnings
from addon.config import ConfigError, GatewayConfig, Route, load_config
from addon.credentials import SecretStore
from addon.keys import KeyStore
from addon.ledger.pricing import load_pricing
from addon.ledger.recovery import is_alive, pending_by_instance
from addon.ledger.store import ENCODE_ERROR, default_db_path
from addon.policy import effective_policy
from addon.quota.budget import bind_windows
from addon.quota.store import QuotaStore
from addon.quota.worker import quota_path
from addon.routes import served_callers
from addon.screening import build_scanner

console = Console()
err_console = Console(stderr=True)


def _connect(db: str) -> sqlite3.Connection:
    if not Path(db).exists():
        console.print(f"[red]No audit database at {db}.[/] Start the proxy, or set LLMGATE_DB.")
        sys.exit(1)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"{value:,.2f}"
    return str(value)


def cmd_report(args: argparse.Namespace) -> None:
    conn = _connect(args.db)
    group = {"user": "user", "model": "upstream_model", "route": "route"}[args.by]
    rows = conn.execute(
        f"""select {group} as key, count(*) as calls,
               sum(status = 'completed') as ok, sum(status in ('failed', 'denied')) as bad,
               sum(input_tokens) as input, sum(output_tokens) as output,
               sum(cost_usd) as cost, sum(cost_usd is null and usage_source != 'none') as unpriced
            from requests where started_at >= strftime('%s', 'now') - ? * 3600
            group by {group} order by cost desc nulls last, calls desc""",
        (args.hours,),
    ).fetchall()
    table = Table(title=f"llmgate usage by {args.by}, last {args.hours} h")
    for column in (
        args.by,
        "calls",
        "ok",
        "failed/denied",
        "input",
        "output",
        "cost $",
        "unpriced",
    ):
        table.add_column(column, justify="left" if column == args.by else "right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in tuple(row)))
    console.print(table)


def cmd_tail(args: argparse.Namespace) -> None:
    conn = _connect(args.db)
    rows = conn.execute(
        """select id, datetime(started_at, 'unixepoch') as started, user, protocol, model,
                  status, http_status, input_tokens, output_tokens, usage_source, cost_usd,
                  latency_ms
           from requests order by started_at desc limit ?""",
        (args.n,),
    ).fetchall()
    table = Table(title=f"last {args.n} calls")
    for column in rows[0].keys() if rows else ["id"]:
        table.add_column(column)
    for row in reversed(rows):
        table.add_row(*(_fmt(v) for v in tuple(row)))
    console.print(table)


def cmd_show(args: argparse.Namespace) -> None:
    conn = _connect(args.db)
    row = conn.execute("select * from requests where id = ?", (args.id,)).fetchone()
    if row is None:
        console.print(f"[red]No call with id {args.id}.[/]")
        sys.exit(1)
    table = Table(show_header=False)
    for key in row.keys():  # noqa: SIM118 - sqlite3.Row iterates values, not keys
        table.add_row(key, _fmt(row[key]))
    console.print(table)
    payload = conn.execute("select * from payloads where request_id = ?", (args.id,)).fetchone()
    if payload:
        for part in ("request_body", "response_body"):
            console.rule(part)
            console.print(payload[part] or "-", markup=False)
    findings = conn.execute("select * from findings where request_id = ?", (args.id,)).fetchall()
    for finding in findings:
        console.print(dict(finding))


def cmd_check(args: argparse.Namespace) -> None:
    """Everything the gateway checks at start-up (exit 1), then warnings (exit 0)."""
    path = Path(args.policies)
    config = _load_or_exit(path)
    try:
        pricing = load_pricing((path if path.is_dir() else path.parent) / "pricing.yaml")
        build_scanner(config.safety)
        secrets = SecretStore(args.secrets or None)
    except ValueError as exc:  # ConfigError is one
        _fail(str(exc))
    warnings = config_warnings(config, pricing, secrets)
    for warning in warnings:
        err_console.print(Text("warning: ", style="yellow") + Text(warning), soft_wrap=True)
    fallback = f" ({len(config.fallback_routes)} fallback)" if config.fallback_routes else ""
    verdict = Text("OK", style="green") + (
        Text(f" with {len(warnings)} warning(s)", style="yellow") if warnings else Text("")
    )
    console.print(
        verdict
        + Text(
            f": {len(config.routes)} routes{fallback}, {len(pricing.models)} priced models; "
            f"intercepting {', '.join(config.intercepted_hosts())}"
        ),
        soft_wrap=True,
    )
    _print_routes(config)


def _pairs(route: Route) -> str:
    """Which callers a route serves, and which of them it translates."""
    pairs = served_callers(route)
    if not pairs:
        return "no caller (check `callers`)"
    return ", ".join(
        caller if caller == upstream else f"{caller} (translated to {upstream})"
        for caller, upstream in pairs
    )


def _print_routes(config: GatewayConfig) -> None:
    """The route table in the order it is matched, with each route's timeouts: one
    plain line per route, whole however narrow the terminal or the pipe."""
    console.print("routes, first match wins:", soft_wrap=True)
    for route in config.routes:
        key = route.api_key_secret or "the caller's"
        line = (
            f"  {route.id}: {route.model_pattern} -> {route.provider} {route.endpoint} "
            f"(key: {key}); timeouts: "
            f"connect {route.connect_timeout_s:g} s, first byte {route.first_byte_timeout_s:g} s, "
            f"idle {route.idle_timeout_s:g} s"
        )
        console.print(line, soft_wrap=True, markup=False, highlight=False)
        console.print(f"    serves: {_pairs(route)}", soft_wrap=True, markup=False, highlight=False)
        if route.fallbacks:
            console.print(
                f"    fallbacks: {', '.join(route.fallbacks)}",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
    limits, audit = config.limits, config.audit
    console.print(
        f"audit.on_failure: {audit.on_failure}; synchronous: {audit.synchronous}; "
        f"drain: {audit.drain_seconds:g} s; max request {limits.max_request_bytes} bytes; "
        f"max stream event {limits.max_event_bytes} bytes",
        soft_wrap=True,
        highlight=False,
    )


def cmd_keys(args: argparse.Namespace) -> None:
    store = KeyStore(args.db)
    if args.keys_command == "issue":
        key = store.issue(args.user, args.group or [])
        console.print(f"Key for [bold]{args.user}[/] (shown once, store it now):")
        print(key)
    elif args.keys_command == "revoke":
        if not store.revoke(args.key):
            console.print(f"[red]No active key matches {args.key}.[/]")
            sys.exit(1)
        console.print("Revoked.")
    else:
        table = Table(title="llmgate keys")
        for column in ("key", "user", "groups", "created", "revoked"):
            table.add_column(column)
        for row in store.list():
            table.add_row(
                str(row["key_hint"]),
                str(row["user"]),
                ", ".join(json.loads(str(row["groups"]))) or "-",
                _when(row["created_at"]),
                _when(row["revoked_at"]),
            )
        console.print(table)


def _when(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def cmd_quota(args: argparse.Namespace) -> None:
    config = _load_or_exit(Path(args.policies))
    groups = list(dict.fromkeys([*(args.group or []), *config.identity.groups.get(args.user, [])]))
    policy = effective_policy(config.policies, args.user, groups)
    windows = bind_windows(args.user, tuple(groups), policy.quota_windows)
    if not windows:
        console.print(f"No quota window applies to {args.user} (rules: {', '.join(policy.rules)}).")
        return
    now = time.time()
    table = Table(
        title=f"quota for {args.user}" + (f" (groups: {', '.join(groups)})" if groups else "")
    )
    for column in ("window", "scope", "limit", "used", "reserved", "remaining", "resets in"):
        table.add_column(
            column, justify="left" if column in ("window", "scope", "limit") else "right"
        )
    store = QuotaStore(quota_path(args.db))
    for state in store.states(windows, now):
        remaining = state.remaining()
        for limit_name, field in _QUOTA_FIELDS.items():
            limit = getattr(state.window, limit_name)
            if limit is None:
                continue
            table.add_row(
                state.window.label,
                state.scope_key,
                f"{limit_name}={limit:g}",
                _fmt(getattr(state.used, field)),
                _fmt(getattr(state.reserved, field)),
                _fmt(remaining.get(limit_name)),
                "-" if state.reset_at is None else f"{max(state.reset_at - now, 0):.0f}s",
            )
    console.print(table)


_QUOTA_FIELDS = {
    "max_requests": "requests",
    "max_input_tokens": "input_tokens",
    "max_output_tokens": "output_tokens",
    "max_cost_usd": "cost_usd",
}


HEALTH_URL = "http://llmgate.internal/health"


def cmd_doctor(args: argparse.Namespace) -> None:
    """What the ledger says about unfinished calls, and the running gateway's health."""
    conn = _connect(args.db)
    has_requests = conn.execute(
        "select 1 from sqlite_master where type = 'table' and name = 'requests'"
    ).fetchone()
    pending = [
        {"instance": i, "rows": n, "oldest_started_at": oldest, "alive": is_alive(args.db, i)}
        for i, n, oldest in (pending_by_instance(conn) if has_requests else [])
    ]
    report: dict[str, Any] = {
        "db": args.db,
        "pending": pending,
        "interrupted": _rows_where(conn, "status = 'interrupted'") if has_requests else {},
        "encode_errors": _rows_where(conn, f"reason = '{ENCODE_ERROR}'") if has_requests else {},
        "proxy": args.proxy,
    }
    report["gateway"], report["gateway_error"] = _gateway_health(args.proxy)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        _print_doctor(report)
    if report["gateway_error"]:
        sys.exit(1)


def _rows_where(conn: sqlite3.Connection, where: str) -> dict[str, Any]:
    count = conn.execute(f"select count(*) from requests where {where}").fetchone()[0]
    recent = conn.execute(
        f"""select id, started_at, user, model, status, reason from requests where {where}
            order by started_at desc limit 10"""
    ).fetchall()
    return {"count": count, "recent": [dict(row) for row in recent]}


def _gateway_health(proxy: str) -> tuple[dict[str, Any] | None, str | None]:
    request = urllib.request.Request(HEALTH_URL)
    # Set on the request, not taken from the environment: no_proxy must not send
    # the request to DNS, where llmgate.internal does not exist.
    request.set_proxy(proxy, "http")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=3) as reply:
            data = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return None, f"the proxy at {proxy} answered HTTP {exc.code}: is it llmgate?"
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return None, f"cannot reach llmgate at {proxy} ({reason})"
    except ValueError:
        return None, f"the proxy at {proxy} did not answer JSON: is it llmgate?"
    return (data if isinstance(data, dict) else {"answer": data}), None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _print_doctor(report: dict[str, Any]) -> None:
    # Values from the ledger and the gateway go out as Text: "[x]" must not read as markup.
    console.print(Text(f"ledger: {report['db']}"))
    if report["pending"]:
        table = Table(title="pending calls by llmgate instance")
        for column in ("instance", "rows", "oldest", "process"):
            table.add_column(column)
        for row in report["pending"]:
            process = "alive" if row["alive"] else "ended: recovery will close them"
            oldest = _when(row["oldest_started_at"])
            table.add_row(Text(row["instance"]), str(row["rows"]), oldest, process)
        console.print(table)
    else:
        console.print("no pending calls")
    for key, title in (
        ("interrupted", "interrupted calls"),
        ("encode_errors", f"rows with reason {ENCODE_ERROR}"),
    ):
        found = report[key]
        console.print(Text(f"{title}: {found.get('count', 0)}"))
        for row in found.get("recent", []):
            cells = (row["id"], _when(row["started_at"]), row["user"], row["model"], row["status"])
            console.print(Text("  " + "  ".join(_fmt(cell) for cell in cells)))
    if report["gateway_error"]:
        err_console.print(Text("error: ", style="bold red") + Text(report["gateway_error"]))
        err_console.print(
            "Start llmgate with ./run.sh (it listens on 127.0.0.1:$LLMGATE_PORT, default"
            " 8080), or name the proxy with --proxy HOST:PORT.",
            markup=False,
        )
        return
    table = Table(title=f"llmgate at {report['proxy']}", show_header=False)
    for key, value in sorted(_flatten(report["gateway"]).items()):
        shown = json.dumps(value) if isinstance(value, list) else _fmt(value)
        table.add_row(Text(key), Text(shown))
    console.print(table)


def _load_or_exit(path: Path) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    # Text, not markup: messages quote the files, and "routes[1]" would read as a tag.
    for line in message.splitlines():
        err_console.print(Text("error: ", style="bold red") + Text(line), soft_wrap=True)
    sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmgate", description=__doc__)
    parser.add_argument("--db", default=os.environ.get("LLMGATE_DB", default_db_path()))
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="usage and cost, grouped")
    report.add_argument("--by", choices=["user", "model", "route"], default="user")
    report.add_argument("--hours", type=float, default=24)
    report.set_defaults(func=cmd_report)
    tail = sub.add_parser("tail", help="the most recent calls")
    tail.add_argument("-n", type=int, default=20)
    tail.set_defaults(func=cmd_tail)
    show = sub.add_parser("show", help="one call with its payloads and findings")
    show.add_argument("id")
    show.set_defaults(func=cmd_show)
    check = sub.add_parser("check", help="validate the policy files")
    check.add_argument("policies", nargs="?", default=_default_policies())
    check.add_argument(
        "--secrets",
        default=os.environ.get("LLMGATE_SECRETS", ""),
        help="the NAME=value secrets file the gateway reads (default: $LLMGATE_SECRETS)",
    )
    check.set_defaults(func=cmd_check)
    keys = sub.add_parser("keys", help="issue, list and revoke llmgate virtual keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    issue = keys_sub.add_parser("issue", help="issue a key for USER")
    issue.add_argument("user")
    issue.add_argument("--group", action="append", help="a group of the user (repeatable)")
    keys_sub.add_parser("list", help="list keys (hints only)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key, by the key or its hint")
    revoke.add_argument("key")
    keys.set_defaults(func=cmd_keys)
    quota = sub.add_parser("quota", help="a user's quota windows: used, reserved, limit, reset")
    quota.add_argument("user")
    quota.add_argument("--group", action="append", help="also count these groups")
    quota.add_argument("--policies", default=_default_policies())
    quota.set_defaults(func=cmd_quota)
    doctor = sub.add_parser("doctor", help="unfinished calls in the ledger; the gateway's health")
    doctor.add_argument(
        "--proxy",
        default=f"127.0.0.1:{os.environ.get('LLMGATE_PORT') or 8080}",
        help="the running llmgate, HOST:PORT (default: 127.0.0.1:$LLMGATE_PORT, else 8080)",
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def _default_policies() -> str:
    return os.environ.get("LLMGATE_POLICIES", str(Path(__file__).parent.parent / "policies"))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
