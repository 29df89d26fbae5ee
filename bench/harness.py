"""The processes a run measures: the fake upstream and one mitmdump per variant.

A `Variant` is one way of running mitmdump that cases compare (bare, llmgate,
llmgate with quota windows, ...). Adding one is a new entry in `VARIANTS`: the
extra policy files it needs and, optionally, reply headers that prove its feature
actually ran (the check call before any measurement fails without them).
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import ENTRY, MITMDUMP, ROOT, UPSTREAM_SCRIPT, BenchError

# Lines in a proxy log that make its figures worthless (mitmdump runs with -q: errors only).
ERROR_LINE = re.compile(r"Addon error|Traceback|Error|error:|audit write lost|audit batch failed")

# The one route every llmgate variant has. It is priced because a quota window with
# max_cost_usd denies calls to unpriced models; every llmgate variant gets the same
# route, so the price is not a difference between the variants compared.
ROUTE_YAML = """\
routes:
  - id: bench
    model_pattern: "*"
    provider: openai
    endpoint: http://127.0.0.1:{upstream_port}
    pricing: {{input: 1, output: 2}}
"""

# The translation cases' route table: Chat callers asking for a `claude-*` model go to
# the same upstream as Anthropic Messages (bench/upstream.py answers `/v1/messages` in
# that format); every other model goes to the usual OpenAI route. One proxy thus serves
# the same-protocol call and the translated one, and the two differ only in the route.
TRANSLATE_ROUTES_YAML = """\
routes:
  - id: bench-anthropic
    model_pattern: "claude-*"
    provider: anthropic
    endpoint: http://127.0.0.1:{upstream_port}
    pricing: {{input: 1, output: 2}}
  - id: bench
    model_pattern: "*"
    provider: openai
    endpoint: http://127.0.0.1:{upstream_port}
    pricing: {{input: 1, output: 2}}
"""

# Two windows for every caller (a request-count minute and a token/cost day), with
# limits no bench run can reach, so every call pays the full reserve + settle path
# and none is ever denied.
QUOTA_YAML = """\
policies:
  - name: bench
    applies_to: {users: ["*"]}
    quota_windows:
      - {window_seconds: 60, scope: user, max_requests: 100000000}
      - window_seconds: 86400
        scope: user
        max_input_tokens: 10000000000
        max_output_tokens: 10000000000
        max_cost_usd: 1000000
"""

# One limit from each of QUOTA_YAML's windows on the check call's reply: both were
# bound to the call and reserved.
QUOTA_HEADERS = (b"x-llmgate-ratelimit-limit-requests", b"x-llmgate-ratelimit-limit-cost-usd")

# One window for every caller, the request count per minute, with a limit no run
# reaches: the smallest quota a policy can have, so a variant with it against one
# without measures the per-call cost of the quota store itself (one reserve and one
# settle). The fleet cases put it on SQLite (the default) and on Redis.
ONE_WINDOW_YAML = """\
policies:
  - name: bench
    applies_to: {users: ["*"]}
    quota_windows:
      - {window_seconds: 60, scope: user, max_requests: 100000000}
