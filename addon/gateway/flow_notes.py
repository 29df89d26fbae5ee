"""What mitmweb shows of an LLM call at a glance: a comment, a mark, and metadata.

When a call closes, its flow gets a one-line comment,
`host · user · model → upstream model · tokens in/out · $cost · status`, which
starts with the host the caller called (the flow itself shows where the call
really went, after routing). A flow with safety findings is marked ⚠️; a denied
one already carries llmgate's ⛔ mark and the denial as its comment, and keeps
both. The flow's `llmgate` metadata gains the fields the conversation view reads.

Nothing here is a credential: the comment is made of the caller's host, user name,
model names, counts and reason codes, and any value a scanner found in the call
is replaced by its redaction token, as in the ledger.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import contentviews, http

from addon import pipeline
from addon.call import Call, describe_exception
from addon.gateway.conversation_view import VIEW_NAME, conversation_view

log = logging.getLogger("llmgate")

FINDINGS_MARK = ":warning:"
DENIED_MARK = ":no_entry:"
_MAX_NAME = 80  # a model or user name longer than this is cut in the comment


def register_view() -> None:
    """Add the "LLM conversation" contentview (again, after a script reload)."""
    contentviews.add(conversation_view)


def unregister_view() -> None:
    """mitmproxy 12 has no public way to remove a contentview: drop ours from the registry."""
    registry = contentviews.registry
    if registry.get(VIEW_NAME) is conversation_view:
        registry._by_name.pop(VIEW_NAME.lower(), None)  # noqa: SLF001


def annotate(flow: http.HTTPFlow, call: Call, fields: dict[str, Any]) -> None:
    """Comment, mark and describe the flow of a call whose row just closed; never raises.

    Runs after the row closed, so the reply's findings are known by then.
    """
    try:
        stream_body(flow, call)
        notes = call_notes(call, fields)
        hidden = pipeline.stored_values(call)
        metadata = flow.metadata.setdefault("llmgate", {})
        if isinstance(metadata, dict):
            metadata.update(notes)
        summary = _redacted(comment_for(notes), hidden)
        if fields.get("status") == "denied" and flow.marked != DENIED_MARK:
            # Denied by the dispatcher (a quota answer that came over the network).
            flow.marked = DENIED_MARK
            flow.comment = f"llmgate denied: {fields.get('reason')}: {fields.get('error')}"
        # A denial or a blocked reply already says why: the summary follows it.
        earlier = flow.comment if flow.marked == DENIED_MARK and flow.comment else ""
        flow.comment = f"{earlier} · {summary}" if earlier else summary
        if findings(call) and flow.marked != DENIED_MARK:
            flow.marked = FINDINGS_MARK
    except Exception as exc:  # noqa: BLE001 - a note must never break a call's close
        log.error("llmgate could not annotate a flow: %s", describe_exception(exc))


def call_notes(call: Call, fields: dict[str, Any]) -> dict[str, Any]:
    """The metadata a closed call leaves on its flow (read by the conversation view)."""
    model = call.request.model if call.request is not None else None
    return {
        "request_id": call.id,
        "user": call.user,
        "host": call.host,
        "protocol": call.protocol_name,
        "upstream_protocol": fields.get("upstream_protocol") or call.upstream_protocol,
        "model": model,
        "upstream_model": fields.get("upstream_model") or call.upstream_model,
        "status": fields.get("status"),
        "reason": fields.get("reason"),
        "http_status": fields.get("http_status"),
        "input_tokens": fields.get("input_tokens"),
        "output_tokens": fields.get("output_tokens"),
        "cost_usd": fields.get("cost_usd"),
    }


def comment_for(notes: dict[str, Any]) -> str:
    """`host · user · model → upstream · in/out tok · $cost · status[: reason]`."""
    words = [str(notes.get("host") or "?"), _cut(notes.get("user") or "anonymous")]
    model, upstream = notes.get("model"), notes.get("upstream_model")
    if model and upstream and upstream != model:
        words.append(f"{_cut(model)} → {_cut(upstream)}")
    elif model or upstream:
        words.append(_cut(model or upstream))
    tokens_in, tokens_out = notes.get("input_tokens"), notes.get("output_tokens")
    if tokens_in is not None or tokens_out is not None:
        words.append(f"{tokens_in or 0}/{tokens_out or 0} tok")
    cost = notes.get("cost_usd")
    if cost is not None:
        words.append(f"${cost:.4f}" if cost >= 0.01 or cost == 0 else f"${cost:.6f}")
    status = str(notes.get("status") or "?")
    if status != "completed" and notes.get("reason"):
        status += f": {notes['reason']}"
    words.append(status)
    return " · ".join(words)


def findings(call: Call) -> int:
    """How many safety findings the call had, in its request and its reply."""
    count = len(call.request_screening.items) if call.request_screening else 0
    if call.guard is not None:
        return count + len(call.guard.items)
    return count + (len(call.reply_screening.items) if call.reply_screening else 0)


def _cut(value: object) -> str:
    text = " ".join(str(value).split())  # one line, whatever the caller sent
    return text if len(text) <= _MAX_NAME else text[: _MAX_NAME - 1] + "…"


def _redacted(text: str, hidden: dict[str, str]) -> str:
    # Longest first, so a value inside another is not half-replaced.
    for value in sorted(hidden, key=len, reverse=True):
        if value:
            text = text.replace(value, hidden[value])
    return text


def stream_body(flow: http.HTTPFlow, call: Call) -> None:
    """A streamed reply is not kept on the flow: give mitmweb what the caller received
    (up to the audit's payload cap), so its views show the reply, not "Content is
    missing"."""
    response = flow.response
    if response is None or call.tap is None or response.raw_content is not None:
        return
    response.raw_content = bytes(call.tap.kept)
