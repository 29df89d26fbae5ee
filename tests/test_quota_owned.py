"""The quota file's owner decides from memory (addon/quota/owned.py) exactly as SQLite
would, writes it all behind, and hands the file over to any other process that opens
it (addon/quota/lease.py), in this process or another, alive or killed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from addon.config import QuotaWindow
from addon.quota import owned as owned_module
from addon.quota import worker as worker_module
from addon.quota.backend import DuplicateReservation, QuotaUnavailable
from addon.quota.lease import QuotaLease
from addon.quota.owned import LOOKAHEAD_S, OwnedQuota
from addon.quota.store import QuotaStore
from addon.quota.windows import AppliedWindow, Demand, Exceeded
from addon.quota.worker import QuotaWorker
from tests.redis_server import SqliteBackend
from tests.test_quota import random_operations_match_the_rows


class OwnedStore(OwnedQuota):
    """An owned store as the worker holds one: the lease taken, its own connection."""

    def __init__(self, path: Path) -> None:
        self.lease = QuotaLease(path)
        assert self.lease.try_own()
        super().__init__(QuotaStore(path, guest=False))

    def __enter__(self) -> OwnedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        super().close()
        self.store.close()
        self.lease.close()


class OwnedBackend(SqliteBackend):
    """One owner decides (the two writers of the random test are the same one); the
    file is read only after it has written everything behind."""

    name = "owned"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.owner: OwnedStore | None = None

    def open(self, **options: Any) -> OwnedStore:  # type: ignore[override]
        if self.owner is None:
            self.owner = OwnedStore(self.path)
        return self.owner

    def all_rows(self) -> list[tuple[str, str, float, int, int, int, int, int]]:
        if self.owner is not None and self.owner.store is not None:
            self.owner.flush()
        return super().all_rows()


@pytest.mark.parametrize("lookahead", [0.5, 2.0, 1e9])
def test_memory_decides_as_the_rows_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lookahead: float
) -> None:
    """Random reserves, settles, releases and prunes, with clocks that run back: every
    reserve's answer and every window's state match the rows, however far ahead the
    windows hold their leaving rows."""
    monkeypatch.setattr(owned_module, "LOOKAHEAD_S", lookahead)
    backend = OwnedBackend(tmp_path / "quota.db")
    random_operations_match_the_rows(backend)  # type: ignore[arg-type]


def applied(seconds: int, key: str = "user:alice", **limits: float) -> AppliedWindow:
    return AppliedWindow(QuotaWindow(window_seconds=seconds, **limits), key)


def test_every_answer_is_the_one_sqlite_gives(tmp_path: Path) -> None:
    """Against the SQLite store as the oracle, on the same file: before each reserve
    the owner writes behind, and the oracle answers the same reserve in a transaction
    it rolls back. Admissions, refusals (limit, wait), every window's sums and reset
    time must be equal, with clocks that run back and reservations left open."""
    rng = random.Random(11)
    path = tmp_path / "q.db"
    keys = ("user:alice", "user:bob", "global")
    with OwnedStore(path) as owner, QuotaStore(path, guest=False) as oracle:
        live: list[str] = []
        now = 1000.0
        for step in range(1500):
            now += rng.choice((rng.uniform(-2, 6), rng.uniform(0, 0.2), rng.uniform(-5, -3), 30.0))
            op = rng.random()
            if op < 0.6 or not live:
                windows = [
                    applied(rng.choice((5, 60, 300)), k, max_requests=12, max_input_tokens=5000)
                    for k in rng.sample(keys, rng.randint(1, 2))
                ]
                demand = Demand(1, rng.randint(0, 900), 0, rng.randint(0, 9) / 1000)
                owner.flush()
                oracle._conn.execute("BEGIN IMMEDIATE")
                try:
                    expected = oracle._reserve(f"r{step}", windows, demand, now)
                finally:
                    oracle._conn.execute("ROLLBACK")
                answer = owner.reserve(f"r{step}", windows, demand, now=now)
                assert answer == expected, step
                if isinstance(answer, list):
                    live.append(f"r{step}")
            elif op < 0.85:
                owner.settle(live.pop(rng.randrange(len(live))), Demand(1, rng.randint(0, 900)))
            else:
                owner.release(live.pop(rng.randrange(len(live))))
            if step % 25 == 0:
                probe = [applied(n, k) for k in keys for n in (5, 60, 300)]
                mine = owner.states(probe, now=now)
                owner.flush()
                assert mine == oracle.states(probe, now=now), step


def test_a_row_leaves_its_window_at_exactly_its_ts_plus_the_window(tmp_path: Path) -> None:
    """A row counts while ts > now - window, as in SQLite: at now = ts + window it has
    left, whether memory held it ahead or read it from the file."""
    with OwnedStore(tmp_path / "q.db") as owner:
        minute = [applied(60, max_requests=2)]
        assert isinstance(owner.reserve("r10", minute, Demand(), now=10.0), list)
        assert isinstance(owner.reserve("r11", minute, Demand(), now=11.0), list)
        refused = owner.reserve("full", minute, Demand(), now=69.0)
        assert isinstance(refused, Exceeded) and refused.retry_after == 1.0
        [state] = owner.states(minute, now=70.0)
        assert state.reserved.requests == 1 and state.reset_at == 71.0
        assert isinstance(owner.reserve("r70", minute, Demand(), now=70.0), list)


def test_releasing_the_oldest_row_moves_the_reset_to_the_next(tmp_path: Path) -> None:
    with OwnedStore(tmp_path / "q.db") as owner:
        minute = [applied(60, max_requests=5)]
        for t in (0.0, 5.0):
            assert isinstance(owner.reserve(f"r{t:g}", minute, Demand(), now=t), list)
        assert owner.states(minute, now=6.0)[0].reset_at == 60.0
        owner.release("r0")
        [state] = owner.states(minute, now=6.0)
        assert (state.reserved.requests, state.reset_at) == (1, 65.0)
        owner.release("r5")
        assert owner.states(minute, now=6.0)[0].reset_at is None


def test_a_day_window_holds_no_day_of_rows_in_memory(tmp_path: Path) -> None:
    """~20,000 calls over 2,000 s in a minute and a day window: memory holds the rows
    of the next few seconds to leave, not every row of the window. (The windows are
    read again after each prune, every PRUNE_EVERY reserves: the last was 990 ago.)"""
    windows = [applied(60, max_requests=10**6), applied(86400, max_input_tokens=10**12)]
    with OwnedStore(tmp_path / "q.db") as owner:
        for i in range(19_990):
            now = 1000.0 + i / 10
            assert isinstance(owner.reserve(f"r{i}", windows, Demand(1, 5), now=now), list)
            owner.settle(f"r{i}", Demand(1, 4))
        held = {seconds: len(w.ahead) for (_, seconds), w in owner._windows.items()}
        assert held[86400] == 0 and held[60] <= 10 * LOOKAHEAD_S + 1
        assert not owner._open
        minute, day = owner.states(windows, now=now)
        assert (minute.used.requests, day.used.input_tokens) == (600, 4 * 19_990)


def test_a_reservation_id_used_twice_is_refused_from_memory(tmp_path: Path) -> None:
    with OwnedStore(tmp_path / "q.db") as owner:
        assert isinstance(owner.reserve("a", [applied(60)], Demand()), list)
        with pytest.raises(DuplicateReservation):
            owner.reserve("a", [applied(60)], Demand())


def test_once_the_file_refuses_a_write_reserves_fail_closed_until_it_takes_one(
    tmp_path: Path,
) -> None:
    """A write behind that fails keeps its decisions for the next try, and until one
    succeeds every reserve is refused (QuotaUnavailable: a 503 quota_unavailable)."""
    minute = [applied(60, max_requests=100)]
    with OwnedStore(tmp_path / "q.db") as owner:
        assert isinstance(owner.reserve("a", minute, Demand(), now=1.0), list)
        working = owner.store
        owner.store = QuotaStore(tmp_path / "q.db", guest=False)
        owner.store.close()  # every statement now raises
        with pytest.raises(sqlite3.ProgrammingError):
            owner.flush()
        assert owner.unwritten == 1
        for _ in range(2):
            with pytest.raises(QuotaUnavailable, match="takes no writes"):
                owner.reserve("b", minute, Demand(), now=2.0)
        owner.store = working
        assert isinstance(owner.reserve("b", minute, Demand(), now=2.0), list)
        assert owner.unwritten == 1  # "a" was written before "b" was decided
    with QuotaStore(tmp_path / "q.db") as store:
        assert store.states(minute, now=2.0)[0].reserved.requests == 2


# -- the lease: handing the file over -------------------------------------------------


def reserve_all(worker: QuotaWorker, prefix: str, n: int, windows: list[AppliedWindow]) -> int:
    """How many of n reserves the worker admits, on an event loop as the gateway runs it."""

    async def run() -> int:
        answers = [await worker.send_reserve(f"{prefix}{i}", windows, Demand()) for i in range(n)]
        return sum(isinstance(a, list) for a in answers)

    return asyncio.run(run())


def test_a_guest_waits_for_the_owner_then_reads_everything_it_decided(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    minute = [applied(60, max_requests=100)]
    worker = QuotaWorker(path)
    try:
        assert worker._owned is not None
        assert reserve_all(worker, "owner", 30, minute) == 30  # from memory, written behind
        with QuotaStore(path) as guest:  # waits for the watcher thread's hand-over
            assert worker._owned is None
            assert guest.states(minute)[0].reserved.requests == 30
            # From now on both decide through SQLite: the limit holds across them.
            admitted = sum(
                isinstance(guest.reserve(f"guest{i}", minute, Demand()), list) for i in range(30)
            )
            assert admitted + reserve_all(worker, "shared", 60, minute) == 70
        assert worker._owned is None  # it stays a guest: no process owns the file again
    finally:
        worker.close()
    with QuotaStore(path) as store:
        assert store.states(minute)[0].reserved.requests == 100


def test_an_owner_that_will_not_hand_over_fails_its_guests_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stuck owner (here: its lock held, so its watcher cannot write out) keeps its
    file: a guest gives up after its busy timeout with a "locked" error, which the
    gateway answers with 503 quota_unavailable; a second worker refuses to start."""
    path = tmp_path / "q.db"
    worker = QuotaWorker(path)
    try:
        with worker._owned_lock:
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="locked.*did not hand it over"):
                QuotaStore(path, busy_timeout_ms=300)
            assert time.monotonic() - started >= 0.3
            monkeypatch.setattr(worker_module, "GUEST_PATIENCE_S", 0.2)
            with pytest.raises(QuotaUnavailable, match="did not hand it over"):
                QuotaWorker(path)
        assert worker._owned is not None  # nobody is waiting any more: it still owns it
    finally:
        worker.close()


