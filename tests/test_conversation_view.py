"""The "LLM conversation" contentview, through mitmproxy's contentview API, on every
recorded fixture; and the comments llmgate leaves on LLM flows.

What each fixture must show is read from the fixture here, independently of
llmgate's protocol modules: the prompt, the reply (for streams, put back together
from the events), tool calls with their arguments, and thinking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import contentviews, http
from mitmproxy.contentviews import Metadata
from mitmproxy.test import taddons, tflow

from addon.gateway import flow_notes
from addon.gateway.conversation_view import PRIORITY, VIEW_NAME, conversation_view
from tests.conftest import FIXTURES

FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    with taddons.context():  # make_metadata reads ctx.options
        flow_notes.register_view()
        yield
        flow_notes.unregister_view()


def fixture_flow(path: Path) -> tuple[dict[str, Any], http.HTTPFlow]:
    fx = json.loads(path.read_text())
    req = fx["request"]
    request = http.Request.make(
        req["method"], req["url"], json.dumps(req["body"]).encode(), req["headers"]
    )
    res = fx["response"]
    response = http.Response.make(res["status"], res["body_text"].encode(), res["headers"])
    return fx, tflow.tflow(req=request, resp=response)


# --- what a fixture says, read without llmgate --------------------------------------
_NOT_PROMPT = {"tools", "tool_choice", "toolConfig", "generationConfig", "response_format"}


def prompt_texts(body: Any, key: str | None = None) -> list[str]:
    """Every piece of prompt text in a request body of any of the four protocols."""
    out: list[str] = []
    if isinstance(body, dict):
        for k, v in body.items():
            if k in _NOT_PROMPT or k in ("signature", "thoughtSignature", "encrypted_content"):
                continue
            out += prompt_texts(v, k)
    elif isinstance(body, list):
        for item in body:
            out += prompt_texts(item, key)
    elif isinstance(body, str) and key in (
        "text",
        "content",
        "system",
        "instructions",
        "input",
        "output",
    ):
        out.append(body)
    return out


def sse_data(text: str) -> list[Any]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(
            line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")
        )
        if data and data.strip() != "[DONE]":
            out.append(json.loads(data))
    return out


class Expected:
    def __init__(self) -> None:
        self.texts: list[str] = []  # reply text and thinking
        self.thinking: list[str] = []
        self.tools: list[tuple[str, Any]] = []  # (name, arguments as JSON)

    def think(self, text: str) -> None:
        if text:
            self.texts.append(text)
            self.thinking.append(text)

    def tool(self, name: str, arguments: Any) -> None:
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        self.tools.append((name, arguments))


def expected_reply(fx: dict[str, Any]) -> Expected:
    exp = Expected()
    protocol, text = fx["protocol"], fx["response"]["body_text"]
    if fx["response"]["status"] >= 400:
        error = json.loads(text)["error"]
        exp.texts.append(error["message"] if isinstance(error, dict) else error)
        return exp
    if not fx["stream"]:
        _buffered(protocol, json.loads(text), exp)
    elif protocol == "openai_chat":
        _chat_stream(sse_data(text), exp)
    elif protocol == "openai_responses":
        done = [e for e in sse_data(text) if e.get("type") == "response.completed"]
        _buffered(protocol, done[-1]["response"], exp)
    elif protocol == "anthropic_messages":
        _anthropic_stream(sse_data(text), exp)
    else:
        chunks = sse_data(text)
        parts = [p for c in chunks for p in c["candidates"][0].get("content", {}).get("parts", [])]
        _gemini_parts(parts, exp, joined=True)
    return exp


def _buffered(protocol: str, body: dict[str, Any], exp: Expected) -> None:
    if protocol == "openai_chat":
        for choice in body["choices"]:
            message = choice["message"]
            exp.texts += [message["content"]] if message.get("content") else []
            exp.think(message.get("reasoning_content") or "")
            for call in message.get("tool_calls") or []:
                exp.tool(call["function"]["name"], call["function"]["arguments"])
    elif protocol == "openai_responses":
        for item in body["output"]:
            if item["type"] == "message":
                exp.texts += [c["text"] for c in item["content"] if c.get("text")]
            elif item["type"] == "function_call":
                exp.tool(item["name"], item["arguments"])
            elif item["type"] == "reasoning":
                for summary in item.get("summary", []):
                    exp.think(summary["text"])
    elif protocol == "anthropic_messages":
        for block in body["content"]:
            if block["type"] == "text":
                exp.texts.append(block["text"])
            elif block["type"] == "thinking":
                exp.think(block["thinking"])
            elif block["type"] in ("tool_use", "server_tool_use"):
                exp.tool(block["name"], block["input"])
    else:
        _gemini_parts(body["candidates"][0]["content"]["parts"], exp, joined=False)


def _gemini_parts(parts: list[dict[str, Any]], exp: Expected, *, joined: bool) -> None:
    text = "".join(p["text"] for p in parts if "text" in p and not p.get("thought"))
    thought = "".join(p["text"] for p in parts if "text" in p and p.get("thought"))
    exp.texts += [text] if text else []
    exp.think(thought)
    for part in parts:
        if "functionCall" in part:
            exp.tool(part["functionCall"]["name"], part["functionCall"].get("args", {}))


def _chat_stream(chunks: list[dict[str, Any]], exp: Expected) -> None:
    text, thinking = [], []
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if "error" in chunk:
            exp.texts.append(chunk["error"]["message"])
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            text.append(delta.get("content") or "")
            thinking.append(delta.get("reasoning") or delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                function = call.get("function", {})
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
    exp.texts += ["".join(text)] if "".join(text) else []
    exp.think("".join(thinking))
    for slot in calls.values():
        exp.tool(slot["name"], slot["arguments"])


def _anthropic_stream(events: list[dict[str, Any]], exp: Expected) -> None:
    blocks: dict[int, dict[str, Any]] = {}
    for event in events:
        if event["type"] == "content_block_start":
            start = event["content_block"]
            blocks[event["index"]] = {
                "type": start["type"],
                "name": start.get("name"),
                "text": start.get("text") or start.get("thinking") or "",
                "json": "",
            }
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            block["text"] += delta.get("text") or delta.get("thinking") or ""
            block["json"] += delta.get("partial_json") or ""
    for block in blocks.values():
        if block["type"] == "text" and block["text"]:
            exp.texts.append(block["text"])
        elif block["type"] == "thinking":
            exp.think(block["text"])
        elif block["type"] in ("tool_use", "server_tool_use"):
            exp.tool(block["name"], block["json"])


def assert_shows(rendered: str, text: str, what: str) -> None:
    """Every line of `text` is in the rendering (which indents and wraps per line)."""
    for line in text.splitlines():
        if line.strip():
            assert line.strip() in rendered, f"{what}: {line.strip()[:120]!r} not shown"


def assert_shows_arguments(rendered: str, arguments: Any, what: str) -> None:
    if isinstance(arguments, dict):
        for key, value in arguments.items():
            assert json.dumps(key, ensure_ascii=False) in rendered, f"{what}: key {key!r}"
            assert_shows_arguments(rendered, value, what)
    elif isinstance(arguments, list):
        for value in arguments:
            assert_shows_arguments(rendered, value, what)
    else:
        shown = json.dumps(arguments, ensure_ascii=False)
        assert shown in rendered, f"{what}: argument value {shown!r} not shown"


# --- the tests -------------------------------------------------------------------------
def test_every_protocol_is_covered_by_the_fixtures() -> None:
    assert len(FIXTURE_FILES) >= 48
    protocols = {json.loads(p.read_text())["protocol"] for p in FIXTURE_FILES}
    assert protocols == {"openai_chat", "openai_responses", "anthropic_messages", "gemini"}


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_the_request_is_shown_as_a_conversation(path: Path) -> None:
    fx, flow = fixture_flow(path)
    result = contentviews.prettify_message(flow.request, flow)
    assert result.view_name == VIEW_NAME  # chosen automatically
    assert result.text.startswith(f"LLM request · {fx['protocol']}")
    for text in prompt_texts(fx["request"]["body"]):
        assert_shows(result.text, text, "prompt")
    for message in _history_tool_calls(fx):
        name, arguments = message
        assert f"tool call {name}" in result.text
        assert_shows_arguments(result.text, arguments, f"tool call {name} in the history")


def _history_tool_calls(fx: dict[str, Any]) -> list[tuple[str, Any]]:
    """Tool calls the request replays from earlier turns, read from the raw body."""
    body, out = fx["request"]["body"], []
    for message in body.get("messages", []):
        for call in message.get("tool_calls") or []:
            out.append((call["function"]["name"], json.loads(call["function"]["arguments"])))
        if isinstance(message.get("content"), list):
            out += [(b["name"], b["input"]) for b in message["content"] if b["type"] == "tool_use"]
    for item in body.get("input", []) if isinstance(body.get("input"), list) else []:
        if item.get("type") == "function_call":
            out.append((item["name"], json.loads(item["arguments"])))
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            if "functionCall" in part:
                out.append((part["functionCall"]["name"], part["functionCall"].get("args", {})))
    return out


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_the_reply_is_shown_reassembled(path: Path) -> None:
    fx, flow = fixture_flow(path)
    result = contentviews.prettify_message(flow.response, flow)
    assert result.view_name == VIEW_NAME
    assert result.text.startswith(f"LLM reply · {fx['protocol']}")
    expected = expected_reply(fx)
    assert expected.texts or expected.tools, "the fixture has something to show"
    for text in expected.texts:
        assert_shows(result.text, text, "reply")
    for name, arguments in expected.tools:
        assert f"tool call {name}" in result.text
        assert_shows_arguments(result.text, arguments, f"tool call {name}")
    if fx["stream"]:
        assert "streamed (" in result.text


def test_thinking_is_shown_as_thinking_where_a_fixture_has_it() -> None:
    shown = 0
    for path in FIXTURE_FILES:
        fx, flow = fixture_flow(path)
        expected = expected_reply(fx)
        if not expected.thinking:
            continue
        text = contentviews.prettify_message(flow.response, flow).text
        assert "(thinking)" in text, path.stem
        for thought in expected.thinking:
            assert_shows(text, thought, f"{path.stem}: thinking")
        shown += 1
    assert shown >= 7  # both directions of every protocol that streams thinking


def test_usage_and_cost_are_shown() -> None:
    _, flow = fixture_flow(FIXTURES / "openai_chat__text_stream.json")
    flow.metadata["llmgate"] = {"user": "alice", "cost_usd": 0.00123, "status": "completed"}
    text = contentviews.prettify_message(flow.response, flow).text
    assert "usage: " in text and " in / " in text
    assert "cost: $0.001230" in text
    assert "user alice" in text


def test_a_streamed_reply_is_reassembled_without_a_content_type() -> None:
    # A flow saved and loaded again, or a reply whose content-type went missing.
    _, flow = fixture_flow(FIXTURES / "anthropic_messages__text_stream.json")
    assert flow.response is not None
    flow.response.headers.pop("content-type", None)
    result = contentviews.prettify_message(flow.response, flow)
    assert result.view_name == VIEW_NAME and "streamed (" in result.text


def _metadata(flow: http.HTTPFlow, message: http.Message) -> Metadata:
    return contentviews.make_metadata(message, flow)


def test_render_priority_is_high_for_llm_calls_and_zero_for_other_flows() -> None:
    _, llm = fixture_flow(FIXTURES / "openai_chat__text_nonstream.json")
    assert llm.response is not None
    for message in (llm.request, llm.response):
        data = message.get_content()
        assert data
        priority = conversation_view.render_priority(data, _metadata(llm, message))
        assert priority == PRIORITY and priority > 1  # above the JSON view

    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": "x"}).encode()
    others = [
        tflow.tflow(
            req=http.Request.make("POST", "https://example.com/api/items", body),
            resp=http.Response.make(200, b'{"ok": true}', {"content-type": "application/json"}),
        ),
        tflow.tflow(
            req=http.Request.make("GET", "https://api.openai.com/v1/models"),
            resp=http.Response.make(200, b'{"data": []}', {"content-type": "application/json"}),
        ),
    ]
    for flow in others:
        assert flow.response is not None
        for message in (flow.request, flow.response):
            data = message.get_content() or b"{}"
            assert conversation_view.render_priority(data, _metadata(flow, message)) == 0
        result = contentviews.prettify_message(flow.response, flow)
        assert result.view_name != VIEW_NAME


def test_the_flow_metadata_names_the_protocol_of_a_translated_call() -> None:
    """A translated call: the flow holds the upstream's request, the caller's reply."""
    _, chat = fixture_flow(FIXTURES / "openai_chat__text_nonstream.json")
    _, anthropic = fixture_flow(FIXTURES / "anthropic_messages__text_nonstream.json")
    flow = tflow.tflow(req=anthropic.request, resp=chat.response)
    flow.metadata["llmgate"] = {
        "protocol": "openai_chat",
        "upstream_protocol": "anthropic_messages",
    }
    assert flow.response is not None
    request = contentviews.prettify_message(flow.request, flow).text
    reply = contentviews.prettify_message(flow.response, flow).text
    assert request.startswith("LLM request · anthropic_messages")
    assert reply.startswith("LLM reply · openai_chat")


def test_the_view_can_be_picked_by_name_and_removed() -> None:
    assert contentviews.registry[VIEW_NAME] is conversation_view
    assert VIEW_NAME.lower() in contentviews.registry.available_views()
    flow_notes.unregister_view()
    assert VIEW_NAME.lower() not in contentviews.registry.available_views()
    flow_notes.register_view()


# --- comments --------------------------------------------------------------------------
def test_the_comment_says_who_what_and_how_much() -> None:
    notes = {
        "host": "api.openai.com",
        "user": "alice",
        "model": "team-default",
        "upstream_model": "gpt-4o-mini",
        "input_tokens": 12,
        "output_tokens": 7,
        "cost_usd": 0.000123,
        "status": "completed",
        "reason": None,
    }
    assert flow_notes.comment_for(notes) == (
        "api.openai.com · alice · team-default → gpt-4o-mini · 12/7 tok · $0.000123 · completed"
    )
    failed = notes | {"status": "failed", "reason": "upstream_error", "upstream_model": None}
    assert flow_notes.comment_for(failed).endswith(
        "team-default · 12/7 tok · $0.000123 · failed: upstream_error"
    )


def test_a_call_the_dispatcher_denied_is_marked_like_any_denial() -> None:
    """A quota answer that came over the network is a 429 from the dispatcher, after
    the gateway's hook: the flow is marked and its comment says why all the same."""
    from addon.call import Call

    flow = tflow.tflow(resp=True)
    call = Call("r-1", 0.0, "openai_chat", "api.openai.com", "/v1/chat/completions", "alice")
    fields = {"status": "denied", "reason": "quota_exceeded", "error": "window full; retry in 9s"}
    flow_notes.annotate(flow, call, fields)
    assert flow.marked == flow_notes.DENIED_MARK
    assert flow.comment.startswith("llmgate denied: quota_exceeded: window full; retry in 9s · ")
    served = tflow.tflow(resp=True)
    flow_notes.annotate(served, call, {"status": "completed"})
    assert served.marked != flow_notes.DENIED_MARK
