"""Quota stores, SQLite and Redis alike: exact admissions under contention, settle and
release, retry-after, persistence; Redis also: reservation TTL and a restart mid-run.

Every test taking `backend` runs once per store (tests/redis_server.py starts a real
redis-server; without one the Redis half fails, it never skips)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from addon.config import QuotaWindow
from addon.quota import store as quota
from addon.quota.backend import DuplicateReservation, QuotaUnavailable
from addon.quota.redis_store import RedisQuotaStore
from addon.quota.store import QuotaStore
from addon.quota.windows import AppliedWindow, Demand, Exceeded, WindowState
from addon.sqlite_wal import WAL_RESTART_FRAMES
from tests.proxy import free_port
from tests.redis_server import (  # noqa: F401 - fixtures
    QuotaBackend,
    RedisBackend,
    RedisServer,
    SqliteBackend,
    backend,
    redis_server,
)
from tests.strict import Workers


def applied(seconds: int, key: str = "user:alice", **limits: float) -> AppliedWindow:
    return AppliedWindow(QuotaWindow(window_seconds=seconds, **limits), key)


@pytest.fixture
def store(backend: QuotaBackend):  # noqa: F811
    with backend.open() as s:
        yield s


def admitted(result: list[WindowState] | Exceeded) -> bool:
    return isinstance(result, list)


# -- exact admissions under contention ------------------------------------------------


def test_200_threads_with_their_own_store_admit_exactly_the_limit(
    backend: QuotaBackend,  # noqa: F811
) -> None:
    windows = [applied(3600, "global", max_requests=50)]
    # A timeout, so that one thread failing before the barrier cannot hang the other 199.
    start = threading.Barrier(200, timeout=60)
    results: list[bool] = []

    def one() -> None:
        # Any exception ("database is locked" above all) fails the test: it must never
        # reach a caller.
        with backend.open() as s:  # 200 connections (SQLite: also racing to create the schema)
            start.wait()
            results.append(admitted(s.reserve(uuid.uuid4().hex, windows, Demand())))

    with Workers() as workers:
        for _ in range(200):
            workers.start(one)
    assert len(results) == 200 and results.count(True) == 50
    assert len(backend.rows()) == 50


def test_stores_opening_a_new_file_together_all_succeed(tmp_path: Path) -> None:
    for round_ in range(50):  # switching a new file to WAL is the contended step
        path, start = tmp_path / f"fresh{round_}.db", threading.Barrier(12, timeout=60)

        def open_one(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            QuotaStore(path).close()

        with Workers() as workers:
            for _ in range(12):
                workers.start(open_one)
        assert path.exists()


def open_target(target: str) -> QuotaStore | RedisQuotaStore:
    return RedisQuotaStore(target) if target.startswith("redis://") else QuotaStore(target)


def _process_worker(target: str, start, results, threads: int, per_thread: int) -> None:
    windows = [applied(3600, "global", max_requests=50)]
    counts: list[int] = []

    def run() -> None:
        with open_target(target) as s:
            for _ in range(per_thread):
                counts.append(admitted(s.reserve(uuid.uuid4().hex, windows, Demand())))

    start.wait()
    try:
        with Workers() as workers:
            for _ in range(threads):
                workers.start(run)
    except BaseException as exc:  # the parent compares reports, so the error must reach it
        results.put(repr(exc))
        return
    results.put((len(counts), sum(counts)))


def test_two_processes_admit_exactly_the_limit_in_total(
    backend: QuotaBackend,  # noqa: F811
) -> None:
    backend.open().close()  # SQLite's schema in place: both start racing on reserves at once
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(backend.target, start, results, 10, 10))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    reports = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert reports == [(100, reports[0][1]), (100, reports[1][1])]  # no errors, all answered
    assert reports[0][1] + reports[1][1] == 50
    assert len(backend.rows()) == 50


def test_token_budget_never_exceeded_with_reserves_settles_and_releases(
    backend: QuotaBackend,  # noqa: F811
) -> None:
    limit = 20_000
    windows = [applied(60, "user:alice", max_input_tokens=limit), applied(3600, "group:dev")]
    violations: list[float] = []
    outcomes: list[str] = []  # list.append is atomic; a shared counter += is not
    stop = threading.Event()
    watching_started = threading.Event()

    def monitor() -> None:
        with backend.open() as s:
            while not stop.is_set():
                # The callers' clock: on Redis, the server's would expire their reservations.
                state = s.states(windows[:1], now=1000.0)[0]
                watching_started.set()
                if state.used.input_tokens + state.reserved.input_tokens > limit:
                    violations.append(state.used.input_tokens + state.reserved.input_tokens)

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        with backend.open() as s:
            for _ in range(25):
                rid, want = uuid.uuid4().hex, rng.randint(100, 3000)
                result = s.reserve(rid, windows, Demand(input_tokens=want), now=1000.0)
                if not admitted(result):
                    assert isinstance(result, Exceeded)
                    assert result.current + want > limit
                    outcomes.append("denied")
                    continue
                outcomes.append("admitted")
                assert result[0].used.input_tokens + result[0].reserved.input_tokens <= limit
                if rng.random() < 0.2:
                    s.release(rid)
                else:  # actual usage never above the reservation here
                    s.settle(rid, Demand(input_tokens=rng.randint(0, want)))

    with Workers() as watching:
        watching.start(monitor)
        try:
            # On a busy machine the callers could all finish before the monitor's first
            # read: start them once it is watching.
            assert watching_started.wait(30), "the monitor never started reading"
            with Workers() as callers:
                for i in range(8):
                    callers.start(caller, i)
        finally:
            stop.set()  # else a failed caller leaves the monitor running forever
    assert violations == []
    # 8 x 25 calls of up to 3000 tokens against 20 000: both outcomes must occur, or
    # the asserts on either branch were never reached.
    assert len(outcomes) == 200
    assert 0 < outcomes.count("admitted") < 200, outcomes.count("admitted")
    with backend.open() as s:
        state = s.states(windows, now=1000.0)
        assert state[0].used.input_tokens <= limit
        assert state[0].reserved == Demand(0, 0, 0, 0.0)
        assert (state[0].used, state[0].reserved) == backend.brute_force("user:alice", 60, 1000.0)


# -- settle, release, partial increments ----------------------------------------------


def test_settle_replaces_reserved_amounts_and_frees_budget(store: QuotaStore) -> None:
    windows = [applied(60, max_input_tokens=1000, max_output_tokens=500)]
    assert admitted(store.reserve("a", windows, Demand(1, 800, 400, 0.02), now=0))
    assert not admitted(store.reserve("b", windows, Demand(1, 300, 0), now=1))
    store.settle("a", Demand(1, 500, 120, 0.01), now=2)
    state = store.states(windows, now=3)[0]
    assert state.used == Demand(1, 500, 120, 0.01)
    assert state.reserved == Demand(0, 0, 0, 0.0)
    assert state.reset_at == 60  # settling keeps the reservation's timestamp
    after = store.reserve("b", windows, Demand(1, 300, 0), now=4)
    assert admitted(after)
    assert after[0].remaining()["max_input_tokens"] == 200


def test_settle_above_the_reservation_counts_the_overshoot(store: QuotaStore) -> None:
    windows = [applied(60, max_output_tokens=100)]
    assert admitted(store.reserve("a", windows, Demand(output_tokens=50), now=0))
    store.settle("a", Demand(output_tokens=130), now=1)
    state = store.states(windows, now=2)[0]
    assert state.used.output_tokens == 130
    assert state.remaining()["max_output_tokens"] == 0  # never negative
    denied = store.reserve("b", windows, Demand(output_tokens=0), now=2)
    assert isinstance(denied, Exceeded) and denied.retry_after == 58


def test_release_removes_the_reservation_everywhere(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    windows = [applied(60, max_requests=1), applied(60, "global", max_requests=1)]
    assert admitted(store.reserve("a", windows, Demand(), now=0))
    store.release("a")
    assert backend.rows() == []
    for state in store.states(windows, now=1):
        assert state.reserved == Demand(0, 0, 0, 0.0) and state.reset_at is None
    assert admitted(store.reserve("b", windows, Demand(), now=1))


def test_denied_request_leaves_no_partial_increment(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    windows = [
        applied(60, "user:alice", max_requests=10),
        applied(3600, "group:dev", max_requests=2),
    ]
    for i in range(2):
        assert admitted(store.reserve(f"r{i}", windows, Demand(input_tokens=5), now=i))
    denied = store.reserve("r2", windows, Demand(input_tokens=5), now=5)
    assert isinstance(denied, Exceeded)
    assert (denied.scope_key, denied.limit_name) == ("group:dev", "max_requests")
    assert [r for r in backend.rows() if r[0] == "r2"] == []
    user, group = store.states(windows, now=5)
    assert user.reserved == group.reserved == Demand(2, 10, 0, 0.0)


def test_duplicate_reservation_id_is_refused_whole(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    windows = [applied(60, "user:alice"), applied(60, "global")]
    assert admitted(store.reserve("a", windows, Demand(), now=0))
    with pytest.raises(DuplicateReservation):
        store.reserve("a", windows, Demand(), now=1)
    assert len(backend.rows()) == 2
    assert store.states(windows[:1], now=1)[0].reserved.requests == 1


# -- retry-after ----------------------------------------------------------------------


def test_retry_after_waits_for_the_oldest_request_to_leave(store: QuotaStore) -> None:
    windows = [applied(60, max_requests=3)]
    for t in (0, 10, 20):
        assert admitted(store.reserve(f"r{t}", windows, Demand(), now=t))
    denied = store.reserve("x", windows, Demand(), now=30)
    assert isinstance(denied, Exceeded)
    assert (denied.limit_name, denied.limit, denied.current, denied.requested) == (
        "max_requests",
        3,
        3,
        1,
    )
    assert denied.retry_after == 30 and not denied.never_fits
    again = store.reserve("x", windows, Demand(), now=30.0004)
    assert isinstance(again, Exceeded) and again.retry_after == 30.0  # rounded up to the ms
    assert admitted(store.reserve("x", windows, Demand(), now=60))  # ts 0 is out at exactly 60


def test_retry_after_for_tokens_frees_several_rows(store: QuotaStore) -> None:
    windows = [applied(60, max_input_tokens=1000)]
    for i, t in enumerate((0, 10, 20)):
        assert admitted(store.reserve(f"r{i}", windows, Demand(input_tokens=300), now=t))
        store.settle(f"r{i}", Demand(input_tokens=300))
    denied = store.reserve("x", windows, Demand(input_tokens=600), now=30)
    # 900 + 600 - 1000 = 500 must leave: 300 at t=60, 600 at t=70.
    assert isinstance(denied, Exceeded) and denied.retry_after == 40
    assert admitted(store.reserve("y", windows, Demand(input_tokens=100), now=30))  # exactly full


def test_the_longest_wait_among_violated_windows_is_returned(store: QuotaStore) -> None:
    windows = [applied(60, max_requests=2), applied(3600, max_requests=3)]
    for t in (0, 100, 110):
        assert admitted(store.reserve(f"r{t}", windows, Demand(), now=t))
    denied = store.reserve("x", windows, Demand(), now=120)
    assert isinstance(denied, Exceeded)  # the minute frees at 160, the hour at 3600
    assert (denied.window.window_seconds, denied.retry_after) == (3600, 3480)


def test_never_fits(store: QuotaStore) -> None:
    windows = [applied(60, max_requests=100), applied(600, max_input_tokens=1000)]
    denied = store.reserve("x", windows, Demand(input_tokens=1001), now=0)
    assert isinstance(denied, Exceeded) and denied.never_fits
    assert (denied.limit_name, denied.retry_after) == ("max_input_tokens", 600)
    blocked = store.reserve("y", [applied(60, max_cost_usd=0)], Demand(cost_usd=0.0), now=0)
    assert isinstance(blocked, Exceeded) and blocked.never_fits  # a limit of 0 admits nothing
    assert blocked.retry_after == 60


def test_cost_budget_is_exact_despite_float_sums(store: QuotaStore) -> None:
    windows = [applied(60, max_cost_usd=0.3)]
    for i in range(3):
        assert admitted(store.reserve(f"r{i}", windows, Demand(cost_usd=0.1), now=i))
    denied = store.reserve("x", windows, Demand(cost_usd=0.000001), now=3)
    assert isinstance(denied, Exceeded) and denied.current == pytest.approx(0.3)
    assert store.states(windows, now=3)[0].remaining()["max_cost_usd"] == 0.0


# -- persistence, states, scopes ------------------------------------------------------


def test_a_new_store_on_the_same_storage_keeps_counts(
    backend: QuotaBackend,  # noqa: F811
) -> None:
    windows = [applied(60, max_requests=3)]
    with backend.open() as first:
        for t in (0, 1, 2):
            assert admitted(first.reserve(f"r{t}", windows, Demand(input_tokens=10), now=t))
    with backend.open() as second:
        assert second.states(windows, now=3)[0].reserved == Demand(3, 30, 0, 0.0)
        assert not admitted(second.reserve("x", windows, Demand(), now=3))
        second.settle("r0", Demand(input_tokens=7))
        assert second.states(windows, now=3)[0].used == Demand(1, 7, 0, 0.0)


def test_states_report_used_reserved_and_reset_at(store: QuotaStore) -> None:
    windows = [applied(60, max_requests=5, max_input_tokens=100), applied(3600)]
    assert admitted(store.reserve("a", windows, Demand(input_tokens=40), now=0))
    store.settle("a", Demand(input_tokens=30))
    returned = store.reserve("b", windows, Demand(input_tokens=20), now=30)
    assert isinstance(returned, list)  # reserve answers with the states after its insert
    assert (returned[0].used, returned[0].reserved, returned[0].reset_at) == (
        Demand(1, 30),
        Demand(1, 20),
        60,
    )
    assert returned[1].reset_at == 3600
    minute, hour = store.states(windows, now=50)
    assert (minute.used, minute.reserved, minute.reset_at) == (
        Demand(1, 30, 0, 0.0),
        Demand(1, 20, 0, 0.0),
        60,
    )
    assert minute.remaining() == {
        "max_requests": 3,
        "max_input_tokens": 50,
        "max_output_tokens": None,
        "max_cost_usd": None,
    }
    minute, hour = store.states(windows, now=70)  # "a" left the minute, not the hour
    assert (minute.used.requests, minute.reserved, minute.reset_at) == (0, Demand(1, 20), 90)
    assert (hour.used.requests, hour.reserved.requests, hour.reset_at) == (1, 1, 3600)
    minute, _ = store.states(windows, now=100)
    assert minute.reset_at is None and minute.reserved == Demand(0, 0, 0, 0.0)


def test_group_and_global_scopes_share_rows_across_users(store: QuotaStore) -> None:
    def windows(user: str, group: str) -> list[AppliedWindow]:
        return [
            applied(60, f"user:{user}", max_requests=10),
            applied(60, f"group:{group}", max_requests=3),
            applied(60, "global", max_requests=4),
        ]

    assert admitted(store.reserve("a1", windows("alice", "dev"), Demand(), now=0))
    assert admitted(store.reserve("a2", windows("alice", "dev"), Demand(), now=1))
    assert admitted(store.reserve("b1", windows("bob", "dev"), Demand(), now=2))
    denied = store.reserve("b2", windows("bob", "dev"), Demand(), now=3)
    assert isinstance(denied, Exceeded) and denied.scope_key == "group:dev"
    assert admitted(store.reserve("c1", windows("carol", "ops"), Demand(), now=4))
    denied = store.reserve("c2", windows("carol", "ops"), Demand(), now=5)
    assert isinstance(denied, Exceeded) and denied.scope_key == "global"
    assert denied.retry_after == 55  # a1 leaves the global window at 60
    counts = [s.reserved.requests for s in store.states(windows("alice", "dev"), now=5)]
    assert counts == [2, 3, 4]
    assert store.states(windows("bob", "dev"), now=5)[0].reserved.requests == 1


# -- running totals and pruning -------------------------------------------------------


def test_running_totals_match_the_ledger_under_random_operations(
    backend: QuotaBackend,  # noqa: F811
) -> None:
    random_operations_match_the_rows(backend)


@pytest.mark.parametrize("move_after", [1, 10**9])
def test_sqlite_sums_match_the_rows_however_often_their_cutoff_moves(
    tmp_path: Path, move_after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sums row's cutoff moved at every reserve, or never once the row is written: the
    reads subtract (or add back) the rows in between either way. Redis has no cutoff."""
    monkeypatch.setattr(quota, "MOVE_AFTER_ROWS", move_after)
    random_operations_match_the_rows(SqliteBackend(tmp_path / "quota.db"))


