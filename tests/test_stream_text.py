"""Stream text accessors, used to scan and redact replies as they stream, on every recording.

The expected answer text is read from each recording here, straight from the
providers' documented event shapes, independently of the protocol modules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from addon.protocols import PROTOCOLS, StreamState
from addon.streaming import SseSplitter
from tests.test_streaming import STREAMS, stream_body

# Recordings whose reply is tool calls only: no event carries answer text, so the
# replace half of the test has nothing to act on. Each is checked for that instead.
NO_ANSWER_TEXT = {
    "gemini__function_call_stream": "one chunk with a functionCall part, no text part",
    "openai_chat__parallel_tool_calls_stream": "deltas carry tool_calls, content is null",
    "openai_chat__tool_call_stream": "deltas carry tool_calls, content is null",
    "openai_responses__function_call_stream": "function_call_arguments deltas only",
    "openai_responses__reasoning_function_call_stream": "reasoning, then a function call",
}


def answer_text(protocol: str, data: Any) -> str | None:
    """The answer text one event's JSON adds, per the provider's wire format."""
    if not isinstance(data, dict):
        return None
    if protocol == "openai_chat":
        choices = [c for c in data.get("choices") or [] if c.get("index", 0) == 0]
        content = (choices[0].get("delta") or {}).get("content") if choices else None
        return content if isinstance(content, str) else None
    if protocol == "openai_responses":
        return data["delta"] if data.get("type") == "response.output_text.delta" else None
    if protocol == "anthropic_messages":
        delta = data.get("delta") or {}
        is_text = data.get("type") == "content_block_delta" and delta.get("type") == "text_delta"
        return delta["text"] if is_text else None
    parts = ((data.get("candidates") or [{}])[0].get("content") or {}).get("parts") or []
    texts = [p["text"] for p in parts if "text" in p and not p.get("thought")]
    return "".join(texts) if texts else None


def recorded_answer(protocol: str, datas: list[str]) -> list[str]:
    out = []
    for data in datas:
        try:
            value = json.loads(data)
        except ValueError:  # "[DONE]"
            continue
        if (text := answer_text(protocol, value)) is not None:
            out.append(text)
    return out


def test_the_no_text_list_names_recordings_that_exist() -> None:
    assert set(NO_ANSWER_TEXT) <= {p.stem for p in STREAMS}


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_stream_text_is_the_answer_text_and_can_be_replaced(path: Path) -> None:
    fixture = json.loads(path.read_text())
    protocol = PROTOCOLS[fixture["protocol"]]
    events = [e for e, _ in SseSplitter().feed(stream_body(path)) if e is not None]
    assert events, "a recorded stream without events"
    expected = recorded_answer(fixture["protocol"], [e.data for e in events])
    state = StreamState()
    texts = []
    for event in events:
        protocol.feed_event(state, event)
        text = protocol.stream_text(event)
        if text is None:
            continue
        texts.append(text)
        replaced = protocol.with_stream_text(event, "[X]")
        assert protocol.stream_text(replaced) == "[X]"
        assert replaced.event == event.event
    assert texts == expected  # event by event, not just the joined text
    assert "".join(texts) == "".join(state.text)
    if path.stem in NO_ANSWER_TEXT:
        assert texts == [], NO_ANSWER_TEXT[path.stem]
        assert state.tool_calls, "a reply without text must at least call a tool"
    else:
        assert texts, "no text event: add the recording to NO_ANSWER_TEXT with a reason"


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_error_events_parse_as_the_protocols_errors(name: str) -> None:
    protocol = PROTOCOLS[name]
    state = StreamState()
    protocol.feed_event(state, protocol.error_event(400, "safety_block", "blocked: secrets"))
    assert state.error and "blocked" in state.error
