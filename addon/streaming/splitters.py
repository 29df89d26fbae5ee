"""Stream splitting: SSE and streamed JSON arrays, cut into events as bytes arrive.

Chunk boundaries are not event boundaries: an event, or a multi-byte UTF-8
character, may arrive in pieces. The splitters below work on bytes and only decode
a complete event, so a split character is reassembled before decoding.
"""

from __future__ import annotations

import re
from typing import Literal

from addon.protocols.base import StreamEvent

Framing = Literal["sse", "json_array"]
Events = list[tuple[StreamEvent | None, bytes]]

# The default of `limits.max_event_bytes`: a splitter holds an unfinished event
# whole, so without a cap an upstream that never ends one grows it without end.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class EventTooLarge(Exception):
    """One event's raw bytes (its separators included) exceed `max_event_bytes`.

    The size is checked on a pending event and on a completed one alike, so
    whether an event trips the cap does not depend on how it was chunked.
    `events` are the events the same feed completed before it: they are sound,
    and a caller that forwards event by event still delivers them.
    """

    def __init__(self, limit: int, events: Events) -> None:
        super().__init__(f"an event exceeded {limit} bytes")
        self.limit = limit
        self.events = events


def _check_size(size: int, limit: int, events: Events) -> None:
    if size > limit:
        raise EventTooLarge(limit, events)


# A blank line ends an SSE event; lines end with CRLF, LF or a lone CR.
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_EVENT_END = re.compile(_EOL + _EOL)
# A match attempt at offset q reads bytes q..q+3 at most (CRLF CRLF, or a lone
# CR's look-ahead), so an attempt 4 or more bytes before the end of the bytes
# already searched came out the same as it will now. Only the last 3 bytes can
# change their meaning, e.g. a lone CR that the next chunk turns into CRLF.
_EVENT_END_BACKOFF = 3


def parse_sse_block(block: bytes) -> StreamEvent | None:
    """One SSE event block, without its blank line, as an event; None when it has no data."""
    name: str | None = None
    data: list[str] = []
    text = block.decode("utf-8", errors="replace")
    # A line ends at \r\n, \r or \n. Each step below is one C pass at most, and a
    # step that has nothing to do is skipped: over a runaway 125 MiB event, on the
    # event loop, a regex split took 0.75 s and partition + removeprefix two copies.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n") if "\n" in text else (text,):
        if not line or line.startswith(":"):
            continue
        colon = line.find(":")
        if colon < 0:
            field, value = line, ""
        else:
            field = line[:colon]
            value = line[colon + 2 :] if line.startswith(" ", colon + 1) else line[colon + 1 :]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return StreamEvent(data="\n".join(data), event=name)


