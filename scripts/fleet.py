"""`./run.sh fleet`: a local llmgate fleet on one machine, as a demo and a smoke test.

Starts a Redis (quotas) and a PostgreSQL cluster (the ledger and virtual keys) in
a state directory, then LLMGATE_FLEET (3) llmgate processes on consecutive ports
from LLMGATE_PORT (8080) that share them and one CA (the same confdir), prints how
to point clients at them, and waits. Ctrl-C (or SIGTERM) stops everything it
started: the llmgate processes first (they drain their calls into the ledger),
then Redis and PostgreSQL.

A `postgresql://` LLMGATE_DB or a LLMGATE_QUOTA already set is used as it is,
instead of the local server. Arguments are passed to every mitmdump.

Not a deployment system: see the README's "Fleet mode" for systemd and a load
balancer.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "scripts" / "llmgate_addon.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
UNPRIVILEGED = "nobody"  # PostgreSQL refuses to run as root
PG_SEARCH = ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]


def say(text: str) -> None:
    print(f"fleet: {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child: SIGTERM when the fleet process dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child in its own process group (Ctrl-C reaches the fleet, which stops the
    children in order), killed with the fleet if it dies first."""
    out: IO[bytes] = log.open("ab")
    try:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            process_group=0, preexec_fn=_die_with_parent,
        )  # fmt: skip
    finally:
        out.close()


def pg_binary(name: str) -> str:
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), *PG_SEARCH]:
        candidate = Path(folder) / name
        if folder and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise SystemExit(f"fleet: PostgreSQL's {name} was not found: apt-get install postgresql")


