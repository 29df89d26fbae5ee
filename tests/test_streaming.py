"""The splitters and the stream tap, on every recorded stream, split at every byte offset."""

from __future__ import annotations

import gzip
import json
import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.protocols import PROTOCOLS
from addon.protocols.base import StreamEvent
from addon.streaming import (
    EventTooLarge,
    JsonArraySplitter,
    SseSplitter,
    StreamTap,
    parse_sse_block,
)
from tests.conftest import FIXTURES
from tests.strict import nonempty, nonempty_glob

STREAMS = nonempty(
    (p for p in nonempty_glob(FIXTURES, "*.json") if json.loads(p.read_text())["stream"]),
    "recorded streams",
)


def stream_body(path) -> bytes:  # type: ignore[no-untyped-def]
    return json.loads(path.read_text())["response"]["body_text"].encode()


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(cuts)
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def split_events(splitter: SseSplitter | JsonArraySplitter, chunks: list[bytes]):  # type: ignore[no-untyped-def]
    pairs = []
    for chunk in chunks:
        pairs += splitter.feed(chunk)
    pairs += splitter.finish()
    return [e for e, _ in pairs if e is not None], b"".join(raw for _, raw in pairs)


def json_array_body(path) -> bytes:  # type: ignore[no-untyped-def]
    """A recorded Gemini SSE stream as the JSON array Gemini sends without alt=sse."""
    events, _ = split_events(SseSplitter(), [stream_body(path)])
    return ("[" + "\n,\r\n".join(e.data for e in events) + "\n]").encode()


GEMINI_STREAMS = nonempty((p for p in STREAMS if p.stem.startswith("gemini__")), "Gemini streams")
# Every recorded stream with its framing: SSE as recorded, Gemini's also as an array.
FRAMED = [("sse", stream_body(p)) for p in STREAMS] + [
    ("json_array", json_array_body(p)) for p in GEMINI_STREAMS
]
SPLITTERS = {"sse": SseSplitter, "json_array": JsonArraySplitter}


def test_parse_sse_block_joins_data_lines_and_reads_the_name() -> None:
    event = parse_sse_block(b'event: delta\r\ndata: {"a":\ndata: 1}\r\n: comment')
    assert event == StreamEvent(data='{"a":\n1}', event="delta")
    assert parse_sse_block(b": keep-alive") is None


