"""The hook table in a real mitmdump: on by default, off with LLMGATE_HOOK_TABLE=false,
and either way every call is decided (a reply from the emulator through llmgate, with
llmgate's request id and ledger row; a secret in the prompt blocked, with its row)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import Emulator
from tests.proxy import Proxy

# A fake GitHub token, assembled so that no file holds one whole.
SECRET = "ghp_" + "Zr4Kw8Pq1Vd6Jm3Tx9Ba" + "5Lc2Hn7Ge0Uy4Sf1"


@pytest.fixture(scope="module", params=["on", "off"])
def table_proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    confdir: Path,
    policies_dir: Path,
    emulator_server: Emulator,
) -> Iterator[tuple[str, Proxy]]:
    env = dict(UPSTREAM_KEYS)
    if request.param == "off":
        env["LLMGATE_HOOK_TABLE"] = "false"
    db = tmp_path_factory.mktemp(f"hook-table-{request.param}") / "audit.db"
    proxy = Proxy(policies_dir, db, confdir, upstream_ca=emulator_server.ca_path, env=env).start()
    try:
        yield request.param, proxy
    finally:
        proxy.stop()


def test_the_health_page_says_whether_the_table_is_on(table_proxy: tuple[str, Proxy]) -> None:
    state, proxy = table_proxy
    with httpx2.Client(proxy=proxy.url, timeout=10) as client:
        health = client.get("http://llmgate.internal/health").json()
    assert health["hook_table"] is (state == "on")


def test_calls_are_decided_and_recorded_either_way(
    table_proxy: tuple[str, Proxy], emulator: Emulator
) -> None:
    _, proxy = table_proxy
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="team-default", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.http_response.status_code == 200
    row = proxy.row(raw.headers["x-llmgate-request-id"])
    assert (row["status"], row["route"], row["upstream_model"]) == (
        "completed",
        "openai-team",
        "gpt-4o-mini",
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="team-default", messages=[{"role": "user", "content": f"key {SECRET}"}]
        )
    blocked = proxy.row(refused.value.response.headers["x-llmgate-request-id"])
    assert (blocked["status"], blocked["reason"]) == ("denied", "safety_block")
    assert len(emulator.hits) == 1  # the blocked call never reached the upstream
