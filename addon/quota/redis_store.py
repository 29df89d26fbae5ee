"""Sliding-window quotas in Redis, shared by every llmgate process that points at it.

The same rows and running totals as the SQLite store (store.py), kept in Redis
structures (the layout is at the top of lua/common.lua): per scope key a sorted set
of reservation ids scored by their time, a hash of their amounts, and per window
length the sums of the rows after a cutoff that each call moves forward by counting
only the rows that left. Exact, not approximate: every reservation is its own
member with its own time, so a window counts exactly the reservations stamped
inside it, and "retry after" is the moment the oldest rows that free enough leave.
Bucketed counters (one per second or minute) would be cheaper to keep but count a
whole bucket in or out at the window's edge: they over- or under-admit there.

Atomic across processes: each operation (reserve, settle, release, ...) is one Lua
script, run by EVALSHA (loaded again by EVAL when a restarted server has lost it).
Redis runs one script at a time from start to end, so a reserve's check and its
writes are one step: no read-modify-write happens in Python.

Time: a caller may pass `now` (the tests do); otherwise the script reads the Redis
server's clock, so every process of a fleet cuts its windows at the same instant
even when their own clocks disagree.

Crashes: an unsettled reservation counts for `reservation_ttl` seconds at most.
After that any reserve or states call takes it out of every window, so a process
killed with calls in flight holds no budget for longer than the TTL even if it never
comes back. The TTL must be longer than the longest call, or a live call's
reservation stops counting before it settles; its settle then still puts the
actual usage back at the reservation's time (the record lives 2 x TTL), so a long
call is counted late, never lost.

Unreachable Redis: every method raises `QuotaUnavailable` (the gateway answers 503
`quota_unavailable`, or admits unmetered with `quota.on_unavailable: allow`).
Both clients (redis-py for the blocking store, redis_pipe.py on the event loop)
connect again on the next call, so service resumes when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from addon.quota import store as store_module
from addon.quota.backend import DuplicateReservation, QuotaUnavailable
from addon.quota.redis_pipe import RedisPipe, Script
from addon.quota.store import _state, _Sums
from addon.quota.windows import (
    KINDS,
    LIMIT_NAMES,
    AppliedWindow,
    Demand,
    Exceeded,
    WindowState,
    ceil_ms,
    limit_units,
    violations,
    worse,
)

log = logging.getLogger("llmgate.quota")

PREFIX = "llmgate:quota:"
# The longest call llmgate allows to wait for a first byte is 600 s by default; twice
# that plus a minute covers a call that retries once and streams for a while.
DEFAULT_TTL = 2 * 600.0 + 60.0
_LUA = Path(__file__).with_name("lua")
_OPS = ("reserve", "settle", "release", "release_instances", "states", "prune")


def _script(name: str) -> str:
    return (_LUA / "common.lua").read_text() + "\n" + (_LUA / f"{name}.lua").read_text()


def _num(x: float) -> str:
    return repr(float(x))  # the shortest text that is exactly this double


def _pairs(reply: list[Any]) -> list[tuple[list[int], float | None]]:
    """Per distinct (scope key, window) pair, in order: 8 sums and the oldest ts."""
    return [
        ([int(v) for v in reply[i : i + 8]], float(reply[i + 8]) if reply[i + 8] else None)
        for i in range(0, len(reply), 9)
    ]


def _sums(
    windows: list[AppliedWindow], pairs: list[tuple[list[int], float | None]]
) -> dict[tuple[str, int], _Sums]:
    """The script's pairs, keyed as store._state expects (same first-seen order)."""
    keys = list(dict.fromkeys((a.scope_key, a.window.window_seconds) for a in windows))
    return dict(zip(keys, pairs, strict=True))


