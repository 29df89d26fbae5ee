"""Quota arithmetic pinned to exact values: each test kills mutants of
addon/quota/store.py and addon/quota/budget.py that test_quota lets through
(see MUTATION.md). Real stores on real files and a real redis-server; literal
expected values. Tests taking `store` run on both stores (SQLite, Redis)."""

from __future__ import annotations

import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from addon.call import Call, Rejection
from addon.config import Pricing, QuotaWindow, Route
from addon.ledger.pricing import Pricer, PricingTable
from addon.protocols.canonical import CanonicalRequest
from addon.quota import store as quota
from addon.quota import windows
from addon.quota.budget import (
    actual_demand,
    bind_windows,
    quota_demand,
    quota_rejection,
    ratelimit_headers,
)
from addon.quota.store import QuotaStore
from addon.quota.windows import AppliedWindow, Demand, Exceeded, WindowState
from tests.redis_server import QuotaBackend, backend, redis_server  # noqa: F401 - fixtures


def applied(seconds: int, key: str = "user:alice", **limits: float) -> AppliedWindow:
    return AppliedWindow(QuotaWindow(window_seconds=seconds, **limits), key)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "quota.db"


@pytest.fixture
def sqlite_store(db: Path):
    """For what only the SQLite store has: its meta table, checkpoints."""
    with QuotaStore(db) as s:
        yield s


@pytest.fixture
def store(backend: QuotaBackend):  # noqa: F811
    with backend.open() as s:
        yield s


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:  # sqlite3's own `with` does not close
        return conn.execute(sql).fetchall()


def ids(db: Path) -> list[str]:
    return [r[0] for r in rows(db, "SELECT reservation_id FROM quota_ledger ORDER BY ts")]


# -- remaining() ------------------------------------------------------------------------


def state(limits: dict[str, float], used: Demand, reserved: Demand) -> WindowState:
    return WindowState(QuotaWindow(window_seconds=60, **limits), "user:a", used, reserved, None)


def test_remaining_rounds_cost_to_the_nano_dollar_and_keeps_counts_integers() -> None:
    limits = {"max_requests": 5, "max_input_tokens": 10, "max_cost_usd": 0.3}
    # 0.3 - 0.1 - 0.2 is 5.5e-17 in floats: no money is left, and none must show.
    left = state(limits, Demand(1, 4, 0, 0.1), Demand(1, 3, 0, 0.2)).remaining()
    assert left == {
        "max_requests": 3,
        "max_input_tokens": 3,
        "max_output_tokens": None,
        "max_cost_usd": 0.0,
    }
    assert [type(v) for v in left.values()] == [int, int, type(None), float]
    tiny = state({"max_cost_usd": 1.0}, Demand(0, 0, 0, 0.9999999996), Demand(0)).remaining()
    assert tiny["max_cost_usd"] == 0.0  # 4e-10 is less than half a nano-dollar
    some = state({"max_cost_usd": 1.0}, Demand(0, 0, 0, 0.25), Demand(0, 0, 0, 0.125))
    assert some.remaining()["max_cost_usd"] == 0.625
    over = state({"max_requests": 1, "max_cost_usd": 0.1}, Demand(2, 0, 0, 0.3), Demand(0))
    assert over.remaining() == {
        "max_requests": 0,
        "max_input_tokens": None,
        "max_output_tokens": None,
        "max_cost_usd": 0.0,
    }
    assert type(over.remaining()["max_requests"]) is int  # a count, even when overdrawn


# -- helpers of reserve -------------------------------------------------------------------


def test_ceil_ms_rounds_up_to_the_millisecond_but_not_float_noise() -> None:
    assert windows.ceil_ms(0.25) == 0.25
    assert windows.ceil_ms(0.0304) == 0.031
    assert windows.ceil_ms(0.0300000004) == 0.03  # noise below a nanosecond
    assert windows.ceil_ms(30.000000000004) == 30.0
    assert windows.ceil_ms(-5.0) == 0.0
    assert windows.ceil_ms(0.0) == 0.0


def exceeded(retry_after: float, never_fits: bool = False, key: str = "k") -> Exceeded:
    window = QuotaWindow(window_seconds=60, max_requests=1)
    return Exceeded(window, key, "max_requests", 1, 1, 1, retry_after, never_fits)