class Postgres:
    """A cluster in `directory` (made by initdb on first start, kept between runs),
    run as `nobody` when the fleet runs as root."""

    def __init__(self, state: Path) -> None:
        self.initdb, self.pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
        self.run_as: list[str] = []
        self.dir = state / "postgres"
        if os.geteuid() == 0:
            # nobody must reach the data directory, and a root state directory
            # (/root/..., a 0700 llmgate directory) is closed to it: the cluster
            # goes in /var/tmp then, named after the state directory.
            digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
            self.dir = Path("/var/tmp") / f"llmgate-fleet-postgres-{digest}"
            self.run_as = ["runuser", "-u", UNPRIVILEGED, "--"]
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        self.port = int(os.environ.get("LLMGATE_FLEET_PG_PORT") or free_port())
        self.started = False

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(
            [*self.run_as, *args], capture_output=True, text=True, timeout=120, cwd=self.dir
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise SystemExit(f"fleet: {Path(args[0]).name} failed: {done.stdout}{done.stderr}{log}")

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.run_as:
            user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            say(f"initdb {self.data}")
            self._run([self.initdb, "-D", str(self.data), "-U", "llmgate", "--auth=trust",
                       "-E", "UTF8", "--locale=C", "--no-sync"])  # fmt: skip
        # Its socket in its own directory; TCP on 127.0.0.1 only, trust authentication
        # (a demo: a deployment has passwords or certificates, see the README).
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", "60", "start"])  # fmt: skip
        self.started = True
        url = f"postgresql://llmgate@127.0.0.1:{self.port}"
        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'llmgate'").fetchone():
                conn.execute("CREATE DATABASE llmgate")
        return f"{url}/llmgate"

    def stop(self) -> None:
        if self.started:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
            self.started = False


class Fleet:
    def __init__(self, extra_args: list[str]) -> None:
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        self.state = state / "llmgate" / "fleet"
        self.logs = self.state / "logs"
        self.size = int(os.environ.get("LLMGATE_FLEET") or 3)
        self.first_port = int(os.environ.get("LLMGATE_PORT") or 8080)
        self.host = os.environ.get("LLMGATE_LISTEN_HOST") or "127.0.0.1"
        self.confdir = Path(os.environ.get("LLMGATE_CONFDIR") or Path.home() / ".mitmproxy")
        self.policies = os.environ.get("LLMGATE_POLICIES") or str(ROOT / "policies")
        self.extra_args = extra_args
        self.redis: subprocess.Popen | None = None
        self.postgres: Postgres | None = None
        self.proxies: list[subprocess.Popen] = []
        self.quota_url = os.environ.get("LLMGATE_QUOTA", "")
        ledger = os.environ.get("LLMGATE_DB", "")
        self.db_url = ledger if ledger.startswith(("postgresql://", "postgres://")) else ""

    # --- the shared servers --------------------------------------------------------------
    def start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("fleet: redis-server is not installed: apt-get install redis-server")
        port = int(os.environ.get("LLMGATE_FLEET_REDIS_PORT") or free_port())
        directory = self.state / "redis"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # An append-only file in the state directory: the windows survive a restart.
        self.redis = spawn(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--appendonly", "yes", "--save", ""],
            self.logs / "redis.log",
        )  # fmt: skip
        self.wait(lambda: listening(port), self.redis, "redis-server", self.logs / "redis.log")
        return f"redis://127.0.0.1:{port}/0"

    # --- the llmgate processes --------------------------------------------------------------
    def start_proxy(self, port: int) -> subprocess.Popen:
        env = {**os.environ, "LLMGATE_DB": self.db_url, "LLMGATE_QUOTA": self.quota_url}
        args = [
            str(MITMDUMP), "--listen-host", self.host, "--listen-port", str(port),
            "--set", f"confdir={self.confdir}", "--set", "connection_strategy=lazy",
            "--set", "flow_detail=0", "-s", str(ENTRY),
            "--set", f"llmgate_policies={self.policies}", "--set", f"llmgate_db={self.db_url}",
            *self.extra_args,
        ]  # fmt: skip
        return spawn(args, self.logs / f"llmgate-{port}.log", env)

    def ready(self, port: int) -> bool:
        """The health page answers through the proxy (the addon is loaded)."""
        if not listening(port):
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(
                    b"GET http://llmgate.internal/health HTTP/1.1\r\n"
                    b"Host: llmgate.internal\r\nConnection: close\r\n\r\n"
                )
                head = sock.recv(64)
        except OSError:
            return False
        return head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 407"))

    def wait(self, check, proc: subprocess.Popen, what: str, log: Path) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 60
        while not check():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise SystemExit(f"fleet: {what} did not start (see {log}):\n{tail}")
            time.sleep(0.1)

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.quota_url:
            self.quota_url = self.start_redis()
        if not self.db_url:
            self.postgres = Postgres(self.state)
            self.db_url = self.postgres.start()
        ports = [self.first_port + i for i in range(self.size)]
        busy = [p for p in ports if listening(p)]
        if busy:
            raise SystemExit(f"fleet: port(s) {busy} already in use: set LLMGATE_PORT")
        # The first alone: it makes the CA (when the confdir has none) and migrates the
        # ledger; the others then load that CA, so every process signs with one.
        for batch in (ports[:1], ports[1:]):
            started = [(port, self.start_proxy(port)) for port in batch]
            self.proxies += [proc for _, proc in started]
            for port, proc in started:
                log = self.logs / f"llmgate-{port}.log"
                self.wait(lambda port=port: self.ready(port), proc, f"llmgate on {port}", log)
        self.banner(ports)

    def banner(self, ports: list[int]) -> None:
        ca = self.confdir / "mitmproxy-ca-cert.pem"
        lines = [
            f"llmgate fleet: {len(ports)} processes, one CA, shared quotas and ledger",
            f"  quotas (Redis)     : {self.quota_url.split('@')[-1]}",
            f"  ledger (PostgreSQL): {self.db_url.split('@')[-1]}",
            f"  policies           : {self.policies}",
            f"  CA certificate     : {ca}",
            f"  logs               : {self.logs}/",
        ]
        if self.postgres:
            lines.append(f"  PostgreSQL cluster : {self.postgres.data}")
        lines += ["", "Point a client at any one of them (HTTPS_PROXY per process):"]
        lines += [
            f"  llmgate {i}: export HTTPS_PROXY=http://{self.host}:{p}" for i, p in enumerate(ports)
        ]
        lines += [
            "and trust the fleet's one CA:",
            f"  export SSL_CERT_FILE={ca}",
            f"  export REQUESTS_CA_BUNDLE={ca}",
            f"  export NODE_EXTRA_CA_CERTS={ca}",
            "",
            "Or spread them with a TCP load balancer (CONNECT tunnels; no TLS termination),",
            "e.g. HAProxy listening on 8000 (clients then use HTTPS_PROXY=http://127.0.0.1:8000):",
            "  frontend llmgate",
            "    mode tcp",
            "    bind 127.0.0.1:8000",
            "    default_backend fleet",
            "  backend fleet",
            "    mode tcp",
            "    balance leastconn",
            *(f"    server llmgate{i} {self.host}:{p} check" for i, p in enumerate(ports)),
            "",
            "Read the shared ledger:",
            f"  LLMGATE_DB={self.db_url} LLMGATE_QUOTA={self.quota_url} ./run.sh llmgate tail",
            "",
            "Ctrl-C stops the fleet.",
        ]
        print("\n".join(lines), flush=True)

    def serve(self) -> int:
        """Until a signal, or until one llmgate process exits (then stop the rest)."""
        while True:
            for proc in self.proxies:
                if proc.poll() is not None:
                    say(f"an llmgate process exited ({proc.returncode}): stopping the fleet")
                    return 1
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.proxies:  # SIGTERM: each drains its calls into the ledger
            if proc.poll() is None:
                proc.terminate()
        for proc in self.proxies:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(30)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(10)
        if self.postgres is not None:
            self.postgres.stop()
        say("stopped")


def main() -> int:
    fleet = Fleet(sys.argv[1:])

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    code = 0
    try:
        fleet.start()
        code = fleet.serve()
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        code = 1
    finally:
        # Once stopping, a second Ctrl-C does not leave half the fleet running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fleet.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
