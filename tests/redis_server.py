"""A real redis-server for the tests: its own port, its own temporary directory.

Never skips: a machine without redis-server fails the tests that need it, with the
command that installs it (./run.sh and .ci/run install it with apt-get).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis

from addon.quota.redis_store import PREFIX, RedisQuotaStore
from addon.quota.store import QuotaStore
from addon.quota.windows import NANO, Demand


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process; `stop()` and `start()` again keep its port (a restart)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed, and the quota tests run against a real one: "
                "install it (apt-get install -y redis-server) or run ./run.sh test, which does"
            )
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="llmgate-redis-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.db = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def start(self) -> None:
        # No persistence: a restart starts empty, the worst case for the stores.
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                "1000",
            ],
            stdout=(self.dir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"redis-server did not start on {self.port}:\n{log}"
                    ) from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- both quota stores behind one test interface ----------------------------------------

# Every row of every scope key, decoded on the server (the amounts are msgpack).
_DUMP = """
local P, out = ARGV[1], {}
for _, K in ipairs(redis.call('SMEMBERS', P .. 'keys')) do
  local z = redis.call('ZRANGE', P .. 'z:' .. K, 0, -1, 'WITHSCORES')
  for i = 1, #z, 2 do
    local v = redis.call('HGET', P .. 'h:' .. K, z[i])
    local row = v and cmsgpack.unpack(v) or {-1, 0, 0, 0, 0}
    out[#out + 1] = {z[i], K, z[i + 1], row[2], row[3], row[4], row[5], row[1]}
  end
end
return out
"""


class QuotaBackend:
    """One test's quota storage: a SQLite file or a Redis database, and ways to look
    at its rows without going through the store under test."""

    name: str

    def open(self, **options: Any) -> QuotaStore | RedisQuotaStore:
        """A new store on the same storage, as another process would open it."""
        raise NotImplementedError

    def all_rows(self) -> list[tuple[str, str, float, int, int, int, int, int]]:
        """(reservation_id, scope_key, ts, requests, input, output, cost_nusd, settled)."""
        raise NotImplementedError

    def rows(self) -> list[tuple[str, str, float, int, int, int]]:
        """(reservation_id, scope_key, ts, requests, input_tokens, settled), by ts, key."""
        return sorted(
            ((r[0], r[1], r[2], r[3], r[4], r[7]) for r in self.all_rows()),
            key=lambda r: (r[2], r[1]),
        )

    def brute_force(self, key: str, seconds: int, now: float) -> tuple[Demand, Demand]:
        """(used, reserved) of a window straight from the rows, to check running totals."""
        sums = {1: [0, 0, 0, 0], 0: [0, 0, 0, 0]}
        for _, k, ts, *amounts, settled in self.all_rows():
            if k == key and ts > now - seconds:
                sums[settled] = [a + b for a, b in zip(sums[settled], amounts, strict=True)]
        used, reserved = sums[1], sums[0]
        return (
            Demand(used[0], used[1], used[2], used[3] / NANO),
            Demand(reserved[0], reserved[1], reserved[2], reserved[3] / NANO),
        )


class SqliteBackend(QuotaBackend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.target = str(path)

    def open(self, **options: Any) -> QuotaStore:
        return QuotaStore(self.path, **options)

    def all_rows(self) -> list[tuple[str, str, float, int, int, int, int, int]]:
        if not self.path.exists():
            return []
        with closing(sqlite3.connect(self.path)) as conn:  # sqlite3's `with` does not close
            return conn.execute(
                "SELECT reservation_id, scope_key, ts, requests, input_tokens, output_tokens,"
                " cost_nusd, settled FROM quota_ledger"
            ).fetchall()


class RedisBackend(QuotaBackend):
    name = "redis"

    def __init__(self, server: RedisServer, db: int) -> None:
        self.server = server
        self.target = f"redis://127.0.0.1:{server.port}/{db}"
        with closing(redis.Redis.from_url(self.target)) as client:
            client.flushdb()

    def open(self, **options: Any) -> RedisQuotaStore:
        return RedisQuotaStore(self.target, **options)

    def all_rows(self) -> list[tuple[str, str, float, int, int, int, int, int]]:
        with closing(redis.Redis.from_url(self.target)) as client:
            reply = client.eval(_DUMP, 0, PREFIX)
        return [
            (rid.decode(), key.decode(), float(ts), *(int(x) for x in rest))  # type: ignore[misc]
            for rid, key, ts, *rest in reply
        ]


_databases = itertools.count(1)


@contextlib.contextmanager
def running_server() -> Iterator[RedisServer]:
    """A started redis-server in a temporary directory, removed afterwards."""
    server = RedisServer()  # fails (never skips) without redis-server
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> QuotaBackend:
    """Each quota test runs on both stores; Redis gets a fresh database per test."""
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "quota.db")
    server = request.getfixturevalue("redis_server")
    return RedisBackend(server, next(_databases) % 1000)
