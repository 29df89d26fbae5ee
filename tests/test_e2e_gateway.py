"""End to end: the official SDKs through a running llmgate to the local emulator."""

from __future__ import annotations

import json
import socket
import ssl

import anthropic
import httpx2
import openai
import pytest

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import Emulator
from tests.hostile import non_loopback_address
from tests.proxy import Proxy

REQUEST_ID = "x-llmgate-request-id"
HELLO = [{"role": "user", "content": "hi"}]


def openai_client(proxy: Proxy, key: str = CALLER_KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, http_client=proxy.http_client(), max_retries=0)


def anthropic_client(proxy: Proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)


def assert_only_the_upstream_key_was_seen(emulator: Emulator, header: str, expected: str) -> None:
    assert emulator.hits, "the emulator saw no request"
    for hit in emulator.hits:
        assert hit.headers.get(header) == expected
        assert CALLER_KEY not in json.dumps(hit.headers) and CALLER_KEY.encode() not in hit.body


def assert_row(proxy: Proxy, request_id: str, **expected: object) -> dict:
    row = proxy.row(request_id)
    assert {k: row[k] for k in expected} == expected
    assert row["latency_ms"] is not None and row["latency_ms"] > 0
    assert row["user"] is not None and row["client_ip"] == "127.0.0.1"
    return row


