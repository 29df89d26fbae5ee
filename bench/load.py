"""Clients that put load on a proxy: wrk, an asyncio fallback, and an SSE stream reader.

All of them speak to the proxy as an HTTP proxy: absolute-form requests to
`http://127.0.0.1:UPSTREAM/v1/chat/completions` over keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench.common import API_KEY, REQUEST_ID_HEADER, BenchError, median, percentile

# --- raw HTTP/1.1 through the proxy ----------------------------------------------


def proxy_request(upstream_port: int, body: str, extra_headers: str = "") -> bytes:
    data = body.encode()
    return (
        f"POST http://127.0.0.1:{upstream_port}/v1/chat/completions HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{upstream_port}\r\n"
        "Content-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        f"{extra_headers}"
        f"Content-Length: {len(data)}\r\n"
        "\r\n"
    ).encode() + data


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body_chunks(
    reader: asyncio.StreamReader, headers: dict[bytes, bytes]
) -> AsyncIterator[tuple[float, bytes]]:
    """Yield (receive time, bytes) for each piece of a response body as it arrives."""
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # the last chunk's (empty) trailer section
                return
            data = await reader.readexactly(size + 2)
            yield time.time(), data[:-2]
    else:
        length = int(headers.get(b"content-length", b"0"))
        if length:
            data = await reader.readexactly(length)
            yield time.time(), data


async def one_call(port: int, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        body = b"".join([piece async for _, piece in read_body_chunks(reader, headers)])
        return status, headers, body
    finally:
        writer.close()


# --- load generation: wrk, or an asyncio fallback ---------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.path = "http://127.0.0.1:{upstream}/v1/chat/completions"
wrk.body = [{eq}[{body}]{eq}]
wrk.headers["Host"] = "127.0.0.1:{upstream}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {{\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d," ..
    "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d," ..
    "\\"p99_us\\":%d,\\"mean_us\\":%.1f,\\"max_us\\":%d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def wrk_script(upstream_port: int, body: str) -> str:
    """The Lua script for one request body, embedded as a Lua long string.

    The long-bracket level is the lowest whose closing bracket does not occur in the
    body, so any body (a 1 MB prompt included) survives verbatim.
    """
    level = 0
    while f"]{'=' * level}]" in body:
        level += 1
    return WRK_SCRIPT.format(upstream=upstream_port, body=body, key=API_KEY, eq="=" * level)


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("wrk is missing: installing it with apt-get ...", file=sys.stderr)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["apt-get", "update"], check=True, env=env, timeout=300, **quiet)
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"], check=True, env=env, timeout=300, **quiet
        )
    return shutil.which("wrk")


def load_summary(
    requests: int, seconds: float, errors: int, latencies_us: dict[str, float]
) -> dict[str, Any]:
    return {
        "requests": requests,
        "seconds": seconds,
        "rps": requests / seconds if seconds else 0.0,
        "errors": errors,
        **latencies_us,
    }


def run_wrk(wrk: str, script: Path, port: int, connections: int, seconds: float) -> dict[str, Any]:
    args = [
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
        "-s", str(script), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    raw = json.loads(line[6:])
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    if raw["status"]:
        raise BenchError(f"wrk saw {raw['status']} non-2xx replies out of {raw['requests']}")
    return load_summary(
        raw["requests"],
        raw["duration_us"] / 1e6,
        errors,
        {k: raw[k] for k in ("p50_us", "p90_us", "p99_us", "mean_us")},
    )


async def python_load(
    port: int, request: bytes, connections: int, seconds: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    start = loop.time()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
                async for _ in read_body_chunks(reader, headers):
                    pass
                if status >= 400:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1e6)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = loop.time() - start
    return load_summary(
        len(latencies),
        elapsed,
        errors,
        {
            "p50_us": percentile(latencies, 50),
            "p90_us": percentile(latencies, 90),
            "p99_us": percentile(latencies, 99),
            "mean_us": statistics.fmean(latencies) if latencies else float("nan"),
        },
    )


# --- SSE streaming client -----------------------------------------------------------


def text_stamp(chunk: dict[str, Any]) -> float | None:
    """The send time the upstream wrote into a Chat chunk's text (`x-bench-stamp: text`);
    None for a chunk without one (the role chunk, the finish and usage chunks)."""
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content") or ""
        if "@" in content:
            return float(content.partition("@")[2].split()[0])
    return None


async def _stream_once(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: bytes,
    stamp: Callable[[dict[str, Any]], float | None] | None = None,
) -> dict[str, Any]:
    sent = time.time()
    writer.write(request)
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if status != 200:
        body = b"".join([p async for _, p in read_body_chunks(reader, headers)])
        raise BenchError(f"stream request got HTTP {status}: {body[:300]!r}")
    buf = b""
    delays: list[float] = []
    first: float | None = None
    usage_seen = done_seen = False
    async for received, piece in read_body_chunks(reader, headers):
        buf += piece
        *events, buf = buf.split(b"\n\n")
        for event in events:
            data = event.partition(b"data: ")[2]
            if not data:
                continue
            if first is None:
                first = received
            if data == b"[DONE]":
                done_seen = True
                continue
            chunk = json.loads(data)
            # The upstream stamped x_sent just before writing: receive - send is the
            # delay the whole path (mostly the proxy) added to this event. With `stamp`,
            # the stamp is read from where it says, and events without one are not timed.
            if stamp is None:
                delays.append(received - chunk["x_sent"])
            elif (sent_at := stamp(chunk)) is not None:
                delays.append(received - sent_at)
            usage_seen = usage_seen or bool(chunk.get("usage"))
    if first is None or not usage_seen or not done_seen:
        raise BenchError("stream ended without events, the usage chunk or [DONE]")
    return {"ttfe": first - sent, "delays": delays, "tagged": REQUEST_ID_HEADER in headers}


async def streams(
    port: int,
    request: bytes,
    count: int,
    stamp: Callable[[dict[str, Any]], float | None] | None = None,
) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # warm-up: opens the upstream connection
        await _stream_once(reader, writer, request, stamp)
        results = [await _stream_once(reader, writer, request, stamp) for _ in range(count)]
    finally:
        writer.close()
    delays = [d for r in results for d in r["delays"]]
    ttfes = [r["ttfe"] for r in results]
    return {
        "streams": count,
        "tagged": sum(r["tagged"] for r in results),
        "events": len(delays),
        "delay_p50_ms": median(delays) * 1000,
        "delay_p99_ms": percentile(delays, 99) * 1000,
        "ttfe_p50_ms": median(ttfes) * 1000,
    }
