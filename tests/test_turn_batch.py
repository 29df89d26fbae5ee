"""Work of one turn of the event loop done together (addon/turn_batch.py): the SQLite
quota reserves and the strict audit's opening rows, each turn's in one transaction.

The batching must change nothing a caller can see: each reserve answers as it would
alone, in order, a limit admits exactly its number within a batch, one bad reserve
fails only its own call, and every opening row is committed before its call's answer,
even when the loop's connection cannot take them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from addon.config import GatewayConfig, QuotaWindow
from addon.gateway.recorder import CallRecorder
from addon.ledger.writer import AuditWriter
from addon.quota.backend import DuplicateReservation
from addon.quota.store import QuotaStore
from addon.quota.windows import AppliedWindow, Demand, Exceeded
from addon.quota.worker import QuotaWorker
from addon.turn_batch import Batch, TurnBatch


def shared_worker(path: Path) -> tuple[QuotaStore, QuotaWorker]:
    """A worker that shares its file with another user of it (here, a guest store), so
    it reserves through SQLite transactions, a turn's reserves in one (the worker of
    a file nobody else uses decides from memory: tests/test_quota_owned.py)."""
    guest = QuotaStore(path)
    return guest, QuotaWorker(path)


def window(limit: int, seconds: int = 60, key: str = "user:alice") -> AppliedWindow:
    return AppliedWindow(QuotaWindow(window_seconds=seconds, max_requests=limit), key)


class Recording:
    """A handler that answers each item with itself doubled, and keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, batch: Batch[int, int]) -> None:
        self.batches.append([item for item, _ in batch])
        for item, answer in batch:
            answer.set_result(2 * item)


# --- the batch itself -------------------------------------------------------------


def test_with_nothing_else_due_the_item_runs_at_once() -> None:
    handler = Recording()
    batch: TurnBatch[int, int] = TurnBatch(handler)

    async def alone() -> bool:
        answer = batch.add(4)
        done = answer.done()  # before any await: no turn of the loop waited for
        assert await answer == 8
        return done

    assert asyncio.run(alone()) is True
    assert handler.batches == [[4]]


def test_items_of_one_turn_share_one_run_and_keep_their_answers() -> None:
    handler = Recording()
    batch: TurnBatch[int, int] = TurnBatch(handler)

    async def together() -> list[int]:
        async def one(item: int) -> int:
            return await batch.add(item)

        # Five tasks whose first steps run in the same turn.
        return await asyncio.gather(*(one(i) for i in range(5)))

    assert asyncio.run(together()) == [0, 2, 4, 6, 8]
    assert handler.batches == [[0, 1, 2, 3, 4]]


def test_an_item_added_while_other_work_is_due_waits_for_the_turn() -> None:
    handler = Recording()
    batch: TurnBatch[int, int] = TurnBatch(handler)

    async def deferred() -> list[int]:
        asyncio.get_running_loop().call_soon(lambda: None)  # something else is due
        first, second = batch.add(1), batch.add(2)
        assert not first.done() and not second.done()
        return [await first, await second]

    assert asyncio.run(deferred()) == [2, 4]
    assert handler.batches == [[1, 2]]


def test_a_handler_that_breaks_fails_every_waiting_caller() -> None:
    def broken(items: Batch[int, int]) -> None:
        items[0][1].set_result(1)
        raise RuntimeError("handler broke")

    batch: TurnBatch[int, int] = TurnBatch(broken)

    async def run() -> list[Any]:
        asyncio.get_running_loop().call_soon(lambda: None)
        answers = [batch.add(i) for i in range(3)]
        return await asyncio.gather(*answers, return_exceptions=True)

    first, *rest = asyncio.run(run())
    assert first == 1
    assert all(isinstance(r, RuntimeError) for r in rest)


# --- the quota store: several reserves, one transaction ----------------------------


def test_reserve_many_answers_as_reserves_one_after_another(tmp_path: Path) -> None:
    limited = [window(7), window(1000, 86400)]
    apart, together = QuotaStore(tmp_path / "a.db"), QuotaStore(tmp_path / "b.db")
    try:
        requests = [(f"r{i}", limited, Demand()) for i in range(10)]
        alone = [apart.reserve(*request) for request in requests]
        batched = together.reserve_many(requests)
        assert [isinstance(r, list) for r in batched] == [isinstance(r, list) for r in alone]
        assert [isinstance(r, list) for r in batched] == [True] * 7 + [False] * 3
        assert all(isinstance(r, Exceeded) and r.limit_name == "max_requests" for r in batched[7:])
        # Each admitted one saw the ones before it, as one by one.
        first, last = batched[0], batched[6]
        assert isinstance(first, list) and isinstance(last, list)
        assert first[0].reserved.requests == 1 and last[0].reserved.requests == 7
        for a, b in zip(apart.states(limited), together.states(limited), strict=True):
            assert (a.used, a.reserved) == (b.used, b.reserved)
    finally:
        apart.close()
        together.close()


