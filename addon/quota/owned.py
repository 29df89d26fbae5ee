"""Quota windows decided from memory by the owner of their SQLite file, and written behind.

While a process owns the quota file (lease.py: nobody else has it open), nobody else
can write a row or read a sum, so the file holds nothing the process does not know.
`OwnedQuota` then keeps, per (scope key, window length), what the file's `quota_sums`
row and triggers would give: the used and reserved sums of the rows with
`ts > cutoff`. A reserve checks and counts in memory, with no SQLite statement, and
queues its rows; `flush` writes the queue in one transaction a moment later (the
worker: every SETTLE_DELAY), and before anything reads the file. Measured in the
proxy at one connection, every feature on (BENCH.md, issue 14): without any quota
SQLite work a call's median was ~0.2 ms lower; the rows batched behind cost no
more than writing nothing, and this class took 0.1 ms off the median (ABBA).

Rows leave a window oldest first. `_Window` holds the rows of
`(cutoff, horizon]` (`ahead`), loaded from the file a little (LOOKAHEAD) beyond the
window's start when the next row to leave (`after`) is due, so that a day-long
window holds no day of rows in memory.

What memory cannot answer cheaply is asked of the file after a flush: a window's
first sums, how long a refused call must wait, a clock that ran back, a settle or
release of a reservation this process did not make, prune and crash recovery (the
last two then drop the windows they touched, which are read again when next used).

A crash loses what was not yet written: at most SETTLE_DELAY of decisions, the same
span as the settles the worker already queues. Their calls died with the process,
and start-up recovery releases the unsettled reservations of dead processes anyway.
"""

from __future__ import annotations

import bisect
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from addon.quota.backend import DuplicateReservation, QuotaUnavailable
from addon.quota.store import PRUNE_EVERY, LedgerRow, QuotaStore
from addon.quota.windows import (
    AppliedWindow,
    Demand,
    Exceeded,
    Units,
    WindowState,
    demand_of,
    violations,
    worse,
)

LOOKAHEAD_S = 2.0  # at most this much of a window's next leavers is held in memory
_NO_UNITS: Units = (0, 0, 0, 0)


@dataclass(eq=False)  # identity: a row is found in `ahead` by being the same row
class _Row:
    ts: float
    units: Units
    settled: bool


@dataclass(eq=False)
class _Window:
    cutoff: float  # the sums count the rows with ts > cutoff
    sums: list[int]  # used units, then reserved units (as quota_sums)
    horizon: float  # `ahead` holds every row with cutoff < ts <= horizon
    after: float | None  # the oldest ts > horizon, None if there is none
    after_known: bool = True  # else `after` is asked of the file when needed
    ahead: list[_Row] = field(default_factory=list)

    def count(self, row: _Row, sign: int) -> None:
        if row.ts > self.cutoff:
            base = 0 if row.settled else 4
            for i, x in enumerate(row.units):
                self.sums[base + i] += sign * x

    def oldest(self) -> float | None:
        return self.ahead[0].ts if self.ahead else self.after


@dataclass(eq=False)
class _Open:
    row: _Row
    keys: tuple[str, ...]


