"""Real coding agents driven through the proxy: the Codex CLI (npm ``@openai/codex``).

``./run.sh test`` installs the agents pinned in ``tests/agents/package-lock.json`` into
``tests/agents/node_modules`` (git-ignored). ``CodexRunner`` runs ``codex exec`` once,
non-interactively and offline:

* Codex talks to the real host ``api.openai.com`` (its built-in ``openai`` provider, no
  base-URL override) through ``HTTPS_PROXY``; the proxy's route table decides where the
  call goes. Its first transport is the Responses API's WebSocket mode
  (``wss://api.openai.com/v1/responses``, on by default for the built-in provider since
  the ``responses_websockets`` feature flags were retired; nothing to switch on). It falls
  back to ``POST /v1/responses`` (SSE) for the rest of the session when the upgrade is
  answered ``426 Upgrade Required`` (at once) or keeps failing (401, 403, 404, 502, a
  TLS failure: after ``stream_max_retries`` = 5 retries, ~6.5 s of back-off). A ``400``
  or ``429`` on the upgrade is fatal: no fallback, the run fails.
* The proxy's CA is trusted through ``CODEX_CA_CERTIFICATE`` (Codex's own variable; it
  wins over ``SSL_CERT_FILE``, which works too). The HTTPS client (reqwest, which adds
  the bundle to the system roots) and the WebSocket client (tungstenite over rustls)
  both load it.
* The key goes in ``CODEX_API_KEY``, which ``codex exec`` reads; Codex 0.171 ignores
  ``OPENAI_API_KEY`` for its built-in provider (it would send no credential at all).
  ``OPENAI_API_KEY`` is set to the same key anyway, for tools the agent runs.
* ``CODEX_HOME`` and ``HOME`` are a fresh directory with a ``config.toml`` that turns off
  everything that would reach other hosts (analytics, OpenTelemetry export, feedback,
  update checks, curated-plugin sync from github.com and chatgpt.com, the model list from
  chatgpt.com, the app-server daemon) and bounds connection retries, so a run only ever
  calls the model. ``--strict-config`` makes a Codex upgrade that drops one of these keys
  fail the run instead of ignoring it.

Each run starts ``codex exec`` in its own process group and kills the whole group when
it ends or times out (``codex.js`` on Node 20 spawns the native binary as a child).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.proxy import ROOT

AGENTS_DIR = ROOT / "tests" / "agents"
CODEX_BIN = AGENTS_DIR / "node_modules" / ".bin" / "codex"
# Known to Codex 0.171 (no "fallback model metadata" warning), matched by the test route
# table's `gpt-*` route and priced through the `gpt-5` prefix.
DEFAULT_MODEL = "gpt-5.5"
DEFAULT_TIMEOUT = 60.0

# Variables of the calling shell that would change where Codex connects, whom it trusts or
# who it is; every run sets its own.
_SCRUBBED = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
    "CODEX_API_KEY", "CODEX_ACCESS_TOKEN", "CODEX_HOME", "CODEX_CA_CERTIFICATE",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
    "https_proxy", "http_proxy", "all_proxy", "no_proxy",
    "RUST_LOG",
)  # fmt: skip


def codex_version() -> str:
    """The pinned ``@openai/codex`` version (tests/agents/package.json)."""
    package = json.loads((AGENTS_DIR / "package.json").read_text())
    return str(package["dependencies"]["@openai/codex"])


def codex_executable() -> Path:
    """The installed ``codex`` launcher; a missing install is an error, never a skip."""
    if not CODEX_BIN.exists():
        raise RuntimeError(
            f"{CODEX_BIN} is missing: run ./run.sh test (it runs npm ci --prefix tests/agents)"
        )
    return CODEX_BIN


def toml_value(value: Any) -> str:
    """A TOML literal for a -c override or a config line (str, bool, number, list, table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def codex_config(model: str = DEFAULT_MODEL, sandbox: str = "read-only") -> str:
    """config.toml for one offline, non-interactive run."""
    return f"""\
# Written by tests/agents.py for one test run.
model = {toml_value(model)}
approval_policy = "never"
sandbox_mode = {toml_value(sandbox)}
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
metrics_exporter = "none"
trace_exporter = "none"

[features]
# No curated-plugin sync (github.com, api.github.com, chatgpt.com) and no app connectors.
plugins = false
remote_plugin = false
apps = false
# No model list from chatgpt.com/backend-api/codex/models at start-up.
api_key_model_discovery = false
# A broken proxy or CA ends the run after the provider's 5 retries instead of never.
unbounded_connection_retries = false
# No background app-server daemon outliving the run.
daemon_auto_start = false
"""


@dataclass(frozen=True)
class AgentResult:
    """What one agent run left: exit status, output, and where its files are."""

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

    @property
    def fell_back_to_https(self) -> bool:
        """Codex gave up on the WebSocket and used POST /v1/responses."""
        return "Falling back from WebSockets to HTTPS transport" in self.stderr

    def describe(self, tail: int = 4000) -> str:
        """A summary for assertion messages (the end of stderr holds Codex's errors)."""
        state = "timed out" if self.timed_out else f"exit {self.returncode}"
        return (
            f"codex exec: {state} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-tail:]}\n--- stderr ---\n{self.stderr[-tail:]}"
        )


class CodexRunner:
    """Runs ``codex exec`` through a proxy; one fresh CODEX_HOME per run under ``base``.

    >>> result = runner("say hi", api_key="lg-...")
    >>> assert result.ok, result.describe()
    """

    def __init__(self, proxy_url: str, ca_path: str | Path, base: Path) -> None:
        self.proxy_url = proxy_url
        self.ca_path = str(ca_path)
        self.base = base
        self._runs = 0
        self.executable = codex_executable()

    def __call__(
        self,
        prompt: str,
        *,
        api_key: str,
        model: str = DEFAULT_MODEL,
        timeout: float = DEFAULT_TIMEOUT,
        sandbox: str = "read-only",
        config: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> AgentResult:
        """Run one prompt to completion (or ``timeout``).

        ``config`` adds ``-c key=value`` overrides (dotted keys, values made TOML);
        ``args`` go to ``codex exec`` before the prompt; ``env`` is applied last.
        """
        self._runs += 1
        home = self.base / f"codex-{self._runs}"
        workdir = home / "work"
        workdir.mkdir(parents=True)
        (home / "config.toml").write_text(codex_config(model, sandbox))

        run_env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        run_env.update(
            {
                "CODEX_HOME": str(home),
                "HOME": str(home),
                "CODEX_API_KEY": api_key,
                "OPENAI_API_KEY": api_key,
                "HTTPS_PROXY": self.proxy_url,
                "HTTP_PROXY": self.proxy_url,
                "https_proxy": self.proxy_url,
                "http_proxy": self.proxy_url,
                "CODEX_CA_CERTIFICATE": self.ca_path,
                "NO_COLOR": "1",
                "TERM": "dumb",
            }
        )
        run_env.update(env or {})
        command = [str(self.executable), "exec", "--strict-config", "--skip-git-repo-check"]
        command += ["--color", "never"]
        for key, value in (config or {}).items():
            command += ["-c", f"{key}={toml_value(value)}"]
        command += [*args, prompt]

        ran = run_in_group(command, workdir, run_env, timeout)
        return AgentResult(**ran.__dict__, home=home, workdir=workdir)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def run_in_group(command: list[str], workdir: Path, env: dict[str, str], timeout: float) -> Ran:
    """Run an agent in its own process group, and kill the whole group when it ends or
    times out (an agent's launcher spawns the real binary, which spawns tools)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
    finally:
        _kill_group(proc.pid)  # whatever the agent left running in its group
    return Ran(proc.returncode, stdout, stderr, time.monotonic() - started, timed_out)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
