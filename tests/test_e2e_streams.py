"""Streams through a running llmgate: every SDK, no buffering, end states, honest usage."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.conftest import CALLER_KEY
from tests.emulator import DEFAULT_REPLY, Emulator, expected_usage
from tests.proxy import Proxy
from tests.strict import wait_until

REQUEST_ID = "x-llmgate-request-id"
HELLO = [{"role": "user", "content": "Say hello"}]


def openai_client(proxy: Proxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0, default_headers=headers
    )


def genai_client(proxy: Proxy) -> genai.Client:
    return genai.Client(
        api_key=CALLER_KEY,
        http_options=genai_types.HttpOptions(
            httpx_client=proxy.http_client(),
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )


_test_started = 0.0


@pytest.fixture(autouse=True)
def _mark_test_start() -> None:
    global _test_started
    _test_started = time.time()


def latest_row(proxy: Proxy, **where: str) -> dict:
    """The newest row of this test matching `where`, once it is closed."""
    clause = " and ".join([f"{k} = ?" for k in where] + ["started_at >= ?"])

    def closed() -> list[dict]:
        rows = proxy.query(
            f"select id, status from requests where {clause} order by started_at desc limit 1",
            *where.values(),
            _test_started,
        )
        return rows if rows and rows[0]["status"] != "pending" else []

    return proxy.row(wait_until(closed, what=f"a closed row where {where}")[0]["id"])


def assert_reported(row: dict, emulator: Emulator) -> None:
    usage = expected_usage(emulator.hits[-1].body)
    assert row["usage_source"] == "reported"
    assert (row["input_tokens"], row["output_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert row["status"] == "completed"


def test_openai_responses_sdk_buffered_and_streamed(proxy: Proxy, emulator: Emulator) -> None:
    client = openai_client(proxy)
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="Say hello")
    assert raw.parse().output_text == DEFAULT_REPLY
    row = proxy.row(raw.headers[REQUEST_ID])
    assert row["protocol"] == "openai_responses"
    assert_reported(row, emulator)

    with client.responses.stream(model="gpt-4o", input="Say hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == DEFAULT_REPLY
    row = latest_row(proxy, protocol="openai_responses", stream="1")
    assert row["stream"] == 1 and row["ttft_ms"] is not None
    assert 0 < row["ttft_ms"] <= row["latency_ms"]
    assert_reported(row, emulator)


def test_gemini_sdk_buffered_and_streamed(proxy: Proxy, emulator: Emulator) -> None:
    client = genai_client(proxy)
    reply = client.models.generate_content(model="gemini-team", contents="Say hello")
    assert reply.text == DEFAULT_REPLY
    row = latest_row(proxy, protocol="gemini")
    assert (row["model"], row["upstream_model"], row["route"]) == (
        "gemini-team", "gemini-2.5-flash", "gemini-team",
    )  # fmt: skip
    assert "gemini-2.5-flash" in emulator.hits[-1].path
    assert emulator.hits[-1].headers["x-goog-api-key"] == "AIza-upstream-gemini-0000"
    assert_reported(row, emulator)

    text = "".join(
        c.text or "" for c in client.models.generate_content_stream(model="gemini-2.0-flash",
                                                                     contents="Say hello")
    )  # fmt: skip
    assert text == DEFAULT_REPLY
    row = latest_row(proxy, protocol="gemini", stream="1")
    assert row["model"] == "gemini-2.0-flash"
    assert_reported(row, emulator)
    # gemini-2.0-flash in addon/ledger/data/pricing.yaml: US$ 0.10 in, 0.40 out per 1M
    # tokens; the emulator reports len(body) // 4 + 1 in and 6 out (5 words + 1).
    usage = expected_usage(emulator.hits[-1].body)
    assert usage.output_tokens == 6
    want = (usage.input_tokens * 0.10 + 6 * 0.40) / 1e6
    assert row["cost_usd"] == pytest.approx(want, rel=1e-9)


def test_gemini_json_array_stream_is_tapped(proxy: Proxy, emulator: Emulator) -> None:
    with proxy.http_client() as client:
        response = client.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": CALLER_KEY},
        )
    items = json.loads(response.content)
    assert (
        "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in items) == DEFAULT_REPLY
    )
    assert_reported(proxy.row(response.headers[REQUEST_ID]), emulator)


def test_injected_include_usage_is_hidden_from_the_client(proxy: Proxy, emulator: Emulator) -> None:
    chunks = list(
        openai_client(proxy).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    )
    assert all(c.choices for c in chunks), "the client saw a usage chunk it did not ask for"
    assert all(c.usage is None for c in chunks)
    sent = emulator.hits[-1].json()
    assert sent["stream_options"] == {"include_usage": True}
    assert_reported(latest_row(proxy, protocol="openai_chat", stream="1"), emulator)


def test_a_client_that_asked_for_usage_still_gets_it(proxy: Proxy, emulator: Emulator) -> None:
    chunks = list(
        openai_client(proxy).chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = expected_usage(emulator.hits[-1].body)
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        usage.input_tokens, 6,
    )  # fmt: skip


def test_no_buffering_event_k_arrives_before_event_k_plus_1_is_sent(
    proxy: Proxy, emulator: Emulator
) -> None:
    received: list[float] = []
    with (
        proxy.http_client() as client,
        client.stream(
            "POST",
            "https://api.anthropic.com/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 50, "stream": True, "messages": HELLO},
            headers={"x-api-key": CALLER_KEY, "anthropic-version": "2023-06-01",
                     "x-emulator-pause-ms": "150", "x-emulator-chunks": "4"},
        ) as response,
    ):  # fmt: skip
        for line in response.iter_lines():
            if line.startswith("data:"):
                received.append(time.monotonic())
    sent = emulator.hits[-1].events_sent
    assert len(sent) == len(received) >= 8
    for k in range(len(sent) - 1):
        assert received[k] < sent[k + 1], f"event {k} was held until event {k + 1} was sent"


def test_client_disconnect_mid_stream_is_cancelled_with_partial_usage(
    proxy: Proxy, emulator: Emulator
) -> None:
    client = anthropic.Anthropic(
        api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0,
        default_headers={"x-emulator-pause-ms": "300", "x-emulator-chunks": "6"},
    )  # fmt: skip
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HELLO) as stream:
        request_id = stream.response.headers[REQUEST_ID]
        first = next(iter(stream.text_stream))
        assert first
    row = proxy.row(request_id)
    assert row["status"] == "cancelled"
    assert row["usage_source"] == "reported"
    assert row["input_tokens"] == expected_usage(emulator.hits[-1].body).input_tokens
    payload = proxy.payload(request_id)
    assert first in payload["response_body"]
    assert "message_stop" not in payload["response_body"]


def test_upstream_reset_mid_stream_is_failed_with_partial_usage(
    proxy: Proxy, emulator: Emulator
) -> None:
    client = openai_client(proxy, **{"x-emulator-reset-after": "3"})
    events = list(client.responses.create(model="gpt-4o", input="Say hello", stream=True))
    # The stream ends with the Responses API's own error event, not a dropped connection.
    assert events[-1].type == "error" and events[-1].code == "upstream_reset", events[-1]
    row = latest_row(proxy, protocol="openai_responses", stream="1")
    assert (row["status"], row["reason"]) == ("failed", "upstream_reset") and row["error"]
    # response.completed never came: the partial reply is estimated, not zero.
    assert row["usage_source"] == "estimated" and row["input_tokens"] > 0


def test_a_stream_without_usage_is_estimated_not_zero(proxy: Proxy, emulator: Emulator) -> None:
    client = openai_client(proxy, **{"x-emulator-no-usage": "1"})
    list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    row = latest_row(proxy, protocol="openai_chat", stream="1")
    assert row["usage_source"] == "estimated"
    assert row["output_tokens"] == -(-len(DEFAULT_REPLY) // 4) == 8  # 32 characters / 4
    assert row["input_tokens"] > 0
    # An estimate is priced like a report: gpt-4o at US$ 2.50 in, 10.00 out per 1M tokens.
    want = (row["input_tokens"] * 2.50 + 8 * 10.00) / 1e6
    assert row["cost_usd"] == pytest.approx(want, rel=1e-9)


def test_an_unpriced_model_has_null_cost(proxy: Proxy, emulator: Emulator) -> None:
    openai_client(proxy).chat.completions.create(model="gpt-unpriced-test", messages=HELLO)
    row = latest_row(proxy, model="gpt-unpriced-test")
    assert row["usage_source"] == "reported" and row["input_tokens"] > 0
    assert row["cost_usd"] is None
    assert "no price for model 'gpt-unpriced-test'" in proxy.log()


def test_gzip_encoded_sse_is_decoded_and_counted(proxy: Proxy, emulator: Emulator) -> None:
    client = openai_client(proxy, **{"x-emulator-gzip": "1"})
    with client.responses.stream(model="gpt-4o", input="Say hello") as stream:
        assert stream.get_final_response().output_text == DEFAULT_REPLY
    assert emulator.hits[-1].headers["accept-encoding"] == "identity"
    assert_reported(latest_row(proxy, protocol="openai_responses", stream="1"), emulator)


def test_other_endpoints_get_a_row_and_pass_through(proxy: Proxy, emulator: Emulator) -> None:
    with proxy.http_client() as client:
        response = client.get(f"{emulator.url}/v1/models")
    assert response.status_code == 404  # the emulator's own answer, passed through
    row = proxy.row(response.headers[REQUEST_ID])
    assert (row["protocol"], row["path"], row["usage_source"]) == ("other", "/v1/models", "none")
    assert emulator.hits[-1].path == "/v1/models"
