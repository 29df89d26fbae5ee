"""OpenAI Responses as a translation caller: request fidelity, and replies and
streams encoded for Responses callers, checked with the official `openai` SDK
and with llmgate's own Responses reader."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from addon.protocols import StreamEvent, StreamState
from addon.protocols.canonical import (
    CanonicalResponse,
    ImagePart,
    Reasoning,
    ResponseFormat,
    TextPart,
    ThinkingPart,
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
from addon.protocols.openai_responses import OpenAIResponses
from addon.protocols.openai_responses.codec import OpenAIResponsesCodec, untranslatable
from addon.protocols.openai_responses.stream_codec import ResponsesStreamEncoder

PROTO = OpenAIResponses()
CODEC = OpenAIResponsesCodec()
FIXTURES = Path(__file__).parent / "fixtures" / "recorded"
USAGE = Usage(
    input_tokens=120,
    output_tokens=45,
    cache_read_tokens=100,
    cache_write_tokens=7,
    reasoning_tokens=30,
)
TOOLS = [
    {"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": True},
    {"type": "function", "name": "time", "parameters": {"type": "object"}},
]
ARGS = [{"city": "Zürich"}, {"tz": "Europe/Paris"}]
TEXT = "Café 👍 done"


def caller(body: dict[str, Any] | None = None, stream: bool = False) -> CallerView:
    body = {"model": "gpt-5", "input": "hi", "tools": TOOLS, **(body or {})}
    request = PROTO.parse_request(body, "/v1/responses")
    return CallerView(request=request, body=body, path="/v1/responses", stream=stream)


def client(body: bytes, content_type: str, chunk: int | None = None) -> openai.OpenAI:
    """An SDK client whose network is `body`, sent in `chunk`-byte pieces when set."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        def pieces() -> Iterator[bytes]:
            step = chunk or len(body) or 1
            for i in range(0, len(body), step):
                yield body[i : i + step]

        return httpx2.Response(200, headers={"content-type": content_type}, content=pieces())

    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        api_key="k",
        base_url="http://llmgate.test/v1",
        http_client=httpx2.Client(transport=transport),
    )


def sse(events: list[StreamEvent]) -> bytes:
    return "".join(f"event: {e.event}\ndata: {e.data}\n\n" for e in events).encode()


def encode_stream(
    deltas: list[Delta], view: CallerView | None = None, upstream: str = "x"
) -> list[StreamEvent]:
    encoder = ResponsesStreamEncoder(view or caller(stream=True), upstream)
    events = [event for delta in deltas for event in encoder.feed(delta)]
    events += encoder.close()
    assert encoder.close() == []  # exactly once
    return events


def reply(finish: str = "tool_calls", **extra: Any) -> CanonicalResponse:
    content = [
        ThinkingPart(text="Think first.", signature="sig-A", issuer="anthropic_messages"),
        TextPart(text="Café "),
        TextPart(text="👍 done"),
        ToolUsePart(id="toolu_1", name="weather", arguments=ARGS[0]),
        ToolUsePart(id="toolu_2", name="time", arguments=ARGS[1]),
    ]
    fields = {
        "id": "msg_up",
        "model": "claude-x",
        "content": content,
        "finish": finish,
        "usage": USAGE,
    }
    return CanonicalResponse(**{**fields, **extra})


def rich_deltas(finish: str = "tool_calls") -> list[Delta]:
    """Reasoning, text with a character split over two deltas, and two parallel calls
    whose arguments arrive one character at a time, interleaved."""
    args = [json.dumps(a, ensure_ascii=False) for a in ARGS]
    deltas: list[Delta] = [
        MessageStart(id="msg_up", model="claude-x"),
        ThinkingDelta(text="Think "),
        ThinkingDelta(text=""),
        ThinkingDelta(text="first."),
        ThinkingDelta(signature="sig-A"),
        TextDelta(text="Caf"),
        TextDelta(text=""),
        TextDelta(text="é 👍"),
        TextDelta(text=" done"),
        ToolCallStart(index=0, id="call_a", name="weather"),
        ToolCallStart(index=1, id="call_b", name="time"),
    ]
    for i in range(max(map(len, args))):
        for k, text in enumerate(args):
            if i < len(text):
                deltas.append(ToolCallDelta(index=k, arguments=text[i]))
    deltas += [FinishDelta(finish=finish, stop_reason="x"), UsageUpdate(usage=USAGE)]  # type: ignore[arg-type]
    return deltas


