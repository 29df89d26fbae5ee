"""llmgate benchmark: bare `mitmdump` against `mitmdump -s scripts/llmgate_addon.py`,
llmgate without quotas against llmgate with two quota windows, and llmgate with its
safety scan off against llmgate as it ships (scan on) on a 1 MB prompt of code, and
llmgate's calls while a hostile upstream pours one never-ending 125 MiB SSE event
through it against the same calls on the idle proxy (case `hostile`), and an OpenAI
Chat caller whose route goes to an Anthropic-speaking upstream (translated) against the
same caller on an openai route, buffered (`translation`) and streamed
(`translation-stream`), and the fleet cases: one quota window on Redis against no
quota at one connection, SQLite beside it (`quota_redis`), and 1, 2 and 3 llmgate
processes sharing one Redis and one PostgreSQL ledger against as many bare mitmdumps
(`fleet`), and mitmproxy's own floor for a call answered from the request hook
(`floor`: bare, `bench/hook_reply.py`, llmgate), in one run.

    ./run.sh bench                 full run (about 6 minutes), rewrites the results in BENCH.md
    ./run.sh bench --quick         short run; prints and saves raw JSON, BENCH.md untouched
    ./run.sh bench --quick --write short run that still rewrites BENCH.md
    ./run.sh bench --cases throughput,latency --reps 5
    ./run.sh bench --quick --cases hostile
    ./run.sh bench --no-write --cases translation,translation-stream
    ./run.sh bench --no-write --cases quota_redis,fleet
    ./run.sh bench --profile       py-spy flame graphs and llmgate's top-20 self time
                                   (bench/hotspots.py; BENCH.md untouched)

Set-up. `bench/upstream.py` is a fake OpenAI upstream (plain HTTP/1.1 on 127.0.0.1,
keep-alive, answers at once) run as a subprocess; on `/v1/messages` it answers in
Anthropic's Messages format instead (buffered and SSE), for the translation cases. Each
variant is a real mitmdump subprocess started with the same arguments (`-q`,
`connection_strategy=lazy`, a temporary confdir); llmgate's also get `-s
scripts/llmgate_addon.py`, a temporary policies directory with one route `{id: bench,
model_pattern: "*", provider: openai, endpoint: http://127.0.0.1:UPSTREAM, pricing:
{input: 1, output: 2}}` plus the variant's own policy files, and a temporary audit
database. Clients speak to the proxy as an HTTP proxy: absolute-form requests to
`http://127.0.0.1:UPSTREAM/v1/chat/completions`. The translation cases' variant
(`llmgate-translate`) has a route table of two routes to the same upstream: `claude-*`
with `provider: anthropic` first, then the usual `*` one; the caller is the same Chat
request with a `claude-*` or a `gpt-*` model.

Load comes from `wrk` (installed with apt-get when missing and running as root), with a
Lua script that sets the method, body, headers and the absolute URL as `wrk.path`; its
`done()` hook prints the exact counts and latency percentiles. Without wrk an asyncio
raw-socket client does the same job (`--client python` forces it).

The fleet cases start their own redis-server and PostgreSQL cluster (bench/servers.py:
temporary directories, free ports on 127.0.0.1, PostgreSQL as `nobody` when run as
root) and stop them at the end; redis-server and PostgreSQL's initdb/pg_ctl must be
installed (./run.sh installs them for the tests). `fleet` runs 3 processes of each
variant and loads 1, 2 or 3 of them at once, the connections split between them, one
wrk per process.

Noise. The machine has 2 cores and is shared, so each case runs its variants
interleaved (bare, llmgate, then llmgate, bare, ...) `--reps` times and reports the
median of the per-repetition figures; every repetition is kept in the raw JSON under
bench/results/. The CPU time the proxy process spent per request is reported too: it
is far less sensitive to other load on the machine than requests per second.

Modules (each one concern):

    bench/run.py      this command line and the list of cases
    bench/cases.py    the case functions; how to add one
    bench/measure.py  Bench: one run's processes and the measurements cases ask for
    bench/harness.py  the fake upstream, the variants and their mitmdump processes
    bench/load.py     wrk, the asyncio load client and the SSE stream reader
    bench/report.py   console summary, raw JSON, BENCH.md's results section
    bench/common.py   paths, request bodies, settings, statistics
    bench/upstream.py the fake upstream itself (its own process)
    bench/servers.py  redis-server and PostgreSQL for the fleet cases

Adding a case: write `def case_x(bench: Bench) -> CaseResult` in bench/cases.py and
append a `Case` to `CASES` below; see the docstring of bench/cases.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `./run.sh bench` runs this file as a script, which puts bench/ itself on sys.path
# rather than the project root; the root is needed so that `bench.*` imports resolve
# the same way whether this runs as a script or as `python -m bench.run`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from bench import cases, hotspots, memory, report  # noqa: E402
from bench.common import BENCH_MD, MITMDUMP, BenchError, Settings  # noqa: E402
from bench.harness import machine_busy_seconds, own_cpu_seconds  # noqa: E402
from bench.measure import Bench, Case, CaseResult  # noqa: E402

CASES: list[Case] = [
    Case("throughput", cases.case_throughput),
    Case("latency", cases.case_latency),
    Case("floor", cases.case_floor),
    Case("streaming", cases.case_streaming),
    Case("quota", cases.case_quota),
    Case("every_feature", cases.case_every_feature),
    Case("features", cases.case_features),
    Case("hook_table", cases.case_hook_table),
    Case("audit", cases.case_audit),
    Case("safety", cases.case_safety),
    Case("hostile", cases.case_hostile),
    Case("translation", cases.case_translation),
    Case("translation-stream", cases.case_translation_stream),
    Case("quota_redis", cases.case_quota_redis),
    Case("fleet", cases.case_fleet),
    Case("memory", memory.case_memory, full_only=True),
]


def _terminate(signum: int, _frame: object) -> None:
    # SIGTERM would otherwise end Python without running `finally`, leaving every
    # mitmdump and the upstream this run started behind; exiting runs bench.stop().
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark bare mitmdump against llmgate, and llmgate features."
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about 45 s)")
    parser.add_argument("--write", action="store_true", help="rewrite BENCH.md after --quick")
    parser.add_argument("--no-write", action="store_true", help="leave BENCH.md alone")
    parser.add_argument("--reps", type=int, help="repetitions per variant and case")
    parser.add_argument("--duration", type=float, help="seconds per load measurement")
    parser.add_argument(
        "--cases", help="comma-separated subset of: " + ", ".join(c.name for c in CASES)
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile llmgate with py-spy under the throughput load instead (bench/hotspots.py)",
    )
    parser.add_argument(
        "--wait-load",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --profile: wait up to this long for the load average to fall below 1",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_args(args)
    if args.profile:
        if not MITMDUMP.exists():
            print(f"mitmdump not found at {MITMDUMP}: run ./run.sh bench", file=sys.stderr)
            return 2
        signal.signal(signal.SIGTERM, _terminate)
        return hotspots.run(settings, args.duration, args.wait_load, args.keep)

    selected = CASES
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
        selected = [c for c in CASES if c.name in wanted]
    selected = [c for c in selected if not (settings.quick and c.full_only)]

    if not MITMDUMP.exists():
        print(f"mitmdump not found at {MITMDUMP}: run ./run.sh bench", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-bench-"))
    bench = Bench(settings, workdir)
    results: list[CaseResult] = []
    started = time.monotonic()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    audits: dict[str, Any] = {}
    try:
        bench.start()
        info = report.machine_info(bench)
        for case in selected:
            print(f"case {case.name} ...", file=sys.stderr)
            results.append(case.run(bench))
            bench.assert_clean()
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        audits = bench.stop()
        if args.keep:
            print(f"temporary files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    elapsed = time.monotonic() - started
    info["seconds"] = round(elapsed, 1)
    # Everything this run started has been waited for, so the rest is other processes' load.
    other = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    info["other_load_pct"] = round(max(other, 0) / (elapsed * (os.cpu_count() or 1)) * 100, 1)

    report.print_summary(results)
    raw = report.save_raw(results, info, settings, audits)
    print(
        f"\nraw figures: {os.path.relpath(raw)}  ({info['seconds']} s; other processes used "
        f"{info['other_load_pct']}% of the machine's CPU meanwhile)"
    )
    write = (args.write or not settings.quick) and not args.no_write
    if write:
        report.write_bench_md(report.render(results, info, settings, audits))
        print(f"results written to {os.path.relpath(BENCH_MD)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
