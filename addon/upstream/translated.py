"""The dispatcher's side of a translated call: the provider's reply, read or streamed,
answered in the caller's protocol (`addon.translate.reply` does the translating)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from addon.call import describe_exception
from addon.streaming import EventTooLarge
from addon.translate.reply import Translation
from addon.upstream.failures import UpstreamFailure, classify
from addon.upstream.http1 import UpstreamError, UpstreamReply
from addon.upstream.tickets import FILLED_IN_HEADER, Leg, Ticket, answer_failure, read_all

log = logging.getLogger("llmgate")

# The upstream's rate-limit hints stay meaningful in any protocol.
_KEPT_HEADERS = ("retry-after", "retry-after-ms")
_NETWORK_FAULTS = (UpstreamError, OSError, TimeoutError)


def _headers(upstream: UpstreamReply, content_type: str) -> dict[str, str]:
    headers = {"content-type": content_type, FILLED_IN_HEADER: "Date,Server"}
    for name in _KEPT_HEADERS:
        if name in upstream.headers:
            headers[name] = upstream.headers[name]
    return headers


def _untranslatable(leg: Leg, translation: Translation, exc: BaseException) -> UpstreamFailure:
    log.error(
        "llmgate could not translate a reply from %s to %s: %s",
        translation.upstream,
        translation.caller,
        describe_exception(exc),
    )
    return UpstreamFailure(
        502,
        "translation_error",
        f"llmgate could not translate the reply of route '{leg.route}' from "
        f"{translation.upstream} to {translation.caller}",
    )


async def translated_buffered(
    upstream: UpstreamReply,
    ticket: Ticket,
    leg: Leg,
    translation: Translation,
) -> web.StreamResponse:
    call = ticket.call
    try:
        body = await read_all(upstream, leg.timeouts.idle)
    except Exception as exc:  # noqa: BLE001
        return answer_failure(call, classify(exc, leg.route, "body", leg.timeouts.idle))
    headers = _headers(upstream, "application/json")
    if upstream.status >= 400:
        status, out = translation.error_reply(upstream.status, body)
        return web.Response(status=status, body=out, headers=headers)
    if call.stream:
        return answer_failure(
            call,
            UpstreamFailure(
                502,
                "upstream_protocol_error",
                f"the upstream of route '{leg.route}' answered a streamed call without a stream",
            ),
        )
    try:
        out = translation.reply_body(body)
    except Exception as exc:  # noqa: BLE001 - an unreadable reply is an error, never passed on
        return answer_failure(call, _untranslatable(leg, translation, exc))
    return web.Response(status=upstream.status, body=out, headers=headers)


async def translated_stream(
    request: web.BaseRequest,
    upstream: UpstreamReply,
    ticket: Ticket,
    leg: Leg,
    translation: Translation,
) -> web.StreamResponse:
    call = ticket.call
    if not upstream.headers.get("content-type", "").lower().startswith("text/event-stream"):
        return await translated_buffered(upstream, ticket, leg, translation)
    reply = web.StreamResponse(status=upstream.status)
    for name, value in _headers(upstream, translation.content_type).items():
        reply.headers[name] = value
    reply.headers["cache-control"] = "no-cache"
    await reply.prepare(request)
    stream = translation.stream(ticket.max_event_bytes)
    failure: UpstreamFailure | None = None
    loop = asyncio.get_running_loop()
    idle = leg.timeouts.idle
    try:
        async with asyncio.timeout(idle) as quiet:
            async for chunk in upstream.chunks():
                out = stream.feed(chunk)
                if out:
                    await reply.write(out)
                if call.tap is not None and call.tap.failure is not None:
                    return reply  # the reader stopped the stream: read no more
                if stream.ended:
                    break  # the upstream's last event came: the caller's stream ends now
                quiet.reschedule(loop.time() + idle)
        out = stream.finish()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        return reply  # the caller's side of the hop is gone; the row says so
    except EventTooLarge as exc:
        failure = UpstreamFailure(
            502,
            "event_too_large",
            f"the upstream of route '{leg.route}' sent a stream event over {exc.limit} bytes "
            "(limits.max_event_bytes); the stream was stopped",
        )
    except _NETWORK_FAULTS as exc:
        failure = classify(exc, leg.route, "body", idle)
    except Exception as exc:  # noqa: BLE001 - a reply llmgate cannot translate ends here
        failure = _untranslatable(leg, translation, exc)
    if failure is not None:
        call.upstream_failure = failure
        out = stream.fail(failure.status, failure.reason, failure.message)
    try:
        await reply.write(out)
        await reply.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass
    return reply
