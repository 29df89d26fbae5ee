"""The Claude Code CLI (npm ``@anthropic-ai/claude-code``) driven through the proxy.

``./run.sh test`` installs it with the Codex CLI from ``tests/agents/package-lock.json``
(``npm ci --prefix tests/agents``). The npm package is a wrapper: the CLI itself is a
native executable (a Bun single-file build, ~400 MB) shipped in a per-platform optional
dependency, ``@anthropic-ai/claude-code-<os>-<arch>[-musl]``, whose ``claude`` the
wrapper's postinstall copies (or hard-links) over its ``bin/claude.exe`` placeholder.
``claude_executable()`` runs the platform package's binary directly, so a run does not
depend on the postinstall script having been allowed to run.

``ClaudeCodeRunner`` runs ``claude -p <prompt>`` once, non-interactively and offline:

* Claude Code talks to the real host ``api.anthropic.com`` (no ``ANTHROPIC_BASE_URL``)
  through ``HTTPS_PROXY``; the proxy's route table decides where the call goes. Model
  calls are ``POST /v1/messages?beta=true`` with ``"stream": true``, the key in
  ``x-api-key``, ``anthropic-version: 2023-06-01``, a long ``anthropic-beta`` list
  (``claude-code-20250219``, ``interleaved-thinking-2025-05-14``, ...), and the headers
  ``x-app: cli``, ``X-Claude-Code-Session-Id``, ``x-claude-code-prompt-id``,
  ``x-client-request-id``, ``x-claude-code-request-class: main``. The body asks for
  extended thinking (``thinking: {type: enabled, budget_tokens: 31999}``), carries
  ``context_management``, ``diagnostics`` and ``metadata.user_id``, and ~12 tools
  (``Read``, ``Bash``, ``Edit``, ``Write``, ...).
* The proxy's CA is trusted through ``NODE_EXTRA_CA_CERTS``: the Bun runtime appends it
  to its bundled Mozilla roots.
* The key goes in ``ANTHROPIC_API_KEY`` (sent as ``x-api-key``); in ``-p`` mode it is
  used without the interactive approval prompt.
* ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` (with ``DISABLE_TELEMETRY``,
  ``DISABLE_ERROR_REPORTING``, ``DISABLE_AUTOUPDATER``,
  ``DISABLE_NON_ESSENTIAL_MODEL_CALLS``) stops the event logging
  (``/api/event_logging/v2/batch``), the feature-flag evaluation (``/api/eval/sdk-*``),
  the bootstrap (``/api/claude_cli/bootstrap``), ``/api/claude_code_penguin_mode``,
  ``/api/directory/server-urls`` (the MCP registry) and the metrics opt-out check. What
  is left besides the model calls is the managed-settings fetch, ``GET
  /api/claude_code/settings`` and ``GET /api/claude_code/policy_limits`` on
  api.anthropic.com (with the key in ``x-api-key``), retried a few times when refused;
  a refusal is not fatal.
* ``HOME`` and ``CLAUDE_CONFIG_DIR`` are a fresh directory per run, so no settings,
  credentials, memory or session history of the machine's user apply.
* Permissions: ``--allowedTools`` names the tools the run may use without a prompt
  (``Read`` by default); ``--dangerously-skip-permissions`` is refused as root, and is
  not needed.

Each run starts ``claude`` in its own process group and kills the whole group when it
ends or times out.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.agents import AGENTS_DIR, run_in_group

PACKAGE = "@anthropic-ai/claude-code"
PACKAGE_DIR = AGENTS_DIR / "node_modules" / "@anthropic-ai" / "claude-code"
# A name the CLI knows (no "unknown model" warning) and the test route's `claude-*` matches.
DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_TIMEOUT = 45.0

# Switches that keep a run to the model calls (see the module docstring).
OFFLINE_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_NON_ESSENTIAL_MODEL_CALLS": "1",
}

# Variables of the calling shell that would change where Claude Code connects, whom it
# trusts, who it is or what it loads; every run sets its own. Besides these, every
# ANTHROPIC_*, CLAUDE_* and CLAUDECODE* variable is dropped (base URLs, Bedrock / Vertex
# switches, a parent Claude Code session's markers).
_SCRUBBED = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "NODE_OPTIONS", "NODE_USE_SYSTEM_CA", "NODE_TLS_REJECT_UNAUTHORIZED",
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
    "https_proxy", "http_proxy", "all_proxy", "no_proxy",
    "AWS_BEARER_TOKEN_BEDROCK", "GOOGLE_APPLICATION_CREDENTIALS",
    "DISABLE_TELEMETRY", "DISABLE_ERROR_REPORTING", "DISABLE_AUTOUPDATER",
    "DISABLE_NON_ESSENTIAL_MODEL_CALLS", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
    "XDG_STATE_HOME", "XDG_CACHE_HOME",
)  # fmt: skip
_SCRUBBED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "CLAUDECODE", "OTEL_")


def claude_code_version() -> str:
    """The pinned ``@anthropic-ai/claude-code`` version (tests/agents/package.json)."""
    package = json.loads((AGENTS_DIR / "package.json").read_text())
    return str(package["dependencies"][PACKAGE])


def _platform_packages() -> list[str]:
    """The platform package names that may hold this machine's binary, best first."""
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    if sys.platform == "darwin":
        return [f"claude-code-darwin-{arch}"]
    if sys.platform.startswith("linux"):
        glibc = platform.libc_ver()[0] == "glibc"
        both = [f"claude-code-linux-{arch}", f"claude-code-linux-{arch}-musl"]
        return both if glibc else both[::-1]
    return []


