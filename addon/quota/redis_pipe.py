"""One pipelined Redis connection for the event loop: the quota scripts' hot path.

Why not redis.asyncio here: measured in the proxy under py-spy, its call path
(Script.__call__, execute_command, the retry wrapper, the connection pool, the
command packer and the response reader in Python) took ~0.25 ms of the event loop
per reserve, most of the Redis quota's cost over no quota; the script itself runs
~60-90 µs inside Redis. This keeps what is expensive to get right in well-kept
code (hiredis, Redis's own C parser, packs commands and parses replies; redis-py
still parses the URL and serves the blocking store and the CLI) and keeps only
the plumbing here: one socket, commands written as soon as they are asked for,
replies matched to them in order. Many calls in flight share the one connection
(Redis answers a connection's commands in order), so 16 concurrent reserves cost
one socket, not a pool of them.

Failures fail closed: a connection that cannot be made, one that closes, or a
reply later than `timeout`, fails every command then in flight with
`QuotaUnavailable` (a reply that comes late could otherwise be matched to the
next command, so the connection is dropped). Nothing is retried on a new
connection: a reserve whose reply was lost may have been applied, and sending
it again would be refused as a duplicate; its reservation expires after the TTL.
The next call connects afresh, so a restarted Redis serves again at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from addon.quota.backend import QuotaUnavailable


class _Wire(asyncio.Protocol):
    """The socket: what was sent waits, in order, for its reply."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[asyncio.Future[Any], asyncio.TimerHandle]] = deque()
        self._transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if self.lost or self._transport is None:
            reply.set_exception(QuotaUnavailable("redis quota store: connection closed"))
            return reply
        timer = loop.call_later(self._timeout, self._late)
        self._waiting.append((reply, timer))
        self._transport.write(hiredis.pack_command(args))
        return reply

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (value := self._reader.gets()) is not False:
            if not self._waiting:  # a reply nobody asked for: the stream cannot be trusted
                self._fail("redis quota store: unexpected reply")
                return
            reply, timer = self._waiting.popleft()
            timer.cancel()
            if not reply.done():
                reply.set_result(value)

    def _late(self) -> None:
        self._fail(f"redis quota store: no reply within {self._timeout:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"redis quota store: connection lost ({exc or 'closed by the server'})")

    def _fail(self, why: str) -> None:
        self.lost = True
        while self._waiting:
            reply, timer = self._waiting.popleft()
            timer.cancel()
            if not reply.done():
                reply.set_exception(QuotaUnavailable(why))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()


class RedisPipe:
    """Commands to one Redis database over one pipelined connection, made on first use."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        params = parse_url(url)
        self._timeout = timeout
        self._path: str | None = None
        self._host, self._port = "localhost", 6379
        self._ssl: ssl.SSLContext | None = None
        kind = params.get("connection_class")
        if kind is UnixDomainSocketConnection:
            self._path = params["path"]
        else:
            self._host, self._port = params.get("host", self._host), params.get("port", self._port)
            if kind is SSLConnection:
                self._ssl = ssl.create_default_context()
        # What a fresh connection says first; its replies are checked before use.
        self._hello: list[tuple[Any, ...]] = []
        if params.get("password"):
            user = params.get("username")
            auth = (user, params["password"]) if user else (params["password"],)
            self._hello.append(("AUTH", *auth))
        if params.get("db"):
            self._hello.append(("SELECT", params["db"]))
        self._wire: _Wire | None = None
        self._connecting: asyncio.Future[_Wire] | None = None

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """The command leaves now if the connection is up (else once it is); its reply later."""
        if self._wire is not None and not self._wire.lost:
            return self._wire.send(args)
        return asyncio.ensure_future(self._send_when_connected(args))

    async def call(self, *args: Any) -> Any:
        return checked(await self.send(*args))

    async def _send_when_connected(self, args: tuple[Any, ...]) -> Any:
        wire = await self._connected()
        return await wire.send(args)

    async def _connected(self) -> _Wire:
        if self._wire is not None and not self._wire.lost:
            return self._wire
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Wire:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                if self._path is not None:
                    _, wire = await loop.create_unix_connection(
                        lambda: _Wire(self._timeout), self._path
                    )
                else:
                    _, wire = await loop.create_connection(
                        lambda: _Wire(self._timeout), self._host, self._port, ssl=self._ssl
                    )
                try:
                    for reply in await asyncio.gather(*(wire.send(h) for h in self._hello)):
                        checked(reply)
                except BaseException:
                    wire.close()  # refused (a wrong password): not kept, not leaked
                    raise
        except (OSError, TimeoutError) as exc:
            raise QuotaUnavailable(f"redis quota store: cannot connect: {exc}") from exc
        self._wire = wire
        return wire

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None


def checked(reply: Any) -> Any:
    """The reply, or QuotaUnavailable if Redis answered with an error."""
    if isinstance(reply, hiredis.ReplyError):
        raise QuotaUnavailable(f"redis quota store: {reply}")
    return reply


class Script:
    """A Lua script run by EVALSHA, and by EVAL (which also caches it) when the server
    does not know it: first use, or after a restart emptied its script cache."""

    def __init__(self, pipe: RedisPipe, source: str) -> None:
        self._pipe = pipe
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """Sent now; await `result` on what this returns."""
        return self._pipe.send("EVALSHA", self._sha, 0, *args)

    async def result(self, sent: asyncio.Future[Any], *args: Any) -> Any:
        reply = await sent
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._pipe.send("EVAL", self._source, 0, *args)
        return checked(reply)

    async def __call__(self, *args: Any) -> Any:
        return await self.result(self.send(*args), *args)
