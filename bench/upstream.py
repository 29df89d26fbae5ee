"""A fast fake OpenAI upstream for the benchmark: raw HTTP/1.1 on asyncio, keep-alive, no TLS.

    python bench/upstream.py [--port 0] [--events 30] [--interval-ms 5]

It prints `LISTENING <port>` on stdout once it accepts connections, then serves until
killed. Every POST is answered at once:

* a buffered request gets a small `chat.completion` JSON reply with usage;
* a request whose JSON body has `"stream": true` gets an SSE reply of `--events`
  `chat.completion.chunk` events, `--interval-ms` apart, then a usage chunk (when
  `stream_options.include_usage` is true) and `data: [DONE]`. Each chunk carries
  `"x_sent"`: `time.time()` just before it was written, so a client can measure the
  delay the path added to every event. The headers `x-bench-events` and
  `x-bench-interval-ms` override the two settings for one request.

A POST to a path ending in `/v1/messages` is answered in Anthropic's Messages format
instead (the translation cases route Chat callers to it): a buffered `message` with
usage, or an SSE stream of `message_start`, `content_block_start`, `--events`
`content_block_delta` events `--interval-ms` apart, `content_block_stop`,
`message_delta` (stop reason and usage) and `message_stop`, each as `event:` and
`data:` lines as Anthropic writes them.

With the header `x-bench-stamp: text`, either kind of stream puts the send time into
each content delta's text as well (`tok3@1764470000.123456 `): a field such as
`x_sent` does not survive translation into another protocol, the text does.

A streamed request with the header `x-bench-runaway-chunks: N` gets a hostile reply
instead: the SSE head, then N chunks of 64 KB of one data line that never ends (no
line break, no blank line), as fast as the reader takes them, then the end of the
body. It is what an upstream that never finishes an event looks like to the proxy.

The request body is parsed only far enough to find `stream`; large bodies (a 1 MB
prompt) are read without re-scanning what has already arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

_JSON_REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "pong"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    },
    separators=(",", ":"),
).encode()

# Anthropic's answer to the same question, as https://api.anthropic.com/v1/messages
# writes it (its usage counts the prompt without the cached part, here none).
ANTHROPIC_MODEL = "claude-haiku-4-5"
_ANTHROPIC_ID = "msg_01BenchXk4qQZ5sF3vYb8TnRd"
_ANTHROPIC_USAGE = {
    "input_tokens": 9,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 1,
}
_ANTHROPIC_REPLY = json.dumps(
    {
        "id": _ANTHROPIC_ID,
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": "pong"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _ANTHROPIC_USAGE,
    },
    separators=(",", ":"),
).encode()


def _json_head(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n"
    )


_JSON_HEAD = _json_head(_JSON_REPLY)
_ANTHROPIC_HEAD = _json_head(_ANTHROPIC_REPLY)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found"
)


# The runaway reply's pieces: one HTTP chunk of 64 KB each, the first starting the line.
RUNAWAY_CHUNK = 64 * 1024
_RUNAWAY_FIRST = b"%x\r\ndata: %s\r\n" % (RUNAWAY_CHUNK, b"a" * (RUNAWAY_CHUNK - 6))
_RUNAWAY_REST = b"%x\r\n%s\r\n" % (RUNAWAY_CHUNK, b"a" * RUNAWAY_CHUNK)


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk of the chunked transfer coding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse_chunk(payload: dict) -> bytes:
    payload["x_sent"] = time.time()
    return _chunk(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


def _anthropic_event(payload: dict) -> bytes:
    """One Anthropic SSE event (`event:` then `data:`) as one HTTP chunk."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    return _chunk(b"event: " + payload["type"].encode() + b"\ndata: " + data + b"\n\n")


_ANTHROPIC_OPENING = _anthropic_event(
    {
        "type": "message_start",
        "message": {
            "id": _ANTHROPIC_ID,
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _ANTHROPIC_USAGE,
        },
    }
) + _anthropic_event(
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
)


def _anthropic_closing(events: int) -> bytes:
    return (
        _anthropic_event({"type": "content_block_stop", "index": 0})
        + _anthropic_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": events},
            }
        )
        + _anthropic_event({"type": "message_stop"})
    )


def _token(index: int, stamp: bool) -> str:
    """A content delta's text: with `stamp`, the send time goes into it (see above)."""
    return f"tok{index}@{time.time():.6f} " if stamp else f"tok{index} "


