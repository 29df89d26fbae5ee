"""A local HTTPS upstream that speaks the OpenAI, Anthropic and Gemini wire protocols.

End-to-end tests point llmgate's routes at this emulator, so real SDK calls travel
client -> mitmproxy + llmgate -> emulator. The emulator:

* serves HTTPS on 127.0.0.1 (a free port) with a throwaway CA it generates; ``ca_path``
  is that CA's PEM, for mitmproxy's ``ssl_verify_upstream_trusted_ca`` option;
* records every request in ``hits`` (with the monotonic time each stream event was sent);
* replays recorded fixtures byte for byte (``x-emulator-fixture``) or synthesizes replies
  in each provider's wire format, buffered or streamed;
* injects faults on request: pauses between events, a TCP reset mid-stream, gzip,
  error statuses, missing usage;
* speaks the Responses API's WebSocket mode on the same port: a ``GET /v1/responses``
  with ``Upgrade: websocket`` is upgraded (RFC 6455, framing by ``wsproto``,
  permessage-deflate when offered), every text message must be a ``response.create``
  (a string ``model``, an ``input`` that is a string or a list) and is answered with
  the events of the SSE stream of ``POST /v1/responses``, one JSON text message each;
  anything else gets an ``error`` event. Each message is one ``Hit`` (``transport``
  ``"websocket"``, the handshake's headers, the message as ``body``); each upgrade
  request is one ``Handshake``.

Control headers (all optional, case-insensitive names):

``x-emulator-fixture: <stem>``   replay ``<fixtures_dir>/<stem>.json``
``x-emulator-status: N``         reply with an error of status N in the protocol's format
``x-emulator-reply: <text>``     synthetic reply text, percent-decoded (urllib unquote)
``x-emulator-chunks: N``         synthetic streams split the text into N deltas (default 3)
``x-emulator-no-usage: 1``       synthetic replies carry no usage at all
``x-emulator-output-tokens: N``  synthetic replies report N output tokens (any size: 10**20)
``x-emulator-cache-write-tokens: N``  synthetic OpenAI Chat and Responses usage says N of the
                                 input tokens were written to the prompt cache, in
                                 ``prompt_tokens_details`` / ``input_tokens_details``
                                 ``.cache_write_tokens`` (as OpenRouter reports explicit caching)
``x-emulator-pause-ms: N``       sleep N ms before every body event after the first
``x-emulator-reset-after: K``    after K body events, abort the connection with a TCP RST
``x-emulator-gzip: 1``           gzip the body, flushed (Z_SYNC_FLUSH) after every event
``x-emulator-tool-call: <names>`` the reply calls the function(s) named (comma-separated:
                                 ``a,b`` makes two parallel calls, each with its own id)
                                 instead of answering text, in every protocol: Chat
                                 ``tool_calls`` (finish_reason ``tool_calls``), Responses
                                 ``function_call`` items, Anthropic ``tool_use`` blocks
                                 (stop_reason ``tool_use``), Gemini ``functionCall`` parts
                                 with an ``id`` (finishReason ``STOP``). Streamed, the
                                 arguments arrive in several fragments (Chat tool call deltas,
                                 ``function_call_arguments.delta``, ``input_json_delta``);
                                 Gemini sends one chunk per call. Unless the request already
                                 holds a tool output (a Chat ``tool`` message, a Responses
                                 ``*_call_output`` item, an Anthropic ``tool_result`` block, a
                                 Gemini ``functionResponse`` part): then the text reply
``x-emulator-tool-args: <json>``  every call's arguments, percent-decoded (default ``{}``);
                                 a JSON object for Anthropic and Gemini, which carry objects
``x-emulator-thinking: <text>``   the reply starts with this reasoning, percent-decoded, in
                                 the protocol's own form: an Anthropic ``thinking`` block
                                 (signature ``sig-<n>``), a Gemini part with ``thought: true``
                                 and a ``thoughtSignature`` (base64 of ``sig-<n>``), Chat
                                 ``reasoning_content``, a Responses ``reasoning`` item with a
                                 ``summary_text`` and ``encrypted_content``; streamed as deltas
``x-emulator-ws-reject: N``      refuse a WebSocket upgrade with HTTP status N (an OpenAI
                                 error body), so that clients fall back to HTTPS
``x-emulator-ws-deflate: 0``     decline permessage-deflate on a WebSocket upgrade

Precedence: ``x-emulator-status`` > ``x-emulator-fixture`` > synthetic reply. The delivery
controls (pause, reset, gzip) apply to all three.

Every HTTP request to a protocol endpoint is checked first, whatever the controls say, by
``tests.emulator_checks.check_request`` against the rules the real provider enforces
(Anthropic's turn alternation and tool_use / tool_result pairing, Chat's tool_call_id
answers and JSON arguments, Gemini's part shapes and functionCall / functionResponse
turns, ...): a malformed translation by the gateway must fail the test, not get a
friendly answer. An invalid request is answered 400 in the protocol's error format with
the message ``emulator: invalid <protocol> request: <reason>``, and its ``Hit.invalid``
holds the reason. One exception: a fixture that records the provider refusing a request
(status >= 400) is replayed even for an invalid request (``Hit.invalid`` is still set), as
the recorded requests of those fixtures are the invalid ones.

On a WebSocket the controls come from the upgrade request's headers and apply to every
message on that connection: ``x-emulator-status`` answers each ``response.create`` with an
``error`` event carrying that status, ``x-emulator-reset-after`` counts events (messages),
gzip does not apply. Clients that cannot add headers (a CLI agent) can be steered with
``Emulator.set_default_controls({...})``: defaults for every request and upgrade that
does not send the header itself, until ``reset()``.

Usage: a synthetic reply reports ``expected_usage(hit.body, reply)``; for a WebSocket
message ``hit.body`` is the message's UTF-8 text; for tool calls ``reply`` is the calls'
arguments strings joined with spaces (one call: its arguments string); with
``x-emulator-thinking`` the thinking text and a space come first (``f"{thinking} {reply}"``),
and its word count is reported as reasoning tokens (Gemini: ``thoughtsTokenCount``, not
part of ``candidatesTokenCount``); a ``response.create`` with ``"generate": false`` (a
warm-up) reports no output tokens.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import socket
import socketserver
import ssl
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from wsproto import ConnectionType
from wsproto.connection import Connection as WsConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.utilities import generate_accept_token

try:
    from tests.emulator_checks import check_request
except ImportError:  # loaded as a top-level module, beside emulator_checks.py
    from emulator_checks import check_request  # type: ignore[no-redef]

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_FIXTURES_DIR",
    "DEFAULT_REPLY",
    "HEADER_CACHE_WRITE_TOKENS",
    "HEADER_CHUNKS",
    "HEADER_FIXTURE",
    "HEADER_GZIP",
    "HEADER_NO_USAGE",
    "HEADER_OUTPUT_TOKENS",
    "HEADER_PAUSE_MS",
    "HEADER_REPLY",
    "HEADER_RESET_AFTER",
    "HEADER_STATUS",
    "HEADER_TOOL_ARGS",
    "HEADER_THINKING",
    "HEADER_TOOL_CALL",
    "HEADER_WS_DEFLATE",
    "HEADER_WS_REJECT",
    "Emulator",
    "Handshake",
    "Hit",
    "Usage",
    "detect_protocol",
    "expected_usage",
    "fixture_names",
    "input_tokens_for",
    "load_fixture",
    "output_tokens_for",
    "split_events",
    "split_text",
]

DEFAULT_REPLY = "Hello from the llmgate emulator."
DEFAULT_CHUNKS = 3

HEADER_FIXTURE = "x-emulator-fixture"
HEADER_STATUS = "x-emulator-status"
HEADER_REPLY = "x-emulator-reply"
# The reply text registered with Emulator.register_reply(), named by its reference:
# keeps test secrets out of request headers, which the gateway stores.
HEADER_REPLY_REF = "x-emulator-reply-ref"
HEADER_CHUNKS = "x-emulator-chunks"
HEADER_NO_USAGE = "x-emulator-no-usage"
HEADER_OUTPUT_TOKENS = "x-emulator-output-tokens"
HEADER_CACHE_WRITE_TOKENS = "x-emulator-cache-write-tokens"
HEADER_PAUSE_MS = "x-emulator-pause-ms"
HEADER_RESET_AFTER = "x-emulator-reset-after"
HEADER_GZIP = "x-emulator-gzip"
HEADER_TOOL_CALL = "x-emulator-tool-call"
HEADER_TOOL_ARGS = "x-emulator-tool-args"
HEADER_THINKING = "x-emulator-thinking"
HEADER_WS_REJECT = "x-emulator-ws-reject"
HEADER_WS_DEFLATE = "x-emulator-ws-deflate"

_HERE = Path(__file__).resolve().parent
DEFAULT_FIXTURES_DIR = Path(
    os.environ.get("LLMGATE_FIXTURES")
    or os.environ.get("LLMGATE_FIXTURES_DIR")
    or next(
        (
            p
            for p in (_HERE / "fixtures" / "recorded", _HERE.parent / "fixtures" / "recorded")
            if p.is_dir()
        ),
        _HERE.parent.parent / "shared" / "fixtures" / "recorded",
    )
)

IO_TIMEOUT = 60.0  # seconds a connection may sit idle / blocked before the emulator drops it
RESET_GRACE = 0.05  # seconds between the last event sent and the RST, so it is delivered first

# Headers the emulator computes itself (or that are hop-by-hop) and never replays.
_NOT_REPLAYED = frozenset(
    {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive"}
)

_GEMINI_PATH = re.compile(r"models/([^/:]+):(generateContent|streamGenerateContent)$")
_FIXTURE_STEM = re.compile(r"^[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------- helpers


class Usage(NamedTuple):
    """Token counts the emulator reports for a synthetic reply."""

    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def input_tokens_for(body: bytes) -> int:
    """Input tokens the emulator reports for a request body: ``len(body) // 4 + 1``.

    ``body`` is the body as the emulator received it (``Hit.body``), i.e. after any
    rewriting by the gateway.
    """
    return len(body) // 4 + 1


def output_tokens_for(reply: str = DEFAULT_REPLY) -> int:
    """Output tokens the emulator reports for a reply: whitespace-separated words + 1."""
    return len(reply.split()) + 1


def expected_usage(body: bytes, reply: str = DEFAULT_REPLY) -> Usage:
    """The usage a synthetic reply to ``body`` carries (unless ``x-emulator-no-usage``)."""
    return Usage(input_tokens_for(body), output_tokens_for(reply))


def split_events(body_text: str) -> list[str]:
    """Split an SSE body into events, each ending with its ``\\n\\n`` or ``\\r\\n\\r\\n``.

    Lossless: ``"".join(split_events(t)) == t``. A trailing fragment without a separator
    is its own last event. A body without separators is a single event.
    """
    events: list[str] = []
    pos = 0
    while pos < len(body_text):
        ends = [
            i + len(sep) for sep in ("\n\n", "\r\n\r\n") if (i := body_text.find(sep, pos)) >= 0
        ]
        end = min(ends) if ends else len(body_text)
        events.append(body_text[pos:end])
        pos = end
    return events


def split_text(text: str, n: int = DEFAULT_CHUNKS) -> list[str]:
    """Split ``text`` into ``n`` roughly equal consecutive pieces (fewer if text is short).

    Always returns at least one piece (``[""]`` for empty text); ``"".join`` gives ``text``.
    """
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces: list[str] = []
    pos = 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        pieces.append(text[pos : pos + step])
        pos += step
    return pieces


def detect_protocol(path: str) -> str | None:
    """Protocol for a request path: openai_chat, openai_responses, anthropic_messages,
    gemini, or None (unknown path -> 404)."""
    bare = urlsplit(path).path.rstrip("/")
    if bare.endswith("/chat/completions"):
        return "openai_chat"
    if bare.endswith("/responses"):
        return "openai_responses"
    if bare.endswith("/messages"):
        return "anthropic_messages"
    if _GEMINI_PATH.search(bare):
        return "gemini"
    return None


def fixture_names(fixtures_dir: Path | str | None = None) -> list[str]:
    """Sorted stems of all fixture files (the values ``x-emulator-fixture`` accepts)."""
    folder = Path(fixtures_dir) if fixtures_dir is not None else DEFAULT_FIXTURES_DIR
    return sorted(p.stem for p in folder.glob("*.json"))


@functools.lru_cache(maxsize=256)
def _load_fixture_file(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def load_fixture(stem: str, fixtures_dir: Path | str | None = None) -> dict[str, Any]:
    """The parsed fixture ``<fixtures_dir>/<stem>.json`` (cached; do not mutate)."""
    if not _FIXTURE_STEM.match(stem):
        raise FileNotFoundError(f"bad fixture name {stem!r}")
    folder = Path(fixtures_dir) if fixtures_dir is not None else DEFAULT_FIXTURES_DIR
    return _load_fixture_file(str(folder / f"{stem}.json"))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- certificates


def _make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, server.pem and server.key into ``folder``; return their paths."""
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmgate emulator test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


