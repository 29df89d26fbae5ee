"""Turning a run into words: the console summary, the raw JSON, and BENCH.md's results section."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.common import BENCH_MD, RESULTS_DIR, ROOT, Settings
from bench.harness import PHASES, VARIANTS
from bench.measure import Bench, CaseResult, Row

# BENCH.md is hand-written prose around a generated section between these markers.
MARK_START = "<!-- bench:results:start -->"
MARK_END = "<!-- bench:results:end -->"


def machine_info(bench: Bench) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    wrk_version = ""
    if bench.wrk:
        out = subprocess.run([bench.wrk, "-v"], capture_output=True, text=True)
        wrk_version = (out.stdout or out.stderr).splitlines()[0].split(" [")[0]
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "addon", "scripts", "pyproject.toml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    dirty = " with uncommitted changes to addon/" if status.stdout.strip() else ""
    # Imported here: only the report needs mitmproxy in this process.
    import mitmproxy.version

    try:
        llmgate_version = importlib.metadata.version("llmgate")
    except importlib.metadata.PackageNotFoundError:
        llmgate_version = "not installed"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "llmgate": llmgate_version,
        "git": (git.stdout.strip() if git.returncode == 0 else "no commit") + dirty,
        "client": wrk_version if bench.client == "wrk" else "asyncio raw-socket client",
        "loadavg_start": os.getloadavg(),
    }


def column_title(name: str) -> str:
    """A table column's heading: a variant's title, or a phase's (see `harness.PHASES`)."""
    return VARIANTS[name].title if name in VARIANTS else PHASES[name]


def row_json(row: Row, variants: tuple[str, str]) -> dict[str, Any]:
    """A row keyed by variant name ({"bare": ..., "llmgate": ...}), as the raw JSON has it."""
    base, subject = variants
    return {
        "metric": row.metric,
        base: row.base,
        subject: row.subject,
        "comparison": row.comparison,
        "target": row.target,
        "met": row.met,
    }


