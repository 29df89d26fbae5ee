"""The cases: each measures some variants through `Bench` and returns a `CaseResult`.

Adding a case. Write `def case_x(bench: Bench) -> CaseResult` here and append
`Case("x", case_x)` to `CASES` in bench/run.py (`full_only=True` keeps it out of
`--quick`). When the case compares two llmgate set-ups rather than bare against
llmgate, add the new set-up to `harness.VARIANTS` (extra policy files, reply headers
that prove the feature ran) and let `variant_overhead` do the measuring: it gives
latency at one connection and throughput at `--connections`, and BENCH.md gets a
table for that pair of variants by itself.

The next planned case, a safety scan of a 1 MB prompt, is meant to be exactly that
(not implemented yet):

    SAFETY_YAML = "..."  # llmgate's safety policy, scanning requests
    # harness.VARIANTS:  Variant("llmgate+safety", "llmgate + safety scan", addon=True,
    #                            policy_files=(("safety.yaml", SAFETY_YAML),))
    BIG_PROMPT = chat_body("lorem ipsum ... " * n)  # about 1 MB, via bench.common

    def case_safety(bench: Bench) -> CaseResult:
        return variant_overhead(
            bench, "safety", "Safety scan of a 1 MB prompt",
            ("llmgate", "llmgate+safety"), body=BIG_PROMPT, latency_target_ms=...,
        )

Nothing else needs to change: `bench.load(..., body=...)` sends any body (wrk embeds
it in its Lua script, the asyncio client sends it as is), and bench/upstream.py reads
large bodies without re-scanning them. With 1 MB bodies the proxies' warm-up and check
still use the small chat body, so only the measured calls carry the big one.
"""

from __future__ import annotations

from typing import Any

import yaml

from bench.common import CHAT_BODY, median
from bench.harness import QUOTA_YAML
from bench.measure import Bench, CaseResult, Row

Reps = dict[str, list[dict[str, Any]]]


def per_rep(reps: Reps, key: str) -> dict[str, float]:
    """Per variant, the median over repetitions of one figure."""
    return {v: median([r[key] for r in runs]) for v, runs in reps.items()}


def spread(reps: Reps, key: str, fmt: str) -> str:
    """Every repetition's figure, per variant, for the Details list."""
    return "; ".join(
        f"{v}: " + ", ".join(fmt.format(r[key]) for r in runs) for v, runs in reps.items()
    )


def case_throughput(bench: Bench) -> CaseResult:
    n = bench.s.connections
    reps = bench.interleaved(lambda v: bench.load(bench.proxy(v), n, bench.s.throughput_s))
    rps = per_rep(reps, "rps")
    cpu = per_rep(reps, "cpu_us_per_request")
    p50 = per_rep(reps, "p50_us")
    ratio = rps["llmgate"] / rps["bare"]
    return CaseResult(
        "throughput",
        f"Throughput, buffered chat completion, {n} connections",
        [
            Row(
                "requests/s",
                f"{rps['bare']:.0f}",
                f"{rps['llmgate']:.0f}",
                f"ratio {ratio:.3f}",
                ">= 0.85",
                ratio >= 0.85,
            ),
            Row(
                "proxy CPU per request",
                f"{cpu['bare']:.0f} µs",
                f"{cpu['llmgate']:.0f} µs",
                f"{cpu['llmgate'] - cpu['bare']:+.0f} µs "
                f"(bare/llmgate {cpu['bare'] / cpu['llmgate']:.3f})",
            ),
            Row(
                "median latency under load",
                f"{p50['bare'] / 1000:.2f} ms",
                f"{p50['llmgate'] / 1000:.2f} ms",
                f"{(p50['llmgate'] - p50['bare']) / 1000:+.2f} ms",
            ),
        ],
        reps,
        [
            f"requests/s per repetition: {spread(reps, 'rps', '{:.0f}')}",
            f"proxy CPU µs per request per repetition: "
            f"{spread(reps, 'cpu_us_per_request', '{:.0f}')}",
        ],
    )


def case_latency(bench: Bench) -> CaseResult:
    reps = bench.interleaved(lambda v: bench.load(bench.proxy(v), 1, bench.s.latency_s))
    p50 = per_rep(reps, "p50_us")
    p99 = per_rep(reps, "p99_us")
    added = (p50["llmgate"] - p50["bare"]) / 1000
    return CaseResult(
        "latency",
        "Latency, buffered chat completion, 1 connection",
        [
            Row(
                "median",
                f"{p50['bare'] / 1000:.3f} ms",
                f"{p50['llmgate'] / 1000:.3f} ms",
                f"added {added:+.3f} ms",
                "<= 0.5 ms added",
                added <= 0.5,
            ),
            Row(
                "p99",
                f"{p99['bare'] / 1000:.3f} ms",
                f"{p99['llmgate'] / 1000:.3f} ms",
                f"added {(p99['llmgate'] - p99['bare']) / 1000:+.3f} ms",
            ),
        ],
        reps,
        [
            f"median µs per repetition: {spread(reps, 'p50_us', '{:.0f}')}",
            f"p99 µs per repetition: {spread(reps, 'p99_us', '{:.0f}')}",
        ],
    )


# Bare mitmproxy buffers every body unless told to stream, so its streaming proxy gets
# this option; llmgate streams SSE replies itself and runs without it (the option would
# also stream request bodies past llmgate's request hook, see the note in the case).
BARE_STREAM_OPTIONS = ("stream_large_bodies=1",)


def stream_options(variant: str) -> tuple[str, ...]:
    return BARE_STREAM_OPTIONS if variant == "bare" else ()


