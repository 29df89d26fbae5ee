"""Tests for the HTTPS upstream emulator (tests/emulator.py), talking to it directly."""

from __future__ import annotations

import copy
import json
import re
import ssl
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests import emulator_checks
from tests.emulator import (
    DEFAULT_REPLY,
    Emulator,
    Hit,
    detect_protocol,
    expected_usage,
    fixture_names,
    input_tokens_for,
    load_fixture,
    output_tokens_for,
    split_events,
    split_text,
)
from tests.emulator_checks import check_request

FIXTURES = fixture_names()
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
GEMINI = "/v1beta/models/gemini-test:generateContent"
GEMINI_STREAM = "/v1beta/models/gemini-test:streamGenerateContent"
ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


def body(path: str, **fields: Any) -> dict[str, Any]:
    """A minimal valid request body for the protocol of ``path``, with ``fields`` added."""
    if path.split("?")[0].endswith("/chat/completions"):
        base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    elif path.split("?")[0].endswith("/responses"):
        base = {"model": "m", "input": "hi"}
    elif path.split("?")[0].endswith("/messages"):
        base = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    else:
        base = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    return {**base, **fields}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _clean(emu: Emulator) -> None:
    emu.reset()


@pytest.fixture(scope="module")
def tls(emu: Emulator) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=emu.ca_path)


@pytest.fixture
def http(tls: ssl.SSLContext) -> Iterator[httpx2.Client]:
    with httpx2.Client(verify=tls, timeout=10, headers=ANTHROPIC_VERSION) as client:
        yield client


def _only_hit(emu: Emulator) -> Hit:
    hits = emu.hits
    assert len(hits) == 1, hits
    return hits[0]


def _sse_data(raw: bytes) -> list[Any]:
    """The JSON payloads of an SSE body (``[DONE]`` kept as a string)."""
    out: list[Any] = []
    for event in split_events(raw.decode()):
        for line in event.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --------------------------------------------------------------------------- basics


def test_attributes_and_certificate(emu: Emulator, http: httpx2.Client) -> None:
    assert emu.url == f"https://127.0.0.1:{emu.port}"
    with open(emu.ca_path) as fh:
        assert fh.read().startswith("-----BEGIN CERTIFICATE-----")
    # The leaf also verifies under the DNS name.
    ctx = ssl.create_default_context(cafile=emu.ca_path)
    with httpx2.Client(verify=ctx) as client:
        response = client.post(f"https://localhost:{emu.port}{CHAT}", json=body(CHAT))
    assert response.status_code == 200


def test_start_stop_and_context_manager() -> None:
    emulator = Emulator().start()
    try:
        assert emulator.port > 0
        ctx = ssl.create_default_context(cafile=emulator.ca_path)
        assert httpx2.post(emulator.url + CHAT, json=body(CHAT), verify=ctx).status_code == 200
    finally:
        emulator.stop()
    emulator.stop()  # idempotent
    with pytest.raises(httpx2.TransportError):
        httpx2.post(emulator.url + CHAT, json={}, verify=False, timeout=2)


def test_unknown_path_is_404_json(emu: Emulator, http: httpx2.Client) -> None:
    response = http.post(emu.url + "/v1/nothing-here", json={})
    assert response.status_code == 404
    assert "error" in response.json()
    assert http.get(emu.url + CHAT).status_code == 404


def test_hits_record_requests(emu: Emulator, http: httpx2.Client) -> None:
    body = b'{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}'
    http.post(
        emu.url + CHAT + "?x=1",
        content=body,
        headers={"Content-Type": "application/json", "X-Custom-Thing": "abc"},
    )
    hit = _only_hit(emu)
    assert hit.method == "POST"
    assert hit.path == CHAT + "?x=1"
    assert hit.body == body
    assert hit.json()["model"] == "gpt-test"
    assert hit.headers["x-custom-thing"] == "abc"
    assert hit.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in hit.headers)
    assert len(hit.events_sent) == 1
    emu.reset()
    assert emu.hits == []


def test_split_helpers() -> None:
    assert split_events("a\n\nb\r\n\r\nc") == ["a\n\n", "b\r\n\r\n", "c"]
    assert split_events("") == []
    assert split_text("abcdefg", 3) == ["abc", "de", "fg"]
    assert split_text("ab", 5) == ["a", "b"]
    assert split_text("", 3) == [""]
    assert input_tokens_for(b"x" * 40) == 11
    assert output_tokens_for(DEFAULT_REPLY) == 6
    assert expected_usage(b"x" * 8, "a b").total_tokens == 3 + 3


@pytest.mark.parametrize("stem", FIXTURES)
def test_split_events_is_lossless(stem: str) -> None:
    fixture = load_fixture(stem)
    text = fixture["response"]["body_text"]
    events = split_events(text)
    assert "".join(events) == text
    if fixture["stream"]:
        assert len(events) >= 1
        if fixture["protocol"] == "gemini":
            assert all(event.endswith("\r\n\r\n") for event in events)


# --------------------------------------------------------------------------- fixtures


def test_there_are_48_fixtures() -> None:
    assert len(FIXTURES) == 48


@pytest.mark.parametrize("stem", FIXTURES)
def test_fixture_replay_is_byte_exact(emu: Emulator, http: httpx2.Client, stem: str) -> None:
    fixture = load_fixture(stem)
    url = urlsplit(fixture["request"]["url"])
    path = url.path + (f"?{url.query}" if url.query else "")
    expected = fixture["response"]["body_text"].encode()
    headers = {"x-emulator-fixture": stem}
    sent = fixture["request"]["body"]
    why = check_request(fixture["protocol"], url.path, parse_qs(url.query), ANTHROPIC_VERSION, sent)
    if why is not None:  # a recorded request the provider refused: the emulator refuses it too
        assert "error_400" in stem, why
        sent = body(path)
    with http.stream("POST", emu.url + path, json=sent, headers=headers) as response:
        raw = b"".join(response.iter_raw())
    assert raw == expected
    assert response.status_code == fixture["response"]["status"]
    recorded = fixture["response"]["headers"]
    assert response.headers["content-type"] == recorded["content-type"]
    assert "content-encoding" not in response.headers
    hit = _only_hit(emu)
    if fixture["stream"]:
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        assert len(hit.events_sent) == len(split_events(fixture["response"]["body_text"]))
    else:
        assert response.headers["content-length"] == str(len(expected))
        assert len(hit.events_sent) == 1


