"""The Gemini codec: recorded Gemini traffic decoded, canonical values round-tripped
through the Gemini protocol module, and the caller side read by google-genai itself."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from google import genai
from google.genai import types

from addon.protocols import PROTOCOLS, StreamEvent, StreamState
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
from addon.protocols.codec import CallerView, unseal
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
from addon.protocols.gemini.codec import FOREIGN_SIGNATURE, GeminiCodec

FIXTURES = Path(__file__).parent / "fixtures" / "recorded"
GEMINI = PROTOCOLS["gemini"]
CODEC = GeminiCodec()
PATH = "/v1beta/models/gemini-2.5-pro:generateContent"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"gemini__{name}.json").read_text(encoding="utf-8"))


def sse_events(text: str) -> list[StreamEvent]:
    blocks = text.replace("\r\n", "\n").split("\n\n")
    return [StreamEvent(data=b[len("data:") :].strip()) for b in blocks if b.startswith("data:")]


def decode_stream(name: str) -> list[Delta]:
    decoder = CODEC.stream_decoder()
    deltas: list[Delta] = []
    for event in sse_events(fixture(name)["response"]["body_text"]):
        deltas += decoder.feed(event)
    return deltas + decoder.close()


def caller(stream: bool = False, upstream: str | None = None) -> CallerView:
    request = CanonicalRequest(protocol="gemini", model="gemini-2.5-pro", stream=stream)
    view = CallerView(request=request, body={}, path=PATH, stream=stream)
    if upstream is not None:
        object.__setattr__(view, "upstream", upstream)  # the lead's CallerView may grow this
    return view


# --- provider side: recorded replies ------------------------------------------------------


def test_buffered_function_call_reply() -> None:
    fx = fixture("function_response_followup_nonstream")
    reply = CODEC.decode_reply(json.loads(fx["response"]["body_text"]))
    assert reply.id == "LlteaOzCOPOdnvgPrJbnoQg" and reply.model == "gemini-2.0-flash"
    [call] = reply.content
    assert isinstance(call, ToolUsePart)
    assert (call.id, call.name, call.issuer) == ("call_0", "final_result", "gemini")
    assert call.arguments == {"city": "Mexico City", "country": "Mexico"}
    assert (reply.finish, reply.stop_reason) == ("tool_calls", "STOP")
    assert reply.usage == Usage(input_tokens=47, output_tokens=8)


def test_buffered_thinking_reply_keeps_the_signature_on_the_thinking() -> None:
    body = json.loads(fixture("thinking_nonstream")["response"]["body_text"])
    reply = CODEC.decode_reply(body)
    thinking, text = reply.content
    assert isinstance(thinking, ThinkingPart) and isinstance(text, TextPart)
    assert thinking.text.startswith("**A Safe Street-Crossing Guide")
    wire = body["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
    assert (thinking.signature, thinking.issuer) == (wire, "gemini")
    assert text.text.startswith("Crossing the street safely")
    assert reply.finish == "stop"
    assert reply.usage == Usage(input_tokens=29, output_tokens=1737, reasoning_tokens=1001)


def test_buffered_cached_usage() -> None:
    reply = CODEC.decode_reply(
        json.loads(fixture("implicit_cache_nonstream")["response"]["body_text"])
    )
    assert reply.usage == Usage(
        input_tokens=17713, output_tokens=889, cache_read_tokens=17379, reasoning_tokens=821
    )


def test_stream_text() -> None:
    deltas = decode_stream("text_stream")
    assert deltas[0] == MessageStart(id="w1peaMz6INOvnvgPgYfPiQY", model="gemini-2.0-flash-exp")
    text = "".join(d.text for d in deltas if isinstance(d, TextDelta))
    assert text == "The capital of France is Paris.\n"
    assert [d for d in deltas if isinstance(d, FinishDelta)] == [FinishDelta("stop", "STOP")]
    usage = [d.usage for d in deltas if isinstance(d, UsageUpdate)][-1]
    assert usage == Usage(input_tokens=13, output_tokens=8)


def test_stream_function_call_with_thought_signature() -> None:
    fx = fixture("function_call_thought_signature_stream")
    deltas = decode_stream("function_call_thought_signature_stream")
    start = next(d for d in deltas if isinstance(d, ToolCallStart))
    wire = json.loads(sse_events(fx["response"]["body_text"])[0].data)
    signature = wire["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    assert (start.index, start.id, start.name, start.signature) == (
        0,
        "call_0",
        "get_country",
        signature,
    )
    assert [d.arguments for d in deltas if isinstance(d, ToolCallDelta)] == ["{}"]
    assert [d.finish for d in deltas if isinstance(d, FinishDelta)] == ["tool_calls"]
    usage = [d.usage for d in deltas if isinstance(d, UsageUpdate)][-1]
    assert usage == Usage(input_tokens=29, output_tokens=212, reasoning_tokens=202)


def test_stream_thinking_then_signed_text() -> None:
    deltas = decode_stream("thinking_stream")
    thinking = [d for d in deltas if isinstance(d, ThinkingDelta)]
    assert thinking[0].text.startswith("**Clarifying User Goals**")
    assert all(d.signature is None for d in thinking[:-1])
    assert thinking[-1].text == "" and thinking[-1].signature
    first_text = next(i for i, d in enumerate(deltas) if isinstance(d, TextDelta))
    assert deltas[first_text - 1] is thinking[-1]


def test_stream_error_event_and_json_array_chunks() -> None:
    decoder = CODEC.stream_decoder()
    error = {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    assert decoder.feed(StreamEvent(json.dumps(error))) == [
        StreamFailure(429, "RESOURCE_EXHAUSTED", "slow down")
    ]
    chunk = {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f"}}]}}]}
    deltas = CODEC.stream_decoder().feed(StreamEvent(json.dumps([chunk, chunk])))
    assert [d.index for d in deltas if isinstance(d, ToolCallStart)] == [0, 1]
    assert [d.id for d in deltas if isinstance(d, ToolCallStart)] == ["call_0", "call_1"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("error_404_model_not_found", "NOT_FOUND"),
        ("error_400_vertex_invalid_argument", "INVALID_ARGUMENT"),
    ],
)
def test_decode_error(name: str, kind: str) -> None:
    fx = fixture(name)
    body = json.loads(fx["response"]["body_text"])
    got = CODEC.decode_error(fx["response"]["status"], body)
    assert got == (kind, body["error"]["message"])
    assert CODEC.decode_error(400, [body]) == got


# --- the request decoder (addon/protocols/gemini/request.py) ---


def test_parse_request_pairs_ids_signatures_and_errors() -> None:
    fx = fixture("error_400_vertex_invalid_argument")
    request = GEMINI.parse_request(fx["request"]["body"], fx["request"]["url"])
    first_call = request.messages[1].content[0]
    assert isinstance(first_call, ToolUsePart) and first_call.issuer == "gemini"
    assert (
        first_call.signature
        == fx["request"]["body"]["contents"][1]["parts"][0]["thought_signature"]
    )
    result = request.messages[2].content[0]
    assert isinstance(result, ToolResultPart) and result.is_error
    assert (result.tool_use_id, result.name) == (first_call.id, "get_file")
    image = request.messages[4].content[0]
    assert isinstance(image, ToolResultPart)
    assert image.content[-1] == ImagePart(
        media_type="image/png", url="https://www.gstatic.com/webp/gallery3/1.png"
    )


def test_parse_request_tool_config_and_openapi_types() -> None:
    fx = fixture("function_response_followup_nonstream")
    request = GEMINI.parse_request(fx["request"]["body"], fx["request"]["url"])
    assert request.tool_choice == ToolChoice(mode="required")  # two allowed names
    assert request.tools[1].parameters == {
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "type": "object",
    }


def test_parse_request_fills_ids_and_new_fields() -> None:
    pixel = base64.b64encode(b"\x89PNG").decode()
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "hi"},
                    {"inline_data": {"mime_type": "image/png", "data": pixel}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "f", "args": {"a": 1}}},
                    {"functionCall": {"name": "f", "args": {"a": 2}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "f", "response": {"output": "1"}}},
                    {"functionResponse": {"name": "f", "response": {"output": "2"}}},
                ],
            },
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}},
            "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True},
        },
    }
    request = GEMINI.parse_request(body, PATH)
    image = request.messages[0].content[1]
    assert isinstance(image, ImagePart) and (image.data, image.media_type) == (pixel, "image/png")
    calls = [p.id for p in request.messages[1].content if isinstance(p, ToolUsePart)]
    results = [p.tool_use_id for p in request.messages[2].content if isinstance(p, ToolResultPart)]
    assert calls == results == ["call_1_0", "call_1_1"]
    assert request.tool_choice == ToolChoice(mode="tool", name="f")
    assert request.response_format == ResponseFormat(
        type="json_schema", schema={"type": "object", "properties": {"a": {"type": "integer"}}}
    )
    assert request.reasoning == Reasoning(effort="low", budget_tokens=2048)
    body["generationConfig"] = {
        "thinkingConfig": {"thinkingBudget": 0},
        "responseMimeType": "application/json",
    }
    request = GEMINI.parse_request(body, PATH)
    assert request.reasoning == Reasoning(enabled=False)
    assert request.response_format == ResponseFormat(type="json_object")


# --- provider side: requests round-tripped through the Gemini request decoder --------------


def canonical_request() -> CanonicalRequest:
    return CanonicalRequest(
        protocol="anthropic_messages",
        model="claude",
        system="be brief",
        messages=[
            Message(
                role="user",
                content=[
                    TextPart(text="weather?"),
                    ImagePart(media_type="image/png", data="iVBO", has_inline_data=True),
                ],
            ),
            Message(
                role="assistant",
                content=[
                    ThinkingPart(text="hmm", signature="anth-sig", issuer="anthropic_messages"),
                    TextPart(text="checking"),
                    ToolUsePart(
                        id="toolu_1",
                        name="weather",
                        arguments={"city": "Paris"},
                        issuer="anthropic_messages",
                    ),
                    ToolUsePart(id="toolu_2", name="time", arguments='{"tz": "CET"}'),
                ],
            ),
            Message(
                role="user",
                content=[
                    ToolResultPart(tool_use_id="toolu_1", content=[TextPart(text="sunny")]),
                    ToolResultPart(
                        tool_use_id="toolu_2", content=[TextPart(text="boom")], is_error=True
                    ),
                    TextPart(text="and tomorrow?"),
                ],
            ),
        ],
        tools=[
            Tool(
                name="weather",
                description="w",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}},
            )
        ],
        tool_choice=ToolChoice(mode="tool", name="weather"),
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
        reasoning=Reasoning(effort="medium"),
        max_tokens=100,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
    )


def test_encode_request_round_trip() -> None:
    encoded = CODEC.encode_request(canonical_request(), "gemini-2.5-pro", True, "gemini")
    assert encoded.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert encoded.headers == {"content-type": "application/json"}
    body = encoded.body
    model_turn = body["contents"][1]
    # Foreign thinking is dropped; foreign calls carry the documented dummy signature.
    assert model_turn["parts"][0] == {"text": "checking"}
    assert [p["thoughtSignature"] for p in model_turn["parts"][1:]] == [FOREIGN_SIGNATURE] * 2
    assert body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["type"] == "object"
    config = body["generationConfig"]
    assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 8192}
    assert config["responseJsonSchema"] == {"type": "object"}

    back = GEMINI.parse_request(body, encoded.path)
    assert back.system == "be brief" and back.stream
    assert (back.max_tokens, back.temperature, back.top_p, back.stop) == (100, 0.5, 0.9, ["END"])
    assert back.tool_choice == ToolChoice(mode="tool", name="weather")
    assert back.response_format == ResponseFormat(type="json_schema", schema={"type": "object"})
    assert back.reasoning == Reasoning(effort="medium", budget_tokens=8192)
    assert back.tools[0].parameters == canonical_request().tools[0].parameters
    image = back.messages[0].content[1]
    assert isinstance(image, ImagePart) and image.data == "iVBO"
    calls = [p for p in back.messages[1].content if isinstance(p, ToolUsePart)]
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("toolu_1", "weather", {"city": "Paris"}),
        ("toolu_2", "time", {"tz": "CET"}),
    ]
    results = [p for p in back.messages[2].content if isinstance(p, ToolResultPart)]
    assert [(r.tool_use_id, r.name, r.is_error) for r in results] == [
        ("toolu_1", "weather", False),
        ("toolu_2", "time", True),
    ]
    assert json.loads(results[1].content[0].text) == {"error": "boom"}


def test_gemini_signatures_go_back_where_gemini_put_them() -> None:
    body = json.loads(fixture("thinking_nonstream")["response"]["body_text"])
    reply = CODEC.decode_reply(body)
    request = CanonicalRequest(
        protocol="openai_chat",
        model="m",
        messages=[
            Message(role="user", content=[TextPart(text="q")]),
            Message(role="assistant", content=reply.content),
        ],
    )
    parts = CODEC.encode_request(request, "gemini-3-pro-preview", False, "gemini").body["contents"][
        1
    ]["parts"]
    wire = body["candidates"][0]["content"]["parts"]
    assert parts == wire


# --- caller side: reply and stream encoders ------------------------------------------------

USAGE = Usage(input_tokens=120, output_tokens=50, cache_read_tokens=20, reasoning_tokens=30)


def canonical_reply() -> CanonicalResponse:
    return CanonicalResponse(
        id="msg_1",
        model="claude-x",
        content=[
            ThinkingPart(text="let me think", signature="sig-a", issuer="anthropic_messages"),
            TextPart(text="Voilà: "),
            ToolUsePart(id="toolu_1", name="weather", arguments={"city": "Paris"}),
            ToolUsePart(id="toolu_2", name="time", arguments={"tz": "CET"}),
        ],
        finish="tool_calls",
        usage=USAGE,
    )


def test_encode_reply_reads_back() -> None:
    body = CODEC.encode_reply(canonical_reply(), caller())
    assert GEMINI.read_usage(body) == USAGE
    back = GEMINI.parse_response(body)
    assert (back.id, back.model, back.finish) == ("msg_1", "claude-x", "tool_calls")
    thinking = back.content[0]
    assert isinstance(thinking, ThinkingPart)
    assert (thinking.issuer, thinking.signature) == ("anthropic_messages", "sig-a")


def stream_deltas() -> list[Delta]:
    args = json.dumps({"city": "Paris", "note": "naïve ☃"}, ensure_ascii=False)
    return [
        MessageStart(id="msg_1", model="claude-x"),
        ThinkingDelta(text="let me "),
        ThinkingDelta(text="think"),
        ThinkingDelta(signature="sig-a"),
        TextDelta(text="caf"),
        TextDelta(text="é "),
        TextDelta(text=""),
        ToolCallStart(index=0, id="toolu_1", name="weather"),
        *[ToolCallDelta(index=0, arguments=args[i : i + 3]) for i in range(0, len(args), 3)],
        ToolCallStart(index=1, id="toolu_2", name="time"),
        ToolCallDelta(index=1, arguments='{"tz"'),
        ToolCallDelta(index=1, arguments=': "CET"}'),
        FinishDelta(finish="tool_calls"),
        UsageUpdate(usage=Usage(input_tokens=120)),
        UsageUpdate(usage=USAGE),
    ]


def encode_stream(
    deltas: list[Delta], upstream: str | None = "anthropic_messages"
) -> list[StreamEvent]:
    encoder = CODEC.stream_encoder(caller(True, upstream))
    events: list[StreamEvent] = []
    for delta in deltas:
        events += encoder.feed(delta)
    return events + encoder.close() + encoder.close()


def test_stream_encoder_reads_back_through_feed_event() -> None:
    events = encode_stream(stream_deltas())
    assert all(e.event is None for e in events)
    state = StreamState()
    for event in events:
        GEMINI.feed_event(state, event)
    assert state.usage == USAGE and state.stop_reason == "STOP"
    assert "".join(state.text) == "café " and "".join(state.thinking) == "let me think"
    calls = [(c.id, c.name, json.loads("".join(c.arguments))) for c in state.tool_calls.values()]
    assert calls == [
        ("toolu_1", "weather", {"city": "Paris", "note": "naïve ☃"}),
        ("toolu_2", "time", {"tz": "CET"}),
    ]


def test_stream_failure_ends_the_stream() -> None:
    events = encode_stream(
        [MessageStart(), TextDelta(text="a"), StreamFailure(429, "rate_limit_error", "slow")]
    )
    assert len(events) == 2
    assert json.loads(events[-1].data)["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_recorded_stream_through_decoder_and_encoder() -> None:
    deltas = decode_stream("function_call_thought_signature_stream")
    events = encode_stream(deltas, upstream="gemini")
    state = StreamState()
    for event in events:
        GEMINI.feed_event(state, event)
    [call] = state.tool_calls.values()
    assert (call.name, "".join(call.arguments)) == ("get_country", "{}")
    assert state.usage == Usage(input_tokens=29, output_tokens=212, reasoning_tokens=202)


# --- caller side, read by the official google-genai SDK ------------------------------------


def sdk_client(handler: Any) -> genai.Client:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    options = types.HttpOptions(base_url="http://test", httpx_client=http)
    return genai.Client(api_key="x", http_options=options)


def test_sdk_reads_a_buffered_reply_and_sends_signatures_back() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=CODEC.encode_reply(canonical_reply(), caller()))

    client = sdk_client(handler)
    response = client.models.generate_content(model="gemini-2.5-pro", contents="weather?")
    parts = response.candidates[0].content.parts
    assert parts[0].thought and parts[0].text == "let me think"
    assert parts[0].thought_signature == b"llmgate1:anthropic_messages:sig-a"
    assert response.text == "Voilà: "
    assert [(c.id, c.name, c.args) for c in response.function_calls] == [
        ("toolu_1", "weather", {"city": "Paris"}),
        ("toolu_2", "time", {"tz": "CET"}),
    ]
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    meta = response.usage_metadata
    assert (meta.prompt_token_count, meta.candidates_token_count, meta.thoughts_token_count) == (
        120,
        20,
        30,
    )
    assert (meta.cached_content_token_count, meta.total_token_count) == (20, 170)

    # The caller sends the turn back: the SDK re-encodes the signature, llmgate unseals it.
    client.models.generate_content(
        model="gemini-2.5-pro",
        contents=[
            types.Content(role="user", parts=[types.Part(text="weather?")]),
            response.candidates[0].content,
        ],
    )
    back = GEMINI.parse_request(sent[-1], PATH)
    thinking = back.messages[1].content[0]
    assert isinstance(thinking, ThinkingPart)
    assert (thinking.issuer, thinking.signature) == ("anthropic_messages", "sig-a")


def chunked(body: bytes) -> Iterator[bytes]:
    # Cut every multi-byte character in two, so the SDK must join bytes across reads.
    start = 0
    for i in range(1, len(body)):
        if body[i] & 0xC0 == 0x80 and body[i - 1] & 0xC0 == 0xC0:
            yield body[start:i]
            start = i
    yield body[start:]


def test_sdk_reads_a_stream() -> None:
    events = encode_stream(stream_deltas())
    sse = "".join(f"data: {e.data}\r\n\r\n" for e in events).encode()
    assert len(list(chunked(sse))) > 3
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(str(request.url))
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, content=chunked(sse))

    chunks = list(
        sdk_client(handler).models.generate_content_stream(model="gemini-2.5-pro", contents="q")
    )
    assert "alt=sse" in paths[0]
    thoughts = "".join(
        p.text or "" for c in chunks for p in c.candidates[0].content.parts if p.thought
    )
    text = "".join(
        p.text or ""
        for c in chunks
        for p in c.candidates[0].content.parts
        if not p.thought and p.text
    )
    assert (thoughts, text) == ("let me think", "café ")
    calls = [fc for c in chunks for fc in (c.function_calls or [])]
    assert [(c.id, c.name, c.args) for c in calls] == [
        ("toolu_1", "weather", {"city": "Paris", "note": "naïve ☃"}),
        ("toolu_2", "time", {"tz": "CET"}),
    ]
    signed = [
        p.thought_signature
        for c in chunks
        for p in c.candidates[0].content.parts
        if p.thought_signature
    ]
    assert [unseal(base64.b64encode(s).decode(), "gemini") for s in signed] == [
        ("anthropic_messages", "sig-a")
    ]
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    meta = chunks[-1].usage_metadata
    assert (meta.prompt_token_count, meta.candidates_token_count, meta.thoughts_token_count) == (
        120,
        20,
        30,
    )


def test_streamed_turn_sent_back_as_history() -> None:
    """A Gemini caller keeps each chunk's parts; sent back, they make one signed thought."""
    parts = [
        part
        for event in encode_stream(stream_deltas())
        for part in json.loads(event.data)["candidates"][0]["content"]["parts"]
    ]
    body = {
        "contents": [{"role": "user", "parts": [{"text": "q"}]}, {"role": "model", "parts": parts}]
    }
    turn = GEMINI.parse_request(body, PATH).messages[1].content
    thinking = turn[0]
    assert isinstance(thinking, ThinkingPart) and thinking.text == "let me think"
    assert (thinking.issuer, thinking.signature) == ("anthropic_messages", "sig-a")
    assert [p.id for p in turn if isinstance(p, ToolUsePart)] == ["toolu_1", "toolu_2"]
