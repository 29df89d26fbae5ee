"""Shared end-to-end fixtures: one upstream emulator and one llmgate proxy per session."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import CodexRunner
from tests.emulator import Emulator
from tests.proxy import ROOT, Proxy

# A copy of ../shared/fixtures/recorded (see its README for provenance and licence),
# so that a clone anywhere can run the suite.
FIXTURES = Path(os.environ.get("LLMGATE_FIXTURES", ROOT / "tests" / "fixtures" / "recorded"))

# The upstream keys the route table injects; callers never know them.
UPSTREAM_KEYS = {
    "UPSTREAM_OPENAI_KEY": "sk-upstream-openai-0000",
    "UPSTREAM_ANTHROPIC_KEY": "sk-ant-upstream-0000",
    "UPSTREAM_GEMINI_KEY": "AIza-upstream-gemini-0000",
}
CALLER_KEY = "sk-caller-own-key-1234"


def emulator_policy(emulator_url: str) -> str:
    """Routes every test model to the emulator; a few models exercise the edge cases."""
    return textwrap.dedent(
        f"""\
        intercept_hosts: [aiplatform.googleapis.com, api.groq.com, openrouter.ai]
        routes:
          - {{id: openai-team, model_pattern: team-default, provider: openai,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_OPENAI_KEY,
             upstream_model: gpt-4o-mini}}
          - {{id: anthropic-team, model_pattern: claude-team, provider: anthropic,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_ANTHROPIC_KEY,
             upstream_model: claude-haiku-4-5}}
          - {{id: gemini-team, model_pattern: gemini-team, provider: gemini,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_GEMINI_KEY,
             upstream_model: gemini-2.5-flash}}
          - {{id: needs-secret, model_pattern: "secretless-*", provider: openai,
             endpoint: "{emulator_url}", api_key_secret: LLMGATE_TEST_UNSET_SECRET}}
          - {{id: passthrough, model_pattern: "byok-*", provider: openai,
             endpoint: "{emulator_url}"}}
          - {{id: openai, model_pattern: "gpt-*", provider: openai,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_OPENAI_KEY}}
          - {{id: openai-o, model_pattern: "o*", provider: openai,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_OPENAI_KEY}}
          - {{id: openai-compatible, model_pattern: "openai/*", provider: openai,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_OPENAI_KEY}}
          - {{id: openrouter-google, model_pattern: "google/*", provider: openai,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_OPENAI_KEY}}
          - {{id: anthropic, model_pattern: "claude-*", provider: anthropic,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_ANTHROPIC_KEY}}
          - {{id: gemini, model_pattern: "gemini-*", provider: gemini,
             endpoint: "{emulator_url}", api_key_secret: UPSTREAM_GEMINI_KEY}}
        """
    )


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mitmproxy-confdir")


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[Emulator]:
    with Emulator() as server:
        yield server


@pytest.fixture
def emulator(emulator_server: Emulator) -> Emulator:
    emulator_server.reset()
    return emulator_server


@pytest.fixture(scope="session")
def policies_dir(tmp_path_factory: pytest.TempPathFactory, emulator_server: Emulator) -> Path:
    directory = tmp_path_factory.mktemp("policies")
    (directory / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    return directory


@pytest.fixture(scope="session")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    confdir: Path,
    policies_dir: Path,
    emulator_server: Emulator,
) -> Iterator[Proxy]:
    db = tmp_path_factory.mktemp("ledger") / "audit.db"
    with Proxy(
        policies_dir, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        yield running


@pytest.fixture
def codex(proxy: Proxy, tmp_path: Path) -> CodexRunner:
    """Runs `codex exec` through the session's llmgate proxy (see tests/agents.py):
    `codex("say hi", api_key=...)` -> AgentResult."""
    return CodexRunner(proxy.url, proxy.ca_path, tmp_path)