def test_unknown_fixture_is_an_emulator_error(emu: Emulator, http: httpx2.Client) -> None:
    response = http.post(emu.url + CHAT, json=body(CHAT), headers={"x-emulator-fixture": "nope"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "emulator_error"


# --------------------------------------------------------------------------- delivery controls


def test_pause_and_no_buffering(emu: Emulator, http: httpx2.Client) -> None:
    stem = "anthropic_messages__text_stream"
    events = split_events(load_fixture(stem)["response"]["body_text"])
    headers = {"x-emulator-fixture": stem, "x-emulator-pause-ms": "80"}
    received: list[float] = []
    buffer = b""
    start = time.monotonic()
    with http.stream("POST", emu.url + MESSAGES, json=body(MESSAGES), headers=headers) as response:
        for piece in response.iter_raw():
            buffer += piece
            # Record the arrival time of every event completed by this read.
            while len(received) < len(events) and buffer.startswith(
                "".join(events[: len(received) + 1]).encode()
            ):
                received.append(time.monotonic())
    elapsed = time.monotonic() - start
    assert buffer == "".join(events).encode()
    assert len(received) == len(events)
    sent = _only_hit(emu).events_sent
    assert len(sent) == len(events)
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) >= 0.075
    assert elapsed >= 0.08 * (len(events) - 1)
    # Event k reached the client before the emulator even sent event k+1.
    for k in range(len(events) - 1):
        assert received[k] < sent[k + 1]


def test_reset_after_k_events(emu: Emulator, http: httpx2.Client) -> None:
    stem = "openai_chat__text_stream"
    events = split_events(load_fixture(stem)["response"]["body_text"])
    headers = {"x-emulator-fixture": stem, "x-emulator-reset-after": "3"}
    got = b""
    with (
        pytest.raises(httpx2.TransportError),
        http.stream("POST", emu.url + CHAT, json=body(CHAT), headers=headers) as response,
    ):
        assert response.status_code == 200
        for piece in response.iter_raw():
            got += piece
    assert got == "".join(events[:3]).encode()
    assert len(_only_hit(emu).events_sent) == 3


def test_reset_before_any_event(emu: Emulator, http: httpx2.Client) -> None:
    headers = {"x-emulator-reset-after": "0"}
    with pytest.raises(httpx2.TransportError):
        http.post(emu.url + CHAT, json=body(CHAT), headers=headers)
    # A fresh connection works afterwards.
    assert http.post(emu.url + CHAT, json=body(CHAT)).status_code == 200


def test_gzip_stream_is_decodable_per_event(emu: Emulator, http: httpx2.Client) -> None:
    stem = "gemini__text_stream"
    text = load_fixture(stem)["response"]["body_text"]
    events = split_events(text)
    headers = {"x-emulator-fixture": stem, "x-emulator-gzip": "1", "x-emulator-pause-ms": "40"}
    decoder = zlib.decompressobj(wbits=31)
    decoded_per_read: list[bytes] = []
    with http.stream(
        "POST", emu.url + GEMINI_STREAM + "?alt=sse", json=body(GEMINI), headers=headers
    ) as response:
        assert response.headers["content-encoding"] == "gzip"
        for piece in response.iter_raw():
            decoded_per_read.append(decoder.decompress(piece))
    decoded = b"".join(decoded_per_read) + decoder.flush()
    assert decoded == text.encode()
    assert decoder.eof
    # Thanks to the pause every event arrives in its own read, fully decodable on arrival.
    non_empty = [d for d in decoded_per_read if d]
    assert non_empty[: len(events)] == [e.encode() for e in events]
    # And the client's own decoding agrees.
    with http.stream(
        "POST", emu.url + GEMINI_STREAM, json=body(GEMINI), headers=headers
    ) as response:
        assert b"".join(response.iter_bytes()) == text.encode()


def test_gzip_buffered(emu: Emulator, http: httpx2.Client) -> None:
    headers = {"x-emulator-gzip": "1"}
    response = http.post(emu.url + MESSAGES, json=body(MESSAGES), headers=headers)
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["content"][0]["text"] == DEFAULT_REPLY
    assert int(response.headers["content-length"]) < len(response.content)


def test_200_concurrent_requests(emu: Emulator, tls: ssl.SSLContext) -> None:
    limits = httpx2.Limits(max_connections=250, max_keepalive_connections=250)
    headers = {"x-emulator-pause-ms": "100", "x-emulator-chunks": "2"}

    def one(i: int) -> bytes:
        sent = body(CHAT, model=f"m{i}", stream=True)
        with client.stream("POST", emu.url + CHAT, json=sent, headers=headers) as response:
            assert response.status_code == 200
            return b"".join(response.iter_raw())

    with httpx2.Client(verify=tls, limits=limits, timeout=30) as client:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=200) as pool:
            bodies = list(pool.map(one, range(200)))
        elapsed = time.monotonic() - start
    assert all(body.endswith(b"data: [DONE]\n\n") for body in bodies)
    assert len(emu.hits) == 200
    # Each stream pauses 4 x 100 ms; serialised handling would take 80 s.
    assert elapsed < 20


# --------------------------------------------------------------------------- synthetic wire formats


def test_chat_stream_usage_only_with_include_usage(emu: Emulator, http: httpx2.Client) -> None:
    sent = body(CHAT, stream=True)
    chunks = _sse_data(http.post(emu.url + CHAT, json=sent).content)
    assert chunks[-1] == "[DONE]"
    assert all("usage" not in c and c["choices"] for c in chunks[:-1])

    sent["stream_options"] = {"include_usage": True}
    chunks = _sse_data(http.post(emu.url + CHAT, json=sent).content)
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    hit = emu.hits[-1]
    assert usage_chunk["usage"]["prompt_tokens"] == input_tokens_for(hit.body)
    assert usage_chunk["usage"]["completion_tokens"] == output_tokens_for(DEFAULT_REPLY)


def test_no_usage(emu: Emulator, http: httpx2.Client) -> None:
    headers = {"x-emulator-no-usage": "1"}
    chat = http.post(emu.url + CHAT, json=body(CHAT), headers=headers).json()
    assert "usage" not in chat
    stream = body(CHAT, stream=True, stream_options={"include_usage": True})
    chunks = _sse_data(http.post(emu.url + CHAT, json=stream, headers=headers).content)
    assert all(c == "[DONE]" or (c["choices"] and c.get("usage") is None) for c in chunks)

    responses = http.post(emu.url + RESPONSES, json={"model": "m"}, headers=headers).json()
    assert responses["usage"] is None
    events = _sse_data(
        http.post(emu.url + RESPONSES, json={"model": "m", "stream": True}, headers=headers).content
    )
    assert events[-1]["response"]["usage"] is None

    message = http.post(emu.url + MESSAGES, json=body(MESSAGES), headers=headers).json()
    assert "usage" not in message
    events = _sse_data(
        http.post(emu.url + MESSAGES, json=body(MESSAGES, stream=True), headers=headers).content
    )
    assert all("usage" not in e and "usage" not in e.get("message", {}) for e in events)

    gemini = http.post(emu.url + GEMINI, json=body(GEMINI), headers=headers).json()
    assert "usageMetadata" not in gemini
    events = _sse_data(
        http.post(emu.url + GEMINI_STREAM + "?alt=sse", json=body(GEMINI), headers=headers).content
    )
    assert events and all("usageMetadata" not in e for e in events)


def test_responses_stream_event_sequence(emu: Emulator, http: httpx2.Client) -> None:
    raw = http.post(
        emu.url + RESPONSES,
        json={"model": "gpt-test", "stream": True},
        headers={"x-emulator-chunks": "2"},
    ).content.decode()
    events = split_events(raw)
    names = [e.split("\n", 1)[0].removeprefix("event: ") for e in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    payloads = _sse_data(raw.encode())
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads] == names


def test_anthropic_stream_event_sequence(emu: Emulator, http: httpx2.Client) -> None:
    raw = http.post(emu.url + MESSAGES + "?beta=true", json=body(MESSAGES, stream=True)).content
    payloads = _sse_data(raw)
    assert [p["type"] for p in payloads] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    usage = expected_usage(_only_hit(emu).body)
    assert payloads[0]["message"]["usage"]["input_tokens"] == usage.input_tokens
    assert payloads[0]["message"]["usage"]["output_tokens"] == 1
    assert payloads[-2]["usage"]["output_tokens"] == usage.output_tokens
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn"


def test_gemini_stream_formats(emu: Emulator, http: httpx2.Client) -> None:
    sse = http.post(emu.url + GEMINI_STREAM + "?alt=sse", json=body(GEMINI))
    assert sse.headers["content-type"].startswith("text/event-stream")
    events = split_events(sse.text)
    assert len(events) == 3
    assert all(e.startswith("data: {") and e.endswith("}\r\n\r\n") for e in events)

    array = http.post(emu.url + GEMINI_STREAM, json=body(GEMINI))
    assert array.headers["content-type"].startswith("application/json")
    assert array.text.startswith("[{") and array.text.endswith("}\n]")
    assert "\n,\r\n{" in array.text
    items = array.json()
    assert len(items) == 3
    assert "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in items) == (
        DEFAULT_REPLY
    )
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert items[-1]["modelVersion"] == "gemini-test"
    assert len(emu.hits[-1].events_sent) == 3


def test_custom_reply_and_chunks(emu: Emulator, http: httpx2.Client) -> None:
    text = "Line one\nline two — ünïcode"
    headers = {"x-emulator-reply": quote(text), "x-emulator-chunks": "5"}
    chunks = _sse_data(
        http.post(emu.url + CHAT, json=body(CHAT, stream=True), headers=headers).content
    )
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert len(deltas) == 5
    assert "".join(deltas) == text
    buffered = http.post(emu.url + MESSAGES, json=body(MESSAGES), headers=headers).json()
    assert buffered["content"][0]["text"] == text
    assert buffered["usage"]["output_tokens"] == output_tokens_for(text) == 7


