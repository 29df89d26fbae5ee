"""One benchmark run: its processes, the measurements cases ask for, and what a case returns.

A case gets a `Bench` and uses three things:

* `bench.proxy(variant, options)` — the running mitmdump of a variant (see
  `harness.VARIANTS`) with extra mitmproxy options; each distinct pair is one process,
  started, checked with a real call and warmed up on first use, kept for the run;
* `bench.load(proxy, connections, seconds, body=...)` and `bench.streams(proxy, count)`
  — one measurement (wrk or the asyncio client; the SSE stream reader);
* `bench.interleaved(measure, variants)` — `measure(variant)` `--reps` times per
  variant, alternating which variant goes first, so drift on the shared machine hits
  both sides alike.

The fleet cases also use `bench.redis()` and `bench.postgres()` (a redis-server and a
PostgreSQL cluster of the run's own, started on first use, stopped by `stop()`),
`bench.proxy(..., instance=i, ledger=url)` for the i-th process of one variant, and
`bench.fleet_load(proxies, connections, seconds)`: the connections spread over the
processes, one load client per process, all at once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load as clients
from bench.common import (
    CALL_TIMEOUT,
    CHAT_BODY,
    REQUEST_ID_HEADER,
    STREAM_BODY,
    BenchError,
    Settings,
)
from bench.harness import VARIANTS, Proxy, Upstream
from bench.servers import Postgres, Redis

BARE_VS_LLMGATE = ("bare", "llmgate")


@dataclass
class Row:
    """One metric of a case: the figure of the base variant, then of the measured one."""

    metric: str
    base: str
    subject: str
    comparison: str = ""
    target: str = ""
    met: bool | None = None  # None: the row has no target


@dataclass
class CaseResult:
    name: str
    title: str
    rows: list[Row]
    reps: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)
    # (base, subject) variant names: which columns the rows fill in BENCH.md.
    variants: tuple[str, str] = BARE_VS_LLMGATE


@dataclass
class Case:
    name: str
    run: Callable[[Bench], CaseResult]
    full_only: bool = False  # skipped by --quick


class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.confdir = workdir / "confdir"
        self.upstream = Upstream(settings.events, settings.interval_ms)
        # (variant, options), and for a fleet's process also (instance, ledger).
        self.proxies: dict[tuple[object, ...], Proxy] = {}
        self._redis: Redis | None = None
        self._postgres: Postgres | None = None
        self.client = "python"
        self.wrk: str | None = None
        self._wrk_scripts: dict[str, Path] = {}  # request body -> its Lua script

    # --- lifecycle ---
    def start(self) -> None:
        self.upstream.start()
        if self.s.client in ("auto", "wrk"):
            self.wrk = clients.ensure_wrk()
            if self.wrk:
                self.client = "wrk"
            elif self.s.client == "wrk":
                raise BenchError("--client wrk: wrk is not installed and could not be installed")
            else:
                print("wrk not available: using the asyncio load client", file=sys.stderr)

    def stop(self) -> dict[str, Any]:
        """Stop every process this run started; returns the audit summaries of the proxies."""
        audits = {}
        for proxy in self.proxies.values():
            proxy.stop()
            summary = proxy.audit_summary()
            if summary is not None:
                audits[proxy.label] = summary
        self.upstream.stop()
        for server in (self._redis, self._postgres):
            if server is not None:
                server.stop()
        return audits

    def redis(self) -> Redis:
        """The run's redis-server (started on first use)."""
        if self._redis is None:
            print("  starting redis-server ...", file=sys.stderr)
            self._redis = Redis()
            self._redis.start()
        return self._redis

    def postgres(self) -> Postgres:
        """The run's PostgreSQL cluster with one empty database (started on first use)."""
        if self._postgres is None:
            print("  starting PostgreSQL ...", file=sys.stderr)
            self._postgres = Postgres()
            self._postgres.start()
        return self._postgres

    def proxy(
        self, variant: str, options: tuple[str, ...] = (), instance: int = 0, ledger: str = ""
    ) -> Proxy:
        """The running mitmdump for this variant and these extra options (started once);
        `instance` numbers the processes of a fleet, `ledger` is a postgresql:// URL."""
        key: tuple[object, ...] = (variant, options)
        if instance or ledger:
            key += (instance, ledger)
        if key not in self.proxies:
            proxy = Proxy(VARIANTS[variant], options, self.workdir, self.upstream.port)
            proxy.instance, proxy.ledger = instance, ledger
            # Registered before start so that stop() reaps it even if starting fails.
            self.proxies[key] = proxy
            print(f"  starting mitmdump ({proxy.label}) ...", file=sys.stderr)
            proxy.start(self.confdir)
            self.check(proxy)
            self.load(proxy, self.s.connections, self.s.warmup_s)  # warm-up, discarded
        return self.proxies[key]

    def call(self, proxy: Proxy, body: str = CHAT_BODY) -> tuple[int, dict[bytes, bytes], bytes]:
        """One chat completion with `body` through the proxy: (status, headers, reply body)."""
        request = clients.proxy_request(self.upstream.port, body)
        try:
            call = clients.one_call(proxy.port, request)
            return asyncio.run(asyncio.wait_for(call, CALL_TIMEOUT))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BenchError(
                f"mitmdump ({proxy.label}) call failed: {exc!r}\n"
                f"--- its log ---\n{proxy.log_tail()}"
            ) from None

    def check(self, proxy: Proxy) -> None:
        """One real call, so a figure never comes from a proxy that is not doing its job."""
        status, headers, body = self.call(proxy)
        time.sleep(0.2)  # let the audit writer and the log catch up
        variant = proxy.variant
        missing = [h.decode() for h in variant.expect_headers if h not in headers]
        problem = None
        if status != 200:
            problem = f"HTTP {status}: {body[:300]!r}"
        elif b'"usage"' not in body:
            problem = f"reply is not the upstream's: {body[:300]!r}"
        elif variant.addon and REQUEST_ID_HEADER not in headers:
            problem = (
                "no x-llmgate-request-id header: the addon did not handle the call "
                "(did scripts/llmgate_addon.py fail to load?)"
            )
        elif not variant.addon and REQUEST_ID_HEADER in headers:
            problem = "bare proxy answered with an llmgate header"
        elif missing:
            problem = f"reply lacks {', '.join(missing)}: the variant's feature did not run"
        elif proxy.errors():
            problem = "it logged errors:\n  " + "\n  ".join(proxy.errors()[:10])
        if problem:
            raise BenchError(
                f"mitmdump ({proxy.label}) check failed: {problem}\n"
                f"--- its log ---\n{proxy.log_tail()}"
            )

    # --- measurement helpers for cases ---
    def interleaved(
        self,
        measure: Callable[[str], dict[str, Any]],
        variants: tuple[str, ...] = BARE_VS_LLMGATE,
    ) -> dict[str, list[dict[str, Any]]]:
        """Run `measure(variant)` reps times per variant, alternating which goes first."""
        out: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for rep in range(self.s.reps):
            for variant in variants if rep % 2 == 0 else tuple(reversed(variants)):
                out[variant].append(measure(variant))
        return out

    def _wrk_script(self, body: str) -> Path:
        if body not in self._wrk_scripts:
            path = self.workdir / f"request-{len(self._wrk_scripts)}.lua"
            path.write_text(clients.wrk_script(self.upstream.port, body))
            self._wrk_scripts[body] = path
        return self._wrk_scripts[body]

    def load(
        self, proxy: Proxy, connections: int, seconds: float, body: str = CHAT_BODY
    ) -> dict[str, Any]:
        """Chat completions with `body` at `connections` keep-alive connections for `seconds`."""
        cpu0 = proxy.cpu()
        if self.client == "wrk":
            assert self.wrk
            script = self._wrk_script(body)
            result = clients.run_wrk(self.wrk, script, proxy.port, connections, seconds)
        else:
            request = clients.proxy_request(self.upstream.port, body)
            load = clients.python_load(proxy.port, request, connections, seconds)
            try:
                result = asyncio.run(asyncio.wait_for(load, seconds + CALL_TIMEOUT))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                raise BenchError(f"load through mitmdump ({proxy.label}) failed: {exc!r}") from None
        cpu = proxy.cpu() - cpu0
        result["proxy_cpu_s"] = cpu
        result["cpu_us_per_request"] = cpu / result["requests"] * 1e6 if result["requests"] else 0
        return result

    def fleet_load(self, proxies: list[Proxy], connections: int, seconds: float) -> dict[str, Any]:
        """`connections` spread as evenly as they go over the processes, one load client
        per process (wrk: one wrk each), all started together; requests/s is the sum of
        each client's, CPU per request the processes' CPU over all their requests."""
        share = [connections // len(proxies) + (i < connections % len(proxies))
                 for i in range(len(proxies))]  # fmt: skip
        with ThreadPoolExecutor(len(proxies)) as pool:
            runs = list(
                pool.map(
                    lambda pc: self.load(pc[0], pc[1], seconds), zip(proxies, share, strict=True)
                )
            )
        requests = sum(r["requests"] for r in runs)
        cpu = sum(r["proxy_cpu_s"] for r in runs)
        return {
            "processes": len(proxies),
            "connections": share,
            "requests": requests,
            "rps": sum(r["rps"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "p50_us": max(r["p50_us"] for r in runs),  # the slowest process's median
            "proxy_cpu_s": cpu,
            "cpu_us_per_request": cpu / requests * 1e6 if requests else 0,
            "per_process": runs,
        }

    def streams(
        self,
        proxy: Proxy,
        count: int,
        body: str = STREAM_BODY,
        headers: str = "",
        stamp: Callable[[dict[str, Any]], float | None] | None = None,
    ) -> dict[str, Any]:
        """`count` streamed calls one after another (after one warm-up stream); with
        `stamp`, each event's send time is read with it (see `load.text_stamp`)."""
        request = clients.proxy_request(self.upstream.port, body, headers)
        timeout = CALL_TIMEOUT + count * 2
        cpu0 = proxy.cpu()
        try:
            result = asyncio.run(
                asyncio.wait_for(clients.streams(proxy.port, request, count, stamp), timeout)
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BenchError(
                f"streaming through mitmdump ({proxy.label}) failed: {exc!r}\n"
                f"--- its log ---\n{proxy.log_tail()}"
            ) from None
        if proxy.variant.addon and result["tagged"] != count:
            raise BenchError(
                f"only {result['tagged']} of {count} streams through mitmdump ({proxy.label}) "
                "carried x-llmgate-request-id: llmgate did not handle them"
            )
        # Over count + 1 streams: the warm-up one is in the proxy's CPU time too.
        result["proxy_cpu_s"] = cpu = proxy.cpu() - cpu0
        result["cpu_us_per_stream"] = cpu / (count + 1) * 1e6
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
