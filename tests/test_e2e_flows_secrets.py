"""No credential rests on a flow: not in what `-w` saves, not in what mitmweb shows.

One mixed run per front end (mitmdump, mitmweb), each with `-w <file>`: a caller's
key on a pass-through route, virtual keys re-keyed to route secrets (buffered and
streamed), a GitHub token in a prompt and one in a header (both blocked), a Gemini
caller key in `?key=`, a denied call, a stray virtual key in a non-credential
header (refused), an unparsed endpoint with the caller's own key. Then every view
of the flows is searched for every secret: the saved file's bytes, each flow's
full state, and for mitmweb its REST API (`/flows`, each message's
`content.data`, `/flows/dump`) and the live updates it pushes to the UI.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mitmproxy import io as mitmio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from addon.keys import KeyStore
from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import Emulator
from tests.proxy import MITMDUMP, MITMWEB, ROOT, Proxy, free_port

REQUEST_ID = "x-llmgate-request-id"
WEB_PASSWORD = "flows-test-password-4711"
GEMINI_CALLER_KEY = "AIzaSyCaller-own-gemini-key-98765"
ANTHROPIC_CALLER_KEY = "sk-ant-caller-own-key-24680"
# Tokens of the right shape, assembled so that no file holds one whole.
PROMPT_TOKEN = "ghp_" + "Pq7Rs8Tu9Vw0Xy1Z" + "a2B3c4D5e6F7g8H9i0J1"
HEADER_TOKEN = "ghp_" + "Lm3Nn4Oo5Pp6Qq7R" + "r8Ss9Tt0Uu1Vv2Ww3Xx4"
POLICY = """\
policies:
  - name: everyone
    applies_to: {users: ["*"]}
    denied_models: ["gpt-denied*"]
"""


@dataclass
class Run:
    """What one mixed run left behind, by the view it was read from."""

    views: dict[str, bytes] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    flow_count: int = 0
    secrets: dict[str, str] = field(default_factory=dict)


class Updates:
    """mitmweb's live updates (the /updates WebSocket the UI listens to), recorded."""

    def __init__(self, port: int) -> None:
        self._url = f"ws://127.0.0.1:{port}/updates?token={WEB_PASSWORD}"
        self.messages: list[bytes] = []
        self._ws: Any = None
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._opened.wait(10), "could not open mitmweb's /updates WebSocket"

    def _read(self) -> None:
        with ws_connect(self._url, max_size=None, open_timeout=10) as ws:
            self._ws = ws
            self._opened.set()
            with contextlib.suppress(ConnectionClosed):
                for message in ws:
                    self.messages.append(
                        message if isinstance(message, bytes) else message.encode()
                    )

    def close(self) -> None:
        self._ws.close()
        self._thread.join(timeout=5)


