"""The reply side of an HTTP call: stream taps, reply screening, settling the row.

Child addon of `Gateway`: its hooks run after the gateway's own, for the calls the
gateway decided and sent. An internal error here refuses the reply (a 500 in the
caller's format when its headers have not left yet) and still closes the row.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from mitmproxy import http

from addon import pipeline
from addon.call import Call, Rejection, describe_exception
from addon.quota import budget
from addon.safety.screening import redact_json
from addon.safety.stream_guard import StreamGuard
from addon.streaming import StreamTap

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

log = logging.getLogger("llmgate")

REQUEST_ID_HEADER = "x-llmgate-request-id"


def answer(call: Call, rejection: Rejection) -> http.Response:
    """llmgate's own answer to a call, in the caller's wire format, with the request id."""
    return http.Response.make(
        rejection.status,
        rejection.body(call.protocol),
        {"content-type": "application/json", REQUEST_ID_HEADER: call.id, **rejection.headers},
    )


CLIENT_LEFT = "client disconnected before the reply"


class HttpReplies:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.gateway.calls.get(flow.id)
        if call is None or flow.response is None:
            return
        try:
            self.gateway.mask_sent(flow, call)
            self.gateway.handoff.restore(flow, call)
            self._install_tap(flow, call)
        except Exception as exc:  # noqa: BLE001 - an unread reply is replaced, not passed
            log.error("llmgate internal error on a reply: %s", describe_exception(exc))
            call.internal_error = True
            self._replace_reply(flow, call)

    def _replace_reply(self, flow: http.HTTPFlow, call: Call) -> None:
        """Before the reply's headers leave: answer a 500 in the caller's format instead."""
        assert flow.response is not None
        body = Rejection(500, "internal_error", "llmgate failed while reading the reply").body(
            call.protocol
        )
        flow.response.status_code = 500
        flow.response.headers.clear()
        flow.response.headers["content-type"] = "application/json"
        flow.response.headers[REQUEST_ID_HEADER] = call.id
        flow.response.stream = lambda chunk: body if not chunk else []

    def _install_tap(self, flow: http.HTTPFlow, call: Call) -> None:
        assert flow.response is not None
        flow.response.headers[REQUEST_ID_HEADER] = call.id
        if call.quota_states:
            # Appending raw fields at once: each Headers.__setitem__ rescans every header.
            extra = budget.ratelimit_headers(call.quota_states, time.time())
            flow.response.headers.fields += tuple(
                (k.encode(), v.encode()) for k, v in extra.items()
            )
        framing = self._stream_framing(call, flow.response)
        if framing is None or call.protocol is None:
            return
        encoding = flow.response.headers.get("content-encoding", "").lower()
        decode = encoding in ("gzip", "deflate")
        safety = self.gateway.config.safety
        if safety.enabled and safety.rewrites_responses() and flow.response.status_code < 400:
            call.guard = StreamGuard(call.protocol, self.gateway.scanner, safety, framing)
        call.tap = StreamTap(
            call.protocol,
            framing,
            hide_injected=call.hide_injected,
            gzip_encoded=decode,
            keep_bytes=self.gateway.config.audit.payload_max_bytes + 1,
            guard=call.guard,
            max_event_bytes=self.gateway.config.limits.max_event_bytes,
        )
        if decode:
            # The tap forwards what it decoded, so the caller must not decode again.
            flow.response.headers.pop("content-encoding", None)
        if decode or call.hide_injected or call.guard:
            flow.response.headers.pop("content-length", None)
        flow.response.stream = call.tap

    @staticmethod
    def _stream_framing(call: Call, response: http.Response) -> str | None:
        content_type = response.headers.get("content-type", "").lower()
        if content_type.startswith("text/event-stream"):
            return "sse"
        if call.stream and call.protocol_name == "gemini" and response.status_code < 400:
            return "json_array"
        return None

    def response(self, flow: http.HTTPFlow) -> None:
        call = self.gateway.calls.get(flow.id)
        if call is None or call.closed or flow.response is None:
            return
        try:
            self.gateway.mask_sent(flow, call)
            self.gateway.handoff.restore(flow, call)
            self._finish(flow, call)
        except Exception as exc:  # noqa: BLE001
            self._failed_after_send(flow, call, exc, replace=True)

    def _failed_after_send(
        self, flow: http.HTTPFlow, call: Call, exc: BaseException, *, replace: bool
    ) -> None:
        """An internal error once the call went out: refuse the reply, close the row."""
        log.error("llmgate internal error on a reply: %s", describe_exception(exc))
        try:
            if replace and flow.response is not None and call.tap is None:
                failure = Rejection(500, "internal_error", "llmgate failed on the reply")
                flow.response = answer(call, failure)
            if not call.closed:
                self.gateway.close_flow(flow, call, pipeline.internal_error_fields(call))
        except Exception as second:  # noqa: BLE001
            log.error("llmgate could not record a failed reply: %s", describe_exception(second))

    def _finish(self, flow: http.HTTPFlow, call: Call) -> None:
        assert flow.response is not None
        if call.internal_error:
            self.gateway.close_flow(flow, call, pipeline.internal_error_fields(call, 500))
            return
        body = None if call.tap else flow.response.get_content(strict=False)
        if (
            body
            and self.gateway.config.safety.enabled
            and call.protocol
            and flow.response.status_code < 400
        ):
            self._screen_reply(flow, call, body)
        fields = pipeline.settle(
            call,
            http_status=flow.response.status_code,
            response_body=body,
            error=None,
            cancelled=False,
            pricer=self.gateway.pricer,
        )
        self.gateway.close_flow(flow, call, fields)

    def _screen_reply(self, flow: http.HTTPFlow, call: Call, body: bytes) -> None:
        assert flow.response is not None
        if pipeline.screen_reply(call, body, self.gateway.scanner, self.gateway.config.safety):
            assert call.reply_screening is not None
            message = call.reply_screening.block_message("reply")
            flow.response = answer(call, Rejection(502, "safety_block", message))
            flow.marked, flow.comment = ":no_entry:", message
        elif call.reply_screening and call.reply_screening.values("redact"):
            flow.response.content = redact_json(body, call.reply_screening.values("redact"))

    def error(self, flow: http.HTTPFlow) -> None:
        call = self.gateway.calls.get(flow.id)
        self.gateway.masking.forget(flow)
        if call is None or call.closed:
            return
        try:
            self.gateway.mask_sent(flow, call)
            self.gateway.handoff.restore(flow, call)
            self._settle_error(flow, call)
        except Exception as exc:  # noqa: BLE001
            self._failed_after_send(flow, call, exc, replace=False)

    def abandoned(self, flow: http.HTTPFlow, call: Call) -> None:
        """The client left while its buffered call was exchanged in the request hook:
        the row closes as cancelled, and the flow is killed, so that mitmproxy sends it
        nowhere."""
        self.gateway.mask_sent(flow, call)
        self.gateway.handoff.restore(flow, call)
        self._settle_error(flow, call, CLIENT_LEFT)
        if flow.killable:
            flow.kill()

    def _settle_error(self, flow: http.HTTPFlow, call: Call, message: str | None = None) -> None:
        if message is None:
            message = flow.error.msg if flow.error else "unknown error"
        fields = pipeline.settle(
            call,
            http_status=flow.response.status_code if flow.response else None,
            response_body=None,
            error=message,
            cancelled="client disconnected" in message.lower(),
            pricer=self.gateway.pricer,
        )
        self.gateway.close_flow(flow, call, fields)
