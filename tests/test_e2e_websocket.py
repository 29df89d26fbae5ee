"""The Responses API over WebSocket through llmgate, with a plain WebSocket client.

Codex drives the same path in test_e2e_codex.py; here each decision is driven on its
own: reply scanning, messages llmgate refuses, a route the socket cannot serve, the
upstream refusing the upgrade, and the switch that refuses WebSocket altogether.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import HEADER_REPLY, HEADER_WS_REJECT, Emulator
from tests.proxy import Proxy

GITHUB_TOKEN = "ghp_" + "Rw3Kd8Nq1Lx6Vb9Tz2Hs5Jm7Pc4Gf0Ya8Ue1Q"
FINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def open_socket(proxy: Proxy, **headers: str) -> ClientConnection:
    return connect(
        "wss://api.openai.com/v1/responses",
        proxy=proxy.url,
        ssl=proxy.ssl_context(),
        additional_headers={"authorization": f"Bearer {CALLER_KEY}", **headers},
        open_timeout=10,
    )


def turn(ws: ClientConnection, message: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one message; the events up to and including the one that ends it."""
    ws.send(json.dumps(message))
    events = []
    while True:
        event = json.loads(ws.recv(timeout=10))
        events.append(event)
        if event["type"] in FINAL:
            return events


def create(model: str = "gpt-4o-mini", text: str = "hi") -> dict[str, Any]:
    return {"type": "response.create", "model": model, "input": text}


def test_a_secret_in_a_streamed_reply_is_found_like_a_streams(
    proxy: Proxy, emulator: Emulator
) -> None:
    # Set on the emulator: a secret in a handshake header would be blocked (and is).
    emulator.set_default_controls({HEADER_REPLY: f"your token is {GITHUB_TOKEN} keep it safe"})
    marker = f"reply-scan-{time.time_ns()}"
    with open_socket(proxy) as ws:
        events = turn(ws, create(text=marker))
    assert events[-1]["type"] == "response.completed"
    deadline = time.monotonic() + 10
    while not (
        found := proxy.query(
            "select request_id from payloads where request_body like ?", f"%{marker}%"
        )
    ):
        assert time.monotonic() < deadline, "the call's payload row never appeared"
        time.sleep(0.05)
    row = proxy.row(found[0]["request_id"])
    assert row["transport"] == "websocket"
    findings = proxy.query("select * from findings where request_id = ?", row["id"])
    assert [(f["phase"], f["detector"]) for f in findings] == [("response", "github_token")]
    assert GITHUB_TOKEN not in proxy.payload(row["id"])["response_body"]


def test_messages_llmgate_refuses_get_an_error_event_and_the_socket_stays_open(
    proxy: Proxy, emulator: Emulator
) -> None:
    with open_socket(proxy) as ws:
        cancel = turn(ws, {"type": "response.cancel", "response_id": "resp_1"})
        duplicate = (
            '{"type": "response.create", "model": "gpt-4o-mini", "model": "x", "input": "hi"}'
        )
        ws.send(duplicate)
        dup = json.loads(ws.recv(timeout=10))
        unrouted = turn(ws, create(model="claude-haiku-4-5"))  # an Anthropic route's model
        ok = turn(ws, create())
    assert cancel[-1]["status"] == 400 and cancel[-1]["error"]["code"] == "unsupported_message"
    assert dup["type"] == "error" and dup["error"]["code"] == "invalid_json"
    assert unrouted[-1]["type"] == "error" and unrouted[-1]["error"]["code"] == "no_route"
    assert ok[-1]["type"] == "response.completed"
    # Only the last message reached the upstream; every refusal has its row.
    assert [hit.json()["input"] for hit in emulator.hits if hit.websocket] == ["hi"]
    for event in (cancel[-1], dup, unrouted[-1]):
        row = proxy.row(event["request_id"])
        assert (row["transport"], row["http_status"]) == ("websocket", event["status"])


def test_a_model_routed_to_another_upstream_cannot_ride_the_socket(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, emulator_server: Emulator
) -> None:
    # The same emulator under another secret is another upstream for the socket.
    policies = tmp_path_factory.mktemp("ws-policies")
    (policies / "routes.yaml").write_text(
        "routes:\n"
        f"  - {{id: openai-a, model_pattern: 'gpt-*', provider: openai,"
        f" endpoint: '{emulator_server.url}', api_key_secret: UPSTREAM_OPENAI_KEY}}\n"
        f"  - {{id: openai-b, model_pattern: 'o*', provider: openai,"
        f" endpoint: '{emulator_server.url}', api_key_secret: UPSTREAM_GEMINI_KEY}}\n"
    )
    db = tmp_path_factory.mktemp("ws-ledger") / "audit.db"
    emulator_server.reset()
    with (
        Proxy(
            policies, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
        ) as gate,
        open_socket(gate) as ws,
    ):
        refused = turn(ws, create(model="o3"))
        served = turn(ws, create(model="gpt-4o-mini"))
    assert refused[-1]["error"]["code"] == "route_mismatch"
    assert served[-1]["type"] == "response.completed"
    assert [h.json()["model"] for h in emulator_server.hits if h.websocket] == ["gpt-4o-mini"]


def test_an_upgrade_the_upstream_refuses_is_a_failed_row(proxy: Proxy, emulator: Emulator) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(proxy, **{HEADER_WS_REJECT: "403"})
    response = refused.value.response
    assert response.status_code == 403
    row = proxy.row(response.headers["x-llmgate-request-id"])
    assert (row["status"], row["http_status"], row["protocol"]) == (
        "failed",
        403,
        "openai_responses",
    )


@pytest.fixture
def no_websocket_gate(
    tmp_path: Path, confdir: Path, policies_dir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    with Proxy(
        policies_dir,
        tmp_path / "audit.db",
        confdir,
        upstream_ca=emulator_server.ca_path,
        env=UPSTREAM_KEYS,
        extra_args=["--set", "llmgate_websocket=false"],
    ) as running:
        yield running


def test_llmgate_websocket_false_refuses_the_upgrade_with_426(
    no_websocket_gate: Proxy, emulator: Emulator
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_socket(no_websocket_gate)
    response = refused.value.response
    assert response.status_code == 426
    body = json.loads(response.body)
    assert body["error"]["code"] == "websocket_refused"
    row = no_websocket_gate.row(response.headers["x-llmgate-request-id"])
    assert (row["status"], row["reason"]) == ("denied", "websocket_refused")
    assert not emulator.handshakes