def test_worse_prefers_never_fits_then_the_longest_wait_then_the_first() -> None:
    first, second = exceeded(10, key="first"), exceeded(10, key="second")
    assert windows.worse(None, first) is first
    assert windows.worse(first, second) is first  # a tie keeps the first found
    assert windows.worse(exceeded(20), exceeded(10)).retry_after == 20
    assert windows.worse(exceeded(10), exceeded(20)).retry_after == 20
    never = exceeded(5, never_fits=True)
    assert windows.worse(never, exceeded(50)) is never
    assert windows.worse(exceeded(50), never) is never


def test_the_worst_violation_wins_whatever_the_window_order(store: QuotaStore) -> None:
    hour, minute, day = (
        applied(3600, max_requests=1),
        applied(60, max_requests=1),
        applied(86400, max_requests=100),
    )
    assert isinstance(store.reserve("a", [hour, minute, day], Demand(), now=0), list)
    denied = store.reserve("b", [hour, minute, day], Demand(), now=10)
    assert isinstance(denied, Exceeded)
    assert (denied.window.window_seconds, denied.retry_after) == (3600, 3590)
    denied = store.reserve("b", [minute, hour, day], Demand(), now=10)
    assert isinstance(denied, Exceeded) and denied.window.window_seconds == 3600


def test_every_limit_of_a_window_is_checked(store: QuotaStore) -> None:
    window = [applied(60, max_requests=10, max_input_tokens=100, max_output_tokens=50)]
    denied = store.reserve("a", window, Demand(1, 10, 60), now=0)
    assert isinstance(denied, Exceeded)
    assert (denied.limit_name, denied.limit, denied.current, denied.requested) == (
        "max_output_tokens",
        50,
        0,
        60,
    )
    assert denied.never_fits and denied.retry_after == 60.0


def test_a_never_fitting_cost_reports_dollars(store: QuotaStore) -> None:
    denied = store.reserve("a", [applied(60, max_cost_usd=0.2)], Demand(cost_usd=0.5), now=0)
    assert isinstance(denied, Exceeded) and denied.never_fits
    assert (denied.limit, denied.current, denied.requested, denied.retry_after) == (
        0.2,
        0.0,
        0.5,
        60.0,
    )


def test_a_zero_limit_waits_the_whole_window_even_with_rows_in_it(store: QuotaStore) -> None:
    # The key already has a row (through another window); a limit of 0 still never fits.
    assert isinstance(store.reserve("a", [applied(60, max_requests=5)], Demand(), now=0), list)
    denied = store.reserve("b", [applied(60, max_input_tokens=0)], Demand(), now=10)
    assert isinstance(denied, Exceeded)
    assert (denied.never_fits, denied.retry_after, denied.current) == (True, 60.0, 0)


def test_retry_after_frees_exactly_the_excess(store: QuotaStore) -> None:
    window = [applied(60, max_input_tokens=10)]
    assert isinstance(store.reserve("a", window, Demand(input_tokens=5), now=0), list)
    assert isinstance(store.reserve("b", window, Demand(input_tokens=5), now=20), list)
    # 10 + 6 - 10 = 6 must leave: "a" frees only 5, so "b" must go too, at 80.
    denied = store.reserve("c", window, Demand(input_tokens=6), now=30)
    assert isinstance(denied, Exceeded) and denied.retry_after == 50.0
    # 10 + 5 - 10 = 5: "a" alone frees it, at 60.
    denied = store.reserve("c", window, Demand(input_tokens=5), now=30)
    assert isinstance(denied, Exceeded) and denied.retry_after == 30.0
    denied = store.reserve("c", window, Demand(input_tokens=5), now=59.75)
    assert isinstance(denied, Exceeded) and denied.retry_after == 0.25


