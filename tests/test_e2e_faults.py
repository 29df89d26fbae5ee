"""Upstream faults through a running llmgate: every call ends in an answer in the
caller's own format, with its request id, and a row that says what happened.

The faults are real: a closed port, a name that does not resolve, a TLS handshake
with a server that speaks plain HTTP, a listener that accepts and never answers,
and the emulator resetting the connection (TCP RST) or pausing mid-stream.
"""

from __future__ import annotations

import json
import socketserver
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import Emulator
from tests.hostile import REQUEST_ID, Listener, assert_error_format
from tests.proxy import ROOT, Proxy, free_port

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def silent_upstream() -> Iterator[Listener]:
    """Accepts connections, reads what comes, and never answers."""
    with Listener("127.0.0.1") as listener:
        yield listener


class _PlainHttpOnly(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(4096)  # a TLS ClientHello, answered in plain HTTP
        self.request.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")


def _serving(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    """A raw TCP upstream on a free port, each connection answered by `handler`."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def plain_http_upstream() -> Iterator[int]:
    """Where a TLS handshake fails: the server answers a ClientHello in plain HTTP."""
    yield from _serving(_PlainHttpOnly)


class _AlwaysStreams(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            b'data: {"choices": [{"delta": {"content": "unscreened"}}]}\n\n'
        )


@pytest.fixture(scope="module")
def streaming_upstream() -> Iterator[int]:
    """Answers every call, buffered ones too, with an SSE stream."""
    yield from _serving(_AlwaysStreams)


class _Garbled(socketserver.BaseRequestHandler):
    """Answers with bytes that are not HTTP, or with a head that never ends."""

    def handle(self) -> None:
        request = self.request.recv(65536)
        if b"endless-head" not in request:
            self.request.sendall(b"HELLO THIS IS NOT HTTP\r\n\r\n")
            return
        self.request.sendall(b"HTTP/1.1 200 OK\r\nX-Flood: ")
        try:
            while True:  # until llmgate hangs up
                self.request.sendall(b"a" * 65536)
        except OSError:
            pass


@pytest.fixture(scope="module")
def garbled_upstream() -> Iterator[int]:
    yield from _serving(_Garbled)


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory,
    confdir: Path,
    emulator_server: Emulator,
    silent_upstream: Listener,
    plain_http_upstream: int,
    streaming_upstream: int,
    garbled_upstream: int,
) -> Iterator[Proxy]:
    closed_port = free_port()  # nothing listens there
    emu = emulator_server.url
    policies = tmp_path_factory.mktemp("fault-policies")
    (policies / "routes.yaml").write_text(
        textwrap.dedent(
            f"""\
            limits: {{max_request_bytes: 2097152, max_event_bytes: 1048576}}
            routes:
              - {{id: refused, model_pattern: "refused-*", provider: openai,
                 endpoint: "http://127.0.0.1:{closed_port}", api_key_secret: UPSTREAM_OPENAI_KEY,
                 connect_timeout_s: 2}}
              - {{id: nowhere, model_pattern: "nowhere-*", provider: openai,
                 endpoint: "http://llmgate-test-no-such-host.invalid",
                 api_key_secret: UPSTREAM_OPENAI_KEY}}
              - {{id: not-tls, model_pattern: "not-tls-*", provider: openai,
                 endpoint: "https://127.0.0.1:{plain_http_upstream}",
                 api_key_secret: UPSTREAM_OPENAI_KEY}}
              - {{id: silent, model_pattern: "claude-silent*", provider: anthropic,
                 endpoint: "http://127.0.0.1:{silent_upstream.port}",
                 api_key_secret: UPSTREAM_ANTHROPIC_KEY, first_byte_timeout_s: 1}}
              - {{id: sse, model_pattern: "gpt-sse-*", provider: openai,
                 endpoint: "http://127.0.0.1:{streaming_upstream}",
                 api_key_secret: UPSTREAM_OPENAI_KEY}}
              - {{id: garbled, model_pattern: "gpt-garbled-*", provider: openai,
                 endpoint: "http://127.0.0.1:{garbled_upstream}",
                 api_key_secret: UPSTREAM_OPENAI_KEY}}
              - {{id: slow, model_pattern: "claude-slow*", provider: anthropic,
                 endpoint: "http://127.0.0.1:{silent_upstream.port}",
                 api_key_secret: UPSTREAM_ANTHROPIC_KEY, first_byte_timeout_s: 60}}
              - {{id: impatient, model_pattern: "gpt-impatient*", provider: openai,
                 endpoint: "{emu}", api_key_secret: UPSTREAM_OPENAI_KEY, idle_timeout_s: 0.5}}
              - {{id: openai, model_pattern: "gpt-*", provider: openai,
                 endpoint: "{emu}", api_key_secret: UPSTREAM_OPENAI_KEY}}
              - {{id: anthropic, model_pattern: "claude-*", provider: anthropic,
                 endpoint: "{emu}", api_key_secret: UPSTREAM_ANTHROPIC_KEY}}
              - {{id: gemini, model_pattern: "gemini-*", provider: gemini,
                 endpoint: "{emu}", api_key_secret: UPSTREAM_GEMINI_KEY}}
            """
        )
    )
    (policies / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    db = tmp_path_factory.mktemp("fault-ledger") / "audit.db"
    with Proxy(
        policies, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        yield running


def chat(proxy: Proxy, model: str, **headers: str) -> httpx2.Response:
    with proxy.http_client(timeout=30) as client:
        return client.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": model, "messages": HELLO},
            headers={"authorization": f"Bearer {CALLER_KEY}", **headers},
        )


def assert_no_internal_address(response: httpx2.Response, *hidden: str) -> None:
    text = response.content.decode("utf-8", "replace")
    for value in ("127.0.0.1", *hidden):
        assert value not in text, text


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("refused-x", "upstream_unreachable"),
        ("nowhere-x", "upstream_dns_failure"),
        ("not-tls-x", "upstream_tls_error"),
    ],
)
def test_an_unreachable_upstream_is_a_502_in_the_callers_format(
    faulty: Proxy, model: str, reason: str
) -> None:
    response = chat(faulty, model)
    body = assert_error_format("openai", response, 502, reason)
    assert "route '" in body["error"]["message"]
    assert_no_internal_address(response, "llmgate-test-no-such-host")
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 502, reason)
    assert row["error"] == body["error"]["message"]


def test_the_openai_sdk_shows_llmgates_message_for_a_dead_upstream(faulty: Proxy) -> None:
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=faulty.http_client(), max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="refused-x", messages=HELLO)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert "could not reach the upstream of route 'refused'" in str(caught.value)
    assert caught.value.response.headers.get(REQUEST_ID)


def test_an_upstream_silent_past_first_byte_timeout_is_a_504(
    faulty: Proxy, silent_upstream: Listener
) -> None:
    client = anthropic.Anthropic(
        api_key=CALLER_KEY, http_client=faulty.http_client(), max_retries=0
    )
    before = silent_upstream.connections
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="claude-silent", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    waited = time.monotonic() - started
    assert caught.value.status_code == 504
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "first_byte_timeout_s" in caught.value.body["error"]["message"]  # type: ignore[index]
    assert silent_upstream.connections == before + 1  # it did go upstream, and was cut
    assert waited < 20, waited  # not the SDK's own 600 s
    row = faulty.row(caught.value.response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == (
        "failed",
        504,
        "first_byte_timeout",
    )


def test_a_buffered_call_answered_with_a_stream_is_refused(faulty: Proxy) -> None:
    """A buffered call's reply is screened whole; a stream in its place is not passed on."""
    response = chat(faulty, "gpt-sse-x")
    body = assert_error_format("openai", response, 502, "upstream_protocol_error")
    assert "answered a buffered call with a stream" in body["error"]["message"]
    assert b"unscreened" not in response.content
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"]) == ("failed", 502)


@pytest.mark.parametrize("model", ["gpt-garbled-x", "gpt-garbled-endless-head"])
def test_a_reply_that_is_not_http_or_never_ends_its_head_is_a_502(
    faulty: Proxy, model: str
) -> None:
    response = chat(faulty, model)
    body = assert_error_format("openai", response, 502, "upstream_protocol_error")
    assert "route 'garbled' answered with a malformed HTTP reply" in body["error"]["message"]
    assert_no_internal_address(response)
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == (
        "failed",
        502,
        "upstream_protocol_error",
    )


def test_a_buffered_call_its_client_abandons_is_cancelled_and_cut_upstream(
    faulty: Proxy, silent_upstream: Listener
) -> None:
    """Exchanged from the request hook (no listener hop): when the client leaves, the
    upstream exchange is cut at once, not left waiting for its first byte (60 s)."""
    closed = silent_upstream.closed
    body = {"model": "claude-slow", "max_tokens": 10, "messages": HELLO}
    headers = {"x-api-key": CALLER_KEY, "anthropic-version": "2023-06-01"}
    with faulty.http_client(timeout=1.5) as client, pytest.raises(httpx2.TimeoutException):
        client.post("https://api.anthropic.com/v1/messages", json=body, headers=headers)
    deadline = time.monotonic() + 10
    while silent_upstream.closed == closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert silent_upstream.closed == closed + 1, "the upstream exchange was left running"
    row = faulty.query("select * from requests where model = 'claude-slow'")[-1]
    deadline = time.monotonic() + 10
    while row["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
        row = faulty.query("select * from requests where model = 'claude-slow'")[-1]
    assert row["status"] == "cancelled", row


def test_a_buffered_reply_reset_midway_is_a_502_and_the_row_says_502(
    faulty: Proxy, emulator: Emulator
) -> None:
    response = chat(faulty, "gpt-4o-mini", **{"x-emulator-reset-after": "0"})
    assert_error_format("openai", response, 502, "upstream_reset")
    assert len(emulator.hits) == 1
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 502, "upstream_reset")


def stream_events(response: httpx2.Response) -> list[dict]:
    events = []
    for block in response.content.decode().split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data and data[0] != "[DONE]":
            events.append(json.loads("\n".join(data)))
    return events


def test_a_stream_reset_midway_ends_with_an_error_event(faulty: Proxy, emulator: Emulator) -> None:
    with faulty.http_client(timeout=30) as client:
        response = client.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
            headers={
                "authorization": f"Bearer {CALLER_KEY}",
                "x-emulator-reset-after": "2",
                "x-emulator-chunks": "6",
            },
        )
    assert response.status_code == 200
    events = stream_events(response)
    assert any(e.get("choices") for e in events)  # the part that came did reach the caller
    assert events[-1]["error"]["code"] == "upstream_reset", events[-1]
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 200, "upstream_reset")
    assert row["output_tokens"] and row["usage_source"] == "estimated"  # the partial text