def case_streaming(bench: Bench) -> CaseResult:
    count = bench.s.streams
    reps = bench.interleaved(lambda v: bench.streams(bench.proxy(v, stream_options(v)), count))
    delay = per_rep(reps, "delay_p50_ms")
    delay99 = per_rep(reps, "delay_p99_ms")
    ttfe = per_rep(reps, "ttfe_p50_ms")
    added = delay["llmgate"] - delay["bare"]
    return CaseResult(
        "streaming",
        f"Streaming: SSE, {bench.s.events} chunks {bench.s.interval_ms:g} ms apart + usage chunk, "
        f"{count} streams",
        [
            Row(
                "median delay per event (receive - send)",
                f"{delay['bare']:.3f} ms",
                f"{delay['llmgate']:.3f} ms",
                f"added {added:+.3f} ms",
                "<= 1 ms added",
                added <= 1.0,
            ),
            Row(
                "p99 delay per event",
                f"{delay99['bare']:.3f} ms",
                f"{delay99['llmgate']:.3f} ms",
                f"added {delay99['llmgate'] - delay99['bare']:+.3f} ms",
            ),
            Row(
                "median time to first event",
                f"{ttfe['bare']:.3f} ms",
                f"{ttfe['llmgate']:.3f} ms",
                f"added {ttfe['llmgate'] - ttfe['bare']:+.3f} ms",
            ),
        ],
        reps,
        [
            "median delay per event per repetition (ms): " + spread(reps, "delay_p50_ms", "{:.3f}"),
            f"bare mitmdump runs with `--set {BARE_STREAM_OPTIONS[0]}` here (without it, it "
            "buffers the whole SSE reply and delivers every event at the end); llmgate runs "
            "with its usual options: it streams SSE replies through its own tap",
        ],
    )


def variant_overhead(
    bench: Bench,
    name: str,
    title: str,
    variants: tuple[str, str],
    body: str = CHAT_BODY,
    latency_target_ms: float | None = None,
    notes: tuple[str, ...] = (),
) -> CaseResult:
    """What the second variant adds to the first: latency at one connection, then
    throughput at `--connections`, each pass interleaved on its own (as the bare/llmgate
    cases are) so a backlog left by the 16-connection load never lands in a latency figure.
    """
    base, subject = variants
    n = bench.s.connections
    lat = bench.interleaved(
        lambda v: bench.load(bench.proxy(v), 1, bench.s.latency_s, body=body), variants
    )
    thr = bench.interleaved(
        lambda v: bench.load(bench.proxy(v), n, bench.s.throughput_s, body=body), variants
    )
    p50, p99 = per_rep(lat, "p50_us"), per_rep(lat, "p99_us")
    rps, cpu = per_rep(thr, "rps"), per_rep(thr, "cpu_us_per_request")
    added = (p50[subject] - p50[base]) / 1000
    ratio = rps[subject] / rps[base]
    rows = [
        Row(
            "median latency, 1 connection",
            f"{p50[base] / 1000:.3f} ms",
            f"{p50[subject] / 1000:.3f} ms",
            f"added {added:+.3f} ms",
            f"<= {latency_target_ms:g} ms added" if latency_target_ms is not None else "",
            added <= latency_target_ms if latency_target_ms is not None else None,
        ),
        Row(
            "p99 latency, 1 connection",
            f"{p99[base] / 1000:.3f} ms",
            f"{p99[subject] / 1000:.3f} ms",
            f"added {(p99[subject] - p99[base]) / 1000:+.3f} ms",
        ),
        Row(
            f"requests/s, {n} connections",
            f"{rps[base]:.0f}",
            f"{rps[subject]:.0f}",
            f"ratio {ratio:.3f}",
        ),
        Row(
            f"proxy CPU per request, {n} connections",
            f"{cpu[base]:.0f} µs",
            f"{cpu[subject]:.0f} µs",
            f"{cpu[subject] - cpu[base]:+.0f} µs",
        ),
    ]
    reps = {
        v: [{"latency": a, "throughput": b} for a, b in zip(lat[v], thr[v], strict=True)]
        for v in variants
    }
    return CaseResult(
        name,
        title,
        rows,
        reps,
        [
            f"median µs at 1 connection per repetition: {spread(lat, 'p50_us', '{:.0f}')}",
            f"requests/s at {n} connections per repetition: {spread(thr, 'rps', '{:.0f}')}",
            f"proxy CPU µs per request at {n} connections per repetition: "
            f"{spread(thr, 'cpu_us_per_request', '{:.0f}')}",
            *notes,
        ],
        variants,
    )


QUOTA_TARGET_MS = 0.2


def case_quota(bench: Bench) -> CaseResult:
    windows = len(yaml.safe_load(QUOTA_YAML)["policies"][0]["quota_windows"])
    return variant_overhead(
        bench,
        "quota",
        f"Quota check, {windows} windows (per-user requests/minute; tokens and cost/day), "
        "buffered chat completion",
        ("llmgate", "llmgate+quota"),
        latency_target_ms=QUOTA_TARGET_MS,
        notes=(
            "llmgate + quota is the llmgate variant plus one policy file: for every user a "
            "60 s window (max_requests 1e8) and an 86400 s window (max_input_tokens and "
            "max_output_tokens 1e10, max_cost_usd 1e6), limits no run reaches; every call "
            "reserves in both windows before it goes upstream and settles after, and its "
            "reply carries x-llmgate-ratelimit-* headers from both (checked before measuring); "
            "both llmgate variants have the same priced route",
        ),
    )
