"""Fleet mode: several llmgate processes (real mitmdumps) share quotas on one Redis and
the ledger on one PostgreSQL cluster (both real servers; these tests never skip).

- exactness: three processes, 300 concurrent calls over them in three wire formats,
  a window of 100 requests: exactly 100 admitted, 200 answered 429 in the caller's
  format; the ledger holds 300 rows (100 completed, 200 denied) and Redis's totals
  equal the ledger's usage;
- crash: kill -9 one of three with streams in flight; the other two keep serving;
  the dead process's reservations fill the window until their TTL, then free it;
  a new process closes the dead one's pending rows as interrupted/process_ended;
- Redis restarted: every process refuses (503 quota_unavailable) while it is down
  and serves again once it is back, none restarted;
- `./run.sh fleet` starts Redis, PostgreSQL and two llmgate processes, each serves a
  call into the shared ledger, and Ctrl-C leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from addon.config import QuotaWindow
from addon.ledger.recovery import INTERRUPTED_REASON
from addon.quota.redis_store import DEFAULT_TTL, RedisQuotaStore
from addon.quota.windows import AppliedWindow, WindowState
from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import HEADER_CHUNKS, HEADER_PAUSE_MS, Emulator
from tests.hostile import REQUEST_ID, assert_error_format
from tests.postgres_server import ledger_rows, shared_server
from tests.proxy import ROOT, Proxy
from tests.redis_server import RedisServer, running_server
from tests.test_e2e_ledger_faults import start_streams, wait_for

HELLO = [{"role": "user", "content": "hi"}]
USER = "fleet"
SCOPE = f"user:{USER}"
WINDOW = 3600
# (wire, url, body) per caller format: the 429s come back in each one's own format.
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("openai", "https://api.openai.com/v1/chat/completions",
     {"model": "gpt-4o-mini", "messages": HELLO}),
    ("anthropic", "https://api.anthropic.com/v1/messages",
     {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": HELLO}),
    ("gemini",
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
]  # fmt: skip
HEADERS = {
    "openai": {"authorization": f"Bearer {CALLER_KEY}"},
    "anthropic": {"x-api-key": CALLER_KEY, "anthropic-version": "2023-06-01"},
    "gemini": {"x-goog-api-key": CALLER_KEY},
}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Each test its own Redis (one stops and restarts it)."""
    with running_server() as server:
        yield server


def fleet_policies(directory: Path, emulator: Emulator, max_requests: int, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "routes.yaml").write_text(emulator_policy(emulator.url))
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    own = f"""\
        identity: {{default_user: {USER}}}
        policies:
          - name: everyone
            quota_windows: [{{window_seconds: {WINDOW}, scope: user, max_requests: {max_requests}}}]
        audit: {{drain_seconds: 1}}
        """
    (directory / "fleet.yaml").write_text(textwrap.dedent(own) + textwrap.dedent(extra))
    return directory