def test_one_duplicate_id_rolls_the_whole_batch_back(tmp_path: Path) -> None:
    limited = [window(100)]
    with QuotaStore(tmp_path / "q.db") as store:
        assert isinstance(store.reserve("taken", limited, Demand()), list)
        batch = [("a", limited, Demand()), ("taken", limited, Demand()), ("b", limited, Demand())]
        with pytest.raises(DuplicateReservation):
            store.reserve_many(batch)
        assert store.states(limited)[0].reserved.requests == 1  # only "taken", from before


# --- the quota worker: a turn's reserves -----------------------------------------


async def in_one_turn(*started: Awaitable[Any]) -> list[Any]:
    return await asyncio.gather(*started, return_exceptions=True)


def test_a_turns_reserves_share_one_commit_and_the_limit_holds(tmp_path: Path) -> None:
    guest, worker = shared_worker(tmp_path / "q.db")
    limited = [window(7)]

    async def run() -> list[Any]:
        asyncio.get_running_loop().call_soon(lambda: None)  # as under load: batched
        return await in_one_turn(
            *(worker.send_reserve(f"r{i}", limited, Demand()) for i in range(10))
        )

    try:
        results = asyncio.run(run())
        assert [isinstance(r, list) for r in results] == [True] * 7 + [False] * 3
        assert worker._fast_writes == 1  # one transaction for the turn
    finally:
        worker.close()
        guest.close()
    with QuotaStore(tmp_path / "q.db") as store:
        assert store.states(limited)[0].reserved.requests == 7


def test_a_bad_reserve_in_a_turn_fails_its_call_alone(tmp_path: Path) -> None:
    guest, worker = shared_worker(tmp_path / "q.db")
    limited = [window(100)]

    async def run() -> list[Any]:
        assert isinstance(await worker.send_reserve("taken", limited, Demand()), list)
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: None)
        gone = worker.send_reserve("gone", limited, Demand())
        gone.cancel()  # its call ended before the turn: it reserves nothing
        return await in_one_turn(
            *(worker.send_reserve(r, limited, Demand()) for r in ("a", "taken", "b"))
        )

    try:
        a, taken, b = asyncio.run(run())
        assert isinstance(a, list) and isinstance(b, list)
        assert isinstance(taken, DuplicateReservation)
    finally:
        worker.close()
        guest.close()
    with QuotaStore(tmp_path / "q.db") as store:
        assert store.states(limited)[0].reserved.requests == 3  # taken, a, b


def test_a_turn_that_finds_sqlite_locked_waits_on_the_thread_and_admits_exactly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    guest, worker = shared_worker(path)
    limited = [window(4)]

    async def run(other: sqlite3.Connection) -> list[Any]:
        loop = asyncio.get_running_loop()
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        loop.call_later(0.3, other.execute, "COMMIT")
        loop.call_soon(lambda: None)
        return await in_one_turn(
            *(worker.send_reserve(f"r{i}", limited, Demand()) for i in range(6))
        )

    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            results = asyncio.run(run(other))
        assert sorted(isinstance(r, list) for r in results) == [False] * 2 + [True] * 4
        assert worker._fast_writes == 0  # none went inline: all waited for the lock
    finally:
        worker.close()
        guest.close()


# --- the strict audit's opening rows ------------------------------------------------


def ledger_ids(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("select id from requests order by id")]


def recorder_on(writer: AuditWriter) -> CallRecorder:
    # The recorder's only needs here: the gateway's writer and configuration.
    return CallRecorder(SimpleNamespace(audit=writer, config=GatewayConfig()))  # type: ignore[arg-type]


def test_a_turns_opening_rows_are_committed_together_before_any_answer(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.db"
    writer = AuditWriter(db, linger=30.0)  # the writer thread would take 30 s
    recorder = recorder_on(writer)

    async def run() -> list[bool]:
        asyncio.get_running_loop().call_soon(lambda: None)
        answers = [recorder._openings.add({"id": f"c{i}", "status": "pending"}) for i in range(4)]
        answers[3].cancel()  # its call went away: its row is written all the same
        return await asyncio.gather(*answers[:3])

    try:
        assert asyncio.run(run()) == [True, True, True]
        assert ledger_ids(db) == ["c0", "c1", "c2", "c3"]
        assert writer.health()["rows_written"] == 4
    finally:
        writer.close()


def test_opening_rows_the_loop_cannot_commit_go_by_the_writer_and_are_waited_for(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.db"
    writer = AuditWriter(db, linger=30.0)
    recorder = recorder_on(writer)

    async def run(other: sqlite3.Connection) -> list[bool]:
        loop = asyncio.get_running_loop()
        other.execute("BEGIN IMMEDIATE")  # the loop's commit would have to wait: it declines
        loop.call_later(0.2, other.execute, "COMMIT")
        loop.call_soon(lambda: None)
        answers = [recorder._openings.add({"id": f"c{i}", "status": "pending"}) for i in range(3)]
        committed = await asyncio.gather(*answers)
        assert ledger_ids(db) == ["c0", "c1", "c2"]  # on disk before the answers came
        return committed

    try:
        with closing(sqlite3.connect(db, isolation_level=None)) as other:
            assert asyncio.run(run(other)) == [True, True, True]
    finally:
        writer.close()
