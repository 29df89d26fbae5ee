"""What llmgate knows about one call, and the answers it can give instead of the upstream."""

from __future__ import annotations

import itertools
import json
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from addon.config import Route
from addon.credentials import Fields
from addon.ledger.tool_calls import tools_offered
from addon.policy import Denial
from addon.protocols import WireProtocol
from addon.protocols.canonical import CanonicalRequest
from addon.quota.windows import AppliedWindow, WindowState
from addon.routes import Upstream

if TYPE_CHECKING:
    from addon.safety.screening import Screening
    from addon.safety.stream_guard import StreamGuard
    from addon.streaming import StreamTap
    from addon.translate.reply import Translation
    from addon.upstream.failures import UpstreamFailure

# A random per-process prefix and a counter: unique across processes sharing a
# ledger, and far cheaper than a getrandom() syscall per call. The prefix is also
# the process's instance id: crash recovery (`addon.ledger.recovery`) finds a dead
# process's pending rows and quota reservations by it.
INSTANCE_ID = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(int(time.time() * 1000) << 12)


def new_request_id() -> str:
    return f"{INSTANCE_ID}{next(_ID_COUNTER):016x}"


def describe_exception(exc: BaseException) -> str:
    """An exception's type and the frames it passed through, never its message: a
    message may quote the caller's body, and this goes to the log."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    trail = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__} at {trail}"


@dataclass
class Call:
    """What llmgate knows about one intercepted call, from request to audit close."""

    id: str
    started_at: float
    protocol_name: str
    host: str
    path: str
    user: str | None = None
    groups: tuple[str, ...] = ()
    client_ip: str | None = None
    virtual_key: bool = False
    stray_key: bool = False
    transport: str = "http"  # or "websocket": one message of a Responses WebSocket
    warmup: bool = False  # a Responses `generate: false` message: no output, no quota
    protocol: WireProtocol | None = None
    request: CanonicalRequest | None = None
    body: dict[str, Any] = field(default_factory=dict)  # the parsed JSON, for edits
    route: Route | None = None
    upstream_model: str | None = None
    stream: bool = False
    hide_injected: bool = False
    tap: StreamTap | None = None
    closed: bool = False
    clamp_max_tokens: int | None = None
    estimated_input: int = 0
    quota_windows: list[AppliedWindow] = field(default_factory=list)
    quota_states: list[WindowState] = field(default_factory=list)
    request_screening: Screening | None = None
    reply_screening: Screening | None = None
    guard: StreamGuard | None = None
    # Whose credential went upstream, for the masked copy the flow keeps.
    credential_label: str | None = None
    masked: bool = False
    internal_error: bool = False
    # The dispatcher's part: the ticket token while the flow is on its way to it,
    # where the call really went (the flow shows it again once the reply came),
    # and what went wrong upstream, if anything.
    dispatch_token: str | None = None
    upstream_target: tuple[str, str, int] | None = None
    upstream_failure: UpstreamFailure | None = None
    # Where the call may go, in order: the route's own upstream, then its fallbacks.
    # `attempted` is what happened to each one tried (the `attempts` table).
    attempts: list[Attempt] = field(default_factory=list)
    attempted: list[dict[str, Any]] = field(default_factory=list)
    # The caller's own body, before any edit or translation: the payload row keeps it.
    caller_body: bytes | None = None
    # What the model answered, read once when the reply was whole (`pipeline.reply_content`).
    reply_parts: list[Any] | None = None
    # The buffered reply as read for `reply_parts`, and its JSON: settling reads the
    # usage from the same body and need not parse it again.
    reply_json: tuple[bytes, Any] | None = None
    # The agent session and client the call came from (`addon.sessions`).
    session_id: str | None = None
    client: str | None = None

    @property
    def serving(self) -> Attempt | None:
        """The attempt whose upstream is answering (the first until another takes over)."""
        return self.attempts[0] if self.attempts else None

    def serve_with(self, attempt: Attempt) -> None:
        """A fallback took over: the row names its route, model and protocol."""
        self.attempts.remove(attempt)
        self.attempts.insert(0, attempt)
        self.route, self.upstream_model = attempt.route, attempt.upstream_model

    @property
    def translation(self) -> Translation | None:
        attempt = self.serving
        return attempt.translation if attempt is not None else None

    @property
    def upstream_protocol(self) -> str | None:
        attempt = self.serving
        return attempt.upstream_protocol if attempt is not None else None

    def open_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": self.started_at,
            "user": self.user,
            "groups": ",".join(self.groups) or None,
            "client_ip": self.client_ip,
            "protocol": self.protocol_name,
            "host": self.host,
            "path": self.path,
            "model": self.request.model if self.request else None,
            "upstream_model": self.upstream_model,
            "provider": self.route.provider if self.route else None,
            "route": self.route.id if self.route else None,
            "stream": int(self.stream),
            "transport": self.transport,
            "upstream_protocol": self.upstream_protocol,
            "session_id": self.session_id,
            "client": self.client,
            "tools_offered": tools_offered(self.request),
            "status": "pending",
            "instance_id": INSTANCE_ID,
        }


@dataclass
class Rejection:
    """llmgate answers the call itself, in the caller's wire format."""

    status: int
    kind: str
    message: str
    outcome: str = "failed"  # the audit status: failed, or denied for policy decisions
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, protocol: WireProtocol | None) -> bytes:
        if protocol is None:
            payload: dict[str, Any] = {"error": {"message": self.message, "code": self.kind}}
        else:
            payload = protocol.error_body(self.status, self.kind, self.message)
        return json.dumps(payload).encode()

    @classmethod
    def deny(cls, denial: Denial) -> Rejection:
        return cls(denial.status, denial.reason, denial.message, "denied", dict(denial.headers))


@dataclass
class Rewrite:
    """Everything the gateway must change on the outgoing request."""

    upstream: Upstream
    body: bytes | None  # None: forward the caller's body untouched
    set_headers: dict[str, str]
    drop_headers: tuple[str, ...]
    credential_label: str = "caller key"
    # A translated call drops the caller protocol's own headers (anthropic-*, ...).
    drop_prefixes: tuple[str, ...] = ()

    def apply_to(self, fields: Fields) -> Fields:
        """The caller's header fields as they go upstream."""
        drop = {name.encode() for name in self.drop_headers} | {
            name.lower().encode() for name in self.set_headers
        }
        drop.add(b"accept-encoding")
        prefixes = tuple(prefix.encode() for prefix in self.drop_prefixes)
        kept = tuple(
            (name, value)
            for name, value in fields
            if name.lower() not in drop and not (prefixes and name.lower().startswith(prefixes))
        )
        added = tuple((name.encode(), value.encode()) for name, value in self.set_headers.items())
        # Streams must be readable as they arrive, so ask for them unencoded.
        return kept + added + ((b"accept-encoding", b"identity"),)


@dataclass
class Attempt:
    """One way to send a decided call: a route, and the request it gets there."""

    route: Route
    upstream_model: str
    upstream_protocol: str
    rewrite: Rewrite
    translation: Translation | None = None