# --------------------------------------------------------------------------- records


@dataclass
class Hit:
    """One request the emulator received, or one WebSocket message.

    ``headers`` has lower-cased names (repeated headers joined with ", "). ``path``
    includes the query string. ``events_sent`` holds ``time.monotonic()`` right after
    each body event was written to the socket: one entry per stream event, a single
    entry for a buffered body, none if the connection was reset before any event.
    It fills in while the response is being sent.

    A WebSocket message has ``transport == "websocket"``, the upgrade request's
    ``method``, ``path`` and ``headers`` (so the credential the upstream saw), the
    message's UTF-8 text as ``body``, ``connection`` numbering its WebSocket (1, 2, ...
    per emulator) and, when the emulator refused the message, ``error`` saying why
    (the client got an ``error`` event).

    ``invalid`` says why an HTTP request broke its protocol's rules (see
    ``tests.emulator_checks.check_request``); the client got a 400. None when valid.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    events_sent: list[float] = field(default_factory=list)
    transport: str = "http"
    connection: int | None = None
    error: str | None = None
    invalid: str | None = None

    @property
    def websocket(self) -> bool:
        return self.transport == "websocket"

    def json(self) -> Any:
        """The request body (or WebSocket message) parsed as JSON."""
        return json.loads(self.body)


@dataclass
class Handshake:
    """One WebSocket upgrade request: ``status`` 101 when accepted, else the refusal's.

    ``extensions`` is the ``sec-websocket-extensions`` value the emulator answered
    (empty when none was negotiated); ``connection`` is the number its messages' hits
    carry (None when refused).
    """

    path: str
    headers: dict[str, str]
    status: int
    extensions: str = ""
    connection: int | None = None


@dataclass
class _Controls:
    status: int | None = None
    fixture: str | None = None
    reply: str = DEFAULT_REPLY
    chunks: int = DEFAULT_CHUNKS
    no_usage: bool = False
    output_tokens: int | None = None
    cache_write_tokens: int | None = None
    pause_s: float = 0.0
    reset_after: int | None = None
    gzip: bool = False
    tool_call: str | None = None
    tool_args: str = "{}"
    thinking: str | None = None
    ws_reject: int | None = None
    ws_deflate: bool = True

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> _Controls:
        def num(name: str) -> int | None:
            raw = headers.get(name, "").strip()
            try:
                return int(raw) if raw else None
            except ValueError:
                return None

        def flag(name: str) -> bool:
            return headers.get(name, "").strip().lower() in {"1", "true", "yes", "on"}

        reply = headers.get(HEADER_REPLY)
        tool_args = headers.get(HEADER_TOOL_ARGS)
        thinking = headers.get(HEADER_THINKING)
        deflate = headers.get(HEADER_WS_DEFLATE, "").strip().lower()
        return cls(
            status=num(HEADER_STATUS),
            fixture=headers.get(HEADER_FIXTURE, "").strip() or None,
            reply=DEFAULT_REPLY if reply is None else unquote(reply),
            chunks=max(1, num(HEADER_CHUNKS) or DEFAULT_CHUNKS),
            no_usage=flag(HEADER_NO_USAGE),
            output_tokens=num(HEADER_OUTPUT_TOKENS),
            cache_write_tokens=num(HEADER_CACHE_WRITE_TOKENS),
            pause_s=max(0, num(HEADER_PAUSE_MS) or 0) / 1000.0,
            reset_after=None if (k := num(HEADER_RESET_AFTER)) is None else max(0, k),
            gzip=flag(HEADER_GZIP),
            tool_call=headers.get(HEADER_TOOL_CALL, "").strip() or None,
            tool_args="{}" if tool_args is None else unquote(tool_args),
            thinking=None if thinking is None else unquote(thinking),
            ws_reject=num(HEADER_WS_REJECT),
            ws_deflate=deflate not in {"0", "false", "no", "off"},
        )


@dataclass
class _Reply:
    """A response to send: ``chunked`` bodies go out event by event."""

    status: int
    headers: list[tuple[str, str]]
    events: list[bytes]
    chunked: bool = False


def _json_reply(status: int, obj: Any, content_type: str = "application/json") -> _Reply:
    return _Reply(status, [("content-type", content_type)], [_dumps(obj).encode()])


def _sse_reply(events: list[str], content_type: str = "text/event-stream; charset=utf-8") -> _Reply:
    headers = [("content-type", content_type), ("cache-control", "no-cache")]
    return _Reply(200, headers, [e.encode() for e in events], chunked=True)


# --------------------------------------------------------------------------- error bodies

_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_GEMINI_ERRORS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _error_reply(protocol: str | None, status: int, message: str, req_id: str) -> _Reply:
    reply = _provider_error(protocol, status, message, req_id)
    if status in (429, 503, 529):
        # As the providers do: when to come back (OpenAI and Anthropic send seconds).
        reply.headers.append(("retry-after", "7"))
    return reply


def _provider_error(protocol: str | None, status: int, message: str, req_id: str) -> _Reply:
    if protocol in ("openai_chat", "openai_responses"):
        etype, code = _OPENAI_ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        body: Any = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        reply = _json_reply(status, body)
        reply.headers.append(("x-request-id", req_id))
        return reply
    if protocol == "anthropic_messages":
        etype = _ANTHROPIC_ERRORS.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": req_id}
        reply = _json_reply(status, body)
        reply.headers.append(("request-id", req_id))
        return reply
    if protocol == "gemini":
        gstatus = _GEMINI_ERRORS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        body = {"error": {"code": status, "message": message, "status": gstatus}}
        return _json_reply(status, body, "application/json; charset=UTF-8")
    return _json_reply(status, {"error": {"message": message, "type": "emulator", "code": status}})


# --------------------------------------------------------------------------- synthetic replies


@dataclass
class _Synth:
    """Everything a synthetic reply builder needs."""

    body: dict[str, Any]
    path: str
    model: str
    reply: str
    pieces: list[str]
    usage: Usage | None
    serial: str
    created: int
    # (name, arguments) of each function the reply calls instead of answering text
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    thinking: str | None = None  # the reasoning the reply starts with
    generate: bool = True  # False: a Responses warm-up, no output
    cache_write_tokens: int | None = None  # OpenAI usage only; None: the field is absent

    @property
    def reasoning_tokens(self) -> int:
        """The part of the output tokens spent on ``thinking``: its word count."""
        return len(self.thinking.split()) if self.thinking else 0

    def call_id(self, prefix: str, n: int) -> str:
        """A call's id, distinct per call and per reply: ``<prefix>emu<serial>[_<n>]``."""
        return f"{prefix}emu{self.serial}" + (f"_{n}" if n else "")

    @property
    def signature(self) -> str:
        """The opaque signature of the reply's thinking."""
        return f"sig-{int(self.serial)}"


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic and Gemini carry (``{}`` for ``""``)."""
    parsed = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(parsed, dict):
        raise ValueError(f"x-emulator-tool-args must be a JSON object, got {arguments!r}")
    return parsed


def _input_details(s: _Synth, base: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's input token details, with the cache writes when the test asked for them."""
    if s.cache_write_tokens is None:
        return base
    return {**base, "cache_write_tokens": s.cache_write_tokens}


