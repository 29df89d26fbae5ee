"""Running the quota store for the gateway, SQLite or Redis, without stalling the event loop.

SQLite (QuotaWorker): from memory while this process is the file's only user
(owned.py, lease.py), its rows written behind every SETTLE_DELAY; else on the loop
when SQLite is free, else on a thread.

A reserve or a settle is well under 0.1 ms of SQLite work. Handing it to a thread
costs more than that (GIL hand-offs with the event loop, and two of our own
connections contending for SQLite's lock), so both run on the loop, on a
connection that never waits, the reserves of one turn of the loop in one
transaction (turn_batch.py; ARCHITECTURE.md says why). If another writer (another
llmgate process) holds the lock, the call fails at once with SQLITE_BUSY and the
work goes to the worker thread, which may wait. A settle handed over is queued
and applied in a batch; since a reserve completes before its call goes upstream,
no settle can overtake its own reserve. The quota tables live in their own file
beside the ledger, so the audit writer's batches never hold this lock.

Redis (RedisQuotaWorker): every call is a network round trip, so it is awaited on
the loop, over one pipelined connection (redis_pipe.py; measured in
bench/quota_store.py, cheaper than a blocking call and than a thread hand-off).
`send_reserve` writes the reserve at once, so the gateway screens and plans the
call while Redis runs the script. Settles are batched the same way, one script
per batch.

Both raise `QuotaUnavailable` from the reserve's await when their store cannot answer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Protocol

from addon.config import GatewayConfig
from addon.quota.backend import QuotaBackend, QuotaUnavailable
from addon.quota.lease import OwnerWillNotHandOver, QuotaLease
from addon.quota.owned import OwnedQuota
from addon.quota.redis_store import AsyncRedisQuota, RedisQuotaStore
from addon.quota.store import QuotaStore
from addon.quota.windows import AppliedWindow, Demand, Exceeded, WindowState
from addon.sqlite_wal import is_locked
from addon.turn_batch import Batch, TurnBatch, answered, pass_on, raised

log = logging.getLogger("llmgate.quota")

# Settles wait this long to share one commit: a settle only frees budget, so a
# short delay can only make a window look fuller, never let a call through.
SETTLE_DELAY = 0.02
# Inline commits between two checkpoints on the worker thread (~a few hundred KB of WAL).
CHECKPOINT_EVERY = 200
# How often the file's owner looks for a process waiting to use it too, and how long a
# new worker waits for an owner to hand over (as long as SQLite waits for a writer).
GUEST_POLL_S = 0.05
GUEST_PATIENCE_S = 30.0
# The owner's own connection may wait for the worker thread's checkpoint.
OWNER_BUSY_MS = 5_000


def quota_path(ledger: str | Path) -> Path:
    """The quota tables' file, beside the ledger (and shared like it between processes)."""
    ledger = Path(ledger)
    return ledger.with_name(ledger.name + ".quota")


class Quota(Protocol):
    """What the gateway needs of a quota worker, whichever store is behind it."""

    # True when a reserve's answer comes over the network: the gateway then lets the
    # dispatcher await it, so that the round trip overlaps the hand-over.
    answers_later: bool

    def send_reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> Awaitable[list[WindowState] | Exceeded]:
        """Start the reserve now (the caller works on while Redis runs it); its answer
        when awaited. Raises `QuotaUnavailable` from the await."""
        ...

    def settle(self, reservation_id: str, actual: Demand, at_once: bool = False) -> None:
        """Queued and sent with others a moment later, or `at_once` (a released
        reservation must not hold budget for the next call)."""
        ...

    def release_instances(self, instance_ids: list[str]) -> int: ...

    def close(self) -> None: ...


def quota_target(option: str, config: GatewayConfig) -> str | None:
    """The Redis URL quotas live at, or None for SQLite beside the ledger.

    The llmgate_quota option (default: the LLMGATE_QUOTA environment variable) wins
    over the policy file's quota.store, as LLMGATE_DB decides the ledger's place.
    """
    return option or config.quota.store or None


