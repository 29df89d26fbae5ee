"""Sliding-window quotas in SQLite that concurrent requests cannot race.

`reserve` writes one `quota_ledger` row per (reservation, distinct scope key) with
the demand, stamped with the reservation time. Every window bound to that key (a
user's minute and hour, or `group:dev` for every member) counts the same rows: those
with `ts > now - window_seconds`. A row counts in full until `settle` replaces its
amounts by the actual usage (keeping its `ts`); `release` deletes it.

Every `QuotaStore` is a guest of the file (lease.py): it waits at open until a
process that owned the file, and decided its calls from memory (owned.py), has
written them out and given it up.

Why it is race-free, across threads and processes sharing the file: `reserve` is
one `BEGIN IMMEDIATE` transaction. IMMEDIATE takes SQLite's single write lock at
BEGIN, before the first read, so the sums it checks cannot change until it commits
or rolls back; any other connection, in this process or another, waits (busy
timeout 30 s) at its own BEGIN. Check-then-insert is therefore atomic. A deferred
BEGIN would not be: two connections could read the same sums, both decide "fits",
and both insert (or one fail with SQLITE_BUSY on upgrade). A denial writes nothing,
so no window keeps a partial increment. WAL mode lets `states` read a consistent
snapshot without blocking, or being blocked by, writers.

Speed: summing a window's rows costs ~0.25 us a row, which a busy global or daily
window would pay inside the write lock on every call. So `quota_sums` keeps, per
(scope key, window length), the sums of the rows with `ts > cutoff`. A read subtracts
the rows between the cutoff and `now - window_seconds` (or adds them back, if the
cutoff is ahead), in the one statement that reads the sums row; a reserve writes the
row back at the window's start only once a few dozen rows have left it (`_all_sums`).
Triggers on `quota_ledger` keep every sums row that counts a row in step with it,
inside the statement that writes the row, whoever writes it. Costs are integer
nano-dollars (`cost_nusd`) so the sums never drift.

The sums were `quota_totals`, kept from Python, before the triggers: opening a store
drops that table, so that a process of an older llmgate still sharing the file fails
(quota unavailable) instead of counting a row twice.

Stale rows (a crashed process never settled) stop counting once older than their
windows; `prune` deletes rows older than the longest window ever reserved with
(kept in `quota_meta`, so one process's short windows never prune another's long
one). `reserve` prunes its own scope keys every `PRUNE_EVERY` calls.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from addon.quota.backend import DuplicateReservation
from addon.quota.lease import OwnerWillNotHandOver, QuotaLease
from addon.quota.windows import (
    AppliedWindow,
    Demand,
    Exceeded,
    Units,
    WindowState,
    ceil_ms,
    demand_of,
    violations,
    worse,
)
from addon.sqlite_wal import checkpoint, connect_wal, never_checkpoint, retry_locked

PRUNE_EVERY = 1000
MOVE_AFTER_ROWS = 32  # a sums row's cutoff moves once this many rows have left its window
_COLS = ("requests", "input_tokens", "output_tokens", "cost_nusd")


def _counts(*changes: str) -> str:
    """SET terms that add ("+NEW") or take back ("-OLD") a ledger row's amounts in the
    used (settled) or the reserved columns of a sums row."""
    row_share = {"u": "{row}.settled * {row}.{c}", "r": "(1 - {row}.settled) * {row}.{c}"}
    return ", ".join(
        f"{p}_{c} = {p}_{c}"
        + "".join(f" {change[0]} " + row_share[p].format(row=change[1:], c=c) for change in changes)
        for p in "ur"
        for c in _COLS
    )


# WITHOUT ROWID clusters rows by (scope_key, ts): window ranges are one index range
# that reads amounts in place. The unique index serves settle/release and rejects a
# reservation id used twice. The triggers make a settle one UPDATE and a release one
# DELETE, instead of a read and two sums updates from Python for each: a reserve and
# its settle went from ~120 to ~107 us of CPU in a loop of their own. A row's
# scope_key and ts never change, which the sums' bookkeeping relies on.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS quota_ledger (
    scope_key TEXT NOT NULL, ts REAL NOT NULL, reservation_id TEXT NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL" for c in _COLS)}, settled INTEGER NOT NULL,
    PRIMARY KEY (scope_key, ts, reservation_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS quota_ledger_reservation
    ON quota_ledger (reservation_id, scope_key);
DROP TABLE IF EXISTS quota_totals;
CREATE TABLE IF NOT EXISTS quota_sums (
    scope_key TEXT NOT NULL, window_seconds INTEGER NOT NULL, cutoff REAL NOT NULL,
    {", ".join(f"{p}_{c} INTEGER NOT NULL" for p in "ur" for c in _COLS)},
    PRIMARY KEY (scope_key, window_seconds)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota_meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS quota_row_counted AFTER INSERT ON quota_ledger BEGIN
    UPDATE quota_sums SET {_counts("+NEW")}
    WHERE scope_key = NEW.scope_key AND cutoff < NEW.ts;
END;
CREATE TRIGGER IF NOT EXISTS quota_row_recounted AFTER UPDATE ON quota_ledger BEGIN
    UPDATE quota_sums SET {_counts("-OLD", "+NEW")}
    WHERE scope_key = NEW.scope_key AND cutoff < NEW.ts;
END;
CREATE TRIGGER IF NOT EXISTS quota_row_uncounted AFTER DELETE ON quota_ledger BEGIN
    UPDATE quota_sums SET {_counts("-OLD")}
    WHERE scope_key = OLD.scope_key AND cutoff < OLD.ts;
END;
CREATE TRIGGER IF NOT EXISTS quota_row_stays BEFORE UPDATE OF scope_key, ts ON quota_ledger
WHEN OLD.scope_key IS NOT NEW.scope_key OR OLD.ts IS NOT NEW.ts BEGIN
    SELECT RAISE(ABORT, 'a quota_ledger row keeps its scope_key and ts');
END;
"""


