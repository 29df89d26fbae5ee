"""Gemini streams in translation: each event is one whole GenerateContentResponse.

Gemini sends every function call whole, so the decoder emits one argument delta
per call, and the encoder holds a call's argument fragments until the call is
complete (the next one starts, other content follows, or the stream ends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from addon.protocols.base import StreamEvent, as_int, as_list, as_str, load_event
from addon.protocols.canonical import Finish, Usage
from addon.protocols.codec import StreamDecoder, StreamEncoder, log_dropped, seal
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
from addon.protocols.gemini.fields import _get
from addon.protocols.gemini.pieces import (
    PROTOCOL,
    args_object,
    call_part,
    finish_reason,
    thought_part,
    usage_metadata,
)
from addon.protocols.gemini.protocol import Gemini
from addon.protocols.gemini.reply import _candidate, gemini_finish, gemini_usage


class GeminiStreamDecoder(StreamDecoder):
    def __init__(self) -> None:
        self._started = False
        self._calls = 0
        self._raw_usage: dict[str, Any] = {}

    def feed(self, event: StreamEvent) -> list[Delta]:
        data = load_event(event)
        # A JSON-array stream may arrive as one event; each element is one chunk.
        chunks = data if isinstance(data, list) else [data]
        out: list[Delta] = []
        for chunk in chunks:
            if isinstance(chunk, dict):
                out += self._chunk(chunk)
        return out

    def _chunk(self, chunk: dict[str, Any]) -> list[Delta]:
        error = chunk.get("error")
        if isinstance(error, dict):
            return [
                StreamFailure(
                    status=as_int(error.get("code")) or 500,
                    kind=as_str(error.get("status")) or "",
                    message=as_str(error.get("message")) or "",
                )
            ]
        out: list[Delta] = []
        if not self._started:
            self._started = True
            out.append(
                MessageStart(
                    id=as_str(_get(chunk, "responseId")), model=as_str(_get(chunk, "modelVersion"))
                )
            )
        candidate = _candidate(chunk)
        for part in as_list(_get(_get(candidate, "content"), "parts")):
            if isinstance(part, dict):
                out += self._part(part)
        reason = as_str(_get(candidate, "finishReason"))
        blocked = as_str(_get(_get(chunk, "promptFeedback"), "blockReason"))
        finish = gemini_finish(reason, called=self._calls > 0)
        if finish is not None:
            out.append(FinishDelta(finish=finish, stop_reason=reason))
        elif blocked:
            out.append(FinishDelta(finish="content_filter", stop_reason=blocked))
        raw = _get(chunk, "usageMetadata")
        if isinstance(raw, dict):
            # Cumulative counts; a later chunk may leave out a field an earlier one had.
            self._raw_usage.update(raw)
            usage = gemini_usage(self._raw_usage)
            if usage is not None:
                out.append(UsageUpdate(usage=usage))
        return out

    def _part(self, part: dict[str, Any]) -> list[Delta]:
        signature = as_str(_get(part, "thoughtSignature")) or None
        call = _get(part, "functionCall")
        if isinstance(call, dict):
            index = self._calls
            self._calls += 1
            args = _get(call, "args")
            return [
                ToolCallStart(
                    index=index,
                    id=as_str(_get(call, "id")) or f"call_{index}",
                    name=as_str(_get(call, "name")) or "",
                    signature=signature,
                ),
                ToolCallDelta(
                    index=index,
                    arguments=json.dumps(args if args is not None else {}, ensure_ascii=False),
                ),
            ]
        text = _get(part, "text")
        if not isinstance(text, str):
            return []
        if _get(part, "thought") is True:
            return [ThinkingDelta(text=text, signature=signature)]
        out: list[Delta] = []
        if signature:
            # The signature of the thinking before this text: it ends that thinking.
            out.append(ThinkingDelta(signature=signature))
        if text:
            out.append(TextDelta(text=text))
        return out


@dataclass
class _Call:
    id: str
    name: str
    signature: str | None
    fragments: list[str] = field(default_factory=list)


class GeminiStreamEncoder(StreamEncoder):
    """`upstream` is the protocol that issued the signatures in the deltas (they carry
    no issuer of their own); a Gemini caller gets them sealed."""

    def __init__(self, protocol: Gemini, upstream: str | None = None) -> None:
        self._protocol = protocol
        self._upstream = upstream or "unknown"
        self._id: str | None = None
        self._model: str | None = None
        self._calls: dict[int, _Call] = {}
        self._flushed: set[int] = set()
        self._finish: Finish | None = None
        self._usage: Usage | None = None
        self._failed = False
        self._closed = False

    def _signature(self, signature: str | None) -> str | None:
        if not signature:
            return None
        return signature if self._upstream == PROTOCOL else seal(self._upstream, signature)

    def _event(self, parts: list[dict[str, Any]], *, last: bool = False) -> StreamEvent:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if last:
            reason = finish_reason(self._finish)
            if reason:
                candidate["finishReason"] = reason
            if self._usage is not None:
                chunk["usageMetadata"] = usage_metadata(self._usage)
        if self._model:
            chunk["modelVersion"] = self._model
        if self._id:
            chunk["responseId"] = self._id
        return StreamEvent(data=json.dumps(chunk, ensure_ascii=False, separators=(",", ":")))

    def _flush_calls(self) -> list[dict[str, Any]]:
        parts = []
        for index in sorted(self._calls):
            call = self._calls.pop(index)
            self._flushed.add(index)
            args = args_object("".join(call.fragments), "a streamed tool call")
            parts.append(call_part(call.id, call.name, args, self._signature(call.signature)))
        return parts

    def _with_calls_first(self, parts: list[dict[str, Any]]) -> list[StreamEvent]:
        calls = self._flush_calls()
        return [self._event(p) for p in ([calls] if calls else []) + [parts]]

    def feed(self, delta: Delta) -> list[StreamEvent]:
        if self._failed or self._closed:
            return []
        if isinstance(delta, MessageStart):
            self._id = delta.id or self._id
            self._model = delta.model or self._model
        elif isinstance(delta, TextDelta):
            if delta.text:
                return self._with_calls_first([{"text": delta.text}])
        elif isinstance(delta, ThinkingDelta):
            if delta.text or delta.signature:
                part = thought_part(delta.text, self._signature(delta.signature))
                return self._with_calls_first([part])
        elif isinstance(delta, ToolCallStart):
            calls = self._flush_calls()
            self._calls[delta.index] = _Call(delta.id, delta.name, delta.signature)
            return [self._event(calls)] if calls else []
        elif isinstance(delta, ToolCallDelta):
            call = self._calls.get(delta.index)
            if call is not None:
                call.fragments.append(delta.arguments)
            elif delta.index in self._flushed:
                log_dropped("arguments that came after their tool call was sent", PROTOCOL)
        elif isinstance(delta, UsageUpdate):
            self._usage = delta.usage
        elif isinstance(delta, FinishDelta):
            self._finish = delta.finish
        elif isinstance(delta, StreamFailure):
            self._failed = True
            self._calls.clear()
            return [self._protocol.error_event(delta.status, delta.kind, delta.message)]
        return []

    def close(self) -> list[StreamEvent]:
        if self._closed or self._failed:
            self._closed = True
            return []
        self._closed = True
        calls = self._flush_calls()
        # Gemini's own last chunk carries an empty text part next to finishReason.
        return [self._event(calls or [{"text": ""}], last=True)]
