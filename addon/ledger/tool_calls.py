"""The `tool_calls` rows of one call: the tool calls the model made in its reply, and the
tool results the client sent back in this request.

A request carries the whole conversation, so only the results of its last turn
(after the last assistant message) are new; earlier ones were recorded with the
request that first carried them. Arguments and excerpts pass the safety scanner
whatever the configured actions: a secret found there is stored redacted, never
as it was.
"""

from __future__ import annotations

import json
import time
from typing import Any

from addon.protocols.canonical import (
    CanonicalRequest,
    ContentPart,
    ImagePart,
    TextPart,
    ToolResultPart,
    ToolUsePart,
)
from addon.safety.scanner import Scanner, redact

ARGUMENTS_CAP = 4096
EXCERPT_CAP = 500


def tools_offered(request: CanonicalRequest | None) -> str | None:
    """The names of the tools a call offered the model, as a JSON list."""
    if request is None or not request.tools:
        return None
    return json.dumps([tool.name for tool in request.tools], ensure_ascii=False)


def tool_call_rows(
    request_id: str,
    session_id: str | None,
    request: CanonicalRequest | None,
    reply: list[ContentPart],
    scanner: Scanner,
    hidden: dict[str, str],
) -> list[dict[str, Any]]:
    now = time.time()
    base = {"request_id": request_id, "session_id": session_id, "created_at": now}
    rows: list[dict[str, Any]] = []
    for part in new_results(request):
        text = "".join(p.text for p in part.content if isinstance(p, TextPart))
        images = sum(isinstance(p, ImagePart) for p in part.content)
        rows.append(
            base
            | {
                "kind": "result",
                "call_id": part.tool_use_id,
                "name": part.name,
                "result_bytes": len(text.encode()),
                "result_images": images,
                "is_error": int(part.is_error),
                "excerpt": _clean(text, EXCERPT_CAP, scanner, hidden),
            }
        )
    for part in reply:
        if isinstance(part, ToolUsePart):
            arguments = part.arguments
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            rows.append(
                base
                | {
                    "kind": "call",
                    "call_id": part.id,
                    "name": part.name,
                    "arguments": _clean(text, ARGUMENTS_CAP, scanner, hidden),
                }
            )
    return rows


def new_results(request: CanonicalRequest | None) -> list[ToolResultPart]:
    """The tool results of the request's last turn: the ones the client just sent."""
    if request is None:
        return []
    results: list[ToolResultPart] = []
    for message in reversed(request.messages):
        if message.role == "assistant":
            break
        results[:0] = [p for p in message.content if isinstance(p, ToolResultPart)]
    return results


def _clean(text: str, cap: int, scanner: Scanner, hidden: dict[str, str]) -> str:
    """Redacted first, then cut: a cut must never leave half a secret unrecognised."""
    for value, label in hidden.items():
        if value:
            text = text.replace(value, label)
    text = redact(text, scanner.scan(text))
    if len(text) > cap:
        text = text[:cap] + f"… [{len(text)} characters in all]"
    return text