"""

# llmgate's safety scanning is on by default (the llmgate variant scans every prompt with
# the default policy); this file turns it off, for the safety case's baseline.
SAFETY_OFF_YAML = """\
safety: {enabled: false}
"""

# The `audit` case: the opening row queued, not committed before the call leaves.
AUDIT_SERVE_YAML = """\
audit: {on_failure: serve}
"""


# The hostile case's runaway stream is one SSE event of 125 MiB; the default cap (8 MiB)
# would end it early (tests/test_e2e_hostile_upstream.py covers that), and the case
# measures what a stream that runs to its end costs everyone else.
BIG_EVENTS_YAML = """\
limits: {max_event_bytes: 268435456}
"""


@dataclass(frozen=True)
class Variant:
    name: str  # key in results and the raw JSON
    title: str  # column heading in BENCH.md
    addon: bool = False  # load scripts/llmgate_addon.py with ROUTE_YAML
    policy_files: tuple[tuple[str, str], ...] = ()  # extra policy files: (file name, YAML)
    expect_headers: tuple[bytes, ...] = ()  # the check call's reply must carry these
    routes: str = ROUTE_YAML  # the route table (bench.yaml), formatted with upstream_port
    script: Path | None = None  # another `-s` script instead (a variant with addon=False)
    options: tuple[str, ...] = ()  # mitmproxy options (`--set`) this variant always has


# Issue 14's configuration: the ledger with payloads, safety and two quota windows.
EVERY_FEATURE = Variant(
    "llmgate+quota",
    "llmgate + 2 quota windows",
    addon=True,
    policy_files=(("quota.yaml", QUOTA_YAML),),
    expect_headers=QUOTA_HEADERS,
)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("bare", "bare mitmdump"),
        # The `floor` case: mitmdump answering every call from its request hook, with
        # no upstream (bench/hook_reply.py).
        Variant(
            "hook-reply",
            "mitmdump, a request hook that answers",
            script=Path(__file__).resolve().parent / "hook_reply.py",
        ),
        # The `hook_table` case: mitmdump with llmgate's hook table and nothing else.
        Variant(
            "bare+table",
            "mitmdump + llmgate's hook table alone",
            script=Path(__file__).resolve().parent / "hook_table_only.py",
        ),
        Variant("llmgate", "llmgate", addon=True),
        Variant(
            "llmgate-nosafety",
            "llmgate, safety off",
            addon=True,
            policy_files=(("safety.yaml", SAFETY_OFF_YAML),),
        ),
        Variant(
            "llmgate-serve",
            "llmgate, audit.on_failure serve",
            addon=True,
            policy_files=(("audit.yaml", AUDIT_SERVE_YAML),),
        ),
        Variant(
            "llmgate-bigevents",
            "llmgate, max_event_bytes 256 MiB",
            addon=True,
            policy_files=(("limits.yaml", BIG_EVENTS_YAML),),
        ),
        Variant(
            "llmgate-translate",
            "llmgate, an anthropic and an openai route",
            addon=True,
            routes=TRANSLATE_ROUTES_YAML,
        ),
        EVERY_FEATURE,
        # The `hook_table` case: every feature, with mitmproxy's own hook dispatch.
        replace(
            EVERY_FEATURE,
            name="llmgate+quota-mitmdispatch",
            title="llmgate + 2 quota windows, mitmproxy's own hook dispatch",
            options=("llmgate_hook_table=false",),
        ),
        # `./run.sh bench --profile` (bench/hotspots.py): every feature at once, the two
        # quota windows and both routes of the translation cases in one process, so one
        # profile covers the same-protocol call and the translated one.
        replace(
            EVERY_FEATURE,
            name="llmgate-profile",
            title="llmgate + 2 quota windows, an anthropic and an openai route",
            routes=TRANSLATE_ROUTES_YAML,
        ),
        # The fleet cases' variants: the window's store is chosen by the case (the
        # `llmgate_quota` option for Redis, `Proxy.ledger` for PostgreSQL), not here.
        Variant(
            "llmgate+window",
            "llmgate + 1 quota window on SQLite",
            addon=True,
            policy_files=(("quota.yaml", ONE_WINDOW_YAML),),
            expect_headers=(b"x-llmgate-ratelimit-limit-requests",),
        ),
        Variant(
            "llmgate+window-redis",
            "llmgate + 1 quota window on Redis",
            addon=True,
            policy_files=(("quota.yaml", ONE_WINDOW_YAML),),
            expect_headers=(b"x-llmgate-ratelimit-limit-requests",),
        ),
        Variant(
            "llmgate-fleet",
            "llmgate fleet (1 quota window on one Redis, ledger on one PostgreSQL)",
            addon=True,
            policy_files=(("quota.yaml", ONE_WINDOW_YAML),),
            expect_headers=(b"x-llmgate-ratelimit-limit-requests",),
        ),
    )
}


# Column headings for a case that compares one variant in two situations rather than
# two variants (its `CaseResult.variants` names these instead of `VARIANTS` keys).
PHASES: dict[str, str] = {
    "feature-layers": "llmgate, one more feature on each row",
    "dispatch-baseline": "the row's baseline (named in the cell)",
    "hook-dispatch": "the row's proxy",
    "idle": "llmgate, idle",
    "runaway": "llmgate, during a runaway stream",
    "same-protocol": "llmgate, Chat caller, openai route (same protocol)",
    "translated": "llmgate, Chat caller, anthropic route (translated)",
}


# --- process helpers ----------------------------------------------------------------


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, steal included), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of every child it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    """Terminate one process we started (by its handle, never by name), then kill if stuck."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the upstream and the proxies -------------------------------------------------


