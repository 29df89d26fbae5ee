"""The Chat Completions codec: recorded provider traffic decoded, requests and replies
round-tripped through the protocol's own reader, and what the codec writes for a
Chat caller assembled by the official OpenAI SDK."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from addon.protocols import StreamEvent, StreamState
from addon.protocols import codec as codec_module
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
from addon.protocols.codec import CallerView
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
from addon.protocols.openai_chat import OpenAIChat
from addon.protocols.openai_chat.codec import OpenAIChatCodec
from addon.streaming import SseSplitter
from addon.streaming.splitters import render_sse

FIXTURES = Path(__file__).parent / "fixtures" / "recorded"
CODEC = OpenAIChatCodec()
CHAT = OpenAIChat()


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"openai_chat__{name}.json").read_text(encoding="utf-8"))


def sse_events(text: str) -> list[StreamEvent]:
    splitter = SseSplitter()
    pairs = splitter.feed(text.encode()) + splitter.finish()
    return [event for event, _ in pairs if event is not None]


def decode_stream(events: list[StreamEvent]) -> list[Delta]:
    decoder = CODEC.stream_decoder()
    out: list[Delta] = []
    for event in events:
        out += decoder.feed(event)
    return out + decoder.close()


def assemble(deltas: list[Delta]) -> dict[str, Any]:
    """What a stream's deltas add up to, checking the tool-call numbering on the way."""
    calls: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {"text": "", "thinking": "", "calls": calls, "starts": 0}
    for delta in deltas:
        if isinstance(delta, MessageStart):
            out["starts"] += 1
            out["id"], out["model"] = delta.id, delta.model
        elif isinstance(delta, TextDelta):
            out["text"] += delta.text
        elif isinstance(delta, ThinkingDelta):
            out["thinking"] += delta.text
        elif isinstance(delta, ToolCallStart):
            assert delta.index == len(calls), "tool calls are numbered 0, 1, ... as they start"
            calls[delta.index] = {"id": delta.id, "name": delta.name, "arguments": ""}
        elif isinstance(delta, ToolCallDelta):
            calls[delta.index]["arguments"] += delta.arguments
        elif isinstance(delta, FinishDelta):
            out["finish"] = delta.finish
        elif isinstance(delta, UsageUpdate):
            out["usage"] = delta.usage
        elif isinstance(delta, StreamFailure):
            out["failure"] = delta
    return out


def reference_state(events: list[StreamEvent]) -> StreamState:
    state = StreamState()
    for event in events:
        CHAT.feed_event(state, event)
    return state


def caller(
    request: CanonicalRequest | None = None, body: dict[str, Any] | None = None
) -> CallerView:
    request = request or CanonicalRequest(protocol="openai_chat", model="caller-model")
    return CallerView(request=request, body=body or {}, path="/v1/chat/completions", stream=False)


# --- recorded provider traffic ---------------------------------------------------------

STREAMS = [
    "text_stream",
    "tool_call_stream",
    "tool_result_followup_stream",
    "parallel_tool_calls_stream",
    "error_midstream_event_groq_stream",
]


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_streams_decode_like_the_protocol_reader(name: str) -> None:
    events = sse_events(fixture(name)["response"]["body_text"])
    got = assemble(decode_stream(events))
    state = reference_state(events)
    assert got["starts"] == 1
    assert got["text"] == "".join(state.text)
    assert got["thinking"] == "".join(state.thinking)
    assert got.get("usage") == state.usage
    want_calls = [
        {"id": c.id, "name": c.name, "arguments": "".join(c.arguments)}
        for c in state.tool_calls.values()
    ]
    assert list(got["calls"].values()) == want_calls
    if state.stop_reason is not None:
        assert got["finish"] == {"stop": "stop", "tool_calls": "tool_calls"}[state.stop_reason]