class OwnedQuota:
    """The quota windows of a file this process owns; a QuotaBackend, used by one thread
    at a time (the worker's event loop)."""

    def __init__(self, store: QuotaStore) -> None:
        self.store = store  # opened with guest=False: the caller holds the lease
        self._windows: dict[tuple[str, int], _Window] = {}
        self._by_key: dict[str, list[_Window]] = {}
        self._open: dict[str, _Open] = {}  # unsettled reservations decided here
        # Not yet in the file: new rows (a settle before the write just changes the
        # row), then settles and releases of rows written before.
        self._new_rows: dict[str, _Open] = {}
        self._settles: dict[str, Units] = {}
        self._releases: list[str] = []
        self._longest = 0
        self._reserves = 0
        # The file refused the last write: reserves are refused (503) until it takes one,
        # rather than counted where no other process, and no restart, would see them.
        self._write_error: sqlite3.Error | None = None

    @property
    def failing(self) -> bool:
        """The file refused the last write (reserves are refused until it takes one)."""
        return self._write_error is not None

    @property
    def unwritten(self) -> int:
        return len(self._new_rows) + len(self._settles) + len(self._releases)

    def reserve(
        self,
        reservation_id: str,
        windows: list[AppliedWindow],
        demand: Demand,
        now: float | None = None,
    ) -> list[WindowState] | Exceeded:
        """Admit `demand` in every window or in none, as QuotaStore.reserve would."""
        now = time.time() if now is None else now
        if reservation_id in self._open:
            raise DuplicateReservation(reservation_id)
        if self._write_error is not None:  # fail closed until the file takes writes again
            try:
                self.flush()
            except sqlite3.Error as exc:
                raise QuotaUnavailable(f"the quota file takes no writes: {exc}") from exc
        want = demand.units()
        current = {(a.scope_key, a.window.window_seconds): self._window(a, now) for a in windows}
        worst: Exceeded | None = None
        for a in windows:
            sums = current[a.scope_key, a.window.window_seconds].sums
            for found in self._violations(a, sums, want, now):
                worst = worse(worst, found)
        if worst is not None:
            return worst
        keys = tuple(dict.fromkeys(a.scope_key for a in windows))
        row = _Row(now, want, settled=False)
        if keys:
            self._open[reservation_id] = self._new_rows[reservation_id] = _Open(row, keys)
        for key in keys:
            for w in self._by_key.get(key, ()):
                self._add(w, row)
        self._longest = max(self._longest, *(a.window.window_seconds for a in windows), 0)
        states = [self._state(a, current[a.scope_key, a.window.window_seconds]) for a in windows]
        self._reserves += 1
        if keys and self._reserves % PRUNE_EVERY == 0:  # `prune` writes everything first
            self.prune(now - max(self._longest, self.store.stored_horizon()), keys)
        return states

    def settle(self, reservation_id: str, actual: Demand, now: float | None = None) -> None:
        self.settle_many([(reservation_id, actual)])

    def settle_many(self, settlements: list[tuple[str, Demand]]) -> None:
        elsewhere: list[tuple[str, Demand]] = []  # not decided here, or settled twice
        for reservation_id, actual in settlements:
            entry = self._open.pop(reservation_id, None)
            if entry is None:
                elsewhere.append((reservation_id, actual))
                continue
            units = actual.units()
            self._recount(entry, units, settled=True)
            if reservation_id not in self._new_rows:
                self._settles[reservation_id] = units
        if elsewhere:
            self._through_file(lambda: self.store.settle_many(elsewhere))

    def release(self, reservation_id: str) -> None:
        entry = self._open.pop(reservation_id, None)
        if entry is None:
            self._through_file(lambda: self.store.release(reservation_id))
            return
        self._recount(entry, _NO_UNITS, settled=False)
        for key in entry.keys:
            for w in self._by_key.get(key, ()):
                if entry.row in w.ahead:
                    w.ahead.remove(entry.row)
                if w.after == entry.row.ts:  # it may have been the oldest
                    w.after_known = False
        if self._new_rows.pop(reservation_id, None) is None:
            self._releases.append(reservation_id)

    def release_instances(self, instance_ids: list[str]) -> int:
        return self._through_file(lambda: self.store.release_instances(instance_ids))

    def states(self, windows: list[AppliedWindow], now: float | None = None) -> list[WindowState]:
        now = time.time() if now is None else now
        return [self._state(a, self._window(a, now)) for a in windows]

    def prune(self, older_than: float, scope_keys: Iterable[str] | None = None) -> int:
        keys = None if scope_keys is None else list(scope_keys)
        return self._through_file(lambda: self.store.prune(older_than, keys), keys)

    def flush(self) -> None:
        """Write every decision not yet written, in one transaction. Raises the file's
        error, keeping them, when it cannot."""
        if not self.unwritten:
            return
        rows: list[LedgerRow] = [
            (key, entry.row.ts, reservation_id, *entry.row.units, int(entry.row.settled))
            for reservation_id, entry in self._new_rows.items()
            for key in entry.keys
        ]
        try:
            self.store.write_behind(
                rows, list(self._settles.items()), self._releases, self._longest
            )
        except sqlite3.Error as exc:
            self._write_error = exc
            raise
        self._new_rows, self._settles, self._releases = {}, {}, []
        self._write_error = None

    def close(self) -> None:
        """Write what is left; the store is the caller's to close."""
        self.flush()

    # -- memory ---------------------------------------------------------------------

    def _window(self, a: AppliedWindow, now: float) -> _Window:
        """The window's sums now: rows that have left it taken out, from memory."""
        key, seconds = a.scope_key, a.window.window_seconds
        target = now - seconds
        w = self._windows.get((key, seconds))
        if w is None or target < w.cutoff:  # first use, or the clock ran back
            return self._load(a, now)
        while w.ahead and w.ahead[0].ts <= target:
            w.count(w.ahead.pop(0), -1)
        if not w.after_known:  # its oldest row was released
            self.flush()
            w.after, w.after_known = self.store.first_after(key, w.horizon), True
        if target > w.horizon:
            if w.after is not None and w.after <= target:
                self._look_ahead(key, w, target, min(seconds / 4, LOOKAHEAD_S))
            else:
                w.horizon = target
        w.cutoff = target
        return w

    def _look_ahead(self, key: str, w: _Window, target: float, lookahead: float) -> None:
        """Take out the file's rows up to the window's start and hold the next ones."""
        self.flush()
        horizon = target + lookahead
        for ts, reservation_id, settled, units in self.store.rows_after(key, w.horizon, horizon):
            entry = self._open.get(reservation_id)
            row = entry.row if entry is not None else _Row(ts, units, bool(settled))
            if ts <= target:
                w.count(row, -1)
            else:
                w.ahead.append(row)
        w.horizon = horizon
        w.after = self.store.first_after(key, horizon)

    def _load(self, a: AppliedWindow, now: float) -> _Window:
        key, seconds = a.scope_key, a.window.window_seconds
        self.flush()
        sums, oldest = self.store.sums([a], now)[key, seconds]
        old = self._windows.get((key, seconds))
        if old is not None:
            self._by_key[key].remove(old)
        w = _Window(now - seconds, list(sums), now - seconds, oldest)
        self._windows[key, seconds] = w
        self._by_key.setdefault(key, []).append(w)
        return w

    def _add(self, w: _Window, row: _Row) -> None:
        """A new row, as the insert trigger counts it in every sums row of its key."""
        w.count(row, 1)
        if row.ts <= w.horizon:
            if row.ts > w.cutoff:  # only when clocks disagree
                bisect.insort(w.ahead, row, key=lambda r: r.ts)
        elif w.after is None or row.ts < w.after:
            w.after = row.ts

    def _recount(self, entry: _Open, units: Units, settled: bool) -> None:
        """A row's amounts replaced, as the update and delete triggers count it."""
        for key in entry.keys:
            for w in self._by_key.get(key, ()):
                w.count(entry.row, -1)
        entry.row.units, entry.row.settled = units, settled
        for key in entry.keys:
            for w in self._by_key.get(key, ()):
                w.count(entry.row, 1)

    def _state(self, a: AppliedWindow, w: _Window) -> WindowState:
        oldest = w.oldest()
        reset = None if oldest is None else oldest + a.window.window_seconds
        return WindowState(
            a.window, a.scope_key, demand_of(w.sums[:4]), demand_of(w.sums[4:]), reset
        )

    def _violations(
        self, a: AppliedWindow, sums: list[int], want: Units, now: float
    ) -> Iterator[Exceeded]:
        return violations(a, sums, want, lambda i, excess: self._wait(a, i, excess, now))

    def _wait(self, a: AppliedWindow, index: int, excess: int, now: float) -> float:
        self.flush()
        return self.store.seconds_until_freed(a, index, excess, now)

    def _through_file[T](self, step: Callable[[], T], keys: list[str] | None = None) -> T:
        """Do `step` on the file itself, after everything decided here; then forget
        the windows it may have changed (those of `keys`, or all), to be read again."""
        self.flush()
        try:
            return step()
        finally:
            dropped = set(self._by_key if keys is None else keys)
            for key in dropped:
                self._by_key.pop(key, None)
            self._windows = {k: w for k, w in self._windows.items() if k[0] not in dropped}
