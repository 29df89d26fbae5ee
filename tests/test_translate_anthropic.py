"""The Anthropic Messages codec: recorded replies decoded, requests round-tripped through
the protocol's own parser, and replies and streams assembled by the official SDK."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from addon.protocols import PROTOCOLS, StreamState
from addon.protocols.anthropic_messages.codec import DEFAULT_MAX_TOKENS, AnthropicCodec
from addon.protocols.base import StreamEvent
from addon.protocols.canonical import (
    CanonicalRequest,
    CanonicalResponse,
    ImagePart,
    Message,
    Reasoning,
    ResponseFormat,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from addon.protocols.codec import CallerView, seal, unseal
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
from addon.streaming import SseSplitter, render_sse

FIXTURES = Path(__file__).parent / "fixtures" / "recorded"
CODEC = AnthropicCodec()
PROTO = PROTOCOLS["anthropic_messages"]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"anthropic_messages__{name}.json").read_text())


def sse_events(text: str) -> list[StreamEvent]:
    splitter = SseSplitter()
    pairs = splitter.feed(text.encode()) + splitter.finish()
    return [event for event, _raw in pairs if event is not None]


def decode_stream(name: str) -> tuple[list[Delta], StreamState]:
    decoder = CODEC.stream_decoder()
    state = StreamState()
    deltas: list[Delta] = []
    for event in sse_events(fixture(name)["response"]["body_text"]):
        PROTO.feed_event(state, event)
        deltas.extend(decoder.feed(event))
    return deltas + decoder.close(), state


def last_usage(deltas: list[Delta]) -> Usage | None:
    updates = [d.usage for d in deltas if isinstance(d, UsageUpdate)]
    return updates[-1] if updates else None


# --- provider side: recorded replies ----------------------------------------------------


def test_buffered_thinking_reply() -> None:
    body = json.loads(fixture("thinking_nonstream")["response"]["body_text"])
    reply = CODEC.decode_reply(body)
    thinking = [p for p in reply.content if isinstance(p, ThinkingPart)]
    assert len(thinking) == 1 and thinking[0].text and thinking[0].signature
    assert thinking[0].signature == body["content"][0]["signature"]
    assert thinking[0].issuer == "anthropic_messages"
    assert reply.text().endswith(body["content"][-1]["text"])
    assert reply.id == body["id"] and reply.finish == "stop"
    assert reply.usage == PROTO.read_usage(body)


def test_buffered_parallel_tool_calls() -> None:
    body = json.loads(fixture("parallel_tool_use_nonstream")["response"]["body_text"])
    reply = CODEC.decode_reply(body)
    calls = [p for p in reply.content if isinstance(p, ToolUsePart)]
    expected = [b for b in body["content"] if b["type"] == "tool_use"]
    assert len(calls) == len(expected) == 4
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        (b["id"], b["name"], b["input"]) for b in expected
    ]
    assert reply.finish == "tool_calls" and reply.stop_reason == "tool_use"


@pytest.mark.parametrize("name", ["cache_read_nonstream", "cache_write_nonstream"])
def test_buffered_cache_usage(name: str) -> None:
    body = json.loads(fixture(name)["response"]["body_text"])
    usage = CODEC.decode_reply(body).usage
    assert usage is not None and usage == PROTO.read_usage(body)
    raw = body["usage"]
    assert usage.cache_read_tokens == raw["cache_read_input_tokens"]
    assert usage.cache_write_tokens == raw["cache_creation_input_tokens"]


def test_protocol_parse_response_has_id_finish_and_signature() -> None:
    body = json.loads(fixture("thinking_nonstream")["response"]["body_text"])
    parsed = PROTO.parse_response(body)
    assert parsed.id == body["id"] and parsed.finish == "stop"
    part = parsed.content[0]
    assert isinstance(part, ThinkingPart) and part.signature == body["content"][0]["signature"]


def test_stream_thinking_then_text() -> None:
    deltas, state = decode_stream("thinking_stream")
    start = deltas[0]
    assert isinstance(start, MessageStart) and start.id == "msg_01ALwQ87pTS7hH1PjSdC9wJD"
    thinking = "".join(d.text for d in deltas if isinstance(d, ThinkingDelta))
    signatures = [d.signature for d in deltas if isinstance(d, ThinkingDelta) and d.signature]
    assert thinking == "".join(state.thinking)
    assert len(signatures) == 1 and signatures[0].startswith("EvMCCkYICxgCKk")
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "".join(state.text)
    assert [d.finish for d in deltas if isinstance(d, FinishDelta)] == ["stop"]
    assert last_usage(deltas) == state.usage


def test_stream_redacted_thinking() -> None:
    deltas, state = decode_stream("redacted_thinking_stream")
    redacted = [d for d in deltas if isinstance(d, ThinkingDelta) and d.redacted]
    assert len(redacted) == 2
    assert all(d.signature and d.signature.startswith("E") for d in redacted)
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "".join(state.text)
    assert last_usage(deltas) == state.usage


def test_stream_client_tool_use_numbered_from_zero() -> None:
    deltas, state = decode_stream("tool_use_stream")
    starts = [d for d in deltas if isinstance(d, ToolCallStart)]
    # The server tool (tool search) ran at Anthropic: not a call for the caller.
    assert [(s.index, s.id, s.name) for s in starts] == [
        (0, "toolu_01EFn5wTNBYA8Reni8rbmnHT", "get_exchange_rate")
    ]
    args = "".join(d.arguments for d in deltas if isinstance(d, ToolCallDelta) and d.index == 0)
    assert json.loads(args) == {"from_currency": "USD", "to_currency": "EUR"}
    assert [d.finish for d in deltas if isinstance(d, FinishDelta)] == ["tool_calls"]
    assert last_usage(deltas) == state.usage


def test_stream_cache_and_compaction_usage() -> None:
    deltas, state = decode_stream("cache_read_compaction_stream")
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "Hello! 👋"
    usage = last_usage(deltas)
    assert usage == state.usage and usage is not None
    assert usage.cache_read_tokens == 55096  # the compaction pass, from usage.iterations


def test_stream_error_event() -> None:
    decoder = CODEC.stream_decoder()
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    event = StreamEvent(data=json.dumps(body), event="error")
    assert decoder.feed(event) == [StreamFailure(529, "overloaded_error", "Overloaded")]
    body["error"]["type"] = "rate_limit_error"
    assert decoder.feed(StreamEvent(data=json.dumps(body), event="error"))[0].status == 429  # type: ignore[union-attr]
    body["error"]["type"] = "something_new"
    assert decoder.feed(StreamEvent(data=json.dumps(body), event="error"))[0].status == 500  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("error_400_invalid_request", "invalid_request_error"),
        ("error_404_model_not_found", "not_found_error"),
    ],
)
def test_decode_error(name: str, kind: str) -> None:
    fx = fixture(name)
    body = json.loads(fx["response"]["body_text"])
    assert CODEC.decode_error(fx["response"]["status"], body) == (kind, body["error"]["message"])
    assert CODEC.decode_error(503, None) == ("api_error", "")


# --- provider side: requests ------------------------------------------------------------


def encode(request: CanonicalRequest, stream: bool = False) -> dict[str, Any]:
    encoded = CODEC.encode_request(request, "claude-x", stream, "anthropic")
    assert encoded.path == "/v1/messages"
    assert encoded.headers == {
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    return encoded.body


def request(**fields: Any) -> CanonicalRequest:
    return CanonicalRequest(protocol="openai_chat", model="m", **fields)


def user(*parts: Any) -> Message:
    return Message(role="user", content=list(parts))


@pytest.mark.parametrize(
    "name",
    [
        "text_nonstream",
        "thinking_stream",
        "tool_result_followup_nonstream",
        "cache_write_nonstream",
        "parallel_tool_use_nonstream",
    ],
)
def test_fixture_requests_round_trip(name: str) -> None:
    original = PROTO.parse_request(fixture(name)["request"]["body"], "/v1/messages")
    body = encode(original, original.stream)
    again = PROTO.parse_request(body, "/v1/messages")
    assert again.messages == original.messages
    assert again.system == original.system
    assert [(t.name, t.parameters) for t in again.tools] == [
        (t.name, t.parameters or {"type": "object", "properties": {}}) for t in original.tools
    ]
    assert again.tool_choice == original.tool_choice
    assert again.max_tokens == original.max_tokens and again.stream == original.stream
    assert again.reasoning == original.reasoning


def test_conversation_is_reshaped_to_alternate() -> None:
    req = request(
        messages=[
            Message(role="system", content=[TextPart(text="be brief")]),
            Message(role="assistant", content=[TextPart(text="Hi!")]),
            Message(
                role="assistant", content=[ToolUsePart(id="call.1/x", name="f", arguments={"a": 1})]
            ),
            Message(
                role="tool",
                content=[ToolResultPart(tool_use_id="call.1/x", content=[TextPart(text="ok")])],
            ),
            user(TextPart(text="thanks"), TextPart(text="")),
        ],
        system="sys",
    )
    body = encode(req)
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS and body["system"] == "sys\n\nbe brief"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "…"}]
    call = body["messages"][1]["content"][1]
    result, text = body["messages"][2]["content"]
    assert call == {"type": "tool_use", "id": "call_1_x", "name": "f", "input": {"a": 1}}
    assert result["type"] == "tool_result" and result["tool_use_id"] == "call_1_x"
    assert text == {"type": "text", "text": "thanks"}
    parsed = PROTO.parse_request(body, "/v1/messages")
    assert parsed.messages[1].content[1] == ToolUsePart(id="call_1_x", name="f", arguments={"a": 1})


def test_tool_results_open_their_user_turn_with_errors_and_images() -> None:
    image = ImagePart(media_type="image/png", has_inline_data=True, data="iVBORw0KGgo=")
    req = request(
        messages=[
            user(TextPart(text="q")),
            Message(role="assistant", content=[ToolUsePart(id="a", name="f", arguments="[1]")]),
            user(TextPart(text="also")),
            Message(
                role="tool",
                content=[
                    ToolResultPart(
                        tool_use_id="a", is_error=True, content=[TextPart(text="boom"), image]
                    )
                ],
            ),
        ]
    )
    body = encode(req)
    assert body["messages"][1]["content"][0]["input"] == {"value": [1]}
    first, second = body["messages"][2]["content"]
    assert first["type"] == "tool_result" and first["is_error"] is True
    assert second == {"type": "text", "text": "also"}
    parsed = PROTO.parse_request(body, "/v1/messages").messages[2].content[0]
    assert isinstance(parsed, ToolResultPart) and parsed.is_error
    assert parsed.content[1] == image and parsed.content[1].data == image.data  # type: ignore[union-attr]


def test_generation_settings_round_trip() -> None:
    req = request(
        messages=[user(TextPart(text="q"))],
        tools=[
            Tool(name="f", description="d", strict=True),
            Tool(name="g", parameters={"type": "object"}),
        ],
        tool_choice=ToolChoice(mode="tool", name="g"),
        parallel_tool_calls=False,
        temperature=1.7,
        stop=["END"],
        max_tokens=300,
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
    )
    body = encode(req, stream=True)
    assert body["tools"][0] == {
        "name": "f",
        "description": "d",
        "input_schema": {"type": "object", "properties": {}},
        "strict": True,
    }
    assert body["tool_choice"] == {"type": "tool", "name": "g", "disable_parallel_tool_use": True}
    assert body["temperature"] == 1.0 and body["stop_sequences"] == ["END"]
    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}}
    }
    parsed = PROTO.parse_request(body, "/v1/messages")
    assert parsed.tool_choice == ToolChoice(mode="tool", name="g")
    assert parsed.parallel_tool_calls is False and parsed.stream
    assert parsed.tools[0].strict is True
    assert parsed.response_format == req.response_format
    for mode, wire in [("auto", "auto"), ("required", "any"), ("none", "none")]:
        choice = encode(
            request(
                messages=[user(TextPart(text="q"))],
                tools=req.tools,
                tool_choice=ToolChoice(mode=mode),
            )
        )  # type: ignore[arg-type]
        assert choice["tool_choice"] == {"type": wire}


def test_reasoning_becomes_a_thinking_budget() -> None:
    body = encode(
        request(
            messages=[user(TextPart(text="q"))], reasoning=Reasoning(effort="high"), temperature=0.5
        )
    )
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert body["max_tokens"] == 24576 + DEFAULT_MAX_TOKENS and "temperature" not in body
    parsed = PROTO.parse_request(body, "/v1/messages")
    assert parsed.reasoning == Reasoning(effort="high", budget_tokens=24576)
    small = encode(
        request(
            messages=[user(TextPart(text="q"))],
            reasoning=Reasoning(budget_tokens=10),
            max_tokens=9000,
        )
    )
    assert small["thinking"]["budget_tokens"] == 1024 and small["max_tokens"] == 9000
    off = encode(request(messages=[user(TextPart(text="q"))], reasoning=Reasoning(enabled=False)))
    assert PROTO.parse_request(off, "").reasoning == Reasoning(enabled=False)


def test_json_mode_without_schema_and_foreign_thinking_are_dropped() -> None:
    req = request(
        messages=[
            user(TextPart(text="q")),
            Message(
                role="assistant",
                content=[
                    ThinkingPart(text="mine", signature="sig", issuer="anthropic_messages"),
                    ThinkingPart(text="theirs", signature="g", issuer="gemini"),
                    TextPart(text="a "),
                ],
            ),
        ],
        response_format=ResponseFormat(type="json_object"),
    )
    encoded = CODEC.encode_request(req, "claude-x", False, "anthropic")
    assert "output_config" not in encoded.body
    assert encoded.body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "mine", "signature": "sig"},
        {"type": "text", "text": "a"},  # a final assistant turn may not end in whitespace
    ]
    assert any("JSON mode" in d for d in encoded.dropped)
    assert any("gemini" in d for d in encoded.dropped)


# --- caller side: the official SDK ------------------------------------------------------

VIEW = CallerView(
    request=CanonicalRequest(protocol="anthropic_messages", model="claude-caller"),
    body={},
    path="/v1/messages",
    stream=False,
)
USAGE = Usage(
    input_tokens=120,
    output_tokens=40,
    cache_read_tokens=70,
    cache_write_tokens=20,
    reasoning_tokens=15,
)


def sdk_client(body: bytes, content_type: str) -> anthropic.Anthropic:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages"
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return anthropic.Anthropic(api_key="x", base_url="http://test", http_client=http)


def test_sdk_reads_buffered_reply() -> None:
    reply = CanonicalResponse(
        id="chatcmpl-123",
        model="gpt-x",
        content=[
            ThinkingPart(text="hmm", signature="gsig", issuer="gemini"),
            TextPart(text="héllo 😀"),
            ToolUsePart(
                id="call_1", name="f", arguments={"x": 1}, signature="tsig", issuer="gemini"
            ),
            ToolUsePart(id="call:2", name="g", arguments='{"y": [2]}'),
        ],
        finish="tool_calls",
        usage=USAGE,
    )
    body = CODEC.encode_reply(reply, VIEW)
    assert body["id"].startswith("msg_") and PROTO.read_usage(body) == USAGE
    message = sdk_client(json.dumps(body).encode(), "application/json").messages.create(
        model="claude-caller", max_tokens=10, messages=[{"role": "user", "content": "q"}]
    )
    assert message.stop_reason == "tool_use" and message.model == "gpt-x"
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text", "thinking", "tool_use", "tool_use"]
    assert message.content[0].thinking == "hmm"  # type: ignore[union-attr]
    assert unseal(message.content[0].signature, "anthropic_messages") == ("gemini", "gsig")  # type: ignore[union-attr]
    assert message.content[1].text == "héllo 😀"  # type: ignore[union-attr]
    assert message.content[4].id == "call_2" and message.content[4].input == {"y": [2]}  # type: ignore[union-attr]
    assert message.usage.input_tokens == 30 and message.usage.cache_read_input_tokens == 70
    # Sent back in the next turn, each signature returns to its issuer, the call's to the call.
    history = {
        "role": "assistant",
        "content": [b.model_dump(exclude_none=True) for b in message.content],
    }
    parsed = PROTO.parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "q"}, history]}, ""
    )
    thinking, _text, call, _call2 = parsed.messages[1].content
    assert isinstance(thinking, ThinkingPart) and (thinking.issuer, thinking.signature) == (
        "gemini",
        "gsig",
    )
    assert isinstance(call, ToolUsePart) and (call.issuer, call.signature) == ("gemini", "tsig")


def stream_body(
    deltas: list[Delta], upstream: str | None = None
) -> tuple[bytes, list[StreamEvent]]:
    view = dataclasses.replace(VIEW, upstream=upstream) if upstream else VIEW
    encoder = CODEC.stream_encoder(view)
    events = [e for d in deltas for e in encoder.feed(d)] + encoder.close()
    assert encoder.close() == []
    return b"".join(render_sse(e) for e in events), events


def chars(index: int, text: str) -> list[Delta]:
    return [ToolCallDelta(index, c) for c in text]


def test_sdk_assembles_stream_with_interleaved_parallel_calls() -> None:
    # Braces and escaped quotes inside strings must not end a call's block early.
    args0 = json.dumps({"city": 'Pa}ri"s\\', "n": [1, {"z": [2]}]})
    args1 = json.dumps({"q": "é😀"}, ensure_ascii=False)
    # Each call's arguments in single characters, the two calls' fragments alternating.
    interleaved: list[Delta] = []
    for a, b in itertools.zip_longest(chars(0, args0), chars(1, args1)):
        interleaved += [d for d in (a, b) if d is not None]
    deltas: list[Delta] = [
        MessageStart(id="resp_1", model="gemini-x"),
        UsageUpdate(Usage(input_tokens=120, cache_read_tokens=70, cache_write_tokens=20)),
        ThinkingDelta("let me "),
        ThinkingDelta("think"),
        ThinkingDelta(signature="gsig"),
        TextDelta("h"),
        TextDelta(""),
        TextDelta("é"),
        TextDelta("llo 😀"),
        ToolCallStart(0, "call_0", "weather"),
        ToolCallStart(1, "call_1", "search"),
        *interleaved,
        FinishDelta("tool_calls", "STOP"),
        UsageUpdate(USAGE),
    ]
    body, events = stream_body(deltas, "gemini")
    with sdk_client(body, "text/event-stream").messages.stream(
        model="claude-caller", max_tokens=10, messages=[{"role": "user", "content": "q"}]
    ) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, call0, call1 = message.content
    assert thinking.thinking == "let me think"  # type: ignore[union-attr]
    assert unseal(thinking.signature, "anthropic_messages") == ("gemini", "gsig")  # type: ignore[union-attr]
    assert text.text == "héllo 😀"  # type: ignore[union-attr]
    assert (call0.id, call0.name, call0.input) == ("call_0", "weather", json.loads(args0))  # type: ignore[union-attr]
    assert (call1.id, call1.name, call1.input) == ("call_1", "search", {"q": "é😀"})  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 30 and message.usage.output_tokens == 40
    assert message.usage.cache_creation_input_tokens == 20
    # The protocol's own stream reader gets the same usage back.
    state = StreamState()
    for event in events:
        PROTO.feed_event(state, event)
    assert state.usage == USAGE and state.stop_reason == "tool_use"
    assert [e.event for e in events][0] == "message_start" and events[-1].event == "message_stop"
    # Call 1's (shorter) block closed as soon as its JSON was complete, while call 0 streamed on.
    shape = [(json.loads(e.data)["type"], json.loads(e.data).get("index")) for e in events]
    last_fragment_of_0 = max(i for i, s in enumerate(shape) if s == ("content_block_delta", 2))
    assert shape.index(("content_block_stop", 3)) < last_fragment_of_0
    assert all(json.loads(e.data)["type"] == e.event for e in events)
    first = json.loads(events[0].data)["message"]["usage"]
    assert (first["input_tokens"], first["cache_read_input_tokens"]) == (30, 70)


def test_stream_indexes_are_consecutive_and_sequential_calls_close_in_order() -> None:
    deltas: list[Delta] = [
        ThinkingDelta("t"),
        TextDelta("a"),
        ToolCallStart(0, "c0", "f"),
        *chars(0, '{"a": 1}'),
        ToolCallStart(1, "c1", "f"),
        *chars(1, "{}"),
        ThinkingDelta(signature=None, redacted=True),
        TextDelta("b"),
    ]
    _body, events = stream_body(deltas, "openai_chat")
    shape = [(json.loads(e.data)["type"], json.loads(e.data).get("index")) for e in events]
    starts = [i for kind, i in shape if kind == "content_block_start"]
    stops = [i for kind, i in shape if kind == "content_block_stop"]
    assert starts == stops == list(range(6))  # one block at a time, as Anthropic sends them
    thinking_sig = next(json.loads(e.data)["delta"] for e in events if "signature_delta" in e.data)
    assert unseal(thinking_sig["signature"], "anthropic_messages") == ("openai_chat", "")
    assert json.loads(events[-2].data)["delta"]["stop_reason"] == "tool_use"


def test_stream_text_only_and_length() -> None:
    body, _events = stream_body(
        [
            TextDelta("hi"),
            FinishDelta("length"),
            UsageUpdate(Usage(input_tokens=5, output_tokens=2)),
        ]
    )
    with sdk_client(body, "text/event-stream").messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "q"}]
    ) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == "hi" and message.stop_reason == "max_tokens"  # type: ignore[union-attr]
    assert message.model == "claude-caller" and message.id.startswith("msg_")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 2)


def test_stream_failure_is_an_error_event_and_nothing_after() -> None:
    encoder = CODEC.stream_encoder(VIEW)
    encoder.feed(TextDelta("partial"))
    events = encoder.feed(StreamFailure(529, "overloaded_error", "busy"))
    assert [e.event for e in events] == ["error"]
    assert json.loads(events[0].data)["error"] == {"type": "overloaded_error", "message": "busy"}
    assert encoder.feed(TextDelta("more")) == [] and encoder.close() == []
    encoder = CODEC.stream_encoder(VIEW)
    events = encoder.feed(TextDelta("partial")) + encoder.feed(
        StreamFailure(529, "overloaded_error", "busy")
    )
    client = sdk_client(b"".join(render_sse(e) for e in events), "text/event-stream")
    with (
        pytest.raises(anthropic.APIStatusError, match="busy"),
        client.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "q"}]
        ) as stream,
    ):
        stream.get_final_message()


def test_foreign_signature_defaults_to_sealed_gemini() -> None:
    _body, events = stream_body([ThinkingDelta("x", signature="s")])
    sig = next(
        json.loads(e.data)["delta"]["signature"] for e in events if "signature_delta" in e.data
    )
    assert sig == seal("gemini", "s")


def test_forced_tool_wins_over_thinking() -> None:
    req = request(
        messages=[user(TextPart(text="q"))],
        tools=[Tool(name="f")],
        tool_choice=ToolChoice(mode="required"),
        reasoning=Reasoning(effort="low"),
    )
    encoded = CODEC.encode_request(req, "claude-x", False, "anthropic")
    assert encoded.body["tool_choice"] == {"type": "any"} and "thinking" not in encoded.body
    assert any("forced" in d for d in encoded.dropped)


def test_tool_loop_without_thinking_keeps_thinking_off() -> None:
    loop = [
        user(TextPart(text="q")),
        Message(role="assistant", content=[ToolUsePart(id="c", name="f", arguments={})]),
        Message(
            role="tool", content=[ToolResultPart(tool_use_id="c", content=[TextPart(text="r")])]
        ),
    ]
    encoded = CODEC.encode_request(
        request(messages=loop, reasoning=Reasoning(effort="low")), "c", False, "anthropic"
    )
    assert "thinking" not in encoded.body and any("tool loop" in d for d in encoded.dropped)
    signed = ThinkingPart(text="t", signature="s", issuer="anthropic_messages")
    loop[1].content.insert(0, signed)
    encoded = CODEC.encode_request(
        request(messages=loop, reasoning=Reasoning(effort="low")), "c", False, "anthropic"
    )
    assert encoded.body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