def test_recorded_parallel_tool_calls() -> None:
    events = sse_events(fixture("parallel_tool_calls_stream")["response"]["body_text"])
    got = assemble(decode_stream(events))
    assert got["id"] == "chatcmpl-C2QD1kGWsTW5OWiqAtOSFEAOfPfQH"
    assert got["model"] == "gpt-4o-2024-08-06"
    assert got["calls"] == {
        0: {"id": "call_q2UyBRP7eXNTzAoR8lEhjc9Z", "name": "get_country", "arguments": "{}"},
        1: {"id": "call_b51ijcpFkDiTQG1bQzsrmtW5", "name": "get_product_name", "arguments": "{}"},
    }
    assert got["finish"] == "tool_calls"
    assert got["usage"] == Usage(input_tokens=364, output_tokens=40)


def test_recorded_text_stream() -> None:
    events = sse_events(fixture("text_stream")["response"]["body_text"])
    got = assemble(decode_stream(events))
    assert "Mexico City" in got["text"]
    assert got["finish"] == "stop"
    assert got["usage"].input_tokens > 0 and got["usage"].output_tokens > 0


def test_recorded_midstream_error_ends_in_a_failure() -> None:
    events = sse_events(fixture("error_midstream_event_groq_stream")["response"]["body_text"])
    deltas = decode_stream(events)
    got = assemble(deltas)
    assert got["thinking"].strip()
    assert isinstance(deltas[-1], StreamFailure)
    assert deltas[-1].kind == "tool_use_failed"
    assert deltas[-1].status == 400  # Groq names the status beside its word code
    assert deltas[-1].message.startswith("Tool call validation failed")


def test_a_numeric_error_code_is_the_status() -> None:
    body = {"error": {"code": 429, "message": "slow down"}}
    (failure,) = CODEC.stream_decoder().feed(StreamEvent(data=json.dumps(body)))
    assert failure == StreamFailure(429, "error", "slow down")
    (failure,) = CODEC.stream_decoder().feed(StreamEvent(data="not json", event="error"))
    assert isinstance(failure, StreamFailure) and failure.status == 500


def test_done_and_keepalives_decode_to_nothing() -> None:
    decoder = CODEC.stream_decoder()
    assert decoder.feed(StreamEvent(data="[DONE]")) == []
    assert decoder.feed(StreamEvent(data="")) == []


@pytest.mark.parametrize(
    ("name", "text", "finish"),
    [
        ("text_nonstream", "The capital of France is Paris.", "stop"),
        ("tool_call_nonstream", "", "tool_calls"),
        ("prompt_cache_hit_nonstream", None, "stop"),
    ],
)
def test_recorded_replies_decode(name: str, text: str | None, finish: str) -> None:
    raw = json.loads(fixture(name)["response"]["body_text"])
    reply = CODEC.decode_reply(raw)
    assert reply.id == raw["id"]
    assert reply.model == raw["model"]
    assert reply.finish == finish
    if text is not None:
        assert "".join(p.text for p in reply.content if isinstance(p, TextPart)) == text
    usage = raw["usage"]
    assert reply.usage is not None
    assert reply.usage.input_tokens == usage["prompt_tokens"]
    assert reply.usage.output_tokens == usage["completion_tokens"]
    assert reply.usage.cache_read_tokens == usage["prompt_tokens_details"]["cached_tokens"]
    calls = [p for p in reply.content if isinstance(p, ToolUsePart)]
    want = raw["choices"][0]["message"].get("tool_calls") or []
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        (w["id"], w["function"]["name"], json.loads(w["function"]["arguments"])) for w in want
    ]


def test_prompt_cache_hit_has_cached_tokens() -> None:
    reply = CODEC.decode_reply(
        json.loads(fixture("prompt_cache_hit_nonstream")["response"]["body_text"])
    )
    assert reply.usage is not None and reply.usage.cache_read_tokens > 0


