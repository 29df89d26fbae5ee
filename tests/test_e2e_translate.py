"""End to end: every caller protocol's official SDK, through a real llmgate, to the
emulator speaking every other provider protocol; and fallback routes.

The emulator checks what it receives against each protocol's rules (alternating
roles, `max_tokens`, `contents`/`parts`, answered tool calls, ...) and answers a
malformed request with a 400, so a wrong translation fails here.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from addon.protocols.deltas import TextDelta, ThinkingDelta, ToolCallDelta, ToolCallStart
from addon.streaming import SseSplitter
from addon.translate.registry import codec
from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import (
    DEFAULT_REPLY,
    HEADER_FIXTURE,
    HEADER_RESET_AFTER,
    HEADER_STATUS,
    Emulator,
    detect_protocol,
    expected_usage,
    fixture_names,
    load_fixture,
)
from tests.proxy import ROOT, Proxy, free_port
from tests.translate_clients import CALLERS, TOOL, TOOL_ARGS, TOOL_RESULT, Outcome

TARGETS = {
    # route provider -> (model prefix, the protocol the emulator must receive, upstream model)
    "openai_chat": ("via-chat", "openai_chat", "gpt-4o-mini"),
    "anthropic": ("via-anthropic", "anthropic_messages", "claude-haiku-4-5"),
    "gemini": ("via-gemini", "gemini", "gemini-2.5-flash"),
}
PAIRS = [
    (caller, provider)
    for caller in CALLERS
    for provider, (_, protocol, _) in TARGETS.items()
    if caller != protocol
]
SECRETS = {
    "openai_chat": "UPSTREAM_OPENAI_KEY",
    "anthropic": "UPSTREAM_ANTHROPIC_KEY",
    "gemini": "UPSTREAM_GEMINI_KEY",
}


class Silent:
    """A TCP server that accepts and never answers: an upstream that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def policy(emulator: Emulator, silent_port: int, closed_port: int) -> str:
    url = emulator.url
    routes = "\n".join(
        f"  - {{id: {prefix}, model_pattern: '{prefix}-*', provider: {provider}, "
        f"endpoint: '{url}', api_key_secret: {SECRETS[provider]}, upstream_model: {model}}}"
        for provider, (prefix, _, model) in TARGETS.items()
    )
    return textwrap.dedent(
        """\
        routes:
        {routes}
          # Fallbacks: a primary that fails before its first byte, then another route.
          - {{id: refused, model_pattern: fb-refused, provider: anthropic,
             endpoint: 'http://127.0.0.1:{closed}', fallbacks: [to-chat, to-gemini]}}
          - {{id: hangs, model_pattern: fb-hangs, provider: openai_chat,
             endpoint: 'http://127.0.0.1:{silent}', first_byte_timeout_s: 1,
             fallbacks: [to-anthropic]}}
          - {{id: busy, model_pattern: fb-busy, provider: gemini, endpoint: '{url}',
             api_key_secret: UPSTREAM_GEMINI_KEY, upstream_model: gemini-2.5-flash,
             extra_headers: {{x-emulator-status: '503'}}, fallbacks: [to-chat]}}
          - {{id: breaks, model_pattern: fb-breaks, provider: anthropic, endpoint: '{url}',
             api_key_secret: UPSTREAM_ANTHROPIC_KEY, upstream_model: claude-haiku-4-5,
             extra_headers: {{x-emulator-reset-after: '3'}}, fallbacks: [to-chat]}}
          - {{id: dead-end, model_pattern: fb-dead-end, provider: openai_chat,
             endpoint: 'http://127.0.0.1:{closed}', fallbacks: [refused]}}
          # Reached only as fallbacks: no model is named like this.
          - {{id: to-chat, model_pattern: 'never-to-chat', provider: openai_chat,
             endpoint: '{url}', api_key_secret: UPSTREAM_OPENAI_KEY, upstream_model: gpt-4o-mini}}
          - {{id: to-anthropic, model_pattern: 'never-to-anthropic', provider: anthropic,
             endpoint: '{url}', api_key_secret: UPSTREAM_ANTHROPIC_KEY,
             upstream_model: claude-haiku-4-5}}
          - {{id: to-gemini, model_pattern: 'never-to-gemini', provider: gemini,
             endpoint: '{url}', api_key_secret: UPSTREAM_GEMINI_KEY,
             upstream_model: gemini-2.5-flash}}
        policies:
          - name: counted
            applies_to: {{users: ["*"]}}
            quota_windows: [{{window_seconds: 3600, scope: global, max_requests: 100000}}]
        """
    ).format(routes=routes, closed=closed_port, silent=silent_port, url=url)


