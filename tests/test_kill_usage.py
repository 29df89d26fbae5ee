"""Usage readers, field by field: each test kills mutants of the protocols' usage
functions that the recorded fixtures of test_protocols let through (see MUTATION.md).
A partial usage object must give exact counts, never a missing or invented one."""

from __future__ import annotations

from typing import Any

import pytest

from addon.protocols import PROTOCOLS
from addon.protocols.anthropic_messages import anthropic_usage
from addon.protocols.base import StreamState, as_int, dig, merge_raw_usage
from addon.protocols.canonical import Usage
from addon.protocols.gemini import gemini_usage
from addon.protocols.openai_chat import chat_usage
from addon.protocols.openai_responses import responses_usage


@pytest.mark.parametrize(
    ("raw", "usage"),
    [
        ({"prompt_tokens": 5}, Usage(input_tokens=5)),
        ({"completion_tokens": 7}, Usage(output_tokens=7)),
        ({"prompt_tokens": None, "completion_tokens": None}, None),
        ({"prompt_tokens": True, "completion_tokens": 2}, Usage(output_tokens=2)),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 40,
                "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 20},
                "completion_tokens_details": {"reasoning_tokens": 25},
            },
            Usage(
                input_tokens=100,
                output_tokens=40,
                cache_read_tokens=30,
                cache_write_tokens=20,
                reasoning_tokens=25,
            ),
        ),
        # The Responses names are not the Chat names.
        ({"input_tokens": 5, "output_tokens": 6}, None),
        ([], None),
        (None, None),
    ],
)
def test_chat_usage(raw: Any, usage: Usage | None) -> None:
    assert chat_usage(raw) == usage


@pytest.mark.parametrize(
    ("raw", "usage"),
    [
        ({"input_tokens": 5}, Usage(input_tokens=5)),
        ({"output_tokens": 7}, Usage(output_tokens=7)),
        (
            {
                "input_tokens": 9,
                "output_tokens": 8,
                "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 3},
                "output_tokens_details": {"reasoning_tokens": 2},
            },
            Usage(
                input_tokens=9,
                output_tokens=8,
                cache_read_tokens=4,
                cache_write_tokens=3,
                reasoning_tokens=2,
            ),
        ),
        ({"prompt_tokens": 5, "completion_tokens": 6}, None),
    ],
)
def test_responses_usage(raw: Any, usage: Usage | None) -> None:
    assert responses_usage(raw) == usage


def test_anthropic_usage_counts_cache_in_the_input_and_thinking_as_reasoning() -> None:
    raw = {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 4,
        "output_tokens_details": {"thinking_tokens": 15},
    }
    assert anthropic_usage(raw) == Usage(
        input_tokens=17,
        output_tokens=20,
        cache_read_tokens=4,
        cache_write_tokens=3,
        reasoning_tokens=15,
    )
    assert anthropic_usage({"output_tokens": 2}) == Usage(output_tokens=2)
    assert anthropic_usage({"input_tokens": None, "service_tier": "standard"}) is None
    assert anthropic_usage("10") is None


def test_anthropic_usage_adds_compaction_passes_only() -> None:
    raw = {
        "input_tokens": 10,
        "output_tokens": 1,
        "iterations": [
            {"type": "compaction", "input_tokens": 100, "output_tokens": 7,
             "cache_read_input_tokens": 50},
            {"type": "advisor", "input_tokens": 1000, "output_tokens": 1000},
            "not an object",
            {"type": "compaction", "output_tokens": True},
        ],
    }  # fmt: skip
    assert anthropic_usage(raw) == Usage(input_tokens=160, output_tokens=8, cache_read_tokens=50)


@pytest.mark.parametrize(
    ("raw", "usage"),
    [
        ({"candidatesTokenCount": 7}, Usage(output_tokens=7)),
        ({"promptTokenCount": 5}, Usage(input_tokens=5)),
        ({"thoughtsTokenCount": 3}, Usage(output_tokens=3, reasoning_tokens=3)),
        (
            {
                "promptTokenCount": 10,
                "candidatesTokenCount": 4,
                "thoughtsTokenCount": 6,
                "toolUsePromptTokenCount": 2,
                "cachedContentTokenCount": 8,
            },
            Usage(input_tokens=12, output_tokens=10, cache_read_tokens=8, reasoning_tokens=6),
        ),
        # Vertex and the Python SDK's dumps spell the same fields in snake_case.
        (
            {
                "prompt_token_count": 10,
                "candidates_token_count": 4,
                "cached_content_token_count": 1,
            },
            Usage(input_tokens=10, output_tokens=4, cache_read_tokens=1),
        ),
        ({"promptTokenCount": 3, "prompt_token_count": 99}, Usage(input_tokens=3)),
        ({"toolUsePromptTokenCount": 2}, None),
        ({}, None),
        (None, None),
    ],
)
def test_gemini_usage(raw: Any, usage: Usage | None) -> None:
    assert gemini_usage(raw) == usage


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("body", [None, [], "usage", 3])
def test_read_usage_of_a_body_that_is_no_object_is_none(protocol: str, body: Any) -> None:
    assert PROTOCOLS[protocol].read_usage(body) is None


def test_read_usage_of_each_protocol() -> None:
    assert PROTOCOLS["openai_chat"].read_usage(
        {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    ) == Usage(input_tokens=3, output_tokens=4)
    assert PROTOCOLS["openai_responses"].read_usage(
        {"usage": {"input_tokens": 3, "output_tokens": 4}}
    ) == Usage(input_tokens=3, output_tokens=4)
    assert PROTOCOLS["anthropic_messages"].read_usage(
        {"usage": {"input_tokens": 3, "output_tokens": 4}}
    ) == Usage(input_tokens=3, output_tokens=4)
    assert PROTOCOLS["gemini"].read_usage(
        {"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}
    ) == Usage(input_tokens=3, output_tokens=4)
    assert PROTOCOLS["gemini"].read_usage({"usage": {"promptTokenCount": 3}}) is None


def test_helpers() -> None:
    assert [as_int(v) for v in (0, 7, -1, True, False, 1.0, "3", None)] == [
        0, 7, -1, None, None, None, None, None,
    ]  # fmt: skip
    assert dig({"a": {"b": {"c": 1}}}, "a", "b", "c") == 1
    assert dig({"a": {"b": 2}}, "a", "b", "c") is None
    assert dig({"a": [1]}, "a", "0") is None
    assert dig({"a": 1}) == {"a": 1}
    assert dig(None, "a") is None


def test_merge_raw_usage_lets_a_later_value_win_per_field() -> None:
    state = StreamState()
    assert merge_raw_usage(state, {"a": 1, "b": 2}) == {"a": 1, "b": 2}
    assert merge_raw_usage(state, "not an object") == {"a": 1, "b": 2}
    assert merge_raw_usage(state, {"b": 3, "c": None}) == {"a": 1, "b": 3, "c": None}
    assert merge_raw_usage(StreamState(), None) == {}