def test_a_window_listed_twice_counts_once_and_the_rest_still_count(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    minute = applied(60, max_requests=2)
    windows = [minute, minute, applied(60, "global", max_requests=2)]
    states = store.reserve("a", windows, Demand(input_tokens=3), now=0)
    assert isinstance(states, list)
    assert [(s.scope_key, s.reserved) for s in states] == [
        ("user:alice", Demand(1, 3)),
        ("user:alice", Demand(1, 3)),
        ("global", Demand(1, 3)),
    ]
    assert sorted((r[0], r[1]) for r in backend.rows()) == [
        ("a", "global"),
        ("a", "user:alice"),
    ]


def test_reserve_with_no_window_admits_and_records_nothing(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    assert store.reserve("a", [], Demand(1, 10, 10, 0.5), now=0) == []
    assert backend.all_rows() == []
    if backend.name == "sqlite":
        assert rows(Path(backend.target), "SELECT * FROM quota_meta") == []


def test_reserve_records_the_longest_window_as_the_horizon(
    db: Path, sqlite_store: QuotaStore
) -> None:
    store = sqlite_store
    assert isinstance(store.reserve("a", [applied(1)], Demand(), now=0), list)
    assert rows(db, "SELECT name, value FROM quota_meta") == [("horizon", 1.0)]
    assert isinstance(store.reserve("b", [applied(60), applied(30)], Demand(), now=1), list)
    assert rows(db, "SELECT name, value FROM quota_meta") == [("horizon", 60.0)]
    with QuotaStore(db) as other:  # a store that only knows a shorter window
        assert isinstance(other.reserve("c", [applied(10)], Demand(), now=2), list)
    assert rows(db, "SELECT name, value FROM quota_meta") == [("horizon", 60.0)]


def test_the_reserved_row_holds_the_demand_in_nano_dollars(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    assert isinstance(store.reserve("a", [applied(60)], Demand(1, 20, 30, 0.000000002), 5.5), list)
    assert backend.all_rows() == [("a", "user:alice", 5.5, 1, 20, 30, 2, 0)]


# -- pruning every PRUNE_EVERY reserves -----------------------------------------------


def test_every_thousandth_reserve_prunes_its_own_keys_beyond_every_stores_horizon(
    db: Path,
) -> None:
    assert quota.PRUNE_EVERY == 1000
    with QuotaStore(db) as long_lived:
        assert isinstance(long_lived.reserve("long", [applied(500)], Demand(), now=0), list)
    short = [applied(10)]
    with QuotaStore(db) as s:  # knows only the 10 s window; the file remembers 500 s
        assert isinstance(s.reserve("bob-old", [applied(10, "user:bob")], Demand(), now=0), list)
        for i in range(998):
            assert isinstance(s.reserve(f"r{i}", short, Demand(), now=100 + i), list)
        # 999 reserves so far: nothing pruned yet.
        assert len(ids(db)) == 1000
        assert isinstance(s.reserve("r998", short, Demand(), now=1000), list)
        # The 1000th prunes alice's rows older than 1000 - 500, and not bob's.
        left = ids(db)
        assert "long" not in left and "r399" not in left and "r400" in left
        assert "bob-old" in left and len(left) == 1 + 599
        for i in range(999, 1998):
            assert isinstance(s.reserve(f"r{i}", short, Demand(), now=2000 + i), list)
        assert len(ids(db)) == 600 + 999  # the 1999th reserve prunes nothing
        assert isinstance(s.reserve("r1998", short, Demand(), now=4000), list)
        # The 2000th does: alice's rows before 3500 go, bob's row stays.
        left = ids(db)
        assert "r1499" not in left and "r1500" in left
        assert "bob-old" in left and len(left) == 1 + 499


def test_a_refused_reserve_does_not_count_towards_the_next_prune(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quota, "PRUNE_EVERY", 2)
    with QuotaStore(db) as s:
        assert isinstance(s.reserve("old", [applied(10, max_requests=5)], Demand(), now=0), list)
        never = [applied(10, max_requests=0)]
        assert isinstance(s.reserve("refused", never, Demand(), now=100), Exceeded)
        assert ids(db) == ["old"]  # the refusal was no second reserve: nothing pruned
        assert isinstance(s.reserve("new", [applied(10)], Demand(), now=100), list)
        assert ids(db) == ["new"]  # the second admitted one prunes


def test_a_thousand_reserves_without_windows_prune_without_a_horizon(db: Path) -> None:
    with QuotaStore(db) as s:
        for i in range(1000):
            assert s.reserve(f"r{i}", [], Demand(), now=i) == []
    assert rows(db, "SELECT * FROM quota_meta") == []


# -- settle, release, dead instances ----------------------------------------------------


def test_settle_moves_each_amount_from_reserved_to_used(store: QuotaStore) -> None:
    windows = [applied(60, max_requests=9), applied(60, "global", max_requests=9)]
    assert isinstance(store.reserve("a", windows, Demand(1, 100, 50, 0.5), now=0), list)
    assert isinstance(store.reserve("b", windows, Demand(1, 7, 8, 0.25), now=1), list)
    store.settle_many([("a", Demand(1, 60, 20, 0.125)), ("b", Demand(1, 9, 10, 0.375))])
    for s in store.states(windows, now=2):
        assert (s.used, s.reserved) == (Demand(2, 69, 30, 0.5), Demand(0, 0, 0, 0.0))
    store.release("a")  # releasing a settled call takes back what it used
    for s in store.states(windows, now=2):
        assert (s.used, s.reserved) == (Demand(1, 9, 10, 0.375), Demand(0, 0, 0, 0.0))


def test_release_instances_releases_only_that_instances_open_reservations(
    backend: QuotaBackend,  # noqa: F811
    store: QuotaStore,
) -> None:
    windows = [applied(60, max_requests=50), applied(60, "global", max_requests=50)]
    dead, live = "deadbeef00000001", "deadbeef00000002"
    for rid in (f"{dead}-1", f"{dead}-2", f"{dead}-3", f"{live}-1", "deadbeef"):
        assert isinstance(store.reserve(rid, windows, Demand(1, 10), now=0), list)
    store.settle(f"{dead}-3", Demand(1, 4))
    assert store.release_instances([dead, dead, "", "dead", "deadbee"]) == 4
    assert sorted({r[0] for r in backend.rows()}) == ["deadbeef", f"{dead}-3", f"{live}-1"]
    for s in store.states(windows, now=1):
        assert (s.used, s.reserved) == (Demand(1, 4), Demand(2, 20))
    assert store.release_instances([]) == 0
    other = "cafef00d00000003"
    for rid in (f"{other}-1", f"{live}-2"):
        assert isinstance(store.reserve(rid, windows, Demand(1, 10), now=0), list)
    assert store.release_instances([other, live]) == 6  # counted across both prefixes
    assert store.release_instances(["deadbeef"]) == 2  # an 8-digit prefix is long enough
    for s in store.states(windows, now=1):
        assert (s.used, s.reserved) == (Demand(1, 4), Demand(0, 0))


# -- connection settings ----------------------------------------------------------------


def test_a_zero_busy_timeout_fails_at_once_instead_of_waiting(db: Path) -> None:
    with (
        QuotaStore(db, busy_timeout_ms=0) as fast,
        closing(sqlite3.connect(db, isolation_level=None)) as holder,
    ):
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            fast.reserve("a", [applied(60)], Demand(), now=0)
        assert time.monotonic() - started < 5
        # Its snapshot reads never wait for a writer.
        assert fast.states([applied(60)], now=0)[0].reserved == Demand(0, 0, 0, 0.0)
        holder.execute("ROLLBACK")


def test_checkpoint_settings(db: Path, sqlite_store: QuotaStore) -> None:
    store = sqlite_store
    store.never_checkpoint()
    for i in range(50):
        assert isinstance(store.reserve(f"r{i}", [applied(60)], Demand(), now=i), list)
    store.checkpoint()
    with closing(sqlite3.connect(db)) as conn:
        busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames == done  # the store's own checkpoint copied every frame
    assert len(ids(db)) == 50


# -- budget.py ----------------------------------------------------------------------------


def test_bind_windows_gives_each_scope_its_key() -> None:
    user = QuotaWindow(window_seconds=60, scope="user")
    group = QuotaWindow(window_seconds=60, scope="group")
    everyone = QuotaWindow(window_seconds=60, scope="global")
    assert bind_windows("alice", ("dev", "ops"), (user, group, everyone)) == [
        AppliedWindow(user, "user:alice"),
        AppliedWindow(group, "group:dev"),
        AppliedWindow(group, "group:ops"),
        AppliedWindow(everyone, "global"),
    ]
    assert bind_windows("bob", (), (group,)) == []


PRICES = PricingTable(models={"gpt-4o": Pricing(input=2.5, output=10)})


def call(**fields: object) -> Call:
    base: dict[str, object] = {
        "id": "c1",
        "started_at": 0.0,
        "protocol_name": "openai_chat",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "request": CanonicalRequest(protocol="openai_chat", model="gpt-4o"),
        "upstream_model": "gpt-4o",
        "estimated_input": 1000,
    }
    return Call(**{**base, **fields})  # type: ignore[arg-type]


def test_quota_demand_reserves_the_output_cap_and_its_cost() -> None:
    pricer = Pricer(PRICES)
    # No max_tokens: the cap. 1000 in at $2.5/M + 4000 out at $10/M.
    assert quota_demand(call(), pricer, 4000) == Demand(1, 1000, 4000, 0.0425)
    asked = call(request=CanonicalRequest(protocol="openai_chat", model="m", max_tokens=100))
    assert quota_demand(asked, pricer, 4000) == Demand(1, 1000, 100, 0.0035)
    huge = call(request=CanonicalRequest(protocol="openai_chat", model="m", max_tokens=10**6))
    assert quota_demand(huge, pricer, 4000) == Demand(1, 1000, 4000, 0.0425)
    zero = call(request=CanonicalRequest(protocol="openai_chat", model="m", max_tokens=0))
    assert quota_demand(zero, pricer, 4000) == Demand(1, 1000, 4000, 0.0425)
    one = call(request=CanonicalRequest(protocol="openai_chat", model="m", max_tokens=1))
    assert quota_demand(one, pricer, 4000) == Demand(1, 1000, 1, 0.00251)
    negative = call(request=CanonicalRequest(protocol="openai_chat", model="m", max_tokens=-5))
    assert quota_demand(negative, pricer, 4000) == Demand(1, 1000, 4000, 0.0425)
    clamped = call(
        request=CanonicalRequest(protocol="openai_chat", model="m", max_tokens=3000),
        clamp_max_tokens=200,
    )
    assert quota_demand(clamped, pricer, 4000) == Demand(1, 1000, 200, 0.0045)


def test_quota_demand_needs_the_request_and_the_upstream_model() -> None:
    with pytest.raises(AssertionError):
        quota_demand(call(request=None, clamp_max_tokens=5), Pricer(PRICES), 10)
    with pytest.raises(AssertionError):
        quota_demand(call(upstream_model=None), Pricer(PRICES), 10)


def test_quota_demand_prices_by_the_route_first_and_a_warmup_costs_no_request() -> None:
    route = Route(
        id="r",
        provider="openai",
        endpoint="https://api.openai.com",
        pricing=Pricing(input=1, output=1),
    )
    assert quota_demand(call(route=route), Pricer(PRICES), 10) == Demand(1, 1000, 10, 0.00101)
    assert quota_demand(call(warmup=True), Pricer(PRICES), 10) == Demand(0, 1000, 0, 0.0025)


def test_an_unpriced_model_is_refused_only_under_a_cost_budget() -> None:
    unpriced = call(upstream_model="house-model")
    no_cost = [applied(60, max_requests=5)]
    assert quota_demand(call(upstream_model="house-model", quota_windows=no_cost),
                        Pricer(PRICES), 10) == Demand(1, 1000, 10, 0.0)  # fmt: skip
    assert quota_demand(unpriced, Pricer(PRICES), 10) == Demand(1, 1000, 10, 0.0)
    refused = quota_demand(
        call(upstream_model="house-model", quota_windows=[*no_cost, applied(60, max_cost_usd=1)]),
        Pricer(PRICES),
        10,
    )
    assert refused == Rejection(
        403,
        "unpriced_model",
        "model 'house-model' has no price, so the cost budget that applies to you cannot be "
        "enforced. Add it to pricing.yaml or to the route's pricing.",
        "denied",
    )


def test_quota_rejection_messages() -> None:
    window = QuotaWindow(window_seconds=60, max_input_tokens=1000, name="minute")
    wait = Exceeded(window, "user:alice", "max_input_tokens", 1000, 900, 200, 12.2)
    assert quota_rejection(wait) == Rejection(
        429,
        "quota_exceeded",
        "quota window 'minute' (user:alice, 60s) is at 900 of max_input_tokens=1000; retry in 13s",
        "denied",
        {"retry-after": "13"},
    )
    soon = Exceeded(window, "user:alice", "max_input_tokens", 1000, 900, 200, 0.001)
    assert quota_rejection(soon).headers == {"retry-after": "1"}
    assert quota_rejection(soon).message.endswith("retry in 1s")
    never = Exceeded(window, "global", "max_input_tokens", 1000, 0, 1500.5, 60, never_fits=True)
    assert quota_rejection(never) == Rejection(
        429,
        "quota_exceeded",
        "this call alone needs 1500.5 against max_input_tokens=1000 of quota window 'minute' "
        "(global); it can never fit. Ask for fewer tokens.",
        "denied",
        {"retry-after": "60"},
    )


def test_ratelimit_headers_report_the_tightest_window_per_kind() -> None:
    wide = WindowState(
        QuotaWindow(window_seconds=3600, max_requests=100, max_cost_usd=5),
        "user:a",
        Demand(10, 0, 0, 1.5),
        Demand(2, 0, 0, 0.25),
        1000.0,
    )
    narrow = WindowState(
        QuotaWindow(window_seconds=60, max_requests=20, max_input_tokens=500),
        "user:a",
        Demand(5, 100, 0, 0.0),
        Demand(1, 50, 0, 0.0),
        None,
    )
    assert ratelimit_headers([wide, narrow], now=400.0) == {
        "x-llmgate-ratelimit-limit-requests": "20",
        "x-llmgate-ratelimit-remaining-requests": "14",
        "x-llmgate-ratelimit-limit-input-tokens": "500",
        "x-llmgate-ratelimit-remaining-input-tokens": "350",
        "x-llmgate-ratelimit-limit-cost-usd": "5",
        "x-llmgate-ratelimit-remaining-cost-usd": "3.25",
        "x-llmgate-ratelimit-reset-cost-usd": "600.000",
    }
    assert ratelimit_headers([], now=0) == {}
    spent = WindowState(
        QuotaWindow(window_seconds=60, max_output_tokens=10), "u", Demand(1, 0, 12), Demand(0), 30.0
    )
    assert ratelimit_headers([spent], now=0.0) == {
        "x-llmgate-ratelimit-limit-output-tokens": "10",
        "x-llmgate-ratelimit-remaining-output-tokens": "0",
        "x-llmgate-ratelimit-reset-output-tokens": "30.000",
    }


def test_quota_amounts_are_written_with_every_digit() -> None:
    """Token budgets run to millions: a client reading the headers as integers must get
    them exactly (`:g` gave 1e+07 and 9.87654e+06), and dollars to the nano-dollar."""
    big = WindowState(
        QuotaWindow(window_seconds=86400, max_input_tokens=10_000_000, max_cost_usd=1234.5),
        "user:a",
        Demand(1, 123_456, 0, 0.000000001),
        Demand(1, 10_000, 0, 0.0),
        None,
    )
    assert ratelimit_headers([big], now=0.0) == {
        "x-llmgate-ratelimit-limit-input-tokens": "10000000",
        "x-llmgate-ratelimit-remaining-input-tokens": "9866544",
        "x-llmgate-ratelimit-limit-cost-usd": "1234.5",
        "x-llmgate-ratelimit-remaining-cost-usd": "1234.499999999",
    }
    full = Exceeded(big.window, "user:a", "max_input_tokens", 10_000_000, 9_876_543, 200_000, 5)
    assert "is at 9876543 of max_input_tokens=10000000;" in quota_rejection(full).message


def test_ratelimit_headers_keep_the_first_of_equally_tight_windows() -> None:
    first = WindowState(
        QuotaWindow(window_seconds=60, max_requests=10), "u", Demand(5), Demand(0), 70.5
    )
    second = WindowState(
        QuotaWindow(window_seconds=600, max_requests=50), "u", Demand(45), Demand(0), 900.0
    )
    assert ratelimit_headers([first, second], now=100.0) == {
        "x-llmgate-ratelimit-limit-requests": "10",
        "x-llmgate-ratelimit-remaining-requests": "5",
        "x-llmgate-ratelimit-reset-requests": "0.000",  # never a negative reset
    }


def test_actual_demand_treats_missing_counts_as_zero() -> None:
    assert actual_demand({"input_tokens": 7, "output_tokens": 3, "cost_usd": 0.5}) == Demand(
        1, 7, 3, 0.5
    )
    assert actual_demand({"input_tokens": None, "cost_usd": None}, requests=0) == Demand(0, 0, 0)
    assert actual_demand({}) == Demand(1, 0, 0, 0.0)
    assert math.isclose(actual_demand({"cost_usd": 1e-9}).cost_usd, 1e-9)
