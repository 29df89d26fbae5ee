"""Stream splitting and the stream tap that audits a reply while forwarding it.

Chunk boundaries are not event boundaries: an event, or a multi-byte UTF-8
character, may arrive in pieces. The splitters below work on bytes and only decode
a complete event, so a split character is reassembled before decoding.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from addon.protocols.base import StreamEvent, StreamState, WireProtocol

if TYPE_CHECKING:
    from addon.stream_guard import StreamGuard

Framing = Literal["sse", "json_array"]

# A blank line ends an SSE event; lines end with CRLF, LF or a lone CR.
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_EVENT_END = re.compile(_EOL + _EOL)
_LINE = re.compile(r"\r\n|\r|\n")


def parse_sse_block(block: bytes) -> StreamEvent | None:
    """One SSE event block, without its blank line, as an event; None when it has no data."""
    name: str | None = None
    data: list[str] = []
    for line in _LINE.split(block.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return StreamEvent(data="\n".join(data), event=name)


class SseSplitter:
    """Incremental SSE splitter: feed bytes, get (event, raw bytes of that event) pairs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[StreamEvent | None, bytes]]:
        self._buf += data
        out: list[tuple[StreamEvent | None, bytes]] = []
        start = 0
        for match in _EVENT_END.finditer(self._buf):
            # A CR at the very end may be the first half of a CRLF still in flight.
            if match.end() == len(self._buf) and self._buf.endswith(b"\r"):
                break
            raw = bytes(self._buf[start : match.end()])
            out.append((parse_sse_block(bytes(self._buf[start : match.start()])), raw))
            start = match.end()
        del self._buf[:start]
        return out

    def finish(self) -> list[tuple[StreamEvent | None, bytes]]:
        """The stream ended: whatever is left is a final event without its blank line."""
        raw, self._buf = bytes(self._buf), bytearray()
        if not raw:
            return []
        return [(parse_sse_block(raw), raw)]


_JSON_TOKEN = re.compile(rb'[{}\[\]"\\]')


