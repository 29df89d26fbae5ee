"""An upstream that never ends an event: linear work, a size cap, bounded memory."""

from __future__ import annotations

import json
import re
import tracemalloc
import zlib
from itertools import accumulate

import pytest

from addon.protocols import PROTOCOLS
from addon.protocols.base import StreamEvent
from addon.streaming import (
    EventTooLarge,
    JsonArraySplitter,
    SseSplitter,
    StreamTap,
    render_sse,
)
from tests.test_streaming import GEMINI_STREAMS, json_array_body, split_events

KB = 1024
MB = 1024 * KB
CHUNK = b"x" * (64 * KB)
UNBOUNDED = 1 << 40
GEMINI_TEXT = b'[{"candidates": [{"content": {"parts": [{"text": "'


def sent(pieces: bytes | list[bytes]) -> bytes:
    return pieces if isinstance(pieces, bytes) else b"".join(pieces)


def too_large(tap: StreamTap) -> str:
    assert tap.failure is not None
    assert tap.failure_reason == "event_too_large"
    assert "exceeded" in tap.failure
    return tap.failure


def until_stopped(tap: StreamTap) -> bytes | list[bytes]:
    """Feed chunks with no event end until the tap stops; what it sent on the last one."""
    for _ in range(200):
        out = tap(CHUNK)
        if tap.failure is not None:
            return out
    raise AssertionError("the cap never tripped")


def assert_stopped(tap: StreamTap) -> None:
    kept = bytes(tap.kept)
    assert tap(CHUNK) == []
    assert tap(b"") == []
    assert bytes(tap.kept) == kept
    # The pending event is let go of, not held until the flow is gone.
    assert not tap._splitter._buf


# --- linear work ----------------------------------------------------------------------


def test_sse_search_without_a_boundary_is_linear() -> None:
    splitter = SseSplitter(max_event_bytes=UNBOUNDED)
    for _ in range(2000):
        assert splitter.feed(CHUNK) == []
    total = 2000 * len(CHUNK)
    assert splitter.scanned <= 2 * total


@pytest.mark.parametrize("opening", [GEMINI_TEXT, b'[{"n": 1'], ids=["in_a_string", "in_an_object"])
def test_json_array_search_without_an_element_end_is_linear(opening: bytes) -> None:
    splitter = JsonArraySplitter(max_event_bytes=UNBOUNDED)
    splitter.feed(opening)
    for _ in range(2000):
        assert splitter.feed(CHUNK) == []
    total = len(opening) + 2000 * len(CHUNK)
    assert splitter.scanned <= 2 * total


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_a_stream_of_many_events_is_searched_about_once(size: int) -> None:
    body = b"".join(b'data: {"n": %d}\r\n\r\n' % i for i in range(2000))
    splitter = SseSplitter()
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    events, raw = split_events(splitter, chunks)
    assert len(events) == 2000 and raw == body
    # Each byte once, plus the few bytes a boundary can straddle, per feed.
    assert splitter.scanned <= len(body) + 3 * len(chunks)


# --- the cap on the splitters ---------------------------------------------------------


@pytest.mark.parametrize("framing", ["sse", "json_array"])
def test_an_event_exactly_at_the_cap_passes_and_one_byte_more_does_not(framing: str) -> None:
    if framing == "sse":
        event = b'data: {"t": "' + b"x" * 5000 + b'"}\n\n'
        body, splitter = event + b"data: {}\n\n", SseSplitter
    else:
        # The separators before an element are part of its raw bytes.
        event = b'[{"t": "' + b"x" * 5000 + b'"}'
        body, splitter = event + b"\n,\r\n{}\n]", JsonArraySplitter
    for chunks in ([body], [body[i : i + 100] for i in range(0, len(body), 100)]):
        events, raw = split_events(splitter(len(event)), chunks)
        assert len(events) == 2 and raw == body
        with pytest.raises(EventTooLarge) as caught:
            split_events(splitter(len(event) - 1), chunks)
        assert caught.value.events == []


