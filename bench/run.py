"""llmgate benchmark: bare `mitmdump` against `mitmdump -s scripts/llmgate_addon.py`, in one run.

    ./run.sh bench                 full run (about 2 minutes), rewrites the results in BENCH.md
    ./run.sh bench --quick         short run; prints and saves raw JSON, BENCH.md untouched
    ./run.sh bench --quick --write short run that still rewrites BENCH.md
    ./run.sh bench --cases throughput,latency --reps 5

Set-up. `bench/upstream.py` is a fake OpenAI upstream (plain HTTP/1.1 on 127.0.0.1,
keep-alive, answers at once) run as a subprocess. Each variant is a real mitmdump
subprocess started with the same arguments (`-q`, `connection_strategy=lazy`,
a temporary confdir); llmgate's also gets `-s scripts/llmgate_addon.py`, a temporary
policies directory with one route `{id: bench, model_pattern: "*", provider: openai,
endpoint: http://127.0.0.1:UPSTREAM}` and a temporary audit database. Clients speak to
the proxy as an HTTP proxy: absolute-form requests to
`http://127.0.0.1:UPSTREAM/v1/chat/completions`.

Load comes from `wrk` (installed with apt-get when missing and running as root), with a
Lua script that sets the method, body, headers and the absolute URL as `wrk.path`; its
`done()` hook prints the exact counts and latency percentiles. Without wrk an asyncio
raw-socket client does the same job (`--client python` forces it).

Noise. The machine has 2 cores and is shared, so each case runs its variants
interleaved (bare, llmgate, then llmgate, bare, ...) `--reps` times and reports the
median of the per-repetition figures; every repetition is kept in the raw JSON under
bench/results/. The CPU time the proxy process spent per request is reported too: it
is far less sensitive to other load on the machine than requests per second.

Adding a case: write `def case_x(bench: Bench) -> CaseResult`, using
`bench.interleaved(...)` to run a measurement against each variant, and append a `Case`
to `CASES`. A case may ask for proxies with extra mitmproxy options through
`bench.proxy(variant, options)`; every distinct (variant, options) pair is one mitmdump
process, started on first use and kept for the rest of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "scripts" / "llmgate_addon.py"
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
BENCH_MD = ROOT / "BENCH.md"
RESULTS_DIR = ROOT / "bench" / "results"
VARIANTS = ("bare", "llmgate")
REQUEST_ID_HEADER = b"x-llmgate-request-id"
MARK_START = "<!-- bench:results:start -->"
MARK_END = "<!-- bench:results:end -->"
# Lines in a proxy log that make its figures worthless (mitmdump runs with -q: errors only).
ERROR_LINE = re.compile(r"Addon error|Traceback|Error|error:|audit write lost|audit batch failed")
CALL_TIMEOUT = 15.0

CHAT_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "ping"},
        ],
        "max_tokens": 16,
    },
    separators=(",", ":"),
)
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "count to thirty"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    separators=(",", ":"),
)
API_KEY = "sk-bench-not-a-real-key"


class BenchError(RuntimeError):
    """The benchmark cannot produce a trustworthy figure; the message says why."""


# --- settings -------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool = False
    reps: int = 3
    warmup_s: float = 2.0
    throughput_s: float = 5.0
    latency_s: float = 5.0
    connections: int = 16
    streams: int = 20
    events: int = 30
    interval_ms: float = 5.0
    client: str = "auto"  # auto | wrk | python

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        s = cls(quick=args.quick, client=args.client)
        if args.quick:
            s.reps, s.warmup_s, s.throughput_s, s.latency_s, s.streams = 1, 1.0, 2.0, 2.0, 5
        if args.reps:
            s.reps = args.reps
        if args.duration:
            s.throughput_s = s.latency_s = args.duration
        return s


# --- small helpers ----------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


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
    variant: str
    options: tuple[str, ...]
    workdir: Path
    upstream_port: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    db: Path | None = None

    @property
    def label(self) -> str:
        return self.variant + "".join(f" [{o}]" for o in self.options)

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
        for option in self.options:
            args += ["--set", option]
        if self.variant == "llmgate":
            slug = self.log_path.stem
            policies = self.workdir / f"{slug}-policies"
            policies.mkdir(exist_ok=True)
            (policies / "bench.yaml").write_text(
                "routes:\n"
                "  - id: bench\n"
                '    model_pattern: "*"\n'
                "    provider: openai\n"
                f"    endpoint: http://127.0.0.1:{self.upstream_port}\n"
            )
            self.db = self.workdir / f"{slug}-audit.db"
            args += ["-s", str(ENTRY), "--set", f"llmgate_policies={policies}"]
            args += ["--set", f"llmgate_db={self.db}"]
        env = {**os.environ, "LLMGATE_SECRETS": ""}
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
        except sqlite3.Error as exc:
            return {"error": str(exc)}
        finally:
            conn.close()
        return {
            "total": sum(r[3] for r in rows),
            "groups": [
                {"status": s, "usage_source": u, "stream": bool(st), "count": n}
                for s, u, st, n in rows
            ],
        }


# --- raw HTTP/1.1 through the proxy ----------------------------------------------


def proxy_request(upstream_port: int, body: str, extra_headers: str = "") -> bytes:
    data = body.encode()
    return (
        f"POST http://127.0.0.1:{upstream_port}/v1/chat/completions HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{upstream_port}\r\n"
        "Content-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        f"{extra_headers}"
        f"Content-Length: {len(data)}\r\n"
        "\r\n"
    ).encode() + data


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body_chunks(reader: asyncio.StreamReader, headers: dict[bytes, bytes]):
    """Yield (receive time, bytes) for each piece of a response body as it arrives."""
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # the last chunk's (empty) trailer section
                return
            data = await reader.readexactly(size + 2)
            yield time.time(), data[:-2]
    else:
        length = int(headers.get(b"content-length", b"0"))
        if length:
            data = await reader.readexactly(length)
            yield time.time(), data


async def one_call(port: int, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        body = b"".join([piece async for _, piece in read_body_chunks(reader, headers)])
        return status, headers, body
    finally:
        writer.close()


# --- load generation: wrk, or an asyncio fallback ---------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.path = "http://127.0.0.1:{upstream}/v1/chat/completions"
wrk.body = [[{body}]]
wrk.headers["Host"] = "127.0.0.1:{upstream}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d," ..
    "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d," ..
    "\\"p99_us\\":%d,\\"mean_us\\":%.1f,\\"max_us\\":%d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("wrk is missing: installing it with apt-get ...", file=sys.stderr)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["apt-get", "update"], check=True, env=env, timeout=300, **quiet)
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"], check=True, env=env, timeout=300, **quiet
        )
    return shutil.which("wrk")


def load_summary(requests: int, seconds: float, errors: int, latencies_us: dict) -> dict:
    return {
        "requests": requests,
        "seconds": seconds,
        "rps": requests / seconds if seconds else 0.0,
        "errors": errors,
        **latencies_us,
    }


def run_wrk(wrk: str, script: Path, port: int, connections: int, seconds: float) -> dict:
    args = [
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
        "-s", str(script), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    raw = json.loads(line[6:])
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    if raw["status"]:
        raise BenchError(f"wrk saw {raw['status']} non-2xx replies out of {raw['requests']}")
    return load_summary(
        raw["requests"],
        raw["duration_us"] / 1e6,
        errors,
        {k: raw[k] for k in ("p50_us", "p90_us", "p99_us", "mean_us")},
    )


async def _python_load(port: int, request: bytes, connections: int, seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    start = loop.time()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
                async for _ in read_body_chunks(reader, headers):
                    pass
                if status >= 400:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1e6)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = loop.time() - start
    return load_summary(
        len(latencies),
        elapsed,
        errors,
        {
            "p50_us": percentile(latencies, 50),
            "p90_us": percentile(latencies, 90),
            "p99_us": percentile(latencies, 99),
            "mean_us": statistics.fmean(latencies) if latencies else float("nan"),
        },
    )


# --- SSE streaming client -----------------------------------------------------------


async def _stream_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> dict[str, Any]:
    sent = time.time()
    writer.write(request)
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if status != 200:
        body = b"".join([p async for _, p in read_body_chunks(reader, headers)])
        raise BenchError(f"stream request got HTTP {status}: {body[:300]!r}")
    buf = b""
    delays: list[float] = []
    first: float | None = None
    usage_seen = done_seen = False
    async for received, piece in read_body_chunks(reader, headers):
        buf += piece
        *events, buf = buf.split(b"\n\n")
        for event in events:
            data = event.partition(b"data: ")[2]
            if not data:
                continue
            if first is None:
                first = received
            if data == b"[DONE]":
                done_seen = True
                continue
            chunk = json.loads(data)
            delays.append(received - chunk["x_sent"])
            usage_seen = usage_seen or bool(chunk.get("usage"))
    if first is None or not usage_seen or not done_seen:
        raise BenchError("stream ended without events, the usage chunk or [DONE]")
    return {"ttfe": first - sent, "delays": delays, "tagged": REQUEST_ID_HEADER in headers}


async def _streams(port: int, request: bytes, count: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _stream_once(reader, writer, request)  # warm-up: opens the upstream connection
        results = [await _stream_once(reader, writer, request) for _ in range(count)]
    finally:
        writer.close()
    delays = [d for r in results for d in r["delays"]]
    ttfes = [r["ttfe"] for r in results]
    return {
        "streams": count,
        "tagged": sum(r["tagged"] for r in results),
        "events": len(delays),
        "delay_p50_ms": median(delays) * 1000,
        "delay_p99_ms": percentile(delays, 99) * 1000,
        "ttfe_p50_ms": median(ttfes) * 1000,
    }


# --- the bench ---------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    bare: str
    llmgate: str
    comparison: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class CaseResult:
    name: str
    title: str
    rows: list[Row]
    reps: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Case:
    name: str
    run: Callable[[Bench], CaseResult]
    full_only: bool = False


class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.confdir = workdir / "confdir"
        self.upstream = Upstream(settings.events, settings.interval_ms)
        self.proxies: dict[tuple[str, tuple[str, ...]], Proxy] = {}
        self.client = "python"
        self.wrk: str | None = None
        self.wrk_script = workdir / "chat.lua"

    # --- lifecycle ---
    def start(self) -> None:
        self.upstream.start()
        if self.s.client in ("auto", "wrk"):
            self.wrk = ensure_wrk()
            if self.wrk:
                self.client = "wrk"
            elif self.s.client == "wrk":
                raise BenchError("--client wrk: wrk is not installed and could not be installed")
            else:
                print("wrk not available: using the asyncio load client", file=sys.stderr)
        self.wrk_script.write_text(
            WRK_SCRIPT.format(upstream=self.upstream.port, body=CHAT_BODY, key=API_KEY)
        )

    def stop(self) -> dict[str, Any]:
        audits = {}
        for proxy in self.proxies.values():
            proxy.stop()
            summary = proxy.audit_summary()
            if summary is not None:
                audits[proxy.label] = summary
        self.upstream.stop()
        return audits

    def proxy(self, variant: str, options: tuple[str, ...] = ()) -> Proxy:
        """The running mitmdump for this variant and these extra options (started once)."""
        key = (variant, options)
        if key not in self.proxies:
            proxy = Proxy(variant, options, self.workdir, self.upstream.port)
            self.proxies[key] = proxy
            print(f"  starting mitmdump ({proxy.label}) ...", file=sys.stderr)
            proxy.start(self.confdir)
            self.check(proxy)
            self.load(proxy, self.s.connections, self.s.warmup_s)  # warm-up, discarded
        return self.proxies[key]

    def check(self, proxy: Proxy) -> None:
        """One real call, so a figure never comes from a proxy that is not doing its job."""
        request = proxy_request(self.upstream.port, CHAT_BODY)
        try:
            status, headers, body = asyncio.run(
                asyncio.wait_for(one_call(proxy.port, request), CALL_TIMEOUT)
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BenchError(
                f"mitmdump ({proxy.label}) check call failed: {exc!r}\n"
                f"--- its log ---\n{proxy.log_tail()}"
            ) from None
        time.sleep(0.2)  # let the audit writer and the log catch up
        problem = None
        if status != 200:
            problem = f"HTTP {status}: {body[:300]!r}"
        elif b'"usage"' not in body:
            problem = f"reply is not the upstream's: {body[:300]!r}"
        elif proxy.variant == "llmgate" and REQUEST_ID_HEADER not in headers:
            problem = (
                "no x-llmgate-request-id header: the addon did not handle the call "
                "(did scripts/llmgate_addon.py fail to load?)"
            )
        elif proxy.variant == "bare" and REQUEST_ID_HEADER in headers:
            problem = "bare proxy answered with an llmgate header"
        elif proxy.errors():
            problem = "it logged errors:\n  " + "\n  ".join(proxy.errors()[:10])
        if problem:
            raise BenchError(
                f"mitmdump ({proxy.label}) check failed: {problem}\n"
                f"--- its log ---\n{proxy.log_tail()}"
            )

    # --- measurement helpers for cases ---
    def order(self, rep: int) -> tuple[str, ...]:
        return VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))

    def interleaved(self, measure: Callable[[str], dict[str, Any]]) -> dict[str, list[dict]]:
        """Run `measure(variant)` reps times per variant, alternating which goes first."""
        out: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for rep in range(self.s.reps):
            for variant in self.order(rep):
                out[variant].append(measure(variant))
        return out

    def load(self, proxy: Proxy, connections: int, seconds: float) -> dict[str, Any]:
        """Buffered chat completions at `connections` keep-alive connections for `seconds`."""
        cpu0 = proxy.cpu()
        if self.client == "wrk":
            assert self.wrk
            result = run_wrk(self.wrk, self.wrk_script, proxy.port, connections, seconds)
        else:
            request = proxy_request(self.upstream.port, CHAT_BODY)
            load = _python_load(proxy.port, request, connections, seconds)
            try:
                result = asyncio.run(asyncio.wait_for(load, seconds + CALL_TIMEOUT))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                raise BenchError(f"load through mitmdump ({proxy.label}) failed: {exc!r}") from None
        cpu = proxy.cpu() - cpu0
        result["proxy_cpu_s"] = cpu
        result["cpu_us_per_request"] = cpu / result["requests"] * 1e6 if result["requests"] else 0
        return result

    def streams(self, proxy: Proxy, count: int) -> dict[str, Any]:
        request = proxy_request(self.upstream.port, STREAM_BODY)
        timeout = CALL_TIMEOUT + count * 2
        try:
            result = asyncio.run(asyncio.wait_for(_streams(proxy.port, request, count), timeout))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BenchError(
                f"streaming through mitmdump ({proxy.label}) failed: {exc!r}\n"
                f"--- its log ---\n{proxy.log_tail()}"
            ) from None
        if proxy.variant == "llmgate" and result["tagged"] != count:
            raise BenchError(
                f"only {result['tagged']} of {count} streams through mitmdump ({proxy.label}) "
                "carried x-llmgate-request-id: llmgate did not handle them"
            )
        return result

    def assert_clean(self) -> None:
        """Fail the run if any proxy logged an error while it was measured."""
        for proxy in self.proxies.values():
            if errors := proxy.errors():
                raise BenchError(
                    f"mitmdump ({proxy.label}) logged {len(errors)} error line(s); its figures "
                    "cannot be trusted:\n  "
                    + "\n  ".join(errors[:10])
                    + f"\n--- its log ---\n{proxy.log_tail()}"
                )


# --- cases ---------------------------------------------------------------------------


def per_rep(reps: dict[str, list[dict]], key: str) -> dict[str, float]:
    return {v: median([r[key] for r in reps[v]]) for v in VARIANTS}


def spread(reps: dict[str, list[dict]], key: str, fmt: str) -> str:
    return "; ".join(f"{v}: " + ", ".join(fmt.format(r[key]) for r in reps[v]) for v in VARIANTS)


def case_throughput(bench: Bench) -> CaseResult:
    n = bench.s.connections
    reps = bench.interleaved(lambda v: bench.load(bench.proxy(v), n, bench.s.throughput_s))
    rps = per_rep(reps, "rps")
    cpu = per_rep(reps, "cpu_us_per_request")
    p50 = per_rep(reps, "p50_us")
    ratio = rps["llmgate"] / rps["bare"]
    return CaseResult(
        "throughput",
        f"Throughput, buffered chat completion, {n} connections",
        [
            Row(
                "requests/s",
                f"{rps['bare']:.0f}",
                f"{rps['llmgate']:.0f}",
                f"ratio {ratio:.3f}",
                ">= 0.85",
                ratio >= 0.85,
            ),
            Row(
                "proxy CPU per request",
                f"{cpu['bare']:.0f} µs",
                f"{cpu['llmgate']:.0f} µs",
                f"{cpu['llmgate'] - cpu['bare']:+.0f} µs "
                f"(bare/llmgate {cpu['bare'] / cpu['llmgate']:.3f})",
            ),
            Row(
                "median latency under load",
                f"{p50['bare'] / 1000:.2f} ms",
                f"{p50['llmgate'] / 1000:.2f} ms",
                f"{(p50['llmgate'] - p50['bare']) / 1000:+.2f} ms",
            ),
        ],
        reps,
        [
            f"requests/s per repetition: {spread(reps, 'rps', '{:.0f}')}",
            f"proxy CPU µs per request per repetition: "
            f"{spread(reps, 'cpu_us_per_request', '{:.0f}')}",
        ],
    )


def case_latency(bench: Bench) -> CaseResult:
    reps = bench.interleaved(lambda v: bench.load(bench.proxy(v), 1, bench.s.latency_s))
    p50 = per_rep(reps, "p50_us")
    p99 = per_rep(reps, "p99_us")
    added = (p50["llmgate"] - p50["bare"]) / 1000
    return CaseResult(
        "latency",
        "Latency, buffered chat completion, 1 connection",
        [
            Row(
                "median",
                f"{p50['bare'] / 1000:.3f} ms",
                f"{p50['llmgate'] / 1000:.3f} ms",
                f"added {added:+.3f} ms",
                "<= 0.5 ms added",
                added <= 0.5,
            ),
            Row(
                "p99",
                f"{p99['bare'] / 1000:.3f} ms",
                f"{p99['llmgate'] / 1000:.3f} ms",
                f"added {(p99['llmgate'] - p99['bare']) / 1000:+.3f} ms",
            ),
        ],
        reps,
        [
            f"median µs per repetition: {spread(reps, 'p50_us', '{:.0f}')}",
            f"p99 µs per repetition: {spread(reps, 'p99_us', '{:.0f}')}",
        ],
    )


# Bare mitmproxy buffers every body unless told to stream, so its streaming proxy gets
# this option; llmgate streams SSE replies itself and runs without it (the option would
# also stream request bodies past llmgate's request hook, see the note in the case).
BARE_STREAM_OPTIONS = ("stream_large_bodies=1",)


def stream_options(variant: str) -> tuple[str, ...]:
    return BARE_STREAM_OPTIONS if variant == "bare" else ()


def case_streaming(bench: Bench) -> CaseResult:
    count = bench.s.streams
    reps = bench.interleaved(lambda v: bench.streams(bench.proxy(v, stream_options(v)), count))
    delay = per_rep(reps, "delay_p50_ms")
    delay99 = per_rep(reps, "delay_p99_ms")
    ttfe = per_rep(reps, "ttfe_p50_ms")
    added = delay["llmgate"] - delay["bare"]
    return CaseResult(
        "streaming",
        f"Streaming: SSE, {bench.s.events} chunks {bench.s.interval_ms:g} ms apart + usage chunk, "
        f"{count} streams",
        [
            Row(
                "median delay per event (receive - send)",
                f"{delay['bare']:.3f} ms",
                f"{delay['llmgate']:.3f} ms",
                f"added {added:+.3f} ms",
                "<= 1 ms added",
                added <= 1.0,
            ),
            Row(
                "p99 delay per event",
                f"{delay99['bare']:.3f} ms",
                f"{delay99['llmgate']:.3f} ms",
                f"added {delay99['llmgate'] - delay99['bare']:+.3f} ms",
            ),
            Row(
                "median time to first event",
                f"{ttfe['bare']:.3f} ms",
                f"{ttfe['llmgate']:.3f} ms",
                f"added {ttfe['llmgate'] - ttfe['bare']:+.3f} ms",
            ),
        ],
        reps,
        [
            "median delay per event per repetition (ms): " + spread(reps, "delay_p50_ms", "{:.3f}"),
            f"bare mitmdump runs with `--set {BARE_STREAM_OPTIONS[0]}` here (without it, it "
            "buffers the whole SSE reply and delivers every event at the end); llmgate runs "
            "with its usual options: it streams SSE replies through its own tap",
        ],
    )


CASES: list[Case] = [
    Case("throughput", case_throughput),
    Case("latency", case_latency),
    Case("streaming", case_streaming),
]


# --- reporting -------------------------------------------------------------------------


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


def fmt_met(met: bool | None) -> str:
    return "" if met is None else ("**yes**" if met else "**NO — missed**")


def render(results: list[CaseResult], info: dict, settings: Settings, audits: dict) -> str:
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
        "",
        "| case | metric | bare mitmdump | llmgate | llmgate vs bare | target | met |",
        "| --- | --- | ---: | ---: | --- | --- | --- |",
    ]
    for result in results:
        for i, row in enumerate(result.rows):
            out.append(
                f"| {result.title if i == 0 else ''} | {row.metric} | {row.bare} | {row.llmgate} | "
                f"{row.comparison} | {row.target} | {fmt_met(row.met)} |"
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
    for label, audit in audits.items():
        if "error" in audit:
            out.append(f"- audit ledger of {label}: unreadable ({audit['error']})")
            continue
        groups = ", ".join(
            f"{g['count']} {'stream' if g['stream'] else 'buffered'} {g['status']}/"
            f"usage {g['usage_source']}"
            for g in audit["groups"]
        )
        out.append(
            f"- audit ledger of {label}: {audit['total']} calls ({groups}); a cancelled call "
            "is one in flight when the load client closed its connections"
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
(`model_pattern: "*"`, `provider: openai`, endpoint the upstream) and a temporary audit
database. Clients use the proxy as an HTTP proxy with absolute-form requests to
`http://127.0.0.1:UPSTREAM/v1/chat/completions`. Throughput and latency come from wrk
(one thread; a Lua script sets the POST body, headers and absolute URL), the request a
small chat completion and the reply a small JSON body with usage. Streaming uses an
asyncio client on one keep-alive connection (one warm-up stream, then the measured ones):
the upstream writes `time.time()` into every chunk as `x_sent`, the client subtracts it
from the time the event arrived. Each proxy is checked with one real call before it is
measured (llmgate's reply must carry `x-llmgate-request-id`) and warmed up for a
moment. Proxy CPU per request is the mitmdump process's user+system time (all threads,
from /proc) over the requests served. Timing is never asserted in tests."""

