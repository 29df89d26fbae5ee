"""Helpers for the hostile-input suites: raw HTTP through the proxy, wire-format checks.

`httpx2` normalises what a hostile caller would not (it percent-encodes a raw byte
in a URL, it never opens a tunnel to one host and speaks TLS for another), so these
helpers write requests byte for byte: `exchange` over a CONNECT tunnel (TLS with
any server name, or none), `plain_exchange` as an absolute-form request to the
proxy, and `RawClient`, a small keep-alive HTTP/1.1 client over asyncio that the
fuzz test uses because it costs a fraction of httpx2's CPU per request.

`assert_refused` is the three-part check every refusal must pass: an answer in
the caller's wire format carrying `x-llmgate-request-id`, a closed ledger row
under that id with the expected status, HTTP status and reason, and no request at
the upstream emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.emulator import Emulator
from tests.proxy import Proxy

REQUEST_ID = "x-llmgate-request-id"
EMULATOR_SERVER = "llmgate-emulator/1"

# Where each protocol is called, and where its caller puts a key.
ENDPOINTS = {
    "openai_chat": ("api.openai.com", "/v1/chat/completions"),
    "openai_responses": ("api.openai.com", "/v1/responses"),
    "anthropic_messages": ("api.anthropic.com", "/v1/messages"),
    "gemini": (
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
    ),
}
WIRE = {
    "openai_chat": "openai",
    "openai_responses": "openai",
    "anthropic_messages": "anthropic",
    "gemini": "gemini",
}
CREDENTIAL_HEADER = {
    "openai_chat": "authorization",
    "openai_responses": "authorization",
    "anthropic_messages": "x-api-key",
    "gemini": "x-goog-api-key",
}

# Documented error vocabularies of each provider (their API references).
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "overloaded_error",
}  # fmt: skip
GEMINI_STATUSES = {
    "INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNAUTHENTICATED",
    "PERMISSION_DENIED", "NOT_FOUND", "ABORTED", "ALREADY_EXISTS", "RESOURCE_EXHAUSTED",
    "CANCELLED", "DATA_LOSS", "UNKNOWN", "INTERNAL", "NOT_IMPLEMENTED", "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
}  # fmt: skip


def valid_body(protocol: str, model: str | None = None, text: str = "hi") -> dict[str, Any]:
    """A minimal valid call of each protocol (Gemini's model is in the path)."""
    if protocol == "openai_chat":
        return {"model": model or "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if protocol == "openai_responses":
        return {"model": model or "gpt-4o-mini", "input": text}
    if protocol == "anthropic_messages":
        return {
            "model": model or "claude-haiku-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": text}],
        }
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def nested_array(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def with_raw_member(body: dict[str, Any], name: str, raw_json: str) -> bytes:
    """The body's JSON with one more top-level member whose value is `raw_json` verbatim."""
    text = json.dumps(body)
    return (text[:-1] + f', "{name}": ' + raw_json + "}").encode()


# --- responses ------------------------------------------------------------------------


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content: bytes
    reason: str = ""

    def json(self) -> Any:
        return json.loads(self.content)


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(status), (reason[0] if reason else ""), headers


def _recv_until(sock: socket.socket, marker: bytes, buffer: bytes = b"") -> tuple[bytes, bytes]:
    while marker not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before {marker!r}: {buffer[:200]!r}")
        buffer += chunk
    head, _, rest = buffer.partition(marker)
    return head, rest


def _read_response(sock: socket.socket) -> RawResponse:
    head, rest = _recv_until(sock, b"\r\n\r\n")
    status, reason, headers = _parse_head(head)
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return RawResponse(status, headers, rest[:length], reason)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size_line, rest = _recv_until(sock, b"\r\n", rest)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed inside a chunk")
                rest += chunk
            if size == 0:
                return RawResponse(status, headers, body, reason)
            body, rest = body + rest[:size], rest[size + 2 :]
    while chunk := sock.recv(65536):
        rest += chunk
    return RawResponse(status, headers, rest, reason)


def open_tunnel(proxy: Proxy, target: str, timeout: float = 15) -> socket.socket:
    """A socket through the proxy to `target` (host:port), after `CONNECT` succeeded."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head, rest = _recv_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert not rest, rest
    return sock


def exchange(
    proxy: Proxy,
    target: str,
    request: bytes,
    *,
    sni: str | None = None,
    tls: bool = True,
    context: ssl.SSLContext | None = None,
    timeout: float = 15,
) -> RawResponse:
    """One raw request through a CONNECT tunnel to `target`: TLS with server name `sni`
    (trusting the proxy's CA unless `context` is given), or plain when `tls` is False.
    The request should say `connection: close`."""
    sock = open_tunnel(proxy, target, timeout)
    if tls:
        sock = (context or proxy.ssl_context()).wrap_socket(sock, server_hostname=sni)
    with sock:
        sock.sendall(request)
        return _read_response(sock)


def plain_exchange(proxy: Proxy, request: bytes) -> RawResponse:
    """One raw plain-HTTP request to the proxy itself (absolute-form target)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(request)
        return _read_response(sock)


def http_request(
    method: str,
    target: bytes | str,
    host: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    if isinstance(target, str):
        target = target.encode()
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"host: {host}".encode()]
    all_headers = {"content-type": "application/json", "connection": "close", **(headers or {})}
    all_headers["content-length"] = str(len(body))
    lines += [f"{k}: {v}".encode("latin-1") for k, v in all_headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- wire formats -------------------------------------------------------------------


def error_problem(wire: str, status: int, body: Any) -> str | None:
    """Why `body` is not an error in the caller's wire format (None when it is)."""
    if wire == "openai":
        if not isinstance(body, dict) or set(body) != {"error"}:
            return f"OpenAI errors are {{'error': {{...}}}}, got {body!r:.300}"
        error = body["error"]
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            return f"OpenAI error without a string message: {body!r:.300}"
        if "type" in error and not isinstance(error["type"], str):
            return f"OpenAI error type is not a string: {body!r:.300}"
        return None
    if wire == "anthropic":
        if not isinstance(body, dict) or body.get("type") != "error":
            return f"Anthropic errors are {{'type': 'error', ...}}, got {body!r:.300}"
        error = body.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            return f"Anthropic error without a string message: {body!r:.300}"
        if error.get("type") not in ANTHROPIC_ERROR_TYPES:
            return f"Anthropic error type {error.get('type')!r} is not one of Anthropic's"
        return None
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return f"Gemini errors are {{'error': {{code, message, status}}}}, got {body!r:.300}"
    error = body["error"]
    if error.get("code") != status:
        return f"Gemini error code {error.get('code')!r} is not the HTTP status {status}"
    if not isinstance(error.get("message"), str):
        return f"Gemini error without a string message: {body!r:.300}"
    if error.get("status") not in GEMINI_STATUSES:
        return f"Gemini error status {error.get('status')!r} is not a google.rpc code"
    return None


def error_kind(wire: str, body: Any) -> str | None:
    """llmgate's machine-readable reason, where the wire format has a place for it."""
    try:
        if wire == "openai":
            return body["error"].get("code")
        if wire == "gemini":
            details = body["error"].get("details") or []
            return next((d.get("reason") for d in details if "reason" in d), None)
    except (AttributeError, KeyError, TypeError):
        return None
    return None


def assert_error_format(
    wire: str, response: Any, status: int, reasons: str | tuple[str, ...]
) -> Any:
    """llmgate's own error: the status, the request id, the caller's wire format."""
    reasons = (reasons,) if isinstance(reasons, str) else reasons
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert REQUEST_ID in response.headers, f"no {REQUEST_ID}: {dict(response.headers)}"
    assert response.headers.get("server") != EMULATOR_SERVER, "this error came from upstream"
    body = json.loads(response.content)
    problem = error_problem(wire, status, body)
    assert problem is None, problem
    kind = error_kind(wire, body)
    assert kind is None or kind in reasons, (kind, reasons)
    return body


def assert_refused(
    proxy: Proxy,
    emulator: Emulator,
    response: Any,
    *,
    wire: str,
    status: int,
    reason: str | tuple[str, ...],
    outcome: str,
    hits_before: int = 0,
) -> dict[str, Any]:
    """(a) the caller's format and the request id, (b) the ledger row, (c) no upstream hit."""
    reasons = (reason,) if isinstance(reason, str) else reason
    hits = [(h.method, h.path) for h in emulator.hits]
    assert response.status_code == status, (response.status_code, response.content[:300], hits)
    assert_error_format(wire, response, status, reasons)
    row = proxy.row(response.headers[REQUEST_ID])
    assert (row["status"], row["http_status"]) == (outcome, status), row
    assert row["reason"] in reasons, row
    assert len(emulator.hits) == hits_before, [(h.method, h.path) for h in emulator.hits]
    return row


def non_loopback_address() -> str:
    """This machine's own address on a non-loopback interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.254", 9))
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "the test needs a non-loopback interface"
    return address


# --- a listener that records whoever reaches it ------------------------------------------


@dataclass
class Listener:
    """A plain TCP listener on `host` that records every connection and byte it gets."""

    host: str
    port: int = 0
    connections: int = 0
    closed: int = 0  # connections the other side closed
    received: bytearray = field(default_factory=bytearray)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Listener:
        self._sock = socket.create_server((self.host, 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                with self._lock:
                    self.received += data
            with self._lock:
                self.closed += 1

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()


# --- the fuzz client ----------------------------------------------------------------------


@dataclass
class Sent:
    """One request the fuzz sent: its answer, or why it got none."""

    index: int
    protocol: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    failure: str | None = None


class RawClient:
    """Keep-alive HTTP/1.1 over CONNECT + TLS to one intercepted host, with asyncio.

    A request whose connection drops before its answer is reported, never resent:
    a resend would make counts of rows and upstream hits meaningless.
    """

    def __init__(self, proxy: Proxy, host: str) -> None:
        self.proxy, self.host = proxy, host
        self._context = proxy.ssl_context()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy.port)
        writer.write(f"CONNECT {self.host}:443 HTTP/1.1\r\nHost: {self.host}:443\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT refused: {head!r}")
        await writer.start_tls(self._context, server_hostname=self.host)
        self._reader, self._writer = reader, writer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def send(self, sent: Sent, path: str, body: bytes, headers: dict[str, str]) -> None:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        lines = [f"POST {path} HTTP/1.1", f"host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), 60)
            sent.status, _, sent.headers = _parse_head(head[:-4])
            sent.content = await self._body(sent.headers)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            sent.failure = f"{type(exc).__name__}: {exc}"[:300]
            await self.close()
            return
        if sent.headers.get("connection", "").lower() == "close":
            await self.close()

    async def _body(self, headers: dict[str, str]) -> bytes:
        assert self._reader is not None
        if "content-length" in headers:
            return await self._reader.readexactly(int(headers["content-length"]))
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self._reader.readexactly(size + 2)
                if size == 0:
                    return b"".join(parts)
                parts.append(data[:-2])
        data = await self._reader.read()
        await self.close()
        return data
