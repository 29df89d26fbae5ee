"""`./run.sh bench --profile`: where llmgate's time goes under the throughput load.

One mitmdump with every feature on (variant `llmgate-profile` in bench/harness.py:
the default ledger, which stores payloads, the default safety policy, two quota
windows, and the translation cases' two routes) takes the throughput case's load
(wrk, `--connections`, 16 by default) for `--duration` seconds (20 by default) per
phase while `py-spy record --rate 250 --threads --nolineno --format raw` samples it:

* `plain`: an OpenAI Chat caller on the `openai` route (same protocol);
* `translated`: the same caller asking for a `claude-*` model, whose route goes to the
  Anthropic Messages upstream (Chat -> Messages -> Chat).

The request body (`profile_body`) carries what the ledger extracts: a session id
(`metadata.session_id`), a tool offered, and a tool call with its result in the last
turn. After the run the ledger is read back to show each feature did its work.

For each phase it writes under bench/results/ the raw stacks
(`profile-<stamp>-<phase>.txt`) and a flame graph of every thread rendered from them
(`profile-<stamp>-<phase>.svg`), and prints and saves (`profile-<stamp>.md`) a table
of the top 20 llmgate functions (frames whose file is under `addon/`) by self time,
counted over the samples of the event-loop thread only (stacks through `_run_once`):

* self: samples whose innermost llmgate frame is the function, i.e. its own code plus
  the stdlib, C and mitmproxy code it calls directly (json, sqlite3, re, pydantic's
  validators...), not through another llmgate function; the column `mostly in` names
  the callee outside llmgate that took most of it;
* leaf: samples in which the function's own bytecode was running;
* inclusive: samples with the function anywhere on the stack.

Percentages are of the loop thread's samples; py-spy leaves out idle samples (a thread
waiting in epoll, on a lock or a queue), so these are the loop's busy time. A line
per phase gives llmgate's inclusive share of the loop (samples with any `addon/`
frame), mitmproxy's (a `mitmproxy/` frame and none of llmgate's), the rest (asyncio,
aiohttp and the stdlib alone), aiohttp's anywhere (llmgate's dispatcher: its loopback
listener and its upstream client), and the busy samples of every other thread (the
ledger writer, the quota store's thread...). Only frames after `_run_once` count:
mitmdump's entry point is mitmproxy code at the bottom of every loop stack.

py-spy pauses the process for each sample (its default, for consistent stacks): here
that cost about 12% of requests/s against the same load unsampled (`--nonblocking`
cost ~0%), so requests/s while profiling is below the throughput case's figure.

    ./run.sh bench --profile                     both phases, 20 s each
    ./run.sh bench --profile --duration 10 --wait-load 300
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import MODEL, REQUEST_ID_HEADER, RESULTS_DIR, BenchError, Settings
from bench.harness import Proxy
from bench.measure import Bench
from bench.upstream import ANTHROPIC_MODEL

VARIANT = "llmgate-profile"
RATE = 250  # samples per second
TOP = 20
DEFAULT_SECONDS = 20.0
SESSION = "bench-profile-session"
PHASES: tuple[tuple[str, str, str], ...] = (
    ("plain", MODEL, "Chat caller, openai route (same protocol)"),
    ("translated", ANTHROPIC_MODEL, "Chat caller, anthropic route (translated)"),
)
LLMGATE_FILES = "addon/"
# llmgate's hook table is mitmproxy's dispatch done another way: every addon's hooks,
# mitmproxy's own included, run under its frame. Counted as llmgate, its "self" would
# be mitmproxy's addons' work; so it counts as mitmproxy's dispatch, as the walk it
# replaces (mitmproxy/addonmanager.py) does.
DISPATCH_FILES = ("addon/gateway/hook_table.py",)
MITMPROXY_FILES = "mitmproxy/"
AIOHTTP_FILES = "aiohttp/"  # llmgate's dispatcher: its loopback listener and upstream client


def profile_body(model: str) -> str:
    """A Chat request with a session id, one tool offered, and the model's call of that
    tool with its result in the last turn: what the ledger's session and tool-call
    extraction work on. Otherwise the throughput case's small request."""
    call_id = "call_bench_profile_1"
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What does the README say?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"path":"README.md"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "# llmgate\nA gateway."},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "read_file",
                    "description": "Read a file of the project.",
                    "parameters": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}},
                        "required": ["path"],
                    },
                },
            }
        ],
        "metadata": {"session_id": SESSION},
        "max_tokens": 16,
    }
    return json.dumps(body, separators=(",", ":"))


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("py-spy not found: it is a dev extra (pip install -e '.[dev]')")
    return found