def claude_executable() -> Path:
    """The installed native ``claude`` binary; a missing install is an error, never a skip."""
    for name in _platform_packages():
        binary = AGENTS_DIR / "node_modules" / "@anthropic-ai" / name / "claude"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    copied = PACKAGE_DIR / "bin" / "claude.exe"  # the postinstall's copy
    if copied.is_file() and copied.stat().st_size > 1_000_000:
        return copied
    raise RuntimeError(
        f"no native claude binary under {AGENTS_DIR / 'node_modules'} for {sys.platform}/"
        f"{platform.machine()}: run ./run.sh test (it runs npm ci --prefix tests/agents)"
    )


@dataclass(frozen=True)
class ClaudeResult:
    """What one ``claude -p`` run left: exit status, output, and where its files are."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    home: Path
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def events(self) -> list[dict[str, Any]]:
        """The output's JSON objects: one for ``--output-format json``, one per line for
        ``stream-json`` (``system``/``init``, then ``assistant`` and ``user`` messages as
        the CLI parsed them, tool calls and results included, then ``result``)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def result(self) -> dict[str, Any]:
        """The run's final ``result`` object (``subtype``, ``is_error``, ``result``,
        ``num_turns``, ``usage``, ...)."""
        results = [e for e in self.events() if e.get("type") == "result"]
        if not results:
            raise AssertionError(f"no result object in the output\n{self.describe()}")
        return results[-1]

    def session_id(self) -> str:
        """The Claude Code session the run belonged to (its ``result`` object says)."""
        return str(self.result()["session_id"])

    def messages(self, role: str) -> list[dict[str, Any]]:
        """The ``stream-json`` messages of one role (``assistant`` or ``user``)."""
        return [e["message"] for e in self.events() if e.get("type") == role]

    def debug_log(self, tail: int = 6000) -> str:
        """The end of the run's ``--debug`` log (``<CLAUDE_CONFIG_DIR>/debug/*.txt``)."""
        logs = sorted((self.home / ".claude" / "debug").glob("*.txt"))
        return "\n".join(p.read_text(errors="replace") for p in logs)[-tail:]

    def describe(self, tail: int = 4000) -> str:
        """A summary for assertion messages."""
        state = "timed out" if self.timed_out else f"exit {self.returncode}"
        return (
            f"claude -p: {state} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-tail:]}\n--- stderr ---\n{self.stderr[-tail:]}\n"
            f"--- debug log ---\n{self.debug_log(tail)}"
        )


class ClaudeCodeRunner:
    """Runs ``claude -p`` through a proxy; one fresh HOME / CLAUDE_CONFIG_DIR per run.

    >>> result = runner("say hi", api_key="lg-...")
    >>> assert result.ok, result.describe()
    """

    def __init__(self, proxy_url: str, ca_path: str | Path, base: Path) -> None:
        self.proxy_url = proxy_url
        self.ca_path = str(ca_path)
        self.base = base
        self._runs = 0
        self.executable = claude_executable()

    def environment(self, home: Path, api_key: str) -> dict[str, str]:
        """The run's environment: the caller's, scrubbed, plus the proxy, CA, key, home."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUBBED and not k.startswith(_SCRUBBED_PREFIXES)
        }
        env.update(OFFLINE_ENV)
        env.update(
            {
                "HOME": str(home),
                "CLAUDE_CONFIG_DIR": str(home / ".claude"),
                "ANTHROPIC_API_KEY": api_key,
                "HTTPS_PROXY": self.proxy_url,
                "HTTP_PROXY": self.proxy_url,
                "https_proxy": self.proxy_url,
                "http_proxy": self.proxy_url,
                "NODE_EXTRA_CA_CERTS": self.ca_path,
                "NO_COLOR": "1",
                "TERM": "dumb",
            }
        )
        return env

    def __call__(
        self,
        prompt: str,
        *,
        api_key: str,
        model: str = DEFAULT_MODEL,
        timeout: float = DEFAULT_TIMEOUT,
        allowed_tools: Sequence[str] = ("Read",),
        workdir: Path | None = None,
        output_format: str = "stream-json",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
    ) -> ClaudeResult:
        """Run one prompt to completion (or ``timeout``) in ``workdir`` (default: a new
        empty directory). ``args`` go before the prompt; ``env`` is applied last.

        ``home`` reuses an earlier run's HOME (``result.home``), where Claude Code keeps
        its session history: a second prompt can then ``--resume`` the first's session
        (``result.session_id()``; run it in the same ``workdir``)."""
        self._runs += 1
        if home is None:
            home = self.base / f"claude-{self._runs}"
            (home / ".claude").mkdir(parents=True)
        if workdir is None:
            workdir = home / "work"
            workdir.mkdir(exist_ok=True)
        run_env = self.environment(home, api_key)
        run_env.update(env or {})
        command = [str(self.executable), "--model", model, "--output-format", output_format]
        if output_format == "stream-json":
            command.append("--verbose")  # -p with stream-json requires it
        if allowed_tools:
            command += ["--allowedTools", ",".join(allowed_tools)]
        command += ["--debug", *args, "-p", prompt]

        ran = run_in_group(command, workdir, run_env, timeout)
        return ClaudeResult(**ran.__dict__, home=home, workdir=workdir)
