"""The dispatcher's HTTP/1.1 client: llhttp (through `httptools`) on asyncio's transports.

Why not aiohttp's client, which the dispatcher used before: in a mitmdump hook that
answers from the upstream, aiohttp's client cost ~240 µs of the event loop per call
against ~60 µs for a plain exchange on a pooled connection (bench: a static reply in
the hook, the hook with aiohttp, with h11, with a raw client; BENCH.md, issue 14).
Its cost is in its layers (tracing, cookies, yarl, timers, a StreamReader per reply),
not in its parser, so the client keeps the C parser and drops the layers: the
dispatcher needs one request, one reply and a pool, nothing else. This module is
the pool; `addon.upstream.http1` is one connection's wire.

What it does, and what it refuses:
- one keep-alive pool per (scheme, host, port); a connection goes back only after a
  whole reply the upstream did not ask to close, and is dropped once idle for
  `IDLE_S` or once its peer closes it;
- the request is sent as decided: the caller's headers less hop-by-hop ones (the
  dispatcher takes them off), `Host`, and `Content-Length` for a body. A header or
  target that could split the request (CR, LF, NUL, or a space in the target) is
  refused before a byte is sent (`InvalidRequest`);
- the reply body arrives as the upstream sends it, chunked or sized or up to the
  close; reading pauses past `HIGH_WATER` bytes not yet taken, so that a fast
  upstream and a slow caller cannot fill memory;
- every fault is one of the exceptions below, which `failures.classify` turns into
  the caller's answer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

from addon.upstream.http1 import (
    ConnectFailed,
    Connection,
    ConnectTimeout,
    HostNotFound,
    Origin,
    UpstreamReply,
    UpstreamTLSError,
    encode_request,
    parse_url,
)

# A pooled connection idle this long is closed rather than reused (aiohttp's default
# keep-alive time; upstreams commonly close theirs after 5-75 s).
IDLE_S = 15.0
# At most this many idle connections per upstream are kept.
MAX_IDLE = 64


class UpstreamClient:
    """Pooled HTTP/1.1 connections to the upstreams; one per event loop."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._all: set[Connection] = set()

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        connect_timeout: float,
    ) -> UpstreamReply:
        """Send one request and wait for the reply's head (the caller bounds the wait)."""
        origin = parse_url(url)
        data = encode_request(method, origin, headers, body)
        connection = self._reuse(origin) or await self._connect(origin, connect_timeout)
        head = connection.send(data, head_only=method == "HEAD")
        try:
            return await head
        except BaseException:
            connection.abort()  # a timeout or a cancel mid-reply: never reused
            raise

    def _reuse(self, origin: Origin) -> Connection | None:
        idle = self._idle.get((origin.scheme, origin.host, origin.port))
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            transport = connection.transport
            fresh = now - connection.idle_since < IDLE_S
            if fresh and not connection.closed and transport and not transport.is_closing():
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> Connection:
        key = (origin.scheme, origin.host, origin.port)
        connection = Connection(key, self.put_back, self.forget)
        secure = origin.scheme == "https"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: connection,
                    origin.host,
                    origin.port,
                    ssl=self._ssl if secure else None,
                    server_hostname=origin.host if secure else None,
                )
        except TimeoutError:
            connection.abort()
            raise ConnectTimeout(f"no connection within {timeout:g} s") from None
        except socket.gaierror as exc:
            raise HostNotFound(str(exc)) from exc
        except ssl.SSLError as exc:
            raise UpstreamTLSError(str(exc)) from exc
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        self._all.add(connection)
        return connection

    def put_back(self, connection: Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= MAX_IDLE:
            connection.abort()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def forget(self, connection: Connection) -> None:
        self._all.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def close(self) -> None:
        for connection in list(self._all):
            connection.abort()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost
