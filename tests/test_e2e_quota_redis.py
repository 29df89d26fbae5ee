"""Quotas on Redis through real llmgate proxies: the window fills (429), Redis stops
(503 in the caller's format, the call never leaves), Redis comes back (served again,
no llmgate restart), and two proxies on one Redis share the window exactly."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from addon.config import QuotaWindow
from addon.quota.redis_store import RedisQuotaStore
from addon.quota.windows import AppliedWindow
from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import Emulator
from tests.hostile import assert_refused
from tests.proxy import Proxy
from tests.redis_server import RedisServer, running_server

CHAT = "https://api.openai.com/v1/chat/completions"
MESSAGES = "https://api.anthropic.com/v1/messages"
HELLO = [{"role": "user", "content": "hi"}]
LIMIT = 5

POLICY = f"""\
    identity: {{default_user: fleet}}
    policies:
      - name: everyone
        quota_windows: [{{window_seconds: 3600, scope: user, max_requests: {LIMIT}}}]
    """


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Its own server: the test stops and restarts it."""
    with running_server() as server:
        yield server


@pytest.fixture
def policies(tmp_path: Path, emulator: Emulator) -> Path:
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "routes.yaml").write_text(emulator_policy(emulator.url))
    (directory / "own.yaml").write_text(textwrap.dedent(POLICY))
    return directory


def proxy_on(redis_url: str, policies: Path, db: Path, confdir: Path, emulator: Emulator) -> Proxy:
    env = {**UPSTREAM_KEYS, "LLMGATE_QUOTA": redis_url}
    return Proxy(policies, db, confdir, upstream_ca=emulator.ca_path, env=env)


def post(proxy: Proxy, url: str, body: dict[str, Any]) -> httpx2.Response:
    headers = {"content-type": "application/json", "authorization": f"Bearer {CALLER_KEY}"}
    if url == MESSAGES:
        headers["anthropic-version"] = "2023-06-01"
    with proxy.http_client(timeout=30) as client:
        return client.post(url, content=json.dumps(body).encode(), headers=headers)


def chat(proxy: Proxy) -> httpx2.Response:
    return post(proxy, CHAT, {"model": "gpt-4o", "messages": HELLO})


def redis_requests(url: str, key: str = "user:fleet") -> tuple[int, int]:
    """(used, reserved) requests of the fleet user's window, read from Redis."""
    window = AppliedWindow(QuotaWindow(window_seconds=3600, max_requests=LIMIT), key)
    with RedisQuotaStore(url) as store:
        state = store.states([window])[0]
    return state.used.requests, state.reserved.requests


def test_a_redis_quota_fills_fails_closed_while_redis_is_down_and_recovers(
    tmp_path: Path, confdir: Path, emulator: Emulator, policies: Path, redis_server: RedisServer
) -> None:
    with proxy_on(redis_server.url, policies, tmp_path / "audit.db", confdir, emulator) as gate:
        # Refused by screening while its reserve was in flight: released, so it takes
        # nothing from the window the next calls fill.
        leak = "AKIA" + "Q3EXAMPLE7RT2ZKD"  # an AWS key id, assembled so no file holds it
        blocked = post(gate, CHAT, {"model": "gpt-4o", "messages": [
            {"role": "user", "content": f"key id {leak}"}]})  # fmt: skip
        assert blocked.status_code == 400, blocked.text
        assert blocked.json()["error"]["code"] == "safety_block"
        statuses = [chat(gate).status_code for _ in range(LIMIT)]
        assert statuses == [200] * LIMIT
        assert sum(redis_requests(redis_server.url)) == LIMIT  # used + reserved
        full = chat(gate)
        assert full.status_code == 429
        assert full.json()["error"]["code"] == "quota_exceeded"
        assert 3590 <= int(full.headers["retry-after"]) <= 3600
        assert len(emulator.hits) == LIMIT
        # Settles are batched on the proxy's loop: wait until all have landed.
        deadline = time.monotonic() + 10
        while redis_requests(redis_server.url) != (LIMIT, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert redis_requests(redis_server.url) == (LIMIT, 0)

        redis_server.stop()
        down = chat(gate)
        assert_refused(gate, emulator, down, wire="openai", status=503,
                       reason="quota_unavailable", outcome="failed", hits_before=LIMIT)  # fmt: skip
        assert down.headers["retry-after"] == "1"
        body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": HELLO}
        down = post(gate, MESSAGES, body)  # the Anthropic caller gets Anthropic's format
        assert_refused(gate, emulator, down, wire="anthropic", status=503,
                       reason="quota_unavailable", outcome="failed", hits_before=LIMIT)  # fmt: skip
        assert "quota store unavailable" in gate.log()

        redis_server.start()  # empty (no persistence): the window starts again
        back = chat(gate)
        assert back.status_code == 200, back.text
        assert len(emulator.hits) == LIMIT + 1
        assert gate.row(back.headers["x-llmgate-request-id"])["status"] == "completed"


def test_fail_open_admits_unmetered_while_redis_is_down(
    tmp_path: Path, confdir: Path, emulator: Emulator, policies: Path, redis_server: RedisServer
) -> None:
    (policies / "quota.yaml").write_text("quota: {on_unavailable: allow}\n")
    with proxy_on(redis_server.url, policies, tmp_path / "audit.db", confdir, emulator) as gate:
        redis_server.stop()
        served = chat(gate)
        assert served.status_code == 200
        assert "admitted unmetered" in gate.log()
        assert len(emulator.hits) == 1


async def _burst(proxy: Proxy, count: int) -> list[int]:
    async with proxy.async_http_client(timeout=60) as client:

        async def one() -> int:
            response = await client.post(
                CHAT,
                json={"model": "gpt-4o", "messages": HELLO},
                headers={"authorization": f"Bearer {CALLER_KEY}"},
            )
            return response.status_code

        return await asyncio.gather(*(one() for _ in range(count)))


def test_two_proxies_on_one_redis_admit_exactly_the_window(
    tmp_path: Path, confdir: Path, emulator: Emulator, policies: Path, redis_server: RedisServer
) -> None:
    # Separate ledgers, so the window is shared through Redis alone.
    a = proxy_on(redis_server.url, policies, tmp_path / "a.db", confdir, emulator)
    b = proxy_on(redis_server.url, policies, tmp_path / "b.db", confdir, emulator)
    with a, b:

        async def both() -> list[int]:
            first, second = await asyncio.gather(_burst(a, 20), _burst(b, 20))
            return first + second

        statuses = asyncio.run(both())
    assert (statuses.count(200), statuses.count(429)) == (LIMIT, 40 - LIMIT)
    assert len(emulator.hits) == LIMIT