def _owner_process(path: Path, ready: Any, go: Any, results: Any, limit: int) -> None:
    """A gateway's quota worker in another process: reserves until told to race."""
    worker = QuotaWorker(path)
    windows = [applied(60, max_requests=limit)]

    async def run() -> None:
        owned = worker._owned is not None
        first = [await worker.send_reserve(f"a{i}", windows, Demand()) for i in range(50)]
        await asyncio.sleep(0.1)  # written behind
        ready.set()
        while not go.is_set():  # the other process's worker opens the file meanwhile
            await asyncio.sleep(0.005)
        rest = [await worker.send_reserve(f"b{i}", windows, Demand()) for i in range(200)]
        answers = first + rest
        results.put((owned, worker._owned is None, sum(isinstance(a, list) for a in answers)))

    try:
        asyncio.run(run())
    finally:
        worker.close()


def test_two_gateway_processes_admit_exactly_the_limit_across_the_hand_over(
    tmp_path: Path,
) -> None:
    """One process owns the file and decides 50 calls from memory; a second process's
    worker opens it; the owner hands over, and both race: exactly the limit is
    admitted in total, and the file has every admitted row."""
    path, limit = tmp_path / "q.db", 180
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    owner = ctx.Process(target=_owner_process, args=(path, ready, go, results, limit))
    owner.start()
    try:
        assert ready.wait(60)
        windows = [applied(60, max_requests=limit)]
        worker = QuotaWorker(path)  # a guest: the owner process hands over to it
        try:
            assert worker._owned is None
            go.set()
            here = reserve_all(worker, "c", 200, windows)
        finally:
            worker.close()
        owned, handed_over, there = results.get(timeout=60)
        owner.join(timeout=60)
        assert owner.exitcode == 0
    finally:
        owner.kill()
    assert (owned, handed_over) == (True, True)
    assert there >= 50 and here + there == limit
    with QuotaStore(path) as store:
        assert store.states(windows)[0].reserved.requests == limit


