"""The operator commands that are not ledger reads: check, keys, quota and doctor."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

from addon.checks import config_warnings
from addon.cli.ledger import open_ledger
from addon.cli.output import fmt as _fmt
from addon.cli.output import iso as _when
from addon.config import ConfigError, GatewayConfig, Route, load_config
from addon.credentials import SecretStore
from addon.keys import KeyStore
from addon.ledger import journal
from addon.ledger.db import LedgerDB, describe_location, is_postgres, local_state_path
from addon.ledger.pricing import load_pricing
from addon.ledger.recovery import instances_dir, is_alive, pending_by_instance
from addon.ledger.store import ENCODE_ERROR
from addon.policy import effective_policy
from addon.quota.budget import bind_windows, exact
from addon.quota.worker import open_store, quota_target
from addon.routes import served_callers
from addon.safety.screening import build_scanner

console = Console()
err_console = Console(stderr=True)


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
    # Where the gateway keeps them: Redis when LLMGATE_QUOTA or quota.store names it.
    url = quota_target(os.environ.get("LLMGATE_QUOTA", ""), config)
    store = open_store(local_state_path(args.db), config, url)
    for state in store.states(windows, now):
        remaining = state.remaining()
        for limit_name, field in _QUOTA_FIELDS.items():
            limit = getattr(state.window, limit_name)
            if limit is None:
                continue
            table.add_row(
                state.window.label,
                state.scope_key,
                f"{limit_name}={exact(limit)}",
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
    conn = open_ledger(args.db, views=False)
    has_requests = "requests" in conn.tables()
    pending = [
        {"instance": i, "rows": n, "oldest_started_at": oldest, "alive": is_alive(args.db, i)}
        for i, n, oldest in (pending_by_instance(conn) if has_requests else [])
    ]
    report: dict[str, Any] = {
        "db": describe_location(args.db),
        "pending": pending,
        "journals": [
            {"instance": i, "segments": len(paths), "alive": is_alive(args.db, i)}
            for i, paths in sorted(journal.segments(instances_dir(args.db)).items())
        ]
        if not is_postgres(args.db)
        else [],
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


def _rows_where(conn: LedgerDB, where: str) -> dict[str, Any]:
    count = conn.scalar(f"select count(*) from requests where {where}")
    recent = conn.rows(
        f"""select id, started_at, "user", model, status, reason from requests where {where}
            order by started_at desc, id desc limit 10"""
    )
    return {"count": count, "recent": recent}


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
    for row in report["journals"]:
        if not row["alive"]:  # a live one's journal is its own business
            segments, instance = row["segments"], row["instance"]
            line = f"journal of ended instance {instance}: {segments} segment(s) not yet folded"
            console.print(Text(line + "; the next llmgate to start folds them in"))
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
