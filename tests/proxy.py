"""A real llmgate proxy for end-to-end tests: `mitmdump -s scripts/llmgate_addon.py`."""

from __future__ import annotations

import atexit
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "scripts" / "llmgate_addon.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
MITMWEB = Path(sys.executable).parent / "mitmweb"
# The tables addon/ledger/store.py creates when it opens a new ledger.
LEDGER_TABLES = ("requests", "payloads", "findings", "attempts")


# Every proxy a test started and has not stopped: killed when the test process
# exits, so that a test that failed before its `stop()` leaves no mitmdump behind.
_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proxy:
    def __init__(
        self,
        policies: Path,
        db: Path,
        confdir: Path,
        *,
        upstream_ca: str | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        addon: bool = True,
        binary: Path = MITMDUMP,
        log_path: Path | None = None,
    ) -> None:
        self.policies, self.db, self.confdir = policies, db, confdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ca_path = str(confdir / "mitmproxy-ca-cert.pem")
        self.log_path = log_path or db.with_suffix(".log")
        # A PostgreSQL ledger, named in env: the proxy gets it, `query` reads it.
        named = (env or {}).get("LLMGATE_DB", "")
        self.ledger_url = named if named.startswith("postgresql://") else None
        args = [
            str(binary),
            "--listen-host", "127.0.0.1",
            "--listen-port", str(self.port),
            "--set", f"confdir={confdir}",
            "--set", "connection_strategy=lazy",
            "--set", "flow_detail=0",  # as ./run.sh: llmgate logs its own lines
        ]  # fmt: skip
        if addon:
            args += ["-s", str(ENTRY), "--set", f"llmgate_policies={policies}"]
            args += ["--set", f"llmgate_db={self.ledger_url or db}"]
        if upstream_ca:
            args += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
        args += extra_args or []
        self._args = args
        self._addon = addon
        self._env = {**os.environ, "LLMGATE_SECRETS": "", **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proxy:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self._args, env=self._env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        _RUNNING.add(self._proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
                continue
            if "error" in self.log().lower():
                # mitmdump listens before it notices a broken script, then exits.
                self.stop()
                raise RuntimeError(f"mitmdump failed to start: {self.log()}")
            if Path(self.ca_path).exists() and self._ready():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"mitmdump did not start: {self.log()}")

    def _ready(self) -> bool:
        """mitmdump may accept connections before the script is loaded: with llmgate,
        ready means its health page answers."""
        if not self._addon:
            return True
        try:
            with httpx2.Client(proxy=self.url, timeout=2) as client:
                status = client.get("http://llmgate.internal/health").status_code
        except httpx2.HTTPError:
            return False
        # With proxy auth the page is behind it (407): then the ledger is the sign.
        return status == 200 or (status == 407 and self.db.exists())

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()

    def kill(self) -> None:
        """kill -9: no hook runs, nothing is flushed."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=15)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- clients -----------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_path)

    def http_client(self, **kwargs: Any) -> httpx2.Client:
        return httpx2.Client(proxy=self.url, verify=self.ssl_context(), **kwargs)

    def async_http_client(self, **kwargs: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(proxy=self.url, verify=self.ssl_context(), **kwargs)

    # --- the audit ledger ----------------------------------------------------------
    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        if self.ledger_url:
            from addon.ledger.db import open_db

            pg = open_db(self.ledger_url, read_only=True)
            try:
                return pg.rows(sql, params)
            finally:
                pg.close()
        if not self.db.exists():
            return []
        conn = sqlite3.connect(self.db, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            # The writer creates the file, then its tables one at a time: until they
            # all exist, a missing table is an empty one. Anything else (a typo in the
            # SQL, a locked or broken file, a table missing from a complete ledger)
            # must fail the test, not read as "no rows".
            if str(exc).startswith("no such table") and not self._ledger_created(conn):
                return []
            raise
        finally:
            conn.close()

    @staticmethod
    def _ledger_created(conn: sqlite3.Connection) -> bool:
        names = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        return set(LEDGER_TABLES) <= names

    def row(self, request_id: str, timeout: float = 10) -> dict[str, Any]:
        """The closed audit row for a request id (waits for the writer thread)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query("select * from requests where id = ?", request_id)
            if rows and rows[0]["status"] != "pending":
                return rows[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no closed audit row for {request_id}: {rows}")
            time.sleep(0.05)

    def ledger_idle(self) -> bool:
        """The writer has committed everything queued so far: a strict call's opening
        row is in the journal first, and in the ledger with the writer's next batch."""
        try:
            with httpx2.Client(proxy=self.url, timeout=5) as client:
                response = client.get("http://llmgate.internal/health")
        except httpx2.HTTPError:
            return False
        if response.status_code != 200:  # behind proxy auth (407): nothing to tell
            return True
        return response.json()["ledger"]["queue_depth"] == 0

    def closed_rows(self, user: str, count: int | None = None, timeout: float = 10) -> list[dict]:
        """A user's rows once none is pending and the writer has nothing queued (and,
        if given, once there are `count`)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query('select * from requests where "user" = ?', user)
            settled = rows and all(r["status"] != "pending" for r in rows)
            if settled and (count is None or len(rows) >= count) and self.ledger_idle():
                rows = self.query('select * from requests where "user" = ?', user)
                if all(r["status"] != "pending" for r in rows):
                    return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"{user}: rows still pending or missing: {len(rows)}")
            time.sleep(0.05)

    def payload(self, request_id: str) -> dict[str, Any]:
        self.row(request_id)
        return self.query("select * from payloads where request_id = ?", request_id)[0]