def test_reply_reasoning_is_thinking_from_this_issuer() -> None:
    body = {
        "id": "x",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning": "hmm",
                    "refusal": "no",
                },
            }
        ],
    }
    reply = CODEC.decode_reply(body)
    assert reply.content == [ThinkingPart(text="hmm", issuer="openai_chat"), TextPart(text="no")]
    assert reply.finish == "length"


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("error_400_unsupported_system_role", "unsupported_value", "Unsupported value"),
        ("error_404_model_not_found", "model_not_found", "The model `gpt-5.2-proo`"),
        ("error_429_openrouter_rate_limited", "rate_limit_error", "Provider returned error"),
    ],
)
def test_recorded_errors_decode(name: str, kind: str, message: str) -> None:
    response = fixture(name)["response"]
    got_kind, got_message = CODEC.decode_error(
        response["status"], json.loads(response["body_text"])
    )
    assert got_kind == kind
    assert got_message.startswith(message)
    assert CODEC.decode_error(response["status"], response["body_text"].encode()) == (
        got_kind,
        got_message,
    )


def test_an_error_body_that_is_not_json() -> None:
    assert CODEC.decode_error(502, b"<html>bad gateway</html>") == (
        "server_error",
        "<html>bad gateway</html>",
    )


# --- parse_request fidelity -------------------------------------------------------------


def parse(**body: Any) -> CanonicalRequest:
    body.setdefault("model", "gpt-4o")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return CHAT.parse_request(body, "/v1/chat/completions")


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"tool_choice": "auto"}, ToolChoice(mode="auto")),
        ({"tool_choice": "none"}, ToolChoice(mode="none")),
        ({"tool_choice": "required"}, ToolChoice(mode="required")),
        (
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            ToolChoice(mode="tool", name="f"),
        ),
        (
            {"tool_choice": {"type": "custom", "custom": {"name": "g"}}},
            ToolChoice(mode="tool", name="g"),
        ),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "required", "tools": []},
                }
            },
            ToolChoice(mode="required"),
        ),
        ({"function_call": "none"}, ToolChoice(mode="none")),
        ({"function_call": {"name": "h"}}, ToolChoice(mode="tool", name="h")),
        ({"tool_choice": "sometimes"}, None),
        ({}, None),
    ],
)
def test_tool_choice_parses(fields: dict[str, Any], want: ToolChoice | None) -> None:
    assert parse(**fields).tool_choice == want


def test_request_fields_parse() -> None:
    request = parse(
        parallel_tool_calls=False,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
        },
        reasoning_effort="xhigh",
        tools=[{"type": "function", "function": {"name": "f", "strict": True}}],
    )
    assert request.parallel_tool_calls is False
    assert request.response_format == ResponseFormat(
        type="json_schema", name="out", schema={"type": "object"}, strict=True
    )
    assert request.reasoning == Reasoning(effort="high")
    assert request.tools == [Tool(name="f", strict=True)]
    assert parse(response_format={"type": "json_object"}).response_format == ResponseFormat(
        type="json_object"
    )
    assert parse(response_format={"type": "text"}).response_format is None
    assert parse(reasoning_effort="none").reasoning == Reasoning(enabled=False)
    assert parse(reasoning_effort="low").reasoning == Reasoning(effort="low")


