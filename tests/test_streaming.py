"""The splitters and the stream tap, on every recorded stream, split at every byte offset."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.protocols import PROTOCOLS
from addon.protocols.base import StreamEvent
from addon.streaming import JsonArraySplitter, SseSplitter, StreamTap, parse_sse_block
from tests.conftest import FIXTURES

STREAMS = sorted(p for p in FIXTURES.glob("*.json") if json.loads(p.read_text())["stream"])


def stream_body(path) -> bytes:  # type: ignore[no-untyped-def]
    return json.loads(path.read_text())["response"]["body_text"].encode()


def split_events(splitter: SseSplitter | JsonArraySplitter, chunks: list[bytes]):  # type: ignore[no-untyped-def]
    pairs = []
    for chunk in chunks:
        pairs += splitter.feed(chunk)
    pairs += splitter.finish()
    return [e for e, _ in pairs if e is not None], b"".join(raw for _, raw in pairs)


def test_parse_sse_block_joins_data_lines_and_reads_the_name() -> None:
    event = parse_sse_block(b'event: delta\r\ndata: {"a":\ndata: 1}\r\n: comment')
    assert event == StreamEvent(data='{"a":\n1}', event="delta")
    assert parse_sse_block(b": keep-alive") is None


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_every_two_way_split_gives_the_same_events(path) -> None:  # type: ignore[no-untyped-def]
    body = stream_body(path)
    whole, raw = split_events(SseSplitter(), [body])
    assert raw == body
    assert whole
    # Every offset for small streams; the two big ones are sampled densely instead.
    step = 1 if len(body) < 40_000 else 97
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


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_chunkings_of_recorded_streams(data: st.DataObject) -> None:
    body = stream_body(data.draw(st.sampled_from(STREAMS)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=30)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert split_events(SseSplitter(), chunks) == split_events(SseSplitter(), [body])


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
