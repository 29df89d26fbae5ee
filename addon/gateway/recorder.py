"""What one call leaves behind, whatever carried it: its quota and its ledger rows.

Shared by HTTP calls, WebSocket messages and refused connections; nothing here
touches a flow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING, Any

from addon import pipeline
from addon.call import Call, Rejection
from addon.credentials import Fields
from addon.gateway import call_log
from addon.ledger.payloads import write_half
from addon.ledger.tool_calls import tool_call_rows
from addon.quota import budget
from addon.quota.backend import QuotaUnavailable
from addon.quota.windows import Demand, Exceeded, WindowState
from addon.turn_batch import Batch, TurnBatch, answered, pass_on, raised

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

log = logging.getLogger("llmgate")


class CallRecorder:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._openings: TurnBatch[dict[str, Any], bool] = TurnBatch(self._commit_openings)

    def send_reserve(self, call: Call) -> Awaitable[Rejection | None]:
        """Start reserving the call's quota now; await the answer: None if admitted."""
        demand = budget.quota_demand(
            call, self.gateway.pricer, self.gateway.config.quota.default_output_reservation
        )
        if isinstance(demand, Rejection):
            return answered(demand)
        assert self.gateway.quota is not None
        try:
            sent = self.gateway.quota.send_reserve(call.id, call.quota_windows, demand)
        except QuotaUnavailable as exc:
            sent = raised(exc)
        return self._admitted(call, sent)

    async def reserve(self, call: Call) -> Rejection | None:
        return await self.send_reserve(call)

    def answer_later(self, call: Call, reserving: Awaitable[Rejection | None]) -> asyncio.Task:
        """A quota answer the dispatcher awaits right before the call leaves, so that its
        round trip overlaps the hand-over. Should the call end first (its client gone),
        the reservation it gets is released when the answer comes."""
        return asyncio.ensure_future(reserving)

    async def _admitted(
        self, call: Call, sent: Awaitable[list[WindowState] | Exceeded]
    ) -> Rejection | None:
        try:
            result = await sent
        except QuotaUnavailable as exc:
            if self.gateway.config.quota.on_unavailable == "allow":
                # The operator's explicit choice: serve, unmetered. No reservation was
                # made, so nothing is settled (quota_states stays empty).
                log.warning("quota store unavailable, call %s admitted unmetered: %s", call.id, exc)
                return None
            # Fail closed: a budget that cannot be checked is not granted.
            log.error("quota store unavailable: %s", exc)
            return Rejection(
                503,
                "quota_unavailable",
                "llmgate could not check your quota; retry shortly",
                "failed",
                {"retry-after": "1"},
            )
        if isinstance(result, Exceeded):
            return budget.quota_rejection(result)
        call.quota_states = result
        if call.closed:  # answered after its call ended (answer_later): nothing to count
            self.release_quota(call)
        return None

    def _quota_settle(self, call: Call, actual: Demand, at_once: bool = False) -> None:
        if self.gateway.quota is None or not call.quota_states:
            return
        self.gateway.quota.settle(call.id, actual, at_once)

    def record_refusal(self, call: Call, rejection: Rejection) -> None:
        """A refusal with no request to store (a message, a connection)."""
        self.open_row(call, call.host, (), b"")
        self.close_row(call, pipeline.refusal_fields(call, rejection), None, b"")

    def release_quota(self, call: Call) -> None:
        """The call never went out: its reservation counts nothing, not even as a
        request (closing its row later settles nothing more)."""
        self._quota_settle(call, Demand(0, 0, 0, 0.0), at_once=True)
        call.quota_states = []

    def open_row_before_sending(
        self, call: Call, upstream_host: str, headers: Fields, body: bytes
    ) -> Awaitable[bool] | None:
        """Open the row of a call about to go upstream. With audit.on_failure refuse,
        the commit of its row, which the dispatcher awaits before anything leaves: at
        the loop's next turn, with the other rows of this turn (`_commit_openings`)."""
        assert self.gateway.audit is not None
        if self.gateway.config.audit.on_failure == "serve":
            self.open_row(call, upstream_host, headers, body)
            return None
        committed = self._openings.add(call.open_row() | {"upstream_host": upstream_host})
        self._write_request_half(call, headers, body)
        return committed

    def _commit_openings(self, batch: Batch[dict[str, Any], bool]) -> None:
        """One turn's opening rows in one append to the ledger's journal, else each by
        the writer's group commit. A row is written even if its call has gone
        meanwhile (its answer cancelled): every decided call has its row."""
        audit = self.gateway.audit
        assert audit is not None
        if audit.insert_journaled("requests", *(row for row, _ in batch)):
            for _, committed in batch:
                if not committed.done():
                    committed.set_result(True)
            return
        for row, committed in batch:
            durable = asyncio.ensure_future(audit.insert_durably("requests", row))
            durable.add_done_callback(partial(pass_on, answer=committed))

    def open_row(self, call: Call, upstream_host: str, headers: Fields, body: bytes) -> None:
        assert self.gateway.audit is not None
        self.gateway.audit.insert("requests", call.open_row() | {"upstream_host": upstream_host})
        self._write_request_half(call, headers, body)

    def _write_request_half(self, call: Call, headers: Fields, body: bytes) -> None:
        """A translated call keeps the caller's body and, beside it, what left."""
        assert self.gateway.audit is not None
        screening = call.request_screening
        translated = call.translation is not None and call.caller_body is not None
        write_half(
            self.gateway.audit,
            "request",
            call.id,
            headers,
            call.caller_body if translated and call.caller_body is not None else body,
            findings=screening.items if screening else [],
            hidden=screening.values() if screening else {},
            hmac_key=self.gateway.hmac_key,
            cap=self.gateway.config.audit.payload_max_bytes,
            upstream_body=body if translated else None,
        )

    def close_row(self, call: Call, fields: dict, headers: Fields | None, body: bytes) -> None:
        assert self.gateway.audit is not None
        call.closed = True
        if call.upstream_failure is not None and not call.upstream_failure.sent:
            self.release_quota(call)  # nothing left llmgate: nothing to count
        self._quota_settle(call, budget.actual_demand(fields, 0 if call.warmup else 1))
        self.gateway.audit.update("requests", call.id, fields)
        if call.attempted:
            self.gateway.audit.insert_many("attempts", call.attempted)
        tool_calls = tool_call_rows(
            call.id,
            call.session_id,
            call.request,
            pipeline.reply_content(call, fields.get("http_status"), body),
            self.gateway.scanner,
            pipeline.stored_values(call),
        )
        if tool_calls:
            self.gateway.audit.insert_many("tool_calls", tool_calls)
        if call_log.wanted(log):  # the line is not free to build
            call_log.log_call_line(log, pipeline.summary_line(call, fields))
        write_half(
            self.gateway.audit,
            "response",
            call.id,
            headers,
            body,
            findings=pipeline.reply_findings(
                call, self.gateway.scanner, self.gateway.config.safety
            ),
            hidden=pipeline.stored_values(call),
            hmac_key=self.gateway.hmac_key,
            cap=self.gateway.config.audit.payload_max_bytes,
        )
