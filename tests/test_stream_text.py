"""Stream text accessors, used to scan and redact replies as they stream, on every recording."""

from __future__ import annotations

import json

import pytest

from addon.protocols import PROTOCOLS, StreamState
from addon.streaming import SseSplitter
from tests.test_streaming import STREAMS, stream_body


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_stream_text_is_the_answer_text_and_can_be_replaced(path) -> None:  # type: ignore[no-untyped-def]
    fixture = json.loads(path.read_text())
    protocol = PROTOCOLS[fixture["protocol"]]
    events = [e for e, _ in SseSplitter().feed(stream_body(path)) if e is not None]
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
    assert "".join(texts) == "".join(state.text)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_error_events_parse_as_the_protocols_errors(name: str) -> None:
    protocol = PROTOCOLS[name]
    state = StreamState()
    protocol.feed_event(state, protocol.error_event(400, "safety_block", "blocked: secrets"))
    assert state.error and "blocked" in state.error