def _sse_block_by_the_spec(block: bytes) -> StreamEvent | None:
    """The WHATWG reading, line by line, written plainly: what parse_sse_block must equal."""
    name, data = None, []
    for line in re.split(r"\r\n|\r|\n", block.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    return StreamEvent(data="\n".join(data), event=name) if data else None


_sse_piece = st.sampled_from(
    [b"data", b"event", b"id", b":", b": ", b" ", b"  ", b"\r", b"\n", b"\r\n", b"x", b"{}",
     "\u00e9".encode(), b"\xff", b"\xe2\x82"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_sse_piece, max_size=30))
def test_parse_sse_block_reads_any_block_as_the_spec_does(pieces: list[bytes]) -> None:
    block = b"".join(pieces)
    assert parse_sse_block(block) == _sse_block_by_the_spec(block)


def test_a_huge_single_line_event_is_read_whole() -> None:
    """A runaway upstream's one endless data line (bench case `hostile`: 125 MiB)."""
    value = "x" * (4 << 20)
    assert parse_sse_block(f"data: {value}".encode()) == StreamEvent(data=value)


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_every_two_way_split_gives_the_same_events(path) -> None:  # type: ignore[no-untyped-def]
    body = stream_body(path)
    whole, raw = split_events(SseSplitter(), [body])
    assert raw == body
    assert whole
    # Every offset for small streams; bigger ones at ~1,000 offsets spread over the
    # whole body (a stride that is odd, so cuts fall on every residue of a CRLF pair).
    step = 1 if len(body) < 1_000 else (len(body) // 1_000) | 1
    for cut in range(0, len(body) + 1, step):
        events, raw = split_events(SseSplitter(), [body[:cut], body[cut:]])
        assert events == whole, f"split at byte {cut}"
        assert raw == body


def test_a_multibyte_character_split_mid_sequence_decodes_whole() -> None:
    text = 'data: {"t": "caf\u00e9 \U0001f600"}\n\n'
    body = text.encode()
    for cut in range(len(body) + 1):
        events, _ = split_events(SseSplitter(), [body[:cut], body[cut:]])
        assert events == [StreamEvent(data='{"t": "caf\u00e9 \U0001f600"}')]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_chunkings_of_recorded_streams(data: st.DataObject) -> None:
    framing, body = data.draw(st.sampled_from(FRAMED))
    splitter = SPLITTERS[framing]
    chunks = chunked(body, data.draw(st.lists(st.integers(0, len(body)), max_size=30)))
    assert split_events(splitter(), chunks) == split_events(splitter(), [body])


@pytest.mark.parametrize("path", GEMINI_STREAMS, ids=lambda p: p.stem)
def test_every_two_way_split_of_a_recorded_json_array(path) -> None:  # type: ignore[no-untyped-def]
    body = json_array_body(path)
    whole, raw = split_events(JsonArraySplitter(), [body])
    assert raw == body
    assert [json.loads(e.data) for e in whole] == json.loads(body)
    # Every offset for small streams; the thinking stream is sampled densely instead.
    step = 1 if len(body) < 4_000 else 11
    for cut in range(0, len(body) + 1, step):
        assert split_events(JsonArraySplitter(), [body[:cut], body[cut:]]) == (whole, body)


def events_until_too_large(splitter: SseSplitter | JsonArraySplitter, chunks: list[bytes]):  # type: ignore[no-untyped-def]
    """The events read before the cap tripped, and whether it did."""
    pairs = []
    try:
        for chunk in chunks:
            pairs += splitter.feed(chunk)
        pairs += splitter.finish()
    except EventTooLarge as exc:
        return pairs + exc.events, True
    return pairs, False


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_the_event_cap_trips_at_the_same_event_however_the_stream_is_chunked(
    data: st.DataObject,
) -> None:
    framing, body = data.draw(st.sampled_from(FRAMED))
    splitter = SPLITTERS[framing]
    reader = splitter()
    sizes = [len(raw) for _, raw in reader.feed(body) + reader.finish()]
    # Around the size of a real event: some pass, the first bigger one trips.
    cap = data.draw(st.sampled_from(sizes)) + data.draw(st.integers(-1, 0))
    chunks = chunked(body, data.draw(st.lists(st.integers(0, len(body)), max_size=30)))
    expected = events_until_too_large(splitter(cap), [body])
    assert expected[1] == (max(sizes) > cap)
    assert events_until_too_large(splitter(cap), chunks) == expected


def test_json_array_stream_split_everywhere() -> None:
    items = [{"a": 'x}{"]', "n": i, "nested": {"b": [1, 2, {"c": '\\"'}]}} for i in range(3)]
    body = ("[" + "\n,\r\n".join(json.dumps(i) for i in items) + "\n]").encode()
    for cut in range(len(body) + 1):
        events, raw = split_events(JsonArraySplitter(), [body[:cut], body[cut:]])
        assert [json.loads(e.data) for e in events] == items
        assert raw == body


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_tap_forwards_bytes_unchanged_and_reads_events(path) -> None:  # type: ignore[no-untyped-def]
    fixture = json.loads(path.read_text())
    body = stream_body(path)
    tap = StreamTap(PROTOCOLS[fixture["protocol"]], "sse", keep_bytes=len(body))
    out = b""
    for i in range(0, len(body), 7):
        forwarded = tap(body[i : i + 7])
        out += forwarded if isinstance(forwarded, bytes) else b"".join(forwarded)
    end = tap(b"")
    out += end if isinstance(end, bytes) else b"".join(end)
    assert out == body
    assert bytes(tap.kept) == body
    assert tap.state.events > 0


def test_tap_decodes_a_gzip_stream_chunk_by_chunk() -> None:
    path = next(p for p in STREAMS if p.stem == "anthropic_messages__text_stream")
    body = stream_body(path)
    compressor = zlib.compressobj(wbits=31)
    encoded = compressor.compress(body) + compressor.flush()
    assert gzip.decompress(encoded) == body
    tap = StreamTap(PROTOCOLS["anthropic_messages"], "sse", gzip_encoded=True)
    out = b"".join(b"".join(tap(encoded[i : i + 5])) for i in range(0, len(encoded), 5))
    out += b"".join(tap(b""))
    assert out == body
    assert tap.state.usage is not None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_line_break_mix_splits_the_same_in_pieces(data: st.DataObject) -> None:
    # Line breaks cut anywhere: what the resumed boundary search must get right.
    body = data.draw(st.lists(st.sampled_from([b"data: x", b"a", b"\r", b"\n", b"\r\n"])))
    body = b"".join(body)
    chunks = chunked(body, data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    assert split_events(SseSplitter(), chunks) == split_events(SseSplitter(), [body])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_json_token_mix_splits_the_same_in_pieces(data: st.DataObject) -> None:
    # Strings, escapes and brackets cut anywhere: the string skipping must resume right.
    tokens = [b"[", b"{", b"}", b"]", b'"', b"\\", b",", b"x", b'\\"']
    body = b"".join(data.draw(st.lists(st.sampled_from(tokens))))
    chunks = chunked(body, data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    whole = JsonArraySplitter().feed(body)
    pieces = JsonArraySplitter()
    assert [pair for chunk in chunks for pair in pieces.feed(chunk)] == whole