PREAMBLE = """\
# llmgate benchmark

`./run.sh bench` measures bare `mitmdump` against `mitmdump -s scripts/llmgate_addon.py`
in one run and rewrites the results section below (`--quick` for a short run that leaves
this file alone unless `--write` is given). Raw figures of every run, each repetition
included, are saved under bench/results/ (not committed). See the docstring of
bench/run.py for the design and how to add a case.

Targets: llmgate/bare throughput >= 0.85; added median latency <= 0.5 ms at one
connection; added median delay per streamed event <= 1 ms.

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
        print(f"\n{result.title}")
        for row in result.rows:
            verdict = "" if row.met is None else ("  [met]" if row.met else "  [MISSED]")
            print(
                f"  {row.metric:<42} bare {row.bare:>11}  llmgate {row.llmgate:>11}  "
                f"{row.comparison} {row.target}{verdict}"
            )
        for note in result.notes:
            print(f"  - {note}")


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark bare mitmdump against llmgate.")
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument("--write", action="store_true", help="rewrite BENCH.md after --quick")
    parser.add_argument("--no-write", action="store_true", help="leave BENCH.md alone")
    parser.add_argument("--reps", type=int, help="repetitions per variant and case")
    parser.add_argument("--duration", type=float, help="seconds per load measurement")
    parser.add_argument(
        "--cases", help="comma-separated subset of: " + ", ".join(c.name for c in CASES)
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    settings = Settings.from_args(args)

    cases = CASES
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.name in wanted]
    cases = [c for c in cases if not (settings.quick and c.full_only)]

    if not MITMDUMP.exists():
        print(f"mitmdump not found at {MITMDUMP}: run ./run.sh bench", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="llmgate-bench-"))
    bench = Bench(settings, workdir)
    results: list[CaseResult] = []
    started = time.monotonic()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    audits: dict[str, Any] = {}
    try:
        bench.start()
        info = machine_info(bench)
        for case in cases:
            print(f"case {case.name} ...", file=sys.stderr)
            results.append(case.run(bench))
            bench.assert_clean()
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        audits = bench.stop()
        if args.keep:
            print(f"temporary files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    elapsed = time.monotonic() - started
    info["seconds"] = round(elapsed, 1)
    # Everything this run started has been waited for, so the rest is other processes' load.
    other = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    info["other_load_pct"] = round(max(other, 0) / (elapsed * (os.cpu_count() or 1)) * 100, 1)

    print_summary(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = RESULTS_DIR / f"{stamp}{'-quick' if settings.quick else ''}.json"
    raw.write_text(
        json.dumps(
            {
                "machine": info,
                "settings": settings.__dict__,
                "audit": audits,
                "cases": {
                    r.name: {"rows": [row.__dict__ for row in r.rows], "reps": r.reps}
                    for r in results
                },
            },
            indent=2,
        )
    )
    print(
        f"\nraw figures: {os.path.relpath(raw)}  ({info['seconds']} s; other processes used "
        f"{info['other_load_pct']}% of the machine's CPU meanwhile)"
    )
    write = (args.write or not settings.quick) and not args.no_write
    if write:
        write_bench_md(render(results, info, settings, audits))
        print(f"results written to {os.path.relpath(BENCH_MD)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