def _window_sums_sql(windows: int) -> str:
    """Per window of one scope key that has a sums row: its sums less the rows that have
    left the window since its cutoff (the cutoff may lag, see `_all_sums`), how many
    rows that was, and the window's oldest counted ts. `?1` key, `?2` now, then the
    window lengths."""
    lengths = ", ".join(f"?{3 + i}" for i in range(windows))
    left = {"u": "l.settled * l.{c}", "r": "(1 - l.settled) * l.{c}"}
    return (
        "SELECT s.window_seconds, s.cutoff, "
        + ", ".join(
            f"s.{p}_{c} - COALESCE(SUM({left[p].format(c=c)}), 0)" for p in "ur" for c in _COLS
        )
        + ", COUNT(l.ts), (SELECT MIN(ts) FROM quota_ledger"
        " WHERE scope_key = ?1 AND ts > ?2 - s.window_seconds)"
        " FROM quota_sums s LEFT JOIN quota_ledger l ON l.scope_key = s.scope_key"
        " AND l.ts > s.cutoff AND l.ts <= ?2 - s.window_seconds"
        f" WHERE s.scope_key = ?1 AND s.window_seconds IN ({lengths})"
        " GROUP BY s.window_seconds"
    )


_WINDOW_SUMS = {n: _window_sums_sql(n) for n in range(1, 5)}
_OLDEST = "SELECT MIN(ts) FROM quota_ledger WHERE scope_key = ? AND ts > ?"
_RANGE = (
    f"SELECT settled, {', '.join(f'SUM({c})' for c in _COLS)} FROM quota_ledger"
    " WHERE scope_key = ? AND ts > ? AND ts <= ? GROUP BY settled"
)
_SETTLE = (
    f"UPDATE quota_ledger SET {', '.join(f'{c} = ?' for c in _COLS)}, settled = 1"
    " WHERE reservation_id = ?"
)
_RELEASE = "DELETE FROM quota_ledger WHERE reservation_id = ?"
# A quota_ledger row: scope key, ts, reservation id, the four amounts, settled.
LedgerRow = tuple[str, float, str, int, int, int, int, int]
# Per (scope key, window length): used units + reserved units, and the oldest counted ts.
_Sums = tuple[list[int], float | None]


def _state(a: AppliedWindow, sums: dict[tuple[str, int], _Sums]) -> WindowState:
    units, oldest = sums[a.scope_key, a.window.window_seconds]
    reset = None if oldest is None else oldest + a.window.window_seconds
    return WindowState(a.window, a.scope_key, demand_of(units[:4]), demand_of(units[4:]), reset)


