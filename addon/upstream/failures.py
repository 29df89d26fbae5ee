"""What went wrong upstream, in words a caller can act on and a status that fits.

Messages name the route, never an address: the caller should learn which of the
operator's routes failed and how, not the internal topology behind it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Literal

from addon.call import Rejection
from addon.upstream.http1 import (
    ConnectFailed,
    ConnectTimeout,
    HostNotFound,
    InvalidRequest,
    MalformedReply,
    UpstreamTLSError,
)

Phase = Literal["connect", "first_byte", "body"]


@dataclass(frozen=True)
class UpstreamFailure:
    status: int  # what the caller is answered (502 unreachable or broken, 504 timed out)
    reason: str  # the ledger's `reason`
    message: str  # the ledger's `error`, and the caller's error message
    sent: bool = True  # False: nothing left llmgate, so the call counts against no quota
    outcome: str = "failed"  # the row's status: denied for a quota the dispatcher refused
    headers: tuple[tuple[str, str], ...] = ()  # for the caller, e.g. retry-after


def refused(rejection: Rejection) -> UpstreamFailure:
    """A refusal decided while the call was already with the dispatcher (a quota whose
    answer came over the network): answered the same, and nothing left llmgate."""
    return UpstreamFailure(
        rejection.status,
        rejection.kind,
        rejection.message,
        sent=False,
        outcome=rejection.outcome,
        headers=tuple(rejection.headers.items()),
    )


AUDIT_UNAVAILABLE = UpstreamFailure(
    503,
    "audit_unavailable",
    "llmgate could not record this call in its audit ledger, so it did not send it "
    "(audit.on_failure: refuse). Retry shortly; operators: see `llmgate doctor`.",
    sent=False,
)


def timed_out(route: str, phase: Phase, seconds: float) -> UpstreamFailure:
    if phase == "connect":
        what, setting = "connecting to", "connect_timeout_s"
    elif phase == "first_byte":
        what, setting = "waiting for the first byte from", "first_byte_timeout_s"
    else:
        what, setting = "waiting for more of the reply from", "idle_timeout_s"
    return UpstreamFailure(
        504,
        f"{phase}_timeout" if phase != "body" else "idle_timeout",
        f"llmgate timed out after {seconds:g} s {what} the upstream of route '{route}' "
        f"({setting}); retry, or ask your operator to raise it",
    )


def classify(exc: BaseException, route: str, phase: Phase, seconds: float) -> UpstreamFailure:
    """An exception of the upstream exchange, as the caller and the ledger see it."""
    if isinstance(exc, ConnectTimeout):
        return timed_out(route, "connect", seconds)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return timed_out(route, phase, seconds)
    if isinstance(exc, HostNotFound):
        return _unreachable(route, "its host name did not resolve", "upstream_dns_failure")
    if isinstance(exc, UpstreamTLSError | ssl.SSLError):
        return _unreachable(route, "the TLS handshake failed", "upstream_tls_error")
    if isinstance(exc, ConnectFailed):
        return _unreachable(route, "the connection was refused or failed", "upstream_unreachable")
    if isinstance(exc, InvalidRequest):
        return UpstreamFailure(
            400,
            "unsendable_request",
            f"llmgate cannot send this request upstream as HTTP/1.1 ({exc}); fix the request",
            sent=False,
        )
    if phase == "body":
        return UpstreamFailure(
            502,
            "upstream_reset",
            f"the upstream of route '{route}' broke off its reply midway; retry the call",
        )
    if isinstance(exc, MalformedReply):
        return UpstreamFailure(
            502,
            "upstream_protocol_error",
            f"the upstream of route '{route}' answered with a malformed HTTP reply",
        )
    return UpstreamFailure(
        502,
        "upstream_reset",
        f"the upstream of route '{route}' closed the connection before it replied; retry the call",
    )


def _unreachable(route: str, how: str, reason: str) -> UpstreamFailure:
    return UpstreamFailure(
        502, reason, f"llmgate could not reach the upstream of route '{route}': {how}"
    )
