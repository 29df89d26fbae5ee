"""What `tools/mutate/run.py` mutates, and which fast unit tests judge each module.

A target is one "module" of MUTATION.md: the files mutated, the functions of them
that count (fnmatch patterns on `Class.method` or `function`), and the unit tests
that run against its mutants. The e2e suites stay out: they need the emulator and
a proxy, and a mutant must be judged in seconds, not minutes.

`strict` names the functions where a surviving mutant is never acceptable unless
`equivalent.toml` explains it: `run.py --strict` fails on any other survivor there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ("*",)
    strict: tuple[str, ...] = ()
    # Tests that cannot run twice in one process (mutmut runs pytest in-process
    # several times): their verdict on a mutant would be noise.
    deselect: tuple[str, ...] = ()
    note: str = ""


# The quota arithmetic proper: admission, the running totals, settle and release.
_QUOTA_ARITHMETIC = (
    "violations",
    "limit_units",
    "Demand.units",
    "demand_of",
    "WindowState.remaining",
    "worse",
    "ceil_ms",
    "_state",
    "QuotaStore.reserve",
    "QuotaStore.settle",
    "QuotaStore.settle_many",
    "QuotaStore.release",
    "QuotaStore.release_instances",
    "QuotaStore._shift",
    "QuotaStore._rows_of",
    "QuotaStore._all_sums",
    "QuotaStore._add_range",
    "QuotaStore._violations",
    "QuotaStore._wait",
    "quota_demand",
    "actual_demand",
)

# Run in this order: the cheap modules first, so that under a time budget whatever they
# leave over goes to usage and safety, whose fixed cost (generating mutants of large
# files, a slow test selection) is the largest.
TARGETS: tuple[Target, ...] = (
    Target(
        name="credentials",
        files=("addon/credentials.py",),
        tests=("tests/test_config.py", "tests/test_kill_credentials.py"),
        strict=("*",),
    ),
    Target(
        name="cost",
        files=("addon/ledger/pricing.py",),
        tests=("tests/test_ledger.py", "tests/test_kill_cost.py"),
        # It warns once per column name per process, and the name repeats in a
        # second in-process session (same tmp_path name); it tests the writer anyway.
        deselect=("tests/test_ledger.py::test_unknown_columns_are_dropped_and_named_once",),
    ),
    Target(
        name="identity",
        files=("addon/identity.py", "addon/keys.py"),
        tests=("tests/test_policy.py", "tests/test_kill_identity.py"),
    ),
    Target(
        name="quota",
        files=(
            "addon/quota/windows.py",
            "addon/quota/store.py",
            "addon/quota/budget.py",
            "addon/quota/owned.py",
        ),
        tests=("tests/test_quota.py", "tests/test_kill_quota.py", "tests/test_quota_owned.py"),
        strict=_QUOTA_ARITHMETIC,
    ),
    Target(
        name="usage",
        files=(
            "addon/protocols/base.py",
            "addon/protocols/openai_chat/reply.py",
            "addon/protocols/openai_responses/reply.py",
            "addon/protocols/anthropic_messages/reply.py",
            "addon/protocols/gemini/reply.py",
            "addon/protocols/gemini/fields.py",
        ),
        tests=("tests/test_protocols.py", "tests/test_streaming.py", "tests/test_kill_usage.py"),
        # The readers and the helpers every reader leans on; the rest of each
        # protocol (request parsing, stream framing) is not usage reading.
        functions=("*usage*", "as_int", "dig", "_get"),
        note="usage-reading functions only: *usage*, as_int, dig, gemini's _get",
    ),
    Target(
        name="safety",
        files=(
            "addon/safety/detectors.py",
            "addon/safety/scanner.py",
            "addon/safety/stream_redactor.py",
        ),
        tests=("tests/test_safety.py", "tests/test_stream_guard.py", "tests/test_kill_safety.py"),
    ),
)
