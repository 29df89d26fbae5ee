"""A provider's reply, back in the caller's protocol: a buffered body, an error, or a
stream translated event by event as its bytes arrive.

The dispatcher (`addon.upstream.dispatcher`) calls this; it never sees a flow.
The upstream's own usage report, mapped, is kept on the `Translation`: that is
what the ledger records, so a caller protocol that cannot express a count (a
Gemini caller has no field for cache writes) costs the ledger nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from addon.protocols import PROTOCOLS
from addon.protocols.base import StreamEvent
from addon.protocols.canonical import Usage
from addon.protocols.codec import CallerView, Codec
from addon.protocols.deltas import StreamFailure, UsageUpdate
from addon.streaming import SseSplitter, render_sse
from addon.translate.registry import codec

log = logging.getLogger("llmgate")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def caller_status(status: int, caller: str) -> int:
    """An upstream's error status as the caller's SDK understands it.

    Anthropic's 529 (overloaded) means what 503 means everywhere else; both are
    retried by every official SDK, and a 429 stays a 429 with its Retry-After.
    """
    if status == 529 and caller != "anthropic_messages":
        return 503
    return status


class ReplyNotReadable(ValueError):
    """The upstream's reply is not what its protocol promises."""


@dataclass
class Translation:
    caller: str
    upstream: str
    view: CallerView
    # The upstream's own usage report (cumulative for streams), mapped.
    usage: Usage | None = None
    dropped: list[str] = field(default_factory=list)

    @property
    def caller_codec(self) -> Codec:
        return codec(self.caller)

    @property
    def upstream_codec(self) -> Codec:
        return codec(self.upstream)

    @property
    def streams_sse(self) -> bool:
        """Gemini callers choose SSE with `alt=sse`; without it they get a JSON array."""
        return self.caller != "gemini" or "alt=sse" in self.view.path

    @property
    def content_type(self) -> str:
        if self.view.stream and self.streams_sse:
            return "text/event-stream"
        return "application/json"

    def reply_body(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise ReplyNotReadable("the upstream's reply is not JSON") from None
        reply = self.upstream_codec.decode_reply(data)
        self.usage = reply.usage
        return _dumps(self.caller_codec.encode_reply(reply, self.view))

    def error_reply(self, status: int, body: bytes) -> tuple[int, bytes]:
        """The upstream's error, in the caller's error shape and a status that fits."""
        try:
            data: Any = json.loads(body) if body else None
        except (ValueError, RecursionError):
            data = None
        try:
            kind, message = self.upstream_codec.decode_error(status, data)
        except Exception:  # noqa: BLE001 - an unreadable error is still an error
            kind, message = "upstream_error", ""
        out = caller_status(status, self.caller)
        message = message or f"the upstream answered {status}"
        return out, _dumps(PROTOCOLS[self.caller].error_body(out, kind, message))

    def stream(self, max_event_bytes: int) -> StreamTranslation:
        return StreamTranslation(self, max_event_bytes)


class StreamTranslation:
    """Upstream SSE bytes in, the caller's stream bytes out, one event at a time."""

    def __init__(self, translation: Translation, max_event_bytes: int) -> None:
        self.translation = translation
        self.splitter = SseSplitter(max_event_bytes)
        self.decoder = translation.upstream_codec.stream_decoder()
        self.encoder = translation.caller_codec.stream_encoder(translation.view)
        self.sse = translation.streams_sse
        self.elements = 0
        self.ended = False

    def feed(self, chunk: bytes) -> bytes:
        if self.ended:
            return b""
        out: list[StreamEvent] = []
        for event, _raw in self.splitter.feed(chunk):
            if event is not None:
                self._decode(event, out)
                if _is_last(event):
                    # The caller gets its ending now, not when the upstream closes.
                    for delta in self.decoder.close():
                        self._encode(delta, out)
                    return self._end(out)
        return self._render(out)

    def finish(self) -> bytes:
        """The upstream's stream ended cleanly."""
        if self.ended:
            return b""
        out: list[StreamEvent] = []
        for event, _raw in self.splitter.finish():
            if event is not None:
                self._decode(event, out)
        for delta in self.decoder.close():
            self._encode(delta, out)
        return self._end(out)

    def fail(self, status: int, kind: str, message: str) -> bytes:
        """The upstream broke off, or llmgate stopped it: the caller's error event, then the end."""
        out: list[StreamEvent] = []
        try:
            self._encode(StreamFailure(status, kind, message), out)
            return self._end(out)
        except Exception:  # noqa: BLE001 - the encoder itself broke: end it plainly
            self.ended = True
            event = PROTOCOLS[self.translation.caller].error_event(status, kind, message)
            rendered = self._render([event])
            return rendered if self.sse else rendered + b"]"

    def _decode(self, event: StreamEvent, out: list[StreamEvent]) -> None:
        for delta in self.decoder.feed(event):
            self._encode(delta, out)

    def _encode(self, delta: Any, out: list[StreamEvent]) -> None:
        if isinstance(delta, UsageUpdate):
            self.translation.usage = delta.usage
        out.extend(self.encoder.feed(delta))

    def _end(self, out: list[StreamEvent]) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out.extend(self.encoder.close())
        rendered = self._render(out)
        if not self.sse:
            rendered += b"]" if self.elements else b"[]"
        return rendered

    def _render(self, events: list[StreamEvent]) -> bytes:
        if self.sse:
            return b"".join(render_sse(event) for event in events)
        parts: list[bytes] = []
        for event in events:
            parts.append((b"[" if self.elements == 0 else b",\r\n") + event.data.encode())
            self.elements += 1
        return b"".join(parts)


def _is_last(event: StreamEvent) -> bool:
    """An upstream event after which its protocol sends nothing more: Chat's `[DONE]`,
    Anthropic's `message_stop`. (Gemini's stream simply ends.)"""
    data = event.data.strip()
    return (
        data == "[DONE]"
        or event.event == "message_stop"
        or data.startswith('{"type":"message_stop"')
    )
