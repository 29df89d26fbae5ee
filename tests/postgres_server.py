"""A real PostgreSQL cluster for the tests: `initdb` and `pg_ctl` in a temporary directory.

No system service: the cluster runs as the test's user (as `nobody` when the tests
run as root, which PostgreSQL refuses to run as), on a free TCP port on 127.0.0.1
with its Unix socket in the same temporary directory, trust authentication, and
is stopped and removed when the test process ends. One cluster per test process;
each test gets a database of its own (`new_database`).

Missing binaries fail the test with a message saying what to install: these tests
never skip.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg
import pytest

from addon.ledger.db import open_db
from tests.proxy import free_port

_SEARCH = ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
_UNPRIVILEGED = "nobody"


def find_binary(name: str) -> str:
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), *_SEARCH]:
        candidate = Path(folder) / name
        if folder and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(
        f"PostgreSQL's {name} was not found on PATH or in {', '.join(_SEARCH)}: install the"
        " server (apt-get install postgresql) to run the PostgreSQL ledger tests",
        pytrace=False,
    )


class PostgresServer:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        # Not under pytest's tmp_path: that is private to root, and the server may
        # run as another user.
        self.dir = Path(tempfile.mkdtemp(prefix="llmgate-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(_UNPRIVILEGED)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", _UNPRIVILEGED, "--"]
        self._run([self.initdb, "-D", str(self.data), "-U", "llmgate", "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])  # fmt: skip
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=120, cwd=self.dir
        )
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}"
                f"{self.log.read_text() if self.log.exists() else ''}",
                pytrace=False,
            )

    def start(self) -> PostgresServer:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200"
        )
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", "60", "start"])  # fmt: skip
        return self

    def stop(self) -> None:
        """Stop at once (fast: open sessions are ended, as when a server goes down)."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def running(self) -> bool:
        done = subprocess.run([*self._as, self.pg_ctl, "-D", str(self.data), "status"],
                              capture_output=True, cwd=self.dir)  # fmt: skip
        return done.returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://llmgate@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        with self._lock:
            name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_SERVER: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The test process's cluster, started on first use and removed at exit."""
    global _SERVER
    if _SERVER is None:
        _SERVER = PostgresServer().start()
        atexit.register(_SERVER.remove)
    elif not _SERVER.running():  # a test stopped it
        _SERVER.start()
    return _SERVER


@pytest.fixture
def postgres_url() -> str:
    """The URL of an empty database on the shared cluster."""
    return shared_server().new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_at(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a ledger test's ledger is: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "a.db"
    return shared_server().new_database()


def ledger_rows(location: str | Path, sql: str, *params: object) -> list[tuple]:
    """`sql` (with `?` placeholders) on a connection of its own, as tuples."""
    db = open_db(location, read_only=True)
    try:
        return [tuple(row) for row in db.execute(sql, params).fetchall()]
    finally:
        db.close()