class Fleet:
    """Proxies on one Redis and one PostgreSQL database, one CA, one machine's state."""

    def __init__(
        self, tmp_path: Path, confdir: Path, emulator: Emulator, policies: Path, redis_url: str
    ) -> None:
        self.tmp_path, self.confdir, self.emulator = tmp_path, confdir, emulator
        self.policies, self.redis_url = policies, redis_url
        self.db_url = shared_server().new_database()
        self.proxies: list[Proxy] = []
        self._names = iter(range(100))

    def new(self) -> Proxy:
        env = {
            **UPSTREAM_KEYS,
            "LLMGATE_DB": self.db_url,
            "LLMGATE_QUOTA": self.redis_url,
            "XDG_STATE_HOME": str(self.tmp_path / "state"),
        }
        proxy = Proxy(
            self.policies, self.tmp_path / f"gate{next(self._names)}.db", self.confdir,
            upstream_ca=self.emulator.ca_path, env=env,
        )  # fmt: skip
        self.proxies.append(proxy)
        return proxy

    def start(self, count: int) -> list[Proxy]:
        """The first alone (it migrates the ledger), the others together."""
        gates = [self.new() for _ in range(count)]
        gates[0].start()
        errors: list[BaseException] = []

        def start(proxy: Proxy) -> None:
            try:
                proxy.start()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(g,)) for g in gates[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return gates

    def stop(self) -> None:
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()

    def rows(self, sql: str, *params: object) -> list[tuple]:
        return ledger_rows(self.db_url, sql, *params)

    def pending(self) -> set[str]:
        return {r[0] for r in self.rows("select id from requests where status = 'pending'")}

    def window(self, max_requests: int, ttl: float = DEFAULT_TTL) -> WindowState:
        """The fleet user's window, read from Redis. An unsettled reservation stops
        counting after the reader's TTL: pass the fleet's (quota.reservation_ttl_s)."""
        limit = QuotaWindow(window_seconds=WINDOW, max_requests=max_requests)
        with RedisQuotaStore(self.redis_url, reservation_ttl=ttl) as store:
            return store.states([AppliedWindow(limit, SCOPE)])[0]


@pytest.fixture
def make_fleet(
    tmp_path: Path, confdir: Path, emulator: Emulator, redis_server: RedisServer
) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def make(policies: Path) -> Fleet:
        fleets.append(Fleet(tmp_path, confdir, emulator, policies, redis_server.url))
        return fleets[-1]

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.stop()


async def calls(proxy: Proxy, wires: list[int]) -> list[tuple[str, httpx2.Response]]:
    """One concurrent call per entry (an index into CALLS) through `proxy`."""
    limits = httpx2.Limits(max_connections=len(wires))
    async with proxy.async_http_client(timeout=60, limits=limits) as client:

        async def one(i: int) -> tuple[str, httpx2.Response]:
            wire, url, body = CALLS[i]
            return wire, await client.post(url, json=body, headers=HEADERS[wire])

        return await asyncio.gather(*(one(i) for i in wires))


def call_all(spread: list[tuple[Proxy, list[int]]]) -> list[tuple[str, httpx2.Response]]:
    async def run() -> list[tuple[str, httpx2.Response]]:
        parts = await asyncio.gather(*(calls(p, w) for p, w in spread))
        return [answer for part in parts for answer in part]

    return asyncio.run(run())


def test_three_processes_admit_exactly_the_window_and_redis_equals_the_ledger(
    tmp_path: Path, emulator: Emulator, make_fleet: Any
) -> None:
    fleet = make_fleet(fleet_policies(tmp_path / "policies", emulator, max_requests=100))
    gates = fleet.start(3)
    # 300 calls at once, 100 through each process, a third in each wire format.
    started = time.monotonic()
    answers = call_all([(g, [(i + n) % 3 for i in range(100)]) for n, g in enumerate(gates)])
    elapsed = time.monotonic() - started
    admitted = [r for _, r in answers if r.status_code == 200]
    refused = [(w, r) for w, r in answers if r.status_code != 200]
    assert (len(admitted), len(refused)) == (100, 200), (
        sorted({r.status_code for _, r in answers}),
        elapsed,
    )
    for wire, response in refused:
        assert_error_format(wire, response, 429, "quota_exceeded")
    assert len(emulator.hits) == 100
    # Which process admits which call is the scheduler's business (on two cores one may
    # take all 100 before the others run); every process answered every call it got.
    assert all("x-llmgate-request-id" in r.headers for _, r in answers)

    # The ledger: exactly one row per call, written by three processes.
    ids = {r.headers[REQUEST_ID] for _, r in answers}
    wait_for(
        lambda: fleet.rows("select count(*) from requests where status != 'pending'") == [(300,)],
        what="300 closed rows",
    )
    rows = fleet.rows("select id, status, reason, http_status, instance_id from requests")
    assert {r[0] for r in rows} == ids
    outcomes: dict[tuple, int] = {}
    for _, status, reason, http_status, _ in rows:
        outcomes[status, reason, http_status] = outcomes.get((status, reason, http_status), 0) + 1
    assert outcomes == {("completed", None, 200): 100, ("denied", "quota_exceeded", 429): 200}
    assert len({r[4] for r in rows}) == 3  # three instances wrote them

    # Redis's totals for the window equal the ledger's usage, once every settle landed.
    state = wait_for(
        lambda: (s := fleet.window(100)).reserved.requests == 0 and s, what="every settle"
    )
    ((inputs, outputs, cost),) = fleet.rows(
        "select sum(input_tokens), sum(output_tokens), sum(cost_usd) from requests"
        " where status = 'completed'"
    )
    assert inputs > 0 and outputs > 0
    assert state.used.requests == 100
    assert (state.used.input_tokens, state.used.output_tokens) == (inputs, outputs)
    assert state.used.cost_usd == pytest.approx(cost, abs=1e-9)


def stream(proxy: Proxy, pause_ms: int, chunks: int) -> tuple[int, str]:
    """A streamed call read to its end: (status, request id)."""
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    headers = {**HEADERS["openai"], HEADER_PAUSE_MS: str(pause_ms), HEADER_CHUNKS: str(chunks)}
    with (
        proxy.http_client(timeout=60) as client,
        client.stream("POST", CALLS[0][1], json=body, headers=headers) as response,
    ):
        for _ in response.iter_bytes():
            pass
        return response.status_code, response.headers[REQUEST_ID]


TTL = 8.0  # quota.reservation_ttl_s: short, so that the crash test is quick
VICTIM_STREAMS = 6
SURVIVOR_STREAMS = 2
SURVIVOR_CALLS = 10  # per survivor
# The dead process's streams and everything the survivors send fill it exactly.
CRASH_LIMIT = VICTIM_STREAMS + SURVIVOR_STREAMS + 2 * SURVIVOR_CALLS


def test_kill_9_of_one_process_the_others_serve_its_reservations_expire_and_a_restart_closes_its_rows(  # noqa: E501
    tmp_path: Path, emulator: Emulator, make_fleet: Any
) -> None:
    policies = fleet_policies(
        tmp_path / "policies", emulator, CRASH_LIMIT, f"quota: {{reservation_ttl_s: {TTL}}}\n"
    )
    fleet = make_fleet(policies)
    survivor_a, survivor_b, victim = fleet.start(3)
    # Streams in flight on the victim: the emulator pauses 1 s between 20 events.
    start_streams(victim, VICTIM_STREAMS, pause_ms=1000)
    dead = wait_for(
        lambda: len(p := fleet.pending()) == VICTIM_STREAMS and p, what="the victim's streams"
    )
    reserved_by = time.monotonic()  # every victim reservation was made before this
    victim.kill()
    assert fleet.window(CRASH_LIMIT, TTL).reserved.requests == VICTIM_STREAMS

    # The two others keep serving: streams of their own and plain calls, all succeed.
    results: list[tuple[int, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(stream(survivor_a, 100, 10)))
        for _ in range(SURVIVOR_STREAMS)
    ]
    for thread in threads:
        thread.start()
    answers = call_all([(g, [0] * SURVIVOR_CALLS) for g in (survivor_a, survivor_b)])
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in results] == [200] * SURVIVOR_STREAMS
    assert [r.status_code for _, r in answers] == [200] * (2 * SURVIVOR_CALLS)
    served = {r.headers[REQUEST_ID] for _, r in answers} | {i for _, i in results}
    wait_for(lambda: not (fleet.pending() & served), what="the survivors' rows closed")
    assert {r[0] for r in fleet.rows("select status from requests where id in ("
                                     + ",".join("?" * len(served)) + ")", *served)} == {
        "completed"
    }  # fmt: skip

    # Within the TTL the dead process's reservations still count: the window is full.
    full = call_all([(survivor_b, [0])])[0][1]
    seen_full = time.monotonic() - reserved_by
    assert seen_full < TTL, f"too slow to see the window full: {seen_full:.1f} s"
    assert_error_format("openai", full, 429, "quota_exceeded")
    # Then they expire, and the window frees them with no process restarted.
    freed = wait_for(
        lambda: fleet.window(CRASH_LIMIT, TTL).reserved.requests == 0,
        timeout=TTL + 5,
        what="expiry",
    )
    freed_after = time.monotonic() - reserved_by
    assert freed and freed_after < TTL + 3, freed_after
    print(
        f"window seen full {seen_full:.1f} s after the reservations, freed by {freed_after:.1f} s"
    )
    again = call_all([(survivor_a, [0])])[0][1]
    assert again.status_code == 200, again.text
    assert fleet.window(CRASH_LIMIT, TTL).used.requests <= CRASH_LIMIT

    # A new process on the same ledger closes the dead one's pending rows.
    wait_for(lambda: fleet.pending() == dead, what="only the dead process's rows pending")
    restarted = fleet.new().start()
    closed = fleet.rows(
        f"select status, reason from requests where id in ({','.join('?' * len(dead))})", *dead
    )
    assert set(closed) == {("interrupted", INTERRUPTED_REASON)} and len(closed) == len(dead)
    assert fleet.pending() == set()
    assert "closed the pending calls of 1 ended process" in restarted.log()