def test_the_events_before_the_big_one_come_with_the_exception() -> None:
    small = b"data: 1\n\ndata: 2\n\n"
    with pytest.raises(EventTooLarge) as caught:
        SseSplitter(100).feed(small + b"data: " + b"x" * 200)
    assert [e.data for e, _ in caught.value.events if e] == ["1", "2"]
    assert b"".join(raw for _, raw in caught.value.events) == small


# --- the tap stops the stream ---------------------------------------------------------


def test_sse_tap_trips_at_the_first_chunk_past_the_cap() -> None:
    protocol = PROTOCOLS["openai_chat"]
    tap = StreamTap(protocol, "sse", keep_bytes=UNBOUNDED, max_event_bytes=MB)
    first = b'data: {"t": "' + CHUNK[13:]
    client = b""
    for i in range(200):
        out = tap(first if i == 0 else CHUNK)
        client += sent(out)
        if tap.failure is not None:
            break
        assert out == [first if i == 0 else CHUNK]
    # 16 chunks are exactly 1 MB: the 17th is the first past it.
    assert i == 16
    message = too_large(tap)
    error = protocol.error_event(502, "event_too_large", message)
    # The caller already holds the cut-off event: a blank line ends it first.
    assert out == [b"\n\n" + render_sse(error)]
    assert bytes(tap.kept) == client
    assert split_events(SseSplitter(UNBOUNDED), [client])[0][-1] == error
    assert_stopped(tap)


def test_sse_tap_forwarding_events_sends_them_then_the_error_event() -> None:
    protocol = PROTOCOLS["openai_chat"]
    tap = StreamTap(protocol, "sse", hide_injected=True, max_event_bytes=MB)
    assert tap(b"data: {}\n\n") == [b"data: {}\n\n"]
    for _ in range(16):
        assert tap(CHUNK) == []  # held: the event is not complete
    out = tap(CHUNK)
    error = protocol.error_event(502, "event_too_large", too_large(tap))
    assert out == [render_sse(error)]
    assert_stopped(tap)


def test_sse_tap_delivers_the_events_the_tripping_chunk_completed() -> None:
    protocol = PROTOCOLS["openai_chat"]
    tap = StreamTap(protocol, "sse", hide_injected=True, max_event_bytes=100)
    out = tap(b"data: {}\n\ndata: " + b"x" * 200)
    error = protocol.error_event(502, "event_too_large", too_large(tap))
    assert out == [b"data: {}\n\n", render_sse(error)]
    assert tap.state.events == 1


def test_json_array_tap_trips_and_closes_the_cut_element_and_the_array() -> None:
    protocol = PROTOCOLS["gemini"]
    tap = StreamTap(protocol, "json_array", keep_bytes=UNBOUNDED, max_event_bytes=MB)
    opening = b'[{"candidates": []},\n{"candidates": [{"content": {"parts": [{"text": "'
    client = sent(tap(opening))
    for i in range(200):  # noqa: B007 - `i` is the chunk that tripped
        out = tap(CHUNK)
        client += sent(out)
        if tap.failure is not None:
            break
        assert out == [CHUNK]
    assert i == (MB - len(b'{"candidates": [{"content": {"parts": [{"text": "')) // len(CHUNK)
    body = protocol.error_body(502, "event_too_large", too_large(tap))
    assert out == [b'"}]}}]},' + json.dumps(body).encode() + b"]"]
    # The whole reply parses: a cut-off text part, then Gemini's own error shape.
    items = json.loads(client)
    assert items[0] == {"candidates": []}
    assert set(items[1]["candidates"][0]["content"]["parts"][0]["text"]) == {"x"}
    assert items[-1] == body
    assert bytes(tap.kept) == client
    assert_stopped(tap)


def test_json_array_tap_with_nothing_sent_sends_a_whole_error_array() -> None:
    protocol = PROTOCOLS["gemini"]
    tap = StreamTap(protocol, "json_array", max_event_bytes=MB)
    out = tap(b" " + b"x" * (MB + 1))
    body = protocol.error_body(502, "event_too_large", too_large(tap))
    assert json.loads(sent(out)) == [body]
    assert_stopped(tap)