@pytest.fixture(scope="module")
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


@pytest.fixture(scope="module")
def translating(
    tmp_path_factory: pytest.TempPathFactory,
    confdir: Path,
    emulator_server: Emulator,
    silent: Silent,
) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("translate-policies")
    (directory / "routes.yaml").write_text(policy(emulator_server, silent.port, free_port()))
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    db = tmp_path_factory.mktemp("translate-ledger") / "audit.db"
    with Proxy(
        directory, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        yield running


def assert_valid_hits(emulator: Emulator, protocol: str, count: int) -> None:
    hits = emulator.hits
    assert len(hits) == count, [h.path for h in hits]
    for hit in hits:
        assert hit.invalid is None, hit.invalid
        assert detect_protocol(hit.path) == protocol, (hit.path, protocol)
        assert CALLER_KEY not in json.dumps(hit.headers)
        if protocol == "anthropic_messages":
            assert hit.headers.get("anthropic-version") == "2023-06-01"


def assert_translated_row(
    proxy: Proxy, request_id: str, caller: str, upstream: str, body: bytes, reply: str
) -> dict:
    row = proxy.row(request_id)
    usage = expected_usage(body, reply)
    assert (row["protocol"], row["upstream_protocol"]) == (caller, upstream)
    assert (row["status"], row["usage_source"]) == ("completed", "reported"), row
    assert (row["input_tokens"], row["output_tokens"]) == usage, row
    assert row["cost_usd"] and row["cost_usd"] > 0
    return row


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize(("caller", "provider"), PAIRS)
def test_every_caller_reaches_every_provider(
    translating: Proxy, emulator: Emulator, caller: str, provider: str, stream: bool
) -> None:
    prefix, protocol, upstream_model = TARGETS[provider]
    client = CALLERS[caller](translating)
    outcome: Outcome = client.text(f"{prefix}-model", "Say hello", stream, {})
    assert outcome.text == DEFAULT_REPLY
    assert_valid_hits(emulator, protocol, 1)
    hit = emulator.hits[0]
    sent = hit.json()
    assert upstream_model in (sent.get("model"), hit.path.split("models/")[-1].split(":")[0])
    assert "Be brief." in hit.body.decode()  # the system prompt survived
    row = assert_translated_row(
        translating, outcome.request_ids[0], caller, protocol, hit.body, DEFAULT_REPLY
    )
    assert row["stream"] == int(stream)
    payload = translating.payload(outcome.request_ids[0])
    # What the caller sent, and what left the building, both kept.
    assert "Say hello" in payload["request_body"]
    assert payload["upstream_request_body"] and upstream_model in (
        payload["upstream_request_body"] + hit.path
    )


@pytest.mark.parametrize(("caller", "provider"), PAIRS)
def test_a_full_tool_round_trip_through_translation(
    translating: Proxy, emulator: Emulator, caller: str, provider: str
) -> None:
    prefix, protocol, _ = TARGETS[provider]
    outcome = CALLERS[caller](translating).tool_round_trip(f"{prefix}-model")
    assert outcome.tool_calls == [(TOOL, TOOL_ARGS)]
    assert outcome.text == DEFAULT_REPLY
    assert_valid_hits(emulator, protocol, 2)
    # The tool result reached the provider in its own protocol.
    assert TOOL_RESULT in emulator.hits[1].body.decode()
    first, second = outcome.request_ids
    assert_translated_row(
        translating, first, caller, protocol, emulator.hits[0].body, json.dumps(TOOL_ARGS)
    )
    assert_translated_row(
        translating, second, caller, protocol, emulator.hits[1].body, DEFAULT_REPLY
    )


def test_an_upstream_429_keeps_its_retry_after_in_the_callers_shape(
    translating: Proxy, emulator: Emulator
) -> None:
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=translating.http_client(), max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(
            model="via-anthropic-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={HEADER_STATUS: "429"},
        )
    assert raised.value.response.headers["retry-after"] == "7"
    body = raised.value.response.json()
    assert body["error"]["type"] == "rate_limit_error"  # OpenAI's shape, Anthropic's kind
    row = translating.row(raised.value.response.headers["x-llmgate-request-id"])
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 429, "upstream_error")


