"""Per-call quota cost: one reserve + one settle, SQLite against Redis, one connection.

    .venv/bin/python -m bench.quota_store [--calls 5000]

Starts its own redis-server (tests/redis_server.py) on a free port. Reports the
median and p99 of reserve+settle per call for:
  sqlite        QuotaStore on a file, inline (what the gateway does when uncontended)
  redis sync    RedisQuotaStore called directly (blocks the caller for the round trip)
  redis thread  the same, from an asyncio loop through a one-thread executor
                (what RedisQuotaWorker does, so the event loop never waits on Redis)
  redis asyncio  AsyncRedisQuota (redis.asyncio) on the loop itself: what the gateway runs
  settles x20    the same with settles sent 20 at a time, as the worker batches them
Windows: a user minute (requests, tokens) and a global hour (cost), the shape of a
typical policy; the global window fills with every call, as a busy fleet's would.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from addon.config import QuotaWindow
from addon.quota.redis_store import AsyncRedisQuota, RedisQuotaStore
from addon.quota.store import QuotaStore
from addon.quota.windows import AppliedWindow, Demand
from tests.redis_server import RedisServer

WINDOWS = [
    AppliedWindow(
        QuotaWindow(window_seconds=60, max_requests=10**9, max_input_tokens=10**12), "user:a"
    ),
    AppliedWindow(QuotaWindow(window_seconds=3600, scope="global", max_cost_usd=10**6), "global"),
]
DEMAND = Demand(1, 1000, 4096, 0.01)
ACTUAL = Demand(1, 1000, 300, 0.002)


def report(name: str, samples: list[float]) -> None:
    samples.sort()
    p99 = samples[int(len(samples) * 0.99)]
    print(f"{name:14s} median {statistics.median(samples) * 1e3:6.3f} ms   p99 {p99 * 1e3:6.3f} ms")


def sync_case(store: QuotaStore | RedisQuotaStore, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        rid = uuid.uuid4().hex
        t = time.perf_counter()
        store.reserve(rid, WINDOWS, DEMAND)
        store.settle(rid, ACTUAL)
        out.append(time.perf_counter() - t)
    return out


async def thread_case(store: RedisQuotaStore, calls: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    with ThreadPoolExecutor(1) as pool:
        for _ in range(calls):
            rid = uuid.uuid4().hex
            t = time.perf_counter()
            await loop.run_in_executor(pool, store.reserve, rid, WINDOWS, DEMAND)
            await loop.run_in_executor(pool, store.settle, rid, ACTUAL)
            out.append(time.perf_counter() - t)
    return out


async def asyncio_case(url: str, calls: int, batch: int = 1) -> list[float]:
    """AsyncRedisQuota on the loop, as RedisQuotaWorker runs it. With batch > 1 the
    settles go `batch` at a time, as the worker's SETTLE_DELAY batching sends them
    under load: the figure is then reserve + a share of one settle script."""
    quota = AsyncRedisQuota(url)
    out = []
    pending: list[tuple[str, Demand]] = []
    for _ in range(calls):
        rid = uuid.uuid4().hex
        t = time.perf_counter()
        await quota.reserve(rid, WINDOWS, DEMAND)
        pending.append((rid, ACTUAL))
        if len(pending) == batch:
            await quota.settle_many(pending)
            pending = []
        out.append(time.perf_counter() - t)
    await quota.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    calls = parser.parse_args().calls
    server = RedisServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, QuotaStore(Path(tmp) / "q.db") as sqlite:
            report("sqlite", sync_case(sqlite, calls))
        for db, (name, run) in enumerate(
            [
                ("redis sync", lambda s: sync_case(s, calls)),
                ("redis thread", lambda s: asyncio.run(thread_case(s, calls))),
                ("redis asyncio", lambda s: asyncio.run(asyncio_case(server.url, calls))),
                ("  settles x20", lambda s: asyncio.run(asyncio_case(server.url, calls, 20))),
            ]
        ):
            server.db = db  # each case starts on an empty database
            with RedisQuotaStore(server.url) as store:
                run(store)  # warm-up: loads the scripts, fills the hour window
                client = server.client()
                client.config_resetstat()
                report(name, run(store))
                stats = client.info("commandstats").get("cmdstat_evalsha", {})
                client.close()
                print(f"{'':14s} inside redis: {stats.get('usec_per_call', 0):.1f} us per script")
    finally:
        server.close()


if __name__ == "__main__":
    main()