class QuotaStore:
    """Quota counters in one SQLite file; one connection, used by one thread at a time."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 30_000, guest: bool = True) -> None:
        """`busy_timeout_ms=0` makes a store that fails at once (SQLITE_BUSY) instead of
        waiting for another writer: the gateway's event-loop fast path uses one.

        A `guest` store first waits (as long as for a writer) for the file's owner,
        if it has one, to write out what it decided from memory (lease.py). The quota
        worker opens its own connections with `guest=False`: it holds the lease itself.
        """
        self._lease: QuotaLease | None = None
        if guest:
            self._lease = QuotaLease(path)
            try:
                self._lease.join(busy_timeout_ms / 1000)
            except OwnerWillNotHandOver as exc:
                self._lease.close()
                raise sqlite3.OperationalError(f"database is locked: {exc}") from exc
        self._conn = connect_wal(path, busy_timeout_ms)
        # In the script itself: executescript would otherwise commit an open BEGIN.
        retry_locked(lambda: self._conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;"))
        self._horizon = 0  # longest window this store has recorded in quota_meta
        self._reserves = 0

    def reserve(
        self,
        reservation_id: str,
        windows: list[AppliedWindow],
        demand: Demand,
        now: float | None = None,
    ) -> list[WindowState] | Exceeded:
        """Admit `demand` in every window or in none; Exceeded names the longest wait."""
        now = time.time() if now is None else now
        with self._write():
            result = self._reserve(reservation_id, windows, demand, now)
        self._reserved(windows, result, now)
        return result

    def reserve_many(
        self, requests: Sequence[tuple[str, list[AppliedWindow], Demand]]
    ) -> list[list[WindowState] | Exceeded]:
        """Several reserves, in order, in one transaction: each sees the ones before it,
        as if they had committed one by one, and they share one lock and one commit.

        If any of them raises (a reservation id used twice), the whole transaction is
        rolled back and the exception propagates: the caller reserves them one by one
        to learn which.
        """
        now = time.time()
        with self._write():
            results = [self._reserve(*request, now) for request in requests]
        for (_, windows, _), result in zip(requests, results, strict=True):
            self._reserved(windows, result, now)
        return results

    def _reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand, now: float
    ) -> list[WindowState] | Exceeded:
        """One reserve inside the caller's write transaction."""
        want = demand.units()
        keys = list(dict.fromkeys(a.scope_key for a in windows))
        longest = max((a.window.window_seconds for a in windows), default=0)
        sums, rewrite = self._all_sums(windows, now)
        worst: Exceeded | None = None
        for a in windows:
            units = sums[a.scope_key, a.window.window_seconds][0]
            for found in self._violations(a, units, want, now):
                worst = worse(worst, found)
        if worst is not None:
            return worst  # nothing was written
        # The sums first, then the rows, whose trigger adds them to every sums row of
        # their key: the other way round, REPLACE would drop what the trigger added.
        if rewrite:
            self._conn.executemany(
                f"INSERT OR REPLACE INTO quota_sums VALUES ({', '.join('?' * 11)})",
                [(k, w, now - w, *sums[k, w][0]) for k, w in rewrite],
            )
        for key in keys:
            try:
                self._conn.execute(
                    "INSERT INTO quota_ledger VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                    (key, now, reservation_id, *want),
                )
            except sqlite3.IntegrityError as exc:  # _write rolls the whole reserve back
                raise DuplicateReservation(reservation_id) from exc
        if longest > self._horizon:
            self._store_horizon(longest)
        # The admitted demand now counts in every window it was checked against.
        after = {
            kw: (
                [*u[:4], *(r + d for r, d in zip(u[4:], want, strict=True))],
                now if old is None else min(old, now),
            )
            for kw, (u, old) in sums.items()
        }
        return [_state(a, after) for a in windows]

    def _reserved(
        self, windows: list[AppliedWindow], result: list[WindowState] | Exceeded, now: float
    ) -> None:
        """After an admitting reserve's commit: its horizon is stored; its scope keys
        are pruned every PRUNE_EVERY reserves."""
        if isinstance(result, Exceeded):
            return
        self._horizon = max(self._horizon, *(a.window.window_seconds for a in windows), 0)
        self._reserves += 1
        if self._reserves % PRUNE_EVERY == 0:
            keys = list(dict.fromkeys(a.scope_key for a in windows))
            self.prune(now - self._stored_horizon(), keys)

    def settle(self, reservation_id: str, actual: Demand, now: float | None = None) -> None:
        """Replace the reserved amounts by the actual usage; `ts` stays the reservation time.

        `now` is accepted for symmetry with `reserve`; settling does not move a row in time.
        """
        self.settle_many([(reservation_id, actual)])

    def settle_many(self, settlements: list[tuple[str, Demand]]) -> None:
        """Settle several reservations in one transaction (one commit, one lock)."""
        with self._write():
            self._conn.executemany(
                _SETTLE,
                [(*actual.units(), reservation_id) for reservation_id, actual in settlements],
            )

    def release(self, reservation_id: str) -> None:
        """The call never went out: it counts nowhere."""
        with self._write():
            self._conn.execute(_RELEASE, (reservation_id,))

    def seconds_until_freed(self, a: AppliedWindow, index: int, excess: int, now: float) -> float:
        """How long until `excess` units of kind `index` have left `a`'s window."""
        return self._wait(a, index, excess, now)

    def release_instances(self, instance_ids: list[str]) -> int:
        """Release every unsettled reservation of these (dead) llmgate instances.

        Reservation ids are request ids, which begin with their process's instance
        id. Returns the ledger rows deleted (one per reservation and scope key).
        """
        # A short prefix would match other instances' reservations (an empty one,
        # all of them); instance ids are 16 hex digits.
        prefixes = [i for i in dict.fromkeys(instance_ids) if len(i) >= 8]
        if not prefixes:
            return 0
        # rowcount, not total_changes: the latter also counts the triggers' sums rows.
        with self._write():
            # A range on the reservation index, then the exact prefix test.
            released = self._conn.executemany(
                "DELETE FROM quota_ledger"
                " WHERE reservation_id >= ?1 AND reservation_id < ?1 || char(1114111)"
                " AND substr(reservation_id, 1, length(?1)) = ?1 AND settled = 0",
                [(prefix,) for prefix in prefixes],
            ).rowcount
        return released

    def states(self, windows: list[AppliedWindow], now: float | None = None) -> list[WindowState]:
        now = time.time() if now is None else now
        sums = self.sums(windows, now)
        return [_state(a, sums) for a in windows]

    def sums(self, windows: list[AppliedWindow], now: float) -> dict[tuple[str, int], _Sums]:
        """Per (scope key, window length): used + reserved units now, and the oldest
        counted ts; one snapshot across scope keys, written nothing."""
        self._conn.execute("BEGIN")
        try:
            return self._all_sums(windows, now)[0]
        finally:
            self._conn.execute("COMMIT")

    def rows_after(
        self, key: str, after: float, until: float
    ) -> list[tuple[float, str, int, Units]]:
        """The key's rows with `after < ts <= until`, oldest first: ts, reservation id,
        settled, amounts."""
        return [
            (ts, reservation_id, settled, (r, i, o, c))
            for ts, reservation_id, settled, r, i, o, c in self._conn.execute(
                f"SELECT ts, reservation_id, settled, {', '.join(_COLS)} FROM quota_ledger"
                " WHERE scope_key = ? AND ts > ? AND ts <= ? ORDER BY ts",
                (key, after, until),
            )
        ]

    def first_after(self, key: str, after: float) -> float | None:
        """The ts of the key's oldest row with `ts > after`, if any."""
        return self._conn.execute(_OLDEST, (key, after)).fetchone()[0]

    def write_behind(
        self,
        rows: list[LedgerRow],
        settles: list[tuple[str, Units]],
        releases: list[str],
        longest: int,
    ) -> None:
        """Write what another store decided (owned.py), in one transaction: new rows
        (settled already, if their call ended before they were written), settles and
        releases of rows written before. No reservation is in two of the three.

        A reservation id this file already has keeps its row (INSERT OR IGNORE): its
        decider refused a duplicate it knew of, and counted any other one in full,
        which can only have made it stricter than the file.
        """
        with self._write():
            self._conn.executemany(
                "INSERT OR IGNORE INTO quota_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            if settles:
                self._conn.executemany(_SETTLE, [(*units, rid) for rid, units in settles])
            if releases:
                self._conn.executemany(_RELEASE, [(rid,) for rid in releases])
            if longest > self._horizon:
                self._store_horizon(longest)
        self._horizon = max(self._horizon, longest)

    def prune(self, older_than: float, scope_keys: Iterable[str] | None = None) -> int:
        """Delete rows stamped before `older_than` (of `scope_keys` only, if given)."""
        # Per key it is an index range; for all keys, a table scan (maintenance only).
        by_key = "" if scope_keys is None else "scope_key = ? AND "
        params = [(older_than,)] if scope_keys is None else [(k, older_than) for k in scope_keys]
        # The delete trigger takes each row out of every sums row that counted it, so
        # the sums stay right whatever their cutoff: none is dropped (and recounted).
        with self._write():
            # rowcount, not total_changes: the latter also counts the triggers' sums rows.
            deleted = self._conn.executemany(
                f"DELETE FROM quota_ledger WHERE {by_key}ts < ?", params
            ).rowcount
        return deleted

    def checkpoint(self) -> None:
        checkpoint(self._conn)

    def never_checkpoint(self) -> None:
        never_checkpoint(self._conn)

    def close(self) -> None:
        self._conn.close()
        if self._lease is not None:
            self._lease.close()

    def __enter__(self) -> QuotaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _store_horizon(self, longest: int) -> None:
        self._conn.execute(
            "INSERT INTO quota_meta VALUES ('horizon', ?) ON CONFLICT (name)"
            " DO UPDATE SET value = max(value, excluded.value)",
            (longest,),
        )

    def stored_horizon(self) -> float:
        """The longest window any store has reserved with (rows older are pruned)."""
        return self._stored_horizon()

    def _stored_horizon(self) -> float:
        row = self._conn.execute("SELECT value FROM quota_meta WHERE name = 'horizon'").fetchone()
        return max(self._horizon, row[0] if row else 0)

    def _all_sums(
        self, windows: list[AppliedWindow], now: float
    ) -> tuple[dict[tuple[str, int], _Sums], set[tuple[str, int]]]:
        """Each window's sums now, in one statement per scope key; and the windows whose
        sums row a reserve should write again at cutoff `now - window_seconds`.

        A sums row counts the rows with `ts > cutoff` (the triggers keep it so), however
        old its cutoff: the read subtracts the rows between the cutoff and the window's
        start. So a reserve moves a cutoff only once MOVE_AFTER_ROWS rows have left, or
        when the row is missing, or when its cutoff is ahead of the window's start
        (another process's clock: those rows are added back). Reading a key's windows
        in one statement, and writing their sums rows back only now and then, took
        reserve + settle from 0.127 to 0.116 ms (median, bench/quota_store.py).
        """
        lengths: dict[str, list[int]] = {}
        for a in windows:
            seconds = lengths.setdefault(a.scope_key, [])
            if a.window.window_seconds not in seconds:
                seconds.append(a.window.window_seconds)
        out: dict[tuple[str, int], _Sums] = {}
        rewrite: set[tuple[str, int]] = set()
        for key, all_seconds in lengths.items():
            for i in range(0, len(all_seconds), len(_WINDOW_SUMS)):
                chunk = all_seconds[i : i + len(_WINDOW_SUMS)]
                rows = self._conn.execute(_WINDOW_SUMS[len(chunk)], (key, now, *chunk))
                for seconds, cutoff, *sums, left, oldest in rows:
                    target = now - seconds
                    if target < cutoff:
                        sums = self._add_range(key, target, cutoff, sums, 1)
                    if target < cutoff or left >= MOVE_AFTER_ROWS:
                        rewrite.add((key, seconds))
                    out[key, seconds] = (sums, oldest)
            for seconds in all_seconds:
                if (key, seconds) not in out:  # no sums yet: count the whole window once
                    target = now - seconds
                    sums = self._add_range(key, target, math.inf, [0] * 8, 1)
                    oldest = self._conn.execute(_OLDEST, (key, target)).fetchone()[0]
                    out[key, seconds] = (sums, oldest)
                    rewrite.add((key, seconds))
        return out, rewrite

    def _add_range(self, key: str, lo: float, hi: float, sums: list[int], sign: int) -> list[int]:
        for settled, *units in self._conn.execute(_RANGE, (key, lo, hi)):
            base = 0 if settled else 4
            for i, x in enumerate(units):
                sums[base + i] += sign * x
        return sums

    def _violations(
        self, a: AppliedWindow, sums: list[int], want: Units, now: float
    ) -> Iterator[Exceeded]:
        return violations(a, sums, want, lambda i, excess: self._wait(a, i, excess, now))

    def _wait(self, a: AppliedWindow, index: int, excess: int, now: float) -> float:
        """Free the window's rows oldest first, each at ts + window, until `excess` has gone."""
        seconds = a.window.window_seconds
        freed = 0
        for ts, amount in self._conn.execute(  # lazily: usually the first rows suffice
            f"SELECT ts, {_COLS[index]} FROM quota_ledger WHERE scope_key = ? AND ts > ?"
            " ORDER BY ts",
            (a.scope_key, now - seconds),
        ):
            freed += amount
            if freed >= excess:
                return ceil_ms(ts + seconds - now)
        return float(seconds)  # unreachable: the demand alone fits, so freeing all suffices