def test_messages_parse_with_images_tool_results_and_reasoning() -> None:
    request = parse(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {"type": "image_url", "image_url": {"url": "data:text/plain,a%20b"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "reasoning_content": "think",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ]
    )
    png, plain, remote = request.messages[0].content
    assert isinstance(png, ImagePart) and isinstance(plain, ImagePart)
    assert (png.media_type, png.data, png.has_inline_data) == ("image/png", "iVBORw0K", True)
    assert (plain.media_type, plain.data) == ("text/plain", "YSBi")
    assert remote == ImagePart(url="https://x.test/a.jpg")
    assert "iVBORw0K" not in repr(png) and "data" not in png.model_dump()
    assert request.messages[1].content == [
        ThinkingPart(text="think"),
        ToolUsePart(id="c1", name="f", arguments={}),
    ]
    assert request.messages[2].content == [
        ToolResultPart(tool_use_id="c1", content=[TextPart(text="done")])
    ]


# --- requests: canonical -> Chat -> canonical ---------------------------------------------


def full_request() -> CanonicalRequest:
    return CanonicalRequest(
        protocol="anthropic_messages",
        model="caller-model",
        system="Be brief.",
        messages=[
            Message(
                role="user",
                content=[
                    TextPart(text="Look: "),
                    ImagePart(media_type="image/png", data="iVBORw0K", has_inline_data=True),
                    ImagePart(url="https://x.test/a.jpg"),
                ],
            ),
            Message(
                role="assistant",
                content=[
                    ThinkingPart(text="secret", signature="sig", issuer="anthropic_messages"),
                    TextPart(text="Checking."),
                    ToolUsePart(id="c1", name="weather", arguments={"city": "Zürich"}),
                    ToolUsePart(id="c2", name="clock", arguments=None),
                ],
            ),
            Message(
                role="user",
                content=[
                    ToolResultPart(
                        tool_use_id="c1",
                        content=[
                            TextPart(text="sunny"),
                            ImagePart(media_type="image/jpeg", data="/9j/", has_inline_data=True),
                        ],
                    ),
                    ToolResultPart(
                        tool_use_id="c2", content=[TextPart(text="no clock")], is_error=True
                    ),
                    TextPart(text="And?"),
                ],
            ),
        ],
        tools=[
            Tool(name="weather", description="Weather", parameters={"type": "object"}, strict=True),
            Tool(name="clock"),
        ],
        tool_choice=ToolChoice(mode="tool", name="weather"),
        parallel_tool_calls=True,
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
        reasoning=Reasoning(budget_tokens=5000),
        max_tokens=300,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        stream=True,
    )


def test_encoded_request_shape(caplog: pytest.LogCaptureFixture) -> None:
    codec_module._LOGGED.clear()  # said once per process: this test must hear it
    with caplog.at_level(logging.INFO, logger="llmgate"):
        encoded = CODEC.encode_request(full_request(), "gpt-5", stream=True, provider="openai")
    assert encoded.path == "/v1/chat/completions"
    assert encoded.headers == {"content-type": "application/json"}
    body = encoded.body
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "user", "user"]
    assistant = body["messages"][2]
    assert "reasoning_content" not in assistant and "secret" not in json.dumps(body)
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"city": "Z\\u00fcrich"}'
    assert assistant["tool_calls"][1]["function"]["arguments"] == "{}"
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert body["messages"][4]["content"] == "Error: no clock"
    images = body["messages"][5]["content"]
    assert images[1] == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}
    assert body["messages"][6] == {"role": "user", "content": "And?"}
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather",
            "parameters": {"type": "object"},
            "strict": True,
        },
    }
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }
    assert body["reasoning_effort"] == "medium"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "thinking in the conversation history" in encoded.dropped
    assert "thinking in the conversation history cannot be carried" in caplog.text


def test_other_providers_get_max_tokens() -> None:
    body = CODEC.encode_request(full_request(), "llama", stream=False, provider="openai_chat").body
    assert body["max_tokens"] == 300 and "max_completion_tokens" not in body
    assert "stream" not in body and "stream_options" not in body


def test_tool_fields_need_tools() -> None:
    request = CanonicalRequest(
        protocol="gemini", model="m", tool_choice=ToolChoice(mode="none"), parallel_tool_calls=False
    )
    body = CODEC.encode_request(request, "gpt-4o", stream=False, provider="openai").body
    assert "tool_choice" not in body and "parallel_tool_calls" not in body