def check_usage(usage: Any) -> None:
    assert usage.input_tokens == 120 and usage.output_tokens == 45 and usage.total_tokens == 165
    assert usage.input_tokens_details.cached_tokens == 100
    assert usage.output_tokens_details.reasoning_tokens == 30


def check_calls(output: list[Any], ids: tuple[str, str]) -> None:
    calls = [item for item in output if item.type == "function_call"]
    assert [(c.call_id, c.name) for c in calls] == [(ids[0], "weather"), (ids[1], "time")]
    assert [json.loads(c.arguments) for c in calls] == ARGS
    assert all(c.id and c.id.startswith("fc_") for c in calls)


# --- buffered replies -------------------------------------------------------------------


def test_reply_through_sdk() -> None:
    body = CODEC.encode_reply(reply(), caller())
    response = client(json.dumps(body).encode(), "application/json").responses.create(
        model="gpt-5", input="hi"
    )
    assert response.id == "resp_msg_up" and response.status == "completed"
    assert response.output_text == TEXT
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [s.text for s in reasoning.summary] == ["Think first."]
    assert unseal(reasoning.encrypted_content or "", "openai_responses") == (
        "anthropic_messages",
        "sig-A",
    )
    check_calls(response.output, ("toolu_1", "toolu_2"))
    check_usage(response.usage)
    assert [t.name for t in response.tools] == ["weather", "time"]  # type: ignore[union-attr]


def test_reply_reads_back() -> None:
    body = CODEC.encode_reply(reply(), caller())
    assert PROTO.read_usage(body) == USAGE
    back = PROTO.parse_response(body)
    assert back.finish == "tool_calls" and back.text() == "Think first." + TEXT + "".join(
        json.dumps(a, ensure_ascii=False) for a in ARGS
    )
    thinking = back.content[0]
    assert isinstance(thinking, ThinkingPart)
    assert (thinking.issuer, thinking.signature) == ("anthropic_messages", "sig-A")


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_reply_incomplete(finish: str, reason: str) -> None:
    body = CODEC.encode_reply(reply(finish=finish), caller())
    response = client(json.dumps(body).encode(), "application/json").responses.create(
        model="gpt-5", input="hi"
    )
    assert response.status == "incomplete"
    assert response.incomplete_details and response.incomplete_details.reason == reason
    assert PROTO.parse_response(body).finish == finish


def test_reply_echoes_request_settings() -> None:
    view = caller(
        {"instructions": "Be brief.", "tool_choice": "required", "parallel_tool_calls": False}
    )
    body = CODEC.encode_reply(reply(finish="stop"), view)
    response = openai.types.responses.Response.model_validate(body)
    assert response.instructions == "Be brief." and response.tool_choice == "required"
    assert response.parallel_tool_calls is False and response.object == "response"


# --- streams ----------------------------------------------------------------------------


def test_stream_events_are_numbered_and_named() -> None:
    events = encode_stream(rich_deltas())
    payloads = [e.json() for e in events]
    assert [p["sequence_number"] for p in payloads] == list(range(len(events)))
    assert all(e.event == p["type"] for e, p in zip(events, payloads, strict=True))
    kinds = [p["type"] for p in payloads]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    # Each function call's fragments go to its own item, never to the other's.
    items = {
        p["item"]["id"]: p["output_index"]
        for p in payloads
        if p["type"] == "response.output_item.added"
    }
    for p in payloads:
        if p["type"] == "response.function_call_arguments.delta":
            assert items[p["item_id"]] == p["output_index"] and len(p["delta"]) == 1


