"""A whole stored stream, read again the way the stream tap read it as it passed."""

from __future__ import annotations

from addon.protocols.base import StreamState, WireProtocol
from addon.streaming.splitters import JsonArraySplitter, SseSplitter


def read_stream(protocol: WireProtocol, data: bytes, framing: str) -> StreamState:
    """`framing` is "sse" or "json_array" (Gemini's streamed array)."""
    splitter = SseSplitter() if framing == "sse" else JsonArraySplitter()
    state = StreamState()
    for event, _raw in [*splitter.feed(data), *splitter.finish()]:
        if event is not None:
            protocol.feed_event(state, event)
            state.events += 1
    return state
