"""End to end: agent sessions and tool calls in the ledger.

The official SDKs make parallel tool calls (buffered and streamed) through a
real llmgate to the emulator; the `tool_calls` table must hold exactly those
calls and the results sent back, linked by call id, and a secret inside tool
arguments or a tool result must be stored only redacted.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import CALLER_KEY
from tests.emulator import HEADER_TOOL_ARGS, HEADER_TOOL_CALL, Emulator
from tests.proxy import Proxy

REQUEST_ID = "x-llmgate-request-id"
ARGS = {"path": "/etc/hosts", "mode": "read"}
# A string the default scanner finds (an AWS access key id shape), but no real key.
SECRET = "AKIAZ7QX3MPLW5RJT2HK"


def tool_calls(proxy: Proxy, request_id: str) -> list[dict[str, Any]]:
    proxy.row(request_id)
    return proxy.query(
        "select kind, call_id, name, arguments, is_error, excerpt, result_bytes, session_id"
        " from tool_calls where request_id = ? order by id",
        request_id,
    )


def openai_client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)


TOOLS_CHAT: Any = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("read_file", "list_dir")
]
TOOLS_ANTHROPIC: Any = [
    {"name": n, "input_schema": {"type": "object"}} for n in ("read_file", "list_dir")
]


def parallel(args: dict[str, Any] = ARGS) -> dict[str, str]:
    return {HEADER_TOOL_CALL: "read_file,list_dir", HEADER_TOOL_ARGS: json.dumps(args)}


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
def test_openai_parallel_tool_calls_and_their_results_are_recorded_exactly(
    proxy: Proxy, emulator: Emulator, stream: bool
) -> None:
    client = openai_client(proxy)
    messages: Any = [{"role": "user", "content": "look around"}]
    session = {"x-llmgate-session": f"chat-{stream}"}
    if stream:
        with client.chat.completions.stream(
            model="gpt-4o-mini",
            messages=messages,
            tools=TOOLS_CHAT,
            extra_headers=parallel() | session,
        ) as assembling:
            message = assembling.get_final_completion().choices[0].message
            first = assembling._response.headers[REQUEST_ID]
    else:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,
            tools=TOOLS_CHAT,
            extra_headers=parallel() | session,
        )
        message, first = raw.parse().choices[0].message, raw.headers[REQUEST_ID]
    calls = message.tool_calls or []
    assert [c.function.name for c in calls] == ["read_file", "list_dir"]
    assert "x-llmgate-session" not in emulator.hits[0].headers  # llmgate's own header
    rows = tool_calls(proxy, first)
    assert rows == [
        {"kind": "call", "call_id": c.id, "name": c.function.name, "arguments":
         c.function.arguments, "is_error": None, "excerpt": None, "result_bytes": None,
         "session_id": f"chat-{stream}"}
        for c in calls
    ]  # fmt: skip
    assert json.loads(rows[0]["arguments"]) == ARGS
    messages.append(message.model_dump(exclude_none=True))
    messages += [
        {"role": "tool", "tool_call_id": calls[0].id, "content": "127.0.0.1 localhost"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "Error: no such dir"},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, tools=TOOLS_CHAT, extra_headers=parallel() | session
    )
    results = tool_calls(proxy, raw.headers[REQUEST_ID])
    assert [(r["kind"], r["call_id"], r["excerpt"], r["result_bytes"]) for r in results] == [
        ("result", calls[0].id, "127.0.0.1 localhost", 19),
        ("result", calls[1].id, "Error: no such dir", 18),
    ]
    row = proxy.row(raw.headers[REQUEST_ID])
    assert (row["session_id"], json.loads(row["tools_offered"])) == (
        f"chat-{stream}",
        ["read_file", "list_dir"],
    )
    assert row["client"].startswith("OpenAI/Python ")


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
def test_anthropic_parallel_tool_uses_and_error_results_are_recorded(
    proxy: Proxy, emulator: Emulator, stream: bool
) -> None:
    client = anthropic.Anthropic(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
    messages: Any = [{"role": "user", "content": "look around"}]
    common: Any = {"model": "claude-haiku-4-5", "max_tokens": 100, "tools": TOOLS_ANTHROPIC}
    user_id = "user_abc_account_0000_session_5b0e9a4c-1111-4222-8333-944455556666"
    common["metadata"] = {"user_id": user_id}
    if stream:
        with client.messages.stream(messages=messages, extra_headers=parallel(), **common) as s:
            reply = s.get_final_message()
            first = s.response.headers[REQUEST_ID]
    else:
        raw = client.messages.with_raw_response.create(
            messages=messages, extra_headers=parallel(), **common
        )
        reply, first = raw.parse(), raw.headers[REQUEST_ID]
    uses = [b for b in reply.content if b.type == "tool_use"]
    rows = tool_calls(proxy, first)
    assert [(r["kind"], r["call_id"], r["name"], json.loads(r["arguments"])) for r in rows] == [
        ("call", b.id, b.name, b.input) for b in uses
    ]
    assert {r["session_id"] for r in rows} == {"5b0e9a4c-1111-4222-8333-944455556666"}
    messages.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": "done"},
                {"type": "tool_result", "tool_use_id": uses[1].id, "content": "denied",
                 "is_error": True},
            ],
        }
    )  # fmt: skip
    raw = client.messages.with_raw_response.create(
        messages=messages, extra_headers=parallel(), **common
    )
    results = tool_calls(proxy, raw.headers[REQUEST_ID])
    assert [(r["kind"], r["call_id"], r["is_error"], r["excerpt"]) for r in results] == [
        ("result", uses[0].id, 0, "done"),
        ("result", uses[1].id, 1, "denied"),
    ]
    assert proxy.row(raw.headers[REQUEST_ID])["client"].startswith("Anthropic/Python ")


def test_a_secret_in_tool_arguments_or_a_result_is_stored_only_redacted(
    proxy: Proxy, emulator: Emulator
) -> None:
    client = openai_client(proxy)
    args = {"command": f"aws configure set aws_access_key_id {SECRET}"}
    # Percent-encoded, so that the request header carries no secret the scanner would block.
    hidden_args = "".join(f"%{byte:02X}" for byte in json.dumps(args).encode())
    headers = {HEADER_TOOL_CALL: "read_file,list_dir", HEADER_TOOL_ARGS: hidden_args}
    messages: Any = [{"role": "user", "content": "configure aws"}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, tools=TOOLS_CHAT, extra_headers=headers
    )
    message = raw.parse().choices[0].message
    # Replies are only logged by default: the caller got the arguments as they were.
    assert SECRET in message.tool_calls[0].function.arguments
    messages.append(message.model_dump(exclude_none=True))
    messages += [
        {"role": "tool", "tool_call_id": c.id, "content": f"key set: {SECRET}"}
        for c in message.tool_calls
    ]
    # A request carrying a secret is blocked (secrets: block), and still recorded.
    with pytest.raises(openai.BadRequestError) as blocked:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS_CHAT, extra_headers=headers
        )
    follow = blocked.value.response.headers[REQUEST_ID]
    rows = tool_calls(proxy, raw.headers[REQUEST_ID]) + tool_calls(proxy, follow)
    assert [r["kind"] for r in rows] == ["call", "call", "result", "result"]
    assert all(SECRET not in json.dumps(r) for r in rows)
    assert all("[REDACTED:secrets]" in (r["arguments"] or r["excerpt"]) for r in rows)
    # Nowhere in the whole ledger file, in any table or page.
    conn = sqlite3.connect(proxy.db)
    conn.execute("pragma wal_checkpoint(truncate)").fetchall()
    conn.close()
    for path in proxy.db.parent.iterdir():
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
