"""The stream tap that audits a reply while forwarding it (see `addon.streaming.splitters`
for how a reply is cut into events)."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from addon.protocols.base import StreamEvent, StreamState, WireProtocol
from addon.streaming.splitters import (
    MAX_EVENT_BYTES,
    EventTooLarge,
    Framing,
    make_splitter,
    render_sse,
)

if TYPE_CHECKING:
    from addon.safety.stream_guard import StreamGuard

# Decoded bytes per zlib call: a small compressed chunk may inflate to gigabytes,
# and the splitter's cap must get a say before all of it is in memory.
_DECODE_STEP = 1 << 20


class StreamTap:
    """The callable installed as `flow.response.stream`.

    It forwards each chunk the moment it arrives and feeds a copy to the
    protocol's stream reader. Only when it must hide an injected event does it
    forward at event granularity instead of chunk granularity.

    A stream it cannot follow is stopped, never passed on unread: after a
    failure (`failure`, `failure_reason`) it forwards nothing more.
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
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.protocol = protocol
        self.state = StreamState()
        self.first_token_at: float | None = None
        self.bytes_received = 0
        # What the caller received, up to the audit's payload cap.
        self.kept = bytearray()
        self._keep_bytes = keep_bytes
        self._max_event_bytes = max_event_bytes
        self._splitter = make_splitter(framing, max_event_bytes)
        self._hide = hide_injected
        self.guard = guard
        # Event granularity is needed to hide an event or to rewrite one.
        self._per_event = hide_injected or guard is not None
        self._decoder = zlib.decompressobj(wbits=47) if gzip_encoded else None
        self._clock = clock
        self._framing = framing
        self.failure: str | None = None
        # The audit row's reason: "event_too_large" or "internal_error".
        self.failure_reason: str | None = None

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.failure is not None:
            return []
        try:
            return self._forward(chunk)
        except Exception as exc:  # noqa: BLE001 - fail closed: stop the stream
            # A stream llmgate can no longer read (and so cannot scan) goes no further.
            message = f"llmgate stopped the stream: {type(exc).__name__}"
            self._stop(message, "internal_error")
            event = self.protocol.error_event(500, "internal_error", message)
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
            self._stop(f"llmgate stopped the reply: {type(exc).__name__}", "internal_error")
            return []

    def _stop(self, message: str, reason: str) -> None:
        self.failure = message
        self.failure_reason = reason
        # Nothing more is read: let go of the pending event and the decoder's window.
        self._splitter = make_splitter(self._framing, self._max_event_bytes)
        self._decoder = None

    def _forward(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return self._finish()
        self.bytes_received += len(chunk)
        out: list[bytes] = []
        for data in self._decoded(chunk):
            try:
                events = self._splitter.feed(data)
            except EventTooLarge as exc:
                out += self._too_large(exc)
                break
            pieces = self._consume(events)
            # A decoded stream is forwarded decoded: the gateway dropped the
            # content-encoding header when it installed this tap.
            out += pieces if self._per_event else [data]
        self._keep(out)
        return out

    def _decoded(self, chunk: bytes) -> Iterator[bytes]:
        """The chunk, decoded a step at a time: a failure stops the decoding too."""
        decoder = self._decoder
        if decoder is None:
            yield chunk
            return
        data = chunk
        while True:
            part = decoder.decompress(data, _DECODE_STEP)
            if part:
                yield part
            data = decoder.unconsumed_tail
            # A full step may leave output inside zlib even with no input left.
            if not data and len(part) < _DECODE_STEP:
                return

    def _too_large(self, exc: EventTooLarge) -> list[bytes]:
        """Stop the stream: what still goes out, ending it with the protocol's error."""
        # Forwarding chunk by chunk, the chunk that tripped is dropped whole, so the
        # events it completed are neither sent nor read: the audit matches the client.
        out = self._consume(exc.events) if self._per_event else []
        message = f"llmgate stopped the stream: an event exceeded {exc.limit} bytes"
        if self._framing == "sse":
            element = render_sse(self.protocol.error_event(502, "event_too_large", message))
        else:
            # An array item shaped like the error Gemini itself puts in a stream,
            # so a client raises it as an API error rather than a parse error.
            body = self.protocol.error_body(502, "event_too_large", message)
            element = json.dumps(body).encode()
        tail = self._splitter.tail(element, chunked=not self._per_event)
        self._stop(message, "event_too_large")
        return [*out, tail] if tail else out

    def _keep(self, pieces: list[bytes]) -> None:
        room = self._keep_bytes - len(self.kept)
        for piece in pieces:
            if room <= 0:
                return
            self.kept += piece[:room]
            room -= len(piece)

    def _finish(self) -> list[bytes]:
        tail = self._decoder.flush() if self._decoder else b""
        try:
            events = self._splitter.feed(tail) + self._splitter.finish()
        except EventTooLarge as exc:
            out = self._too_large(exc)
            self._keep(out)
            return out
        pieces = self._consume(events)
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