def reservation_ttl(config: GatewayConfig) -> float:
    """quota.reservation_ttl_s, or 2 x the longest first-byte timeout of any route + 60 s:
    a call waits at most that long for its first byte, so a reservation older than
    twice that belongs to a call that is gone (or is a long stream: see redis_store)."""
    if config.quota.reservation_ttl_s is not None:
        return config.quota.reservation_ttl_s
    longest = max((r.first_byte_timeout_s for r in config.routes), default=600.0)
    return 2 * longest + 60.0


def open_quota(ledger: str | Path, config: GatewayConfig, url: str | None) -> Quota:
    """The quota worker: on Redis at `url`, else SQLite beside the ledger."""
    if url:
        return RedisQuotaWorker(url, reservation_ttl(config))
    return QuotaWorker(quota_path(ledger))


def open_store(ledger: str | Path, config: GatewayConfig, url: str | None) -> QuotaBackend:
    """A plain (synchronous) store on the same counters, for the CLI and start-up recovery."""
    if url:
        return RedisQuotaStore(url, reservation_ttl(config))
    return QuotaStore(quota_path(ledger))


_Request = tuple[str, list[AppliedWindow], Demand]  # a reserve's arguments
_Reserved = list[WindowState] | Exceeded


class QuotaWorker:
    answers_later = False  # inline, unless SQLite is busy

    def __init__(self, path: str | Path) -> None:
        self._lease = QuotaLease(path)
        owner = self._lease.try_own()
        if not owner:
            try:
                self._lease.join(GUEST_PATIENCE_S)
            except OwnerWillNotHandOver as exc:
                self._lease.close()
                raise QuotaUnavailable(str(exc)) from exc
        # The lease is this worker's: its connections do not join as guests.
        self._fast = QuotaStore(path, busy_timeout_ms=0, guest=False)
        # An automatic checkpoint would run inside an inline commit and stall the
        # event loop for milliseconds; the worker thread checkpoints instead.
        self._fast.never_checkpoint()
        self._store = QuotaStore(path, guest=False)
        # While this process owns the file, reserves are decided in memory (owned.py).
        self._owned: OwnedQuota | None = None
        self._owned_lock = threading.Lock()  # the loop, and the watcher's hand-over
        self._write_armed = False
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None
        if owner:
            written_through = QuotaStore(path, busy_timeout_ms=OWNER_BUSY_MS, guest=False)
            written_through.never_checkpoint()
            self._owned = OwnedQuota(written_through)
            self._watcher = threading.Thread(
                target=self._watch_for_guests, name="llmgate-quota-owner", daemon=True
            )
            self._watcher.start()
        self._fast_writes = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmgate-quota")
        self._lock = threading.Lock()
        self._settles: list[tuple[str, Demand]] = []
        self._drain_queued = False
        self._pending: list[tuple[str, Demand]] = []  # touched only on the event loop
        self._reserves: TurnBatch[_Request, _Reserved] = TurnBatch(self._reserve_batch)

    def send_reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> Awaitable[list[WindowState] | Exceeded]:
        """Decided at once from memory while this process owns the file; else queued,
        and done at the loop's next turn in one transaction with every reserve queued
        meanwhile (`_reserve_batch`)."""
        request = (reservation_id, windows, demand)
        with self._owned_lock:
            if self._owned is not None:
                return self._decide(self._owned, request)
        try:
            return self._reserves.add(request)
        except RuntimeError:  # no running event loop yet: alone, when awaited
            return self._reserve_when_awaited(request)

    async def _reserve_when_awaited(self, request: _Request) -> _Reserved:
        answer: asyncio.Future[_Reserved] = asyncio.get_running_loop().create_future()
        self._reserve_alone(request, answer)
        return await answer

    def _reserve_batch(self, batch: Batch[_Request, _Reserved]) -> None:
        """The reserves of one turn of the loop (turn_batch.py), in one transaction. A
        call gone meanwhile (its answer cancelled) reserves nothing."""
        batch = [(request, answer) for request, answer in batch if not answer.done()]
        if len(batch) > 1:
            try:
                results = self._fast.reserve_many([request for request, _ in batch])
            except Exception:  # noqa: BLE001 - busy, failing, or one bad reserve
                pass  # rolled back: each is reserved alone below, and answered as alone
            else:
                self._wrote()
                for (_, answer), result in zip(batch, results, strict=True):
                    answer.set_result(result)
                return
        for request, answer in batch:
            self._reserve_alone(request, answer)

    def _reserve_alone(self, request: _Request, answer: asyncio.Future[_Reserved]) -> None:
        """Inline unless another process holds SQLite's lock: then on the worker thread,
        which may wait for it."""
        try:
            result = self._fast.reserve(*request)
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
                answer.set_exception(QuotaUnavailable(f"sqlite quota store: {exc}"))
            else:
                on_thread = asyncio.ensure_future(self._reserve_on_thread(request))
                on_thread.add_done_callback(partial(pass_on, answer=answer))
            return
        except sqlite3.Error as exc:
            answer.set_exception(QuotaUnavailable(f"sqlite quota store: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - the caller's await raises it
            answer.set_exception(exc)
            return
        self._wrote()
        answer.set_result(result)

    async def reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> list[WindowState] | Exceeded:
        return await self.send_reserve(reservation_id, windows, demand)

    async def _reserve_on_thread(self, request: _Request) -> _Reserved:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._store.reserve, *request)
        except sqlite3.Error as exc:
            raise QuotaUnavailable(f"sqlite quota store: {exc}") from exc

    def release_instances(self, instance_ids: list[str]) -> int:
        """Crash recovery at start-up; on the worker thread, which owns that connection."""
        with self._owned_lock:
            if self._owned is not None:
                return self._owned.release_instances(instance_ids)
        return self._pool.submit(self._store.release_instances, instance_ids).result()

    def settle(self, reservation_id: str, actual: Demand, at_once: bool = False) -> None:
        """Queue a settle; queued settles are applied together a moment later, in one commit."""
        with self._owned_lock:
            if self._owned is not None:
                try:
                    self._owned.settle(reservation_id, actual)
                except sqlite3.Error as exc:
                    log.error("quota settle of call %s failed: %s", reservation_id, exc)
                self._write_soon()
                return
        self._pending.append((reservation_id, actual))
        if at_once:
            self._flush()
        elif len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(SETTLE_DELAY, self._flush)
            except RuntimeError:  # no event loop (tests, shutdown): apply now
                self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._fast.settle_many(batch)
            self._wrote()
            return
        except sqlite3.OperationalError as exc:
            if not is_locked(exc):
                log.error("quota settle of %d calls failed: %s", len(batch), exc)
                return
        with self._lock:
            self._settles.extend(batch)
            if self._drain_queued:
                return
            self._drain_queued = True
        self._pool.submit(self._drain)

    def _wrote(self) -> None:
        self._fast_writes += 1
        if self._fast_writes % CHECKPOINT_EVERY == 0:
            self._pool.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            self._store.checkpoint()
        except sqlite3.Error as exc:
            log.warning("quota checkpoint skipped: %s", exc)

    def _drain(self) -> None:
        with self._lock:
            batch, self._settles = self._settles, []
            self._drain_queued = False
        if not batch:
            return
        try:
            self._store.settle_many(batch)
        except sqlite3.Error as exc:
            log.error("quota settle of %d calls failed: %s", len(batch), exc)

    def close(self) -> None:
        """Apply every queued settle, then close."""
        self._stop_watching.set()
        if self._watcher is not None:  # before the lease's descriptors close under it
            self._watcher.join(timeout=2 * GUEST_POLL_S + 1)
        with self._owned_lock:
            owned, self._owned = self._owned, None
            if owned is not None:
                try:
                    owned.close()
                except sqlite3.Error as exc:
                    log.error("quota rows of %d decisions lost at close: %s", owned.unwritten, exc)
                owned.store.close()
        self._flush()
        self._pool.shutdown(wait=True)
        self._drain()
        self._fast.close()
        self._store.close()
        self._lease.close()

    # -- while this process owns the file ------------------------------------------

    def _decide(self, owned: OwnedQuota, request: _Request) -> Awaitable[_Reserved]:
        """Answered from memory, at once: the await does not wait for a turn of the loop."""
        try:
            result = owned.reserve(*request)
        except sqlite3.Error as exc:
            return raised(QuotaUnavailable(f"sqlite quota store: {exc}"))
        except Exception as exc:  # noqa: BLE001 - the caller's await raises it
            return raised(exc)
        self._write_soon()
        return answered(result)

    def _write_soon(self) -> None:
        """Write the decisions behind a moment later, many to a transaction."""
        if self._write_armed:
            return
        self._write_armed = True
        try:
            asyncio.get_running_loop().call_later(SETTLE_DELAY, self._write_behind)
        except RuntimeError:  # no event loop (tests, shutdown): now
            self._write_behind()

    def _write_behind(self) -> None:
        self._write_armed = False
        with self._owned_lock:
            if self._owned is None:
                return
            failing = self._owned.failing
            try:
                self._owned.flush()
            except sqlite3.Error as exc:  # kept and tried again; reserves refused meanwhile
                if not failing:
                    log.error(
                        "quota rows of %d decisions not written yet, calls refused until "
                        "they are: %s",
                        self._owned.unwritten,
                        exc,
                    )
                self._write_soon()
                return
            if failing:
                log.warning("quota rows written again; calls are admitted again")
        self._wrote()

    def _watch_for_guests(self) -> None:
        while not self._stop_watching.wait(GUEST_POLL_S):
            if self._lease.guest_waiting() and self._hand_over():
                return

    def _hand_over(self) -> bool:
        """Write out everything, then use the file as a guest, through transactions."""
        with self._owned_lock:
            owned = self._owned
            if owned is None:
                return True
            failing = owned.failing
            try:
                owned.flush()
            except sqlite3.Error as exc:  # the guest waits, and gives up in time
                if not failing:
                    log.error("quota file not handed over, its rows cannot be written: %s", exc)
                return False
            self._lease.hand_over()
            self._owned = None
        owned.store.close()
        log.info("another process uses the quota file: reserves now go through SQLite")
        return True


# A settle Redis could not take is retried this often, for as long as its reservation
# record lives (2 x TTL): dropping it would lose the call's usage.
SETTLE_RETRY = 1.0


class RedisQuotaWorker:
    answers_later = True

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = ttl
        self._async = AsyncRedisQuota(url, ttl)
        # For what runs off the event loop: start-up recovery, the final flush.
        self._sync = RedisQuotaStore(url, ttl)
        self._pending: list[tuple[str, Demand]] = []  # touched only on the event loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing_since: float | None = None

    def send_reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> Awaitable[list[WindowState] | Exceeded]:
        return self._async.send_reserve(reservation_id, windows, demand)

    async def reserve(
        self, reservation_id: str, windows: list[AppliedWindow], demand: Demand
    ) -> list[WindowState] | Exceeded:
        return await self.send_reserve(reservation_id, windows, demand)

    def settle(self, reservation_id: str, actual: Demand, at_once: bool = False) -> None:
        """Queue a settle; queued settles go to Redis together a moment later, in one script."""
        self._pending.append((reservation_id, actual))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (tests, shutdown): apply now
            self._flush_now()
            return
        if at_once:
            self._flush()
        elif len(self._pending) == 1:
            loop.call_later(SETTLE_DELAY, self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            # Written now, so that this process's next reserve is behind it on the wire.
            task = asyncio.ensure_future(self._settle(batch, self._async.send_settle(batch)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _settle(self, batch: list[tuple[str, Demand]], sent: Awaitable[None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await sent
        except QuotaUnavailable as exc:
            now = loop.time()
            if self._failing_since is None:
                self._failing_since = now
                log.error("quota settle of %d calls failed, retrying: %s", len(batch), exc)
            if now - self._failing_since > 2 * self.ttl:
                log.error("quota settle of %d calls dropped after %.0f s", len(batch), 2 * self.ttl)
                return
            await asyncio.sleep(SETTLE_RETRY)
            for item in batch:
                self.settle(*item)
            return
        if self._failing_since is not None:
            log.warning("quota settles reach redis again")
            self._failing_since = None

    def _flush_now(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._sync.settle_many(batch)
        except QuotaUnavailable as exc:  # their reservations expire after the TTL
            log.error("quota settle of %d calls failed: %s", len(batch), exc)

    def release_instances(self, instance_ids: list[str]) -> int:
        return self._sync.release_instances(instance_ids)

    def close(self) -> None:
        """Apply every queued settle, then close (the async client's sockets with the loop)."""
        self._flush_now()
        self._sync.close()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the loop is gone, and its sockets with it
        task = loop.create_task(self._async.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