def reserve_args(
    ttl: float,
    reservation_id: str,
    windows: list[AppliedWindow],
    demand: Demand,
    now: float | None,
    prune: bool,
) -> list[object]:
    """The reserve script's ARGV after the prefix (see lua/reserve.lua)."""
    args: list[object] = [
        "" if now is None else _num(now),
        _num(ttl),
        reservation_id,
        *demand.units(),
        len(windows),
    ]
    for a in windows:
        caps = [getattr(a.window, name) for name in LIMIT_NAMES]
        args += [a.scope_key, a.window.window_seconds]
        args += ["" if c is None else limit_units(k, c) for k, c in zip(KINDS, caps, strict=True)]
    args.append(int(prune))
    return args


def reserve_result(
    reply: list[Any], reservation_id: str, windows: list[AppliedWindow], demand: Demand
) -> list[WindowState] | Exceeded:
    """The reserve script's answer as the SQLite store gives it."""
    if reply[0] == -1:
        raise DuplicateReservation(reservation_id)
    status, when, encoded, *rest = reply
    now, want = float(when), demand.units()
    sums = _sums(windows, _pairs(encoded))
    if status == 0:
        # The script found the broken limits and, for each, the row whose leaving frees
        # enough; the Exceeded values are built by the same code as SQLite's.
        frees = {(w - 1, i - 1): at for w, i, at in rest[0]}
        worst: Exceeded | None = None
        for n, a in enumerate(windows):

            def wait(i: int, excess: int, n: int = n, a: AppliedWindow = a) -> float:
                at = frees.get((n, i), b"")
                if not at:  # unreachable: the demand alone fits, so freeing all suffices
                    return float(a.window.window_seconds)
                return ceil_ms(float(at) + a.window.window_seconds - now)

            units = sums[a.scope_key, a.window.window_seconds][0]
            for found in violations(a, units, want, wait):
                worst = worse(worst, found)
        assert worst is not None, "redis refused a reserve that breaks no limit"
        return worst
    # The admitted demand now counts in every window it was checked against.
    after = {
        kw: (
            [*u[:4], *(r + d for r, d in zip(u[4:], want, strict=True))],
            now if o is None else min(o, now),
        )
        for kw, (u, o) in sums.items()
    }
    return [_state(a, after) for a in windows]


def settle_args(settlements: list[tuple[str, Demand]]) -> list[object]:
    return [x for rid, d in settlements for x in (rid, *d.units())]


def _client_options(timeout: float) -> dict[str, Any]:
    # One retry, at once: it reconnects a connection that a restarted Redis closed;
    # a Redis that stays down fails the call after one more attempt. `timeout`
    # bounds connect and reply: past it the call is refused (fail closed) rather
    # than left waiting on a Redis that does not answer.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }


