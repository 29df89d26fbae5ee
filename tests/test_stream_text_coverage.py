"""The text the stream guard scans is the text the ledger records, on every event.

The guard scans `stream_text` and rewrites with `with_stream_text`; the ledger records
what `feed_event` adds to `StreamState.text`. Text recorded but never offered to the
scanner would reach the client unredacted, so each odd shape a fuzz found is pinned
here, and the recordings are checked event by event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from addon.config import SafetySettings
from addon.protocols import PROTOCOLS, StreamEvent, StreamState
from addon.safety.scanner import Scanner
from addon.safety.stream_guard import StreamGuard
from addon.streaming import SseSplitter
from tests.test_streaming import STREAMS, stream_body

SECRET = "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
assert len(SECRET) == 40


def recorded(protocol: str, event: StreamEvent, state: StreamState | None = None) -> str:
    """The text `feed_event` adds to the state's reply text for `event`."""
    state = state or StreamState()
    before = len("".join(state.text))
    PROTOCOLS[protocol].feed_event(state, event)
    return "".join(state.text)[before:]


def sse(data: Any, event: str | None = None) -> StreamEvent:
    return StreamEvent(data=json.dumps(data), event=event)


def gemini_chunk(parts: list[dict[str, Any]], **candidate: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": parts}, **candidate}]}


# (protocol, event, path to the field that holds the secret in the event's JSON)
CASES: dict[str, tuple[str, StreamEvent, tuple[Any, ...]]] = {
    "chat_refusal_delta": (
        "openai_chat",
        sse({"choices": [{"index": 0, "delta": {"refusal": f"no: {SECRET}"}}]}),
        ("choices", 0, "delta", "refusal"),
    ),
    "chat_choice_by_index": (
        "openai_chat",
        sse(
            {
                "choices": [
                    {"index": 1, "delta": {"content": "an alternative"}},
                    {"index": 0, "delta": {"content": SECRET}},
                ]
            }
        ),
        ("choices", 1, "delta", "content"),
    ),
    "responses_refusal_delta": (
        "openai_responses",
        sse({"type": "response.refusal.delta", "item_id": "msg_1", "delta": SECRET}),
        ("delta",),
    ),
    "responses_type_from_sse_line": (
        "openai_responses",
        sse({"item_id": "msg_1", "delta": SECRET}, event="response.output_text.delta"),
        ("delta",),
    ),
    "gemini_executable_code": (
        "gemini",
        sse(gemini_chunk([{"executableCode": {"language": "PYTHON", "code": f"k='{SECRET}'"}}])),
        ("candidates", 0, "content", "parts", 0, "executableCode", "code"),
    ),
    "gemini_executable_code_snake_case": (
        "gemini",
        sse(gemini_chunk([{"executable_code": {"language": "PYTHON", "code": SECRET}}])),
        ("candidates", 0, "content", "parts", 0, "executable_code", "code"),
    ),
    "gemini_code_execution_result": (
        "gemini",
        sse(gemini_chunk([{"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": SECRET}}])),
        ("candidates", 0, "content", "parts", 0, "codeExecutionResult", "output"),
    ),
    "gemini_candidate_by_index": (
        "gemini",
        sse(
            {
                "candidates": [
                    {"index": 1, "content": {"parts": [{"text": "an alternative"}]}},
                    {"index": 0, "content": {"parts": [{"text": SECRET}]}},
                ]
            }
        ),
        ("candidates", 1, "content", "parts", 0, "text"),
    ),
    "gemini_thought_not_true": (
        "gemini",
        # Only `thought: true` makes a part reasoning; the ledger records this as text.
        sse(gemini_chunk([{"text": SECRET, "thought": "yes"}])),
        ("candidates", 0, "content", "parts", 0, "text"),
    ),
    "gemini_whole_array_in_one_event": (
        "gemini",
        sse([gemini_chunk([{"text": "a "}]), gemini_chunk([{"text": SECRET}])]),
        (0, "candidates", 0, "content", "parts", 0, "text"),
    ),
    "anthropic_text_in_block_start": (
        "anthropic_messages",
        sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": SECRET},
            },
            event="content_block_start",
        ),
        ("content_block", "text"),
    ),
}


