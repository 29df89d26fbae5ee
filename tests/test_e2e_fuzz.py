"""Property: through a running llmgate, every generated call is forwarded with a row or
refused in the caller's format with a row, and nothing reaches the upstream unrecorded.

Hypothesis generates 10,000 request bodies per protocol before anything is sent
(deterministic: a fixed seed per protocol, no example database, generation only;
one spawned process per core, see `generate_all`), mixing valid-shaped calls,
wrong types, random JSON, random bytes, byte-order marks and UTF-16/32, duplicate
keys, deep nesting, lone surrogates, huge numbers and unicode. They are then sent
over 16 keep-alive connections (8 to api.openai.com, 4 each to the Anthropic and
Gemini hosts) by a small raw HTTP/1.1 client, and each answer must be exactly one of:

- a 2xx the emulator produced, with a `completed` row under its request id;
- an error llmgate produced, in the caller's wire format, with a closed row whose
  HTTP status and reason match.

An error the *emulator* produced (`server: llmgate-emulator/1`) means llmgate let a
call through that the upstream's own validation refused: it must still have a row,
and each one is listed in the test's output, as a finding. Then: one request id per
answer, as many rows as calls, as many upstream hits as 2xx answers plus upstream
errors, and the ledger writer still writes (one more call gets its row).

`LLMGATE_FUZZ_EXAMPLES=N` runs N per protocol instead, for a quick local check.
Run with `-s` to see the timings and the outcome table.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import Emulator
from tests.hostile import (
    CREDENTIAL_HEADER,
    EMULATOR_SERVER,
    ENDPOINTS,
    REQUEST_ID,
    WIRE,
    RawClient,
    Sent,
    error_kind,
    error_problem,
    nested_array,
    nested_object,
)
from tests.proxy import ROOT, Proxy

PER_PROTOCOL = int(os.environ.get("LLMGATE_FUZZ_EXAMPLES", "10000"))
CONNECTIONS = {"api.openai.com": 8, "api.anthropic.com": 4,
               "generativelanguage.googleapis.com": 4}  # fmt: skip
PROTOCOLS = list(ENDPOINTS)
POLICY = """\
policies:
  - name: everyone
    applies_to: {users: ["*"]}
    denied_models: ["gpt-denied*", "claude-denied*", "gemini-denied*"]