class RedisQuotaStore:
    """Quota counters in one Redis database; safe to share between threads."""

    def __init__(
        self,
        url: str,
        reservation_ttl: float = DEFAULT_TTL,
        prefix: str = PREFIX,
        timeout: float = 2.0,
    ) -> None:
        if reservation_ttl <= 0:
            raise ValueError("reservation_ttl must be positive")
        self.ttl = reservation_ttl
        self._prefix = prefix
        self._reserves = 0
        self._redis = redis.Redis.from_url(url, **_client_options(timeout))
        # register_script sends EVALSHA, and SCRIPT LOAD only when the server does
        # not know the script (first use, or after a restart emptied its cache).
        self._ops: dict[str, Callable[..., Any]] = {
            name: self._redis.register_script(_script(name)) for name in _OPS
        }

    def _run(self, op: str, *args: object) -> Any:
        try:
            return self._ops[op](keys=[], args=[self._prefix, *args])
        except redis.RedisError as exc:
            raise QuotaUnavailable(f"redis quota store: {exc}") from exc

    def reserve(
        self,
        reservation_id: str,
        windows: list[AppliedWindow],
        demand: Demand,
        now: float | None = None,
    ) -> list[WindowState] | Exceeded:
        """Admit `demand` in every window or in none; Exceeded names the longest wait."""
        # Like SQLite's, every PRUNE_EVERY-th reserve of a store drops its keys' rows
        # older than every window ever used (the script knows the horizon).
        self._reserves += 1
        prune = self._reserves % store_module.PRUNE_EVERY == 0
        args = reserve_args(self.ttl, reservation_id, windows, demand, now, prune)
        return reserve_result(self._run("reserve", *args), reservation_id, windows, demand)

    def settle(self, reservation_id: str, actual: Demand, now: float | None = None) -> None:
        """Replace the reserved amounts by the actual usage; the time stays the reservation's."""
        self.settle_many([(reservation_id, actual)])

    def settle_many(self, settlements: list[tuple[str, Demand]]) -> None:
        """Settle several reservations in one script: one round trip, one atomic step."""
        if settlements:
            self._run("settle", *settle_args(settlements))

    def release(self, reservation_id: str) -> None:
        self._run("release", reservation_id)

    def release_instances(self, instance_ids: list[str]) -> int:
        """Release every unsettled reservation of these (dead) llmgate instances."""
        # A short prefix would match other instances' reservations; ids are 16 hex digits.
        prefixes = [i for i in dict.fromkeys(instance_ids) if len(i) >= 8]
        return int(self._run("release_instances", *prefixes)) if prefixes else 0

    def states(self, windows: list[AppliedWindow], now: float | None = None) -> list[WindowState]:
        args: list[object] = ["" if now is None else _num(now), _num(self.ttl), len(windows)]
        for a in windows:
            args += [a.scope_key, a.window.window_seconds]
        _, encoded = self._run("states", *args)
        sums = _sums(windows, _pairs(encoded))
        return [_state(a, sums) for a in windows]

    def prune(self, older_than: float, scope_keys: Iterable[str] | None = None) -> int:
        """Delete rows stamped before `older_than` (of `scope_keys` only, if given)."""
        keys = [] if scope_keys is None else list(scope_keys)
        if scope_keys is not None and not keys:
            return 0
        return int(self._run("prune", _num(older_than), *keys))

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> RedisQuotaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRedisQuota:
    """The reserve and settle scripts on the event loop, over one pipelined connection.

    What the gateway uses. A reserve is sent the moment it is asked for (`send_reserve`),
    so the caller can do other work while Redis runs it; unlike a blocking call on the
    loop, a slow Redis delays only the calls that wait on it. See redis_pipe.py for why
    this is not redis.asyncio.
    """

    def __init__(
        self,
        url: str,
        reservation_ttl: float = DEFAULT_TTL,
        prefix: str = PREFIX,
        timeout: float = 2.0,
    ) -> None:
        self.ttl = reservation_ttl
        self._prefix = prefix
        self._reserves = 0
        self._pipe = RedisPipe(url, timeout)
        self._reserve = Script(self._pipe, _script("reserve"))
        self._settle = Script(self._pipe, _script("settle"))

    def send_reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> Awaitable[list[WindowState] | Exceeded]:
        """The reserve leaves now; await what this returns for its answer."""
        self._reserves += 1
        prune = self._reserves % store_module.PRUNE_EVERY == 0
        args = [self._prefix, *reserve_args(self.ttl, reservation_id, windows, demand, None, prune)]
        return self._answer(self._reserve.send(*args), args, reservation_id, windows, demand)

    async def _answer(
        self,
        sent: asyncio.Future[Any],
        args: list[object],
        reservation_id: str,
        windows: list[AppliedWindow],
        demand: Demand,
    ) -> list[WindowState] | Exceeded:
        reply = await self._reserve.result(sent, *args)
        return reserve_result(reply, reservation_id, windows, demand)

    async def reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> list[WindowState] | Exceeded:
        return await self.send_reserve(reservation_id, windows, demand)

    def send_settle(self, settlements: list[tuple[str, Demand]]) -> Awaitable[Any]:
        """The settle leaves now; await what this returns to know it was applied."""
        args = [self._prefix, *settle_args(settlements)]
        return self._settle.result(self._settle.send(*args), *args)

    async def settle_many(self, settlements: list[tuple[str, Demand]]) -> None:
        await self.send_settle(settlements)

    async def close(self) -> None:
        self._pipe.close()
