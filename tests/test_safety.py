"""The safety scanners: the corpus (precision and recall per detector), the stream
redactor (split keys, holdback, actions), masking, and the findings in 1 MB of text."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.safety.scanner import Action, Finding, Scanner, redact, value_hmac
from addon.safety.stream_redactor import StreamRedactor
from tests.safety_corpus import CUSTOM_PATTERNS, NEGATIVES, POSITIVES, aws_id, key, pem

SCANNER = Scanner(CUSTOM_PATTERNS)


def stream(text: str, cuts: list[int], action: Action | None = "redact") -> tuple[str, list[str]]:
    """Push `text` split at `cuts`; return the whole released text and each push's output."""
    redactor = StreamRedactor(SCANNER, lambda f: action)
    bounds = [0, *sorted(cuts), len(text)]
    outs = [redactor.push(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    outs.append(redactor.finish())
    return "".join(outs), outs


def one_shot(text: str) -> str:
    return redact(text, SCANNER.scan(text))


# --- corpus --------------------------------------------------------------------------


def test_corpus_precision_and_recall_per_detector() -> None:
    tp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    misses: list[str] = []
    for text, expected, *also in POSITIVES:
        got = {f.detector for f in SCANNER.scan(text)}
        for name in (expected, *also):
            if name in got:
                tp[name] += 1
            else:
                fn[name] += 1
                misses.append(f"missed {name}: {text[:70]!r}")
        for name in got - {expected, *also}:
            fp[name] += 1
            misses.append(f"unexpected {name}: {text[:70]!r}")
    for text in NEGATIVES:
        for f in SCANNER.scan(text):
            fp[f.detector] += 1
            misses.append(f"negative fired {f.detector} on {f.value[:30]!r}: {text[:60]!r}")
    rows = [f"{'detector':24} {'TP':>4} {'FP':>4} {'FN':>4} {'precision':>9} {'recall':>7}"]
    for name in sorted(set(tp) | set(fn) | set(fp)):
        precision = tp[name] / ((tp[name] + fp[name]) or 1)
        recall = tp[name] / ((tp[name] + fn[name]) or 1)
        rows.append(
            f"{name:24} {tp[name]:4} {fp[name]:4} {fn[name]:4} {precision:9.2f} {recall:7.2f}"
        )
    rows.append(f"{len(POSITIVES)} positives, {len(NEGATIVES)} negatives")
    table = "\n".join(rows)
    print("\n" + table)
    assert not misses, table + "\n" + "\n".join(misses)


def test_corpus_is_big_enough_and_covers_every_detector() -> None:
    assert len(POSITIVES) >= 70 and len(NEGATIVES) >= 70
    from addon.safety.detectors import CATEGORIES

    covered = Counter(name for _, name, *_ in POSITIVES)
    for names in CATEGORIES.values():
        for name in names:
            assert covered[name] >= 2, name
    assert {name for name, _ in CUSTOM_PATTERNS} <= set(covered)


# --- scanner ------------------------------------------------------------------------


def test_findings_are_sorted_non_overlapping_and_carry_their_value() -> None:
    # The unterminated key block would run to the end of the text: it goes last.
    texts = sorted((t for t, *_ in POSITIVES), key=lambda t: "BEGIN ENCRYPTED" in t)
    text = "\n".join(texts)
    found = SCANNER.scan(text)
    assert len(found) >= len(POSITIVES)
    for a, b in zip(found, found[1:], strict=False):
        assert a.end <= b.start
    assert all(text[f.start : f.end] == f.value for f in found)


def test_anthropic_key_wins_over_openai_key_for_the_same_span() -> None:
    text = f"k=sk-ant-api03-{key(93)}AA"
    assert [f.detector for f in SCANNER.scan(text)] == ["anthropic_key"]


def test_a_private_key_swallows_whatever_is_inside_it() -> None:
    inner = (
        f"-----BEGIN RSA PRIVATE KEY-----\nsk-proj-{key(48)} a@b.io\n-----END RSA PRIVATE KEY-----"
    )
    (finding,) = SCANNER.scan(f"x {inner} y")
    assert finding.detector == "private_key" and finding.value == inner


def test_a_bare_40_char_base64_value_needs_a_key_id_or_a_label() -> None:
    secret = key(40, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
    assert SCANNER.scan(f"value {secret} here") == []
    far = f"AKIA{key(16, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789').upper()}" + " " * 300 + secret
    assert [f.detector for f in SCANNER.scan(far)] == ["aws_access_key_id"]
    near = far.replace(" " * 300, ", ")
    assert [f.detector for f in SCANNER.scan(near)] == [
        "aws_access_key_id",
        "aws_secret_access_key",
    ]


def test_invalid_custom_regex_names_the_pattern() -> None:
    with pytest.raises(ValueError, match="'broken'"):
        Scanner([("fine", r"x+"), ("broken", r"(unclosed")])


def test_custom_patterns_keep_their_word_boundaries() -> None:
    scanner = Scanner([("ticket", r"\bACME-[0-9]{6}\b"), ("any", r"\b\d{3}x")])
    found = scanner.scan("ACME-123456 XACME-123456 ACME-1234567 (ACME-654321) 123x a123x")
    assert [(f.detector, f.value) for f in found] == [
        ("ticket", "ACME-123456"), ("ticket", "ACME-654321"), ("any", "123x"),
    ]  # fmt: skip


def test_jailbreak_phrases_are_configurable_and_whitespace_tolerant() -> None:
    scanner = Scanner(jailbreak_phrases=["Sudo Mode ON", "ignore the rules"])
    text = "please IGNORE\n\tthe   rules; sudo  mode on"
    assert [f.value for f in scanner.scan(text)] == ["IGNORE\n\tthe   rules", "sudo  mode on"]
    assert scanner.scan("ignore all previous instructions") == []


def test_offsets_survive_non_ascii_text() -> None:
    text = f"İstanbul ünïcödé 🙂 key sk-proj-{key(48)} and ☃ jane@acme-corp.io"
    found = SCANNER.scan(text)
    assert [f.detector for f in found] == ["openai_key", "email"]
    assert all(text[f.start : f.end] == f.value for f in found)


def test_redact_replaces_each_span_with_its_category() -> None:
    text = "mail ann.lee@uni-heidelberg.de, key sk-proj-" + key(48)
    assert one_shot(text) == "mail [REDACTED:pii], key [REDACTED:secrets]"


def test_value_hmac_is_hex_hmac_sha256() -> None:
    expected = hmac.new(b"k", b"sk-x", hashlib.sha256).hexdigest()
    assert value_hmac(b"k", "sk-x") == expected


def test_masked_never_shows_more_than_9_characters_of_a_value() -> None:
    findings = [f for text, *_ in POSITIVES for f in SCANNER.scan(text)]
    findings.append(Finding("secrets", "password_assignment", 0, 4, "abcd"))
    for f in findings:
        shown = f.masked().replace("…", "")
        assert len(shown) <= 9, (f.detector, f.masked())
        if f.detector == "private_key":
            assert f.masked() == "-----…----"
    key_finding = SCANNER.scan(f"sk-proj-{key(40)}9f2c")[0]
    assert key_finding.masked() == "sk-pr…9f2c"
    assert Finding("pii", "us_ssn", 0, 11, "536-22-8841").masked() == "…41"


# --- stream -------------------------------------------------------------------------


def test_a_private_key_split_across_three_pushes_is_redacted_whole() -> None:
    block = pem("RSA ", 12)
    text = f"Here is the key:\n{block}\nthanks, bye"
    cuts = [text.index("BEGIN") + 3, text.index(block) + len(block) // 2]
    released, outs = stream(text, cuts)
    assert released == "Here is the key:\n[REDACTED:secrets]\nthanks, bye"
    body = block.splitlines()[1:-1]
    for out in outs:
        assert not any(line[:16] in out for line in body)
    # Text before the block goes out; the block goes out, redacted, at its END line.
    assert outs == ["", "Here is the key:\n", "[REDACTED:secrets]", "\nthanks, bye"]


def test_an_unterminated_private_key_is_redacted_at_finish() -> None:
    lines = [key(64) for _ in range(4)]
    text = "dump:\n-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines)
    released, outs = stream(text, [10, 50, 120, 200])
    assert released == "dump:\n[REDACTED:secrets]"
    assert outs[-1].endswith("[REDACTED:secrets]")  # held until the stream ends
    assert not any(line[:12] in out for out in outs for line in lines)


def test_every_two_way_split_of_an_openai_key_gives_the_one_push_output() -> None:
    text = f"Use the key sk-proj-{key(60)} for the staging project only, please."
    whole, _ = stream(text, [])
    assert (
        whole
        == one_shot(text)
        == "Use the key [REDACTED:secrets] for the staging project only, please."
    )
    for cut in range(1, len(text)):
        assert stream(text, [cut])[0] == whole, cut


@pytest.mark.parametrize("item", POSITIVES, ids=lambda item: f"{item[1]}:{item[0][:16]!r}")
def test_every_positive_streams_like_one_shot_at_every_split(item: tuple[str, ...]) -> None:
    text = item[0]
    expected = one_shot(text)
    step = max(1, len(text) // 150)
    for cut in range(1, len(text), step):
        assert stream(text, [cut])[0] == expected, cut


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4000), max_size=12))
def test_any_chunking_of_a_mixed_text_gives_the_one_shot_output(cuts: list[int]) -> None:
    text = MIXED
    assert stream(text, [c % len(text) for c in cuts])[0] == one_shot(text)


MIXED = "\n".join(t for t, *_ in POSITIVES[::3]) + "\nthe end"


def test_log_redact_and_block() -> None:
    secret = f"sk-proj-{key(48)}"
    text = f"one {secret} two jane@acme-corp.io three " + "filler " * 60
    seen: list[str] = []

    def actions(f: Finding) -> Action:
        seen.append(f.detector)
        return {"openai_key": "redact", "email": "log"}[f.detector]  # type: ignore[return-value]

    redactor = StreamRedactor(SCANNER, actions)
    out = (
        "".join(redactor.push(text[i : i + 7]) for i in range(0, len(text), 7)) + redactor.finish()
    )
    assert out == text.replace(secret, "[REDACTED:secrets]")
    assert seen == ["openai_key", "email"] and redactor.blocked is None

    blocker = StreamRedactor(SCANNER, lambda f: "block" if f.category == "pii" else "log")
    pushes = [blocker.push(text[i : i + 7]) for i in range(0, len(text), 7)]
    released = "".join(pushes) + blocker.finish()
    assert released == text[: text.index("jane@")]  # the logged key went out unchanged
    assert blocker.blocked is not None and blocker.blocked.detector == "email"
    assert blocker.push("more text") == "" and blocker.finish() == ""
    assert [f.detector for f in blocker.findings] == ["openai_key", "email"]


def test_ordinary_text_is_held_back_at_most_holdback_characters() -> None:
    text = ("The quick brown fox jumps over the lazy dog; 42 apples, version 1.2.3.\n") * 40
    redactor = StreamRedactor(SCANNER, lambda f: "redact")
    pushed = released = 0
    for i in range(0, len(text), 13):
        chunk = text[i : i + 13]
        pushed += len(chunk)
        released += len(redactor.push(chunk))
        assert pushed - released <= SCANNER.holdback
    assert released + len(redactor.finish()) == len(text)
    assert redactor.findings == []


@pytest.mark.parametrize(
    "text",
    [
        "pi = 3." + "14159265358979323846264338327950288419716939937510" * 40,
        "blob " + "-".join(f"sk-{i}abcdefghijklmnopqrstuvwxyz" for i in range(150)),
        "ids " + "AKIA" * 600,
        "no alg " + "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIx" + "a" * 3000,
        "x sk-" + "abc-def-" * 100,
        "bob@mail.com" + "0" * 500,
    ],
    ids=["digits", "sk-runs", "AKIA-run", "jwt-without-alg", "kebab-sk", "email-run"],
)
def test_long_runs_that_can_never_match_are_not_held(text: str) -> None:
    redactor = StreamRedactor(SCANNER, lambda f: "redact")
    pushed = released = 0
    for i in range(0, len(text), 9):
        pushed += len(text[i : i + 9])
        released += len(redactor.push(text[i : i + 9]))
        assert pushed - released <= SCANNER.holdback, i
    assert released + len(redactor.finish()) == len(text)


def test_findings_are_reported_once_with_stream_offsets() -> None:
    parts = [f"a sk-proj-{key(48)} b", " filler" * 80, f" c ghp_{key(36)} d", " tail" * 80]
    text = "".join(parts)
    redactor = StreamRedactor(SCANNER, lambda f: "log")
    out = "".join(redactor.push(text[i : i + 5]) for i in range(0, len(text), 5))
    out += redactor.finish()
    assert out == text
    assert [f.detector for f in redactor.findings] == ["openai_key", "github_token"]
    assert all(text[f.start : f.end] == f.value for f in redactor.findings)


# --- a large input -------------------------------------------------------------------
# Timings are not asserted (they are machine noise); BENCH.md measures the speed. What
# a 1 MB input must not change is the answer: the same findings at the same offsets.

NON_ASCII = "Grüße aus Köln — café, naïve; 日本語のテキスト ✓ \N{GRINNING FACE}"


@pytest.mark.parametrize("ascii_only", [True, False], ids=["ascii", "non-ascii"])
def test_a_megabyte_of_innocent_text_yields_exactly_the_planted_secrets(ascii_only: bool) -> None:
    # The corpus's negatives fire nothing on their own; whole copies of them fill
    # 1 MB, with six secrets planted at offsets known here.
    filler = "\n\n".join([*NEGATIVES, *([] if ascii_only else [NON_ASCII])]) + "\n\n"
    assert SCANNER.scan(filler) == []
    plants = [
        ("openai_key", f"sk-proj-{key(48)}"),
        ("github_token", f"ghp_{key(36)}"),
        ("aws_access_key_id", aws_id()),
        ("acme_ticket", "ACME-123456"),  # a custom pattern
        ("private_key", pem()),
        ("anthropic_key", f"sk-ant-api03-{key(93)}AA"),
    ]
    fill = filler * -(-1_000_000 // len(plants) // len(filler))  # rounded up
    parts: list[str] = []
    expected: list[tuple[str, int, str]] = []
    offset = 0
    for detector, value in plants:
        parts += [fill, " ", value, " "]
        expected.append((detector, offset + len(fill) + 1, value))
        offset += len(fill) + len(value) + 2
    text = "".join(parts)
    assert len(text) >= 1_000_000 and text.isascii() == ascii_only
    found = SCANNER.scan(text)
    assert [(f.detector, f.start, f.value) for f in found] == expected
    redacted = one_shot(text)
    assert redacted.count("[REDACTED:") == len(plants)
    assert not any(value in redacted for _, value in plants)


@pytest.mark.parametrize("regex", ["x*", "(ab)?", r"\b", "a|"])
def test_a_custom_pattern_that_matches_the_empty_string_ends(regex: str) -> None:
    # It used to restart the search past the end, where the empty match is found
    # again: one line of safety config hung every scanned call.
    scanner = Scanner([("loose", regex)])
    findings = scanner.scan("ab xx ab")
    assert all(f.value for f in findings), findings  # no empty finding either