# --- the raw stacks -----------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def split_frame(frame: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame `Class.func (pkg/file.py)`."""
    m = _FRAME.match(frame)
    return (m["func"], m["file"]) if m else (frame, "")


@dataclass
class Stack:
    thread: str  # the thread's name (py-spy's first frame, `thread (tid): name`)
    frames: list[str]  # outermost first
    count: int


def parse_raw(text: str) -> list[Stack]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, *frames = stack.split(";")
        thread = head.partition("): ")[2] or head
        stacks.append(Stack(thread, frames, int(count)))
    return stacks


def loop_index(stack: Stack) -> int | None:
    """Where `_run_once` is on the stack (None: not the event loop's thread). Only the
    frames after it count: mitmdump's entry point is mitmproxy code below every one."""
    for i, frame in enumerate(stack.frames):
        if split_frame(frame)[0].endswith("_run_once"):
            return i
    return None


def is_llmgate(frame: str) -> bool:
    where = split_frame(frame)[1]
    return where.startswith(LLMGATE_FILES) and not where.startswith(DISPATCH_FILES)


@dataclass
class Row:
    func: str
    self_: int = 0
    leaf: int = 0
    inclusive: int = 0
    callees: Counter[str] = field(default_factory=Counter)


@dataclass
class Profile:
    phase: str
    title: str
    stacks: list[Stack]
    seconds: float
    load: dict[str, Any]
    loop: int = 0
    llmgate: int = 0
    mitmproxy: int = 0
    aiohttp: int = 0
    rows: dict[str, Row] = field(default_factory=dict)
    threads: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for s in self.stacks:
            start = loop_index(s)
            if start is None:
                self.threads[s.thread] += s.count
                continue
            self.loop += s.count
            if any(split_frame(f)[1].startswith(AIOHTTP_FILES) for f in s.frames[start:]):
                self.aiohttp += s.count
            ours = [i for i, f in enumerate(s.frames) if i > start and is_llmgate(f)]
            if not ours:
                if any(split_frame(f)[1].startswith(MITMPROXY_FILES) for f in s.frames[start:]):
                    self.mitmproxy += s.count
                continue
            self.llmgate += s.count
            for frame in {s.frames[i] for i in ours}:
                self.row(frame).inclusive += s.count
            inner = ours[-1]
            row = self.row(s.frames[inner])
            row.self_ += s.count
            if inner == len(s.frames) - 1:
                row.leaf += s.count
                row.callees["(own code)"] += s.count
            else:
                row.callees[s.frames[inner + 1]] += s.count

    def row(self, frame: str) -> Row:
        if frame not in self.rows:
            self.rows[frame] = Row(frame)
        return self.rows[frame]

    def pct(self, n: int) -> str:
        return f"{n / self.loop:.1%}" if self.loop else "n/a"

    def shares(self) -> str:
        rest = self.loop - self.llmgate - self.mitmproxy
        others = ", ".join(f"{t} {n}" for t, n in self.threads.most_common()) or "none"
        busy = self.loop / (self.seconds * RATE) if self.seconds else 0
        return (
            f"event-loop thread: {self.loop} busy samples ({busy:.0%} of {self.seconds:g} s at "
            f"{RATE}/s); llmgate (any `addon/` frame but the hook table's) "
            f"{self.pct(self.llmgate)}, mitmproxy alone {self.pct(self.mitmproxy)}, the rest "
            f"(asyncio, aiohttp, stdlib) alone "
            f"{self.pct(rest)}; aiohttp anywhere (the dispatcher's listener and client, "
            f"under llmgate frames or not) {self.pct(self.aiohttp)}. "
            f"Busy samples of the other threads: {others}."
        )

    def table(self) -> str:
        lines = [
            "| # | llmgate function | self | leaf | inclusive | mostly in (share of self) |",
            "| ---: | --- | ---: | ---: | ---: | --- |",
        ]
        ranked = sorted(self.rows.values(), key=lambda r: (-r.self_, -r.inclusive, r.func))
        for i, r in enumerate([r for r in ranked if r.self_][:TOP], 1):
            callee, n = r.callees.most_common(1)[0]
            lines.append(
                f"| {i} | `{r.func}` | {self.pct(r.self_)} ({r.self_}) | {self.pct(r.leaf)} | "
                f"{self.pct(r.inclusive)} | `{callee}` ({n / r.self_:.0%}) |"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        load = self.load
        return (
            f"### {self.phase}: {self.title}\n\n"
            f"wrk: {load['requests']} calls in {load['seconds']:.1f} s ({load['rps']:.0f}/s "
            f"while sampled), median {load['p50_us'] / 1000:.2f} ms, "
            f"{load['cpu_us_per_request']:.0f} µs proxy CPU per call.\n\n"
            f"{self.shares()}\n\n{self.table()}\n"
        )


# --- a flame graph from the raw stacks ----------------------------------------------

SVG_WIDTH = 1600
FRAME_H = 17
CHAR_W = 6.6  # of the 11 px monospace font


def _colour(frame: str) -> str:
    h = sum(frame.encode()) % 40
    if is_llmgate(frame):
        return f"rgb(240,{110 + h},40)"  # llmgate: orange
    file = split_frame(frame)[1]
    if file.startswith(MITMPROXY_FILES):
        return f"rgb(90,{140 + h},220)"  # mitmproxy: blue
    if file.startswith("asyncio/") or file in ("threading.py", "selectors.py"):
        return f"rgb(170,{170 + h // 2},170)"  # the loop and threads: grey
    return f"rgb(220,{180 + h},80)"  # everything else: yellow


def flame_svg(stacks: list[Stack], title: str) -> str:
    """A static flame graph (root at the bottom, one tower per thread); hover a frame
    for its samples and share. Orange: llmgate, blue: mitmproxy, grey: asyncio."""
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for s in stacks:
        node = tree
        node["n"] += s.count
        for frame in [f"thread {s.thread}", *s.frames]:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += s.count
    total = tree["n"] or 1

    def depth(node: dict[str, Any]) -> int:
        return 1 + max((depth(k) for k in node["kids"].values()), default=0)

    levels = depth(tree)
    top = 40
    height = top + levels * FRAME_H + 10
    scale = (SVG_WIDTH - 20) / total
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        '<rect width="100%" height="100%" fill="#fafafa"/>',
        f'<text x="10" y="20" font-size="14">{html.escape(title)}</text>',
    ]

    def draw(name: str, node: dict[str, Any], x: float, level: int) -> None:
        w = node["n"] * scale
        if w < 0.3:
            return
        y = height - 10 - (level + 1) * FRAME_H
        tip = f"{name} — {node['n']} samples ({node['n'] / total:.2%} of all)"
        out.append(
            f'<g><title>{html.escape(tip)}</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" '
            f'height="{FRAME_H - 1}" fill="{_colour(name)}" rx="1"/>'
        )
        chars = int((w - 4) / CHAR_W)
        if chars >= 3:
            label = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.2f}" y="{y + FRAME_H - 5}">{html.escape(label)}</text>')
        out.append("</g>")
        for kid_name, kid in sorted(node["kids"].items()):
            draw(kid_name, kid, x, level + 1)
            x += kid["n"] * scale

    draw("all", tree, 10, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- the run ------------------------------------------------------------------------


def wait_for_quiet(limit_s: float) -> None:
    """Wait up to `limit_s` for the 1-minute load average to fall below 1."""
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] >= 1 and time.monotonic() < deadline:
        time.sleep(5)
    load = os.getloadavg()[0]
    if limit_s and load >= 1:
        print(f"load average still {load:.2f} after {limit_s:.0f} s: going on", file=sys.stderr)


