"""The mitmproxy addon: thin hooks that hand each LLM call to `addon.pipeline`.

With its child addons in this package, the only code that knows about flows.
Options are declared and applied by `options` (from `load` and `configure`);
every hook starts with mitmproxy's guard idiom, because another addon (or llmgate
itself) may already have answered the flow.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable

from mitmproxy import ctx, http

from addon import pipeline, planning
from addon.call import Call, Rejection, Rewrite, describe_exception, new_request_id
from addon.config import GatewayConfig
from addon.credentials import (
    Fields,
    SecretStore,
    is_masked_header,
    replace_in_fields,
    strip_credential_params,
)
from addon.gateway import call_log, flow_notes, options
from addon.gateway.admission import bad_target, claimed_names, misdirected, too_large
from addon.gateway.connection_guard import ConnectionGuard
from addon.gateway.flow_masking import FlowMasking, ViewShade, ViewShadeLifter
from addon.gateway.handoff import HandOff
from addon.gateway.health import HEALTH_HOST, HealthPage
from addon.gateway.hook_table import HookTable
from addon.gateway.lifecycle import Lifecycle
from addon.gateway.recorder import CallRecorder
from addon.gateway.replies import REQUEST_ID_HEADER, HttpReplies, answer
from addon.gateway.websocket_hooks import WebSocketCalls, is_responses_websocket
from addon.hosts import HostSet
from addon.identity import Identifier
from addon.keys import KeyStore
from addon.ledger.pricing import Pricer, load_pricing
from addon.ledger.writer import AuditWriter
from addon.policy import effective_policy
from addon.protocols import PROTOCOLS
from addon.protocols.detect import detect_protocol, error_protocol
from addon.quota import budget
from addon.quota.worker import Quota
from addon.safety.screening import build_scanner, redact_json
from addon.sessions import SESSION_HEADER, attribute

log = logging.getLogger("llmgate")


def buffered_reply(call: Call) -> bool:
    """An LLM call whose reply is read whole: exchanged without the listener hop."""
    return call.request is not None and not call.stream and call.protocol_name != "other"


class Gateway:
    name = "llmgate"

    def __init__(self) -> None:
        self.config = GatewayConfig()
        self.pricer = Pricer(load_pricing(None))
        self.secrets = SecretStore()
        self.audit: AuditWriter | None = None
        self.quota: Quota | None = None
        self.keys: KeyStore | None = None
        self.identifier = Identifier(self.config.identity, None)
        self.scanner = build_scanner(self.config.safety)
        self.hmac_key = b""
        self.calls: dict[str, Call] = {}
        self.masking = FlowMasking()
        self.header_verdicts: dict[bytes, bool] = {}
        self.request_id_header = REQUEST_ID_HEADER
        self.recorder = CallRecorder(self)
        self.replies = HttpReplies(self)
        self.websockets = WebSocketCalls(self)
        self.connections = ConnectionGuard(self)
        self.handoff = HandOff(self)
        self.health = HealthPage(self)
        self.lifecycle = Lifecycle(self)
        self.hook_table = HookTable()
        # mitmproxy calls a child addon's hooks after its parent's.
        self.addons = [
            self.replies,
            self.websockets,
            self.connections,
            self.handoff,
            self.hook_table,
        ]
        self.hosts = HostSet(())

    # --- options -----------------------------------------------------------------
    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        lifter = ViewShadeLifter(self.masking)
        if (previous := ctx.master.addons.get(lifter.name)) is not None:
            ctx.master.addons.remove(previous)  # the script was reloaded
        if ctx.master.addons.get("view") is not None:  # mitmweb or the console
            # Our child, so before the view; the lifter last, after it (flow_masking).
            self.addons.append(ViewShade(self.masking))
            ctx.master.addons.add(lifter)
        flow_notes.register_view()  # the "LLM conversation" contentview
        call_log.spare_the_legacy_event()
        options.declare(loader)

    def configure(self, updated: set[str]) -> None:
        options.configure(self, updated)

    def running(self) -> None:
        # What start-up built (mitmproxy, llmgate's tables, compiled patterns) lives as
        # long as the process: frozen, it is out of the cyclic collector's sight, whose
        # full collections then walk only what calls made. Unfrozen, one took ~60 ms
        # every few thousand calls, holding every call in flight (BENCH.md).
        gc.freeze()

    def close_stores(self) -> None:
        for store in (self.audit, self.quota, self.keys):
            if store is not None:
                store.close()
        # Last: until the writer has drained, the lease keeps other processes from
        # taking this instance's pending rows and journal for a dead one's.
        self.lifecycle.closed()

    async def done(self) -> None:
        # SIGTERM/SIGINT: calls in flight get drain_seconds to finish; the rest are
        # closed as interrupted (partial usage, quota settled) before the stores
        # close. Closing the quota worker applies the settles still queued.
        try:
            await self.lifecycle.drain(self.config.audit.drain_seconds)
        finally:
            self.close_stores()
            flow_notes.unregister_view()

    # --- request -----------------------------------------------------------------
    def _intercepts(self, flow: http.HTTPFlow) -> bool:
        """An LLM call: the host it goes to, the TLS name or the Host header names ours."""
        if flow.request.host in self.hosts:
            return True
        return any(name in self.hosts for name in claimed_names(flow))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            if not self._intercepts(flow):
                return
            # llmgate must read the whole call before anything goes upstream, even
            # when stream_large_bodies would otherwise stream it past unseen.
            flow.request.stream = False
            # From the first moment any view shows this flow, it shows no credential;
            # the caller's own are put back only on a call that forwards them.
            self.masking.hide(flow, self._finds_something)
        except Exception as exc:  # noqa: BLE001 - the request hook refuses the call
            log.error("llmgate could not hide credentials: %s", describe_exception(exc))

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        call: Call | None = None
        try:
            if flow.request.host == HEALTH_HOST:
                flow.response = self.health.page(flow)
                return
            if not self._intercepts(flow):
                return
            call = self._new_call(flow)
            await self._decide(flow, call)
        except Exception as exc:  # noqa: BLE001 - fail closed, whatever went wrong
            self._internal_error(flow, call, exc)

    async def _decide(self, flow: http.HTTPFlow, call: Call) -> None:
        problem = (
            misdirected(flow, self.hosts)
            or bad_target(self.masking.caller_path(flow))
            or too_large(flow, self.config.limits.max_request_bytes)
        )
        if problem is not None:
            self._reject(flow, call, problem)
            return
        fields = self.masking.caller_fields(flow)
        self._attribute(call, fields, None)
        # llmgate's own session header is for llmgate: no upstream sees it.
        flow.request.headers.pop(SESSION_HEADER, None)
        if call.user is None:
            self._reject(flow, call, pipeline.unauthenticated(call))
            return
        raw_path = self.masking.caller_path(flow)
        policy = effective_policy(self.config.policies, call.user, list(call.groups))
        if is_responses_websocket(flow):
            refused = self.websockets.handshake(flow, call, raw_path, policy)
            if refused is not None:
                self._reject(flow, call, refused)
            else:
                self.calls.pop(flow.id, None)  # the calls are the messages, not the upgrade
            return
        if call.protocol_name == "other":
            outcome = planning.admit_other(call, policy, self.config, raw_path, self.secrets)
            if isinstance(outcome, Rejection):
                self._reject(flow, call, outcome)
                return
            self.masking.release(flow)
            if outcome is not None:
                self.apply_rewrite(flow, call, outcome)
            await self._send(flow, call)
            return
        raw = flow.request.get_content(strict=False) or b""
        refused = (
            pipeline.parse_call(call, raw)
            or self._attribute(call, fields, call.body)
            or pipeline.choose_route(call, self.config)
            or pipeline.check_policy(call, policy)
        )
        if isinstance(refused, Rejection):
            self._reject(flow, call, refused)
            return
        # The quota check leaves now: a Redis store runs it while the call is screened,
        # planned and handed to the dispatcher, which awaits its answer before the
        # call leaves (a 429 from there is the same answer and the same row).
        call.quota_windows = budget.bind_windows(call.user, call.groups, policy.quota_windows)
        reserving = self.recorder.send_reserve(call) if call.quota_windows else None
        try:
            outcome = self._screen_request(call, fields) or planning.plan_attempts(
                call, policy, self.config, raw_path, raw, self.secrets
            )
        except BaseException:
            if reserving is not None:
                await reserving
            raise
        admitted: Awaitable[Rejection | None] | None = None
        if reserving is not None:
            assert self.quota is not None
            if isinstance(outcome, Rejection) or not self.quota.answers_later:
                over_quota = await reserving
                if isinstance(outcome, Rejection):
                    self.recorder.release_quota(call)  # refused for another reason
                elif over_quota is not None:
                    outcome = over_quota
            else:
                admitted = self.recorder.answer_later(call, reserving)
        if isinstance(outcome, Rejection):
            self._reject(flow, call, outcome)
            return
        self.masking.release(flow)
        caller_fields = flow.request.headers.fields
        self.apply_rewrite(flow, call, outcome)
        await self._send(flow, call, caller_fields, admitted)

    async def _send(
        self,
        flow: http.HTTPFlow,
        call: Call,
        caller_fields: Fields = (),
        admitted: Awaitable[Rejection | None] | None = None,
    ) -> None:
        """The decided call goes to the dispatcher. With audit.on_failure refuse its
        row's commit runs meanwhile, and the dispatcher waits for it before anything
        leaves (refusing with 503 audit_unavailable if it failed); so it does for a
        quota answer still on its way (`admitted`).

        `caller_fields` are the caller's headers before the rewrite: fallbacks
        build their requests from them."""
        await self.handoff.ensure_started()
        ticket = self.handoff.take(flow, call, call.route, caller_fields)  # masked from here
        ticket.admitted = admitted
        req = flow.request
        ticket.recorded = self.recorder.open_row_before_sending(
            call, req.host, req.headers.fields, req.get_content(strict=False) or b""
        )
        if buffered_reply(call):
            if not await self.handoff.exchange(flow, call, ticket):
                self.replies.abandoned(flow, call)
        else:
            self.handoff.send(flow, call, ticket)

    def forwarding(self, flow: http.HTTPFlow, call: Call) -> None:
        """The flow, as it now stands, is the decided call mitmproxy is about to send."""
        self.connections.allow(flow)
        self.masking.sending(flow, call.credential_label or "caller key")

    def mask_sent(self, flow: http.HTTPFlow, call: Call) -> None:
        if not call.masked:
            call.masked = True
            self.masking.mask_sent(flow, call.credential_label or "caller key")

    def _internal_error(self, flow: http.HTTPFlow, call: Call | None, exc: BaseException) -> None:
        # Only where it broke, never the message: it may quote the caller's body.
        log.error("llmgate internal error, call refused: %s", describe_exception(exc))
        try:
            if call is None:
                call = self._bare_call(flow)
            elif call.closed:
                if flow.response is None:  # recorded, yet not answered: still never forward
                    raise RuntimeError("a closed call without an answer")
                return
            message = (
                "llmgate could not decide this call (internal error), so it refused it; "
                f"nothing was sent upstream. Report request id {call.id} to your operator."
            )
            self._reject(flow, call, Rejection(500, "internal_error", message))
        except Exception as second:  # noqa: BLE001 - last resort: still never forward
            log.error("llmgate could not record the refusal: %s", describe_exception(second))
            flow.response = http.Response.make(
                500,
                b'{"error": {"message": "llmgate internal error", "code": "internal_error"}}',
                {"content-type": "application/json"},
            )

    def _finds_something(self, value: bytes) -> bool:
        """Whether the scanner finds anything in a header value (masked in every view).

        Header values repeat from call to call (user agents, versions, ids), so the
        answer is remembered per value; the memory is cleared with the scanner.
        """
        if not self.config.safety.enabled:
            return False
        found = self.header_verdicts.get(value)
        if found is None:
            if len(self.header_verdicts) > 4096:
                self.header_verdicts.clear()
            found = bool(self.scanner.scan(value.decode("latin-1")))
            self.header_verdicts[value] = found
        return found

    @staticmethod
    def _attribute(call: Call, fields: Fields, body: object) -> None:
        """The call's agent session and client; the body may name the session too."""
        if call.session_id is None or call.client is None:
            found = attribute(fields, body)
            call.session_id = call.session_id or found.session_id
            call.client = call.client or found.client

    def _screen_request(self, call: Call, headers: Fields) -> Rejection | None:
        if not self.config.safety.enabled:
            return None
        # Only values the scanner flagged need a located screening; the rest are clean.
        flagged = tuple(
            (name, value)
            for name, value in headers
            if not is_masked_header(name.decode("latin-1")) and self._finds_something(value)
        )
        return pipeline.screen_request(call, self.scanner, self.config.safety, flagged)

    def _bare_call(self, flow: http.HTTPFlow) -> Call:
        """A call with no identity yet: the record of a refusal that came early."""
        path = self.masking.caller_path(flow)
        call = Call(
            id=new_request_id(),
            started_at=flow.request.timestamp_start or time.time(),
            protocol_name=detect_protocol(flow.request.method, path),
            host=self.hosts.canonical(flow.request.host) or flow.request.host,
            path=strip_credential_params(path),
            client_ip=flow.client_conn.peername[0] if flow.client_conn.peername else None,
        )
        self.calls[flow.id] = call
        flow.metadata["llmgate"] = {"request_id": call.id, "user": None}
        return call

    def _new_call(self, flow: http.HTTPFlow) -> Call:
        call = self._bare_call(flow)
        proxy_auth = flow.metadata.get("proxyauth")
        caller = self.identifier.identify(
            self.masking.caller_fields(flow),
            self.masking.caller_path(flow),
            proxy_auth[0] if proxy_auth else None,
            call.client_ip,
        )
        if proxy_auth:
            # mitmproxy keeps the proxy password here, and `-w` would save it.
            flow.metadata["proxyauth"] = (proxy_auth[0], "…(proxy password)")
        call.user, call.groups = caller.user, caller.groups
        call.virtual_key, call.stray_key = caller.virtual_key, caller.stray_key
        flow.metadata["llmgate"] = {"request_id": call.id, "user": call.user}
        return call

    def apply_rewrite(self, flow: http.HTTPFlow, call: Call, rewrite: Rewrite) -> None:
        call.credential_label = rewrite.credential_label
        req = flow.request
        req.headers.fields = rewrite.apply_to(req.headers.fields)
        req.scheme = rewrite.upstream.scheme
        # The port into the request's data, then the host through its setter, which
        # rewrites the Host header (and an HTTP/2 authority) once with both: each
        # setter would rewrite them, and that is half of this method's cost.
        req.data.port = rewrite.upstream.port
        req.host = rewrite.upstream.host
        req.path = rewrite.upstream.path
        if rewrite.body is not None and rewrite.body is not req.raw_content:
            req.content = rewrite.body

    def _reject(self, flow: http.HTTPFlow, call: Call, rejection: Rejection) -> None:
        if call.protocol is None:
            call.protocol = PROTOCOLS[error_protocol(call.protocol_name, call.host, call.path)]
        self.masking.forget(flow)  # nothing leaves: the credentials stay masked
        if call.request_screening is not None and call.request_screening.items:
            # The flow must not show what the scanner found either, body or headers.
            hidden = call.request_screening.values()
            content = flow.request.get_content(strict=False) or b""
            flow.request.content = redact_json(content, hidden)
            flow.request.headers.fields = replace_in_fields(flow.request.headers.fields, hidden)
        flow.response = answer(call, rejection)
        if rejection.outcome == "denied":
            # mitmweb shows the denial at a glance, with the reason as the comment.
            flow.marked = ":no_entry:"
            flow.comment = f"llmgate denied: {rejection.kind}: {rejection.message}"
        self._open(call, flow)
        self.close_flow(flow, call, pipeline.refusal_fields(call, rejection))

    # --- audit -------------------------------------------------------------------
    def _open(self, call: Call, flow: http.HTTPFlow) -> None:
        req = flow.request
        self.recorder.open_row(
            call, req.host, req.headers.fields, req.get_content(strict=False) or b""
        )

    def close_flow(self, flow: http.HTTPFlow, call: Call, fields: dict) -> None:
        self.calls.pop(flow.id, None)
        response = flow.response
        body = b""
        if response is not None:
            body = bytes(call.tap.kept) if call.tap else response.get_content(strict=False) or b""
        self.recorder.close_row(
            call, fields, response.headers.fields if response is not None else None, body
        )
        flow_notes.annotate(flow, call, fields)  # mitmweb: comment, mark, streamed body
