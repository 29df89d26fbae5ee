"""`llmgate show ID`: one call, its conversation as the caller sent it, the reply
(reassembled from the stored stream when it streamed), its findings and attempts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.rule import Rule
from rich.text import Text

from addon.cli.ledger import open_ledger, resolve_id
from addon.cli.output import Column, console, emit, fmt, iso, wants_rich, write, write_csv
from addon.ledger.db import LedgerDB
from addon.ledger.store import TRUNCATION_MARKER
from addon.protocols import PROTOCOLS
from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ContentPart,
    ImagePart,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
)
from addon.streaming.replay import read_stream

FIELDS = [
    ("id", "id"),
    ("short_id", "short id"),
    ("started", "started"),
    ("finished", "finished"),
    ("user", "user"),
    ("groups", "groups"),
    ("client", "client"),
    ("session_id", "session"),
    ("protocol", "protocol"),
    ("endpoint", "called"),
    ("models", "model"),
    ("route", "route"),
    ("upstream", "upstream"),
    ("status", "status"),
    ("http_status", "http status"),
    ("reason", "reason"),
    ("error", "error"),
    ("tokens", "tokens"),
    ("usage_source", "usage"),
    ("cost_usd", "cost $"),
    ("latency_ms", "latency ms"),
    ("ttft_ms", "first token ms"),
    ("tools_offered", "tools offered"),
]
FINDING_COLUMNS = [
    Column("time", "time", whole=True),
    Column("phase", "phase"),
    Column("location", "where"),
    Column("category", "category"),
    Column("detector", "detector"),
    Column("action", "action"),
    Column("excerpt", "excerpt"),
]
ATTEMPT_COLUMNS = [
    Column("attempt", "attempt", right=True),
    Column("time", "time", whole=True),
    Column("route", "route"),
    Column("upstream_host", "upstream"),
    Column("upstream_protocol", "protocol"),
    Column("status", "http", right=True),
    Column("reason", "reason"),
    Column("error", "error"),
    Column("latency_ms", "ms", right=True),
]


def cmd_show(args: argparse.Namespace) -> None:
    conn = open_ledger(args.db)
    request_id = resolve_id(conn, args.id)
    row = conn.one("select * from requests where id = ?", (request_id,)) or {"id": request_id}
    call = _call(row)
    payload = conn.one("select * from payloads where request_id = ?", (request_id,)) or {}
    request, request_note = _request(row, payload)
    reply, reply_note = _reply(row, payload)
    findings = _timed(conn, "findings", request_id, "created_at")
    attempts = _timed(conn, "attempts", request_id, "started_at")
    if args.json:
        data = {
            "call": call,
            "request": request.model_dump(mode="json", exclude_none=True) if request else None,
            "request_note": request_note,
            "reply": reply.model_dump(mode="json", exclude_none=True) if reply else None,
            "reply_note": reply_note,
            "findings": findings,
            "attempts": attempts,
        }
        write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    if args.csv:
        write_csv([call])
        return
    for key, label in FIELDS:
        value = call.get(key)
        if value not in (None, "", "-"):
            _line(f"{label + ':':<16}{fmt(value)}")
    _section("conversation")
    if request is None:
        _line(request_note or "(no request body stored)", "dim")
    else:
        _conversation(request)
        if request_note:
            _line(request_note, "dim")
    _section("reply")
    if reply is None:
        _line(reply_note or "(no reply stored)", "dim")
    else:
        _reply_lines(reply)
        if reply_note:
            _line(reply_note, "dim")
    if findings:
        _section(f"findings ({len(findings)})")
        emit(args, findings, FINDING_COLUMNS)
    if attempts:
        _section(f"attempts ({len(attempts)})")
        emit(args, attempts, ATTEMPT_COLUMNS)


def _call(row: dict[str, Any]) -> dict[str, Any]:
    model, upstream = row.get("model"), row.get("upstream_model")
    tokens = f"in {fmt(row.get('input_tokens'))}, out {fmt(row.get('output_tokens'))}"
    extra = [
        f"{label} {row[key]}"
        for key, label in (
            ("cache_read_tokens", "cache read"),
            ("cache_write_tokens", "cache write"),
            ("reasoning_tokens", "reasoning"),
        )
        if row.get(key)
    ]
    try:
        offered = ", ".join(json.loads(row["tools_offered"])) if row.get("tools_offered") else None
    except (ValueError, TypeError):
        offered = row.get("tools_offered")
    upstream_parts = [row.get("provider"), row.get("upstream_protocol"), row.get("upstream_host")]
    return {
        **{k: v for k, v in row.items() if not k.endswith("_at")},
        "short_id": row["id"][-12:],
        "started": iso(row.get("started_at")),
        "finished": iso(row.get("finished_at")),
        "endpoint": f"{row.get('host') or '-'}{row.get('path') or ''}",
        "models": fmt(model) if upstream in (None, model) else f"{fmt(model)} -> {upstream}",
        "upstream": " ".join(dict.fromkeys(str(p) for p in upstream_parts if p)) or None,
        "tokens": ", ".join([tokens, *extra]),
        "tools_offered": offered,
        "groups": ", ".join(json.loads(row["groups"])) if _is_list(row.get("groups")) else None,
    }


def _is_list(value: Any) -> bool:
    try:
        return isinstance(json.loads(value), list)
    except (TypeError, ValueError):
        return False


def _timed(conn: LedgerDB, table: str, request_id: str, key: str) -> list[dict]:
    rows = conn.rows(f"select * from {table} where request_id = ? order by id", (request_id,))
    return [{"time": iso(row[key]), **{k: v for k, v in row.items() if k != key}} for row in rows]


def _body(payload: dict[str, Any], key: str) -> tuple[str | None, str | None]:
    """A stored body without llmgate's truncation marker, and a note if it had one."""
    text = payload.get(key)
    if not text:
        return None, None
    if payload.get(key.replace("_body", "_truncated")):
        marker = TRUNCATION_MARKER.split("{", 1)[0]
        cut = text.rfind(marker)
        if cut >= 0:
            return text[:cut], text[cut:].strip()
    return text, None


