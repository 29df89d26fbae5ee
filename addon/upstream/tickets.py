"""A decided call as the dispatcher receives it (a `Ticket` of one or more `Leg`s), and
the answers llmgate gives in the caller's format when the upstream cannot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from addon.call import Attempt, Call, Rejection
from addon.streaming import MAX_EVENT_BYTES
from addon.upstream.failures import UpstreamFailure

if TYPE_CHECKING:
    from addon.protocols import WireProtocol
    from addon.upstream.http1 import UpstreamReply

DISPATCH_HEADER = "x-llmgate-dispatch"
# aiohttp's server fills in Date, Server and Content-Type when the reply has none;
# this header names the ones it filled in, so that the gateway can take them off.
FILLED_IN_HEADER = "x-llmgate-filled-in"
FILLED_IN = ("Date", "Server", "Content-Type")
REQUEST_ID_HEADER = "x-llmgate-request-id"


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float


@dataclass
class Leg:
    """One upstream a decided call may be sent to: its route's, or a fallback's."""

    url: str
    headers: list[tuple[str, str]]
    body: bytes
    route: str
    timeouts: Timeouts
    target: tuple[str, str, int]  # scheme, host, port: what the flow shows
    attempt: Attempt | None = None  # None for calls llmgate does not parse


@dataclass
class Ticket:
    """A decided request, waiting for mitmproxy to hand its flow over."""

    call: Call
    method: str
    legs: list[Leg]
    max_event_bytes: int = MAX_EVENT_BYTES
    # With audit.on_failure refuse: the commit of the call's row, awaited before
    # anything leaves (it runs while mitmproxy brings the flow over).
    recorded: Awaitable[bool] | None = field(default=None)
    # A quota answer still on its way (Redis): None admits, a Rejection is the answer.
    admitted: Awaitable[Rejection | None] | None = field(default=None)


def error_reply(call: Call, failure: UpstreamFailure) -> web.Response:
    """llmgate's answer in the caller's format, as the listener sends it to mitmproxy."""
    body = json.dumps(error_body(call.protocol, failure)).encode()
    headers = {
        "content-type": "application/json",
        REQUEST_ID_HEADER: call.id,
        FILLED_IN_HEADER: "Date,Server",
    }
    if failure.status == 503:
        headers["retry-after"] = "1"
    headers.update(failure.headers)
    return web.Response(status=failure.status, body=body, headers=headers)


def error_body(protocol: WireProtocol | None, failure: UpstreamFailure) -> dict:
    if protocol is None:
        return {"error": {"message": failure.message, "code": failure.reason}}
    return protocol.error_body(failure.status, failure.reason, failure.message)


def answer_failure(call: Call, failure: UpstreamFailure) -> web.Response:
    """The call failed upstream: the row will say so, and the caller gets `failure`."""
    call.upstream_failure = failure
    return error_reply(call, failure)


async def read_all(upstream: UpstreamReply, idle: float) -> bytes:
    if upstream.complete:
        return await upstream.read()  # it all came with the head: nothing to wait for
    loop = asyncio.get_running_loop()
    parts: list[bytes] = []
    async with asyncio.timeout(idle) as quiet:
        async for chunk in upstream.chunks():
            parts.append(chunk)
            quiet.reschedule(loop.time() + idle)
    return b"".join(parts)