def random_operations_match_the_rows(backend: QuotaBackend) -> None:  # noqa: F811
    rng = random.Random(7)
    lengths = (10, 60, 300)
    keys = ("user:alice", "user:bob", "group:dev", "global")
    a, b = backend.open(), backend.open()  # two writers, as two processes would be
    live: list[str] = []
    now = 0.0
    for step in range(600):
        now += rng.uniform(-3, 8)  # clocks may disagree, so time sometimes runs back
        s = rng.choice((a, b))
        op = rng.random()
        if op < 0.55 or not live:
            chosen = rng.sample(keys, rng.randint(1, 3))
            windows = [applied(rng.choice(lengths), k, max_input_tokens=4000) for k in chosen]
            demand = Demand(1, rng.randint(0, 900), rng.randint(0, 50), rng.randint(0, 9) / 1000)
            reserved = s.reserve(f"r{step}", windows, demand, now=now)
            if admitted(reserved):
                live.append(f"r{step}")
                for state in reserved:  # what the caller's headers are made of
                    key, seconds = state.scope_key, state.window.window_seconds
                    assert (state.used, state.reserved) == backend.brute_force(key, seconds, now)
        elif op < 0.85:
            s.settle(live.pop(rng.randrange(len(live))), Demand(1, rng.randint(0, 900)))
        elif op < 0.95:
            s.release(live.pop(rng.randrange(len(live))))
        else:
            s.prune(now - 300, rng.sample(keys, 2))
        if step % 20 == 0:
            probe = [applied(n, k) for k in keys for n in lengths]
            for state in rng.choice((a, b)).states(probe, now=now):
                expected = backend.brute_force(state.scope_key, state.window.window_seconds, now)
                assert (state.used, state.reserved) == expected
    a.close()
    b.close()