def _delta(index: int, content: str, finish: str | None) -> dict:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        "x_seq": index,
    }


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, events: int, interval: float) -> None:
        self.events = events
        self.interval = interval
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.scanned = 0  # how far the header terminator search has looked
        # (request line, headers, body start, request end) once a head is parsed
        self.head: tuple[str, dict[str, str], int, int] | None = None
        self.streaming = False  # a stream is being written: hold further requests
        # Cleared while the transport's buffer is full: a runaway reply waits on it, so
        # its 125 MB go out at the reader's pace rather than into this process's memory.
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.streaming:
            self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writable.set()  # a writer waiting for room finds the connection gone

    def _serve(self) -> None:
        while self.transport is not None and not self.streaming:
            if self.head is None:
                end = self.buf.find(b"\r\n\r\n", max(self.scanned - 3, 0))
                if end < 0:
                    self.scanned = len(self.buf)
                    return
                request_line, *header_lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                headers = {}
                for line in header_lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                total = end + 4 + int(headers.get("content-length", "0"))
                self.head = (request_line, headers, end + 4, total)
            request_line, headers, body_start, total = self.head
            if len(self.buf) < total:
                return  # the head is complete; wait for the rest of the body
            body = bytes(self.buf[body_start:total])
            del self.buf[:total]
            self.head = None
            self.scanned = 0
            self._answer(request_line, headers, body)

    def _answer(self, request_line: str, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        method, _, rest = request_line.partition(" ")
        if method != "POST":
            self.transport.write(_NOT_FOUND)
            return
        # Origin-form from llmgate's dispatcher, absolute-form from a bare proxy.
        anthropic = rest.partition(" ")[0].partition("?")[0].endswith("/v1/messages")
        try:
            request = json.loads(body) if b'"stream"' in body else {}
        except ValueError:
            request = {}
        if not isinstance(request, dict) or not request.get("stream"):
            if anthropic:
                self.transport.write(_ANTHROPIC_HEAD + _ANTHROPIC_REPLY)
            else:
                self.transport.write(_JSON_HEAD + _JSON_REPLY)
            return
        if "x-bench-runaway-chunks" in headers:
            self.streaming = True
            chunks = int(headers["x-bench-runaway-chunks"])
            asyncio.get_running_loop().create_task(self._runaway(chunks))
            return
        events = int(headers.get("x-bench-events", self.events))
        interval = float(headers.get("x-bench-interval-ms", self.interval * 1000)) / 1000
        stamp = headers.get("x-bench-stamp") == "text"
        self.streaming = True
        loop = asyncio.get_running_loop()
        if anthropic:
            loop.create_task(self._anthropic_stream(events, interval, stamp))
            return
        options = request.get("stream_options") or {}
        usage = bool(isinstance(options, dict) and options.get("include_usage"))
        loop.create_task(self._stream(events, interval, usage, stamp))

    async def _stream(self, events: int, interval: float, usage: bool, stamp: bool) -> None:
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(events):
                if self.transport is None:
                    return
                finish = "stop" if i == events - 1 else None
                data = _sse_chunk(_delta(i, _token(i, stamp), finish))
                self.transport.write(_SSE_HEAD + data if i == 0 else data)
                # Pace against the start time so sleep overshoot does not accumulate.
                delay = start + (i + 1) * interval - loop.time()
                await asyncio.sleep(max(delay, 0))
            if self.transport is None:
                return
            tail = b""
            if usage:
                last = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": "gpt-4o-mini",
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 9,
                        "completion_tokens": events,
                        "total_tokens": 9 + events,
                    },
                    "x_seq": events,
                }
                tail += _sse_chunk(last)
            tail += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
            self.transport.write(tail)
        finally:
            self.streaming = False
        if self.buf:
            self._serve()

    async def _anthropic_stream(self, events: int, interval: float, stamp: bool) -> None:
        """Anthropic's event sequence, paced like `_stream`: the opening events go out
        with the first delta, the closing ones together after the last."""
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(events):
                if self.transport is None:
                    return
                delta: dict = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": _token(i, stamp)},
                }
                if not stamp:
                    delta["x_sent"] = time.time()
                data = _anthropic_event(delta)
                self.transport.write(_SSE_HEAD + _ANTHROPIC_OPENING + data if i == 0 else data)
                delay = start + (i + 1) * interval - loop.time()
                await asyncio.sleep(max(delay, 0))
            if self.transport is None:
                return
            self.transport.write(_anthropic_closing(events) + b"0\r\n\r\n")
        finally:
            self.streaming = False
        if self.buf:
            self._serve()

    async def _runaway(self, chunks: int) -> None:
        try:
            for i in range(chunks):
                await self.writable.wait()
                if self.transport is None:
                    return
                self.transport.write(_SSE_HEAD + _RUNAWAY_FIRST if i == 0 else _RUNAWAY_REST)
            await self.writable.wait()
            if self.transport is None:
                return
            self.transport.write(b"0\r\n\r\n")
        finally:
            self.streaming = False
        if self.buf:
            self._serve()


async def serve(host: str, port: int, events: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(events, interval), host, port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--events", type=int, default=30, help="content chunks per SSE reply")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="gap between SSE events")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.events, args.interval_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
