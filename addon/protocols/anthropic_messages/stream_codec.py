"""Anthropic Messages streams: decoding a provider's events, encoding a caller's.

The encoder writes Anthropic's block layout: consecutive indexes, one block per
run of text or thinking, one per tool call, each thinking block's signature as a
`signature_delta` just before its `content_block_stop`.

Tool calls: the Anthropic SDKs file every `content_block_delta` under its
`index` (the Python SDK appends `input_json_delta` text per index and parses it
as partial JSON), so a tool block may stay open while another opens. A tool's
block therefore opens at its `ToolCallStart`, each fragment goes straight to that
tool's own block however calls interleave, and the block closes as soon as its
arguments form a complete JSON value (nothing valid can follow) or else when the
stream closes. Upstreams that send one call after the other thus get exactly
Anthropic's own shape, with nothing buffered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from addon.protocols.anthropic_messages.content import NAME
from addon.protocols.anthropic_messages.pieces import (
    STOP_REASON,
    message_id,
    thinking_signature,
    tool_id,
    usage_fields,
)
from addon.protocols.anthropic_messages.protocol import AnthropicMessages
from addon.protocols.anthropic_messages.reply import _ERROR_TYPES, anthropic_usage, finish_of
from addon.protocols.base import StreamEvent, as_str, dig, load_event
from addon.protocols.canonical import Usage
from addon.protocols.codec import CallerView, StreamDecoder, StreamEncoder, log_dropped
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

_STATUS = {kind: status for status, kind in _ERROR_TYPES.items()} | {"api_error": 500}
# Only Gemini, among the provider protocols other than Anthropic's, signs its
# reasoning: a signature from an upstream the view does not name is Gemini's.
_SIGNING_UPSTREAM = "gemini"


def _event(data: dict[str, Any]) -> StreamEvent:
    return StreamEvent(
        data=json.dumps(data, ensure_ascii=False, separators=(",", ":")), event=data["type"]
    )


# --- provider side --------------------------------------------------------------------


@dataclass
class _Block:
    kind: str
    tool: int | None = None
    seed: str | None = None  # tool input that came whole with the start
    signature: str | None = None  # a thinking signature that came with the start
    deltas: bool = False


class AnthropicStreamDecoder(StreamDecoder):
    def __init__(self) -> None:
        self.blocks: dict[Any, _Block] = {}
        self.tools = 0
        self.raw_usage: dict[str, Any] = {}

    def feed(self, event: StreamEvent) -> list[Delta]:
        data = load_event(event)
        kind = data.get("type") if isinstance(data, dict) else None
        if event.event == "error" or kind == "error":
            error = dig(data, "error") if isinstance(data, dict) else None
            error_type = as_str(dig(error, "type")) or "api_error"
            message = as_str(dig(error, "message")) or event.data.strip()
            return [StreamFailure(_STATUS.get(error_type, 500), error_type, message)]
        if not isinstance(data, dict):
            return []
        if kind == "message_start":
            message = data.get("message") if isinstance(data.get("message"), dict) else {}
            out: list[Delta] = [
                MessageStart(as_str(message.get("id")), as_str(message.get("model")))
            ]
            return out + self._usage(message.get("usage"))
        if kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            return self._start(data.get("index"), data["content_block"])
        if kind == "content_block_delta" and isinstance(data.get("delta"), dict):
            return self._delta(data.get("index"), data["delta"])
        if kind == "content_block_stop":
            return self._stop(data.get("index"))
        if kind == "message_delta":
            stop_reason = as_str(dig(data, "delta", "stop_reason"))
            finish = finish_of(stop_reason)
            out = [FinishDelta(finish, stop_reason)] if finish else []
            return out + self._usage(data.get("usage"))
        return []

    def _usage(self, raw: Any) -> list[Delta]:
        if not isinstance(raw, dict):
            return []
        # message_delta's counts are cumulative and may leave out a field message_start had.
        self.raw_usage.update(raw)
        usage = anthropic_usage(self.raw_usage)
        return [UsageUpdate(usage)] if usage else []

    def _start(self, index: Any, block: dict[str, Any]) -> list[Delta]:
        kind = as_str(block.get("type")) or ""
        key = index if isinstance(index, int) else repr(index)
        if kind == "text":
            self.blocks[key] = _Block("text")
            text = as_str(block.get("text"))
            return [TextDelta(text)] if text else []
        if kind == "thinking":
            self.blocks[key] = _Block("thinking", signature=as_str(block.get("signature")))
            text = as_str(block.get("thinking"))
            return [ThinkingDelta(text)] if text else []
        if kind == "redacted_thinking":
            self.blocks[key] = _Block("redacted")
            return [ThinkingDelta(signature=as_str(block.get("data")), redacted=True)]
        if kind == "tool_use":
            tool = self.tools
            self.tools += 1
            seed = block.get("input")
            self.blocks[key] = _Block(
                "tool", tool=tool, seed=json.dumps(seed, ensure_ascii=False) if seed else None
            )
            call_id = as_str(block.get("id")) or f"toolu_{tool}"
            return [ToolCallStart(tool, call_id, as_str(block.get("name")) or "")]
        # Server tools ran at Anthropic and compaction restates the prompt: neither
        # is something the caller can act on.
        self.blocks[key] = _Block("skip")
        log_dropped(f"a streamed {kind} block", "the caller")
        return []

    def _delta(self, index: Any, delta: dict[str, Any]) -> list[Delta]:
        block = self.blocks.get(index if isinstance(index, int) else repr(index))
        if block is None:
            return []
        block.deltas = True
        kind = delta.get("type")
        if kind == "text_delta" and block.kind == "text":
            text = as_str(delta.get("text"))
            return [TextDelta(text)] if text else []
        if kind == "thinking_delta" and block.kind == "thinking":
            text = as_str(delta.get("thinking"))
            return [ThinkingDelta(text)] if text else []
        if kind == "signature_delta" and block.kind == "thinking":
            block.signature = None  # the delta supersedes whatever the start had
            return [ThinkingDelta(signature=as_str(delta.get("signature")))]
        if kind == "input_json_delta" and block.tool is not None:
            fragment = as_str(delta.get("partial_json"))
            return [ToolCallDelta(block.tool, fragment)] if fragment else []
        return []

    def _stop(self, index: Any) -> list[Delta]:
        block = self.blocks.get(index if isinstance(index, int) else repr(index))
        if block is None:
            return []
        if block.kind == "tool" and block.seed and not block.deltas and block.tool is not None:
            return [ToolCallDelta(block.tool, block.seed)]
        if block.kind == "thinking" and block.signature:
            return [ThinkingDelta(signature=block.signature)]
        return []


# --- caller side ----------------------------------------------------------------------


class AnthropicStreamEncoder(StreamEncoder):
    def __init__(self, caller: CallerView) -> None:
        self.caller = caller
        self.upstream = caller.upstream or None
        self.id: str | None = None
        self.model: str | None = None
        self.usage = Usage()
        self.finish: FinishDelta | None = None
        self.started = False
        self.failed = False
        self.closed = False
        self.next_index = 0
        self.open_index: int | None = None  # the open text or thinking block
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # open tool call -> its block index
        self.tool_json: dict[int, _JsonEnd] = {}
        self.any_tool = False

    # --- blocks -------------------------------------------------------------------
    def _start(self) -> list[StreamEvent]:
        if self.started:
            return []
        self.started = True
        message = {
            "id": message_id(self.id),
            "type": "message",
            "role": "assistant",
            "model": self.model or self.caller.request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_fields(self.usage),
        }
        return [_event({"type": "message_start", "message": message})]

    def _open(self, block: dict[str, Any]) -> tuple[int, StreamEvent]:
        index = self.next_index
        self.next_index += 1
        return index, _event(
            {"type": "content_block_start", "index": index, "content_block": block}
        )

    def _stop_block(self, index: int) -> StreamEvent:
        return _event({"type": "content_block_stop", "index": index})

    def _delta(self, index: int, delta: dict[str, Any]) -> StreamEvent:
        return _event({"type": "content_block_delta", "index": index, "delta": delta})

    def _signature(self, signature: str | None) -> str:
        issuer = self.upstream or (_SIGNING_UPSTREAM if signature else None)
        return thinking_signature(issuer, signature)

    def _close_open(self) -> list[StreamEvent]:
        index, kind = self.open_index, self.open_kind
        if index is None:
            return []
        self.open_index = self.open_kind = None
        out: list[StreamEvent] = []
        if kind == "thinking":
            # No signature came: the SDK's type still wants one, naming the upstream.
            signature = self._signature(None)
            if signature:
                out.append(self._delta(index, {"type": "signature_delta", "signature": signature}))
        out.append(self._stop_block(index))
        return out

    def _ensure_open(self, kind: str) -> list[StreamEvent]:
        if self.open_kind == kind:
            return []
        out = self._close_open()
        block = (
            {"type": "text", "text": ""}
            if kind == "text"
            else {"type": "thinking", "thinking": "", "signature": ""}
        )
        self.open_index, event = self._open(block)
        self.open_kind = kind
        return [*out, event]

    # --- deltas -------------------------------------------------------------------
    def feed(self, delta: Delta) -> list[StreamEvent]:
        if self.failed or self.closed:
            return []
        if isinstance(delta, MessageStart):
            # message_start waits for the first content, to carry the usage known by then.
            self.id, self.model = delta.id or self.id, delta.model or self.model
            return []
        if isinstance(delta, UsageUpdate):
            self.usage = delta.usage
            return []
        if isinstance(delta, FinishDelta):
            self.finish = delta
            return []
        if isinstance(delta, StreamFailure):
            self.failed = True
            return [AnthropicMessages().error_event(delta.status, delta.kind, delta.message)]
        if isinstance(delta, TextDelta):
            if not delta.text:
                return []
            out = self._start() + self._ensure_open("text")
            assert self.open_index is not None
            return [*out, self._delta(self.open_index, {"type": "text_delta", "text": delta.text})]
        if isinstance(delta, ThinkingDelta):
            return self._thinking(delta)
        if isinstance(delta, ToolCallStart):
            return self._tool_start(delta)
        return self._tool_delta(delta)

    def _thinking(self, delta: ThinkingDelta) -> list[StreamEvent]:
        if delta.redacted:
            out = self._start() + self._close_open()
            data = self._signature(delta.signature)
            index, start = self._open({"type": "redacted_thinking", "data": data})
            return [*out, start, self._stop_block(index)]
        if not delta.text and not delta.signature:
            return []
        out = self._start() + self._ensure_open("thinking")
        index = self.open_index
        assert index is not None
        if delta.text:
            out.append(self._delta(index, {"type": "thinking_delta", "thinking": delta.text}))
        if delta.signature:
            signature = self._signature(delta.signature)
            out.append(self._delta(index, {"type": "signature_delta", "signature": signature}))
            # A signature ends its thinking block.
            out.append(self._stop_block(index))
            self.open_index = self.open_kind = None
        return out

    def _tool_start(self, delta: ToolCallStart) -> list[StreamEvent]:
        out = self._start() + self._close_open()
        if delta.signature:
            # Gemini's signature on a call rides in an empty thinking block before it.
            out += self._thinking(ThinkingDelta(signature=delta.signature))
        block = {
            "type": "tool_use",
            "id": tool_id(delta.id, f"toolu_{delta.index}"),
            "name": delta.name,
            "input": {},
        }
        index, start = self._open(block)
        self.tool_blocks[delta.index] = index
        self.tool_json[delta.index] = _JsonEnd()
        self.any_tool = True
        return [*out, start]

    def _tool_delta(self, delta: ToolCallDelta) -> list[StreamEvent]:
        index = self.tool_blocks.get(delta.index)
        if index is None:
            if delta.arguments.strip():
                log_dropped("tool arguments for a call whose block is closed", NAME)
            return []
        if not delta.arguments:
            return []
        out = [self._delta(index, {"type": "input_json_delta", "partial_json": delta.arguments})]
        if self.tool_json[delta.index].feed(delta.arguments):
            out.append(self._stop_block(index))
            del self.tool_blocks[delta.index]
        return out

    def close(self) -> list[StreamEvent]:
        if self.failed or self.closed:
            return []
        self.closed = True
        out = self._start() + self._close_open()
        out += [self._stop_block(i) for i in sorted(self.tool_blocks.values())]
        self.tool_blocks.clear()
        finish = self.finish.finish if self.finish else ("tool_calls" if self.any_tool else "stop")
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASON[finish], "stop_sequence": None},
            "usage": usage_fields(self.usage),
        }
        return [*out, _event(message_delta), _event({"type": "message_stop"})]


class _JsonEnd:
    """Tells, fragment by fragment and in linear time, when a JSON object or array ends."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.done = False

    def feed(self, text: str) -> bool:
        for char in text:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif char == "\\":
                    self.escape = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.done = True
                    break
        return self.done