def test_redis_restarted_every_process_fails_closed_then_serves_again(
    tmp_path: Path, emulator: Emulator, make_fleet: Any, redis_server: RedisServer
) -> None:
    fleet = make_fleet(fleet_policies(tmp_path / "policies", emulator, max_requests=1000))
    gates = fleet.start(3)
    spread = [(g, [n]) for n, g in enumerate(gates)]  # one format per process
    assert [r.status_code for _, r in call_all(spread)] == [200] * 3
    redis_server.stop()
    for wire, response in call_all(spread):
        assert_error_format(wire, response, 503, "quota_unavailable")
    assert len(emulator.hits) == 3  # nothing went upstream during the gap
    redis_server.start()  # empty (no persistence)
    # Each process serves again once its client has reconnected, which under a loaded
    # machine may take a call or two; until then it still fails closed.
    waiting, deadline = list(spread), time.monotonic() + 15
    while waiting and time.monotonic() < deadline:
        answers = call_all(waiting)
        for wire, response in answers:
            if response.status_code != 200:
                assert_error_format(wire, response, 503, "quota_unavailable")
        waiting = [s for s, (_, r) in zip(waiting, answers, strict=True) if r.status_code != 200]
        time.sleep(0.2 if waiting else 0)
    assert not waiting, f"{len(waiting)} process(es) never served again after Redis came back"
    assert len(emulator.hits) == 6  # each served exactly once after the restart
    for gate in gates:
        assert "quota store unavailable" in gate.log()
    state = wait_for(lambda: (s := fleet.window(1000)).reserved.requests == 0 and s, what="settles")
    assert state.used.requests == 3  # the calls after the restart