def test_openai_buffered_and_streamed(proxy: Proxy, emulator: Emulator) -> None:
    client = openai_client(proxy)
    raw = client.chat.completions.with_raw_response.create(
        model="team-default", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the llmgate emulator."
    assert_row(
        proxy, raw.headers[REQUEST_ID], protocol="openai_chat", model="team-default",
        upstream_model="gpt-4o-mini", route="openai-team", provider="openai",
        status="completed", http_status=200, stream=0,
    )  # fmt: skip
    assert json.loads(emulator.hits[0].body)["model"] == "gpt-4o-mini"
    assert emulator.hits[0].headers["host"] == f"127.0.0.1:{emulator.port}"

    with client.chat.completions.with_streaming_response.create(
        model="team-default", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as response:
        request_id = response.headers[REQUEST_ID]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "Hello from the llmgate emulator."
    assert_row(proxy, request_id, status="completed", stream=1, route="openai-team")
    assert_only_the_upstream_key_was_seen(
        emulator, "authorization", f"Bearer {UPSTREAM_KEYS['UPSTREAM_OPENAI_KEY']}"
    )


def test_anthropic_buffered_and_streamed(proxy: Proxy, emulator: Emulator) -> None:
    client = anthropic_client(proxy)
    raw = client.messages.with_raw_response.create(
        model="claude-team", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    message = raw.parse()
    assert message.content[0].text == "Hello from the llmgate emulator."
    assert_row(
        proxy, raw.headers[REQUEST_ID], protocol="anthropic_messages", model="claude-team",
        upstream_model="claude-haiku-4-5", route="anthropic-team", status="completed",
        http_status=200,
    )  # fmt: skip

    with client.messages.stream(
        model="claude-team", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        request_id = stream.response.headers[REQUEST_ID]
    assert text == "Hello from the llmgate emulator."
    assert_row(proxy, request_id, status="completed", stream=1, model="claude-team")
    assert_only_the_upstream_key_was_seen(
        emulator, "x-api-key", UPSTREAM_KEYS["UPSTREAM_ANTHROPIC_KEY"]
    )
    assert all("authorization" not in h.headers for h in emulator.hits)


def test_without_a_route_secret_the_callers_key_passes_through(
    proxy: Proxy, emulator: Emulator
) -> None:
    openai_client(proxy).chat.completions.create(
        model="byok-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert emulator.hits[0].headers["authorization"] == f"Bearer {CALLER_KEY}"


def test_no_route_is_a_404_in_each_callers_format(proxy: Proxy, emulator: Emulator) -> None:
    with pytest.raises(openai.NotFoundError) as oa:
        openai_client(proxy).chat.completions.create(
            model="llama-3-unrouted", messages=[{"role": "user", "content": "hi"}]
        )
    assert oa.value.body["code"] == "no_route" and "llama-3-unrouted" in oa.value.body["message"]
    row = proxy.row(oa.value.response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 404, "no_route")

    with pytest.raises(anthropic.NotFoundError) as an:
        anthropic_client(proxy).messages.create(
            model="mistral-unrouted", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert an.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": an.value.body["error"]["message"]},
    }
    assert proxy.row(an.value.response.headers[REQUEST_ID])["http_status"] == 404
    assert emulator.hits == []


@pytest.mark.parametrize(
    ("url", "expected_shape"),
    [
        ("https://api.openai.com/v1/chat/completions", {"error"}),
        ("https://api.anthropic.com/v1/messages", {"type", "error"}),
    ],
)
def test_malformed_json_is_a_400_with_an_audit_row(
    proxy: Proxy, emulator: Emulator, url: str, expected_shape: set[str]
) -> None:
    with proxy.http_client() as client:
        headers = {"content-type": "application/json", "authorization": f"Bearer {CALLER_KEY}"}
        response = client.post(url, content=b'{"model": "gpt-4o", "messages": [', headers=headers)
    assert response.status_code == 400
    assert set(response.json()) == expected_shape
    assert "not valid JSON" in json.dumps(response.json())
    row = proxy.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"], row["reason"]) == ("failed", 400, "invalid_json")
    assert emulator.hits == []


def test_missing_route_secret_is_a_502_naming_the_variable(
    proxy: Proxy, emulator: Emulator
) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        openai_client(proxy).chat.completions.create(
            model="secretless-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 502
    assert "LLMGATE_TEST_UNSET_SECRET" in err.value.body["message"]
    assert proxy.row(err.value.response.headers[REQUEST_ID])["reason"] == "missing_secret"
    assert emulator.hits == []


def test_upstream_errors_reach_the_client_unchanged_with_the_request_id(
    proxy: Proxy, emulator: Emulator
) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        openai_client(proxy).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-emulator-status": "429"},
        )  # fmt: skip
    row = proxy.row(err.value.response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"]) == ("failed", 429)


def test_credentials_never_reach_the_ledger(proxy: Proxy, emulator: Emulator) -> None:
    raw_reply = openai_client(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    payload = proxy.payload(raw_reply.headers[REQUEST_ID])
    assert "chat.completion" in payload["response_body"] and "hi" in payload["request_body"]
    dump = "\n".join(
        json.dumps(r) for t in ("requests", "payloads") for r in proxy.query(f"select * from {t}")
    )
    for secret in (CALLER_KEY, *UPSTREAM_KEYS.values()):
        assert secret not in dump
    assert proxy.db.exists()
    raw = b"".join(p.read_bytes() for p in proxy.db.parent.glob("audit.db*") if p.is_file())
    for secret in (CALLER_KEY, *UPSTREAM_KEYS.values()):
        assert secret.encode() not in raw


def test_non_llm_hosts_are_tunnelled_not_intercepted(proxy: Proxy) -> None:
    # Every loopback spelling is an LLM host here (the routes point at 127.0.0.1), so
    # the non-LLM host is an emulator on this machine's other interface. The client
    # must see the emulator's own certificate through the proxy.
    with Emulator(host=non_loopback_address()) as other:
        own_ca = ssl.create_default_context(cafile=other.ca_path)
        own_ca.check_hostname = False  # its certificate names 127.0.0.1; the issuer is the point
        with httpx2.Client(proxy=proxy.url, verify=own_ca) as client:
            response = client.post(f"https://{other.host}:{other.port}/v1/chat/completions",
                                   json={"model": "gpt-4o", "messages": HELLO})  # fmt: skip
        assert response.status_code == 200
        assert REQUEST_ID not in response.headers

        # And the mitmproxy CA would not verify it: nobody forged a certificate.
        mitm_ca = proxy.ssl_context()
        mitm_ca.check_hostname = False
        with (
            pytest.raises(httpx2.ConnectError),
            httpx2.Client(proxy=proxy.url, verify=mitm_ca) as client,
        ):
            client.get(f"https://{other.host}:{other.port}/")


def test_a_raw_connect_to_an_llm_host_gets_the_mitmproxy_certificate(proxy: Proxy) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    tls = proxy.ssl_context().wrap_socket(sock, server_hostname="api.openai.com")
    assert "mitmproxy" in json.dumps(tls.getpeercert())
    tls.close()
