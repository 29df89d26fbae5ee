"""Fallbacks: which answers let the next route try, and what each attempt leaves in the ledger."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from addon.call import Call

if TYPE_CHECKING:
    from addon.upstream.tickets import Leg

# Answers that say "not now, not here" rather than "not this request": rate
# limits and the upstream's own failures. A 400 would fail on any route.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})


def attempt_row(
    call: Call,
    leg: Leg,
    started: float,
    status: int | None,
    reason: str | None,
    error: str | None,
) -> dict[str, Any]:
    return {
        "request_id": call.id,
        "attempt": len(call.attempted) + 1,
        "route": leg.route,
        "upstream_host": leg.target[1],
        "upstream_protocol": leg.attempt.upstream_protocol if leg.attempt else call.protocol_name,
        "status": status,
        "reason": reason,
        "error": error
        if error is not None
        else (f"upstream answered {status}" if reason else None),
        "started_at": started,
        "latency_ms": round((time.time() - started) * 1000, 3),
    }
