"""Handing decided HTTP calls to llmgate's dispatcher, and giving the flow back its view.

The flow side of `addon.upstream.dispatcher`: the decided request is taken off
the flow into a ticket, the flow is masked and pointed at the dispatcher's
loopback listener with only the ticket's token, and once the reply's headers
are in, the flow shows the real upstream again. So no hook, view or saved flow
ever sees a route secret on an HTTP call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web
from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState

from addon.call import Call
from addon.config import Route
from addon.credentials import Fields
from addon.protocols import PROTOCOLS
from addon.protocols.detect import error_protocol
from addon.upstream.dispatcher import Dispatcher, upstream_ssl_context
from addon.upstream.tickets import DISPATCH_HEADER, FILLED_IN_HEADER, Leg, Ticket, Timeouts

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

log = logging.getLogger("llmgate")

_DEFAULT_ROUTE = Route(id="passthrough", provider="openai", endpoint="https://passthrough.invalid")
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    }
)


def _upstream_headers(fields: Fields) -> list[tuple[str, str]]:
    return [
        (name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
        for name, value in fields
        if name.lower() not in _HOP_BY_HOP
    ]


def _timeouts(route: Route) -> Timeouts:
    return Timeouts(route.connect_timeout_s, route.first_byte_timeout_s, route.idle_timeout_s)


# How often a client is checked while its buffered call is exchanged in the hook.
CLIENT_CHECK_S = 0.25


def whole_response(status: int, headers: http.Headers, body: bytes, at: float) -> http.Response:
    """The `http.Response` mitmproxy's constructor would build for this reply, built
    without it: in Python's default (debug) mode its dataclass type-checks every field,
    raising and catching TypeErrors on the way (~27 us a call, more than the rest of
    building the reply). Each value here has its declared type by construction, and
    tests/test_gateway_unit.py holds the two ways equal, field by field. Not
    Response.make either: it would parse the headers again and re-encode the body."""
    data = http.ResponseData.__new__(http.ResponseData)
    vars(data).update(
        http_version=b"HTTP/1.1",
        headers=headers,
        content=body,
        trailers=None,
        timestamp_start=at,
        timestamp_end=at,
        status_code=status,
        reason=_reason(status),
    )
    response = http.Response.__new__(http.Response)
    response.data = data
    return response


def _reason(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode() if status in _KNOWN_STATUSES else b""


_KNOWN_STATUSES = frozenset(s.value for s in HTTPStatus)


class _ClientWatch:
    """Cancels `task` (the hook's own) once the flow's client has closed its side."""

    def __init__(self, flow: http.HTTPFlow, task: asyncio.Task[object]) -> None:
        self._flow = flow
        self._task = task
        self.cut = False
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            CLIENT_CHECK_S, self._check
        )

    def _check(self) -> None:
        if not self._flow.client_conn.state & ConnectionState.CAN_READ:
            self.cut = True
            self._task.cancel()
            return
        self._timer = asyncio.get_running_loop().call_later(CLIENT_CHECK_S, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None  # no cycle through the timer's callback


class HandOff:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.dispatcher = Dispatcher()
        self._starting: asyncio.Lock | None = None

    async def running(self) -> None:
        await self.ensure_started()

    async def ensure_started(self) -> None:
        if self.dispatcher.running:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if not self.dispatcher.running:
                options = ctx.options
                context = upstream_ssl_context(
                    getattr(options, "ssl_verify_upstream_trusted_ca", None),
                    bool(getattr(options, "ssl_insecure", False)),
                )
                await self.dispatcher.start(context)

    async def stop(self) -> None:
        await self.dispatcher.stop()

    def take(
        self, flow: http.HTTPFlow, call: Call, route: Route | None, caller_fields: Fields = ()
    ) -> Ticket:
        """The decided request, off the flow; the flow keeps a masked copy.

        The flow holds the first attempt's request; each fallback's is built from
        the caller's headers (`caller_fields`) and that fallback's rewrite.
        """
        req = flow.request
        if call.protocol is None:
            call.protocol = PROTOCOLS[error_protocol(call.protocol_name, call.host, call.path)]
        route = route or _DEFAULT_ROUTE
        first = Leg(
            url=req.url,
            headers=_upstream_headers(req.headers.fields),
            body=req.raw_content or b"",
            route=route.id,
            timeouts=_timeouts(route),
            target=(req.scheme, req.host, req.port),
            attempt=call.attempts[0] if call.attempts else None,
        )
        legs = [first]
        for attempt in call.attempts[1:]:
            upstream = attempt.rewrite.upstream
            legs.append(
                Leg(
                    url=upstream.url,
                    headers=_upstream_headers(attempt.rewrite.apply_to(caller_fields)),
                    body=attempt.rewrite.body
                    if attempt.rewrite.body is not None
                    else call.caller_body or b"",
                    route=attempt.route.id,
                    timeouts=_timeouts(attempt.route),
                    target=(upstream.scheme, upstream.host, upstream.port),
                    attempt=attempt,
                )
            )
        ticket = Ticket(
            call=call,
            method=req.method,
            legs=legs,
            max_event_bytes=self.gateway.config.limits.max_event_bytes,
        )
        call.upstream_target = first.target
        self.gateway.mask_sent(flow, call)
        return ticket

    def send(self, flow: http.HTTPFlow, call: Call, ticket: Ticket) -> None:
        """Point the (masked) flow at the dispatcher, which holds the ticket."""
        call.dispatch_token = self.dispatcher.file(ticket)
        req = flow.request
        req.scheme, req.host, req.port = "http", "127.0.0.1", self.dispatcher.port
        req.headers[DISPATCH_HEADER] = call.dispatch_token
        self.gateway.connections.allow(flow)

    async def exchange(self, flow: http.HTTPFlow, call: Call, ticket: Ticket) -> bool:
        """A buffered call, sent and answered from the request hook: the flow gets the
        whole reply, and mitmproxy never opens a connection for it (the hop to the
        listener cost ~0.2 ms of CPU and ~0.5 ms of latency per call).

        mitmproxy holds back a client's disconnect while a hook runs, so the client
        is watched meanwhile: if it leaves, the exchange is cut (the upstream
        connection closed, as the listener's would be) and False returned."""
        # Awaited in the hook's own task, which the watch cancels: a task of its own
        # would cost an object and a turn of the loop per call.
        task = asyncio.current_task()
        assert task is not None
        watch = _ClientWatch(flow, task)
        try:
            reply = await self.dispatcher.exchange(ticket)
        except asyncio.CancelledError:
            if not watch.cut:
                raise
            task.uncancel()  # the cancel was the watch's, and it is handled here
            return False
        finally:
            watch.stop()
        body = (reply.body if isinstance(reply, web.Response) else b"") or b""
        assert isinstance(body, bytes)
        # What the listener's server would have filled in is not added here, so the
        # header naming it is dropped rather than obeyed (see restore).
        fields = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in reply.headers.items()
            if k != FILLED_IN_HEADER
        ]
        fields.append((b"content-length", str(len(body)).encode()))
        flow.response = whole_response(reply.status, http.Headers(fields), body, time.time())
        return True

    def restore(self, flow: http.HTTPFlow, call: Call) -> None:
        """The request left: the flow shows where it really went, and the reply as sent."""
        # Only a call handed to the listener carries its token and the listener's
        # filled-in headers (each look-up in mitmproxy's headers scans them all).
        via_listener = call.dispatch_token is not None
        self.dispatcher.forget(call.dispatch_token)
        call.dispatch_token = None
        if call.upstream_target is None:
            return
        req = flow.request
        if via_listener:
            req.headers.pop(DISPATCH_HEADER, None)
        if (req.scheme, req.host, req.port) != call.upstream_target:
            req.scheme, req.host, req.port = call.upstream_target
        call.upstream_target = None
        response = flow.response
        if via_listener and response is not None and FILLED_IN_HEADER in response.headers:
            for name in response.headers.pop(FILLED_IN_HEADER).split(","):
                response.headers.pop(name, None)