def test_request_round_trips_through_the_chat_reader() -> None:
    original = full_request()
    body = CODEC.encode_request(original, "gpt-5", stream=True, provider="openai").body
    back = CHAT.parse_request(body, "/v1/chat/completions")
    assert back.model == "gpt-5"
    assert back.system == original.system
    assert back.tools == original.tools
    assert back.tool_choice == original.tool_choice
    assert back.parallel_tool_calls is True
    assert back.response_format == ResponseFormat(
        type="json_schema", name="response", schema={"type": "object"}
    )
    assert back.reasoning == Reasoning(effort="medium")
    assert (back.max_tokens, back.temperature, back.top_p, back.stop, back.stream) == (
        300,
        0.5,
        0.9,
        ["END"],
        True,
    )
    user = back.messages[0].content
    assert [type(p) for p in user] == [TextPart, ImagePart, ImagePart]
    assert isinstance(user[1], ImagePart) and (user[1].data, user[1].media_type) == (
        "iVBORw0K",
        "image/png",
    )
    assert back.messages[1].content == [
        TextPart(text="Checking."),
        ToolUsePart(id="c1", name="weather", arguments={"city": "Zürich"}),
        ToolUsePart(id="c2", name="clock", arguments={}),
    ]
    results = [p for m in back.messages for p in m.content if isinstance(p, ToolResultPart)]
    assert [(r.tool_use_id, r.content) for r in results] == [
        ("c1", [TextPart(text="sunny")]),
        ("c2", [TextPart(text="Error: no clock")]),
    ]
    tool_image = back.messages[4].content[1]
    assert isinstance(tool_image, ImagePart) and tool_image.data == "/9j/"
    assert back.messages[5].content == [TextPart(text="And?")]


@pytest.mark.parametrize(
    "name",
    ["text_nonstream", "tool_call_nonstream", "tool_call_stream", "tool_result_followup_stream"],
)
def test_recorded_requests_survive_decode_and_encode(name: str) -> None:
    request = CHAT.parse_request(fixture(name)["request"]["body"], "/v1/chat/completions")
    body = CODEC.encode_request(
        request, request.model, stream=request.stream, provider="openai"
    ).body
    again = CHAT.parse_request(body, "/v1/chat/completions")
    assert again.model_dump() == request.model_dump()


@pytest.mark.parametrize(
    ("reasoning", "effort"),
    [
        (Reasoning(budget_tokens=1024), "minimal"),
        (Reasoning(budget_tokens=4096), "low"),
        (Reasoning(budget_tokens=16384), "medium"),
        (Reasoning(budget_tokens=16385), "high"),
        (Reasoning(effort="low", budget_tokens=99999), "low"),
        (Reasoning(enabled=False), None),
        (Reasoning(), None),
    ],
)
def test_reasoning_effort(reasoning: Reasoning, effort: str | None) -> None:
    request = CanonicalRequest(protocol="gemini", model="m", reasoning=reasoning)
    body = CODEC.encode_request(request, "o3", stream=False, provider="openai").body
    assert body.get("reasoning_effort") == effort


# --- replies for a Chat caller --------------------------------------------------------------

USAGE = Usage(
    input_tokens=120,
    output_tokens=45,
    cache_read_tokens=100,
    cache_write_tokens=7,
    reasoning_tokens=30,
)


def tool_reply() -> CanonicalResponse:
    return CanonicalResponse(
        id="msg_01",
        model="claude-x",
        content=[
            ThinkingPart(text="Let me think.", signature="s", issuer="anthropic_messages"),
            TextPart(text="Calling tools: "),
            ToolUsePart(id="toolu_a", name="weather", arguments={"city": "Zürich"}),
            ToolUsePart(id="toolu_b", name="clock", arguments={}),
        ],
        finish="tool_calls",
        usage=USAGE,
    )


