"""The addon inside mitmproxy's own test context: options, denials as mitmweb shows them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addon.gateway import Gateway

POLICY = """\
routes:
  - {id: openai, model_pattern: "*", provider: openai, endpoint: "https://api.openai.com"}
policies:
  - name: everyone
    applies_to: {users: ["*"]}
    denied_models: ["gpt-4-32k*"]
"""


@contextlib.contextmanager
def configured_gateway(tmp_path: Path) -> Iterator[tuple[Gateway, taddons.context]]:
    """The addon in mitmproxy's test context with POLICY and a ledger in `tmp_path`."""
    (tmp_path / "p.yaml").write_text(POLICY)
    gateway = Gateway()
    with taddons.context(gateway) as tctx:
        tctx.configure(
            gateway, llmgate_policies=str(tmp_path / "p.yaml"), llmgate_db=str(tmp_path / "a.db")
        )
        yield gateway, tctx


def llm_flow(model: str, stream: bool = False) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.scheme, flow.request.host, flow.request.port = "https", "api.openai.com", 443
    flow.request.method, flow.request.path = "POST", "/v1/chat/completions"
    flow.request.headers["host"] = "api.openai.com"
    body = {"model": model, "messages": [], "stream": stream}
    flow.request.content = json.dumps(body).encode()
    return flow


def test_denied_flow_is_marked_with_the_reason_as_comment(tmp_path: Path) -> None:
    with configured_gateway(tmp_path) as (gateway, tctx):
        assert any("api\\.openai\\.com" in host for host in tctx.options.allow_hosts)
        # Streamed: a buffered call would be exchanged in the hook (with no upstream
        # here, a 502); a streamed one is handed to the dispatcher's listener.
        denied, allowed = llm_flow("gpt-4-32k"), llm_flow("gpt-4o", stream=True)
        asyncio.run(gateway.request(denied))
        asyncio.run(gateway.request(allowed))
        assert denied.response is not None and denied.response.status_code == 403
        assert denied.marked == ":no_entry:"
        assert denied.comment.startswith("llmgate denied: model_not_allowed")
        assert allowed.response is None and not allowed.marked
        assert allowed.metadata["llmgate"]["user"] == "anonymous"
        json.dumps(allowed.metadata)  # mitmweb needs serialisable metadata
        asyncio.run(gateway.done())


def test_a_broken_policy_file_is_an_options_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("routes:\n  - {id: x, provider: openai}\n")
    gateway = Gateway()
    with taddons.context(gateway) as tctx, pytest.raises(exceptions.OptionsError, match="endpoint"):
        tctx.configure(gateway, llmgate_policies=str(tmp_path / "p.yaml"),
                       llmgate_db=str(tmp_path / "a.db"))  # fmt: skip


def _ledger_row(db: Path, request_id: str) -> dict:
    import sqlite3

    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("select * from requests where id = ?", (request_id,)).fetchone())
    finally:
        conn.close()


@pytest.mark.parametrize("stage", ["parse_call", "choose_route", "check_policy", "plan_attempts"])
def test_any_exception_while_deciding_is_a_500_in_the_callers_format_never_a_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stage: str
) -> None:
    """The guard is the unit under test, so a fault is injected where no input reaches."""
    from addon import pipeline, planning

    secret_in_message = "sk-leaked-in-an-exception-message-0000"

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError(secret_in_message)

    monkeypatch.setattr(planning if stage == "plan_attempts" else pipeline, stage, broken)
    with configured_gateway(tmp_path) as (gateway, _):
        flow = llm_flow("gpt-4o")
        asyncio.run(gateway.request(flow))
        assert flow.response is not None, "an undecided call must never be forwarded"
        assert flow.response.status_code == 500
        body = json.loads(flow.response.content or b"")
        assert body["error"]["code"] == "internal_error"  # OpenAI's error shape
        request_id = flow.response.headers["x-llmgate-request-id"]
        gateway.audit.flush()  # type: ignore[union-attr]
        row = _ledger_row(tmp_path / "a.db", request_id)
        assert (row["status"], row["reason"], row["http_status"]) == (
            "failed",
            "internal_error",
            500,
        )
        asyncio.run(gateway.done())
    assert secret_in_message not in caplog.text
    assert "KeyError" in caplog.text  # the log still says what broke, and where


def test_an_exception_on_the_reply_replaces_it_with_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from addon.gateway import replies

    with configured_gateway(tmp_path) as (gateway, _):
        flow = llm_flow("gpt-4o", stream=True)
        asyncio.run(gateway.request(flow))
        assert flow.response is None  # decided and handed to the listener
        flow.response = tflow.tresp(content=b'{"secret-reply": true}')

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(replies.HttpReplies, "_install_tap", broken)
        gateway.replies.responseheaders(flow)
        assert flow.response.status_code == 500
        assert callable(flow.response.stream)
        assert b"internal_error" in flow.response.stream(b"")
        assert flow.response.stream(b"upstream bytes") == []  # nothing of the reply goes out
        gateway.replies.response(flow)
        gateway.audit.flush()  # type: ignore[union-attr]
        row = _ledger_row(tmp_path / "a.db", flow.metadata["llmgate"]["request_id"])
        assert (row["status"], row["reason"]) == ("failed", "internal_error")
        asyncio.run(gateway.done())