class Upstream:
    def __init__(self, events: int, interval_ms: float) -> None:
        self.args = [
            sys.executable, str(UPSTREAM_SCRIPT), "--port", "0",
            "--events", str(events), "--interval-ms", str(interval_ms),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Upstream:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        if not line.startswith("LISTENING "):
            stop_process(self.proc)
            raise BenchError(f"bench/upstream.py did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


@dataclass
class Proxy:
    variant: Variant
    options: tuple[str, ...]
    workdir: Path
    upstream_port: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    db: Path | None = None
    instance: int = 0  # the fleet cases run several processes of one variant
    ledger: str = ""  # a postgresql:// URL instead of a SQLite file in the workdir

    @property
    def label(self) -> str:
        label = self.variant.name + "".join(f" [{o}]" for o in self.options)
        return label + (f" #{self.instance}" if self.instance else "")

    @property
    def log_path(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-")
        return self.workdir / f"{slug}.log"

    def start(self, confdir: Path) -> Proxy:
        self.port = free_port()
        args = [
            str(MITMDUMP), "-q",
            "--listen-host", "127.0.0.1",
            "--listen-port", str(self.port),
            "--set", f"confdir={confdir}",
            "--set", "connection_strategy=lazy",
        ]  # fmt: skip
        for option in (*self.variant.options, *self.options):
            args += ["--set", option]
        if self.variant.script is not None:
            args += ["-s", str(self.variant.script)]
        if self.variant.addon:
            slug = self.log_path.stem
            policies = self.workdir / f"{slug}-policies"
            policies.mkdir(exist_ok=True)
            (policies / "bench.yaml").write_text(
                self.variant.routes.format(upstream_port=self.upstream_port)
            )
            for name, text in self.variant.policy_files:
                (policies / name).write_text(text)
            args += ["-s", str(ENTRY), "--set", f"llmgate_policies={policies}"]
            if self.ledger:
                args += ["--set", f"llmgate_db={self.ledger}"]
            else:
                self.db = self.workdir / f"{slug}-audit.db"
                args += ["--set", f"llmgate_db={self.db}"]
        # No secrets file: the bench route passes the caller's (fake) key through. The
        # state directory is the run's own: with a PostgreSQL ledger llmgate keeps its
        # HMAC key there (addon/ledger/db.py: local_state_path), never in the user's.
        env = {**os.environ, "LLMGATE_SECRETS": "", "XDG_STATE_HOME": str(self.workdir / "state")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        try:
            wait_for_port(self.port, self.proc, 60, f"mitmdump ({self.label})")
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- its log ---\n{self.log_tail()}") from None
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def errors(self) -> list[str]:
        """Error lines mitmdump logged (addon exceptions, lost audit writes)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if ERROR_LINE.search(line)]

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else float("nan")

    def quota_counts(self) -> tuple[int, int, int]:
        """(reservations, settled, window totals) from the quota tables.

        They live in their own file beside the ledger (`<db>.quota`, see
        addon/quota/worker.py), in older llmgate in the ledger itself. Every llmgate
        variant has them; only a variant with windows writes rows, and those rows show
        the windows were really used.
        """
        assert self.db is not None
        for path in (self.db.with_name(self.db.name + ".quota"), self.db):
            if not path.exists():
                continue
            conn = sqlite3.connect(path)
            try:
                tables = {r[0] for r in conn.execute("select name from sqlite_master")}
                if "quota_ledger" not in tables:
                    continue
                reservations, settled = conn.execute(
                    "select count(*), coalesce(sum(settled), 0) from quota_ledger"
                ).fetchone()
                windows = conn.execute("select count(*) from quota_sums").fetchone()[0]
                return reservations, settled, windows
            finally:
                conn.close()
        return 0, 0, 0

    def audit_summary(self) -> dict[str, Any] | None:
        """Counts from the audit ledger; call after stop() so the writer has drained."""
        if self.db is None or not self.db.exists():
            return None
        conn = sqlite3.connect(self.db)
        try:
            rows = conn.execute(
                "select status, usage_source, stream, count(*) from requests "
                "group by status, usage_source, stream"
            ).fetchall()
            priced = conn.execute("select count(cost_usd) from requests").fetchone()[0]
        except sqlite3.Error as exc:
            return {"error": str(exc)}
        finally:
            conn.close()
        try:
            reservations, settled, windows = self.quota_counts()
        except sqlite3.Error as exc:
            return {"error": f"quota tables: {exc}"}
        return {
            "total": sum(r[3] for r in rows),
            "groups": [
                {"status": s, "usage_source": u, "stream": bool(st), "count": n}
                for s, u, st, n in rows
            ],
            "priced": priced,
            "quota": {"reservations": reservations, "settled": settled, "windows": windows},
        }
