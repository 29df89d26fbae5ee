"""The stream guard inside the tap: redaction across events, structural events, blocking."""

from __future__ import annotations

import json

from addon.config import SafetySettings
from addon.protocols import PROTOCOLS
from addon.safety.scanner import Scanner
from addon.safety.stream_guard import StreamGuard
from addon.streaming import SseSplitter, StreamTap


def chat_stream(pieces: list[str]) -> bytes:
    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n"

    body = chunk({"role": "assistant", "content": ""})
    body += "".join(chunk({"content": p}) for p in pieces)
    return (body + chunk({}, "stop") + "data: [DONE]\n\n").encode()


def run(body: bytes, response: dict[str, str], step: int = 9) -> tuple[str, StreamGuard, bytes]:
    protocol = PROTOCOLS["openai_chat"]
    settings = SafetySettings(response=response)
    guard = StreamGuard(protocol, Scanner(), settings, "sse")
    tap = StreamTap(protocol, "sse", guard=guard)
    out = b"".join(b"".join(tap(body[i : i + step])) for i in range(0, len(body), step))
    out += b"".join(tap(b""))
    text = "".join(protocol.stream_text(e) or "" for e, _ in SseSplitter().feed(out) if e)
    return text, guard, out


def test_redaction_that_changes_length_still_releases_held_text_at_the_end() -> None:
    pieces = ["my ssn is 123-", "45-6789 and that ", "is all I know about it."]
    text, guard, out = run(chat_stream(pieces), {"pii": "redact"})
    assert text == "my ssn is [REDACTED:pii] and that is all I know about it."
    assert [i.finding.detector for i in guard.items] == ["us_ssn"]
    assert out.endswith(b"data: [DONE]\n\n")


def test_logged_findings_reach_the_client_unchanged() -> None:
    body = chat_stream(["card 4111 1111 ", "1111 1111 noted"])
    text, guard, out = run(body, {"pii": "log", "secrets": "redact"})
    # Held text moves to a later event, but the caller reads the same text.
    assert text == "card 4111 1111 1111 1111 noted"
    assert [(i.finding.detector, i.action) for i in guard.items] == [("credit_card", "log")]


def test_block_ends_the_stream_with_an_error_and_nothing_after() -> None:
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5q" * 3
    text, guard, out = run(chat_stream(["here: ", key[:20], key[20:], " bye"]),
                           {"secrets": "block"})  # fmt: skip
    assert key[:12] not in out.decode()
    assert guard.blocked is not None and guard.blocked.finding.detector == "openai_key"
    assert b'"code": "safety_block"' in out and b"[DONE]" not in out