def test_a_stream_that_goes_quiet_past_idle_timeout_ends_with_an_error_event(
    faulty: Proxy,
) -> None:
    started = time.monotonic()
    with faulty.http_client(timeout=30) as client:
        response = client.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": "gpt-impatient", "messages": HELLO, "stream": True},
            headers={"authorization": f"Bearer {CALLER_KEY}", "x-emulator-pause-ms": "3000"},
        )
    assert time.monotonic() - started < 3  # cut at the first quiet 0.5 s, not after the pauses
    events = stream_events(response)
    assert events[-1]["error"]["code"] == "idle_timeout", events[-1]
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 200, "idle_timeout")


def test_a_gemini_stream_reset_midway_closes_the_array_with_an_error(faulty: Proxy) -> None:
    with faulty.http_client(timeout=30) as client:
        response = client.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]},
            headers={
                "x-goog-api-key": CALLER_KEY,
                "x-emulator-reset-after": "2",
                "x-emulator-chunks": "6",
            },
        )
    assert response.status_code == 200
    elements = json.loads(response.content)  # still one JSON array
    assert elements[-1]["error"]["status"] in ("UNAVAILABLE", "INTERNAL"), elements[-1]
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["reason"]) == ("failed", "upstream_reset")


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_upstream_errors_pass_through_and_the_row_names_them(
    faulty: Proxy, emulator: Emulator, status: int
) -> None:
    response = chat(faulty, "gpt-4o-mini", **{"x-emulator-status": str(status)})
    assert response.status_code == status
    assert response.headers.get("server") == "llmgate-emulator/1"  # the upstream's own answer
    assert response.headers.get(REQUEST_ID)
    if status == 429:
        assert response.headers.get("retry-after")
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == (
        "failed",
        status,
        "upstream_error",
    )
    assert row["error"].startswith(f"upstream answered {status}")
    assert CALLER_KEY not in row["error"] and "sk-upstream" not in row["error"]


def test_a_request_body_over_the_limit_is_a_413_before_anything_goes_upstream(
    faulty: Proxy, emulator: Emulator
) -> None:
    big = "x" * (2 * 1024 * 1024)
    with faulty.http_client(timeout=30) as client:
        response = client.post(
            "https://api.anthropic.com/v1/messages",
            json={
                "model": "claude-x",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": big}],
            },
            headers={"x-api-key": CALLER_KEY},
        )
    assert_error_format("anthropic", response, 413, "request_too_large")
    assert response.json()["error"]["type"] == "request_too_large"
    assert emulator.hits == []
    row = faulty.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == (
        "failed",
        413,
        "request_too_large",
    )


def test_the_dispatcher_leaves_no_trace_of_itself_on_the_reply(faulty: Proxy) -> None:
    response = chat(faulty, "gpt-4o-mini")
    assert response.status_code == 200
    assert "aiohttp" not in response.headers.get("server", "")
    assert not any(
        name.startswith("x-llmgate-") and name != REQUEST_ID for name in response.headers
    )