def test_an_anthropic_overload_is_a_503_to_an_openai_caller(
    translating: Proxy, emulator: Emulator
) -> None:
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=translating.http_client(), max_retries=0)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(
            model="via-anthropic-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={HEADER_STATUS: "529"},
        )
    assert raised.value.status_code == 503


def test_a_redaction_survives_translation(translating: Proxy, emulator: Emulator) -> None:
    client = anthropic.Anthropic(
        api_key=CALLER_KEY, http_client=translating.http_client(), max_retries=0
    )
    card = "4111 1111 1111 1111"
    client.messages.create(
        model="via-gemini-model",
        max_tokens=50,
        messages=[{"role": "user", "content": f"my card is {card}"}],
    )
    sent = emulator.hits[0].body.decode()
    assert card not in sent and "[REDACTED" in sent
    assert "contents" in emulator.hits[0].json()


# --- fallbacks ---------------------------------------------------------------------------


def attempts(proxy: Proxy, request_id: str) -> list[dict]:
    proxy.row(request_id)
    return proxy.query("select * from attempts where request_id = ? order by attempt", request_id)


def chat(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)


def test_a_refused_primary_falls_back_to_the_next_route(
    translating: Proxy, emulator: Emulator
) -> None:
    raw = chat(translating).chat.completions.with_raw_response.create(
        model="fb-refused", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == DEFAULT_REPLY
    rid = raw.headers["x-llmgate-request-id"]
    rows = attempts(translating, rid)
    assert [(r["route"], r["status"], r["reason"]) for r in rows] == [
        ("refused", None, "upstream_unreachable"),
        ("to-chat", 200, None),
    ]
    row = translating.row(rid)
    assert (row["route"], row["upstream_protocol"], row["status"]) == (
        "to-chat",
        "openai_chat",
        "completed",
    )
    assert_valid_hits(emulator, "openai_chat", 1)


def test_a_hanging_primary_times_out_and_another_protocol_serves(
    translating: Proxy, emulator: Emulator
) -> None:
    with chat(translating).chat.completions.with_streaming_response.create(
        model="fb-hangs", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        rid = response.headers["x-llmgate-request-id"]
    assert text == DEFAULT_REPLY
    rows = attempts(translating, rid)
    assert [(r["route"], r["reason"]) for r in rows] == [
        ("hangs", "first_byte_timeout"),
        ("to-anthropic", None),
    ]
    assert rows[0]["latency_ms"] >= 1000
    row = translating.row(rid)
    assert (row["route"], row["upstream_protocol"], row["usage_source"]) == (
        "to-anthropic",
        "anthropic_messages",
        "reported",
    )
    assert_valid_hits(emulator, "anthropic_messages", 1)


def test_a_503_falls_back_and_quota_is_reserved_once(
    translating: Proxy, emulator: Emulator
) -> None:
    remaining = []
    for _ in range(2):
        raw = chat(translating).chat.completions.with_raw_response.create(
            model="fb-busy", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content == DEFAULT_REPLY
        remaining.append(int(raw.headers["x-llmgate-ratelimit-remaining-requests"]))
    # Two attempts each, one request each against the window.
    assert remaining[0] - remaining[1] == 1
    rid = raw.headers["x-llmgate-request-id"]
    rows = attempts(translating, rid)
    assert [(r["route"], r["status"], r["upstream_protocol"]) for r in rows] == [
        ("busy", 503, "gemini"),
        ("to-chat", 200, "openai_chat"),
    ]
    assert [detect_protocol(h.path) for h in emulator.hits] == ["gemini", "openai_chat"] * 2
    assert len(translating.query("select * from requests where id = ?", rid)) == 1


def test_a_stream_that_breaks_after_its_first_byte_is_not_retried(
    translating: Proxy, emulator: Emulator
) -> None:
    with chat(translating).chat.completions.with_streaming_response.create(
        model="fb-breaks",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={HEADER_RESET_AFTER: "3"},
    ) as response:
        rid = response.headers["x-llmgate-request-id"]
        with pytest.raises(openai.APIError):
            for _ in response.parse():
                pass
    row = translating.row(rid)
    assert row["status"] == "failed" and row["route"] == "breaks"
    assert len(emulator.hits) == 1  # no second attempt once bytes reached the caller
    assert [r["route"] for r in attempts(translating, rid)] == ["breaks"]


# --- recorded provider traffic, replayed through translation ------------------------------

REPLAYED = [
    stem
    for stem in fixture_names()
    if stem.split("__")[0] in ("openai_chat", "anthropic_messages", "gemini")
    and any(word in stem for word in ("tool", "thinking", "function", "parallel"))
]
PROVIDER_OF = {"openai_chat": "openai_chat", "anthropic_messages": "anthropic", "gemini": "gemini"}


def decoded(stem: str) -> tuple[str, list[tuple[str, object]], str]:
    """What llmgate's own decoder reads in a recorded reply: text, tool calls, thinking."""
    fixture = load_fixture(stem)
    upstream = codec(fixture["protocol"])
    body = fixture["response"]["body_text"]
    if not fixture["stream"]:
        reply = upstream.decode_reply(json.loads(body))
        text = "".join(p.text for p in reply.content if p.type == "text")
        calls = [(p.name, p.arguments) for p in reply.content if p.type == "tool_use"]
        thinking = "".join(p.text for p in reply.content if p.type == "thinking")
        return text, calls, thinking
    decoder, text, thinking = upstream.stream_decoder(), [], []
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    splitter = SseSplitter()
    events = [e for e, _ in splitter.feed(body.encode()) + splitter.finish() if e is not None]
    for delta in [d for e in events for d in decoder.feed(e)] + decoder.close():
        if isinstance(delta, TextDelta):
            text.append(delta.text)
        elif isinstance(delta, ThinkingDelta):
            thinking.append(delta.text)
        elif isinstance(delta, ToolCallStart):
            names[delta.index] = delta.name
        elif isinstance(delta, ToolCallDelta):
            arguments.setdefault(delta.index, []).append(delta.arguments)
    calls = [(names[i], json.loads("".join(arguments.get(i, [])) or "{}")) for i in sorted(names)]
    return "".join(text), calls, "".join(thinking)


@pytest.mark.parametrize(
    ("stem", "caller"),
    # The same protocol is forwarded byte for byte (test_e2e_replay covers it).
    [(stem, caller) for stem in REPLAYED for caller in CALLERS if caller != stem.split("__")[0]],
)
def test_recorded_tool_calls_and_thinking_reach_every_caller(
    translating: Proxy, emulator: Emulator, stem: str, caller: str
) -> None:
    protocol = stem.split("__")[0]
    fixture = load_fixture(stem)
    prefix = TARGETS[PROVIDER_OF[protocol]][0]
    outcome = CALLERS[caller](translating).reply(
        f"{prefix}-model", fixture["stream"], {HEADER_FIXTURE: stem}
    )
    text, calls, thinking = decoded(stem)
    assert (outcome.text, outcome.tool_calls) == (text, calls)
    assert outcome.thinking == thinking
    assert text or calls or thinking  # the fixture had something to carry
    row = translating.row(outcome.request_ids[0])
    assert (row["status"], row["usage_source"]) == ("completed", "reported"), row


def test_when_every_route_fails_the_caller_gets_the_last_error_in_its_shape(
    translating: Proxy, emulator: Emulator
) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        chat(translating).chat.completions.create(
            model="fb-dead-end", messages=[{"role": "user", "content": "hi"}]
        )
    response = raised.value.response
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert "refused" in response.json()["error"]["message"]  # the last route named
    rid = response.headers["x-llmgate-request-id"]
    assert [(r["route"], r["reason"]) for r in attempts(translating, rid)] == [
        ("dead-end", "upstream_unreachable"),
        ("refused", "upstream_unreachable"),
    ]
    row = translating.row(rid)
    assert (row["status"], row["reason"], row["http_status"]) == (
        "failed",
        "upstream_unreachable",
        502,
    )
    assert emulator.hits == []


def test_a_chat_caller_that_did_not_ask_for_usage_sees_none_yet_the_ledger_has_it(
    translating: Proxy, emulator: Emulator
) -> None:
    with chat(translating).chat.completions.with_streaming_response.create(
        model="via-anthropic-model", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as response:
        chunks = list(response.parse())
        rid = response.headers["x-llmgate-request-id"]
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY
    assert_translated_row(
        translating, rid, "openai_chat", "anthropic_messages", emulator.hits[0].body, DEFAULT_REPLY
    )
