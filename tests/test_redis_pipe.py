"""The quota's pipelined Redis connection (addon/quota/redis_pipe.py), against a real
redis-server: replies reach the command that asked, failures fail closed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from addon.quota.backend import QuotaUnavailable
from addon.quota.redis_pipe import RedisPipe, Script
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - a fixture


def test_many_commands_in_flight_on_one_connection_each_get_their_own_reply(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def run() -> None:
        pipe = RedisPipe(redis_server.url)
        sent = [pipe.send("ECHO", f"call-{i}") for i in range(500)]
        assert [r.decode() for r in await asyncio.gather(*sent)] == [
            f"call-{i}" for i in range(500)
        ]
        counted = await asyncio.gather(*(pipe.call("INCR", "pipe:n") for _ in range(300)))
        assert sorted(counted) == list(range(1, 301))
        pipe.close()

    asyncio.run(run())


def test_a_script_the_server_does_not_know_is_sent_whole_once_then_by_its_sha(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    client = redis_server.client()
    client.script_flush()
    client.config_resetstat()

    async def run() -> None:
        pipe = RedisPipe(redis_server.url)
        script = Script(pipe, "return {ARGV[1], #ARGV}")
        assert await script("a", "b") == [b"a", 2]
        assert await script("c") == [b"c", 1]
        client.script_flush()  # as a restarted Redis would have
        assert await script("d") == [b"d", 1]
        pipe.close()

    asyncio.run(run())
    stats = client.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 2
    assert stats["cmdstat_evalsha"]["calls"] == 3  # two of them answered NOSCRIPT
    client.close()


def test_the_urls_database_and_password_are_used(redis_server: RedisServer) -> None:  # noqa: F811
    client = redis_server.client()
    client.config_set("requirepass", "s3cret-pw")
    try:
        host = f"127.0.0.1:{redis_server.port}"

        async def run() -> None:
            pipe = RedisPipe(f"redis://:s3cret-pw@{host}/7")
            await pipe.call("SET", "pipe:db", "seven")
            pipe.close()
            admin = redis.Redis(port=redis_server.port, password="s3cret-pw")
            await asyncio.sleep(0.2)  # the pipe closed above has left the server's list
            before = len(admin.client_list())
            wrong = RedisPipe(f"redis://:wrong@{host}/7")
            with pytest.raises(QuotaUnavailable, match="WRONGPASS|invalid"):
                await wrong.call("PING")
            await asyncio.sleep(0.2)
            assert len(admin.client_list()) == before  # the refused connection was closed
            admin.close()
            wrong.close()

        asyncio.run(run())
        seven = redis.Redis(port=redis_server.port, db=7, password="s3cret-pw")
        assert seven.get("pipe:db") == b"seven"
        seven.close()
    finally:
        redis.Redis(port=redis_server.port, password="s3cret-pw").config_set("requirepass", "")
        client.close()


def test_an_error_reply_fails_that_command_only(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        pipe = RedisPipe(redis_server.url)
        bad, good = pipe.send("NOSUCHCOMMAND"), pipe.send("PING")
        with pytest.raises(QuotaUnavailable, match="unknown command"):
            await pipe.call("NOSUCHCOMMAND")
        assert await good == b"PONG"
        assert "unknown command" in str(await bad)
        assert await pipe.call("PING") == b"PONG"
        pipe.close()

    asyncio.run(run())


def test_a_connection_the_server_closes_fails_what_was_in_flight_then_reconnects(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    client = redis_server.client()

    async def run() -> None:
        pipe = RedisPipe(redis_server.url)
        await pipe.call("CLIENT", "SETNAME", "llmgate-pipe")
        # A command still running on the server when its connection is killed.
        blocked = pipe.send("BLPOP", "pipe:never", 5)
        await asyncio.sleep(0.1)
        client.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(QuotaUnavailable, match="connection lost"):
            await blocked
        assert await pipe.call("PING") == b"PONG"  # a fresh connection, no restart
        pipe.close()

    asyncio.run(run())
    client.close()


def test_a_restarted_server_is_used_again_without_a_restart_of_ours() -> None:
    server = RedisServer()
    server.start()
    try:

        async def run() -> None:
            pipe = RedisPipe(server.url, timeout=0.5)
            assert await pipe.call("PING") == b"PONG"
            server.stop()
            with pytest.raises(QuotaUnavailable):
                await pipe.call("PING")
            server.start()
            assert await pipe.call("PING") == b"PONG"
            pipe.close()

        asyncio.run(run())
    finally:
        server.close()


def test_an_unreachable_server_fails_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there

    async def run() -> None:
        pipe = RedisPipe(f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable, match="cannot connect"):
            await pipe.call("PING")
        assert time.monotonic() - started < 1

    asyncio.run(run())


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections, reads everything, never answers: a Redis that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    done.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_fails_every_command_in_flight_after_the_timeout(
    silent_server: int,
) -> None:
    async def run() -> None:
        pipe = RedisPipe(f"redis://127.0.0.1:{silent_server}/0", timeout=0.3)
        started = time.monotonic()
        sent = [pipe.send("PING") for _ in range(5)]
        results = await asyncio.gather(*sent, return_exceptions=True)
        assert all(isinstance(r, QuotaUnavailable) for r in results), results
        assert "no reply within 0.3 s" in str(results[0])
        assert 0.25 < time.monotonic() - started < 2

    asyncio.run(run())