def test_reply_round_trips_through_the_chat_reader() -> None:
    body = CODEC.encode_reply(tool_reply(), caller())
    assert body["id"] == "chatcmpl-msg_01" and isinstance(body["created"], int)
    assert CHAT.read_usage(body) == USAGE
    back = CHAT.parse_response(body)
    assert back.finish == "tool_calls" and back.model == "claude-x"
    assert back.content == [
        ThinkingPart(text="Let me think."),
        TextPart(text="Calling tools: "),
        ToolUsePart(id="toolu_a", name="weather", arguments={"city": "Zürich"}),
        ToolUsePart(id="toolu_b", name="clock", arguments={}),
    ]
    details = body["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 100, "cache_write_tokens": 7}
    plain = CODEC.encode_reply(CanonicalResponse(content=[], usage=Usage(input_tokens=1)), caller())
    assert plain["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert plain["model"] == "caller-model" and plain["choices"][0]["finish_reason"] == "stop"


def test_content_is_null_beside_tool_calls_only() -> None:
    reply = CanonicalResponse(content=[ToolUsePart(id="a", name="f", arguments={})])
    message = CODEC.encode_reply(reply, caller())["choices"][0]["message"]
    assert message["content"] is None and "reasoning_content" not in message


def stream_events(
    deltas: list[Delta], request: CanonicalRequest | None = None
) -> list[StreamEvent]:
    encoder = CODEC.stream_encoder(caller(request))
    out: list[StreamEvent] = []
    for delta in deltas:
        out += encoder.feed(delta)
    out += encoder.close()
    assert encoder.close() == [], "close writes its ending once"
    return out


def split_every(text: str, size: int = 1) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def tool_stream() -> list[Delta]:
    args_a = json.dumps({"city": "Zürich", "units": "metric"}, ensure_ascii=False)
    args_b = json.dumps({"tz": "UTC"})
    deltas: list[Delta] = [
        MessageStart(id="msg_01", model="claude-x"),
        ThinkingDelta(text="Let me "),
        ThinkingDelta(text="think.", signature="sig"),
        TextDelta(text="Thumbs "),
        # One emoji with a skin tone: two code points, one per delta.
        TextDelta(text="\U0001f44d"),
        TextDelta(text="\U0001f3fd"),
        TextDelta(text=""),
        ToolCallStart(index=0, id="toolu_a", name="weather"),
        ToolCallStart(index=1, id="toolu_b", name="clock"),
    ]
    # Interleave the two calls' single-character fragments.
    frags_a, frags_b = split_every(args_a), split_every(args_b)
    for k in range(max(len(frags_a), len(frags_b))):
        if k < len(frags_a):
            deltas.append(ToolCallDelta(index=0, arguments=frags_a[k]))
        if k < len(frags_b):
            deltas.append(ToolCallDelta(index=1, arguments=frags_b[k]))
    deltas += [FinishDelta("tool_calls", "tool_use"), UsageUpdate(USAGE)]
    return deltas


def test_stream_round_trips_through_the_chat_reader() -> None:
    events = stream_events(tool_stream())
    assert events[-1] == StreamEvent(data="[DONE]")
    assert all(e.event is None for e in events)
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert CHAT.hides_event(events[-2]) and not any(CHAT.hides_event(e) for e in events[:-2])
    state = reference_state(events)
    assert state.usage == USAGE
    assert state.stop_reason == "tool_calls"
    assert "".join(state.text) == "Thumbs \U0001f44d\U0001f3fd"
    assert "".join(state.thinking) == "Let me think."
    response = state.response()
    calls = [p for p in response.content if isinstance(p, ToolUsePart)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("toolu_a", "weather", {"city": "Zürich", "units": "metric"}),
        ("toolu_b", "clock", {"tz": "UTC"}),
    ]
    # And the Chat decoder reads what the Chat encoder wrote.
    got = assemble(decode_stream(events))
    assert got["usage"] == USAGE and got["finish"] == "tool_calls"


def test_stream_failure_ends_the_stream() -> None:
    events = stream_events(
        [MessageStart(id="a"), TextDelta("partial"), StreamFailure(429, "rate_limit_error", "slow")]
    )
    last = json.loads(events[-1].data)
    assert last["error"]["code"] == "rate_limit_error" and last["error"]["message"] == "slow"
    assert not any(e.data == "[DONE]" for e in events)


def test_an_empty_stream_still_ends_properly() -> None:
    events = stream_events([])
    assert [json.loads(e.data)["choices"] for e in events[:-1]][1:] == [
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
        [],
    ]
    assert events[-1].data == "[DONE]"


# --- the OpenAI SDK as the caller -----------------------------------------------------------


def sdk_client(handler: Any) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="x",
        base_url="http://test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def sse_chunks(events: list[StreamEvent]) -> Iterator[bytes]:
    """The rendered stream cut into 5-byte pieces, so multi-byte characters straddle reads."""
    raw = b"".join(render_sse(event) for event in events)
    return (raw[i : i + 5] for i in range(0, len(raw), 5))


def stream_handler(events: list[StreamEvent], seen: list[dict[str, Any]]) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse_chunks(events)
        )

    return handler


def test_sdk_reads_a_buffered_reply() -> None:
    body = CODEC.encode_reply(tool_reply(), caller())

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=body)

    completion = sdk_client(handler).chat.completions.create(
        model="caller-model", messages=[{"role": "user", "content": "hi"}]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Calling tools: "
    assert (choice.message.model_extra or {})["reasoning_content"] == "Let me think."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_a", "weather", {"city": "Zürich"}),
        ("toolu_b", "clock", {}),
    ]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (120, 45)
    assert completion.usage.total_tokens == 165
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 100
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 30


