"""A buffered reply's JSON is parsed once per call: screening reads the content from
it and settling reads the usage from the same parse (issue 14, "one JSON parse per
body"), and a body other than the one screened is still read on its own."""

from __future__ import annotations

import json
from typing import Any

import pytest

from addon import pipeline
from addon.call import Call
from addon.ledger.pricing import Pricer, PricingTable
from addon.safety.scanner import Scanner
from addon.safety.settings import SafetySettings

REQUEST = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def reply(text: str, tokens: int) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens},
        }
    ).encode()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    real = json.loads

    def counting(body: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(body)
        return real(body, *args, **kwargs)

    monkeypatch.setattr(pipeline.json, "loads", counting)
    return seen


def a_call() -> Call:
    call = Call("r-1", 0.0, "openai_chat", "api.openai.com", "/v1/chat/completions", "alice")
    assert pipeline.parse_call(call, REQUEST) is None
    return call


def settle(call: Call, body: bytes) -> dict[str, Any]:
    return pipeline.settle(
        call,
        http_status=200,
        response_body=body,
        error=None,
        cancelled=False,
        pricer=Pricer(PricingTable()),
    )


def test_screening_and_settling_share_one_parse(parses: list[bytes]) -> None:
    call, body = a_call(), reply("hello there", 3)
    assert not pipeline.screen_reply(call, body, Scanner(), SafetySettings())
    fields = settle(call, bytes(bytearray(body)))  # an equal body, not the same object
    assert (fields["output_tokens"], fields["usage_source"]) == (3, "reported")
    assert parses == [body]


def test_a_body_other_than_the_screened_one_is_read_itself(parses: list[bytes]) -> None:
    call = a_call()
    pipeline.screen_reply(call, reply("hello there", 3), Scanner(), SafetySettings())
    fields = settle(call, reply("something else", 5))
    assert fields["output_tokens"] == 5
    assert len(parses) == 2