def at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


@pytest.mark.parametrize("case", sorted(CASES))
def test_recorded_text_is_offered_to_the_scanner_and_rewritten_in_place(case: str) -> None:
    name, event, path = CASES[case]
    protocol = PROTOCOLS[name]
    text = protocol.stream_text(event)
    assert text is not None and SECRET in text
    assert SECRET in recorded(name, event)
    assert text == recorded(name, event)

    replaced = protocol.with_stream_text(event, "[X]")
    assert SECRET not in replaced.data
    assert at(json.loads(replaced.data), path) == "[X]"
    assert replaced.event == event.event
    assert protocol.stream_text(replaced) == "[X]"
    assert recorded(name, replaced) == "[X]"


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_guard_redacts_what_the_ledger_would_record(case: str) -> None:
    name, event, _ = CASES[case]
    protocol = PROTOCOLS[name]
    guard = StreamGuard(protocol, Scanner(), SafetySettings(response={"secrets": "redact"}), "sse")
    out = b"".join(guard.on_event(event, event.data.encode())) + b"".join(guard.finish())
    assert SECRET not in out.decode()
    assert [i.finding.value for i in guard.items] == [SECRET]


def test_chat_content_and_refusal_in_one_delta_share_the_content_field() -> None:
    event = sse({"choices": [{"index": 0, "delta": {"content": "a ", "refusal": SECRET}}]})
    protocol = PROTOCOLS["openai_chat"]
    assert protocol.stream_text(event) == recorded("openai_chat", event) == "a " + SECRET
    delta = json.loads(protocol.with_stream_text(event, "[X]").data)["choices"][0]["delta"]
    # One released string cannot be split back at the old boundary: it all goes first.
    assert delta == {"content": "[X]", "refusal": ""}


def test_gemini_code_part_with_text_is_read_as_its_text() -> None:
    """`text` wins over code fields, in the ledger and the scanner alike."""
    part = {"text": "t", "executableCode": {"code": SECRET}}
    event = sse(gemini_chunk([part]))
    assert PROTOCOLS["gemini"].stream_text(event) == recorded("gemini", event) == "t"


def test_gemini_thought_parts_are_neither_recorded_as_text_nor_scanned() -> None:
    event = sse(gemini_chunk([{"text": "thinking", "thought": True}]))
    assert PROTOCOLS["gemini"].stream_text(event) is None
    assert recorded("gemini", event) == ""


def test_anthropic_held_text_after_a_block_start_goes_out_as_a_delta() -> None:
    protocol = PROTOCOLS["anthropic_messages"]
    _, start, _ = CASES["anthropic_text_in_block_start"]
    held = protocol.with_held_text(start, "rest")
    assert held.event == "content_block_delta"
    assert json.loads(held.data) == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "rest"},
    }
    assert protocol.stream_text(held) == recorded("anthropic_messages", held) == "rest"


def test_anthropic_empty_block_start_stays_structural() -> None:
    start = sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    )
    assert PROTOCOLS["anthropic_messages"].stream_text(start) is None


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_on_recordings_each_event_scans_exactly_what_it_records(path: Path) -> None:
    """Event by event: the text feed_event appends to `state.text` is `stream_text`
    (None standing for no text; a text event may carry "", which records nothing).

    Thinking is not reply text here: it goes to `state.thinking`, and neither side
    counts it.
    """
    fixture = json.loads(path.read_text())
    name = fixture["protocol"]
    protocol = PROTOCOLS[name]
    state = StreamState()
    for event, _ in SseSplitter().feed(stream_body(path)):
        if event is None:
            continue
        text = protocol.stream_text(event)
        assert recorded(name, event, state) == (text or "")
        if text is not None:
            # The rewrite lands where the ledger reads: a rewritten event records it.
            assert recorded(name, protocol.with_stream_text(event, "[X]")) == "[X]"
