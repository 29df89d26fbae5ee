"""Safety scanning through a running llmgate, in both directions, streams included."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import Emulator
from tests.proxy import Proxy

REQUEST_ID = "x-llmgate-request-id"

# Fake credentials with the right shapes, assembled here so that no file in the
# repository holds one whole.
AWS_ID = "AKIA" + "Q3EXAMPLE7RT2ZKD"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCY7q2LKEY9ab"
PEM_BODY = "MIIEowIBAAKCAQEAx" + "Zt7v2a9Q" * 24
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\n" + PEM_BODY + "\n-----END RSA PRIVATE KEY-----"
CARD = "4111 1111 1111 1111"

SAFETY = """\
safety:
  request: {secrets: block, credit_card: redact, pii: log, jailbreak: log, custom: log}
  response: {secrets: redact, credit_card: redact, pii: log, custom: block}
  custom_patterns: [{name: codename, regex: "\\\\bPROJECT-ZEBRA\\\\b"}]
"""


@pytest.fixture(scope="module")
def guard(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("safety-policies")
    (directory / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (directory / "safety.yaml").write_text(SAFETY)
    db = tmp_path_factory.mktemp("safety-ledger") / "audit.db"
    with Proxy(
        directory, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        yield running


def reply_headers(emulator: Emulator, text: str, chunks: int = 3) -> dict[str, str]:
    ref = emulator.register_reply(text)
    return {"x-emulator-reply-ref": ref, "x-emulator-chunks": str(chunks)}


def everything_stored(proxy: Proxy) -> bytes:
    # The ledger, its WAL, the quota file and key, and the instances' locks and journals.
    files = sorted(p for p in proxy.db.parent.glob("audit.db*") if p.is_file())
    files += sorted(proxy.db.parent.glob("audit.db.instances/*"))
    return b"".join(p.read_bytes() for p in files) + proxy.log_path.read_bytes()


def findings(proxy: Proxy, request_id: str) -> list[dict]:
    proxy.row(request_id)
    return proxy.query("select * from findings where request_id = ?", request_id)


def test_aws_key_in_a_tool_result_is_blocked_before_the_upstream(
    guard: Proxy, emulator: Emulator
) -> None:
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=guard.http_client(), max_retries=0)
    leaked = f"AWS_ACCESS_KEY_ID={AWS_ID}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n"
    messages = [
        {"role": "user", "content": "read my .env"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "read_file", "arguments": '{"path": ".env"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": leaked},
    ]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-4o", messages=messages)
    body = err.value.body
    assert body["code"] == "safety_block" and "secrets" in body["message"]
    assert AWS_ID not in json.dumps(body) and AWS_SECRET not in json.dumps(body)
    assert emulator.hits == []
    request_id = err.value.response.headers[REQUEST_ID]
    row = guard.row(request_id)
    assert (row["status"], row["reason"]) == ("denied", "safety_block")
    rows = findings(guard, request_id)
    assert {r["detector"] for r in rows} >= {"aws_access_key_id", "aws_secret_access_key"}
    assert all(r["phase"] == "request" and r["action"] == "block" for r in rows)
    assert any(r["location"] == "messages[2] (tool)" for r in rows)
    for r in rows:
        assert len(r["excerpt"].replace("…", "")) <= 9 and len(r["value_hmac"]) == 64


def test_the_same_key_leaked_twice_is_one_distinct_hmac(guard: Proxy, emulator: Emulator) -> None:
    client = anthropic.Anthropic(api_key=CALLER_KEY, http_client=guard.http_client(), max_retries=0)
    ids = []
    for _ in range(2):
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(
                model="claude-haiku-4-5", max_tokens=10,
                messages=[{"role": "user", "content": f"my key is {AWS_ID} ok"}],
            )  # fmt: skip
        ids.append(err.value.response.headers[REQUEST_ID])
    hmacs = [r["value_hmac"] for i in ids for r in findings(guard, i)]
    assert len(hmacs) == 2 and len(set(hmacs)) == 1


def test_card_numbers_are_redacted_before_they_leave(guard: Proxy, emulator: Emulator) -> None:
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=guard.http_client(), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"charge {CARD} please"}]
    )
    sent = emulator.hits[-1].body.decode()
    assert CARD not in sent and "[REDACTED:pii]" in sent
    assert json.loads(sent)["messages"][0]["content"] == "charge [REDACTED:pii] please"
    rows = findings(guard, raw.headers[REQUEST_ID])
    assert [(r["detector"], r["action"]) for r in rows] == [("credit_card", "redact")]


@pytest.mark.parametrize("sdk", ["openai", "anthropic", "gemini"])
def test_a_private_key_split_across_three_events_is_redacted_for_the_client(
    sdk: str, guard: Proxy, emulator: Emulator
) -> None:
    text = f"Here it is:\n{PRIVATE_KEY}\nKeep it safe."
    headers = reply_headers(emulator, text, chunks=3)
    if sdk == "openai":
        client = openai.OpenAI(api_key=CALLER_KEY, http_client=guard.http_client(),
                               max_retries=0, default_headers=headers)  # fmt: skip
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "key?"}], stream=True
        )
        received = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    elif sdk == "anthropic":
        client = anthropic.Anthropic(api_key=CALLER_KEY, http_client=guard.http_client(),
                                     max_retries=0, default_headers=headers)  # fmt: skip
        with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=500, messages=[{"role": "user", "content": "key?"}]
        ) as stream:
            received = "".join(stream.text_stream)  # fmt: skip
    else:
        client = genai.Client(api_key=CALLER_KEY, http_options=genai_types.HttpOptions(
            httpx_client=guard.http_client(), headers=headers,
            retry_options=genai_types.HttpRetryOptions(attempts=1)))  # fmt: skip
        received = "".join(
            c.text or "" for c in client.models.generate_content_stream(
                model="gemini-2.0-flash", contents="key?")
        )  # fmt: skip
    assert len(emulator.hits[-1].events_sent) >= 3
    assert PEM_BODY[:20] not in received and "PRIVATE KEY" not in received
    assert received.startswith("Here it is:\n") and received.endswith("\nKeep it safe.")
    assert "[REDACTED:secrets]" in received
    assert PEM_BODY[:20].encode() not in everything_stored(guard)


def test_a_buffered_reply_is_redacted_too(guard: Proxy, emulator: Emulator) -> None:
    client = anthropic.Anthropic(
        api_key=CALLER_KEY, http_client=guard.http_client(), max_retries=0,
        default_headers=reply_headers(emulator, f"use {AWS_ID} for that"),
    )  # fmt: skip
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].text == "use [REDACTED:secrets] for that"


def test_a_blocked_stream_ends_with_an_error_in_the_callers_format(
    guard: Proxy, emulator: Emulator
) -> None:
    headers = reply_headers(emulator, "The plan is PROJECT-ZEBRA, tell nobody.", chunks=4)
    client = anthropic.Anthropic(
        api_key=CALLER_KEY, http_client=guard.http_client(), max_retries=0, default_headers=headers
    )
    pieces: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(model="claude-haiku-4-5", max_tokens=50,
                               messages=[{"role": "user", "content": "plan?"}]) as stream,
    ):  # fmt: skip
        request_id = stream.response.headers[REQUEST_ID]
        pieces.extend(stream.text_stream)
    assert "blocked" in str(err.value.body)
    assert "PROJECT-ZEBRA" not in "".join(pieces)
    row = guard.row(request_id)
    assert (row["status"], row["reason"]) == ("failed", "safety_block")


def test_logged_secrets_are_still_masked_in_the_ledger(guard: Proxy, emulator: Emulator) -> None:
    email = "jane.doe@acme-corp.com"
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=guard.http_client(), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"mail {email} now"}]
    )
    assert email in emulator.hits[-1].body.decode()  # pii is only logged: it went out
    payload = guard.payload(raw.headers[REQUEST_ID])
    assert email not in payload["request_body"] and "[REDACTED:pii]" in payload["request_body"]
    conn = sqlite3.connect(guard.db)
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    stored = everything_stored(guard)
    for secret in (email, AWS_ID, AWS_SECRET, PEM_BODY[:20], CARD):
        assert secret.encode() not in stored, secret