def test_stream_iterated_by_sdk() -> None:
    events = encode_stream(rich_deltas(), upstream="anthropic_messages")
    stream = client(sse(events), "text/event-stream").responses.create(
        model="gpt-5", input="hi", stream=True
    )
    seen = list(stream)
    assert "".join(e.delta for e in seen if e.type == "response.output_text.delta") == TEXT
    thinking = [e.delta for e in seen if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(thinking) == "Think first."
    final = seen[-1]
    assert final.type == "response.completed"
    response = final.response
    assert response.output_text == TEXT and response.status == "completed"
    check_calls(response.output, ("call_a", "call_b"))
    check_usage(response.usage)
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert unseal(reasoning.encrypted_content or "", "openai_responses") == (
        "anthropic_messages",
        "sig-A",
    )


def test_stream_helper_final_response() -> None:
    events = encode_stream(rich_deltas())
    # One byte at a time: "é" and "👍" are split across network reads.
    sdk = client(sse(events), "text/event-stream", chunk=1)
    with sdk.responses.stream(model="gpt-5", input="hi") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        response = stream.get_final_response()
    assert text == TEXT and response.output_text == TEXT
    summary = [s.text for item in response.output if item.type == "reasoning" for s in item.summary]
    assert summary == ["Think first."]
    check_calls(response.output, ("call_a", "call_b"))
    check_usage(response.usage)


def test_stream_reads_back() -> None:
    state = StreamState()
    for event in encode_stream(rich_deltas()):
        PROTO.feed_event(state, event)
    assert state.usage == USAGE and state.error is None
    assert "".join(state.text) == TEXT and "".join(state.thinking) == "Think first."
    calls = sorted(
        (c.id, c.name, json.loads("".join(c.arguments))) for c in state.tool_calls.values()
    )
    assert calls == [("call_a", "weather", ARGS[0]), ("call_b", "time", ARGS[1])]
    assert state.stop_reason == "completed"


def test_stream_length_is_incomplete() -> None:
    events = encode_stream(
        [TextDelta(text="cut"), FinishDelta(finish="length"), UsageUpdate(usage=USAGE)]
    )
    seen = list(
        client(sse(events), "text/event-stream").responses.create(model="m", input="x", stream=True)
    )
    final = seen[-1]
    assert final.type == "response.incomplete"
    assert final.response.status == "incomplete"
    assert final.response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert final.response.output_text == "cut"
    state = StreamState()
    for event in events:
        PROTO.feed_event(state, event)
    assert state.stop_reason == "max_output_tokens" and state.usage == USAGE


def test_stream_failure_ends_the_stream() -> None:
    encoder = ResponsesStreamEncoder(caller(stream=True), "gemini")
    events = encoder.feed(TextDelta(text="partial"))
    events += encoder.feed(StreamFailure(status=429, kind="RESOURCE_EXHAUSTED", message="quota"))
    assert encoder.feed(TextDelta(text="more")) == [] and encoder.close() == []
    assert events[-1].event == "response.failed"
    seen = list(
        client(sse(events), "text/event-stream").responses.create(model="m", input="x", stream=True)
    )
    failed = seen[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error and failed.response.error.message == "quota"
    assert failed.response.error.code == "rate_limit_exceeded"
    state = StreamState()
    for event in events:
        PROTO.feed_event(state, event)
    assert state.error and "quota" in state.error


def test_empty_stream_still_completes() -> None:
    events = encode_stream([])
    with client(sse(events), "text/event-stream").responses.stream(model="m", input="x") as stream:
        response = stream.get_final_response()
    assert response.status == "completed" and response.output == []


def test_codec_stream_encoder_is_the_responses_one() -> None:
    encoder = CODEC.stream_encoder(caller(stream=True))
    kinds = [e.event for e in encoder.feed(TextDelta(text="a")) + encoder.close()]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


# --- signatures back from the caller ------------------------------------------------------


def test_gemini_call_signature_returns_to_its_call() -> None:
    sent = CanonicalResponse(
        content=[
            ToolUsePart(id="c1", name="weather", arguments={}, signature="gsig", issuer="gemini")
        ],
        finish="tool_calls",
    )
    buffered = CODEC.encode_reply(sent, caller())["output"]
    streamed = encode_stream(
        [ToolCallStart(index=0, id="c1", name="weather", signature="gsig")], upstream="gemini"
    )
    final = streamed[-1].json()["response"]["output"]
    for output in (buffered, final):
        request = PROTO.parse_request(
            {"model": "m", "input": [{"role": "user", "content": "q"}, *output]}, ""
        )
        (call,) = request.messages[1].content
        assert isinstance(call, ToolUsePart)
        assert (call.id, call.signature, call.issuer) == ("c1", "gsig", "gemini")


def test_redacted_thinking_is_its_own_item() -> None:
    events = encode_stream(
        [ThinkingDelta(text="readable"), ThinkingDelta(redacted=True, signature="opaque")],
        upstream="anthropic_messages",
    )
    output = events[-1].json()["response"]["output"]
    assert [item["summary"] for item in output] == [
        [{"type": "summary_text", "text": "readable"}],
        [],
    ]
    request = PROTO.parse_request({"model": "m", "input": output}, "")
    first, second = request.messages[0].content
    assert isinstance(first, ThinkingPart) and first.signature is None and first.issuer is None
    assert isinstance(second, ThinkingPart) and second.redacted
    assert (second.issuer, second.signature) == ("anthropic_messages", "opaque")


# --- request fidelity -------------------------------------------------------------------

PNG = base64.b64encode(b"\x89PNG fake").decode()


def full_request() -> dict[str, Any]:
    return {
        "model": "gpt-5",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
                    {"type": "input_image", "file_id": "file-123"},
                    {"type": "input_image", "image_url": "https://x.test/a.jpg"},
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Look."}],
                "encrypted_content": seal("anthropic_messages", "sig-A"),
            },
            {
                "type": "reasoning",
                "id": "rs_2",
                "summary": [],
                "encrypted_content": "gAAAA-openai_own",
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city":"Z"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": [
                    {"type": "input_text", "text": "chart:"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
                ],
            },
        ],
        "tools": [*TOOLS, {"type": "web_search"}, {"type": "custom", "name": "apply_patch"}],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "out",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
        "reasoning": {"effort": "high", "summary": "auto"},
        "max_output_tokens": 500,
        "temperature": 0.5,
        "top_p": 0.9,
        "previous_response_id": "resp_old",
    }


def test_parse_request_fidelity() -> None:
    body = full_request()
    request = PROTO.parse_request(body, "/v1/responses")
    assert request.system == "Be brief.\n\nUse tools."
    user, assistant, tool = request.messages
    text, inline, file_image, url_image = user.content
    assert isinstance(text, TextPart) and text.text == "What is this?"
    assert isinstance(inline, ImagePart) and (inline.data, inline.media_type) == (PNG, "image/png")
    assert inline.has_inline_data and "data" not in inline.model_dump()
    assert file_image == ImagePart()
    assert isinstance(url_image, ImagePart) and url_image.url == "https://x.test/a.jpg"
    foreign, own, call = assistant.content
    assert (
        isinstance(foreign, ThinkingPart) and foreign.text == "Look." and foreign.item_id == "rs_1"
    )
    assert (foreign.issuer, foreign.signature) == ("anthropic_messages", "sig-A")
    assert isinstance(own, ThinkingPart) and own.redacted
    assert (own.issuer, own.signature) == ("openai_responses", "gAAAA-openai_own")
    assert isinstance(call, ToolUsePart) and (call.id, call.arguments) == ("call_1", {"city": "Z"})
    first, second = tool.content
    assert isinstance(first, ToolResultPart) and first.tool_use_id == "call_1"
    assert first.content == [TextPart(text="sunny")]
    assert isinstance(second, ToolResultPart) and second.content[0] == TextPart(text="chart:")
    image = second.content[1]
    assert isinstance(image, ImagePart) and image.data == PNG
    assert [(t.name, t.strict) for t in request.tools] == [("weather", True), ("time", None)]
    assert request.tool_choice == ToolChoice(mode="tool", name="weather")
    assert request.parallel_tool_calls is False
    assert request.response_format == ResponseFormat(
        type="json_schema", name="out", schema={"type": "object"}, strict=True
    )
    assert request.reasoning == Reasoning(effort="high")
    assert (request.max_tokens, request.temperature, request.top_p) == (500, 0.5, 0.9)
    assert untranslatable(body) == ["tool:web_search", "tool:custom", "previous_response_id"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("auto", ToolChoice()),
        ("none", ToolChoice(mode="none")),
        ("required", ToolChoice(mode="required")),
        ({"type": "allowed_tools", "mode": "required", "tools": []}, ToolChoice(mode="required")),
        ({"type": "web_search"}, None),
    ],
)
def test_tool_choice(raw: Any, expected: ToolChoice | None) -> None:
    assert PROTO.parse_request({"model": "m", "tool_choice": raw}, "").tool_choice == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"effort": "none"}, Reasoning(enabled=False)),
        ({"effort": "minimal"}, Reasoning(effort="minimal")),
        ({"effort": "xhigh"}, Reasoning(effort="high")),
        ({"summary": "auto"}, Reasoning()),
        ({"effort": None, "summary": None}, None),
    ],
)
def test_reasoning(raw: Any, expected: Reasoning | None) -> None:
    assert PROTO.parse_request({"model": "m", "reasoning": raw}, "").reasoning == expected