def test_json_array_tap_forwarding_elements_appends_the_error_element() -> None:
    protocol = PROTOCOLS["gemini"]
    tap = StreamTap(protocol, "json_array", hide_injected=True, max_event_bytes=MB)
    first = sent(tap(b'[{"candidates": []}\n,\r\n' + GEMINI_TEXT[1:]))
    assert first == b'[{"candidates": []}'
    out = until_stopped(tap)
    body = protocol.error_body(502, "event_too_large", too_large(tap))
    assert json.loads(first + sent(out)) == [{"candidates": []}, body]
    assert_stopped(tap)


def test_json_array_tap_whose_first_element_is_too_big_sends_a_whole_error_array() -> None:
    protocol = PROTOCOLS["gemini"]
    tap = StreamTap(protocol, "json_array", hide_injected=True, max_event_bytes=MB)
    assert tap(GEMINI_TEXT) == []
    out = until_stopped(tap)
    body = protocol.error_body(502, "event_too_large", too_large(tap))
    assert json.loads(sent(out)) == [body]


def test_the_end_of_the_stream_is_checked_too() -> None:
    compressor = zlib.compressobj(wbits=31)
    body = b"data: " + b"x" * 3000
    encoded = compressor.compress(body) + compressor.flush()
    protocol = PROTOCOLS["openai_chat"]
    tap = StreamTap(protocol, "sse", gzip_encoded=True, hide_injected=True, max_event_bytes=2000)
    # zlib keeps what it has not flushed: all of it arrives at the end.
    out = [piece for i in range(len(encoded)) for piece in tap(encoded[i : i + 1])]
    out += tap(b"")
    assert out[-1] == render_sse(protocol.error_event(502, "event_too_large", too_large(tap)))


# --- memory ---------------------------------------------------------------------------


def test_a_pending_event_holds_no_more_than_the_cap_and_a_chunk() -> None:
    tap = StreamTap(PROTOCOLS["openai_chat"], "sse", max_event_bytes=MB)
    tracemalloc.start()
    try:
        for _ in range(200):
            tap(CHUNK)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tap.failure_reason == "event_too_large"
    assert peak < 2 * (MB + len(CHUNK))


def test_a_compressed_bomb_is_not_inflated_past_the_cap() -> None:
    compressor = zlib.compressobj(wbits=31)
    encoded = compressor.compress(b"x" * (256 * MB)) + compressor.flush()
    assert len(encoded) < MB
    tap = StreamTap(PROTOCOLS["openai_chat"], "sse", gzip_encoded=True, max_event_bytes=MB)
    tracemalloc.start()
    try:
        out = tap(encoded)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tap.failure_reason == "event_too_large"
    assert peak < 8 * MB
    assert sum(map(len, out)) < 4 * MB


# --- closing an array cut anywhere ------------------------------------------------------


@pytest.mark.parametrize("path", GEMINI_STREAMS, ids=lambda p: p.stem)
def test_a_json_array_cut_anywhere_still_reaches_the_error_element(path) -> None:  # type: ignore[no-untyped-def]
    body = json_array_body(path)
    element = json.dumps({"error": {"code": 502}}).encode()
    # Just inside each string value, and a byte on; just after each element.
    strings = {m.end() + k for m in re.finditer(rb'": "', body) for k in (0, 1)}
    ends = set(accumulate(len(raw) for _, raw in JsonArraySplitter().feed(body)))
    assert strings and ends
    # Every offset for small streams; the thinking stream is sampled densely instead.
    step = 1 if len(body) < 4_000 else 7
    # Cut before the final `]`, while the array is still open.
    for cut in sorted({*range(0, len(body) - 1, step), *strings, *ends}):
        splitter = JsonArraySplitter()
        splitter.feed(body[:cut])
        splitter.feed(b"")  # the cut is what the caller was sent before the last feed
        client = body[:cut] + splitter.tail(element, chunked=True)
        events, _ = split_events(JsonArraySplitter(), [client])
        # A client reading element by element gets to the error element.
        assert events[-1] == StreamEvent(data=element.decode()), f"cut at byte {cut}"
        if cut in strings or cut in ends:
            # Cut in a string value or between elements: the whole reply parses.
            assert json.loads(client)[-1] == json.loads(element), f"cut at byte {cut}"