def _chat_usage(u: Usage, s: _Synth) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": _input_details(s, {"cached_tokens": 0, "audio_tokens": 0}),
        "completion_tokens_details": {
            "reasoning_tokens": s.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_chat(s: _Synth) -> _Reply:
    cid = f"chatcmpl-emu{s.serial}"
    kind = "chat.completion.chunk" if s.body.get("stream") else "chat.completion"
    base = {
        "id": cid,
        "object": kind,
        "created": s.created,
        "model": s.model,
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }
    calls = [
        {
            "id": s.call_id("call_", n),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for n, (name, arguments) in enumerate(s.tool_calls)
    ]
    finish = "tool_calls" if calls else "stop"
    if not s.body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else s.reply}
        if s.thinking is not None:
            message["reasoning_content"] = s.thinking
        message.update(refusal=None, annotations=[])
        if calls:
            message["tool_calls"] = calls
        obj: dict[str, Any] = {
            **base,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
        }
        if s.usage is not None:
            obj["usage"] = _chat_usage(s.usage, s)
        reply = _json_reply(200, obj)
        reply.headers.append(("x-request-id", f"req_emu{s.serial}"))
        return reply

    stream_options = s.body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
        obj = {**base, "choices": choices}
        if include_usage:
            obj["usage"] = usage
        return f"data: {_dumps(obj)}\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    events = [
        chunk(choice({"role": "assistant", "content": None if calls else "", "refusal": None}))
    ]
    if s.thinking is not None:
        events += [
            chunk(choice({"reasoning_content": p})) for p in split_text(s.thinking, len(s.pieces))
        ]
    if calls:
        for n, call in enumerate(calls):
            start = {**call, "function": {**call["function"], "arguments": ""}}
            events.append(chunk(choice({"tool_calls": [{"index": n, **start}]})))
            events += [
                chunk(choice({"tool_calls": [{"index": n, "function": {"arguments": piece}}]}))
                for piece in split_text(call["function"]["arguments"], max(2, len(s.pieces)))
            ]
    else:
        events += [chunk(choice({"content": piece})) for piece in s.pieces]
    events.append(chunk(choice({}, finish)))
    if include_usage and s.usage is not None:
        events.append(chunk([], _chat_usage(s.usage, s)))
    events.append("data: [DONE]\n\n")
    reply = _sse_reply(events)
    reply.headers.append(("x-request-id", f"req_emu{s.serial}"))
    return reply