def _request(row: dict, payload: dict) -> tuple[CanonicalRequest | None, str | None]:
    text, note = _body(payload, "request_body")
    protocol = PROTOCOLS.get(row.get("protocol") or "")
    if text is None or protocol is None:
        return None, None if text is None else f"(a {row.get('protocol')} body llmgate cannot read)"
    try:
        return protocol.parse_request(json.loads(text), row.get("path") or ""), note
    except Exception as exc:  # a truncated or odd body: say so, never a traceback
        return None, f"(the stored request cannot be read: {type(exc).__name__}) {note or ''}"


def _reply(row: dict, payload: dict) -> tuple[CanonicalResponse | None, str | None]:
    text, note = _body(payload, "response_body")
    protocol = PROTOCOLS.get(row.get("protocol") or "")
    if text is None or protocol is None:
        return None, None
    headers = _headers(payload.get("response_headers"))
    if (row.get("http_status") or 200) >= 400:
        return None, f"error body: {' '.join(text.split())}"
    try:
        content_type = headers.get("content-type", "").lower()
        if content_type.startswith("text/event-stream") or (
            row.get("stream") and row.get("protocol") == "gemini"
        ):
            framing = "sse" if content_type.startswith("text/event-stream") else "json_array"
            state = read_stream(protocol, text.encode(), framing)
            events = f"reassembled from {state.events} stream events"
            note = "; ".join(filter(None, [events, note]))
            return state.response(), note
        return protocol.parse_response(json.loads(text)), note
    except Exception as exc:
        return None, f"(the stored reply cannot be read: {type(exc).__name__}) {note or ''}"


def _headers(text: str | None) -> dict[str, str]:
    try:
        headers = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}


def _conversation(request: CanonicalRequest) -> None:
    if request.system:
        _line("[system]", "bold")
        _line(_indent(request.system))
    for message in request.messages:
        _line(f"[{message.role}]", "bold cyan" if message.role == "user" else "bold green")
        for part in message.content:
            _part(part)


def _reply_lines(reply: CanonicalResponse) -> None:
    _line(f"[assistant] model {reply.model or '-'}, stop {reply.stop_reason or '-'}", "bold green")
    for part in reply.content:
        _part(part)
    if reply.usage:
        usage = reply.usage
        _line(f"  usage: in {usage.input_tokens}, out {usage.output_tokens}", "dim")


def _part(part: ContentPart) -> None:
    if isinstance(part, TextPart):
        _line(_indent(part.text))
    elif isinstance(part, ThinkingPart):
        _line(_indent("(thinking) " + ("[redacted]" if part.redacted else part.text)), "dim")
    elif isinstance(part, ToolUsePart):
        args = part.arguments
        shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        _line(f"  tool call {part.name} ({part.id or '-'}): {shown}", "yellow")
    elif isinstance(part, ToolResultPart):
        error = ", error" if part.is_error else ""
        _line(f"  tool result for {part.tool_use_id or part.name or '-'}{error}:", "yellow")
        for inner in part.content:
            _part(inner)
    elif isinstance(part, ImagePart):
        _line(f"  (image {part.media_type or ''} {part.url or ''})".replace("  )", ")"), "dim")
    else:
        _line(f"  ({part.type})", "dim")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines()) or "  "


def _line(text: str, style: str = "") -> None:
    if wants_rich():
        console.print(Text(text, style=style), soft_wrap=True)
    else:
        write(text + "\n")


def _section(title: str) -> None:
    if wants_rich():
        console.print(Rule(title))
    else:
        write(f"--- {title} ---\n")
