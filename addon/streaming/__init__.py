"""Stream splitting and the stream tap that audits a reply while forwarding it.

`splitters` cuts a reply into events (SSE, streamed JSON arrays) under the
`max_event_bytes` cap; `tap` holds `StreamTap`, which forwards a reply and feeds
those events to the protocol's reader. Everything other modules import from
`addon.streaming` is re-exported here, so they need not know the split.
"""

from addon.streaming.splitters import (
    MAX_EVENT_BYTES,
    Events,
    EventTooLarge,
    Framing,
    JsonArraySplitter,
    Splitter,
    SseSplitter,
    make_splitter,
    parse_sse_block,
    render_sse,
)
from addon.streaming.tap import StreamTap

__all__ = [
    "MAX_EVENT_BYTES",
    "EventTooLarge",
    "Events",
    "Framing",
    "JsonArraySplitter",
    "Splitter",
    "SseSplitter",
    "StreamTap",
    "make_splitter",
    "parse_sse_block",
    "render_sse",
]