class SseSplitter:
    """Incremental SSE splitter: feed bytes, get (event, raw bytes of that event) pairs.

    Each byte is searched for a boundary once (plus a few bytes of back-off per
    feed), so a stream costs time linear in its size however it is chunked.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        # Bytes searched for a boundary so far: what proves the search linear.
        self.scanned = 0
        self._buf = bytearray()
        self._pos = 0  # where the next search starts; no boundary starts before it
        self._held = 0  # len(_buf) when the last feed began (see `tail`)

    def feed(self, data: bytes) -> Events:
        buf = self._buf
        self._held = len(buf)
        buf += data
        size = len(buf)
        held_cr = self._held > 0 and buf[self._held - 1] == 0x0D
        if not held_cr and b"\n" not in data and b"\r" not in data:
            # No line break, so no boundary can end here; memchr is ~50x cheaper
            # than the regex, which matters for a line that never ends. (A CR the
            # last feed ended with may complete a boundary whatever follows it.)
            self.scanned += len(data)
            _check_size(size, self.max_event_bytes, [])
            self._pos = max(size - _EVENT_END_BACKOFF, 0)
            return []
        self.scanned += size - self._pos
        out: Events = []
        start = 0
        for match in _EVENT_END.finditer(buf, self._pos):
            end = match.end()
            # A CR at the very end may be the first half of a CRLF still in flight.
            if end == size and buf[-1] == 0x0D:
                break
            raw = bytes(buf[start:end])
            _check_size(len(raw), self.max_event_bytes, out)
            out.append((parse_sse_block(raw[: match.start() - start]), raw))
            start = end
        _check_size(size - start, self.max_event_bytes, out)
        # Only after emitting, and what remains then is at most this feed's data and
        # the back-off: moving it to the front keeps the cost linear.
        del buf[:start]
        self._pos = max(len(buf) - _EVENT_END_BACKOFF, 0)
        return out

    def finish(self) -> Events:
        """The stream ended: whatever is left is a final event without its blank line."""
        raw, self._buf, self._pos = bytes(self._buf), bytearray(), 0
        if not raw:
            return []
        return [(parse_sse_block(raw), raw)]

    def tail(self, element: bytes, *, chunked: bool) -> bytes:
        """What to send to end the stream with `element` as its last event.

        `chunked`: the caller was sent every byte fed before the last feed, so it may
        hold an event cut off mid-way. A line break and a blank line end that event
        first (whatever the cut, "\\n\\n" ends its line and then it), so `element` is
        read on its own; the cut event reaches the client broken, as it was sent.
        """
        return (b"\n\n" if chunked and self._held else b"") + element


_JSON_TOKEN = re.compile(rb'[{}\[\]"\\]')
_JSON_STRING_STOP = re.compile(rb'["\\]')
_JSON_OPENERS = re.compile(rb'[{}\[\]"]')


class JsonArraySplitter:
    """Incremental splitter for a streamed JSON array of objects (Gemini without alt=sse).

    Raw bytes are passed through in order: the separators between elements are
    attached to the element that follows them.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        # Bytes searched for tokens so far: what proves the search linear.
        self.scanned = 0
        self._buf = bytearray()
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._element_start: int | None = None
        self._emitted = 0
        self._elements = 0
        # When the last feed began: bytes held, elements emitted (see `tail`).
        self._held = 0
        self._held_elements = 0

    def feed(self, data: bytes) -> Events:
        buf = self._buf
        self._held, self._held_elements = len(buf), self._elements
        buf += data
        size = len(buf)
        out: Events = []
        i = self._pos
        self.scanned += size - i
        while i < size:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                    i += 1
                    continue
                # A long string is skipped in C, not byte by byte in Python.
                match = _JSON_STRING_STOP.search(buf, i)
                if match is None:
                    i = size
                    break
                i = match.start()
                if buf[i] == 0x5C:  # backslash
                    self._escaped = True
                else:
                    self._in_string = False
                i += 1
                continue
            match = _JSON_TOKEN.search(buf, i)
            if match is None:
                i = size
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
                    raw = bytes(buf[self._emitted : i + 1])
                    _check_size(len(raw), self.max_event_bytes, out)
                    text = raw[self._element_start - self._emitted :].decode("utf-8", "replace")
                    out.append((StreamEvent(data=text), raw))
                    self._emitted = i + 1
                    self._element_start = None
                    self._elements += 1
            i += 1
        self._pos = i
        _check_size(size - self._emitted, self.max_event_bytes, out)
        # Drop what has been emitted and is not part of a pending element.
        if self._emitted:
            del buf[: self._emitted]
            self._pos -= self._emitted
            if self._element_start is not None:
                self._element_start -= self._emitted
            self._emitted = 0
        return out

    def finish(self) -> Events:
        raw, self._buf = bytes(self._buf), bytearray()
        return [(None, raw)] if raw else []

    def tail(self, element: bytes, *, chunked: bool) -> bytes:
        """What to send to end the array with `element` as its last item.

        The caller has the elements emitted so far, or, when the stream is
        forwarded chunk by chunk (`chunked`), every byte fed before the last feed,
        which may stop inside an element. That element is closed -- its open string,
        then its brackets -- so a client reading element by element gets past it to
        `element`; cut inside a string value (a runaway text part), it even parses.
        Nothing when what the caller has is no open array that can take an item.
        """
        elements = self._held_elements if chunked else self._elements
        end = self._held if chunked else 0
        buf = self._buf
        # After an emitted element the array is open and between items.
        stack = bytearray(b"[" if elements else b"")
        started = items = elements > 0
        in_string = escaped = False
        item_end = 0  # where the last item of the array ended
        i = 0
        # Once, on failure: a rescan of at most the held bytes (<= max_event_bytes).
        while i < end:
            if in_string:
                match = _JSON_STRING_STOP.search(buf, i, end)
                if match is None:
                    break
                i = match.end()
                if buf[match.start()] == 0x5C:  # backslash: skip what it escapes
                    escaped = i == end
                    i += 1
                    continue
                in_string = False
                if len(stack) == 1:
                    item_end = i
                continue
            match = _JSON_OPENERS.search(buf, i, end)
            if match is None:
                break
            i = match.end()
            ch = buf[match.start()]
            started = True
            if ch in (0x7D, 0x5D):  # } ]
                if stack:
                    stack.pop()
                if len(stack) == 1:
                    item_end = i
                continue
            items = items or len(stack) == 1
            if ch == 0x22:
                in_string = True
            else:
                stack.append(ch)
        if not stack:
            return b"" if started else b"[" + element + b"]"
        if stack[0] != 0x5B:
            return b""
        # After a lone backslash, one more makes the escape `\\`, then `"` closes.
        closing = (b'\\"' if escaped else b'"') if in_string else b""
        closing += bytes(0x7D if opener == 0x7B else 0x5D for opener in reversed(stack[1:]))
        cut = in_string or len(stack) > 1
        comma = items and (cut or buf.find(b",", item_end, end) < 0)
        return closing + (b"," if comma else b"") + element + b"]"


Splitter = SseSplitter | JsonArraySplitter


def make_splitter(framing: Framing, max_event_bytes: int = MAX_EVENT_BYTES) -> Splitter:
    if framing == "sse":
        return SseSplitter(max_event_bytes)
    return JsonArraySplitter(max_event_bytes)


def render_sse(event: StreamEvent, newline: str = "\n") -> bytes:
    lines = [f"event: {event.event}"] if event.event else []
    lines += [f"data: {line}" for line in event.data.split("\n")]
    return (newline.join(lines) + newline + newline).encode()
