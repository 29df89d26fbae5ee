"""The addon inside mitmproxy's own test context: options, denials as mitmweb shows them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

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


def llm_flow(model: str) -> tflow.HTTPFlow:
    flow = tflow.tflow()
    flow.request.scheme, flow.request.host, flow.request.port = "https", "api.openai.com", 443
    flow.request.method, flow.request.path = "POST", "/v1/chat/completions"
    flow.request.headers["host"] = "api.openai.com"
    flow.request.content = json.dumps({"model": model, "messages": []}).encode()
    return flow


def test_denied_flow_is_marked_with_the_reason_as_comment(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    gateway = Gateway()
    with taddons.context(gateway) as tctx:
        tctx.configure(
            gateway, llmgate_policies=str(tmp_path / "p.yaml"), llmgate_db=str(tmp_path / "a.db")
        )
        assert any("api\\.openai\\.com" in host for host in tctx.options.allow_hosts)
        denied, allowed = llm_flow("gpt-4-32k"), llm_flow("gpt-4o")
        asyncio.run(gateway.request(denied))
        asyncio.run(gateway.request(allowed))
        assert denied.response is not None and denied.response.status_code == 403
        assert denied.marked == ":no_entry:"
        assert denied.comment.startswith("llmgate denied: model_not_allowed")
        assert allowed.response is None and not allowed.marked
        assert allowed.metadata["llmgate"]["user"] == "anonymous"
        json.dumps(allowed.metadata)  # mitmweb needs serialisable metadata
        gateway.done()


def test_a_broken_policy_file_is_an_options_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("routes:\n  - {id: x, provider: openai}\n")
    gateway = Gateway()
    with taddons.context(gateway) as tctx, pytest.raises(exceptions.OptionsError, match="endpoint"):
        tctx.configure(gateway, llmgate_policies=str(tmp_path / "p.yaml"),
                       llmgate_db=str(tmp_path / "a.db"))  # fmt: skip