def test_percent_encoded_data_url() -> None:
    body = {
        "model": "m",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": "data:image/svg+xml,%3Csvg%2F%3E"}
                ],
            }
        ],
    }
    (image,) = PROTO.parse_request(body, "").messages[0].content
    assert isinstance(image, ImagePart) and base64.b64decode(image.data or "") == b"<svg/>"


def test_json_object_format() -> None:
    body = {"model": "m", "text": {"format": {"type": "json_object"}}}
    assert PROTO.parse_request(body, "").response_format == ResponseFormat(type="json_object")


# --- recorded traffic ---------------------------------------------------------------------


def recorded(predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("openai_responses__*.json"))]
    chosen = [fx for fx in found if predicate(fx)]
    assert chosen
    return chosen


@pytest.mark.parametrize("fx", recorded(lambda fx: True), ids=lambda fx: fx["source"]["path"][-40:])
def test_recorded_requests_parse(fx: dict[str, Any]) -> None:
    body = fx["request"]["body"]
    request = PROTO.parse_request(body, "/v1/responses")
    choice = body.get("tool_choice")
    assert request.tool_choice == (ToolChoice(mode=choice) if choice else None)
    assert len(request.tools) == len(body.get("tools") or [])
    assert all(
        t.strict == spec.get("strict")
        for t, spec in zip(request.tools, body.get("tools") or [], strict=True)
    )


def test_recorded_replies_map_finish() -> None:
    buffered = recorded(lambda fx: not fx["stream"] and fx["response"]["status"] == 200)
    for fx in buffered:
        body = (
            json.loads(fx["response"]["body_text"])
            if "body_text" in fx["response"]
            else fx["response"]["body"]
        )
        response = PROTO.parse_response(body)
        assert response.id == body["id"]
        has_call = any(item["type"] == "function_call" for item in body["output"])
        assert response.finish == ("tool_calls" if has_call else "stop")
        for part in response.content:
            if isinstance(part, ThinkingPart) and part.signature:
                assert part.issuer == "openai_responses"