def test_sdk_iterates_a_stream() -> None:
    seen: list[dict[str, Any]] = []
    client = sdk_client(stream_handler(stream_events(tool_stream()), seen))
    stream = client.chat.completions.create(
        model="caller-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, thinking, finish, usage = "", "", None, None
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        assert chunk.id == "chatcmpl-msg_01"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            thinking += (choice.delta.model_extra or {}).get("reasoning_content", "")
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert text == "Thumbs \U0001f44d\U0001f3fd"
    assert thinking == "Let me think."
    assert finish == "tool_calls"
    assert {i: (c["id"], c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == {
        0: ("toolu_a", "weather", {"city": "Zürich", "units": "metric"}),
        1: ("toolu_b", "clock", {"tz": "UTC"}),
    }
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (120, 45)


def test_sdk_stream_helper_assembles_the_completion() -> None:
    seen: list[dict[str, Any]] = []
    client = sdk_client(stream_handler(stream_events(tool_stream()), seen))
    with client.chat.completions.stream(
        model="caller-model",
        messages=[{"role": "user", "content": "hi"}],
        stream_options={"include_usage": True},
    ) as stream:
        completion = stream.get_final_completion()
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content == "Thumbs \U0001f44d\U0001f3fd"
    calls = message.tool_calls or []
    assert [(c.id, c.function.name, c.function.parsed_arguments) for c in calls] == [
        ("toolu_a", "weather", None),
        ("toolu_b", "clock", None),
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Zürich", "units": "metric"},
        {"tz": "UTC"},
    ]
    assert completion.usage is not None and completion.usage.total_tokens == 165


def test_sdk_raises_on_a_stream_failure() -> None:
    events = stream_events(
        [MessageStart(id="a"), TextDelta("hi"), StreamFailure(500, "overloaded", "busy")]
    )
    client = sdk_client(stream_handler(events, []))
    stream = client.chat.completions.create(
        model="caller-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="busy"):
        for _ in stream:
            pass


def test_a_recorded_stream_translated_chat_to_chat_reaches_the_sdk() -> None:
    raw = fixture("parallel_tool_calls_stream")["response"]["body_text"]
    events = stream_events(decode_stream(sse_events(raw)))
    client = sdk_client(stream_handler(events, []))
    with client.chat.completions.stream(
        model="caller-model", messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        completion = stream.get_final_completion()
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_q2UyBRP7eXNTzAoR8lEhjc9Z", "get_country", "{}"),
        ("call_b51ijcpFkDiTQG1bQzsrmtW5", "get_product_name", "{}"),
    ]
    assert completion.id == "chatcmpl-C2QD1kGWsTW5OWiqAtOSFEAOfPfQH"
    assert completion.usage is not None and completion.usage.prompt_tokens == 364