def test_invalid_json_body_is_400(emu: Emulator, http: httpx2.Client) -> None:
    response = http.post(emu.url + MESSAGES, content=b"{not json")
    assert response.status_code == 400
    assert response.json()["type"] == "error"


@pytest.mark.parametrize(
    ("path", "check"),
    [
        (CHAT, lambda b: b["error"]["type"] == "requests"),
        (RESPONSES, lambda b: b["error"]["code"] == "rate_limit_exceeded"),
        (MESSAGES, lambda b: b["type"] == "error" and b["error"]["type"] == "rate_limit_error"),
        (GEMINI, lambda b: b["error"]["status"] == "RESOURCE_EXHAUSTED"),
        (GEMINI_STREAM + "?alt=sse", lambda b: b["error"]["code"] == 429),
    ],
)
def test_status_error_shapes(emu: Emulator, http: httpx2.Client, path: str, check: Any) -> None:
    sent = body(path) if "/models/" in path else body(path, stream=True)  # Gemini: by path
    response = http.post(emu.url + path, json=sent, headers={"x-emulator-status": "429"})
    assert response.status_code == 429
    assert check(response.json())


# --------------------------------------------------------------------------- official SDKs


def _openai(emu: Emulator, tls: ssl.SSLContext, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="x",
        base_url=emu.url + "/v1",
        http_client=httpx2.Client(verify=tls),
        max_retries=0,
        default_headers=headers,
    )


def _anthropic(emu: Emulator, tls: ssl.SSLContext, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="x",
        base_url=emu.url,
        http_client=httpx2.Client(verify=tls),
        max_retries=0,
        default_headers=headers,
    )