def _responses_payloads(s: _Synth) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Responses reply: the final response object, and the stream's events in order
    (each with its ``sequence_number``), as SSE ``data`` or WebSocket messages carry them.

    The output is a ``reasoning`` item when ``s.thinking`` is set, then one assistant
    message with ``s.reply``, or one ``function_call`` per ``s.tool_calls``; nothing at all
    for a warm-up (``"generate": false``).
    """
    resp_id = f"resp_emu{s.serial}"
    usage = None
    if s.usage is not None:
        usage = {
            "input_tokens": s.usage.input_tokens,
            "input_tokens_details": _input_details(s, {"cached_tokens": 0}),
            "output_tokens": s.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": s.reasoning_tokens},
            "total_tokens": s.usage.total_tokens,
        }
    # Each output item: its final form, and the events that stream it (without the
    # output_item.added / done pair, which all items share).
    items: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = []
    if s.generate and s.thinking is not None:
        summary = {"type": "summary_text", "text": s.thinking}
        done = {
            "id": f"rs_emu{s.serial}",
            "type": "reasoning",
            "summary": [summary],
            "encrypted_content": f"enc-{s.signature}",
        }
        at = {"item_id": done["id"], "output_index": len(items), "summary_index": 0}
        items.append(
            (
                done,
                {**done, "summary": []},
                [
                    {
                        "type": "response.reasoning_summary_part.added",
                        **at,
                        "part": {**summary, "text": ""},
                    },
                    *(
                        {"type": "response.reasoning_summary_text.delta", **at, "delta": piece}
                        for piece in split_text(s.thinking, len(s.pieces))
                    ),
                    {"type": "response.reasoning_summary_text.done", **at, "text": s.thinking},
                    {"type": "response.reasoning_summary_part.done", **at, "part": summary},
                ],
            )
        )
    if not s.generate:
        pass
    elif s.tool_calls:
        for n, (name, arguments) in enumerate(s.tool_calls):
            done = {
                "type": "function_call",
                "id": s.call_id("fc_", n),
                "call_id": s.call_id("call_", n),
                "name": name,
                "arguments": arguments,
                "status": "completed",
            }
            at = {"item_id": done["id"], "output_index": len(items)}
            items.append(
                (
                    done,
                    {**done, "status": "in_progress", "arguments": ""},
                    [
                        *(
                            {"type": "response.function_call_arguments.delta", **at, "delta": p}
                            for p in split_text(arguments, len(s.pieces))
                        ),
                        {
                            "type": "response.function_call_arguments.done",
                            **at,
                            "arguments": arguments,
                        },
                    ],
                )
            )
    else:
        part_done = {"type": "output_text", "annotations": [], "logprobs": [], "text": s.reply}
        done = {
            "id": f"msg_emu{s.serial}",
            "type": "message",
            "status": "completed",
            "content": [part_done],
            "role": "assistant",
        }
        at = {"item_id": done["id"], "output_index": len(items), "content_index": 0}
        items.append(
            (
                done,
                {**done, "status": "in_progress", "content": []},
                [
                    {
                        "type": "response.content_part.added",
                        **at,
                        "part": {**part_done, "text": ""},
                    },
                    *(
                        {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
                        for piece in s.pieces
                    ),
                    {"type": "response.output_text.done", **at, "text": s.reply, "logprobs": []},
                    {"type": "response.content_part.done", **at, "part": part_done},
                ],
            )
        )
    output = [done for done, _, _ in items]

    def response(done: bool) -> dict[str, Any]:
        return {
            "id": resp_id,
            "object": "response",
            "created_at": s.created,
            "status": "completed" if done else "in_progress",
            "background": False,
            "completed_at": s.created if done else None,
            "error": None,
            "incomplete_details": None,
            "instructions": s.body.get("instructions"),
            "max_output_tokens": s.body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": s.model,
            "output": output if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": s.body.get("previous_response_id"),
            "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage if done else None,
            "user": None,
            "metadata": {},
        }

    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": response(done=False)},
        {"type": "response.in_progress", "response": response(done=False)},
    ]
    for index, (done, added, middle) in enumerate(items):
        payloads.append(
            {"type": "response.output_item.added", "output_index": index, "item": added}
        )
        payloads += middle
        payloads.append({"type": "response.output_item.done", "output_index": index, "item": done})
    payloads.append({"type": "response.completed", "response": response(done=True)})
    events = [{**p, "sequence_number": n} for n, p in enumerate(payloads)]
    return response(done=True), events


def _has_tool_output(protocol: str, request: dict[str, Any]) -> bool:
    """Whether a request already answers a tool call: a Responses ``*_call_output`` item,
    a Chat ``tool`` message, an Anthropic ``tool_result`` block, a Gemini
    ``functionResponse`` part."""

    def items(key: str) -> list[Any]:
        value = request.get(key)
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    def inner(container: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = container.get(key)
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    if protocol == "openai_responses":
        return any(str(i.get("type", "")).endswith("_call_output") for i in items("input"))
    if protocol == "openai_chat":
        return any(m.get("role") in ("tool", "function") for m in items("messages"))
    if protocol == "anthropic_messages":
        return any(
            b.get("type") == "tool_result" for m in items("messages") for b in inner(m, "content")
        )
    if protocol == "gemini":
        return any(
            "functionResponse" in p or "function_response" in p
            for c in items("contents")
            for p in inner(c, "parts")
        )
    return False


def _check_response_create(message: Any) -> tuple[str, str | None] | None:
    """Why a WebSocket client message is not a valid ``response.create`` (message, param),
    or None when it is one."""
    if not isinstance(message, dict):
        return "WebSocket message is not a JSON object.", None
    if message.get("type") != "response.create":
        return f"Unsupported event type {message.get('type')!r}.", "type"
    if not isinstance(message.get("model"), str) or not message["model"]:
        return "response.create needs a string 'model'.", "model"
    if not isinstance(message.get("input"), str | list):
        return "response.create needs an 'input' that is a string or a list.", "input"
    return None


def _ws_error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """An ``error`` event as the Responses WebSocket sends it: the HTTP status it stands
    for, and the error object of the HTTP API."""
    etype, code = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    error = {"type": etype, "code": code, "message": message, "param": param}
    return {"type": "error", "status": status, "error": error}


def _openai_responses(s: _Synth) -> _Reply:
    final, payloads = _responses_payloads(s)
    if not s.body.get("stream"):
        reply = _json_reply(200, final)
    else:
        reply = _sse_reply([f"event: {p['type']}\ndata: {_dumps(p)}\n\n" for p in payloads])
    reply.headers.append(("x-request-id", f"req_emu{s.serial}"))
    return reply


def _anthropic_messages(s: _Synth) -> _Reply:
    msg_id = f"msg_emu{s.serial}"
    stop_reason = "tool_use" if s.tool_calls else "end_turn"

    def usage(output_tokens: int) -> dict[str, Any] | None:
        if s.usage is None:
            return None
        return {
            "input_tokens": s.usage.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def message(content: list[dict[str, Any]], stop: str | None, out: int) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": s.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
        }
        if (u := usage(out)) is not None:
            msg["usage"] = u
        return msg

    # The final content blocks, and the deltas that stream each one.
    blocks: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = []
    if s.thinking is not None:
        block = {"type": "thinking", "thinking": s.thinking, "signature": s.signature}
        deltas = [
            {"type": "thinking_delta", "thinking": p} for p in split_text(s.thinking, len(s.pieces))
        ]
        deltas.append({"type": "signature_delta", "signature": s.signature})
        blocks.append((block, {**block, "thinking": "", "signature": ""}, deltas))
    if s.tool_calls:
        for n, (name, arguments) in enumerate(s.tool_calls):
            block = {
                "type": "tool_use",
                "id": s.call_id("toolu_", n),
                "name": name,
                "input": _tool_input(arguments),
            }
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in split_text(arguments, max(2, len(s.pieces)))
            ]
            blocks.append((block, {**block, "input": {}}, deltas))
    else:
        block = {"type": "text", "text": s.reply}
        deltas = [{"type": "text_delta", "text": p} for p in s.pieces]
        blocks.append((block, {**block, "text": ""}, deltas))

    if not s.body.get("stream"):
        out = s.usage.output_tokens if s.usage else 0
        msg = message([b for b, _, _ in blocks], stop_reason, out)
        reply = _json_reply(200, msg)
        reply.headers.append(("request-id", f"req_emu{s.serial}"))
        return reply

    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if s.usage is not None:
        delta["usage"] = {
            "input_tokens": s.usage.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": s.usage.output_tokens,
        }
    payloads: list[dict[str, Any]] = [{"type": "message_start", "message": message([], None, 1)}]
    for index, (_, start, deltas) in enumerate(blocks):
        payloads.append({"type": "content_block_start", "index": index, "content_block": start})
        if index == 0:
            payloads.append({"type": "ping"})
        payloads += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        payloads.append({"type": "content_block_stop", "index": index})
    payloads += [delta, {"type": "message_stop"}]
    events = [f"event: {p['type']}\ndata: {_dumps(p)}\n\n" for p in payloads]
    reply = _sse_reply(events)
    reply.headers.append(("request-id", f"req_emu{s.serial}"))
    return reply


def _gemini(s: _Synth) -> _Reply:
    response_id = f"emu{s.serial}"
    signature = base64.b64encode(s.signature.encode()).decode()

    def chunk(parts: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if final:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        obj: dict[str, Any] = {"candidates": [candidate]}
        if s.usage is not None:
            u = s.usage
            meta: dict[str, Any] = {"promptTokenCount": u.input_tokens}
            if final:
                # Gemini counts the thoughts apart from the candidates.
                meta["candidatesTokenCount"] = u.output_tokens - s.reasoning_tokens
            meta["totalTokenCount"] = u.total_tokens if final else u.input_tokens
            meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": u.input_tokens}]
            if final and s.thinking is not None:
                meta["thoughtsTokenCount"] = s.reasoning_tokens
            obj["usageMetadata"] = meta
        obj["modelVersion"] = s.model
        obj["responseId"] = response_id
        return obj

    # The parts of the reply, one streamed chunk each.
    thought_parts: list[dict[str, Any]] = []
    if s.thinking is not None:
        thought_parts = [
            {"text": p, "thought": True} for p in split_text(s.thinking, len(s.pieces))
        ]
        thought_parts[-1]["thoughtSignature"] = signature
    if s.tool_calls:
        answer_parts = [
            {
                "functionCall": {
                    "name": name,
                    "args": _tool_input(arguments),
                    "id": s.call_id("fc_", n),
                }
            }
            for n, (name, arguments) in enumerate(s.tool_calls)
        ]
    else:
        answer_parts = [{"text": p} for p in s.pieces]

    json_type = "application/json; charset=UTF-8"
    if not s.path.split("?", 1)[0].endswith(":streamGenerateContent"):
        thought = [{"text": s.thinking, "thought": True, "thoughtSignature": signature}]
        answer = answer_parts if s.tool_calls else [{"text": s.reply}]
        parts = (thought if s.thinking is not None else []) + answer
        return _json_reply(200, chunk(parts, final=True), json_type)

    stream_parts = thought_parts + answer_parts
    last = len(stream_parts) - 1
    chunks = [_dumps(chunk([p], final=i == last)) for i, p in enumerate(stream_parts)]
    query = parse_qs(urlsplit(s.path).query)
    if "sse" in query.get("alt", []):
        headers = [("content-type", "text/event-stream"), ("content-disposition", "attachment")]
        return _Reply(200, headers, [f"data: {c}\r\n\r\n".encode() for c in chunks], True)
    # Without alt=sse Gemini streams one JSON array, written element by element.
    pieces = [("[" if i == 0 else "\n,\r\n") + c for i, c in enumerate(chunks)]
    pieces[-1] += "\n]"
    return _Reply(200, [("content-type", json_type)], [p.encode() for p in pieces], chunked=True)


_BUILDERS: dict[str, Callable[[_Synth], _Reply]] = {
    "openai_chat": _openai_chat,
    "openai_responses": _openai_responses,
    "anthropic_messages": _anthropic_messages,
    "gemini": _gemini,
}


# --------------------------------------------------------------------------- HTTP plumbing


class _ResetDone(Exception):
    """The handler aborted the connection on purpose."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, the body waits
    # for the ACK of the headers, which the client delays by 40 ms.
    disable_nagle_algorithm = True
    server_version = "llmgate-emulator/1"
    sys_version = ""
    timeout = IO_TIMEOUT
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "websocket" in headers.get("upgrade", "").lower():
            self._websocket(headers)
            return
        body = self._read_body()
        hit = Hit(self.command, self.path, headers, body)
        emulator = self.server.emulator
        controls = emulator._controls_for(headers)
        try:
            hit.invalid = emulator._check(self.command, self.path, headers, body)
            if hit.invalid is not None and not emulator._recorded_refusal(controls):
                emulator._record(hit)
                reply = emulator._invalid_reply(self.path, hit.invalid)
            else:
                emulator._record(hit)
                reply = emulator._build_reply(self.command, self.path, body, controls)
        except Exception as exc:  # an emulator bug: say so instead of dropping the connection
            error = {"message": f"emulator failure: {exc!r}", "type": "emulator_error"}
            reply = _json_reply(500, {"error": error})
        try:
            self._send(reply, controls, hit)
        except _ResetDone:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    # --- WebSocket (the Responses API's WebSocket mode) ---------------------------------

    def _websocket(self, headers: dict[str, str]) -> None:
        """Upgrade (or refuse) a WebSocket request, then answer its messages until it ends."""
        emulator = self.server.emulator
        controls = emulator._controls_for(headers)
        self.close_connection = True  # after a WebSocket (or its refusal), nothing follows
        bare = urlsplit(self.path).path.rstrip("/")
        key = headers.get("sec-websocket-key", "").strip()
        refusal: tuple[int, str] | None = None
        if self.command != "GET" or not bare.endswith("/responses"):
            refusal = 404, f"emulator: no WebSocket at {self.command} {bare}"
        elif controls.ws_reject is not None:
            refusal = controls.ws_reject, f"Emulated WebSocket refusal {controls.ws_reject}"
        elif not key or headers.get("sec-websocket-version", "").strip() != "13":
            refusal = 400, "A WebSocket upgrade needs Sec-WebSocket-Key and version 13."
        if refusal is not None:
            emulator._record_handshake(Handshake(self.path, headers, refusal[0]))
            serial = f"{next(emulator._serial):08d}"
            self._send_now(_error_reply("openai_responses", *refusal, f"req_emu{serial}"))
            return

        extensions: list[Extension] = []
        answer = ""
        if controls.ws_deflate:
            answer = _negotiate_deflate(headers.get("sec-websocket-extensions", ""), extensions)
        number = emulator._next_connection()
        emulator._record_handshake(Handshake(self.path, headers, 101, answer, number))
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", generate_accept_token(key.encode()).decode())
        if answer:
            self.send_header("sec-websocket-extensions", answer)
        self.end_headers()
        ws = WsConnection(ConnectionType.SERVER, extensions)
        with contextlib.suppress(_ResetDone):
            self._ws_serve(ws, headers, controls, number)

    def _ws_serve(
        self, ws: WsConnection, headers: dict[str, str], controls: _Controls, number: int
    ) -> None:
        text: list[str] = []
        binary = bytearray()
        while True:
            data = self.rfile.read1(65536)  # the buffered reader may hold the first frames
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    text.append(event.data)
                    if event.message_finished:
                        body = "".join(text).encode()
                        text.clear()
                        self._ws_answer(ws, Hit("GET", self.path, headers, body), controls, number)
                elif isinstance(event, BytesMessage):
                    binary += event.data
                    if event.message_finished:
                        hit = Hit("GET", self.path, headers, bytes(binary))
                        binary.clear()
                        self._ws_answer(ws, hit, controls, number, binary_message=True)
                elif isinstance(event, Ping):
                    self.wfile.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        self.wfile.write(ws.send(event.response()))
                    return

    def _ws_answer(
        self,
        ws: WsConnection,
        hit: Hit,
        c: _Controls,
        number: int,
        *,
        binary_message: bool = False,
    ) -> None:
        hit.transport, hit.connection = "websocket", number
        emulator = self.server.emulator
        if binary_message:
            hit.error = "binary WebSocket message"
            events = [_ws_error(400, "Binary WebSocket messages are not supported.")]
        else:
            try:
                events, hit.error = emulator._ws_events(self.path, hit.body, c)
            except Exception as exc:  # an emulator bug: say so on the socket
                events = [_ws_error(500, f"emulator failure: {exc!r}")]
        emulator._record(hit)
        for index, event in enumerate(events):
            if c.reset_after is not None and index >= c.reset_after:
                self._abort()
            if index > 0 and c.pause_s > 0:
                time.sleep(c.pause_s)
            # Stamped before the write: once it is out, the client may look at the hit.
            hit.events_sent.append(time.monotonic())
            self.wfile.write(ws.send(TextMessage(data=_dumps(event))))
        if c.reset_after is not None:
            self._abort()

    def _send_now(self, reply: _Reply) -> None:
        """A buffered reply, then close (refused upgrades)."""
        payload = b"".join(reply.events)
        self.send_response(reply.status)
        for name, value in reply.headers:
            if name.lower() not in _NOT_REPLAYED:
                self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _send(self, reply: _Reply, c: _Controls, hit: Hit) -> None:
        comp = zlib.compressobj(wbits=31) if c.gzip else None
        self.send_response(reply.status)
        for name, value in reply.headers:
            if name.lower() not in _NOT_REPLAYED:
                self.send_header(name, value)
        if comp is not None:
            self.send_header("content-encoding", "gzip")

        if not reply.chunked:
            payload = b"".join(reply.events)
            if comp is not None:
                payload = comp.compress(payload) + comp.flush()
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if c.reset_after == 0:
                self._abort()
            hit.events_sent.append(time.monotonic())  # before: the client may look at once
            self.wfile.write(payload)
            if c.reset_after is not None:
                self._abort()
            return

        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for index, event in enumerate(reply.events):
            if c.reset_after is not None and index >= c.reset_after:
                self._abort()
            if index > 0 and c.pause_s > 0:
                time.sleep(c.pause_s)
            data = event if comp is None else comp.compress(event) + comp.flush(zlib.Z_SYNC_FLUSH)
            hit.events_sent.append(time.monotonic())  # before: the client may look at once
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        if c.reset_after is not None:
            self._abort()
        if comp is not None and (tail := comp.flush()):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(tail), tail))
        self.wfile.write(b"0\r\n\r\n")

    def _abort(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER on, timeout 0), no terminator."""
        time.sleep(RESET_GRACE)
        conn = self.connection
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            conn.close()
        with contextlib.suppress(OSError):
            self.rfile.close()  # drops the last reference, so the fd really closes now
        raise _ResetDone


def _negotiate_deflate(offers: str, extensions: list[Extension]) -> str:
    """Accept the first permessage-deflate offer: the response header value ("" if none);
    the configured extension is appended to ``extensions``."""
    for offer in offers.split(","):
        if offer.split(";", 1)[0].strip().lower() != "permessage-deflate":
            continue
        deflate = PerMessageDeflate()
        params = deflate.accept(offer.strip())
        if params is None or params is False:
            continue
        extensions.append(deflate)
        return f"{deflate.name}; {params}" if isinstance(params, str) and params else deflate.name
    return ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, emulator: Emulator, ssl_context: ssl.SSLContext) -> None:
        self.emulator = emulator
        self.ssl_context = ssl_context
        super().__init__((emulator.host, 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake per connection thread, so a slow client never blocks accept().
        request.settimeout(IO_TIMEOUT)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                request.close()
            return
        self.emulator._track(conn, True)
        try:
            self.RequestHandlerClass(conn, client_address, self)
        except (OSError, ValueError):
            pass  # client went away
        finally:
            self.emulator._track(conn, False)
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


# --------------------------------------------------------------------------- public class


class Emulator:
    """HTTPS upstream emulator; see the module docstring for the control headers.

    >>> with Emulator() as emu:
    ...     emu.url, emu.ca_path, emu.hits
    """

    def __init__(self, host: str = "127.0.0.1", fixtures_dir: Path | str | None = None) -> None:
        self.host = host
        self.fixtures_dir = Path(fixtures_dir) if fixtures_dir is not None else DEFAULT_FIXTURES_DIR
        self.port = 0
        self.url = ""
        self.ca_path = ""
        self._tmpdir: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._hits: list[Hit] = []
        self._handshakes: list[Handshake] = []
        self._defaults: dict[str, str] = {}
        self._replies: dict[str, str] = {}
        self._conns: set[ssl.SSLSocket] = set()
        self._serial = itertools.count(1)
        self._ws_numbers = itertools.count(1)

    # lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._tmpdir = tempfile.mkdtemp(prefix="llmgate-emulator-")
        ca_path, cert_path, key_path = _make_certs(Path(self._tmpdir))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        ctx.set_alpn_protocols(["http/1.1"])
        # No TLS 1.3 session tickets after the handshake. The tests' websockets sync
        # client reads the socket on its own thread while its handshake writes on
        # another, and an SSL object used by two threads at once fails now and then
        # ("[SSL] internal error", or a handshake that never completes: seen twice
        # under the full suite's load). Without tickets nothing arrives until the
        # 101 answers the request, so the two never overlap.
        ctx.num_tickets = 0
        self._server = _Server(self, ctx)
        self.port = int(self._server.server_address[1])
        self.url = f"https://{self.host}:{self.port}"
        self.ca_path = str(ca_path)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"llmgate-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # unblock handler threads waiting on idle keep-alive sockets
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # records -----------------------------------------------------------------------

    @property
    def hits(self) -> list[Hit]:
        """A snapshot (new list) of the requests received so far, oldest first."""
        with self._lock:
            return list(self._hits)

    @property
    def handshakes(self) -> list[Handshake]:
        """A snapshot of the WebSocket upgrade requests received so far, oldest first."""
        with self._lock:
            return list(self._handshakes)

    def set_default_controls(self, headers: dict[str, str]) -> None:
        """Control headers applied to every later request and WebSocket upgrade that does
        not send that header itself (for clients that cannot add headers); ``reset()``
        clears them. Names are case-insensitive."""
        with self._lock:
            self._defaults = {k.lower(): v for k, v in headers.items()}

    def register_reply(self, text: str) -> str:
        """Make `text` the reply for requests sending the returned x-emulator-reply-ref."""
        with self._lock:
            ref = f"reply-{len(self._replies) + 1}"
            self._replies[ref] = text
        return ref

    def registered_reply(self, ref: str) -> str:
        with self._lock:
            return self._replies.get(ref, DEFAULT_REPLY)

    def reset(self) -> None:
        """Forget all recorded hits and handshakes, and the default controls."""
        with self._lock:
            self._hits.clear()
            self._handshakes.clear()
            self._defaults = {}

    def wait_for_hits(self, count: int, timeout: float = 5.0) -> list[Hit]:
        """Wait until at least ``count`` hits are recorded; return them (raise on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            hits = self.hits
            if len(hits) >= count:
                return hits
            if time.monotonic() >= deadline:
                raise TimeoutError(f"emulator saw {len(hits)} hits, expected {count}")
            time.sleep(0.01)

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    def _record_handshake(self, handshake: Handshake) -> None:
        with self._lock:
            self._handshakes.append(handshake)

    def _next_connection(self) -> int:
        with self._lock:
            return next(self._ws_numbers)

    def _controls_for(self, headers: dict[str, str]) -> _Controls:
        with self._lock:
            merged = {**self._defaults, **headers}
        controls = _Controls.from_headers(merged)
        ref = merged.get(HEADER_REPLY_REF)
        if ref is not None:
            controls = dataclasses.replace(controls, reply=self.registered_reply(ref))
        return controls

    def _track(self, conn: ssl.SSLSocket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # replies -----------------------------------------------------------------------

    def _check(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
        """Why an HTTP request breaks its protocol's rules, or None (also for requests
        that are no protocol call at all: those get a 404)."""
        protocol = detect_protocol(path)
        if protocol is None or method != "POST":
            return None
        try:
            request = json.loads(body) if body else None
        except ValueError:
            return "the request body is not valid JSON"
        url = urlsplit(path)
        return check_request(protocol, url.path, parse_qs(url.query), headers, request)

    def _recorded_refusal(self, c: _Controls) -> bool:
        """Whether the request replays a fixture that records the provider refusing its
        request (status >= 400): that recording answers even an invalid request."""
        if c.status is not None or c.fixture is None:
            return False
        try:
            return int(load_fixture(c.fixture, self.fixtures_dir)["response"]["status"]) >= 400
        except (OSError, ValueError, KeyError):
            return False

    def _invalid_reply(self, path: str, reason: str) -> _Reply:
        protocol = detect_protocol(path)
        serial = f"{next(self._serial):08d}"
        message = f"emulator: invalid {protocol} request: {reason}"
        return _error_reply(protocol, 400, message, f"req_emu{serial}")

    def _build_reply(self, method: str, path: str, body: bytes, c: _Controls) -> _Reply:
        protocol = detect_protocol(path)
        serial = f"{next(self._serial):08d}"
        if c.status is not None:
            message = f"Emulated error {c.status}"
            return _error_reply(protocol, c.status, message, f"req_emu{serial}")
        if c.fixture is not None:
            return self._fixture_reply(c.fixture)
        if protocol is None or method != "POST":
            message = f"emulator: no route for {method} {urlsplit(path).path}"
            return _json_reply(404, {"error": {"message": message, "type": "not_found"}})
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return _error_reply(protocol, 400, "Request body is not a JSON object.", serial)
        return _BUILDERS[protocol](self._synth(protocol, path, body, request, c, serial))

    def _synth(
        self,
        protocol: str,
        path: str,
        body: bytes,
        request: dict[str, Any],
        c: _Controls,
        serial: str,
    ) -> _Synth:
        if protocol == "gemini":
            match = _GEMINI_PATH.search(urlsplit(path).path)
            model = match.group(1) if match else "gemini"
        else:
            model = str(request.get("model") or "emulator-model")
        tool_calls: list[tuple[str, str]] = []
        if c.tool_call is not None and not _has_tool_output(protocol, request):
            names = [n.strip() for n in c.tool_call.split(",") if n.strip()]
            tool_calls = [(name, c.tool_args) for name in names]
        generate = protocol != "openai_responses" or request.get("generate") is not False
        usage = None
        if not c.no_usage:
            answer = " ".join(a for _, a in tool_calls) if tool_calls else c.reply
            usage = expected_usage(body, f"{c.thinking} {answer}" if c.thinking else answer)
            if not generate:
                usage = Usage(usage.input_tokens, 0)
            elif c.output_tokens is not None:
                usage = Usage(usage.input_tokens, c.output_tokens)
        return _Synth(
            body=request,
            path=path,
            model=model,
            reply=c.reply,
            pieces=split_text(c.reply, c.chunks),
            usage=usage,
            serial=serial,
            created=int(time.time()),
            tool_calls=tool_calls,
            thinking=c.thinking,
            generate=generate,
            cache_write_tokens=c.cache_write_tokens,
        )

    def _ws_events(
        self, path: str, body: bytes, c: _Controls
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The events answering one WebSocket message, and why it was refused (or None).

        The message is checked first, whatever the controls say: a malformed
        ``response.create`` is a client (or gateway) bug a test wants to see.
        """
        serial = f"{next(self._serial):08d}"
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        problem = _check_response_create(request)
        if problem is not None:
            message, param = problem
            return [_ws_error(400, message, param)], message
        assert isinstance(request, dict)
        if c.status is not None:
            return [_ws_error(c.status, f"Emulated error {c.status}")], None
        if c.fixture is not None:
            return self._fixture_ws_events(c.fixture), None
        synth = self._synth("openai_responses", path, body, request, c, serial)
        return _responses_payloads(synth)[1], None

    def _fixture_ws_events(self, stem: str) -> list[dict[str, Any]]:
        """A recorded Responses stream's events, one message each (SSE framing dropped)."""
        try:
            fixture = load_fixture(stem, self.fixtures_dir)
        except (OSError, ValueError) as exc:
            return [_ws_error(500, f"emulator: cannot load fixture {stem!r}: {exc}")]
        if fixture.get("protocol") != "openai_responses" or not fixture.get("stream"):
            return [_ws_error(500, f"emulator: {stem!r} is not a Responses stream")]
        events: list[dict[str, Any]] = []
        for event in split_events(fixture["response"].get("body_text", "")):
            data = [line[5:].lstrip() for line in event.splitlines() if line.startswith("data:")]
            if data:
                events.append(json.loads("\n".join(data)))
        return events

    def _fixture_reply(self, stem: str) -> _Reply:
        try:
            fixture = load_fixture(stem, self.fixtures_dir)
        except (OSError, ValueError) as exc:
            message = f"emulator: cannot load fixture {stem!r}: {exc}"
            return _json_reply(500, {"error": {"message": message, "type": "emulator_error"}})
        response = fixture["response"]
        headers = [(k, str(v)) for k, v in response.get("headers", {}).items()]
        text: str = response.get("body_text", "")
        if fixture.get("stream"):
            return _Reply(
                int(response["status"]), headers, [e.encode() for e in split_events(text)], True
            )
        return _Reply(int(response["status"]), headers, [text.encode()])