def check_call(bench: Bench, proxy: Proxy, body: str, model: str) -> None:
    status, headers, reply = bench.call(proxy, body)
    if (
        status != 200
        or REQUEST_ID_HEADER not in headers
        or f'"model":"{model}"'.encode() not in reply.replace(b" ", b"")
    ):
        raise BenchError(
            f"the profile call ({model}) through {proxy.label} got HTTP {status}: "
            f"{reply[:400]!r}\n--- its log ---\n{proxy.log_tail()}"
        )


def record(bench: Bench, proxy: Proxy, body: str, seconds: float, raw: Path) -> dict[str, Any]:
    """wrk for seconds + 2, py-spy for `seconds` from 1 s after wrk started."""
    assert proxy.proc is not None
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def load() -> None:
        try:
            result.update(bench.load(proxy, bench.s.connections, seconds + 2, body=body))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1)
    spy = subprocess.run(
        [
            py_spy(),
            "record",
            "-p",
            str(proxy.proc.pid),
            "--rate",
            str(RATE),
            "--duration",
            str(round(seconds)),
            "--threads",
            "--nolineno",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    loader.join()
    if failure:
        raise failure[0]
    if spy.returncode != 0 or not raw.exists():
        raise BenchError(f"py-spy failed ({spy.returncode}): {spy.stdout}\n{spy.stderr}")
    return result


def ledger_check(proxy: Proxy) -> str:
    """What the ledger holds after the run: proof that each feature did its work."""
    if proxy.db is None or not proxy.db.exists():
        return "ledger: no database"
    conn = sqlite3.connect(proxy.db)
    try:

        def one(sql: str) -> int:
            return conn.execute(sql).fetchone()[0]

        figures = {
            "calls": one("select count(*) from requests"),
            "with a session": one(f"select count(*) from requests where session_id = '{SESSION}'"),
            "with tools offered": one("select count(*) from requests where tools_offered != ''"),
            "translated": one(
                "select count(*) from requests where upstream_protocol = 'anthropic_messages'"
            ),
            "payload rows": one("select count(*) from payloads"),
            "tool-call rows": one("select count(*) from tool_calls"),
        }
    except sqlite3.Error as exc:
        return f"ledger: {exc}"
    finally:
        conn.close()
    reservations, settled, _ = proxy.quota_counts()
    figures["quota reservations"] = reservations
    figures["settled"] = settled
    return "ledger after the run: " + ", ".join(f"{k} {v}" for k, v in figures.items())


def run(settings: Settings, seconds: float | None, wait_load: float, keep: bool) -> int:
    seconds = seconds or DEFAULT_SECONDS
    wait_for_quiet(wait_load)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-profile-"))
    bench = Bench(settings, workdir)
    profiles: list[Profile] = []
    proxy: Proxy | None = None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    try:
        bench.start()
        if bench.client != "wrk":
            raise BenchError("--profile needs wrk (the throughput case's load client)")
        proxy = bench.proxy(VARIANT)
        bodies = {phase: profile_body(model) for phase, model, _ in PHASES}
        for phase, model, _ in PHASES:
            check_call(bench, proxy, bodies[phase], model)
            bench.load(proxy, settings.connections, settings.warmup_s, body=bodies[phase])
        for phase, _, title in PHASES:
            print(f"profiling {phase} ({seconds:g} s) ...", file=sys.stderr)
            raw = RESULTS_DIR / f"profile-{stamp}-{phase}.txt"
            load = record(bench, proxy, bodies[phase], seconds, raw)
            bench.assert_clean()
            profile = Profile(phase, title, parse_raw(raw.read_text()), seconds, load)
            svg = RESULTS_DIR / f"profile-{stamp}-{phase}.svg"
            svg.write_text(flame_svg(profile.stacks, f"llmgate {phase}: {title}"))
            profiles.append(profile)
    except BenchError as exc:
        print(f"\nprofile failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.stop()
        ledger = ledger_check(proxy) if proxy else ""
        if keep:
            print(f"temporary files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    load_end = os.getloadavg()
    head = (
        f"## Profile — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"Variant `{VARIANT}` (ledger with payloads, default safety, two quota windows, "
        f"an openai and an anthropic route), body `bench.hotspots.profile_body` (a session "
        f"id, a tool offered, a tool call and its result); wrk at {settings.connections} "
        f"connections; `py-spy record --rate {RATE} --threads --nolineno` for {seconds:g} s "
        f"per phase. Load average at start "
        + " ".join(f"{x:.2f}" for x in load_start)
        + ", at end "
        + " ".join(f"{x:.2f}" for x in load_end)
        + f" ({os.cpu_count()} cores).\n\n{ledger}.\n\n"
        f"Self: samples whose innermost llmgate frame is the function (its code and the "
        f"non-llmgate code it calls directly); leaf: its own bytecode; inclusive: anywhere "
        f"on the stack. Percentages of the event-loop thread's busy samples. The hook "
        f"table's frames (addon/gateway/hook_table.py) count as mitmproxy's hook dispatch, "
        f"not as llmgate: every addon's hooks run under them.\n"
    )
    text = head + "".join("\n" + p.markdown() for p in profiles)
    md = RESULTS_DIR / f"profile-{stamp}.md"
    md.write_text(text)
    print("\n" + text)
    for p in profiles:
        print(f"flame graph: {os.path.relpath(RESULTS_DIR / f'profile-{stamp}-{p.phase}.svg')}")
    print(f"tables: {os.path.relpath(md)}")
    return 0
