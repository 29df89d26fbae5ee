"""What each wire format implements to take part in translation.

Providers (`openai_chat`, `anthropic_messages`, `gemini`) encode requests and
decode replies; callers (all four, `openai_responses` included) decode requests
(`WireProtocol.parse_request`, into the canonical form) and encode replies. A
codec never sees a flow or a byte stream: the framing (SSE, Gemini's JSON
array) is `addon.translate.reply`'s business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from addon.protocols.base import StreamEvent
from addon.protocols.canonical import CanonicalRequest, CanonicalResponse
from addon.protocols.deltas import Delta
from addon.protocols.signatures import seal as seal
from addon.protocols.signatures import unseal as unseal

log = logging.getLogger("llmgate")


@dataclass
class EncodedRequest:
    """A canonical request in a provider's protocol.

    `path` starts at the version segment (`/v1/messages`,
    `/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse`); the route's
    endpoint is joined in front of it. `headers` are the ones the protocol
    requires (e.g. `anthropic-version`), never a credential.
    """

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # what could not be carried, for the log


@dataclass(frozen=True)
class CallerView:
    """What a reply encoder needs to know about the caller's request."""

    request: CanonicalRequest
    # The caller's own request body, parsed: flags that only matter to the caller
    # (Chat's stream_options.include_usage, Gemini's alt=sse) are read from it.
    body: dict[str, Any]
    path: str
    stream: bool
    upstream: str = ""  # the provider's protocol: the issuer of any signature it streams


class StreamDecoder:
    """A provider's stream events in, canonical deltas out. One per reply."""

    def feed(self, event: StreamEvent) -> list[Delta]:
        raise NotImplementedError

    def close(self) -> list[Delta]:
        """The upstream's stream ended: anything still held."""
        return []


class StreamEncoder:
    """Canonical deltas in, the caller's stream events out. One per reply.

    `close` writes the ending the caller's SDK expects (final usage, stop,
    `[DONE]`, `message_stop`, `response.completed`), exactly once, whether the
    upstream finished cleanly or not.
    """

    def feed(self, delta: Delta) -> list[StreamEvent]:
        raise NotImplementedError

    def close(self) -> list[StreamEvent]:
        raise NotImplementedError


class Codec:
    """One per wire format; registered in `addon.translate.registry`."""

    protocol: ClassVar[str]

    # --- provider side -----------------------------------------------------------
    def encode_request(
        self, request: CanonicalRequest, model: str, stream: bool, provider: str
    ) -> EncodedRequest:
        """`model` is the upstream model; `provider` the route's (`openai`, `openai_chat`,
        `anthropic`, `gemini`), for the few fields vendors of one protocol disagree on."""
        raise NotImplementedError

    def decode_reply(self, body: Any) -> CanonicalResponse:
        """A buffered reply, in full: content with signatures, finish, usage."""
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError

    def decode_error(self, status: int, body: Any) -> tuple[str, str]:
        """A provider's error body as (kind, message): kind is its error type or code."""
        raise NotImplementedError

    # --- caller side -------------------------------------------------------------
    def encode_reply(self, reply: CanonicalResponse, caller: CallerView) -> dict[str, Any]:
        raise NotImplementedError

    def stream_encoder(self, caller: CallerView) -> StreamEncoder:
        raise NotImplementedError


_LOGGED: set[tuple[str, str]] = set()


def log_dropped(what: str, target: str) -> None:
    """A log line for a field the target protocol cannot carry (never its value).

    Once per process and kind: the same route drops the same field on every call,
    and a line per call, even at DEBUG (mitmproxy's handlers take every level),
    cost ~2% of the event loop. What one call lost is `EncodedRequest.dropped`.
    """
    if (what, target) in _LOGGED or len(_LOGGED) > 4096:
        return
    _LOGGED.add((what, target))
    log.info(
        "llmgate translation: %s cannot be carried to %s; dropped (said once per process)",
        what,
        target,
    )