class JsonArraySplitter:
    """Incremental splitter for a streamed JSON array of objects (Gemini without alt=sse).

    Raw bytes are passed through in order: the separators between elements are
    attached to the element that follows them.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._element_start: int | None = None
        self._emitted = 0

    def feed(self, data: bytes) -> list[tuple[StreamEvent | None, bytes]]:
        self._buf += data
        out: list[tuple[StreamEvent | None, bytes]] = []
        buf = self._buf
        i = self._pos
        while i < len(buf):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif buf[i] == 0x5C:  # backslash
                    self._escaped = True
                elif buf[i] == 0x22:  # quote
                    self._in_string = False
                i += 1
                continue
            match = _JSON_TOKEN.search(buf, i)
            if match is None:
                i = len(buf)
                break
            i = match.start()
            ch = buf[i]
            if ch == 0x22:
                self._in_string = True
            elif ch in (0x7B, 0x5B):  # { [
                self._depth += 1
                if self._depth == 2 and ch == 0x7B:
                    self._element_start = i
            elif ch in (0x7D, 0x5D):  # } ]
                self._depth -= 1
                if self._depth == 1 and self._element_start is not None:
                    text = bytes(buf[self._element_start : i + 1]).decode("utf-8", "replace")
                    out.append((StreamEvent(data=text), bytes(buf[self._emitted : i + 1])))
                    self._emitted = i + 1
                    self._element_start = None
            i += 1
        self._pos = i
        # Drop what has been emitted and is not part of a pending element.
        if self._emitted:
            del buf[: self._emitted]
            self._pos -= self._emitted
            if self._element_start is not None:
                self._element_start -= self._emitted
            self._emitted = 0
        return out

    def finish(self) -> list[tuple[StreamEvent | None, bytes]]:
        raw, self._buf = bytes(self._buf), bytearray()
        return [(None, raw)] if raw else []


Splitter = SseSplitter | JsonArraySplitter


def make_splitter(framing: Framing) -> Splitter:
    return SseSplitter() if framing == "sse" else JsonArraySplitter()


def render_sse(event: StreamEvent, newline: str = "\n") -> bytes:
    lines = [f"event: {event.event}"] if event.event else []
    lines += [f"data: {line}" for line in event.data.split("\n")]
    return (newline.join(lines) + newline + newline).encode()


class StreamTap:
    """The callable installed as `flow.response.stream`.

    It forwards each chunk the moment it arrives and feeds a copy to the
    protocol's stream reader. Only when it must hide an injected event does it
    forward at event granularity instead of chunk granularity.
    """

    def __init__(
        self,
        protocol: WireProtocol,
        framing: Framing,
        *,
        hide_injected: bool = False,
        gzip_encoded: bool = False,
        keep_bytes: int = 0,
        guard: StreamGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.protocol = protocol
        self.state = StreamState()
        self.first_token_at: float | None = None
        self.bytes_received = 0
        # What the caller received, up to the audit's payload cap.
        self.kept = bytearray()
        self._keep_bytes = keep_bytes
        self._splitter = make_splitter(framing)
        self._hide = hide_injected
        self.guard = guard
        # Event granularity is needed to hide an event or to rewrite one.
        self._per_event = hide_injected or guard is not None
        self._decoder = zlib.decompressobj(wbits=47) if gzip_encoded else None
        self._clock = clock
        self._framing = framing
        self.failure: str | None = None

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.failure is not None:
            return []
        try:
            return self._forward(chunk)
        except Exception as exc:  # noqa: BLE001 - fail closed: stop the stream
            # A stream llmgate can no longer read (and so cannot scan) goes no further.
            self.failure = f"llmgate stopped the stream: {type(exc).__name__}"
            event = self.protocol.error_event(500, "internal_error", self.failure)
            return [render_sse(event)] if self._framing == "sse" else []

    def message(self, data: bytes) -> list[bytes]:
        """One WebSocket message, which is one whole event; returns the messages to send."""
        if self.failure is not None:
            return []
        try:
            self.bytes_received += len(data)
            event = StreamEvent(data=data.decode("utf-8", "replace"))
            pieces = self._consume([(event, data)])
            if not self._per_event:
                pieces = [data]
            self._keep([piece + b"\n" for piece in pieces])
            return pieces
        except Exception as exc:  # noqa: BLE001 - fail closed: nothing more goes through
            self.failure = f"llmgate stopped the reply: {type(exc).__name__}"
            return []

    def _forward(self, chunk: bytes) -> bytes | list[bytes]:
        if not chunk:
            return self._finish()
        self.bytes_received += len(chunk)
        data = self._decoder.decompress(chunk) if self._decoder else chunk
        pieces = self._consume(self._splitter.feed(data))
        if not self._per_event:
            # A decoded stream is forwarded decoded: the gateway dropped the
            # content-encoding header when it installed this tap.
            pieces = [data] if data else []
        self._keep(pieces)
        return pieces

    def _keep(self, pieces: list[bytes]) -> None:
        room = self._keep_bytes - len(self.kept)
        for piece in pieces:
            if room <= 0:
                return
            self.kept += piece[:room]
            room -= len(piece)

    def _finish(self) -> list[bytes]:
        tail = self._decoder.flush() if self._decoder else b""
        pieces = self._consume(self._splitter.feed(tail) + self._splitter.finish())
        if self.guard is not None:
            # Text the scanner still holds goes out before the stream ends.
            pieces += self.guard.finish()
        if not self._per_event:
            pieces = [tail] if tail else []
        self._keep(pieces)
        return pieces

    def _consume(self, events: list[tuple[StreamEvent | None, bytes]]) -> list[bytes]:
        forward: list[bytes] = []
        for event, raw in events:
            if event is not None:
                self.state.events += 1
                try:
                    carried_content = self.protocol.feed_event(self.state, event)
                except Exception:  # noqa: BLE001
                    # Whatever a malformed event makes a reader raise, the caller's
                    # stream must keep flowing; the audit just learns less.
                    carried_content = False
                if carried_content and self.first_token_at is None:
                    self.first_token_at = self._clock()
                if self._hide and self.protocol.hides_event(event):
                    continue
                if self.guard is not None:
                    forward.extend(piece for piece in self.guard.on_event(event, raw) if piece)
                    continue
            if self._per_event and raw:
                forward.append(raw)
        return forward
