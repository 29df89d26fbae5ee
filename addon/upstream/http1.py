"""HTTP/1.1 on one upstream connection: the request as bytes, the reply as it arrives.

The wire half of the dispatcher's client (`addon.upstream.client` keeps the pool):
llhttp, Node's C parser, through `httptools`, on an asyncio transport. A request that
could split on the wire (CR, LF or NUL in a header, a space in the target) is refused
before a byte is sent (`InvalidRequest`); a reply's head is capped at
`MAX_HEAD_BYTES`, and its body is read no faster than it is taken (`HIGH_WATER`).
Every fault is one of the exceptions below, which `failures.classify` turns into the
caller's answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from typing import NamedTuple

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# A reply head (status line, headers, interim replies) longer than this is refused:
# llhttp keeps no limit of its own, and httptools gathers a header in memory.
MAX_HEAD_BYTES = 64 << 10
# Body bytes received but not yet taken by the reader, past which reading pauses.
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18

_BAD_IN_VALUE = frozenset("\r\n\0")
_BAD_IN_NAME = _BAD_IN_VALUE | frozenset(" \t:")
_BAD_IN_TARGET = frozenset(chr(c) for c in range(0x21)) | {"\x7f"}


class UpstreamError(Exception):
    """Any fault of an upstream exchange."""


class ConnectTimeout(UpstreamError, TimeoutError):
    """The connection (TCP and TLS) was not made within the connect timeout."""


class HostNotFound(UpstreamError):
    """The upstream's host name did not resolve."""


class ConnectFailed(UpstreamError):
    """The connection was refused or failed before it was made."""


class UpstreamTLSError(UpstreamError):
    """The TLS handshake failed (an untrusted certificate among other causes)."""


class Disconnected(UpstreamError):
    """The upstream closed the connection before its reply was whole. Not a
    `ConnectionResetError`: the dispatcher reads those as the caller's side gone."""


class MalformedReply(UpstreamError):
    """The upstream's bytes are not an HTTP/1.1 reply."""


class InvalidRequest(UpstreamError):
    """The request cannot be sent as HTTP/1.1 without changing what it means."""


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int
    authority: str  # the Host header
    target: str  # path and query, as sent on the request line