# --- ./run.sh fleet ------------------------------------------------------------------------


def consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


def processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_run_sh_fleet_starts_the_servers_and_processes_serves_and_stops_everything(
    tmp_path: Path, confdir: Path, policies_dir: Path, emulator: Emulator
) -> None:
    port = consecutive_free_ports(2)
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("LLMGATE_DB", "LLMGATE_QUOTA")},
        **UPSTREAM_KEYS,
        "LLMGATE_FLEET": "2",
        "LLMGATE_PORT": str(port),
        "LLMGATE_POLICIES": str(policies_dir),
        "LLMGATE_CONFDIR": str(confdir),
        "XDG_STATE_HOME": str(state),
        "LLMGATE_SECRETS": "",
    }
    out = tmp_path / "fleet.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            ["./run.sh", "fleet", "--set", f"ssl_verify_upstream_trusted_ca={emulator.ca_path}"],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    cluster: Path | None = None
    try:
        wait_for(
            lambda: proc.poll() is not None or "Ctrl-C stops the fleet" in out.read_text(),
            timeout=90,
            what="./run.sh fleet",
        )
        banner = out.read_text()
        assert proc.poll() is None, banner
        found = re.search(r"PostgreSQL cluster : (\S+)", banner)
        cluster = Path(found.group(1)).parent if found else None
        db_url = re.search(r"LLMGATE_DB=(\S+)", banner)
        redis_url = re.search(r"LLMGATE_QUOTA=(\S+)", banner)
        assert db_url and redis_url and cluster, banner
        for n in range(2):
            assert f"llmgate {n}: export HTTPS_PROXY=http://127.0.0.1:{port + n}" in banner
        assert f"export SSL_CERT_FILE={confdir / 'mitmproxy-ca-cert.pem'}" in banner
        assert "mode tcp" in banner
        # One call through each process, into the one ledger and the one Redis.
        ids = []
        for n in range(2):
            with httpx2.Client(
                proxy=f"http://127.0.0.1:{port + n}",
                verify=str(confdir / "mitmproxy-ca-cert.pem"),
                timeout=30,
            ) as client:
                answer = client.post(CALLS[0][1], json=CALLS[0][2], headers=HEADERS["openai"])
            assert answer.status_code == 200, answer.text
            ids.append(answer.headers[REQUEST_ID])
        wait_for(
            lambda: len(ledger_rows(db_url.group(1), "select id from requests"
                                    " where status = 'completed'")) == 2,
            what="two rows in the fleet's ledger",
        )  # fmt: skip
        rows = ledger_rows(db_url.group(1), "select id, instance_id from requests")
        assert {r[0] for r in rows} == set(ids) and len({r[1] for r in rows}) == 2
        ports = {port, port + 1, *(int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)/", banner))}
        assert len(ports) == 4  # two proxies, Redis, PostgreSQL

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0, out.read_text()
        assert "fleet: stopped" in out.read_text()
        for p in ports:
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still open"
        leftovers = processes_mentioning(str(state), str(cluster))
        assert leftovers == [], leftovers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if cluster is not None:
            for line in processes_mentioning(str(cluster)):  # a postmaster left by a failure
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
            shutil.rmtree(cluster, ignore_errors=True)
