"""Every recorded fixture, replayed through a running llmgate: bytes, tokens, usage source.

The expected usage is read from the fixture here, independently of llmgate's
protocol modules, and normalised as the README documents (input counts cached
tokens, output counts reasoning tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CALLER_KEY, FIXTURES
from tests.emulator import Emulator, split_events
from tests.proxy import Proxy
from tests.strict import nonempty_glob

ALL_FIXTURES = nonempty_glob(FIXTURES, "*.json")


def sse_payloads(body_text: str) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for raw in split_events(body_text):
        name, data = None, []
        for line in raw.replace("\r\n", "\n").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data and data != ["[DONE]"]:
            out.append((name, json.loads("\n".join(data))))
    return out


def reported_usage(fixture: dict[str, Any]) -> dict[str, int] | None:
    protocol, text = fixture["protocol"], fixture["response"]["body_text"]
    docs = [d for _, d in sse_payloads(text)] if fixture["stream"] else [json.loads(text)]
    if protocol == "openai_chat":
        found = [d["usage"] for d in docs if d.get("usage")]
        if not found:
            return None
        u = found[-1]
        return {
            "input_tokens": u["prompt_tokens"],
            "output_tokens": u["completion_tokens"],
            "cache_read_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            "cache_write_tokens": 0,
        }
    if protocol == "openai_responses":
        responses = [d["response"] for d in docs if d.get("type") == "response.completed"]
        found = [r["usage"] for r in (responses or docs) if r.get("usage")]
        if not found:
            return None
        u = found[-1]
        return {
            "input_tokens": u["input_tokens"],
            "output_tokens": u["output_tokens"],
            "cache_read_tokens": (u.get("input_tokens_details") or {}).get("cached_tokens", 0),
            "cache_write_tokens": 0,
        }
    if protocol == "anthropic_messages":
        merged: dict[str, Any] = {}
        for d in docs:
            usage = d.get("usage") or (d.get("message") or {}).get("usage")
            if usage:
                merged.update(usage)
        if not merged:
            return None
        if merged.get("iterations"):
            # Compaction bills every sampling iteration; the top level is the last one.
            merged = {
                k: sum(it.get(k, 0) for it in merged["iterations"])
                for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                          "cache_read_input_tokens")
            }  # fmt: skip
        cache_write = merged.get("cache_creation_input_tokens", 0)
        cache_read = merged.get("cache_read_input_tokens", 0)
        return {
            "input_tokens": merged["input_tokens"] + cache_write + cache_read,
            "output_tokens": merged["output_tokens"],
            "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write,
        }
    found = [d["usageMetadata"] for d in docs if d.get("usageMetadata")]
    if not found:
        return None
    u = found[-1]
    return {
        "input_tokens": u.get("promptTokenCount", 0) + u.get("toolUsePromptTokenCount", 0),
        "output_tokens": u.get("candidatesTokenCount", 0) + u.get("thoughtsTokenCount", 0),
        "cache_read_tokens": u.get("cachedContentTokenCount", 0),
        "cache_write_tokens": 0,
    }


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.stem)
def test_replayed_fixture_is_byte_identical_and_exactly_counted(
    path: Path, proxy: Proxy, emulator: Emulator
) -> None:
    fixture = json.loads(path.read_text())
    request, recorded = fixture["request"], fixture["response"]
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {CALLER_KEY}",
        "x-emulator-fixture": path.stem,
    }
    if fixture["protocol"] == "anthropic_messages":
        headers["anthropic-version"] = "2023-06-01"  # as every Anthropic client sends
    with (
        proxy.http_client(timeout=30) as client,
        client.stream(
            "POST", request["url"], content=json.dumps(request["body"]), headers=headers
        ) as response,
    ):
        received = b"".join(response.iter_raw())
        request_id = response.headers["x-llmgate-request-id"]
    assert response.status_code == recorded["status"]
    assert received == recorded["body_text"].encode()

    row = proxy.row(request_id)
    assert row["http_status"] == recorded["status"]
    assert row["stream"] == int(bool(fixture["stream"]) or request["body"].get("stream") is True
                                or "streamGenerateContent" in request["url"])  # fmt: skip
    expected = reported_usage(fixture)
    if recorded["status"] >= 400:
        assert (row["status"], row["usage_source"]) == ("failed", "none")
    elif expected is None:
        # The provider reported nothing (Groq's stream died with an error event):
        # an honest estimate, never a silent zero.
        assert row["usage_source"] == "estimated"
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    else:
        assert row["usage_source"] == "reported"
        assert {k: row[k] for k in expected} == expected
        assert row["status"] == "completed"
    if '"type":"error"' in recorded["body_text"] or "event: error" in recorded["body_text"]:
        assert row["status"] == "failed" and row["error"]
    # Whatever upstream we replayed, the caller's key never reached it.
    assert CALLER_KEY not in json.dumps(emulator.hits[0].headers)
