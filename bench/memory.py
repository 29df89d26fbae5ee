"""The memory case: llmgate's resident set over 100,000 buffered and 5,000 streamed calls.

Issue 14: "RSS stays flat over 100,000 buffered and 5,000 streamed calls. The bench
reports RSS at start, middle and end." One llmgate (variant `llmgate`: the default
ledger, which stores payloads, and the default safety policy) takes buffered chat
completions at `--connections` in slices of `SLICE_S` seconds until 100,000 have
been answered, then 5,000 streams (30 events, no delay between them, so that the
case takes seconds, not the 12 minutes of 5 ms events), in slices of 1,000. After
the warm-up and after each slice it reads the process's VmRSS and VmHWM (peak)
from /proc.

Flat means: the resident set after the last call is within `FLAT_MB` of what it was
halfway through the buffered calls. Python's allocator and SQLite's page cache grow
to a working size in the first calls and then stay; a leak keeps growing with the
count of calls, so the second half of the run shows it. The start figure (after the
warm-up) is reported too, with the growth to the middle, but is not held to the
threshold: it includes the caches filling.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import STREAM_BODY
from bench.measure import Bench, CaseResult, Row

BUFFERED = 100_000
STREAMED = 5_000
STREAM_SLICE = 1_000
SLICE_S = 15.0
FLAT_MB = 8.0
STREAM_HEADERS = "x-bench-events: 30\r\nx-bench-interval-ms: 0\r\n"


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def ledger_calls(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("select count(*) from requests").fetchone()[0])


def case_memory(bench: Bench) -> CaseResult:
    proxy = bench.proxy("llmgate")
    assert proxy.proc is not None and proxy.db is not None
    pid = proxy.proc.pid
    samples: list[dict[str, Any]] = []

    def sample(phase: str, buffered: int, streamed: int) -> None:
        rss, peak = memory_mb(pid)
        samples.append(
            {
                "phase": phase,
                "buffered": buffered,
                "streamed": streamed,
                "rss_mb": rss,
                "peak_mb": peak,
                "t": time.time(),
            }  # fmt: skip
        )

    sample("start", 0, 0)
    buffered = errors = 0
    middle: dict[str, Any] | None = None
    started = time.monotonic()
    while buffered < BUFFERED:
        result = bench.load(proxy, bench.s.connections, SLICE_S)
        buffered += result["requests"]
        errors += result["errors"]
        sample("buffered", buffered, 0)
        if middle is None and buffered >= BUFFERED // 2:
            middle = samples[-1]
    buffered_s = time.monotonic() - started
    streamed = 0
    while streamed < STREAMED:
        bench.streams(proxy, STREAM_SLICE, STREAM_BODY, STREAM_HEADERS)
        streamed += STREAM_SLICE + 1  # each slice opens with a warm-up stream
        sample("streamed", buffered, streamed)
    bench.assert_clean()
    assert middle is not None
    start, end = samples[0], samples[-1]
    growth_late = end["rss_mb"] - middle["rss_mb"]
    time.sleep(1.0)  # the audit writer's last batch
    recorded = ledger_calls(proxy.db)

    def mb(x: float) -> str:
        return f"{x:.1f} MB"

    return CaseResult(
        "memory",
        f"Memory: llmgate's resident set over {buffered:,} buffered chat completions "
        f"({bench.s.connections} connections) then {streamed:,} streams (30 events each)",
        [
            Row("RSS after warm-up (start)", "—", mb(start["rss_mb"]), ""),
            Row(
                f"RSS halfway ({middle['buffered']:,} buffered calls)",
                "—",
                mb(middle["rss_mb"]),
                f"{middle['rss_mb'] - start['rss_mb']:+.1f} MB since start",
            ),
            Row(
                f"RSS at the end ({buffered:,} buffered + {streamed:,} streamed)",
                "—",
                mb(end["rss_mb"]),
                f"{growth_late:+.1f} MB since halfway",
                f"<= {FLAT_MB:g} MB growth after halfway",
                growth_late <= FLAT_MB,
            ),
            Row("peak RSS (VmHWM)", "—", mb(end["peak_mb"]), ""),
        ],
        {
            "llmgate": [
                {
                    "samples": samples,
                    "errors": errors,
                    "recorded": recorded,
                    "buffered_s": buffered_s,
                }
            ]
        },  # fmt: skip
        [
            "RSS (MB) after each slice: "
            + ", ".join(f"{s['buffered'] + s['streamed']:,}: {s['rss_mb']:.1f}" for s in samples),
            f"{errors} load errors; the ledger holds {recorded:,} calls (warm-up and "
            "checks included)",
            "streams: 30 events each with no delay between them (`x-bench-interval-ms: 0`), "
            "one connection, one after another",
        ],
        ("bare", "llmgate"),
    )
