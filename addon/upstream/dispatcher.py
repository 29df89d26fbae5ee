"""llmgate's own upstream exchange: one mechanism for timeouts and upstream faults.

Why not let mitmproxy talk to the upstream: it answers every upstream fault
itself, with an HTML 502 that names the internal address and carries no request
id, and it has no read timeout at all. So the gateway points each decided HTTP
call at this loopback listener instead, and files the decided request here as a
single-use `Ticket` under an unguessable token (the flow carries only the
token). The dispatcher sends the ticket's request upstream with its own pooled
HTTP/1.1 client (`addon.upstream.client`: llhttp's C parser on asyncio's transports;
aiohttp's client cost four times as much per call), streams the reply back to
mitmproxy as it arrives, and answers every fault in the caller's own wire format:

- unreachable, DNS, TLS: 502; connect or first-byte timeout: 504;
- a buffered reply is read whole before it is answered, so a reset or a stall
  midway is still a clean 502/504;
- a stream that breaks after it started ends with the protocol's in-stream
  error event.

What goes upstream is the ticket's request, exactly as decided: what mitmproxy
sends to the listener (the flow, which mitmweb shows, never holds a route
secret) is read and dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time

import aiohttp
from aiohttp import web

from addon.call import Call, describe_exception
from addon.upstream.attempts import RETRY_STATUSES, attempt_row
from addon.upstream.client import UpstreamClient
from addon.upstream.failures import AUDIT_UNAVAILABLE, UpstreamFailure, classify, refused
from addon.upstream.http1 import ConnectTimeout, UpstreamReply
from addon.upstream.tickets import (
    DISPATCH_HEADER,
    FILLED_IN,
    FILLED_IN_HEADER,
    Leg,
    Ticket,
    answer_failure,
    error_body,
    error_reply,
    read_all,
)
from addon.upstream.translated import translated_buffered, translated_stream

log = logging.getLogger("llmgate")

# Never forwarded by a proxy (RFC 9110 7.6.1), or set by the client library itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        DISPATCH_HEADER,
    }
)


def stream_framing(call: Call, status: int, content_type: str) -> str | None:
    """How a reply is streamed: "sse", "json_array" (Gemini's streamed array) or None."""
    if content_type.lower().startswith("text/event-stream"):
        return "sse"
    if call.stream and call.protocol_name == "gemini" and status < 400:
        return "json_array"
    return None


def stream_error(call: Call, failure: UpstreamFailure, framing: str, sent_any: bool) -> bytes:
    """The bytes that end a broken stream with the protocol's own error."""
    if framing == "sse":
        assert call.protocol is not None
        event = call.protocol.error_event(failure.status, failure.reason, failure.message)
        head = f"event: {event.event}\n" if event.event else ""
        return f"\n\n{head}data: {event.data}\n\n".encode()
    element = json.dumps(error_body(call.protocol, failure))
    return f",{element}]".encode() if sent_any else f"[{element}]".encode()


def upstream_ssl_context(trusted_ca: str | None, insecure: bool) -> ssl.SSLContext:
    """Verify upstreams the way mitmproxy does: certifi's roots, or the CA it was given."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if trusted_ca:
        return ssl.create_default_context(cafile=trusted_ca)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class TokenPool:
    """Unguessable ticket tokens: 16 bytes of the OS's randomness each, drawn 256 at a
    time. One getrandom() call per token cost ~2% of the event loop under load; a
    token is as random sliced from a bigger draw."""

    _BATCH = 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self) -> str:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(16 * self._BATCH), 0
        token = self._pool[self._at : self._at + 16].hex()
        self._at += 16
        return token


class Dispatcher:
    def __init__(self) -> None:
        self._tickets: dict[str, Ticket] = {}
        self._client: UpstreamClient | None = None
        self._listener: asyncio.Server | None = None
        self._server: web.Server | None = None
        self.port = 0
        self.in_flight = 0
        self._tokens = TokenPool()

    @property
    def running(self) -> bool:
        return self._listener is not None

    async def start(self, ssl_context: ssl.SSLContext) -> None:
        # No proxy from the environment (llmgate's own HTTPS_PROXY would loop), no
        # cookies (one client serves every caller), no added headers, no decoding.
        self._client = UpstreamClient(ssl_context)
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._server, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._server is not None:
            await self._server.shutdown(0.1)
            self._server = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    def file(self, ticket: Ticket) -> str:
        """Keep a decided request until mitmproxy brings its flow; returns its token."""
        token = self._tokens.take()
        self._tickets[token] = ticket
        return token

    def forget(self, token: str | None) -> None:
        if token is not None:
            self._tickets.pop(token, None)

    # --- the listener ----------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        ticket = self._tickets.pop(request.headers.get(DISPATCH_HEADER, ""), None)
        if ticket is None:
            # Not a call llmgate decided (or one already sent): nothing goes upstream.
            return web.Response(status=403, text="llmgate: no such decided call\n")
        await request.release()  # what goes upstream is the ticket's body
        return await self.exchange(ticket, request)

    async def exchange(
        self, ticket: Ticket, request: web.BaseRequest | None = None
    ) -> web.StreamResponse:
        """The ticket's exchange, streamed to the listener's `request`, or without one
        (a buffered call exchanged from the gateway's own hook, with no listener hop)
        its whole reply: a reply the upstream streams anyway is then refused (502), as
        a buffered call's reply is screened whole. Any internal error is llmgate's 500."""
        self.in_flight += 1
        try:
            return await self._exchange(request, ticket)
        except Exception as exc:  # noqa: BLE001 - an internal error is a 500, never a hang
            log.error("llmgate dispatcher failed: %s", describe_exception(exc))
            failure = UpstreamFailure(
                500, "internal_error", "llmgate failed while sending this call upstream"
            )
            ticket.call.upstream_failure = failure
            return error_reply(ticket.call, failure)
        finally:
            self.in_flight -= 1

    async def _exchange(
        self, request: web.BaseRequest | None, ticket: Ticket
    ) -> web.StreamResponse:
        call = ticket.call
        # Shielded: a caller that leaves while the answer is on its way must not cancel
        # it, or a reservation Redis made would count until its TTL; answered, it is
        # released (CallRecorder._admitted sees the call closed).
        if (
            ticket.admitted is not None
            and (refusal := await asyncio.shield(ticket.admitted)) is not None
        ):
            return self.failed(call, refused(refusal))
        if ticket.recorded is not None and not await ticket.recorded:
            return self.failed(call, AUDIT_UNAVAILABLE)
        for number, leg in enumerate(ticket.legs):
            last = number == len(ticket.legs) - 1
            if leg.attempt is not None and leg.attempt is not call.serving:
                call.serve_with(leg.attempt)
                call.upstream_target = leg.target
            started = time.time()
            opened = await self._open(ticket, leg)
            if isinstance(opened, UpstreamFailure):
                self._note(ticket, leg, started, None, opened.reason, opened.message)
                if last:
                    return self.failed(call, opened)
                continue
            upstream = opened
            if not last and upstream.status in RETRY_STATUSES:
                # Nothing has reached the caller yet: the next route may serve it.
                self._note(ticket, leg, started, upstream.status, "upstream_error", None)
                upstream.release()
                continue
            self._note(ticket, leg, started, upstream.status, None, None)
            try:
                return await self._reply(request, upstream, ticket, leg)
            finally:
                upstream.close()
        raise AssertionError("a ticket has at least one leg")

    async def _open(self, ticket: Ticket, leg: Leg) -> UpstreamReply | UpstreamFailure:
        """Send the request and wait for the reply's headers, under the leg's timeouts."""
        assert self._client is not None
        limits = leg.timeouts
        body = leg.body if leg.body or ticket.method not in ("GET", "HEAD") else None
        deadline = asyncio.timeout(limits.connect + limits.first_byte)
        try:
            async with deadline:
                return await self._client.request(
                    ticket.method, leg.url, leg.headers, body, limits.connect
                )
        except Exception as exc:  # noqa: BLE001 - every fault is answered, none escapes
            fault = TimeoutError() if deadline.expired() else exc
            connecting = isinstance(fault, ConnectTimeout)
            seconds = limits.connect if connecting else limits.first_byte
            return classify(fault, leg.route, "first_byte", seconds)

    def _note(
        self,
        ticket: Ticket,
        leg: Leg,
        started: float,
        status: int | None,
        reason: str | None,
        error: str | None,
    ) -> None:
        """Remember one attempt; only calls that had somewhere else to go record them."""
        if len(ticket.legs) > 1:
            row = attempt_row(ticket.call, leg, started, status, reason, error)
            ticket.call.attempted.append(row)

    async def _reply(
        self,
        request: web.BaseRequest | None,
        upstream: UpstreamReply,
        ticket: Ticket,
        leg: Leg,
    ) -> web.StreamResponse:
        call = ticket.call
        translation = leg.attempt.translation if leg.attempt is not None else None
        streams = translation is not None and call.stream and upstream.status < 400
        framing = stream_framing(call, upstream.status, upstream.headers.get("content-type", ""))
        if request is None and (streams or (translation is None and framing is not None)):
            return self.failed(call, _streamed_anyway(leg.route))
        if translation is not None:
            if streams:
                assert request is not None
                return await translated_stream(request, upstream, ticket, leg, translation)
            return await translated_buffered(upstream, ticket, leg, translation)
        if framing is None:
            return await self._buffered(upstream, ticket, leg)
        assert request is not None and framing is not None
        return await self._streamed(request, upstream, ticket, leg, framing)

    def failed(self, call: Call, failure: UpstreamFailure) -> web.Response:
        return answer_failure(call, failure)

    async def _buffered(
        self, upstream: UpstreamReply, ticket: Ticket, leg: Leg
    ) -> web.StreamResponse:
        """Read the whole reply first: a fault midway is then still a clean answer."""
        try:
            body = await read_all(upstream, leg.timeouts.idle)
        except Exception as exc:  # noqa: BLE001
            return self.failed(ticket.call, classify(exc, leg.route, "body", leg.timeouts.idle))
        reply = web.Response(status=upstream.status, reason=upstream.reason, body=body)
        _copy_headers(upstream, reply)
        return reply

    async def _streamed(
        self,
        request: web.BaseRequest,
        upstream: UpstreamReply,
        ticket: Ticket,
        leg: Leg,
        framing: str,
    ) -> web.StreamResponse:
        call = ticket.call
        reply = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        _copy_headers(upstream, reply)
        await reply.prepare(request)
        sent_any = False
        failure: UpstreamFailure | None = None
        loop = asyncio.get_running_loop()
        idle = leg.timeouts.idle
        try:
            async with asyncio.timeout(idle) as quiet:
                async for chunk in upstream.chunks():
                    await reply.write(chunk)
                    sent_any = True
                    if call.tap is not None and call.tap.failure is not None:
                        return reply  # the reader stopped the stream: read no more
                    quiet.reschedule(loop.time() + idle)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            # The caller (mitmproxy's side of the hop) is gone; the row says so.
            return reply
        except Exception as exc:  # noqa: BLE001
            failure = classify(exc, leg.route, "body", idle)
        if failure is not None:
            call.upstream_failure = failure
            try:
                await reply.write(stream_error(call, failure, framing, sent_any))
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                return reply
        await reply.write_eof()
        return reply


def _streamed_anyway(route: str) -> UpstreamFailure:
    return UpstreamFailure(
        502,
        "upstream_protocol_error",
        f"the upstream of route '{route}' answered a buffered call with a stream",
    )


def _copy_headers(upstream: UpstreamReply, reply: web.StreamResponse) -> None:
    for name, value in upstream.raw_headers:
        text = name.decode("latin-1")
        if text.lower() not in _HOP_BY_HOP:
            reply.headers.add(text, value.decode("latin-1"))
    filled_in = [name for name in FILLED_IN if name not in upstream.headers]
    if filled_in:
        reply.headers[FILLED_IN_HEADER] = ",".join(filled_in)