def _killed_owner(path: Path, ready: Any) -> None:
    worker = QuotaWorker(path)

    async def run() -> None:
        for i in range(20):
            await worker.send_reserve(f"k{i}", [applied(60, max_requests=100)], Demand())
        await asyncio.sleep(0.2)  # written behind
        ready.set()
        await asyncio.sleep(60)

    asyncio.run(run())


def test_a_killed_owner_leaves_the_file_to_the_next_process_with_its_rows(
    tmp_path: Path,
) -> None:
    """kill -9 drops the owner's flock: the next worker owns the file at once, and
    finds the rows the dead one had written behind."""
    path = tmp_path / "q.db"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    dead = ctx.Process(target=_killed_owner, args=(path, ready))
    dead.start()
    try:
        assert ready.wait(60)
        os.kill(dead.pid, signal.SIGKILL)  # type: ignore[arg-type]
        dead.join(timeout=60)
    finally:
        dead.kill()
    worker = QuotaWorker(path)
    try:
        assert worker._owned is not None
        minute = [applied(60, max_requests=100)]
        assert worker._owned.states(minute)[0].reserved.requests == 20
    finally:
        worker.close()


def test_settles_and_releases_of_reservations_made_before_it_owned_the_file(
    tmp_path: Path,
) -> None:
    """Reservations an earlier process left open are settled or released through the
    file, and the windows then count them as the file does."""
    path = tmp_path / "q.db"
    minute = [applied(60, max_requests=10)]
    with QuotaStore(path) as earlier:
        for rid in ("a", "b", "c"):
            assert isinstance(earlier.reserve(rid, minute, Demand(1, 100), now=1.0), list)
    with OwnedStore(path) as owner:
        assert owner.states(minute, now=2.0)[0].reserved == Demand(3, 300)
        owner.settle_many([("a", Demand(1, 40)), ("b", Demand(1, 50))])
        owner.release("c")
        [state] = owner.states(minute, now=2.0)
        assert (state.used, state.reserved) == (Demand(2, 90), Demand(0))
        owner.settle("a", Demand(1, 7))  # settled twice: the file has the last word
        assert owner.states(minute, now=2.0)[0].used == Demand(2, 57)
    with QuotaStore(path) as after:
        [state] = after.states(minute, now=2.0)
        assert (state.used, state.reserved) == (Demand(2, 57), Demand(0))