def _genai(emu: Emulator, tls: ssl.SSLContext, **headers: str) -> genai.Client:
    return genai.Client(
        api_key="x",
        http_options=genai_types.HttpOptions(
            base_url=emu.url,
            httpx_client=httpx2.Client(verify=tls),
            headers=headers,
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )


MSGS: Any = [{"role": "user", "content": "Say hello"}]


def test_openai_chat_sdk(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _openai(emu, tls)
    completion = client.chat.completions.create(model="gpt-test", messages=MSGS)
    assert completion.model == "gpt-test"
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    usage = expected_usage(emu.hits[-1].body)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == usage.input_tokens
    assert completion.usage.completion_tokens == usage.output_tokens
    assert completion.usage.total_tokens == usage.total_tokens

    stream = client.chat.completions.create(
        model="gpt-test", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT_REPLY
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == input_tokens_for(emu.hits[-1].body)

    with client.chat.completions.stream(model="gpt-test", messages=MSGS) as helper:
        final = helper.get_final_completion()
    assert final.choices[0].message.content == DEFAULT_REPLY


def test_openai_responses_sdk(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _openai(emu, tls)
    response = client.responses.create(model="gpt-test", input="Say hello")
    assert response.output_text == DEFAULT_REPLY
    assert response.model == "gpt-test"
    usage = expected_usage(emu.hits[-1].body)
    assert response.usage is not None
    assert response.usage.input_tokens == usage.input_tokens
    assert response.usage.output_tokens == usage.output_tokens

    deltas = []
    completed = None
    for event in client.responses.create(model="gpt-test", input="Say hello", stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    assert "".join(deltas) == DEFAULT_REPLY
    assert completed is not None and completed.usage is not None
    assert completed.usage.output_tokens == usage.output_tokens

    with client.responses.stream(model="gpt-test", input="Say hello") as helper:
        final = helper.get_final_response()
    assert final.output_text == DEFAULT_REPLY
    assert final.usage is not None
    assert final.usage.input_tokens == input_tokens_for(emu.hits[-1].body)


def test_anthropic_sdk(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _anthropic(emu, tls)
    message = client.messages.create(model="claude-test", max_tokens=100, messages=MSGS)
    assert message.model == "claude-test"
    assert message.content[0].type == "text"
    assert message.content[0].text == DEFAULT_REPLY
    assert message.stop_reason == "end_turn"
    usage = expected_usage(emu.hits[-1].body)
    assert message.usage.input_tokens == usage.input_tokens
    assert message.usage.output_tokens == usage.output_tokens

    with client.messages.stream(model="claude-test", max_tokens=100, messages=MSGS) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT_REPLY
    assert final.usage.output_tokens == usage.output_tokens
    assert final.usage.input_tokens == input_tokens_for(emu.hits[-1].body)
    assert final.stop_reason == "end_turn"


def test_genai_sdk(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _genai(emu, tls)
    response = client.models.generate_content(model="gemini-test", contents="Say hello")
    assert response.text == DEFAULT_REPLY
    assert response.model_version == "gemini-test"
    hit = emu.hits[-1]
    assert hit.path.endswith("/models/gemini-test:generateContent")
    usage = expected_usage(hit.body)
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == usage.input_tokens
    assert response.usage_metadata.candidates_token_count == usage.output_tokens
    assert response.usage_metadata.total_token_count == usage.total_tokens

    chunks = list(client.models.generate_content_stream(model="gemini-test", contents="Say hello"))
    assert "".join(c.text or "" for c in chunks) == DEFAULT_REPLY
    assert len(chunks) == 3
    hit = emu.hits[-1]
    assert hit.path.endswith("/models/gemini-test:streamGenerateContent?alt=sse")
    last = chunks[-1].usage_metadata
    assert last is not None
    assert last.candidates_token_count == output_tokens_for(DEFAULT_REPLY)
    assert last.prompt_token_count == input_tokens_for(hit.body)


def test_sdks_parse_fixture_streams(emu: Emulator, tls: ssl.SSLContext) -> None:
    chat = _openai(emu, tls, **{"x-emulator-fixture": "openai_chat__text_stream"})
    text = "".join(
        c.choices[0].delta.content or ""
        for c in chat.chat.completions.create(model="m", messages=MSGS, stream=True)
        if c.choices
    )
    assert text == "The capital of Mexico is Mexico City."
    claude = _anthropic(emu, tls, **{"x-emulator-fixture": "anthropic_messages__text_stream"})
    with claude.messages.stream(model="m", max_tokens=10, messages=MSGS) as stream:
        assert stream.get_final_message().usage.output_tokens == 5
    gemini = _genai(emu, tls, **{"x-emulator-fixture": "gemini__text_stream"})
    chunks = gemini.models.generate_content_stream(model="gemini-2.0-flash-exp", contents="x")
    assert "".join(c.text or "" for c in chunks) == "The capital of France is Paris.\n"


def test_sdk_errors(emu: Emulator, tls: ssl.SSLContext) -> None:
    with pytest.raises(openai.RateLimitError):
        _openai(emu, tls, **{"x-emulator-status": "429"}).chat.completions.create(
            model="m", messages=MSGS
        )
    with pytest.raises(openai.InternalServerError):
        _openai(emu, tls, **{"x-emulator-status": "500"}).responses.create(model="m", input="x")
    with pytest.raises(anthropic.RateLimitError) as caught:
        _anthropic(emu, tls, **{"x-emulator-status": "429"}).messages.create(
            model="m", max_tokens=5, messages=MSGS
        )
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(genai_errors.ClientError) as gcaught:
        _genai(emu, tls, **{"x-emulator-status": "429"}).models.generate_content(
            model="gemini-test", contents="x"
        )
    assert gcaught.value.code == 429
    assert gcaught.value.status == "RESOURCE_EXHAUSTED"


# ---------------------------------------------------------------- Responses over WebSocket

WS_RESPONSES = "/v1/responses"
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 3,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def _ws(
    emu: Emulator, tls: ssl.SSLContext, path: str = WS_RESPONSES, **headers: str
) -> ClientConnection:
    return ws_connect(
        emu.url.replace("https://", "wss://") + path,
        ssl=tls,
        proxy=None,
        additional_headers={"authorization": "Bearer sk-ws-test", **headers},
        open_timeout=10,
    )


def _create(ws: ClientConnection, **fields: Any) -> list[dict[str, Any]]:
    """Send one response.create and read its events up to the terminal one."""
    ws.send(json.dumps({"type": "response.create", "model": "gpt-test", "input": "hi", **fields}))
    return _events(ws)


def _events(ws: ClientConnection) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        raw = ws.recv(timeout=10)
        assert isinstance(raw, str), "every event is a text message"
        events.append(json.loads(raw))
        if events[-1]["type"] in ("response.completed", "error"):
            return events


def test_ws_response_create_streams_the_responses_events(
    emu: Emulator, tls: ssl.SSLContext
) -> None:
    with _ws(emu, tls) as ws:
        events = _create(ws, input=[{"role": "user", "content": "Say hello"}])
    assert [e["type"] for e in events] == TEXT_EVENTS
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == DEFAULT_REPLY
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["model"] == "gpt-test"
    assert final["output"][0]["content"][0]["text"] == DEFAULT_REPLY

    hit = _only_hit(emu)
    assert hit.websocket and hit.transport == "websocket" and hit.error is None
    assert (hit.method, hit.path) == ("GET", WS_RESPONSES)
    assert hit.headers["authorization"] == "Bearer sk-ws-test"
    assert hit.json()["type"] == "response.create"
    usage = expected_usage(hit.body)
    assert final["usage"]["input_tokens"] == usage.input_tokens
    assert final["usage"]["output_tokens"] == usage.output_tokens
    assert final["usage"]["total_tokens"] == usage.total_tokens
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert len(hit.events_sent) == len(events)

    (handshake,) = emu.handshakes
    assert handshake.status == 101 and handshake.connection == hit.connection
    assert handshake.extensions.startswith("permessage-deflate")  # the client offered it


def test_ws_and_sse_carry_the_same_events(
    emu: Emulator, tls: ssl.SSLContext, http: httpx2.Client
) -> None:
    body = {"model": "gpt-test", "input": "hi", "stream": True}
    sse = _sse_data(http.post(emu.url + RESPONSES, json=body).content)
    with _ws(emu, tls) as ws:
        ws_events = _create(ws, stream=True)

    def shape(event: dict[str, Any]) -> Any:
        # Ids and timestamps differ per reply, and usage with the request's size.
        text = re.sub(r"emu\d{8}", "emuN", json.dumps(event, sort_keys=True))
        text = re.sub(r'"(created_at|completed_at)": \d+', r'"\1": 0', text)
        return re.sub(r'"(input|output|total)_tokens": \d+', r'"\1_tokens": 0', text)

    assert [shape(e) for e in ws_events] == [shape(e) for e in sse]


def test_ws_many_messages_on_one_connection(emu: Emulator, tls: ssl.SSLContext) -> None:
    with _ws(emu, tls) as ws:
        first = _create(ws)
        second = _create(ws, previous_response_id=first[-1]["response"]["id"], input=[])
        with _ws(emu, tls) as other:
            _create(other)
    assert second[-1]["response"]["previous_response_id"] == first[-1]["response"]["id"]
    hits = emu.hits
    assert hits[0].connection == hits[1].connection != hits[2].connection
    assert [h.status for h in emu.handshakes] == [101, 101]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (b"not json", None),
        (json.dumps(["a", "list"]), None),
        (json.dumps({"type": "response.cancel", "model": "m", "input": "x"}), "type"),
        (json.dumps({"model": "m", "input": "x"}), "type"),
        (json.dumps({"type": "response.create", "input": "x"}), "model"),
        (json.dumps({"type": "response.create", "model": 4, "input": "x"}), "model"),
        (json.dumps({"type": "response.create", "model": "m"}), "input"),
        (json.dumps({"type": "response.create", "model": "m", "input": {"a": 1}}), "input"),
    ],
)
def test_ws_rejects_what_is_not_a_response_create(
    emu: Emulator, tls: ssl.SSLContext, message: str | bytes, param: str | None
) -> None:
    with _ws(emu, tls) as ws:
        ws.send(message)
        (error,) = _events(ws)
        assert error["type"] == "error" and error["status"] == 400
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["param"] == param
        # The connection stays usable.
        assert _create(ws)[-1]["type"] == "response.completed"
    rejected, accepted = emu.hits
    assert rejected.websocket and rejected.error and accepted.error is None
    assert rejected.body == (message if isinstance(message, bytes) else message.encode())


def test_ws_controls_come_from_the_handshake(emu: Emulator, tls: ssl.SSLContext) -> None:
    reply = "Über WebSocket, 100%"
    with _ws(emu, tls, **{"x-emulator-reply": quote(reply), "x-emulator-chunks": "2"}) as ws:
        events = _create(ws)
        again = _create(ws)  # the controls hold for every message of the connection
    for stream in (events, again):
        deltas = [e["delta"] for e in stream if e["type"] == "response.output_text.delta"]
        assert len(deltas) == 2 and "".join(deltas) == reply
    hit = emu.hits[0]
    assert events[-1]["response"]["usage"]["output_tokens"] == output_tokens_for(reply)
    assert events[-1]["response"]["usage"]["input_tokens"] == input_tokens_for(hit.body)

    ref = emu.register_reply("a registered reply")
    with _ws(emu, tls, **{"x-emulator-reply-ref": ref}) as ws:
        final = _create(ws)[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "a registered reply"

    with _ws(emu, tls, **{"x-emulator-no-usage": "1"}) as ws:
        assert _create(ws)[-1]["response"]["usage"] is None


@pytest.mark.parametrize(
    ("status", "etype", "code"),
    [
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
        (401, "invalid_request_error", "invalid_api_key"),
    ],
)
def test_ws_upstream_error_event(
    emu: Emulator, tls: ssl.SSLContext, status: int, etype: str, code: str | None
) -> None:
    with _ws(emu, tls, **{"x-emulator-status": str(status)}) as ws:
        (error,) = _create(ws)
    assert error == {
        "type": "error",
        "status": status,
        "error": {
            "type": etype,
            "code": code,
            "message": f"Emulated error {status}",
            "param": None,
        },
    }
    assert _only_hit(emu).error is None  # a valid message, answered with an error on purpose


def test_ws_tool_call_then_text(emu: Emulator, tls: ssl.SSLContext) -> None:
    args = '{"cmd": "echo 50% done"}'
    headers = {"x-emulator-tool-call": "exec_command", "x-emulator-tool-args": quote(args)}
    with _ws(emu, tls, **headers) as ws:
        call_events = _create(ws)
        item = call_events[-1]["response"]["output"][0]
        output = {"type": "function_call_output", "call_id": item["call_id"], "output": "ok"}
        answer = _create(ws, input=[output])
    assert [e["type"] for e in call_events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert item["type"] == "function_call" and item["status"] == "completed"
    assert (item["name"], item["arguments"]) == ("exec_command", args)
    deltas = [e["delta"] for e in call_events if e["type"].endswith("arguments.delta")]
    assert "".join(deltas) == args
    first_hit, second_hit = emu.hits
    usage = call_events[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == expected_usage(first_hit.body, args)
    # With the tool's output in the input, the model answers in text.
    assert [e["type"] for e in answer] == TEXT_EVENTS
    assert answer[-1]["response"]["output"][0]["content"][0]["text"] == DEFAULT_REPLY
    assert answer[-1]["response"]["usage"]["output_tokens"] == output_tokens_for(DEFAULT_REPLY)
    assert second_hit.json()["input"][0]["type"] == "function_call_output"


def test_ws_warmup_has_no_output(emu: Emulator, tls: ssl.SSLContext) -> None:
    with _ws(emu, tls) as ws:
        events = _create(ws, generate=False)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["output"] == []
    assert final["usage"]["output_tokens"] == 0
    assert final["usage"]["input_tokens"] == input_tokens_for(_only_hit(emu).body)


def test_ws_refused_upgrade(emu: Emulator, tls: ssl.SSLContext) -> None:
    with pytest.raises(InvalidStatus) as caught:
        _ws(emu, tls, **{"x-emulator-ws-reject": "426"})
    assert caught.value.response.status_code == 426
    assert json.loads(caught.value.response.body or b"{}")["error"]["message"]
    with pytest.raises(InvalidStatus) as caught:
        _ws(emu, tls, path="/v1/chat/completions")
    assert caught.value.response.status_code == 404
    assert [h.status for h in emu.handshakes] == [426, 404]
    assert all(h.connection is None for h in emu.handshakes)
    assert emu.hits == []


def test_ws_deflate_can_be_declined(emu: Emulator, tls: ssl.SSLContext) -> None:
    with _ws(emu, tls, **{"x-emulator-ws-deflate": "0"}) as ws:
        assert _create(ws)[-1]["type"] == "response.completed"
    assert emu.handshakes[0].extensions == ""
    with ws_connect(
        emu.url.replace("https://", "wss://") + WS_RESPONSES, ssl=tls, proxy=None, compression=None
    ) as ws:
        assert _create(ws)[-1]["type"] == "response.completed"
    assert emu.handshakes[1].extensions == ""


def test_ws_reset_after_k_events(emu: Emulator, tls: ssl.SSLContext) -> None:
    with _ws(emu, tls, **{"x-emulator-reset-after": "2", "x-emulator-pause-ms": "20"}) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "gpt-test", "input": "hi"}))
        received = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert [e["type"] for e in received] == TEXT_EVENTS[:2]
    hit = _only_hit(emu)
    assert len(hit.events_sent) == 2
    assert hit.events_sent[1] - hit.events_sent[0] >= 0.015


def test_ws_fixture_replay(emu: Emulator, tls: ssl.SSLContext) -> None:
    stem = "openai_responses__text_stream"
    expected = _sse_data(load_fixture(stem)["response"]["body_text"].encode())
    with _ws(emu, tls, **{"x-emulator-fixture": stem}) as ws:
        assert _create(ws) == expected


def test_default_controls_apply_until_reset(
    emu: Emulator, tls: ssl.SSLContext, http: httpx2.Client
) -> None:
    emu.set_default_controls({"X-Emulator-Reply": "from the defaults", "x-emulator-chunks": "1"})
    with _ws(emu, tls) as ws:
        (delta,) = [e for e in _create(ws) if e["type"] == "response.output_text.delta"]
    assert delta["delta"] == "from the defaults"
    response = http.post(emu.url + RESPONSES, json={"model": "m", "input": "x"})
    assert response.json()["output"][0]["content"][0]["text"] == "from the defaults"
    # A request's own header wins over the default.
    response = http.post(
        emu.url + RESPONSES, json={"model": "m", "input": "x"}, headers={"x-emulator-reply": "own"}
    )
    assert response.json()["output"][0]["content"][0]["text"] == "own"
    emu.reset()
    assert emu.hits == [] and emu.handshakes == []
    response = http.post(emu.url + RESPONSES, json={"model": "m", "input": "x"})
    assert response.json()["output"][0]["content"][0]["text"] == DEFAULT_REPLY


def test_responses_tool_call_over_http(emu: Emulator, tls: ssl.SSLContext) -> None:
    args = '{"city": "Paris"}'
    client = _openai(
        emu, tls, **{"x-emulator-tool-call": "get_weather", "x-emulator-tool-args": quote(args)}
    )
    response = client.responses.create(model="gpt-test", input="Weather?")
    (call,) = response.output
    assert call.type == "function_call"
    assert (call.name, call.arguments) == ("get_weather", args)
    assert response.usage is not None
    assert response.usage.output_tokens == output_tokens_for(args)

    with client.responses.stream(model="gpt-test", input="Weather?") as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == args

    followup = [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
    answer = client.responses.create(model="gpt-test", input=followup)  # type: ignore[arg-type]
    assert answer.output_text == DEFAULT_REPLY


# The SDK's own use of websockets' sync client warns; not the emulator's concern.
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
def test_openai_sdk_websocket(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _openai(emu, tls)
    options: Any = {"ssl": tls, "proxy": None}
    with client.responses.connect(websocket_connection_options=options) as connection:
        connection.response.create(model="gpt-test", input="Say hello")
        deltas = []
        for event in connection:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                completed = event.response
                break
    assert "".join(deltas) == DEFAULT_REPLY
    assert completed.usage is not None
    assert completed.usage.output_tokens == output_tokens_for(DEFAULT_REPLY)
    hit = _only_hit(emu)
    assert hit.websocket and hit.headers["authorization"] == "Bearer x"
    assert completed.usage.input_tokens == input_tokens_for(hit.body)


# --------------------------------------------------------------------------- request checks

PATHS = {
    "openai_chat": CHAT,
    "openai_responses": RESPONSES,
    "anthropic_messages": MESSAGES,
    "gemini": GEMINI,
}
PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)


def _check(protocol: str, request: Any, path: str | None = None, **headers: str) -> str | None:
    url = urlsplit(path or PATHS[protocol])
    return check_request(
        protocol, url.path, parse_qs(url.query), {**ANTHROPIC_VERSION, **headers}, request
    )


# Valid multi-turn conversations with tools, shaped as the SDKs send them.
VALID_CHAT: Any = {
    "model": "gpt-4o",
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Really."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "assistant", "content": "Sunny at noon."},
        {"role": "user", "content": "Thanks"},
    ],
    "tools": [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_time"}},
    ],
    "tool_choice": "auto",
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_completion_tokens": 100,
}  # fmt: skip
VALID_ANTHROPIC: Any = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Call it.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "abc"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": True,
                 "content": [{"type": "text", "text": "no clock"}]},
                {"type": "text", "text": "And?"},
            ],
        },
        {"role": "assistant", "content": "It is"},
    ],
    "tools": [
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}},
        {"name": "get_time", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search"},
    ],
    "tool_choice": {"type": "auto"},
    "temperature": 1,
    "stream": True,
}  # fmt: skip
VALID_GEMINI: Any = {
    "contents": [
        {"role": "user", "parts": [
            {"text": "Weather?"}, {"inline_data": {"mime_type": "image/png", "data": PNG}}]},
        {"role": "model", "parts": [
            {"text": "thinking", "thought": True},
            {"functionCall": {"id": "fc_1", "name": "get_weather", "args": {"city": "Paris"}},
             "thoughtSignature": "c2ln"},
            {"function_call": {"name": "get_time", "args": {}}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"id": "fc_1", "name": "get_weather",
                                  "response": {"result": "sunny"}}},
            {"function_response": {"name": "get_time", "response": {"output": "noon"}}},
        ]},
        {"role": "model", "parts": [{"text": "Sunny at noon."}]},
        {"parts": [{"text": "Thanks"}]},
    ],
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "tools": [{"functionDeclarations": [
        {"name": "get_weather", "parametersJsonSchema": {"type": "object"}},
        {"name": "get_time", "parameters": {"type": "OBJECT"}},
    ]}, {"googleSearch": {}}],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    "generation_config": {"temperature": 0.5, "maxOutputTokens": 100,
                          "thinkingConfig": {"includeThoughts": True}},
}  # fmt: skip
VALID_RESPONSES: Any = {
    "model": "gpt-5",
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": "Weather?"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Now"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "enc"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ],
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
              {"type": "web_search"}],
    "stream": True,
}  # fmt: skip
VALID = {
    "openai_chat": VALID_CHAT,
    "anthropic_messages": VALID_ANTHROPIC,
    "gemini": VALID_GEMINI,
    "openai_responses": VALID_RESPONSES,
}


