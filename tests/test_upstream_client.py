"""The dispatcher's HTTP/1.1 client (`addon.upstream.client`, `addon.upstream.http1`)
against real sockets: a scripted asyncio server for framing, pooling and faults, and
the emulator for TLS.
The end-to-end suites (test_e2e_faults, test_e2e_streams, ...) drive the same client
through mitmproxy; these pin down what they cannot reach."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import certifi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addon.upstream import http1
from addon.upstream.client import UpstreamClient
from addon.upstream.failures import classify
from addon.upstream.http1 import (
    ConnectFailed,
    Disconnected,
    HostNotFound,
    InvalidRequest,
    MalformedReply,
    UpstreamError,
    UpstreamTLSError,
    encode_request,
    parse_url,
)
from tests.emulator import Emulator

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class Server:
    """A local server whose every connection runs `script`; it counts connections and
    keeps each request head it read."""

    script: Script
    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return await reader.readexactly(length)


def answer_each(reply: bytes, close: bool = False) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        while True:
            await s.read_request(reader)
            writer.write(reply)
            await writer.drain()
            if close:
                return

    return script


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def plain_client() -> UpstreamClient:
    return UpstreamClient(ssl.create_default_context(cafile=certifi.where()))


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[tuple[UpstreamClient, Server]]:
    """A server running `script` and a client, both closed at the end."""
    client = plain_client()
    try:
        async with Server(script) as server:
            yield client, server
    finally:
        await client.close()


async def call(
    client: UpstreamClient, url: str, body: bytes | None = b"{}", method: str = "POST"
) -> tuple[int, bytes]:
    reply = await client.request(method, url, [("Authorization", "Bearer sk-test")], body, 5)
    return reply.status, await reply.read()


def test_a_sized_reply_is_read_and_its_connection_reused() -> None:
    async def main() -> None:
        async with serving(answer_each(OK)) as (client, s):
            for _ in range(3):
                assert await call(client, s.url) == (200, b"{}")
            assert s.connections == 1
            assert s.heads[0] == (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Authorization: Bearer sk-test\r\nContent-Length: 2\r\n\r\n" % s.port
            )

    run(main())


def test_a_chunked_reply_streams_before_it_ends() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await s.go.wait()
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await s.read_request(reader)
        writer.write(OK)

    async def main() -> None:
        async with serving(script) as (client, s):
            reply = await client.request("POST", s.url, [], b"{}", 5)
            chunks = reply.chunks()
            assert await anext(chunks) == b"hello"  # the rest is still held back
            s.go.set()
            assert b"".join([c async for c in chunks]) == b" world"
            assert await call(client, s.url) == (200, b"{}")
            assert s.connections == 1

    run(main())


@pytest.mark.parametrize(
    ("reply", "body", "server_closes"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nto the close", b"to the close", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the close", b"to the close", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nto the close", b"to the close", True),
        # The server would keep it open: the client must obey the header itself.
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", b"{}", False),
    ],
    ids=["http-1.0", "close-delimited", "non-chunked-coding", "sized-with-connection-close"],
)
def test_a_reply_that_ends_its_connection_is_read_whole_and_not_reused(
    reply: bytes, body: bytes, server_closes: bool
) -> None:
    async def main() -> None:
        async with serving(answer_each(reply, close=server_closes)) as (client, s):
            for _ in range(2):
                assert await call(client, s.url) == (200, body)
            assert s.connections == 2

    run(main())


def test_a_reply_cut_midway_is_a_fault_never_a_short_body() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this much"

    async def main() -> None:
        async with serving(answer_each(cut, close=True)) as (client, s):
            reply = await client.request("POST", s.url, [], b"{}", 5)
            with pytest.raises(Disconnected) as caught:
                await reply.read()
            assert classify(caught.value, "r", "body", 1).reason == "upstream_reset"

    run(main())


def test_a_close_before_any_reply_is_a_fault() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)

    async def main() -> None:
        async with serving(script) as (client, s):
            with pytest.raises(Disconnected) as caught:
                await client.request("POST", s.url, [], b"{}", 5)
            failure = classify(caught.value, "r", "first_byte", 1)
            assert (failure.status, failure.reason) == (502, "upstream_reset")

    run(main())


@pytest.mark.parametrize(
    "reply",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_a_malformed_reply_is_a_protocol_error(reply: bytes) -> None:
    async def main() -> None:
        async with serving(answer_each(reply)) as (client, s):
            with pytest.raises(MalformedReply) as caught:
                status, _ = await call(client, s.url)
            failure = classify(caught.value, "r", "first_byte", 1)
            assert (failure.status, failure.reason) == (502, "upstream_protocol_error")

    run(main())


@pytest.mark.parametrize(
    ("start", "flood"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Flood: ", b"a" * 4096),
        (b"HTTP/1.1 200 OK\r\n", b"X-Many: a\r\n" * 400),
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 200),
    ],
    ids=["one-endless-header", "endless-headers", "endless-interim-replies"],
)
def test_a_head_that_never_ends_is_refused_with_bounded_memory(start: bytes, flood: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(start)
        while True:  # until the client hangs up
            writer.write(flood)
            await writer.drain()

    async def main() -> None:
        async with serving(script) as (client, s):
            with pytest.raises(MalformedReply, match="head ran past"):
                await client.request("POST", s.url, [], b"{}", 5)

    run(main())


def test_a_head_reply_has_no_body_whatever_its_length_says() -> None:
    async def main() -> None:
        async with serving(answer_each(OK[:-2])) as (client, s):
            assert await call(client, s.url, None, "HEAD") == (200, b"")
            assert s.heads[0].startswith(b"HEAD /v1/chat/completions HTTP/1.1\r\n")
            assert b"content-length" not in s.heads[0].lower()

    run(main())


def test_an_interim_reply_is_skipped() -> None:
    async def main() -> None:
        async with serving(answer_each(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as (client, s):
            reply = await client.request("POST", s.url, [], b"{}", 5)
            assert (reply.status, reply.reason, await reply.read()) == (200, "OK", b"{}")
            assert reply.headers["content-type"] == "application/json"

    run(main())


@pytest.mark.parametrize(
    ("url", "headers", "method"),
    [
        ("http://h/v1", [("X-Evil", "a\r\nHost: other")], "POST"),
        ("http://h/v1", [("X-Evil\r\nHost", "a")], "POST"),
        ("http://h/v1", [("X-Nul", "a\0b")], "POST"),
        ("http://h/v1 HTTP/1.1\r\nHost: other", [], "POST"),
        ("http://h/v1", [], "PO ST"),
        ("http://user:pw@h/v1", [], "POST"),
        ("ftp://h/v1", [], "POST"),
        ("http://h:99999/v1", [], "POST"),
    ],
)
def test_a_request_that_would_change_meaning_on_the_wire_is_refused(
    url: str, headers: list[tuple[str, str]], method: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        encode_request(method, parse_url(url), headers, b"{}")
    failure = classify(caught.value, "r", "first_byte", 1)
    assert (failure.status, failure.reason, failure.sent) == (400, "unsendable_request", False)
    assert "\r" not in failure.message and "pw" not in failure.message


def test_nothing_is_sent_for_a_refused_request() -> None:
    async def main() -> None:
        async with serving(answer_each(OK)) as (client, s):
            with pytest.raises(InvalidRequest):
                await client.request("POST", s.url, [("X", "a\nb")], b"{}", 5)
            await asyncio.sleep(0.05)
            assert s.connections == 0

    run(main())


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://api.openai.com/v1/x?y=1", ("https", "api.openai.com", 443, "/v1/x?y=1")),
        ("http://Example.COM?q", ("http", "example.com", 80, "/?q")),
        ("http://[::1]:8080/p", ("http", "::1", 8080, "/p")),
        ("https://h:8443", ("https", "h", 8443, "/")),
    ],
)
def test_urls_become_origins(url: str, origin: tuple[str, str, int, str]) -> None:
    parsed = parse_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.target) == origin


def test_a_slow_reader_pauses_a_fast_upstream() -> None:
    size = 16 << 20

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * (1 << 16)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async def main() -> None:
        async with serving(script) as (client, s):
            reply = await client.request("POST", s.url, [], b"{}", 5)
            await asyncio.sleep(0.5)  # the upstream could send it all in this time
            held = reply._pending
            assert held <= http1.HIGH_WATER + (1 << 18), held
            assert len(await reply.read()) == size

    run(main())


def test_a_pooled_connection_the_upstream_closed_is_not_reused() -> None:
    async def main() -> None:
        async with serving(answer_each(OK, close=True)) as (client, s):
            assert await call(client, s.url) == (200, b"{}")
            await asyncio.sleep(0.05)  # the close arrives while it idles in the pool
            assert await call(client, s.url) == (200, b"{}")
            assert s.connections == 2

    run(main())


STALE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"


@pytest.mark.parametrize("apart", [False, True], ids=["same-read", "later"])
def test_bytes_after_a_reply_retire_its_connection(apart: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        while True:
            await s.read_request(reader)
            writer.write(OK if apart else OK + STALE)
            await writer.drain()
            if apart:
                await asyncio.sleep(0.05)
                writer.write(STALE)

    async def main() -> None:
        async with serving(script) as (client, s):
            for _ in range(2):
                assert await call(client, s.url) == (200, b"{}")
                await asyncio.sleep(0.15)  # the stray reply arrives while it idles
            assert s.connections == 2

    run(main())


def test_a_cancelled_exchange_closes_its_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        while True:
            await s.read_request(reader)
            if s.connections == 1:
                assert await reader.read() == b""  # no reply: wait for the client to leave
                s.go.set()
                return
            writer.write(OK)

    async def main() -> None:
        async with serving(script) as (client, s):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await call(client, s.url)
            await asyncio.wait_for(s.go.wait(), 2)  # closed at once, not left open
            assert await call(client, s.url) == (200, b"{}")
            assert s.connections == 2

    run(main())


def test_connect_faults_are_named() -> None:
    async def main() -> None:
        client = plain_client()
        with pytest.raises(ConnectFailed) as refused:
            async with Server(answer_each(OK)) as s:
                url = s.url
            await call(client, url)
        assert classify(refused.value, "r", "first_byte", 1).reason == "upstream_unreachable"
        with pytest.raises(HostNotFound) as unknown:
            await call(client, "http://no-such-host.invalid/v1")
        assert classify(unknown.value, "r", "first_byte", 1).reason == "upstream_dns_failure"
        await client.close()

    run(main())


def test_tls_is_verified_against_the_given_roots() -> None:
    async def main(emulator: Emulator) -> None:
        url = f"{emulator.url}/v1/chat/completions"
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
        headers = [("Authorization", "Bearer sk-test"), ("Content-Type", "application/json")]
        trusted = UpstreamClient(ssl.create_default_context(cafile=emulator.ca_path))
        for _ in range(2):
            reply = await trusted.request("POST", url, headers, body, 5)
            assert reply.status == 200 and b"chat.completion" in await reply.read()
        assert len(trusted._all) == 1  # one TLS connection served both
        await trusted.close()
        with pytest.raises(UpstreamTLSError) as caught:
            await plain_client().request("POST", url, headers, body, 5)
        assert classify(caught.value, "r", "first_byte", 1).reason == "upstream_tls_error"

    with Emulator() as emulator:
        run(main(emulator))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda head, body: head + body,
            st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 404 Nope\r\n", b"HTTP/1.1 "]),
            st.binary(max_size=300),
        ),
    )
)
def test_any_bytes_from_an_upstream_end_in_a_reply_or_an_upstream_error(junk: bytes) -> None:
    async def main() -> None:
        async with serving(answer_each(junk, close=True)) as (client, s):
            try:
                reply = await client.request("POST", s.url, [], b"{}", 5)
                await reply.read()
            except UpstreamError:
                pass

    run(main())
