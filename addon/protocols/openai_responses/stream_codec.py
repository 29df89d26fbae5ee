"""Canonical deltas as a Responses event stream, for Responses callers.

Every event's SSE `event:` name is its `type`, and `sequence_number` counts
the events from 0. Text and reasoning each live in one open output item at a
time (a new kind of content closes the other), while every function call keeps
its own item, open until the stream closes, so that fragments of parallel calls
may interleave. `close` ends all open items and writes `response.completed`
(or `.incomplete` / `.failed`) with the whole response, usage included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from addon.protocols.base import StreamEvent
from addon.protocols.canonical import Finish, Usage
from addon.protocols.codec import CallerView, StreamEncoder, seal
from addon.protocols.deltas import (
    Delta,
    FinishDelta,
    MessageStart,
    StreamFailure,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    UsageUpdate,
)
from addon.protocols.openai_responses.pieces import (
    call_item,
    ending,
    envelope,
    message_item,
    new_id,
    output_text,
    reasoning_item,
    response_id,
)

# The code a Responses client reads off a failed response; the provider's own word
# goes into `type`.
_FAILURE_CODES = {429: "rate_limit_exceeded"}


@dataclass
class _Item:
    kind: str  # message | reasoning | function_call
    id: str
    index: int
    pieces: list[str] = field(default_factory=list)  # text, summary or arguments
    sealed: str | None = None
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"
    summary_open: bool = False

    def text(self) -> str:
        return "".join(self.pieces)

    def json(self) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.id, self.text(), self.status)
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text(), self.sealed)
        arguments = self.text() if self.status == "in_progress" else self.text() or "{}"
        return call_item(self.id, self.call_id, self.name, arguments, self.status)


class ResponsesStreamEncoder(StreamEncoder):
    def __init__(self, caller: CallerView, upstream: str) -> None:
        self._caller = caller
        self._upstream = upstream
        self._seq = 0
        self._rid = ""
        self._model: str | None = None
        self._created = int(time.time())
        self._started = False
        self._ended = False
        self._items: list[_Item] = []
        self._message: _Item | None = None
        self._reasoning: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._usage: Usage | None = None
        self._finish: Finish | None = None
        self._stop_reason: str | None = None

    # --- events -------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> StreamEvent:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return StreamEvent(data=json.dumps(payload, ensure_ascii=False), event=kind)

    def _response(self, status: str, incomplete: Any = None, error: Any = None) -> dict[str, Any]:
        return envelope(
            self._caller,
            rid=self._rid,
            model=self._model,
            created_at=self._created,
            status=status,
            output=[item.json() for item in self._items] if status != "in_progress" else [],
            usage=self._usage if status != "in_progress" else None,
            incomplete=incomplete,
            error=error,
        )

    def _start(self, out: list[StreamEvent], first: MessageStart | None = None) -> None:
        if self._started:
            return
        self._started = True
        self._rid = response_id(first.id if first else None)
        self._model = first.model if first else None
        response = self._response("in_progress")
        out.append(self._event("response.created", response=response))
        out.append(self._event("response.in_progress", response=response))

    def _add(self, out: list[StreamEvent], item: _Item) -> _Item:
        self._items.append(item)
        added = item.json()
        if item.kind == "message":
            added["content"] = []  # its part comes with content_part.added
        out.append(self._event("response.output_item.added", output_index=item.index, item=added))
        return item

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    # --- items --------------------------------------------------------------------
    def _open_message(self, out: list[StreamEvent]) -> _Item:
        if self._message is None:
            self._close_reasoning(out)
            self._message = self._add(out, _Item("message", new_id("msg"), len(self._items)))
            part = output_text("")
            out.append(
                self._event(
                    "response.content_part.added",
                    **self._where(self._message),
                    content_index=0,
                    part=part,
                )
            )
        return self._message

    def _close_message(self, out: list[StreamEvent], status: str = "completed") -> None:
        item, self._message = self._message, None
        if item is None:
            return
        where = {**self._where(item), "content_index": 0}
        text = item.text()
        out.append(self._event("response.output_text.done", **where, text=text, logprobs=[]))
        out.append(self._event("response.content_part.done", **where, part=output_text(text)))
        self._done(out, item, status)

    def _open_reasoning(self, out: list[StreamEvent]) -> _Item:
        if self._reasoning is None:
            self._close_message(out)
            self._reasoning = self._add(out, _Item("reasoning", new_id("rs"), len(self._items)))
        return self._reasoning

    def _close_reasoning(self, out: list[StreamEvent], status: str = "completed") -> None:
        item, self._reasoning = self._reasoning, None
        if item is None:
            return
        if item.summary_open:
            where = {**self._where(item), "summary_index": 0}
            text = item.text()
            out.append(self._event("response.reasoning_summary_text.done", **where, text=text))
            part = {"type": "summary_text", "text": text}
            out.append(self._event("response.reasoning_summary_part.done", **where, part=part))
        self._done(out, item, status)

    def _done(self, out: list[StreamEvent], item: _Item, status: str) -> None:
        item.status = status
        out.append(
            self._event("response.output_item.done", output_index=item.index, item=item.json())
        )

    def _close_call(self, out: list[StreamEvent], item: _Item, status: str) -> None:
        arguments = item.text() or "{}"
        out.append(
            self._event(
                "response.function_call_arguments.done", **self._where(item), arguments=arguments
            )
        )
        self._done(out, item, status)

    # --- deltas -------------------------------------------------------------------
    def feed(self, delta: Delta) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._ended:
            return out
        self._start(out, delta if isinstance(delta, MessageStart) else None)
        if isinstance(delta, TextDelta) and delta.text:
            item = self._open_message(out)
            where = {**self._where(item), "content_index": 0}
            out.append(
                self._event("response.output_text.delta", **where, delta=delta.text, logprobs=[])
            )
            item.pieces.append(delta.text)
        elif isinstance(delta, ThinkingDelta):
            self._thinking(out, delta)
        elif isinstance(delta, ToolCallStart):
            self._call_start(out, delta)
        elif isinstance(delta, ToolCallDelta):
            item = self._calls.get(delta.index)
            if item is not None and item.status == "in_progress" and delta.arguments:
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        **self._where(item),
                        delta=delta.arguments,
                    )
                )
                item.pieces.append(delta.arguments)
        elif isinstance(delta, UsageUpdate):
            self._usage = delta.usage
        elif isinstance(delta, FinishDelta):
            self._finish, self._stop_reason = delta.finish, delta.stop_reason
        elif isinstance(delta, StreamFailure):
            self._fail(out, delta)
        return out

    def _thinking(self, out: list[StreamEvent], delta: ThinkingDelta) -> None:
        if delta.text:
            item = self._open_reasoning(out)
            where = {**self._where(item), "summary_index": 0}
            if not item.summary_open:
                item.summary_open = True
                part = {"type": "summary_text", "text": ""}
                out.append(self._event("response.reasoning_summary_part.added", **where, part=part))
            out.append(
                self._event("response.reasoning_summary_text.delta", **where, delta=delta.text)
            )
            item.pieces.append(delta.text)
        if delta.signature is None and not delta.redacted:
            return
        if delta.redacted and not delta.text and self._reasoning and self._reasoning.pieces:
            # Opaque reasoning is a block of its own, not the end of readable reasoning.
            self._close_reasoning(out)
        item = self._open_reasoning(out)
        # A signature ends its thinking block; the done item carries it.
        item.sealed = seal(self._upstream, delta.signature or "")
        self._close_reasoning(out)

    def _call_start(self, out: list[StreamEvent], delta: ToolCallStart) -> None:
        self._close_message(out)
        self._close_reasoning(out)
        if delta.signature:
            # A function_call item has no slot for it; parse_request puts it back.
            item = self._open_reasoning(out)
            item.sealed = seal(self._upstream, delta.signature)
            self._close_reasoning(out)
        item = _Item("function_call", new_id("fc"), len(self._items))
        item.call_id, item.name = delta.id or new_id("call"), delta.name
        self._calls[delta.index] = self._add(out, item)

    def _fail(self, out: list[StreamEvent], failure: StreamFailure) -> None:
        self._ended = True
        code = _FAILURE_CODES.get(failure.status, "server_error")
        error = {"code": code, "message": failure.message or failure.kind, "type": failure.kind}
        for item in self._items:
            if item.status == "in_progress":
                item.status = "incomplete"
        out.append(self._event("response.failed", response=self._response("failed", error=error)))

    def close(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._ended:
            return out
        self._start(out)
        self._ended = True
        status, incomplete, error = ending(self._finish, self._stop_reason)
        item_status = "incomplete" if status == "incomplete" else "completed"
        self._close_message(out, item_status)
        self._close_reasoning(out, item_status)
        for item in self._items:
            if item.kind == "function_call" and item.status == "in_progress":
                self._close_call(out, item, item_status)
        final = self._response(status, incomplete, error)
        out.append(self._event(f"response.{status}", response=final))
        return out
