"""The process's life as the ledger sees it: whose rows are whose, and none left pending.

At start-up the process takes its instance lease (a lock the kernel, or the
PostgreSQL server, drops when the process dies, however it dies) and closes the
`pending` rows of every instance whose lease is free, releasing their quota
reservations. At shutdown (SIGTERM, SIGINT) the calls in flight get
`audit.drain_seconds` to finish; the rest are closed as `interrupted` with the
usage received so far.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from addon import pipeline
from addon.call import INSTANCE_ID, Call
from addon.ledger.db import local_state_path
from addon.ledger.recovery import InstanceLease, close_abandoned, instances_dir
from addon.quota.store import QuotaStore
from addon.quota.worker import quota_path

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

log = logging.getLogger("llmgate")

_INTERRUPTED = "llmgate shut down before the call finished"


class Lifecycle:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lease: InstanceLease | None = None

    def opened(self, db: str | Path) -> None:
        """The stores are open on `db` (a SQLite path or a PostgreSQL URL): take this
        instance's lease, recover the dead's."""
        self.closed()
        self._lease = InstanceLease(db, INSTANCE_ID)
        if self.gateway.audit is not None:  # a journal only ever written under the lease
            self.gateway.audit.open_journal(instances_dir(db), INSTANCE_ID)
        dead = close_abandoned(db, INSTANCE_ID)
        if not dead:
            return
        if self.gateway.quota is not None:  # whichever store quotas are on (SQLite, Redis)
            released = self.gateway.quota.release_instances(dead)
        else:
            with QuotaStore(quota_path(local_state_path(db))) as quota:
                released = quota.release_instances(dead)
        log.warning(
            "llmgate closed the pending calls of %d ended process(es) as interrupted and "
            "released %d of their quota reservations",
            len(dead),
            released,
        )

    def closed(self) -> None:
        if self._lease is not None:
            self._lease.close()
            self._lease = None

    def _in_flight(self) -> list[Call]:
        calls = [c for c in self.gateway.calls.values() if not c.closed]
        for sock in self.gateway.websockets.sockets.values():
            calls.extend(c for c in sock.calls if not c.closed)
        return calls

    async def drain(self, seconds: float) -> None:
        """Give the calls in flight `seconds` to finish, then close the rest as interrupted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = self._in_flight()
        for call in left:
            self._interrupt(call)
        if left:
            log.warning("llmgate interrupted %d call(s) still in flight at shutdown", len(left))
        await self.gateway.handoff.stop()

    def _interrupt(self, call: Call) -> None:
        fields = pipeline.settle(
            call,
            http_status=200 if call.tap is not None else None,
            response_body=None,
            error=_INTERRUPTED,
            cancelled=False,
            pricer=self.gateway.pricer,
            now=time.time(),
        )
        fields.update(status="interrupted", reason="shutdown", error=_INTERRUPTED)
        body = bytes(call.tap.kept) if call.tap is not None else b""
        self.gateway.recorder.close_row(call, fields, None, body)