def save_raw(
    results: list[CaseResult], info: dict[str, Any], settings: Settings, audits: dict[str, Any]
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = RESULTS_DIR / f"{stamp}{'-quick' if settings.quick else ''}.json"
    cases = {
        r.name: {
            "variants": list(r.variants),
            "rows": [row_json(row, r.variants) for row in r.rows],
            "reps": r.reps,
        }
        for r in results
    }
    raw.write_text(
        json.dumps(
            {"machine": info, "settings": settings.__dict__, "audit": audits, "cases": cases},
            indent=2,
        )
    )
    return raw


def fmt_met(met: bool | None) -> str:
    return "" if met is None else ("**yes**" if met else "**NO — missed**")


def audit_line(label: str, audit: dict[str, Any]) -> str:
    if "error" in audit:
        return f"- audit ledger of {label}: unreadable ({audit['error']})"
    groups = ", ".join(
        f"{g['count']} {'stream' if g['stream'] else 'buffered'} {g['status']}/"
        f"usage {g['usage_source']}"
        for g in audit["groups"]
    )
    line = f"- audit ledger of {label}: {audit['total']} calls ({groups}), {audit['priced']} priced"
    quota = audit["quota"]
    if quota["reservations"]:
        line += (
            f"; quota ledger: {quota['reservations']} reservations ({quota['settled']} "
            f"settled) counted in {quota['windows']} window sums"
        )
    return line


def render(
    results: list[CaseResult], info: dict[str, Any], settings: Settings, audits: dict[str, Any]
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick run (short, one repetition: not representative)" if settings.quick else "full run"
    la0 = " ".join(f"{x:.2f}" for x in info["loadavg_start"])
    la1 = " ".join(f"{x:.2f}" for x in info["loadavg_end"])
    out = [
        MARK_START,
        f"## Results — {now}",
        "",
        f"- Mode: {mode}; {settings.reps} repetition(s) per variant, interleaved; "
        "each figure is the median over repetitions.",
        f"- Machine: {info['cores']} cores ({info['cpu'] or 'unknown CPU'}), Linux "
        f"{info['kernel']}; load average at start {la0}, at end {la1}; other processes "
        f"used {info['other_load_pct']}% of the machine's CPU during the run.",
        f"- Versions: mitmproxy {info['mitmproxy']}, Python {info['python']}, "
        f"llmgate {info['llmgate']} (git {info['git']}), load client {info['client']}.",
    ]
    # One table per pair of variants compared (bare vs llmgate, llmgate vs llmgate + quota,
    # ...), in the order the cases ran, so every column means one thing.
    pairs = list(dict.fromkeys(r.variants for r in results))
    for base, subject in pairs:
        out += [
            "",
            f"| case | metric | {column_title(base)} | {column_title(subject)} | "
            f"{subject} vs {base} | target | met |",
            "| --- | --- | ---: | ---: | --- | --- | --- |",
        ]
        for result in (r for r in results if r.variants == (base, subject)):
            for i, row in enumerate(result.rows):
                out.append(
                    f"| {result.title if i == 0 else ''} | {row.metric} | {row.base} | "
                    f"{row.subject} | {row.comparison} | {row.target} | {fmt_met(row.met)} |"
                )
    out += ["", "Targets:", ""]
    for result in results:
        for row in result.rows:
            if row.met is not None:
                verdict = "met" if row.met else "**missed**"
                out.append(
                    f"- {result.title} — {row.metric} {row.target}: {verdict} ({row.comparison})."
                )
    out += ["", "Details:", ""]
    for result in results:
        for note in result.notes:
            out.append(f"- {result.name}: {note}")
    out += [audit_line(label, audit) for label, audit in audits.items()]
    if audits:
        out.append(
            "- a cancelled call is one in flight when the load client closed its connections"
        )
    out += ["", HOW_MEASURED, MARK_END, ""]
    return "\n".join(out)


HOW_MEASURED = """\
How measured: `./run.sh bench` (bench/run.py) starts bench/upstream.py, a fake OpenAI
upstream on 127.0.0.1 (raw HTTP/1.1 on asyncio, keep-alive, answers at once), and
mitmdump subprocesses with identical arguments (`-q --set connection_strategy=lazy`,
temporary confdir; for the streaming case bare mitmdump also gets
`stream_large_bodies=1`, or it would hold every event back until the reply ends);
llmgate's adds `-s scripts/llmgate_addon.py`, a one-route policy
(`model_pattern: "*"`, `provider: openai`, endpoint the upstream, `pricing: {input: 1,
output: 2}`) and a temporary audit database. The quota variant is the same plus one
policy file with two quota windows for every user (see the quota case's details); it
is compared with the llmgate variant (`quota`) and with bare mitmdump
(`every_feature`, issue 14's targets); `features` loads bare mitmdump and llmgate
with safety off, as it ships, and with the two windows, each at 16 connections, to
show what each feature costs. Clients use the proxy as
an HTTP proxy with absolute-form requests to
`http://127.0.0.1:UPSTREAM/v1/chat/completions`. Throughput and latency come from wrk
(one thread; a Lua script sets the POST body, headers and absolute URL), the request a
small chat completion and the reply a small JSON body with usage. Streaming uses an
asyncio client on one keep-alive connection (one warm-up stream, then the measured ones):
the upstream writes `time.time()` into every chunk as `x_sent`, the client subtracts it
from the time the event arrived. The hostile case runs llmgate with
`limits: {max_event_bytes: 268435456}` and has the upstream write one SSE `data:` line
of 125 MiB that never ends (2,000 chunks of 64 KB, as fast as the proxy reads them);
buffered calls one after another on another connection (an asyncio client) are timed
while the stream runs, from its first byte to its last, and for as long on the idle
proxy. The translation cases use one llmgate proxy with two routes to the same upstream
(`claude-*` with `provider: anthropic`, then `*` with `provider: openai`) and the same
Chat caller on each (a `claude-*` model: translated to Anthropic Messages, the upstream
answering on `/v1/messages` in that format; `gpt-4o-mini`: passed through), plus bare
mitmdump; their streams carry each event's send time in its text, since `x_sent` does
not survive translation. The fleet cases start their own redis-server and PostgreSQL
(temporary, stopped at the end): `quota_redis` compares llmgate with one quota window
(per-user requests/minute) on Redis, and on SQLite, with llmgate without one, at one
connection; `fleet` loads 1, 2 and 3 llmgate processes sharing that Redis (quotas) and
one PostgreSQL database (ledger), against as many bare mitmdumps, the connections
split between the processes, one wrk per process. Each proxy is checked with one real
call before it is measured (llmgate's reply must carry `x-llmgate-request-id`, the
quota variants' also `x-llmgate-ratelimit-*` from each window) and warmed up for a
moment. Proxy CPU per request is the mitmdump process's user+system time (all
threads, from /proc) over the requests served. Timing is never asserted in tests."""

PREAMBLE = """\
# llmgate benchmark

`./run.sh bench` measures bare `mitmdump` against `mitmdump -s scripts/llmgate_addon.py`,
llmgate without quotas against llmgate with two quota windows, and the safety scan of a
1 MB prompt of code (llmgate with safety off against llmgate as it ships, bare mitmdump
for the overhead), in one run, and rewrites the results section below (`--quick` for a
short run that leaves this file alone unless `--write` is given). Raw figures of every
run, each repetition included, are saved under bench/results/ (not committed). See the
docstring of bench/run.py for the design, and bench/cases.py for how to add a case.

Targets (issue 14's, which tightened issue 7's 0.5 ms, 1 ms and 20 ms):
llmgate/bare throughput >= 0.85 and added median latency <= 0.3 ms at one
connection, both with every feature on: the ledger with payloads, safety and two
quota windows (`every_feature`; the `throughput` and `latency` cases hold llmgate
without quota windows to the same two targets); added median delay per streamed
event <= 0.3 ms; the quota check (two windows) adds <= 0.2 ms median latency at one
connection over llmgate without quotas;
the safety scan of a 1 MB prompt full of code costs <= 10 ms at the median (llmgate
minus llmgate with `safety: {enabled: false}`, one connection; the in-process
`Scanner().scan` median is held to the same 10 ms), and BENCH.md reports the scan's
share of llmgate's request overhead over bare mitmdump. Translation (an OpenAI Chat
caller on an Anthropic route against the same caller on an openai route, same proxy
and upstream): <= 1 ms added median latency buffered at one connection, <= 0.3 ms
added median delay per streamed event. One quota window on Redis adds <= 0.3 ms
median latency at one connection over llmgate without quotas (`quota_redis`). The
hostile case (a runaway upstream stream), `features` (what each feature costs),
`hook_table` (mitmdump with llmgate's hook table alone, and llmgate with and without
it) and the fleet case (1, 2, 3 processes against as many bare mitmdumps) have no
target: they report the figures.

"""


def write_bench_md(section: str) -> None:
    text = BENCH_MD.read_text() if BENCH_MD.exists() else PREAMBLE
    if MARK_START in text and MARK_END in text:
        before = text.split(MARK_START, 1)[0]
        after = text.split(MARK_END, 1)[1].lstrip("\n")
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCH_MD.write_text(text)


def print_summary(results: list[CaseResult]) -> None:
    for result in results:
        base, subject = result.variants
        print(f"\n{result.title}")
        for row in result.rows:
            verdict = "" if row.met is None else ("  [met]" if row.met else "  [MISSED]")
            print(
                f"  {row.metric:<42} {base} {row.base:>11}  {subject} {row.subject:>11}  "
                f"{row.comparison} {row.target}{verdict}"
            )
        for note in result.notes:
            print(f"  - {note}")