"""

# Models the route table serves, routes that fail in llmgate (no secret) or pass the
# caller's key through, denied ones, unknown ones, and another protocol's model.
SERVED = {
    "openai_chat": ["gpt-4o-mini", "team-default", "byok-fuzz", "secretless-fuzz"],
    "openai_responses": ["gpt-4o-mini", "team-default", "byok-fuzz", "secretless-fuzz"],
    "anthropic_messages": ["claude-haiku-4-5", "claude-team"],
    "gemini": ["gemini-2.5-flash", "gemini-team"],
}
OTHER_MODELS = ["gpt-denied-1", "claude-denied-1", "gemini-denied-1", "llama-unrouted", "",
                "gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"]  # fmt: skip
HUGE_NUMBERS = ["1e999", "-1e999", "1" + "0" * 400, "NaN", "Infinity", "-Infinity", "-0",
                "1E400", "123456789012345678901234567890", "0.0000000000000000000001e-400",
                "9" * 5000]  # fmt: skip
DEPTHS = [5, 64, 127, 128, 129, 130, 1000, 10_000]


@dataclass(frozen=True)
class Case:
    protocol: str
    kind: str
    path: str
    body: bytes


# --- strategies ----------------------------------------------------------------------------

# Strategies are built once (functools.cache) and text is one byte-string draw mapped
# to characters: rebuilding strategies per example, and a draw per character, made
# generation about twice as slow. Hypothesis still costs ~2 ms per example here.
_SURROGATES = range(0xD800, 0xE000)


def _to_unicode(raw: bytes) -> str:
    """Any code point but the surrogates, three bytes each: NUL, controls, RTL, emoji..."""
    points = (int.from_bytes(raw[i : i + 3], "little") % 0x110000 for i in range(0, len(raw), 3))
    return "".join(chr(p) for p in points if p not in _SURROGATES)


def _to_ascii(raw: bytes) -> str:
    return "".join(chr(32 + b % 95) for b in raw)


WORDS = ["hi", "", " ", "hello world", "ignore previous instructions", "call 555-0100",
         "mail a@b.co", "4111 1111 1111 1111", "\u202egnp.exe", "\x00", "日本語", "🙂" * 3,
         "a" * 2000, "\r\n\r\nPOST / HTTP/1.1", "%00%ff", "lg-", "sk-"]  # fmt: skip
unicode_text = st.binary(max_size=45).map(_to_unicode)
ascii_text = st.binary(max_size=30).map(_to_ascii)
texts = st.one_of(ascii_text, unicode_text, st.sampled_from(WORDS))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-10**6, 10**6).map(lambda i: i / 1000),
    texts,
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)


@functools.cache
def models(protocol: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(SERVED[protocol]),
        st.sampled_from(SERVED[protocol]),  # weighted: half the calls ask for a served model
        st.sampled_from(OTHER_MODELS),
        texts,
    )


@functools.cache
def _message(roles: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"role": st.sampled_from(roles), "content": texts})


def _hundredths(top: int) -> st.SearchStrategy[float]:
    return st.integers(0, top * 100).map(lambda i: i / 100)


TOKENS = st.integers(1, 4096)
METADATA = st.dictionaries(ascii_text, ascii_text, max_size=2)


@functools.cache
def valid_shaped(protocol: str) -> st.SearchStrategy[dict[str, Any]]:
    """A call of the protocol's shape with random values (Gemini's model is in the path)."""
    if protocol == "openai_chat":
        roles = ("user", "system", "assistant", "developer")
        required = {
            "model": models(protocol),
            "messages": st.lists(_message(roles), min_size=1, max_size=3),
        }
        optional = {
            "temperature": _hundredths(2),
            "max_tokens": TOKENS,
            "max_completion_tokens": TOKENS,
            "stream": st.booleans(),
            "top_p": _hundredths(1),
            "user": texts,
            "n": st.integers(1, 2),
            "metadata": METADATA,
        }
    elif protocol == "openai_responses":
        items = st.lists(_message(("user", "assistant", "developer")), min_size=1, max_size=3)
        required = {"model": models(protocol), "input": st.one_of(texts, items)}
        optional = {
            "instructions": texts,
            "max_output_tokens": st.integers(16, 4096),
            "temperature": _hundredths(2),
            "stream": st.booleans(),
            "store": st.booleans(),
            "metadata": METADATA,
        }
    elif protocol == "anthropic_messages":
        required = {
            "model": models(protocol),
            "max_tokens": TOKENS,
            "messages": st.lists(_message(("user", "assistant")), min_size=1, max_size=3),
        }
        optional = {
            "system": texts,
            "temperature": _hundredths(1),
            "stream": st.booleans(),
            "top_k": st.integers(1, 100),
            "metadata": st.fixed_dictionaries({"user_id": ascii_text}),
        }
    else:
        part = st.fixed_dictionaries({"text": texts})
        content = st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "model"]),
                "parts": st.lists(part, min_size=1, max_size=2),
            }
        )
        config = st.fixed_dictionaries(
            {}, optional={"maxOutputTokens": TOKENS, "temperature": _hundredths(2)}
        )
        required = {"contents": st.lists(content, min_size=1, max_size=3)}
        optional = {
            "generationConfig": config,
            "systemInstruction": st.fixed_dictionaries({"parts": st.lists(part, max_size=1)}),
        }
    return st.fixed_dictionaries(required, optional=optional)  # fmt: skip


def _dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def _wrong_type(draw: st.DrawFn, protocol: str) -> tuple[str, bytes]:
    body = draw(valid_shaped(protocol))
    key = draw(st.sampled_from(sorted(body)))
    replacement = draw(json_values)
    if isinstance(body[key], list) and body[key] and draw(st.booleans()):
        # One level down: an item of a list, or a field of an item.
        index = draw(st.integers(0, len(body[key]) - 1))
        item = body[key][index]
        if isinstance(item, dict) and draw(st.booleans()):
            item[draw(st.sampled_from(sorted(item)))] = replacement
            return f"wrong-type:{key}[].field", json.dumps(body).encode()
        body[key][index] = replacement
        return f"wrong-type:{key}[]", json.dumps(body).encode()
    body[key] = replacement
    return f"wrong-type:{key}", json.dumps(body).encode()


@st.composite
def _encoded(draw: st.DrawFn, protocol: str) -> tuple[str, bytes]:
    text = _dumps(draw(valid_shaped(protocol)), draw(st.booleans()))
    encoding = draw(st.sampled_from(
        ["utf8-bom", "utf16le", "utf16le-bom", "utf16be", "utf16be-bom", "utf32", "latin1"]
    ))  # fmt: skip
    raw = {
        "utf8-bom": lambda: b"\xef\xbb\xbf" + text.encode(),
        "utf16le": lambda: text.encode("utf-16-le"),
        "utf16le-bom": lambda: b"\xff\xfe" + text.encode("utf-16-le"),
        "utf16be": lambda: text.encode("utf-16-be"),
        "utf16be-bom": lambda: b"\xfe\xff" + text.encode("utf-16-be"),
        "utf32": lambda: text.encode("utf-32"),
        "latin1": lambda: text.encode("latin-1", "replace"),
    }[encoding]()
    return f"encoding:{encoding}", raw


@st.composite
def _duplicate_key(draw: st.DrawFn, protocol: str) -> tuple[str, bytes]:
    body = draw(valid_shaped(protocol))
    key = draw(st.sampled_from(sorted(body)))
    other = draw(st.one_of(json_values, st.sampled_from(OTHER_MODELS)))
    text = json.dumps(body)
    member = f"{json.dumps(key)}: {json.dumps(other)}"
    first = draw(st.booleans())
    raw = "{" + member + ", " + text[1:] if first else text[:-1] + ", " + member + "}"
    return f"duplicate:{key}", raw.encode()


@st.composite
def _deep(draw: st.DrawFn, protocol: str) -> tuple[str, bytes]:
    body = draw(valid_shaped(protocol))
    depth = draw(st.sampled_from(DEPTHS))
    nested = (nested_array if draw(st.booleans()) else nested_object)(depth)
    key = draw(st.sampled_from(["metadata", "x_extra", *sorted(body)]))
    body[key] = "@@DEEP@@"
    return f"deep:{depth}", json.dumps(body).replace('"@@DEEP@@"', nested).encode()


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_paths(v, (*path, i))]
    return []


@st.composite
def _surrogate(draw: st.DrawFn, protocol: str) -> tuple[str, bytes]:
    """A lone surrogate escape at the start of one string of a valid-shaped call."""
    body = draw(valid_shaped(protocol))
    code = draw(st.integers(0xD800, 0xDFFF))
    escape = f"\\u{code:04x}" if draw(st.booleans()) else f"\\u{code:04X}"
    paths = _string_paths(body)
    if not paths:
        body["model"] = ""
        paths = [("model",)]
    *parents, last = draw(st.sampled_from(paths))
    node = body
    for step in parents:
        node = node[step]
    node[last] = "\x00SUR\x00" + node[last]
    text = json.dumps(body).replace("\\u0000SUR\\u0000", escape, 1)
    return f"lone-surrogate:{'.'.join(map(str, (*parents, last)))}", text.encode()


@st.composite
def _huge_number(draw: st.DrawFn, protocol: str) -> tuple[str, bytes]:
    body = draw(valid_shaped(protocol))
    number = draw(st.sampled_from(HUGE_NUMBERS))
    fields = {"anthropic_messages": "max_tokens", "gemini": "generationConfig",
              "openai_chat": "max_tokens", "openai_responses": "max_output_tokens"}  # fmt: skip
    key = draw(st.sampled_from([fields[protocol], "temperature", "seed"]))
    if protocol == "gemini" and key == "generationConfig":
        body[key] = {"maxOutputTokens": "@@NUM@@"}
    else:
        body[key] = "@@NUM@@"
    return f"huge-number:{number[:12]}", json.dumps(body).replace('"@@NUM@@"', number).encode()


@st.composite
def _valid(draw: st.DrawFn, protocol: str) -> tuple[str, bytes]:
    return "valid-shaped", _dumps(draw(valid_shaped(protocol)), draw(st.booleans())).encode()


@functools.cache
def cases(protocol: str) -> st.SearchStrategy[tuple[str, bytes]]:
    return st.one_of(
        _valid(protocol),
        _valid(protocol),
        _wrong_type(protocol),
        json_values.map(lambda v: ("random-json", json.dumps(v).encode())),
        st.binary(max_size=300).map(lambda b: ("random-bytes", b)),
        _encoded(protocol),
        _duplicate_key(protocol),
        _deep(protocol),
        _surrogate(protocol),
        _huge_number(protocol),
    )


def gemini_paths() -> st.SearchStrategy[str]:
    model = st.one_of(
        st.sampled_from(SERVED["gemini"]), st.sampled_from(SERVED["gemini"]),
        st.sampled_from([m for m in OTHER_MODELS if m]),
    )  # fmt: skip
    action = st.sampled_from(["generateContent"] * 4 + ["streamGenerateContent?alt=sse"])
    return st.builds(lambda m, a: f"/v1beta/models/{m}:{a}", model, action)


def generate(protocol: str, count: int) -> list[Case]:
    """`count` cases, generated by Hypothesis (deterministically) before anything is sent."""
    out: list[Case] = []
    path_strategy = gemini_paths() if protocol == "gemini" else st.just(ENDPOINTS[protocol][1])

    @seed(20_240_611 + PROTOCOLS.index(protocol))
    @settings(
        max_examples=count, database=None, phases=[Phase.generate], deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(cases(protocol), path_strategy)
    def collect(case: tuple[str, bytes], path: str) -> None:
        out.append(Case(protocol, case[0], path, case[1]))

    collect()
    return out


def generate_all(count: int) -> list[Case]:
    """Every protocol's cases, generated before anything is sent.

    One process per core (spawned, so it shares nothing with this one): Hypothesis
    costs about 1.7 ms per example here, so 40,000 examples in this process alone
    took ~70 s, and the sending ~105 s more. The cases are the same as in-process
    generation would give: each protocol's run has its own fixed seed.
    """
    context = multiprocessing.get_context("spawn")
    workers = min(len(PROTOCOLS), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        batches = pool.map(generate, PROTOCOLS, [count] * len(PROTOCOLS))
        return [case for batch in batches for case in batch]


# --- the proxy -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_gate(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, emulator_server: Emulator
) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("fuzz-policies")
    (directory / "routes.yaml").write_text(emulator_policy(emulator_server.url))
    (directory / "policy.yaml").write_text(POLICY)
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    db = tmp_path_factory.mktemp("fuzz-ledger") / "audit.db"
    with Proxy(
        directory, db, confdir, upstream_ca=emulator_server.ca_path, env=UPSTREAM_KEYS
    ) as running:
        yield running


def _headers(protocol: str) -> dict[str, str]:
    name = CREDENTIAL_HEADER[protocol]
    headers = {name: f"Bearer {CALLER_KEY}" if name == "authorization" else CALLER_KEY}
    if protocol == "anthropic_messages":
        headers["anthropic-version"] = "2023-06-01"
    return headers


async def _send_all(proxy: Proxy, all_cases: list[Case]) -> list[Sent]:
    results = [Sent(i, c.protocol) for i, c in enumerate(all_cases)]
    queues: dict[str, collections.deque[int]] = {host: collections.deque() for host in CONNECTIONS}
    for i, case in enumerate(all_cases):
        queues[ENDPOINTS[case.protocol][0]].append(i)

    async def worker(host: str) -> None:
        client = RawClient(proxy, host)
        try:
            while queues[host]:
                i = queues[host].popleft()
                case = all_cases[i]
                try:
                    await client.send(results[i], case.path, case.body, _headers(case.protocol))
                except OSError as exc:  # the connection could not be (re)opened
                    results[i].failure = f"{type(exc).__name__}: {exc}"
                    await client.close()
        finally:
            await client.close()

    await asyncio.gather(
        *(worker(host) for host, count in CONNECTIONS.items() for _ in range(count))
    )
    return results


# --- the property --------------------------------------------------------------------------


def _cpu_seconds(proxy: Proxy) -> float:
    """User + system CPU time of the proxy process so far (Linux /proc)."""
    assert proxy._proc is not None
    fields = Path(f"/proc/{proxy._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rows(proxy: Proxy, expected: int, timeout: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.query(
            "select id, status, http_status, reason, error, protocol, upstream_protocol,"
            " usage_source from requests"
        )
        settled = len(rows) >= expected and all(r["status"] != "pending" for r in rows)
        if settled:
            return {r["id"]: r for r in rows}
        if time.monotonic() > deadline:
            pending = sum(r["status"] == "pending" for r in rows)
            raise AssertionError(f"{len(rows)} of {expected} rows, {pending} still pending")
        time.sleep(0.2)


def _verdict(case: Case, sent: Sent, rows: dict[str, dict[str, Any]]) -> tuple[str, str | None]:
    """(outcome, problem): outcome is forwarded | refused | upstream_error."""
    if sent.failure is not None or sent.status is None:
        return "no_answer", f"no answer: {sent.failure}"
    request_id = sent.headers.get(REQUEST_ID)
    if request_id is None:
        return "unmarked", f"{sent.status} without {REQUEST_ID}: {sent.content[:200]!r}"
    row = rows.get(request_id)
    if row is None:
        return "unrecorded", f"{sent.status}: no row {request_id}"
    upstream = sent.headers.get("server") == EMULATOR_SERVER
    # A call routed to another protocol is answered by llmgate's translation of the
    # upstream's reply: the upstream's own usage report on the row shows it came back.
    translated = row.get("upstream_protocol") not in (None, row.get("protocol"))
    if translated and 200 <= sent.status < 300:
        upstream = row.get("usage_source") == "reported"
    if 200 <= sent.status < 300:
        if not upstream:
            return "forwarded", f"a {sent.status} that did not come from the upstream"
        if (row["status"], row["http_status"]) != ("completed", sent.status):
            return "forwarded", f"a {sent.status} with row {row}"
        return "forwarded", None
    if sent.status < 400:
        return "odd", f"status {sent.status}"
    if row["http_status"] != sent.status or row["status"] not in ("failed", "denied"):
        return "refused", f"{sent.status} with row {row}"
    if upstream:
        return "upstream_error", None
    wire = WIRE[case.protocol]
    try:
        body = json.loads(sent.content)
    except ValueError:
        return "refused", f"{sent.status} body is not JSON: {sent.content[:200]!r}"
    problem = error_problem(wire, sent.status, body)
    if problem is not None:
        return "refused", problem
    kind = error_kind(wire, body)
    if translated and row["reason"] == "upstream_error":
        return "upstream_error", None  # the upstream's own error, in the caller's shape
    if kind is not None and kind != row["reason"]:
        return "refused", f"body says {kind}, row says {row['reason']}"
    return "refused", None


def test_every_generated_call_is_forwarded_with_a_row_or_refused_with_a_row(
    fuzz_gate: Proxy, emulator: Emulator
) -> None:
    started = time.monotonic()
    all_cases = generate_all(PER_PROTOCOL)
    generated = time.monotonic()
    counts = collections.Counter(c.protocol for c in all_cases)
    assert counts == {p: PER_PROTOCOL for p in PROTOCOLS}, counts
    random.Random(7).shuffle(all_cases)

    cpu_before = _cpu_seconds(fuzz_gate), time.process_time()
    results = asyncio.run(_send_all(fuzz_gate, all_cases))
    sent_at = time.monotonic()
    proxy_cpu = _cpu_seconds(fuzz_gate) - cpu_before[0]
    own_cpu = time.process_time() - cpu_before[1]
    rows = _rows(fuzz_gate, len(all_cases))
    hits = len(emulator.hits)

    outcomes: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    upstream_errors: list[str] = []
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case, sent in zip(all_cases, results, strict=True):
        outcome, problem = _verdict(case, sent, rows)
        outcomes[outcome] += 1
        by_kind[case.kind.split(":")[0]][f"{outcome}:{sent.status}"] += 1
        if problem is not None:
            problems.append(
                f"{case.protocol} {case.kind} {case.path} {case.body[:160]!r}: {problem}"
            )
        if outcome == "upstream_error":
            upstream_errors.append(
                f"{case.protocol} {case.kind} {case.body[:160]!r} -> {sent.status} "
                f"{sent.content[:200]!r}"
            )
    ids = [s.headers.get(REQUEST_ID) for s in results]
    successes = sum(1 for s in results if s.status is not None and 200 <= s.status < 300)
    forwarded = successes + outcomes["upstream_error"]

    sending = sent_at - generated
    print(f"\nfuzz: {len(all_cases)} calls; generated in {generated - started:.1f} s, "
          f"sent in {sending:.1f} s ({len(all_cases) / sending:.0f}/s)")  # fmt: skip
    print(f"fuzz: CPU while sending: proxy {proxy_cpu:.1f} s, this process (client and "
          f"emulator) {own_cpu:.1f} s")  # fmt: skip
    print(f"fuzz: outcomes {dict(outcomes)}; emulator hits {hits}; rows {len(rows)}")
    for kind, counter in sorted(by_kind.items()):
        print(f"fuzz:   {kind}: {dict(counter.most_common())}")
    for line in upstream_errors[:30]:
        print(f"fuzz: passed llmgate, refused by the emulator: {line}")

    assert problems == [], f"{len(problems)} violations, first: " + "\n".join(problems[:20])
    assert len(set(ids)) == len(ids), "a request id was given twice"
    assert len(rows) == len(all_cases), (len(rows), len(all_cases))
    assert hits == forwarded, (
        f"{hits} upstream hits, but {successes} 2xx answers and "
        f"{outcomes['upstream_error']} upstream errors"
    )

    # The ledger writer survived all of it: one more valid call gets its row.
    last = Sent(-1, "openai_chat")
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})

    async def one_more() -> None:
        client = RawClient(fuzz_gate, "api.openai.com")
        await client.send(last, "/v1/chat/completions", body.encode(), _headers("openai_chat"))
        await client.close()

    asyncio.run(one_more())
    assert last.status == 200, (last.status, last.content[:300], last.failure)
    assert fuzz_gate.row(last.headers[REQUEST_ID])["status"] == "completed"
    assert len(emulator.hits) == hits + 1
    print(f"fuzz: whole test {time.monotonic() - started:.1f} s")


def test_the_verdict_catches_every_way_a_call_can_slip_through() -> None:
    """The property's judge, on answers it must reject (so the fuzz test can fail)."""
    case = Case("openai_chat", "valid-shaped", "/v1/chat/completions", b"{}")
    row = {"id": "r1", "status": "completed", "http_status": 200, "reason": None, "error": None}
    refusal = {"error": {"message": "no", "type": "invalid_request_error", "code": "no_route"}}
    emulator_headers = {REQUEST_ID: "r1", "server": EMULATOR_SERVER}

    def sent(status: int | None, headers: dict[str, str], body: Any = b"") -> Sent:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Sent(0, "openai_chat", status, headers, content, None if status else "reset")

    ok = _verdict(case, sent(200, emulator_headers), {"r1": row})
    assert ok == ("forwarded", None)
    refused_row = {**row, "status": "failed", "http_status": 404, "reason": "no_route"}
    assert _verdict(case, sent(404, {REQUEST_ID: "r1"}, refusal), {"r1": refused_row})[1] is None
    # Translated: llmgate answers with the upstream's reply in the caller's protocol.
    crossed = {**row, "protocol": "openai_chat", "upstream_protocol": "gemini"}
    reported = {"r1": {**crossed, "usage_source": "reported"}}
    assert _verdict(case, sent(200, {REQUEST_ID: "r1"}), reported) == ("forwarded", None)
    slips = [
        (sent(None, {}), {"r1": row}),  # no answer at all
        (sent(200, {"server": EMULATOR_SERVER}), {"r1": row}),  # no request id
        (sent(200, emulator_headers), {}),  # forwarded without a row
        (sent(200, {REQUEST_ID: "r1"}), {"r1": row}),  # a 2xx the upstream did not send
        (sent(200, emulator_headers), {"r1": {**row, "status": "failed"}}),  # wrong row
        (sent(404, {REQUEST_ID: "r1"}, {"message": "no"}), {"r1": refused_row}),  # format
        (sent(404, {REQUEST_ID: "r1"}, b"<html>"), {"r1": refused_row}),  # not JSON
        (sent(403, {REQUEST_ID: "r1"}, refusal), {"r1": refused_row}),  # status != row
        (sent(404, {REQUEST_ID: "r1"}, {"error": {**refusal["error"], "code": "other"}}),
         {"r1": refused_row}),  # reason != row
        (sent(302, {REQUEST_ID: "r1"}), {"r1": row}),  # neither
        (sent(200, {REQUEST_ID: "r1"}), {"r1": {**crossed, "usage_source": "none"}}),  # no reply
    ]  # fmt: skip
    for answer, rows in slips:
        assert _verdict(case, answer, rows)[1] is not None, (answer, rows)
