"""What every part of the benchmark shares: paths, the request bodies, settings, statistics."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "scripts" / "llmgate_addon.py"
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream.py"
# The venv's mitmdump: the benchmark runs under the venv's python (./run.sh bench).
MITMDUMP = Path(sys.executable).parent / "mitmdump"
BENCH_MD = ROOT / "BENCH.md"
RESULTS_DIR = ROOT / "bench" / "results"
REQUEST_ID_HEADER = b"x-llmgate-request-id"
CALL_TIMEOUT = 15.0
API_KEY = "sk-bench-not-a-real-key"
MODEL = "gpt-4o-mini"


def chat_body(prompt: str = "ping", **extra: object) -> str:
    """A compact chat-completion request body with `prompt` as the user message.

    Cases that need another request (a long prompt, a streamed call) build it here so
    every body has the same model and shape apart from what the case varies.
    """
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 16,
    }
    body.update(extra)
    return json.dumps(body, separators=(",", ":"))


CHAT_BODY = chat_body()


def stream_body(model: str = MODEL) -> str:
    """The streamed chat-completion request (usage chunk asked for)."""
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "count to thirty"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        separators=(",", ":"),
    )


STREAM_BODY = stream_body()


# The safety case's prompt: this many bytes of real source code.
CODE_PROMPT_BYTES = 1 << 20


@dataclass(frozen=True)
class CodePrompt:
    text: str  # at most CODE_PROMPT_BYTES of UTF-8, ending at a line end
    files: int  # source files concatenated (the last one possibly cut at a line)
    skipped: tuple[str, ...]  # files left out because the scanner finds something in them


def code_prompt(limit: int = CODE_PROMPT_BYTES) -> CodePrompt:
    """About 1 MiB of Python: mitmproxy's own modules from the venv, in path order.

    Each file is preceded by a `# ---- mitmproxy/... ----` line. A file in which the
    default scanner finds anything is left out whole: mitmproxy ships a test private
    key, which llmgate's default policy blocks (the calls would be refused before they
    went upstream), and authors' e-mail addresses, which would add findings rows to
    one variant's work. The prompt is therefore code without a single finding, and the
    case measures the scan itself. Deterministic for one installed mitmproxy.
    """
    import mitmproxy  # imported here: only this case needs it in the bench process

    from addon.safety.scanner import Scanner

    scanner = Scanner()
    root = Path(mitmproxy.__file__).resolve().parent
    parts: list[str] = []
    skipped: list[str] = []
    size = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        if scanner.scan(text):
            skipped.append(rel)
            continue
        part = f"# ---- {rel} ----\n{text}"
        if not part.endswith("\n"):
            part += "\n"
        room = limit - size
        data = part.encode()
        if len(data) > room:  # the last file: cut at the last whole line that fits
            cut = data[:room].decode("utf-8", "ignore")
            parts.append(cut[: cut.rfind("\n") + 1])
            break
        parts.append(part)
        size += len(data)
    return CodePrompt("".join(parts), len(parts), tuple(skipped))


class BenchError(RuntimeError):
    """The benchmark cannot produce a trustworthy figure; the message says why."""


@dataclass
class Settings:
    quick: bool = False
    reps: int = 3
    warmup_s: float = 2.0
    throughput_s: float = 5.0
    latency_s: float = 5.0
    connections: int = 16
    streams: int = 20
    events: int = 30
    interval_ms: float = 5.0
    client: str = "auto"  # auto | wrk | python

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        s = cls(quick=args.quick, client=args.client)
        if args.quick:
            s.reps, s.warmup_s, s.throughput_s, s.latency_s, s.streams = 1, 1.0, 2.0, 2.0, 5
        if args.reps:
            s.reps = args.reps
        if args.duration:
            s.throughput_s = s.latency_s = args.duration
        return s


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