@lru_cache(maxsize=512)
def parse_url(url: str) -> Origin:
    """`url` (absolute, already encoded) as an origin and a request target."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise InvalidRequest("the upstream URL is not http(s)")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:] or "/"
    if target.startswith("?"):
        target = "/" + target
    if "@" in authority:
        raise InvalidRequest("the upstream URL holds credentials")
    host, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        host, after = authority[1:end], authority[end + 1 :]
        if end < 0 or (after and not after.startswith(":")):
            raise InvalidRequest("the upstream URL has a bad host")
        port_text = after[1:]
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
    default = 443 if scheme == "https" else 80
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        raise InvalidRequest("the upstream URL has a bad port") from None
    if not host or not 0 < port < 65536 or not _BAD_IN_TARGET.isdisjoint(authority):
        raise InvalidRequest("the upstream URL has a bad host")
    if not _BAD_IN_TARGET.isdisjoint(target):
        raise InvalidRequest("the request target holds a space or a control character")
    return Origin(scheme, host.lower(), port, authority, target)


def encode_request(
    method: str, origin: Origin, headers: list[tuple[str, str]], body: bytes | None
) -> bytes:
    if not (method.isascii() and method.isalpha()):
        raise InvalidRequest("the method is not a token")
    lines = [f"{method} {origin.target} HTTP/1.1\r\nHost: {origin.authority}\r\n"]
    for name, value in headers:
        if not (name and _BAD_IN_NAME.isdisjoint(name) and _BAD_IN_VALUE.isdisjoint(value)):
            raise InvalidRequest("a header holds CR, LF or NUL, or a bad name")
        lines.append(f"{name}: {value}\r\n")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("utf-8")
    return head + body if body else head


class UpstreamReply:
    """One reply: its head at once, its body as it arrives (`chunks`, `read`)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self._parts: deque[bytes] = deque()
        self._pending = 0
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self._error: UpstreamError | None = None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = CIMultiDictProxy(
                CIMultiDict(
                    (n.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
                    for n, v in self.raw_headers
                )
            )
        return self._headers

    # --- fed by the connection ---
    def _feed(self, data: bytes) -> None:
        self._parts.append(data)
        self._pending += len(data)
        if self._pending > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def _end(self, error: UpstreamError | None) -> None:
        if error is None:
            self.complete = True
        elif not self.complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- for the dispatcher ---
    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they come; raises the fault that cut it short."""
        while True:
            if self._parts:
                data = self._parts.popleft()
                self._pending -= len(data)
                if self._pending < LOW_WATER and not self.complete:
                    # Once whole, the connection may carry another reply: not ours to resume.
                    self._connection.resume()
                yield data
            elif self._error is not None:
                raise self._error
            elif self.complete:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    async def read(self) -> bytes:
        if not self.complete:
            return b"".join([chunk async for chunk in self.chunks()])
        data = b"".join(self._parts)
        self._parts.clear()
        self._pending = 0
        return data

    def close(self) -> None:
        """Done with this reply: a connection still carrying it is closed, not reused."""
        if not self.complete:
            self._connection.abort()

    release = close


class Connection(asyncio.Protocol):
    """One upstream connection and its parser; at most one reply at a time. It calls
    `reusable` when a whole reply has left it fit for another request, and `lost`
    when it closes."""

    def __init__(
        self,
        key: tuple[str, str, int],
        reusable: Callable[[Connection], None],
        lost: Callable[[Connection], None],
    ) -> None:
        self._reusable_again = reusable
        self._lost = lost
        self.key = key
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reply: UpstreamReply | None = None
        self._head: asyncio.Future[UpstreamReply] | None = None
        self._head_only = False  # a HEAD request: the reply has no body whatever it says
        self._sized = False  # the reply's end is known before the connection closes
        self._reusable = False
        self._paused = False
        self._head_bytes = 0  # received while the head is still incomplete

    def send(self, data: bytes, head_only: bool) -> asyncio.Future[UpstreamReply]:
        assert self.transport is not None and self._reply is None
        self._reply = UpstreamReply(self)
        self._head = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        self._head_bytes = 0
        self.transport.write(data)
        return self._head

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._reply is None:
            self.abort()  # bytes nobody asked for: this connection is not to be trusted
            return
        if self._head is not None and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(MalformedReply(f"the reply's head ran past {MAX_HEAD_BYTES} bytes"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedReply(f"malformed HTTP reply: {exc}"))
            return
        if self._head is not None:
            self._head_bytes += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost(self)
        reply = self._reply
        if reply is None:
            return
        if self._head is not None:
            self._fail(Disconnected("the upstream closed the connection before it replied"))
        elif not self._sized:
            self._finish()  # a body that runs to the close has ended
        else:
            self._fail(Disconnected("the upstream closed the connection midway through"))

    def _fail(self, error: UpstreamError) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._head = None
        if self._reply is not None:
            self._reply._end(error)
            self._reply = None
        self.abort()

    def _finish(self) -> None:
        reply, self._reply = self._reply, None
        assert reply is not None
        reply._end(None)
        if self._reusable and not self.closed:
            self.resume()
            self._reusable_again(self)
        elif not self.closed:
            self.abort()

    # --- httptools callbacks (an exception here surfaces as HttpParserCallbackError) ---
    def _current(self) -> UpstreamReply:
        if self._reply is None:  # a second reply in the same bytes, to no request
            raise MalformedReply("the upstream sent a reply nobody asked for")
        return self._reply

    def on_status(self, status: bytes) -> None:
        self._current().reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current().raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        reply = self._current()
        reply.status = status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim reply: its message completes at once, the real one follows
        self._sized = self._head_only or status in (204, 304) or _framed(reply.raw_headers)
        self._reusable = self._parser.should_keep_alive() and not self._head_only
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(reply)
        if self._head_only:
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._reply is not None:
            self._reply._feed(body)

    def on_message_complete(self) -> None:
        reply = self._reply
        if reply is None:
            return
        if self._head is not None:  # an interim (1xx) reply ended: wait for the real one
            reply.reason, reply.raw_headers = "", []
            return
        self._finish()


def _framed(raw_headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body's end is in the reply itself (a length, or chunked coding last)
    rather than at the connection's close."""
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered == b"content-length":
            return True
        if lowered == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
            return True
    return False