@pytest.mark.parametrize("protocol", sorted(VALID))
def test_valid_conversations_pass_the_checks(protocol: str) -> None:
    assert _check(protocol, VALID[protocol]) is None


@pytest.mark.parametrize("stem", FIXTURES)
def test_recorded_requests_pass_the_checks_unless_the_provider_refused_them(stem: str) -> None:
    fixture = load_fixture(stem)
    url = urlsplit(fixture["request"]["url"])
    path = url.path + (f"?{url.query}" if url.query else "")
    why = _check(fixture["protocol"], fixture["request"]["body"], path)
    if stem == "openai_responses__error_400_invalid_request":  # temperature -1
        assert why == "temperature must be a number between 0 and 2"
    else:
        assert why is None, why


def _mutate(protocol: str, edit: Callable[[Any], Any]) -> Any:
    request = copy.deepcopy(VALID[protocol])
    edit(request)
    return request


def _msg(request: Any, i: int) -> Any:
    return request["messages"][i]


# (protocol, edit of the valid request, a piece of the expected reason)
VIOLATIONS: list[tuple[str, Callable[[Any], Any], str]] = [
    # Anthropic
    ("anthropic_messages", lambda r: r.pop("max_tokens"), "max_tokens"),
    ("anthropic_messages", lambda r: r.update(max_tokens=0), "max_tokens"),
    ("anthropic_messages", lambda r: r.update(max_tokens="5"), "max_tokens"),
    ("anthropic_messages", lambda r: r.update(messages=[]), "messages"),
    ("anthropic_messages", lambda r: r.pop("model"), "model"),
    ("anthropic_messages", lambda r: _msg(r, 0).update(role="system"), "role"),
    ("anthropic_messages", lambda r: r["messages"].pop(0), "first message"),
    ("anthropic_messages", lambda r: r["messages"].insert(1, {"role": "user", "content": "x"}),
     "alternate"),
    ("anthropic_messages", lambda r: _msg(r, 0).update(content=""), "non-empty content"),
    ("anthropic_messages", lambda r: _msg(r, 0)["content"].append({"type": "video"}),
     "unknown content block type"),
    ("anthropic_messages", lambda r: _msg(r, 0)["content"].append({"type": "text", "text": ""}),
     "non-empty"),
    ("anthropic_messages", lambda r: _msg(r, 0)["content"][1]["source"].update(data="***"),
     "base64"),
    ("anthropic_messages", lambda r: _msg(r, 0)["content"][1]["source"].pop("media_type"),
     "media_type"),
    ("anthropic_messages", lambda r: _msg(r, 1)["content"][3].update(id="call 1"), "pattern"),
    ("anthropic_messages", lambda r: _msg(r, 1)["content"][3].update(input='{"a": 1}'), "input"),
    ("anthropic_messages", lambda r: _msg(r, 1)["content"][3].pop("name"), "name"),
    ("anthropic_messages", lambda r: _msg(r, 2)["content"][0].update(tool_use_id="toolu_99"),
     "unexpected `tool_use_id`"),
    ("anthropic_messages", lambda r: _msg(r, 2)["content"].pop(1), "without `tool_result`"),
    ("anthropic_messages", lambda r: _msg(r, 2)["content"].reverse(), "must come first"),
    ("anthropic_messages", lambda r: _msg(r, 2)["content"][1].update(is_error="yes"), "is_error"),
    ("anthropic_messages",
     lambda r: _msg(r, 2)["content"][1].update(content=[{"type": "tool_use"}]), "may not hold"),
    ("anthropic_messages", lambda r: _msg(r, 1)["content"][0].pop("signature"), "signature"),
    ("anthropic_messages", lambda r: _msg(r, 1)["content"][1].pop("data"), "data"),
    ("anthropic_messages", lambda r: _msg(r, 0)["content"].append(
        {"type": "tool_use", "id": "t", "name": "n", "input": {}}), "assistant messages"),
    ("anthropic_messages", lambda r: r.update(system=[{"type": "image"}]), "system"),
    ("anthropic_messages", lambda r: r.update(system=5), "system"),
    ("anthropic_messages", lambda r: r["tools"][0].pop("input_schema"), "input_schema"),
    ("anthropic_messages", lambda r: r["tools"][0].update(input_schema={"type": "array"}),
     "input_schema.type"),
    ("anthropic_messages", lambda r: r["tools"][1].update(parameters={}, input_schema=None),
     "input_schema"),
    ("anthropic_messages", lambda r: r.update(tool_choice={"type": "required"}), "tool_choice"),
    ("anthropic_messages", lambda r: r.update(temperature=1.5), "temperature"),
    ("anthropic_messages", lambda r: r.update(max_output_tokens=5), "unknown field"),
    ("anthropic_messages", lambda r: r.update(thinking={"type": "enabled", "budget_tokens": 10}),
     "budget_tokens"),
    ("anthropic_messages", lambda r: _msg(r, 0).update(name="bob"), "unknown field"),
    # OpenAI Chat
    ("openai_chat", lambda r: r.pop("model"), "model"),
    ("openai_chat", lambda r: r.update(messages=[]), "messages"),
    ("openai_chat", lambda r: _msg(r, 0).update(role="model"), "role"),
    ("openai_chat", lambda r: _msg(r, 4).update(tool_call_id="call_9"), "role 'tool'"),
    ("openai_chat", lambda r: r["messages"].pop(5), "did not have response messages: call_2"),
    ("openai_chat", lambda r: r.update(messages=r["messages"][:5]),
     "did not have response messages: call_2"),
    ("openai_chat", lambda r: r["messages"].insert(4, {"role": "user", "content": "x"}),
     "did not have response messages"),
    ("openai_chat", lambda r: _msg(r, 3)["tool_calls"][0]["function"].update(arguments={}),
     "must be a string"),
    ("openai_chat",
     lambda r: _msg(r, 3)["tool_calls"][0]["function"].update(arguments="{city: Paris}"),
     "not valid JSON"),
    ("openai_chat", lambda r: _msg(r, 3)["tool_calls"][0].pop("id"), "id"),
    ("openai_chat", lambda r: _msg(r, 3)["tool_calls"][0].update(type="tool"), "type"),
    ("openai_chat", lambda r: _msg(r, 3)["tool_calls"][1].update(id="call_1"), "duplicate"),
    ("openai_chat", lambda r: _msg(r, 3).update(tool_calls=[]), "non-empty"),
    ("openai_chat", lambda r: _msg(r, 6).update(content=None), "content is required"),
    ("openai_chat", lambda r: _msg(r, 2)["content"].append({"type": "image", "url": "x"}),
     "type"),
    ("openai_chat", lambda r: _msg(r, 2)["content"][1]["image_url"].pop("url"), "url"),
    ("openai_chat", lambda r: r["tools"].append({"name": "f", "parameters": {}}), "type"),
    ("openai_chat", lambda r: r["tools"][0]["function"].pop("name"), "name"),
    ("openai_chat", lambda r: r.update(stream=False), "stream_options"),
    ("openai_chat", lambda r: r.update(max_tokens=5), "max_completion_tokens"),
    ("openai_chat", lambda r: r.update(system="Be brief."), "Unrecognized request argument"),
    ("openai_chat", lambda r: r.update(temperature=3), "temperature"),
    ("openai_chat", lambda r: r.update(tool_choice="any"), "tool_choice"),
    # Gemini
    ("gemini", lambda r: r.update(contents=[]), "contents"),
    ("gemini", lambda r: r.pop("contents"), "contents"),
    ("gemini", lambda r: r["contents"][0].update(role="assistant"), "role"),
    ("gemini", lambda r: r["contents"][0].update(parts=[]), "parts"),
    ("gemini", lambda r: r["contents"][3]["parts"][0].update(thought=True, foo=1), "unknown"),
    ("gemini", lambda r: r["contents"][3]["parts"][0].update(functionCall={"name": "f"}),
     "exactly one"),
    ("gemini", lambda r: r["contents"][3]["parts"][0].pop("text"), "exactly one"),
    ("gemini", lambda r: r["contents"][0]["parts"][1]["inline_data"].pop("mime_type"),
     "mimeType"),
    ("gemini", lambda r: r["contents"][0]["parts"][1]["inline_data"].update(data="*"), "base64"),
    ("gemini", lambda r: r["contents"][0]["parts"].append({"fileData": {}}), "fileUri"),
    ("gemini", lambda r: r["contents"][1]["parts"][1]["functionCall"].update(args="{}"), "args"),
    ("gemini", lambda r: r["contents"][2]["parts"][0]["functionResponse"].update(response="ok"),
     "response"),
    ("gemini", lambda r: r["contents"][2]["parts"][0]["functionResponse"].update(name="other"),
     "answers no functionCall"),
    ("gemini", lambda r: r["contents"][2]["parts"].pop(), "number of function response parts"),
    ("gemini", lambda r: r["contents"].pop(1), "immediately after a function call turn"),
    ("gemini", lambda r: r["contents"][2].update(role="model"), "functionResponse"),
    ("gemini", lambda r: r["systemInstruction"].pop("parts"), "systemInstruction.parts"),
    ("gemini", lambda r: r["tools"][0]["functionDeclarations"][0].update(parameters={}),
     "at most one"),
    ("gemini", lambda r: r["tools"][0]["functionDeclarations"][0].pop("name"), "name"),
    ("gemini", lambda r: r["generation_config"].update(max_tokens=5), "generationConfig"),
    ("gemini", lambda r: r.update(messages=[]), "Unknown name"),
    # Responses
    ("openai_responses", lambda r: r.pop("model"), "model"),
    ("openai_responses", lambda r: r.update(input=5), "input"),
    ("openai_responses", lambda r: r["input"].append({"type": "tool_result"}), "unknown input"),
    ("openai_responses", lambda r: r["input"][4].pop("call_id"), "call_id"),
    ("openai_responses", lambda r: r["input"][3].update(arguments={}), "arguments"),
    ("openai_responses", lambda r: r["input"][0].update(role="tool"), "role"),
    ("openai_responses", lambda r: r["tools"].append({"name": "f"}), "type"),
]  # fmt: skip


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules existing end-to-end tests still break, switched on."""
    monkeypatch.setattr(emulator_checks, "REQUIRE_ANTHROPIC_VERSION", True)
    monkeypatch.setattr(emulator_checks, "ALLOW_EMPTY_CHAT_MESSAGES", False)


@pytest.mark.parametrize(
    ("protocol", "edit", "reason"),
    VIOLATIONS,
    ids=[f"{p}-{n}" for n, (p, _, _) in enumerate(VIOLATIONS)],
)
def test_each_rule_violation_is_caught(
    strict: None, protocol: str, edit: Callable[[Any], Any], reason: str
) -> None:
    why = _check(protocol, _mutate(protocol, edit))
    assert why is not None and reason in why, why


def test_request_level_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    def without_version() -> str | None:
        return check_request("anthropic_messages", MESSAGES, {}, {}, VALID_ANTHROPIC)

    # Not required by default (see emulator_checks), but never malformed.
    assert without_version() is None
    assert "non-empty" in (_check("openai_chat", body(CHAT, messages=[])) or "")
    assert "anthropic-version" in (
        _check("anthropic_messages", VALID_ANTHROPIC, **{"anthropic-version": "latest"}) or ""
    )
    monkeypatch.setattr(emulator_checks, "REQUIRE_ANTHROPIC_VERSION", True)
    assert "anthropic-version" in (without_version() or "")
    assert "JSON object" in (_check("openai_chat", ["a list"]) or "")
    assert "no such method" in (_check("gemini", VALID_GEMINI, "/v1beta/gemini-test") or "")
    assert _check("gemini", VALID_GEMINI, "/v1/models/g:streamGenerateContent?alt=sse") is None
    vertex = "/v1beta1/projects/p/locations/global/publishers/google/models/g:generateContent"
    assert _check("gemini", VALID_GEMINI, vertex) is None
    assert "alt" in (_check("gemini", VALID_GEMINI, GEMINI_STREAM + "?alt=xml") or "")
    assert _check("openai_responses", {"model": "m"}) is None  # input is optional


@pytest.mark.parametrize(
    ("path", "sent", "check"),
    [
        (CHAT, {"model": "m"}, lambda b: b["error"]["type"] == "invalid_request_error"),
        (RESPONSES, {"input": "x"}, lambda b: b["error"]["type"] == "invalid_request_error"),
        (MESSAGES, {"model": "m", "messages": MSGS}, lambda b: b["type"] == "error"),
        (GEMINI, {"contents": []}, lambda b: b["error"]["status"] == "INVALID_ARGUMENT"),
    ],
)  # fmt: skip
def test_an_invalid_request_is_a_400_before_any_control(
    emu: Emulator, http: httpx2.Client, path: str, sent: Any, check: Any
) -> None:
    headers = {"x-emulator-status": "429", "x-emulator-fixture": "openai_chat__text_stream"}
    response = http.post(emu.url + path, json=sent, headers=headers)
    assert response.status_code == 400
    payload = response.json()
    assert check(payload)
    hit = _only_hit(emu)
    assert hit.invalid is not None
    assert f"emulator: invalid {detect_protocol(path)} request: {hit.invalid}" in json.dumps(
        payload
    )
    # A valid request records no reason.
    http.post(emu.url + path, json=body(path))
    assert emu.hits[-1].invalid is None


def test_a_recorded_refusal_answers_an_invalid_request(emu: Emulator, http: httpx2.Client) -> None:
    stem = "openai_responses__error_400_invalid_request"
    fixture = load_fixture(stem)
    sent = fixture["request"]["body"]  # temperature -1
    response = http.post(emu.url + RESPONSES, json=sent, headers={"x-emulator-fixture": stem})
    assert response.content == fixture["response"]["body_text"].encode()
    assert _only_hit(emu).invalid == "temperature must be a number between 0 and 2"
    # A fixture of a successful reply does not answer an invalid request.
    headers = {"x-emulator-fixture": "openai_responses__text_nonstream"}
    assert http.post(emu.url + RESPONSES, json=sent, headers=headers).status_code == 400


def test_sdks_see_the_400(emu: Emulator, tls: ssl.SSLContext) -> None:
    bad_history: Any = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{"}}]},
    ]  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="not valid JSON"):
        _openai(emu, tls).chat.completions.create(model="m", messages=MSGS + bad_history)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        _anthropic(emu, tls).messages.create(model="m", max_tokens=0, messages=MSGS)
    with pytest.raises(genai_errors.ClientError) as caught:
        _genai(emu, tls).models.generate_content(
            model="gemini-test",
            contents=[genai_types.Content(role="tool", parts=[genai_types.Part(text="x")])],
        )
    assert caught.value.code == 400 and "role" in str(caught.value.message)
    assert all(hit.invalid for hit in emu.hits)


# ----------------------------------------------------------------- tool calls and thinking

ARGS = '{"city": "Paris", "note": "50% sure"}'
TOOL_HEADERS = {"x-emulator-tool-call": "get_weather", "x-emulator-tool-args": quote(ARGS)}
TWO_TOOLS = {"x-emulator-tool-call": "get_weather, get_time", "x-emulator-tool-args": quote(ARGS)}
CHAT_TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
CLAUDE_TOOLS: Any = [
    {"name": "get_weather", "input_schema": {"type": "object"}},
    {"name": "get_time", "input_schema": {"type": "object"}},
]


def test_chat_tool_calls(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _openai(emu, tls, **TWO_TOOLS)
    completion = client.chat.completions.create(model="m", messages=MSGS, tools=CHAT_TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", ARGS),
        ("get_time", ARGS),
    ]
    assert len({c.id for c in calls}) == 2
    assert completion.usage is not None
    assert completion.usage.completion_tokens == output_tokens_for(f"{ARGS} {ARGS}")

    stream = client.chat.completions.create(
        model="m", messages=MSGS, tools=CHAT_TOOLS, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    fragments = [
        tc.function.arguments
        for c in chunks
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
        if tc.index == 0 and tc.function and tc.function.arguments
    ]
    assert len(fragments) >= 2 and "".join(fragments) == ARGS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    with client.chat.completions.stream(model="m", messages=MSGS, tools=CHAT_TOOLS) as helper:
        final = helper.get_final_completion().choices[0].message
    assert [c.function.arguments for c in final.tool_calls or []] == [ARGS, ARGS]  # type: ignore[union-attr]

    # Answering the calls is a valid follow-up, and gets the text reply.
    followup: Any = [
        *MSGS,
        choice.message.model_dump(exclude_none=True, exclude={"annotations", "refusal"}),
        *({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls),
    ]
    answer = client.chat.completions.create(model="m", messages=followup, tools=CHAT_TOOLS)
    assert answer.choices[0].message.content == DEFAULT_REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert all(hit.invalid is None for hit in emu.hits)


def test_anthropic_tool_use(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _anthropic(emu, tls, **TWO_TOOLS)
    message = client.messages.create(model="m", max_tokens=64, messages=MSGS, tools=CLAUDE_TOOLS)
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("get_weather", json.loads(ARGS))] + [
        ("get_time", json.loads(ARGS))
    ]
    assert len({u.id for u in uses}) == 2
    assert message.usage.output_tokens == output_tokens_for(f"{ARGS} {ARGS}")

    raw = _sse_data(
        httpx2.post(
            emu.url + MESSAGES,
            json={"model": "m", "max_tokens": 64, "messages": MSGS, "stream": True},
            headers={**ANTHROPIC_VERSION, **TWO_TOOLS},
            verify=tls,
        ).content
    )
    starts = [e["content_block"] for e in raw if e["type"] == "content_block_start"]
    assert [s["type"] for s in starts] == ["tool_use", "tool_use"]
    partial = [
        e["delta"]["partial_json"]
        for e in raw
        if e["type"] == "content_block_delta" and e["index"] == 0
    ]
    assert len(partial) >= 2 and "".join(partial) == ARGS
    with client.messages.stream(model="m", max_tokens=64, messages=MSGS) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.input for b in final.content if b.type == "tool_use"] == [json.loads(ARGS)] * 2

    followup: Any = [
        *MSGS,
        {"role": "assistant", "content": [u.model_dump() for u in uses]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": u.id, "content": "sunny"} for u in uses]},
    ]  # fmt: skip
    answer = client.messages.create(model="m", max_tokens=64, messages=followup)
    assert answer.stop_reason == "end_turn" and answer.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
    assert all(hit.invalid is None for hit in emu.hits)


def test_gemini_function_calls(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _genai(emu, tls, **TWO_TOOLS)
    response = client.models.generate_content(model="gemini-test", contents="Weather?")
    calls = response.function_calls or []
    assert [(c.name, c.args) for c in calls] == [
        ("get_weather", json.loads(ARGS)),
        ("get_time", json.loads(ARGS)),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id for c in calls)
    assert response.candidates and response.candidates[0].finish_reason == "STOP"
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == output_tokens_for(f"{ARGS} {ARGS}")

    chunks = list(client.models.generate_content_stream(model="gemini-test", contents="Weather?"))
    assert [[c.name for c in chunk.function_calls or []] for chunk in chunks] == [
        ["get_weather"],
        ["get_time"],
    ]
    array = httpx2.post(
        emu.url + GEMINI_STREAM, json=body(GEMINI), headers=TOOL_HEADERS, verify=tls
    ).json()
    parts = [p for item in array for p in item["candidates"][0]["content"]["parts"]]
    assert [p["functionCall"]["args"] for p in parts] == [json.loads(ARGS)]

    assert response.candidates[0].content is not None
    followup = [
        genai_types.Content(role="user", parts=[genai_types.Part(text="Weather?")]),
        response.candidates[0].content,
        genai_types.Content(
            role="user",
            parts=[
                genai_types.Part.from_function_response(name=c.name or "", response={"r": 1})
                for c in calls
            ],
        ),
    ]
    answer = client.models.generate_content(model="gemini-test", contents=followup)
    assert answer.text == DEFAULT_REPLY
    assert all(hit.invalid is None for hit in emu.hits)


def test_responses_parallel_function_calls(emu: Emulator, tls: ssl.SSLContext) -> None:
    client = _openai(emu, tls, **TWO_TOOLS)
    response = client.responses.create(model="m", input="Weather?")
    calls = [o for o in response.output if o.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", ARGS), ("get_time", ARGS)]
    assert len({c.call_id for c in calls}) == 2 and len({c.id for c in calls}) == 2
    with client.responses.stream(model="m", input="Weather?") as stream:
        final = stream.get_final_response()
    assert [o.arguments for o in final.output if o.type == "function_call"] == [ARGS, ARGS]


THINK = "Let me think about 100% of it."


def test_thinking_in_every_protocol(emu: Emulator, tls: ssl.SSLContext) -> None:
    headers = {"x-emulator-thinking": quote(THINK)}
    usage_words = output_tokens_for(f"{THINK} {DEFAULT_REPLY}")

    chat = _openai(emu, tls, **headers)
    message = chat.chat.completions.create(model="m", messages=MSGS).choices[0].message
    assert message.content == DEFAULT_REPLY
    assert message.model_extra and message.model_extra["reasoning_content"] == THINK
    sent = body(CHAT, stream=True)
    chunks = _sse_data(httpx2.post(emu.url + CHAT, json=sent, headers=headers, verify=tls).content)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    reasoning = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    assert len(reasoning) == 3 and "".join(reasoning) == THINK
    assert deltas.index(next(d for d in deltas if d.get("content"))) > deltas.index(
        next(d for d in deltas if "reasoning_content" in d)
    )

    claude = _anthropic(emu, tls, **headers)
    reply = claude.messages.create(model="m", max_tokens=64, messages=MSGS)
    assert [b.type for b in reply.content] == ["thinking", "text"]
    thinking = reply.content[0]
    assert thinking.type == "thinking" and thinking.thinking == THINK
    assert re.fullmatch(r"sig-\d+", thinking.signature)
    assert reply.usage.output_tokens == usage_words
    with claude.messages.stream(model="m", max_tokens=64, messages=MSGS) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == THINK  # type: ignore[union-attr]
    assert final.content[0].signature.startswith("sig-")  # type: ignore[union-attr]
    assert sum(e.type == "thinking" for e in events) == 3

    gemini = _genai(emu, tls, **headers)
    response = gemini.models.generate_content(model="gemini-test", contents="x")
    assert response.candidates and response.candidates[0].content
    parts = response.candidates[0].content.parts or []
    assert parts[0].thought is True and parts[0].text == THINK and parts[0].thought_signature
    assert response.text == DEFAULT_REPLY
    assert response.usage_metadata is not None
    assert response.usage_metadata.thoughts_token_count == len(THINK.split())
    assert response.usage_metadata.candidates_token_count == usage_words - len(THINK.split())
    streamed = list(gemini.models.generate_content_stream(model="gemini-test", contents="x"))
    thought_text = "".join(
        p.text or ""
        for c in streamed
        for p in (c.candidates[0].content.parts or [])  # type: ignore[index,union-attr]
        if p.thought
    )
    assert thought_text == THINK

    responses = _openai(emu, tls, **headers)
    result = responses.responses.create(model="m", input="x")
    reasoning_item = result.output[0]
    assert reasoning_item.type == "reasoning"
    assert reasoning_item.summary[0].text == THINK and reasoning_item.encrypted_content
    assert result.output_text == DEFAULT_REPLY
    assert result.usage is not None
    assert result.usage.output_tokens_details.reasoning_tokens == len(THINK.split())
    summary: list[str] = []
    with responses.responses.stream(model="m", input="x") as rstream:
        for event in rstream:
            if event.type == "response.reasoning_summary_text.delta":
                summary.append(event.delta)
        rfinal = rstream.get_final_response()
    assert "".join(summary) == THINK and rfinal.output_text == DEFAULT_REPLY


def test_thinking_then_tool_call(emu: Emulator, tls: ssl.SSLContext) -> None:
    headers = {**TOOL_HEADERS, "x-emulator-thinking": "hmm"}
    claude = _anthropic(emu, tls, **headers)
    with claude.messages.stream(model="m", max_tokens=64, messages=MSGS) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "tool_use"]
    # The assistant turn replayed as is (thinking with its signature) is a valid history.
    followup: Any = [
        *MSGS,
        {"role": "assistant", "content": [b.model_dump() for b in final.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": final.content[1].id, "content": "ok"}]},  # type: ignore[union-attr]
    ]  # fmt: skip
    assert claude.messages.create(model="m", max_tokens=64, messages=followup).stop_reason == (
        "end_turn"
    )
    gemini = _genai(emu, tls, **headers)
    chunks = list(gemini.models.generate_content_stream(model="gemini-test", contents="x"))
    parts = [p for c in chunks for p in c.candidates[0].content.parts or []]  # type: ignore[index,union-attr]
    assert [bool(p.thought) for p in parts] == [True] * 3 + [False]
    assert parts[-1].function_call and parts[-1].function_call.name == "get_weather"
    chat = _openai(emu, tls, **headers)
    message = chat.chat.completions.create(model="m", messages=MSGS).choices[0].message
    assert message.model_extra and message.model_extra["reasoning_content"] == "hmm"
    assert message.tool_calls
    assert all(hit.invalid is None for hit in emu.hits)