def test_prune_drops_old_rows_but_not_counted_ones(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    windows = [applied(60, max_requests=10)]
    for t in (0, 50, 100):
        assert admitted(store.reserve(f"r{t}", windows, Demand(), now=t))
    assert store.prune(100 - 60) == 1
    assert [r[0] for r in backend.rows()] == ["r50", "r100"]
    assert store.states(windows, now=100)[0].reserved.requests == 2


def test_reserve_prunes_beyond_the_longest_window_ever_used(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quota, "PRUNE_EVERY", 5)
    long_window = [applied(1000, "user:alice", max_requests=100)]
    short_window = [applied(10, "user:alice", max_requests=100)]
    assert admitted(store.reserve("old", long_window, Demand(), now=0))
    for i in range(1, 5):  # another caller only knows the short window
        assert admitted(store.reserve(f"s{i}", short_window, Demand(), now=500 + i))
    assert "old" in [r[0] for r in backend.rows()]  # still inside the 1000 s window
    for i in range(5, 10):
        assert admitted(store.reserve(f"s{i}", short_window, Demand(), now=1500 + i))
    assert [r[0] for r in backend.rows()] == [f"s{i}" for i in range(5, 10)]
    assert store.states(long_window, now=1510)[0].reserved.requests == 5


# -- SQLite only: the sums kept by triggers -------------------------------------------


def test_sums_follow_rows_written_by_hand_and_rows_never_move(tmp_path: Path) -> None:
    """The triggers keep the sums in step with any write to quota_ledger, an operator's
    by hand included; a statement that would move a row aborts whole."""
    windows = [applied(60, "user:alice", max_requests=10), applied(3600, "user:alice")]
    with QuotaStore(tmp_path / "q.db") as store:
        for i in range(4):
            assert admitted(store.reserve(f"r{i}", windows, Demand(1, 100), now=10.0 + i))
        with closing(sqlite3.connect(tmp_path / "q.db", isolation_level=None)) as conn:
            conn.execute("DELETE FROM quota_ledger WHERE reservation_id = 'r0'")
            conn.execute("UPDATE quota_ledger SET settled = 1, input_tokens = 7"
                         " WHERE reservation_id = 'r1'")  # fmt: skip
            with pytest.raises(sqlite3.IntegrityError, match="keeps its scope_key and ts"):
                conn.execute("UPDATE quota_ledger SET ts = ts + 100 WHERE reservation_id = 'r2'")
        minute = store.states(windows, now=20.0)[0]
        assert (minute.used, minute.reserved) == (Demand(1, 7), Demand(2, 200))
        # A reserve after the hand edits counts from the same sums: 3 rows, 7 more fit.
        for i in range(4, 11):
            assert admitted(store.reserve(f"r{i}", windows, Demand(1, 100), now=20.0))
        assert isinstance(store.reserve("r11", windows, Demand(1, 100), now=20.0), Exceeded)


def test_a_sums_rows_cutoff_moves_once_enough_rows_have_left_its_window(
    tmp_path: Path,
) -> None:
    """Reads subtract the rows that left a window since its sums row's cutoff; a reserve
    writes the row back at the window's start once MOVE_AFTER_ROWS of them have left,
    so that while calls keep coming a read scans a few dozen rows at most."""
    windows = [applied(10, "user:alice", max_requests=1000)]
    lag = quota.MOVE_AFTER_ROWS
    with QuotaStore(tmp_path / "q.db") as store:
        for i in range(lag):
            assert admitted(store.reserve(f"r{i}", windows, Demand(), now=float(i)))
        cutoff = "SELECT cutoff FROM quota_sums WHERE window_seconds = 10"
        with closing(sqlite3.connect(tmp_path / "q.db")) as conn:
            assert conn.execute(cutoff).fetchone() == (-10.0,)  # written by the first
        # At 40.5, rows 0-30 have left (31 < lag): the cutoff stays, the sums are right.
        state = store.reserve("a", windows, Demand(), now=40.5)
        assert isinstance(state, list) and state[0].reserved.requests == 2
        with closing(sqlite3.connect(tmp_path / "q.db")) as conn:
            assert conn.execute(cutoff).fetchone() == (-10.0,)
        # At 41.5 all 32 have left: the row moves to the window's start.
        state = store.reserve("b", windows, Demand(), now=41.5)
        assert isinstance(state, list) and state[0].reserved.requests == 2
        with closing(sqlite3.connect(tmp_path / "q.db")) as conn:
            assert conn.execute(cutoff).fetchone() == (31.5,)


def test_a_store_drops_the_sums_table_an_older_llmgate_kept(tmp_path: Path) -> None:
    """quota_totals was kept from Python by older versions; one still sharing the file
    would count every row twice beside the triggers, so it must fail (closed) instead."""
    with closing(sqlite3.connect(tmp_path / "q.db", isolation_level=None)) as conn:
        conn.execute("CREATE TABLE quota_totals (scope_key TEXT, window_seconds INTEGER)")
    with QuotaStore(tmp_path / "q.db") as store:
        assert admitted(store.reserve("r1", [applied(60, max_requests=1)], Demand()))
    with closing(sqlite3.connect(tmp_path / "q.db")) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "quota_totals" not in tables
    assert {"quota_ledger", "quota_sums", "quota_row_counted"} <= tables


# -- Redis only: reservation TTL, restarts, the asyncio worker ---------------------------


@pytest.fixture
def redis_backend(redis_server: RedisServer) -> RedisBackend:  # noqa: F811
    return RedisBackend(redis_server, 999)


def test_an_abandoned_reservation_stops_counting_after_its_ttl(
    redis_backend: RedisBackend,
) -> None:
    windows = [applied(600, max_requests=2, max_input_tokens=1000)]
    with redis_backend.open(reservation_ttl=5) as s:
        assert admitted(s.reserve("dead", windows, Demand(input_tokens=900), now=0))
        assert admitted(s.reserve("live", windows, Demand(input_tokens=100), now=3))
        assert not admitted(s.reserve("x", windows, Demand(input_tokens=1), now=4.9))
        # At 5 the first reservation is 5 s old and never settled: its process died.
        state = s.states(windows, now=5.5)[0]
        assert state.reserved == Demand(1, 100, 0, 0.0)
        assert [r[0] for r in redis_backend.rows()] == ["live"]
        assert admitted(s.reserve("y", windows, Demand(input_tokens=800), now=6))
        # A settle that comes after all (a call longer than the TTL) still counts,
        # at its reservation's time.
        s.settle("dead", Demand(input_tokens=50))
        state = s.states(windows, now=7)[0]
        assert (state.used, state.reserved) == (Demand(1, 50), Demand(2, 900))
        assert state.reset_at == 600
        s.settle("live", Demand(input_tokens=100))
        state = s.states(windows, now=9)[0]  # settled rows never expire
        assert (state.used, state.reserved) == (Demand(2, 150), Demand(1, 800))


def test_the_ttl_runs_on_the_redis_servers_clock(redis_backend: RedisBackend) -> None:
    windows = [applied(60, "global", max_requests=1)]
    with redis_backend.open(reservation_ttl=0.5) as s:
        assert admitted(s.reserve("a", windows, Demand()))
        assert not admitted(s.reserve("b", windows, Demand()))
        time.sleep(0.6)
        assert s.states(windows)[0].reserved == Demand(0, 0, 0, 0.0)
        assert admitted(s.reserve("b", windows, Demand()))


def test_a_redis_restart_fails_calls_closed_then_the_same_store_recovers(
    tmp_path: Path,
) -> None:
    server = RedisServer()
    server.start()
    windows = [applied(60, max_requests=100)]
    try:
        with RedisQuotaStore(server.url, timeout=0.5) as s:
            assert admitted(s.reserve("before", windows, Demand()))
            server.stop()
            started = time.monotonic()
            for op in (
                lambda: s.reserve("during", windows, Demand()),
                lambda: s.settle("before", Demand()),
                lambda: s.states(windows),
            ):
                with pytest.raises(QuotaUnavailable):
                    op()
            assert time.monotonic() - started < 5  # refused at once, not after a long wait
            server.start()  # empty: no data, no scripts loaded
            result = s.reserve("after", windows, Demand())
            assert admitted(result) and result[0].reserved.requests == 1
    finally:
        server.close()


def test_the_redis_worker_reserves_on_the_loop_and_batches_settles(
    redis_backend: RedisBackend,
) -> None:
    from addon.quota.worker import SETTLE_DELAY, RedisQuotaWorker

    windows = [applied(60, max_requests=3, max_output_tokens=1000)]

    async def run() -> None:
        worker = RedisQuotaWorker(redis_backend.target, ttl=60)
        results = [
            await worker.reserve(f"r{i}", windows, Demand(output_tokens=100)) for i in range(4)
        ]
        assert [admitted(r) for r in results] == [True, True, True, False]
        for i in range(3):
            worker.settle(f"r{i}", Demand(output_tokens=10))
        assert {r[5] for r in redis_backend.rows()} == {0}  # queued, not yet sent
        await asyncio.sleep(SETTLE_DELAY + 0.2)
        assert {r[5] for r in redis_backend.rows()} == {1}
        worker.settle("r0", Demand(output_tokens=20))
        worker.close()  # applies what is still queued
        await asyncio.sleep(0)

    asyncio.run(run())
    with redis_backend.open() as s:
        assert s.states(windows)[0].used == Demand(3, 0, 40)


def test_workers_raise_quota_unavailable_when_their_store_cannot_answer(
    tmp_path: Path,
) -> None:
    from addon.quota.worker import QuotaWorker, RedisQuotaWorker

    windows = [applied(60, max_requests=3)]
    dead = RedisQuotaWorker(f"redis://127.0.0.1:{free_port()}/0", ttl=60)
    with pytest.raises(QuotaUnavailable):
        asyncio.run(dead.reserve("a", windows, Demand()))
    dead.close()
    # Any sqlite3 error but "busy": here, a closed connection. First the file's owner,
    # which reads a window's first sums from the file...
    owner = QuotaWorker(tmp_path / "q.db")
    assert owner._owned is not None
    owner._owned.store.close()
    with pytest.raises(QuotaUnavailable):
        asyncio.run(owner.reserve("a", windows, Demand()))
    # ... then a worker sharing the file (the owner hands it over), inline on SQLite.
    shared = QuotaWorker(tmp_path / "q.db")
    assert shared._owned is None and owner._owned is None
    shared._fast.close()
    with pytest.raises(QuotaUnavailable):
        asyncio.run(shared.reserve("a", windows, Demand()))
    for worker in (owner, shared):
        worker._pool.shutdown()
        worker._store.close()
        worker._lease.close()


# -- choosing the store ---------------------------------------------------------------


def test_the_option_or_env_wins_over_the_files_store_and_the_ttl_follows_the_routes() -> None:
    from addon.config import GatewayConfig
    from addon.quota.worker import quota_target, reservation_ttl

    plain = GatewayConfig()
    assert quota_target("", plain) is None  # SQLite beside the ledger
    filed = GatewayConfig.model_validate(
        {
            "quota": {"store": "redis://file:6379/1"},
            "routes": [
                {
                    "id": "a",
                    "provider": "openai",
                    "endpoint": "https://a",
                    "first_byte_timeout_s": 30,
                },
                {
                    "id": "b",
                    "provider": "openai",
                    "endpoint": "https://b",
                    "first_byte_timeout_s": 900,
                },
            ],
        }
    )
    assert quota_target("", filed) == "redis://file:6379/1"
    assert quota_target("redis://env:6379/2", filed) == "redis://env:6379/2"
    assert reservation_ttl(plain) == 2 * 600 + 60
    assert reservation_ttl(filed) == 2 * 900 + 60
    assert reservation_ttl(GatewayConfig.model_validate({"quota": {"reservation_ttl_s": 5}})) == 5
    with pytest.raises(ValueError, match="redis://"):
        GatewayConfig.model_validate({"quota": {"store": "/var/lib/quota.db"}})
    with pytest.raises(ValueError):
        GatewayConfig.model_validate({"quota": {"on_unavailable": "maybe"}})


def test_the_sqlite_workers_wal_stays_bounded_under_steady_load(tmp_path: Path) -> None:
    """Inline reserves and settles append while the worker thread checkpoints: a passive
    checkpoint alone never found the WAL wholly copied, and it grew ~14 KB a call
    (88 MB after these 6,000 calls). Past WAL_RESTART_FRAMES it starts over."""
    from addon.quota.worker import QuotaWorker

    worker = QuotaWorker(tmp_path / "q.db")
    windows = [
        AppliedWindow(QuotaWindow(window_seconds=60, max_requests=10**8), "user:a"),
        AppliedWindow(QuotaWindow(window_seconds=86400, max_input_tokens=10**12), "user:a"),
    ]

    async def steady_load() -> None:
        for i in range(6000):
            assert isinstance(await worker.send_reserve(f"r{i}", windows, Demand(1, 9)), list)
            worker.settle(f"r{i}", Demand(1, 8))
            if i % 8 == 0:
                await asyncio.sleep(0.0005)  # the worker thread gets its turns

    try:
        asyncio.run(steady_load())
        wal = (tmp_path / "q.db-wal").stat().st_size
        bound = 3 * WAL_RESTART_FRAMES * 4096  # ~24 MB: room for a slow worker thread
        assert wal < bound, f"the quota WAL grew to {wal / 1e6:.1f} MB"
    finally:
        worker.close()
