"""Shared end-to-end fixtures: one upstream emulator and one llmgate proxy per session.

Also the run's guards against silent passes: an exception in any thread fails
the test it happened in, and a skip not on the allow-list (tests/skips.py)
fails the run; every skip is listed with its reason at the end.
"""

from __future__ import annotations

import os
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import CodexRunner
from tests.emulator import Emulator
from tests.proxy import ROOT, Proxy
from tests.skips import allowed_reason

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


# --- no silent passes -------------------------------------------------------------------

# Reasons pytest gives a skip that names none.
_NO_REASON = {"", "skipped", "unconditional skip"}
_skipped: list[tuple[str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    # pytest reports an exception raised in a thread as a warning, and the test
    # passes. As an error it fails the test that is running when it is collected.
    # Tests that assert in threads use tests.strict.Workers, which fails the right
    # test; this catches the threads they do not own. Both spellings, because with
    # `-p no:warnings` the ini filters are not applied, and without it the global
    # filters are not the ones in force during a test.
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning")
    warnings.filterwarnings("error", category=pytest.PytestUnhandledThreadExceptionWarning)


# The longest file (minutes of generated calls) goes first, so that on two workers
# it overlaps the rest of the suite instead of running alone at its end.
_FIRST = "test_e2e_fuzz.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name != _FIRST)  # stable: the rest keep their order


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail}"
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ").strip()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append((report.nodeid, _reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped at import
        _skipped.append((report.nodeid, _reason(report)))


def _unallowed() -> list[tuple[str, str]]:
    return [
        (nodeid, reason)
        for nodeid, reason in _skipped
        if reason.lower() in _NO_REASON or allowed_reason(nodeid) is None
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unallowed() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _skipped:
        return
    terminalreporter.section("skips (allow-list: tests/skips.py)")
    bad = _unallowed()
    for nodeid, reason in _skipped:
        documented = allowed_reason(nodeid)
        if (nodeid, reason) in bad:
            why = "no reason given" if reason.lower() in _NO_REASON else "not on the allow-list"
            terminalreporter.line(f"SKIPPED {nodeid}: {reason or '-'} [{why}]", red=True)
        else:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason} [allowed: {documented}]")
    if bad:
        terminalreporter.line(
            f"{len(bad)} skip(s) not allowed: the run fails (see tests/skips.py)",
            red=True,
            bold=True,
        )