def test_the_owner_prunes_the_file_past_the_longest_window_it_reserved_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owned_module, "PRUNE_EVERY", 3)
    path = tmp_path / "q.db"
    day, minute = [applied(500)], [applied(60)]
    with OwnedStore(path) as owner:
        assert isinstance(owner.reserve("long", day, Demand(), now=0.0), list)
        assert isinstance(owner.reserve("m1", minute, Demand(), now=150.0), list)
        owner.flush()
        assert {r[0] for r in SqliteBackend(path).all_rows()} == {"long", "m1"}
        assert isinstance(owner.reserve("m2", minute, Demand(), now=600.0), list)
        # The third reserve prunes alice's rows older than 600 - 500, after writing.
        assert {r[0] for r in SqliteBackend(path).all_rows()} == {"m1", "m2"}
        assert owner.states(minute + day, now=600.0)[1].reserved.requests == 2
        assert owner.prune(160.0, ["user:bob"]) == 0  # another key: alice's rows stay
        assert owner.prune(160.0, ["user:alice"]) == 1
        assert owner.states(day, now=600.0)[0].reserved.requests == 1
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM quota_meta").fetchall() == [(500.0,)]


def test_rows_exactly_on_a_windows_edges(tmp_path: Path) -> None:
    """Integer clocks that run back put a row exactly on a window's cutoff (it does not
    count) or exactly on the end of the rows held ahead (it leaves in its turn)."""
    both = [applied(10, max_requests=9), applied(20, max_requests=9)]
    with OwnedStore(tmp_path / "q.db") as owner:
        assert isinstance(owner.reserve("r100", both, Demand(), now=100.0), list)
        # Only the 20 s window, at 90: exactly the 10 s window's cutoff (100 - 10).
        assert isinstance(owner.reserve("r90", both[1:], Demand(), now=90.0), list)
        ten, twenty = owner.states(both, now=100.0)
        assert (ten.reserved.requests, twenty.reserved.requests) == (1, 2)
    with OwnedStore(tmp_path / "edge.db") as owner:
        eight, other = [applied(8, max_requests=9)], [applied(30)]
        for t in (100.0, 101.0):
            assert isinstance(owner.reserve(f"r{t:g}", eight, Demand(), now=t), list)
        owner.states(eight, now=109.0)  # holds the rows up to 101 + min(8 / 4, 2) = 103
        # Rows at exactly 103, then at 102 (the clock ran back; another window of the
        # key): both are held ahead, in the order they leave.
        for t in (103.0, 102.0):
            assert isinstance(owner.reserve(f"late{t:g}", other, Demand(), now=t), list)
        counts = [owner.states(eight, now=t)[0].reserved.requests for t in (109.5, 110, 111)]
        assert counts == [2, 1, 0]
