"""The shared back ends a fleet needs, started by the bench itself: redis-server (quotas)
and a PostgreSQL cluster (the ledger), each in its own temporary directory on a free
port of 127.0.0.1, stopped and removed by `stop()`.

The same recipes as tests/redis_server.py and tests/postgres_server.py (no persistence
for Redis; `initdb`/`pg_ctl` with trust authentication, `fsync=off`, run as `nobody`
when the bench runs as root, since PostgreSQL refuses root), without pytest. A missing
binary is a `BenchError` naming the package to install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BenchError
from bench.harness import cpu_seconds, free_port, stop_process

PG_SEARCH = ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
PG_USER = "nobody"  # who runs PostgreSQL when the bench runs as root


def find_binary(name: str, search: list[str], package: str) -> str:
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), *search]:
        candidate = Path(folder) / name
        if folder and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BenchError(f"{name} not found: the fleet cases need it (apt-get install -y {package})")


class Redis:
    def __init__(self) -> None:
        self.binary = find_binary("redis-server", [], "redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="llmgate-bench-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> Redis:
        import redis  # llmgate's own dependency (addon/quota/redis_store.py)

        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise BenchError(f"redis-server did not start:\n{log_text}") from None
                time.sleep(0.05)

    def stats(self) -> dict[str, float]:
        """Scripts run (EVALSHA calls), the time Redis spent in them, its keys, its CPU."""
        import redis

        with redis.Redis(port=self.port) as client:
            evalsha = client.info("commandstats").get("cmdstat_evalsha", {})
            keys = sum(v.get("keys", 0) for v in client.info("keyspace").values())
        return {
            "scripts": evalsha.get("calls", 0),
            "script_usec": evalsha.get("usec", 0),
            "keys": keys,
            "cpu_s": self.cpu(),
        }

    def keys(self, db: int) -> int:
        import redis

        with redis.Redis(port=self.port) as client:
            return client.info("keyspace").get(f"db{db}", {}).get("keys", 0)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else float("nan")

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    DATABASE = "llmgate_bench"

    def __init__(self) -> None:
        search = PG_SEARCH
        self.initdb = find_binary("initdb", search, "postgresql")
        self.pg_ctl = find_binary("pg_ctl", search, "postgresql")
        # Not under the bench's workdir: that is private to root, and the server may
        # run as another user.
        self.dir = Path(tempfile.mkdtemp(prefix="llmgate-bench-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.port = free_port()
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", PG_USER, "--"]
        self.started = False

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(
            [*self.run_as, *args], capture_output=True, text=True, timeout=120, cwd=self.dir
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise BenchError(f"{' '.join(args[:2])} failed ({done.returncode}): "
                             f"{done.stdout}{done.stderr}{log}")  # fmt: skip

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://llmgate@127.0.0.1:{self.port}/{database}"

    def start(self) -> Postgres:
        import psycopg  # llmgate's own dependency for a PostgreSQL ledger

        self._run([self.initdb, "-D", str(self.data), "-U", "llmgate", "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])  # fmt: skip
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200"
        )
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", "60", "start"])  # fmt: skip
        self.started = True
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.DATABASE}"')
        return self

    def cpu(self) -> float:
        """CPU seconds of the postmaster and every process it forked (one per session)."""
        try:
            master = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return float("nan")
        total = cpu_seconds(master)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                total += cpu_seconds(int(stat.parent.name))
        return total

    def count(self, sql: str) -> int | str:
        import psycopg

        try:
            with psycopg.connect(self.url()) as conn:
                row = conn.execute(sql).fetchone()
                return int(row[0]) if row else 0
        except psycopg.Error as exc:
            return f"error: {exc}"

    def stop(self) -> None:
        if self.started:
            try:
                self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
            except BenchError as exc:
                print(f"PostgreSQL did not stop cleanly: {exc}", file=sys.stderr)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