def test_the_default_policies_are_the_shipped_directory() -> None:
    # ./run.sh exports LLMGATE_POLICIES, which would hide a wrong default here.
    from addon.gateway import options

    assert (options._PROJECT_POLICIES / "default.yaml").is_file()


@pytest.mark.parametrize(
    ("scheme", "host", "port", "host_header"),
    [
        ("http", "127.0.0.1", 8081, "127.0.0.1:8081"),
        ("https", "llm.internal", 443, "llm.internal"),
        ("https", "llm.internal", 8443, "llm.internal:8443"),
    ],
)
def test_a_rewritten_flow_names_its_upstream_in_every_field(
    scheme: str, host: str, port: int, host_header: str
) -> None:
    """What mitmweb shows (and `-w` saves) is where the call went: the Host header
    carries the new host and its port, whatever the caller's was."""
    from addon.call import Call, Rewrite
    from addon.routes import Upstream

    flow = llm_flow("gpt-4o")
    call = Call("id", 0.0, "openai_chat", "api.openai.com", "/v1/chat/completions")
    rewrite = Rewrite(Upstream(scheme, host, port, "/v1/chat/completions"), None, {}, ())
    Gateway().apply_rewrite(flow, call, rewrite)
    request = flow.request
    assert (request.scheme, request.host, request.port) == (scheme, host, port)
    assert request.headers.get_all("host") == [host_header]
    assert request.pretty_url == f"{scheme}://{host_header}/v1/chat/completions"


@pytest.mark.parametrize("status", [200, 429, 599])
def test_a_whole_reply_is_the_response_mitmproxys_constructor_builds(status: int) -> None:
    """handoff.whole_response skips the constructor's debug-mode type checks; every
    field must still be what the constructor makes of the same values (a mitmproxy
    release that adds or renames a field fails here)."""
    from mitmproxy import http

    from addon.gateway.handoff import _reason, whole_response

    fields = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    fast = whole_response(status, http.Headers(fields), b"{}", 1700000000.5)
    built = http.Response(
        b"HTTP/1.1", status, _reason(status), http.Headers(fields), b"{}", None, 1700000000.5,
        1700000000.5,
    )  # fmt: skip
    assert type(fast) is type(built) and type(fast.data) is type(built.data)
    assert vars(fast) == vars(built) | {"data": fast.data}
    assert vars(fast.data) == vars(built.data)
    assert fast.get_state() == built.get_state()
    assert (fast.status_code, fast.reason, fast.text) == (status, built.reason, "{}")


def _update_hooks(gateway: Gateway, tctx: taddons.context) -> list[str]:
    from mitmproxy.addonmanager import traverse

    ours = [*traverse([gateway]), tctx.master.addons.get("llmgate-view-shade-lifter")]
    return [type(a).__name__ for a in ours if a is not None and hasattr(a, "update")]


def test_a_view_reads_a_sending_flow_masked_and_mitmproxy_sends_it_whole() -> None:
    """mitmweb's (or the console's) view reads flows in `update`: llmgate shades a flow
    whose credentials are on it for the send, and lifts the shade after the view."""
    from mitmproxy import hooks
    from mitmproxy.addons.view import View

    class RecordingView(View):
        name = "view"

        def __init__(self) -> None:
            super().__init__()
            self.read: list[str | None] = []

        def update(self, flows: Any) -> None:
            self.read.append(flows[0].request.headers.get("authorization"))
            super().update(flows)

    gateway = Gateway()
    with taddons.context() as tctx:
        view = RecordingView()
        tctx.master.addons.add(view)
        tctx.master.addons.add(gateway)
        # mitmweb's order: the scripts (llmgate's addon), then the view, then the lifter
        # llmgate appended last.
        chain, lifter = (
            tctx.master.addons.chain,
            tctx.master.addons.get("llmgate-view-shade-lifter"),
        )
        chain[:] = [a for a in chain if a not in (view, lifter)] + [view, lifter]
        assert _update_hooks(gateway, tctx) == ["ViewShade", "ViewShadeLifter"]
        flow = tflow.tflow()
        flow.request.headers["authorization"] = "Bearer sk-caller-live-secret"
        gateway.masking.sending(flow, "caller key")
        asyncio.run(tctx.master.addons.trigger_event(hooks.UpdateHook([flow])))
        assert view.read and "sk-caller-live-secret" not in str(view.read)
        assert flow.request.headers["authorization"] == "Bearer sk-caller-live-secret"


def test_without_a_view_llmgate_has_no_update_hook() -> None:
    """mitmproxy calls every `update` hook after every hook of every flow (four times a
    call); in mitmdump nothing reads flows there, so llmgate installs none."""
    gateway = Gateway()
    with taddons.context(gateway) as tctx:
        assert _update_hooks(gateway, tctx) == []


def test_running_puts_the_start_up_heap_out_of_the_collectors_sight() -> None:
    """Full collections of the start-up heap held every call in flight for ~60 ms."""
    import gc

    gateway = Gateway()
    try:
        with taddons.context(gateway):
            gc.unfreeze()
            gateway.running()
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