def _wait_for_port(port: int, timeout: float = 30) -> None:
    """mitmweb serves its UI a moment after the proxy port opens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"mitmweb never listened on {port}"
            time.sleep(0.1)


def _calls(proxy: Proxy, emulator: Emulator, vkey: str, stray: str) -> list[int]:
    chat = "https://api.openai.com/v1/chat/completions"
    gemini = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    hello = [{"role": "user", "content": "hello flows"}]
    bearer = {"authorization": f"Bearer {CALLER_KEY}"}
    calls: list[tuple[str, dict, dict, int]] = [
        # (url, json body, headers, expected status)
        (chat, {"model": "byok-flows", "messages": hello}, bearer, 200),
        (chat, {"model": "gpt-4o-mini", "messages": hello},
         {"authorization": f"Bearer {vkey}"}, 200),
        (chat, {"model": "gpt-4o-mini", "messages": hello, "stream": True},
         {"authorization": f"Bearer {vkey}"}, 200),
        ("https://api.anthropic.com/v1/messages",
         {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": hello},
         {"x-api-key": vkey}, 200),
        ("https://api.anthropic.com/v1/messages",
         {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": hello},
         {"x-api-key": ANTHROPIC_CALLER_KEY}, 200),
        (chat, {"model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"my token is {PROMPT_TOKEN}"}]},
         bearer, 400),
        (chat, {"model": "gpt-4o-mini", "messages": hello},
         {**bearer, "x-debug": HEADER_TOKEN}, 400),
        (f"{gemini}:generateContent?key={GEMINI_CALLER_KEY}",
         {"contents": [{"role": "user", "parts": [{"text": "hello flows"}]}]}, {}, 200),
        (chat, {"model": "gpt-denied-1", "messages": hello}, bearer, 403),
        (chat, {"model": "gpt-4o-mini", "messages": hello}, {**bearer, "x-note": stray}, 401),
        (f"https://localhost:{emulator.port}/v1/batches", {"input_file_id": "file-1"},
         {"x-api-key": ANTHROPIC_CALLER_KEY}, 404),
    ]  # fmt: skip
    statuses = []
    with proxy.http_client(timeout=30) as client:
        for url, body, headers, expected in calls:
            response = client.post(url, json=body, headers=headers)
            assert response.status_code == expected, (url, response.status_code, response.text)
            assert REQUEST_ID in response.headers
            statuses.append(response.status_code)
    return statuses


def _flow_views(flowfile: Path) -> tuple[dict[str, bytes], int]:
    raw = flowfile.read_bytes()
    states = []
    with flowfile.open("rb") as handle:
        for flow in mitmio.FlowReader(handle).stream():
            states.append(flow.get_state())

    def text(value: object) -> str:
        return value.decode("latin-1") if isinstance(value, bytes) else repr(value)

    dumped = json.dumps(states, default=text, ensure_ascii=False).encode()
    return {"-w file bytes": raw, "flow.get_state()": dumped + repr(states).encode()}, len(states)


def _web_views(port: int) -> dict[str, bytes]:
    headers = {"authorization": f"Bearer {WEB_PASSWORD}"}
    views: dict[str, bytes] = {}
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as web:
        flows = web.get("/flows")
        assert flows.status_code == 200, flows.text
        views["mitmweb GET /flows"] = flows.content
        contents = []
        for flow in flows.json():
            for message in ("request", "response"):
                if flow.get(message) is None or flow[message].get("contentLength") is None:
                    continue  # none, or streamed: mitmproxy kept no body to serve
                data = web.get(f"/flows/{flow['id']}/{message}/content.data")
                assert data.status_code == 200, (flow["id"], message, data.status_code)
                contents.append(data.content)
        assert contents, "mitmweb served no message content"
        views["mitmweb content.data"] = b"\n".join(contents)
        dump = web.get("/flows/dump")
        assert dump.status_code == 200
        views["mitmweb GET /flows/dump"] = dump.content
    return views


@pytest.fixture(scope="module", params=["mitmdump", "mitmweb"])
def mixed_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    confdir: Path,
    emulator_server: Emulator,
) -> Iterator[Run]:
    front = request.param
    directory = tmp_path_factory.mktemp(f"flows-{front}")
    (directory / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (directory / "policy.yaml").write_text(POLICY)
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    db = directory / "ledger" / "audit.db"
    db.parent.mkdir()
    store = KeyStore(db)
    vkey, stray = store.issue("flowuser", []), store.issue("strayuser", [])
    store.close()
    flowfile = directory / "flows.mitm"
    extra = ["-w", str(flowfile)]
    web_port = free_port()
    if front == "mitmweb":
        extra += ["--web-port", str(web_port), "--set", "web_open_browser=false",
                  "--set", f"web_password={WEB_PASSWORD}"]  # fmt: skip
    proxy = Proxy(directory, db, confdir, upstream_ca=emulator_server.ca_path,
                  env=UPSTREAM_KEYS, extra_args=extra,
                  binary=MITMWEB if front == "mitmweb" else MITMDUMP)  # fmt: skip
    run = Run()
    run.secrets = {
        **{f"route secret {name}": value for name, value in UPSTREAM_KEYS.items()},
        "virtual key": vkey,
        "stray virtual key in x-note": stray,
        "caller key (authorization)": CALLER_KEY,
        "caller key (anthropic x-api-key)": ANTHROPIC_CALLER_KEY,
        "caller key (gemini ?key=)": GEMINI_CALLER_KEY,
        "GitHub token in a prompt": PROMPT_TOKEN,
        "GitHub token in a header": HEADER_TOKEN,
    }
    with proxy:
        updates = None
        if front == "mitmweb":
            _wait_for_port(web_port)
            updates = Updates(web_port)
        emulator_server.reset()
        run.statuses = _calls(proxy, emulator_server, vkey, stray)
        if updates is not None:
            run.views.update(_web_views(web_port))
            updates.close()
            assert updates.messages, "mitmweb pushed no updates"
            run.views["mitmweb /updates WebSocket"] = b"\n".join(updates.messages)
    # The pass-through call really carried the caller's key to the upstream.
    assert any(h.headers.get("authorization") == f"Bearer {CALLER_KEY}"
               for h in emulator_server.hits)  # fmt: skip
    file_views, run.flow_count = _flow_views(flowfile)
    run.views.update(file_views)
    yield run


def test_the_run_left_flows_to_search(mixed_run: Run) -> None:
    """Guard: the views hold every call, unmasked text included, so a search can hit."""
    assert mixed_run.flow_count >= len(mixed_run.statuses) == 11
    for name, data in mixed_run.views.items():
        # mitmweb's flow list and live updates carry no bodies; every other view does.
        bodiless = ("mitmweb GET /flows", "mitmweb /updates WebSocket")
        needle = b"/v1/chat/completions" if name in bodiless else b"hello flows"
        assert needle in data, name
    state = mixed_run.views["flow.get_state()"]
    assert "…(caller key)".encode() in state or b"(caller key)" in state


SECRET_NAMES = [
    *(f"route secret {name}" for name in UPSTREAM_KEYS),
    "virtual key",
    "stray virtual key in x-note",
    "caller key (authorization)",
    "caller key (anthropic x-api-key)",
    "caller key (gemini ?key=)",
    "GitHub token in a prompt",
    "GitHub token in a header",
]


@pytest.mark.parametrize("secret", SECRET_NAMES)
def test_no_view_of_the_flows_holds_the_secret(secret: str, mixed_run: Run) -> None:
    value = mixed_run.secrets[secret].encode()
    found = {
        name: data.count(value)
        for name, data in mixed_run.views.items()
        if value in data or value.decode() in data.decode("utf-8", "replace")
    }
    assert found == {}, f"{secret} appears in: {found}"
