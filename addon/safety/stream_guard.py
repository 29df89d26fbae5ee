"""Scanning a streamed reply event by event, redacting or blocking before the client sees it.

The reply's text deltas are one text stream to the scanner: `StreamRedactor`
holds back only as many trailing characters as the longest pattern needs (and an
open private-key block), so a secret split across events is still caught. Each
text event is forwarded carrying whatever text is safe to release by then; the
event that closes a block of text first receives what was still held.
"""

from __future__ import annotations

import bisect
import json

from addon.config import SafetyAction, SafetySettings
from addon.protocols.base import StreamEvent, WireProtocol
from addon.safety.scanner import Finding, Scanner
from addon.safety.screening import TOKEN, Located
from addon.safety.stream_redactor import StreamRedactor
from addon.streaming import render_sse


def render_event(event: StreamEvent, template: bytes, framing: str) -> bytes:
    """Raw bytes for `event`, framed like the event it replaces."""
    if framing == "json_array":
        start = template.find(b"{")
        return template[: max(start, 0)] + event.data.encode()
    return render_sse(event, "\r\n" if b"\r\n" in template else "\n")


class StreamGuard:
    def __init__(
        self,
        protocol: WireProtocol,
        scanner: Scanner,
        settings: SafetySettings,
        framing: str,
    ) -> None:
        self.protocol = protocol
        self.framing = framing
        self._scanner = scanner
        self._settings = settings
        self.items: list[Located] = []
        self.blocked: Located | None = None
        self._redactor = self._new_redactor()
        self._base = 0  # stream offset where the current redactor started
        # Text was pushed since the last release. (Redaction changes lengths, so
        # pushed-minus-released characters cannot tell whether anything is held.)
        self._pushed = False
        self._template: tuple[StreamEvent, bytes] | None = None
        self._event_starts: list[int] = []  # stream offset of each text event
        self._event_numbers: list[int] = []
        self._offset = 0
        self._events = 0
        self._hidden: dict[str, str] = {}
        self._seen = 0  # findings of the current redactor already collected

    def _action(self, finding: Finding) -> SafetyAction:
        return self._settings.action("response", finding.category, finding.detector)

    def _new_redactor(self) -> StreamRedactor:
        return StreamRedactor(self._scanner, self._action)

    # --- the tap calls these --------------------------------------------------------
    def on_event(self, event: StreamEvent, raw: bytes) -> list[bytes]:
        self._events += 1
        if self.blocked is not None:
            return []
        text = self.protocol.stream_text(event)
        if text is None:
            out = self._release_held()
            if self.blocked is None:
                out.append(self._scrub(event, raw))
            return out
        self._event_starts.append(self._offset)
        self._event_numbers.append(self._events)
        self._offset += len(text)
        released = self._redactor.push(text)
        self._pushed = True
        self._collect()
        self._template = (event, raw)
        # An empty delta is valid in every protocol, so a held event keeps its place.
        out = [raw] if released == text else [self._with_text(event, raw, released)]
        return out + self._block_tail()

    def finish(self) -> list[bytes]:
        return self._release_held() if self.blocked is None else []

    def redacted_values(self) -> dict[str, str]:
        """Every value found so far, for scrubbing what is stored."""
        return {i.finding.value: TOKEN.format(category=i.finding.category) for i in self.items}

    # --- internals ----------------------------------------------------------------
    def _with_text(self, event: StreamEvent, raw: bytes, text: str) -> bytes:
        return render_event(self.protocol.with_stream_text(event, text), raw, self.framing)

    def _release_held(self) -> list[bytes]:
        """A structural event ends a run of text: release what the scanner still holds."""
        if not self._pushed or self._template is None:
            return []
        rest = self._redactor.finish()
        self._collect()
        self._base = self._offset
        self._pushed = False
        self._redactor = self._new_redactor()
        self._seen = 0
        event, raw = self._template
        held = self.protocol.with_held_text(event, rest)
        out = [render_event(held, raw, self.framing)] if rest else []
        return out + self._block_tail()

    def _collect(self) -> None:
        found = self._redactor.findings
        for finding in found[self._seen :]:
            self._add(finding)
        self._seen = len(found)
        blocking = self._redactor.blocked
        if blocking is not None and self.blocked is None:
            match = [i for i in self.items if i.finding is blocking or i.finding == blocking]
            self.blocked = match[0] if match else self._add(blocking)

    def _add(self, finding: Finding) -> Located:
        start = self._base + finding.start
        position = max(bisect.bisect_right(self._event_starts, start) - 1, 0)
        event_number = self._event_numbers[position] if self._event_numbers else self._events
        item = Located(finding, f"stream event {event_number}", self._action(finding))
        self.items.append(item)
        if item.action != "log":
            self._hidden[finding.value] = TOKEN.format(category=finding.category)
        return item

    def _block_tail(self) -> list[bytes]:
        if self.blocked is None:
            return []
        f = self.blocked.finding
        message = f"llmgate blocked this reply: it contains {f.category} ({f.detector})"
        error = self.protocol.error_event(400, "safety_block", message)
        template = self._template[1] if self._template else b"\n"
        return [render_event(error, template, self.framing)]

    def _scrub(self, event: StreamEvent, raw: bytes) -> bytes:
        """Non-text events (a Responses `done`, the final `response.completed`) repeat the text."""
        if not self._hidden:
            return raw
        data = event.data
        for value, token in self._hidden.items():
            for spelling in {value, json.dumps(value)[1:-1]}:
                data = data.replace(spelling, token)
        if data == event.data:
            return raw
        return render_event(StreamEvent(data=data, event=event.event), raw, self.framing)
