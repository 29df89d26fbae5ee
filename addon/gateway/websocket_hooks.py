"""The Responses API over WebSocket: every `response.create` message is a call.

Codex opens `wss://api.openai.com/v1/responses` and sends each turn as a JSON
text message `{"type": "response.create", ...}` (the body of a POST
/v1/responses); the server answers with the events of the SSE stream, one per
message. The handshake only picks the upstream and its credential (the model is
not known yet); each client message then goes through the same pipeline as an
HTTP call (parse, route, policy, safety, quota), gets its own ledger row, and is
settled from the server's `response.completed` / `failed` / `incomplete` /
`error` event. A refused message is dropped and answered with an `error` event.
The handshake itself gets no row unless it is refused or fails.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from addon import pipeline, planning
from addon.call import Call, Rejection, describe_exception, new_request_id
from addon.config import GatewayConfig, Route
from addon.credentials import Fields, is_masked_header
from addon.policy import EffectivePolicy
from addon.protocols import PROTOCOLS
from addon.quota import budget
from addon.safety.screening import redact_json
from addon.safety.stream_guard import StreamGuard
from addon.sessions import attribute
from addon.streaming import StreamTap

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

log = logging.getLogger("llmgate")

RESPONSES = PROTOCOLS["openai_responses"]
# A call on a socket ends with one of these server events.
_FINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
_FINAL_MARKERS = tuple(f'"{kind}"'.encode() for kind in _FINAL_EVENTS)


def is_responses_websocket(flow: http.HTTPFlow) -> bool:
    req = flow.request
    if req.method != "GET" or "websocket" not in req.headers.get("upgrade", "").lower():
        return False
    return req.path.split("?", 1)[0].rstrip("/").endswith("/v1/responses")


@dataclass
class Socket:
    """One decided WebSocket: who is on it, where it goes, the calls still open on it."""

    handshake: Call
    route: Route
    headers: Fields  # the caller's handshake headers, credentials masked
    policy: EffectivePolicy
    calls: deque[Call] = field(default_factory=deque)


def _same_upstream(a: Route, b: Route) -> bool:
    return a.endpoint == b.endpoint and a.api_key_secret == b.api_key_secret


class WebSocketCalls:
    """Child addon of `Gateway`: the websocket hooks for the sockets it decided."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.sockets: dict[str, Socket] = {}

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config

    # --- the handshake (called from Gateway.request) -----------------------------
    def handshake(
        self, flow: http.HTTPFlow, call: Call, raw_path: str, policy: EffectivePolicy
    ) -> Rejection | None:
        """Pick the upstream for a socket; the calls on it are decided message by message."""
        if not ctx.options.llmgate_websocket or not ctx.options.websocket:
            return Rejection(
                426,
                "websocket_refused",
                "this llmgate refuses the Responses API over WebSocket; use HTTPS "
                "(Codex falls back to it by itself)",
                "denied",
            )
        call.protocol, call.protocol_name, call.transport = RESPONSES, RESPONSES.name, "websocket"
        route = self._socket_route(call)
        if route is None:
            return Rejection(
                404,
                "no_route",
                "llmgate has no OpenAI route that can carry this WebSocket"
                + (
                    " with an llmgate key (a route needs an api_key_secret)"
                    if call.virtual_key
                    else ""
                ),
            )
        call.route = route
        rewrite = planning.plan_rewrite(call, raw_path, None, self.gateway.secrets)
        if isinstance(rewrite, Rejection):
            return rewrite
        headers = self.gateway.masking.caller_fields(flow)
        self.gateway.masking.release(flow)
        self.gateway.apply_rewrite(flow, call, rewrite)
        self.gateway.forwarding(flow, call)
        masked = tuple((n, v) for n, v in headers if not is_masked_header(n.decode("latin-1")))
        self.sockets[flow.id] = Socket(call, route, masked, policy)
        return None

    def _socket_route(self, call: Call) -> Route | None:
        for route in self.config.routes:
            if route.provider != RESPONSES.provider:
                continue
            if call.virtual_key and not route.api_key_secret:
                continue
            return route
        return None

    # --- mitmproxy hooks -----------------------------------------------------------
    def response(self, flow: http.HTTPFlow) -> None:
        sock = self.sockets.get(flow.id)
        if sock is None or flow.response is None:
            return
        self.gateway.mask_sent(flow, sock.handshake)
        flow.response.headers[self.gateway.request_id_header] = sock.handshake.id
        if flow.response.status_code != 101:
            # The upstream refused the upgrade: that attempt is a failed call on record.
            self.sockets.pop(flow.id, None)
            handshake = sock.handshake
            self.gateway.recorder.open_row(handshake, flow.request.host, sock.headers, b"")
            fields = pipeline.settle(
                handshake,
                http_status=flow.response.status_code,
                response_body=None,
                error=f"WebSocket upgrade refused with {flow.response.status_code}",
                cancelled=False,
                pricer=self.gateway.pricer,
            )
            self.gateway.recorder.close_row(
                handshake, fields, flow.response.headers.fields, flow.response.content or b""
            )

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None or flow.id not in self.sockets:
            return  # an open socket's calls are settled by websocket_end
        sock = self.sockets.pop(flow.id)
        self.gateway.mask_sent(flow, sock.handshake)
        handshake = sock.handshake
        self.gateway.recorder.open_row(handshake, flow.request.host, sock.headers, b"")
        message = flow.error.msg if flow.error else "the WebSocket upgrade failed"
        fields = pipeline.settle(
            handshake,
            http_status=None,
            response_body=None,
            error=message,
            cancelled="client disconnected" in message.lower(),
            pricer=self.gateway.pricer,
        )
        self.gateway.recorder.close_row(handshake, fields, None, b"")

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        sock = self.sockets.get(flow.id)
        if sock is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        if message.injected:
            return  # llmgate's own: an error event, or text the safety guard released
        try:
            if message.from_client:
                await self._client_message(flow, sock, message)
            else:
                self._server_message(flow, sock, message)
        except Exception as exc:  # noqa: BLE001 - fail closed on the socket too
            log.error("llmgate internal error on a WebSocket message: %s", describe_exception(exc))
            message.drop()
            failure = Rejection(500, "internal_error", "llmgate internal error")
            self._send_error(flow, failure)
            if message.from_client:  # the message was a call too, and it has its row
                self.gateway.recorder.record_refusal(self._message_call(sock, message), failure)
            for call in list(sock.calls):
                self._settle(sock, call, pipeline.internal_error_fields(call))

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        sock = self.sockets.pop(flow.id, None)
        if sock is None:
            return
        by_client = bool(flow.websocket and flow.websocket.closed_by_client)
        reason = "client closed the WebSocket" if by_client else "the WebSocket closed"
        for call in list(sock.calls):
            fields = pipeline.settle(
                call,
                http_status=None,
                response_body=None,
                error=f"{reason} before the reply ended",
                cancelled=by_client,
                pricer=self.gateway.pricer,
            )
            self._settle(sock, call, fields)

    # --- one client message: one call ------------------------------------------------
    async def _client_message(
        self, flow: http.HTTPFlow, sock: Socket, message: WebSocketMessage
    ) -> None:
        call = self._message_call(sock, message)
        raw = message.content
        outcome = await self._decide(call, sock, raw)
        if isinstance(outcome, Rejection):
            message.drop()
            if call.request_screening is not None and call.request_screening.items:
                message.content = redact_json(raw, call.request_screening.values())
            self._send_error(flow, outcome, call)
            self.gateway.recorder.open_row(call, flow.request.host, sock.headers, message.content)
            self.gateway.recorder.close_row(call, pipeline.refusal_fields(call, outcome), None, b"")
            return
        if outcome != raw:
            message.content = outcome
        call.stream = True
        guard = None
        safety = self.config.safety
        if safety.enabled and safety.rewrites_responses():
            guard = StreamGuard(RESPONSES, self.gateway.scanner, safety, "json_array")
        call.guard = guard
        call.tap = StreamTap(
            RESPONSES,
            "json_array",
            keep_bytes=self.config.audit.payload_max_bytes + 1,
            guard=guard,
        )
        sock.calls.append(call)
        self.gateway.recorder.open_row(call, flow.request.host, sock.headers, message.content)

    @staticmethod
    def _message_call(sock: Socket, message: WebSocketMessage) -> Call:
        """A new call for one client message, by the caller who opened the socket."""
        handshake = sock.handshake
        return Call(
            id=new_request_id(),
            started_at=message.timestamp or time.time(),
            protocol_name=RESPONSES.name,
            host=handshake.host,
            path=handshake.path,
            client_ip=handshake.client_ip,
            user=handshake.user,
            groups=handshake.groups,
            virtual_key=handshake.virtual_key,
            transport="websocket",
            stream=True,
            session_id=handshake.session_id,
            client=handshake.client,
        )

    async def _decide(self, call: Call, sock: Socket, raw: bytes) -> bytes | Rejection:
        """The message as it may go upstream, or the reason it may not."""
        body = pipeline.decode_body(raw)
        if isinstance(body, Rejection):
            return body
        kind = body.get("type") if isinstance(body, dict) else None
        if kind != "response.create":
            return Rejection(
                400,
                "unsupported_message",
                f"llmgate only forwards response.create messages, not {str(kind)[:60]!r}",
            )
        if call.session_id is None:
            call.session_id = attribute((), body).session_id
        refused = (
            pipeline.parse_body(call, body)
            or pipeline.choose_route(call, self.config)
            or self._same_socket_route(call, sock)
            or pipeline.check_policy(call, sock.policy)
        )
        if refused is None and self.config.safety.enabled:
            refused = pipeline.screen_request(
                call, self.gateway.scanner, self.config.safety, sock.headers
            )
        if refused is not None:
            return refused
        rewrite = planning.plan_rewrite(call, call.path, raw, self.gateway.secrets)
        if isinstance(rewrite, Rejection):
            return rewrite
        # A warm-up (`"generate": false`, Codex sends one per socket) is policed,
        # scanned and recorded, and its input counts against token budgets, but it is
        # no request of the caller's and generates nothing (budget.quota_demand).
        call.warmup = call.body.get("generate") is False
        call.quota_windows = budget.bind_windows(
            call.user or "", call.groups, sock.policy.quota_windows
        )
        if call.quota_windows:
            denied = await self.gateway.recorder.reserve(call)
            if denied is not None:
                return denied
        return rewrite.body if rewrite.body is not None else raw

    @staticmethod
    def _same_socket_route(call: Call, sock: Socket) -> Rejection | None:
        assert call.route is not None
        if _same_upstream(call.route, sock.route):
            return None
        return Rejection(
            400,
            "route_mismatch",
            f"model '{call.request.model if call.request else '?'}' is served by route "
            f"'{call.route.id}', but this WebSocket goes to route '{sock.route.id}'. "
            "Open a new connection for it, or use HTTPS.",
        )

    # --- server events ------------------------------------------------------------------
    def _server_message(self, flow: http.HTTPFlow, sock: Socket, message: WebSocketMessage) -> None:
        if not sock.calls:
            return  # not part of a call (nothing was asked): nothing to account
        call = sock.calls[0]
        assert call.tap is not None
        raw = message.content
        pieces = call.tap.message(raw)
        if not pieces:
            message.drop()
        else:
            message.content = pieces[0]
            for piece in pieces[1:]:
                ctx.master.commands.call("inject.websocket", flow, True, piece, True)
        # Only an event that names a final type is parsed (again) to find out.
        ending = any(marker in raw for marker in _FINAL_MARKERS) and _final_status(raw)
        if call.tap.failure is not None or ending:
            fields = pipeline.settle(
                call,
                http_status=ending or 502,
                response_body=None,
                error=None,
                cancelled=False,
                pricer=self.gateway.pricer,
            )
            self._settle(sock, call, fields)

    def _settle(self, sock: Socket, call: Call, fields: dict) -> None:
        if call in sock.calls:
            sock.calls.remove(call)
        if call.closed:
            return
        body = bytes(call.tap.kept) if call.tap is not None else b""
        self.gateway.recorder.close_row(call, fields, (), body)  # () : the events have no headers

    def _send_error(
        self, flow: http.HTTPFlow, refusal: Rejection, call: Call | None = None
    ) -> None:
        event = RESPONSES.websocket_error(refusal.status, refusal.kind, refusal.message)
        if call is not None:
            event["request_id"] = call.id
        data = json.dumps(event).encode()
        ctx.master.commands.call("inject.websocket", flow, True, data, True)


def _final_status(raw: bytes) -> int | None:
    """None unless the event ends a call: then 200 for a reply that ended, or an error
    event's own status (else 502) for one that failed."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in _FINAL_EVENTS:
        return None
    if kind != "error":
        return 200
    status = data.get("status")
    return status if isinstance(status, int) and 400 <= status < 600 else 502
