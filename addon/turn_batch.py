"""Work queued during one turn of the event loop, done together at the start of the next.

Under load the proxy's calls arrive together: at 16 connections most quota reserves
and opening rows share their turn of the loop with several others (counted in the
bench: groups of 1 to 16, half of the calls in groups of 7 or more). Work whose cost
is mostly fixed per transaction (SQLite's lock, the commit, its code and pages gone
cold since the previous call) is then paid once a turn instead of once a call. Each
caller waits one turn more, and gets its own answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NoReturn

# What the batch's handler gets: each item with the future its caller awaits. The
# handler must answer every future that is not done, and may still do the work of one
# that is (cancelled), when the work must happen whoever waits for it.
type Batch[Item, Answer] = list[tuple[Item, asyncio.Future[Answer]]]


class TurnBatch[Item, Answer]:
    def __init__(self, handler: Callable[[Batch[Item, Answer]], None]) -> None:
        self._handler = handler
        self._queued: Batch[Item, Answer] = []

    def add(self, item: Item) -> asyncio.Future[Answer]:
        """Queue `item` (on the running loop); the future is its answer.

        When nothing else is due to run in this turn, nothing else can join the batch
        before the next: it runs at once, and the caller does not wait a turn (one
        connection's calls never do).
        """
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self._queued.append((item, answer))
        if not getattr(loop, "_ready", True):  # asyncio's own loop: its run queue
            self.run()
        elif len(self._queued) == 1:
            loop.call_soon(self.run)
        return answer

    def run(self) -> None:
        """Hand what is queued to the handler now (the loop's turn, or a close)."""
        batch, self._queued = self._queued, []
        if not batch:
            return
        try:
            self._handler(batch)
        except Exception as exc:  # noqa: BLE001 - each caller's await raises it
            # A handler that broke must not leave a caller waiting for ever.
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)


async def answered[Answer](value: Answer) -> Answer:
    """An answer known already, as an awaitable: awaiting it never waits for the loop."""
    return value


async def raised(error: BaseException) -> NoReturn:
    """A failure known already, as an awaitable: awaiting it raises `error`."""
    raise error


def pass_on[Answer](done: asyncio.Future[Answer], answer: asyncio.Future[Answer]) -> None:
    """A done-callback: `answer` gets the outcome of `done`, unless it has one."""
    if answer.done():
        return
    if done.cancelled():
        answer.cancel()
    elif (error := done.exception()) is not None:
        answer.set_exception(error)
    else:
        answer.set_result(done.result())
