"""Chat Completions streams: provider chunks to canonical deltas, and back for callers."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

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
from addon.protocols.openai_chat.pieces import (
    FINISH_TO_CHAT,
    PROTOCOL,
    chat_usage_body,
    error_fields,
)
from addon.protocols.openai_chat.protocol import OpenAIChat
from addon.protocols.openai_chat.reply import chat_finish, chat_usage, first_choice

_REASONING_KEYS = ("reasoning_content", "reasoning")


@dataclass
class _Call:
    index: int
    id: str | None = None
    started: bool = False
    held: list[str] = field(default_factory=list)  # arguments sent before the name


class ChatStreamDecoder(StreamDecoder):
    def __init__(self) -> None:
        self._started = False
        self._calls: dict[Any, _Call] = {}
        self._count = 0

    def feed(self, event: StreamEvent) -> list[Delta]:
        chunk = load_event(event)
        if event.event == "error" or (isinstance(chunk, dict) and chunk.get("error")):
            status, kind, message = error_fields(chunk)
            return [StreamFailure(status, kind, message or event.data.strip()[:300])]
        if not isinstance(chunk, dict):
            return []  # [DONE], keep-alives
        out: list[Delta] = []
        if not self._started:
            self._started = True
            out.append(MessageStart(id=as_str(chunk.get("id")), model=as_str(chunk.get("model"))))
        choice = first_choice(chunk.get("choices"))
        delta = choice.get("delta")
        if isinstance(delta, dict):
            out += self._delta(delta)
        finish = chat_finish(as_str(choice.get("finish_reason")))
        if finish is not None:
            out.append(FinishDelta(finish, choice["finish_reason"]))
        usage = chat_usage(chunk.get("usage")) or chat_usage(dig(chunk, "x_groq", "usage"))
        if usage is not None:
            out.append(UsageUpdate(usage))
        return out

    def _delta(self, delta: dict[str, Any]) -> list[Delta]:
        out: list[Delta] = []
        reasoning = next(
            (delta[k] for k in _REASONING_KEYS if isinstance(delta.get(k), str) and delta[k]),
            None,
        )
        if reasoning is not None:
            out.append(ThinkingDelta(text=reasoning))
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str) and delta[key]:
                out.append(TextDelta(delta[key]))
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                out += self._tool_call(call, position)
        return out

    def _tool_call(self, call: dict[str, Any], position: int) -> list[Delta]:
        index = call.get("index")
        key: Any = index if isinstance(index, int) else position
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        call_id, name = as_str(call.get("id")), as_str(fn.get("name"))
        state = self._calls.get(key)
        if state is not None and state.started and call_id and call_id != state.id:
            # Some servers number every parallel call 0; a new id is a new call.
            key = (key, call_id)
            state = self._calls.get(key)
        if state is None:
            state = self._calls[key] = _Call(index=self._count)
            self._count += 1
        out: list[Delta] = []
        if call_id and state.id is None:
            state.id = call_id
        if not state.started and name:
            state.started = True
            out.append(ToolCallStart(state.index, state.id or f"call_{state.index}", name))
            out += [ToolCallDelta(state.index, held) for held in state.held]
            state.held.clear()
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            if state.started:
                out.append(ToolCallDelta(state.index, arguments))
            else:
                state.held.append(arguments)
        return out

    def close(self) -> list[Delta]:
        # A call whose name never came is still a call the model made.
        out: list[Delta] = []
        for state in self._calls.values():
            if not state.started and (state.id or state.held):
                state.started = True
                out.append(ToolCallStart(state.index, state.id or f"call_{state.index}", ""))
                out += [ToolCallDelta(state.index, held) for held in state.held]
        return out


class ChatStreamEncoder(StreamEncoder):
    """chat.completion.chunk events for a Chat caller.

    The usage chunk is always written; `OpenAIChat.hides_event` removes it for a
    caller that did not ask for `include_usage`.
    """

    def __init__(self, caller: CallerView) -> None:
        self._caller = caller
        self._id: str | None = None
        self._model: str | None = None
        self._created = int(time.time())
        self._opened = False
        self._finish: FinishDelta | None = None
        self._usage: Usage | None = None
        self._tool_calls = False
        self._failed = False
        self._closed = False
        self._dropped_signature = False

    def feed(self, delta: Delta) -> list[StreamEvent]:
        if self._failed or self._closed:
            return []
        if isinstance(delta, MessageStart):
            if not self._opened:
                self._id = delta.id
                self._model = delta.model
            return self._open()
        if isinstance(delta, FinishDelta):
            self._finish = delta
            return []
        if isinstance(delta, UsageUpdate):
            self._usage = delta.usage
            return []
        if isinstance(delta, StreamFailure):
            self._failed = True
            return [OpenAIChat().error_event(delta.status, delta.kind, delta.message)]
        out = self._open()
        if isinstance(delta, TextDelta):
            if delta.text:
                out.append(self._chunk({"content": delta.text}))
        elif isinstance(delta, ThinkingDelta):
            if (delta.signature or delta.redacted) and not self._dropped_signature:
                self._dropped_signature = True
                log_dropped("a reasoning signature", PROTOCOL)
            if delta.text:
                out.append(self._chunk({"reasoning_content": delta.text}))
        elif isinstance(delta, ToolCallStart):
            self._tool_calls = True
            start = {
                "index": delta.index,
                "id": delta.id,
                "type": "function",
                "function": {"name": delta.name, "arguments": ""},
            }
            out.append(self._chunk({"tool_calls": [start]}))
        elif isinstance(delta, ToolCallDelta) and delta.arguments:
            fragment = {"index": delta.index, "function": {"arguments": delta.arguments}}
            out.append(self._chunk({"tool_calls": [fragment]}))
        return out

    def close(self) -> list[StreamEvent]:
        if self._failed or self._closed:
            return []
        self._closed = True
        out = self._open()
        if self._finish is not None:
            reason = FINISH_TO_CHAT[self._finish.finish]
        else:
            reason = "tool_calls" if self._tool_calls else "stop"
        out.append(self._chunk({}, reason))
        usage_chunk = self._envelope()
        usage_chunk["choices"] = []
        usage_chunk["usage"] = chat_usage_body(self._usage or Usage())
        out.append(_event(usage_chunk))
        out.append(StreamEvent(data="[DONE]"))
        return out

    def _open(self) -> list[StreamEvent]:
        if self._opened:
            return []
        self._opened = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _envelope(self) -> dict[str, Any]:
        if self._id is None:
            self._id = f"chatcmpl-{uuid.uuid4().hex}"
        elif not self._id.startswith("chatcmpl-"):
            self._id = f"chatcmpl-{self._id}"
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model or self._caller.request.model,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> StreamEvent:
        chunk = self._envelope()
        chunk["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        return _event(chunk)


def _event(chunk: dict[str, Any]) -> StreamEvent:
    return StreamEvent(data=json.dumps(chunk, ensure_ascii=False, separators=(",", ":")))
