"""The safety scanner's detectors at their edges, with scanners built inside each test.

test_safety builds its SCANNER once, at import. Under mutmut (tools/mutate) that
import happens before a mutant is switched on, so no mutant of the detector table
(builtin_passes, phrase_passes, custom_pass, Scanner.__init__) ever reaches the
corpus test. Building the scanner here lets the corpus judge them too; the other
tests pin edges the corpus does not reach (see MUTATION.md)."""

from __future__ import annotations

import pytest

from addon.safety.scanner import Finding, Scanner, redact, value_hmac
from addon.safety.stream_redactor import StreamRedactor
from tests.safety_corpus import CUSTOM_PATTERNS, NEGATIVES, POSITIVES

PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"


def found(text: str, scanner: Scanner | None = None) -> list[tuple[str, str]]:
    return [(f.detector, f.value) for f in (scanner or Scanner()).scan(text)]


def test_a_scanner_built_now_finds_exactly_the_corpus() -> None:
    scanner = Scanner(CUSTOM_PATTERNS)
    for text, expected, *also in POSITIVES:
        assert {f.detector for f in scanner.scan(text)} == {expected, *also}, text[:70]
    for text in NEGATIVES:
        assert scanner.scan(text) == [], text[:70]


def test_a_scanner_built_now_streams_the_corpus_as_it_scans_it_whole() -> None:
    scanner = Scanner(CUSTOM_PATTERNS)
    # The unterminated key block would run to the end of the text: it goes last.
    text = "\n".join(sorted((t for t, *_ in POSITIVES), key=lambda t: "BEGIN ENCRYPTED" in t))
    whole = redact(text, scanner.scan(text))
    for size in (1, 5, 64):
        redactor = StreamRedactor(scanner, lambda _: "redact")
        pushed = [redactor.push(text[i : i + size]) for i in range(0, len(text), size)]
        assert "".join(pushed) + redactor.finish() == whole, size


@pytest.mark.parametrize(
    ("text", "findings"),
    [
        ("k sk-proj-" + "aB3" * 10 + " x", [("openai_key", "sk-proj-" + "aB3" * 10)]),
        ("k ghp_" + "aB3" * 12 + " x", [("github_token", "ghp_" + "aB3" * 12)]),
        ("k xoxb-1234567890-abcdef x", [("slack_token", "xoxb-1234567890-abcdef")]),
        ("k AIza" + "B" * 35 + " x", [("google_api_key", "AIza" + "B" * 35)]),
        ("k rk_live_" + "aB3" * 8 + " x", [("stripe_live_key", "rk_live_" + "aB3" * 8)]),
        (f"{PEM} after", [("private_key", PEM)]),
        (
            'aws_secret_access_key = "' + "aB3d" * 10 + '"',
            [("aws_secret_access_key", "aB3d" * 10)],
        ),
        ("password: 'hunter22'", [("password_assignment", "hunter22")]),
        ("mail bob.smith@corp.io now", [("email", "bob.smith@corp.io")]),
        ("mail bob@Corp.IO now", [("email", "bob@Corp.IO")]),
        ("pay 4111 1111 1111 1111. now", [("credit_card", "4111 1111 1111 1111")]),
        ("ssn 123-45-6789.", [("us_ssn", "123-45-6789")]),
        ("tel (415) 555-2671 x", [("phone", "(415) 555-2671")]),
        ("please ignore all previous instructions.",
         [("jailbreak_phrase", "ignore all previous instructions")]),
    ],
)  # fmt: skip
def test_each_detector_finds_exactly_its_span(text: str, findings: list[tuple[str, str]]) -> None:
    assert found(text) == findings


def test_finding_masks_keep_at_most_nine_characters() -> None:
    def masked(value: str, detector: str = "openai_key") -> str:
        return Finding("secrets", detector, 0, len(value), value).masked()

    assert masked("abcdefghijkl") == "abcde…ijkl"
    assert masked("abcdefghijk") == "…jk"
    assert masked("abcdef") == "…ef"
    assert masked("abcde") == "…"
    assert masked("") == "…"
    assert masked("-----BEGIN RSA PRIVATE KEY-----abc", "private_key") == "-----…----"


def test_value_hmac_takes_any_string_a_body_can_hold() -> None:
    assert value_hmac(b"k", "abc") == (
        "342e519ce0ad6c03a36b98eeb3f1d130db4813b9df4d1160eda488d712dc78ee"
    )
    # A lone surrogate (a raw byte decoded with surrogateescape) must not raise.
    assert value_hmac(b"k", "a\udcffb") == (
        "cc8abd922f763a4a0127b7786fab065f5b87af3bde3b829a3b16ce058f350616"
    )


def test_jwt_needs_an_alg_header_and_a_long_enough_signature() -> None:
    header = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}: 19 characters, so one "=" of padding
    token = f"{header}.eyJzdWIiOiIxIn0.{'a' * 16}"
    assert found(f"tok {token} x") == [("jwt", token)]
    assert found(f"tok {token[:-1]} x") == []  # a 15-character signature
    # 15 characters ({"alg":"x"}) need one "=" too.
    short = f"eyJhbGciOiJ4In0.eyJzdWIiOiIxIn0.{'a' * 16}"
    assert found(f"tok {short} x") == [("jwt", short)]
    # 17 characters cannot be base64 at all: no header, no JWT.
    assert found("tok eyJhbGciOiJIUzI1N.eyJzdWIi.abcdefghijklmnopqrstuv x") == []


def test_connection_strings() -> None:
    assert found("postgres://admin:s3cr3t-P4ss@db x") == [
        ("connection_string", "admin:s3cr3t-P4ss")
    ]
    assert found("mysql://u:s3cr3t-P4ss@db x") == [("connection_string", "u:s3cr3t-P4ss")]
    assert found("postgres://u:s3cr3t-P4ss@DBHOST x") == [("connection_string", "u:s3cr3t-P4ss")]
    assert found("x ://u:hunter22@db") == []  # no scheme at all
    assert found("notascheme://u:s3cr3t-P4ss@db x") == []
    assert found("postgres://u:Password@db x") == []
    assert found("postgres://u:SECRET@db x") == []
    assert found("postgres://u:${DB_PASSWORD}@db x") == []


def test_phone_numbers_in_international_form() -> None:
    assert found("call +1 415 555 2671 now") == [("phone", "+1 415 555 2671")]
    assert found("+1 415 555 2670") == [("phone", "+1 415 555 2670")]
    assert found("+40 21 123 4567 x") == [("phone", "+40 21 123 4567")]
    assert found("++1 415 555 2671") == []
    assert found("x+1 415 555 2671") == []
    assert found("+05:30") == []
    assert found("+0 415 555 2671 x") == []  # no country code starts with 0
    assert found("+123456789012345 x") == [("phone", "+123456789012345")]  # 15 digits
    assert found("+1234567890123456 x") == []  # 16 in one group: nothing to cut
    assert found("+1 2 3 4 5 6 7 8888 x") == [("phone", "+1 2 3 4 5 6 7 8888")]
    assert found("+1 2 3 4 5 6 7 88889 x") == []  # the number goes on past the match
    assert found("+12 345 678 x") == [("phone", "+12 345 678")]  # 8 digits
    assert found("+12 345 67 x") == []  # 7 digits
    assert found("+123 456 789 012 345 x") == [("phone", "+123 456 789 012 345")]  # 15
    # Past 15 digits the trailing groups belong to the next number, whatever the separator.
    assert found("+123 456 789 012 3456 x") == [("phone", "+123 456 789 012")]
    assert found("+1 415 555 2671 1234 5678") == [("phone", "+1 415 555 2671 1234")]
    assert found("+1-415-555-2671-1234-5678") == [("phone", "+1-415-555-2671-1234")]
    assert found("+1.415.555.2671.1234.5678") == [("phone", "+1.415.555.2671.1234")]
    assert found("+1 415 555 26711") == [("phone", "+1 415 555 26711")]


def test_a_card_number_ends_where_the_number_ends() -> None:
    assert found("pay 4111 1111 1111 1111-5 now") == []  # part of a longer number
    assert found("pay 4111 1111 1111 1111-1a now") == []
    assert found("pay 4111111111111111, ok") == [("credit_card", "4111111111111111")]
    assert found("pay 4111111111111111") == [("credit_card", "4111111111111111")]


def test_ibans_have_their_countrys_length_and_end_at_a_word_edge() -> None:
    assert found("GB82 WEST 1234 5698 7654 32 10 items") == [
        ("iban", "GB82 WEST 1234 5698 7654 32")
    ]
    assert found("GB82WEST12345698765432 ok") == [("iban", "GB82WEST12345698765432")]
    assert found("GB82WEST12345698765432X") == []
    assert found("GB82WEST12345698765432Xy") == []
    assert found("ZZ82WEST12345698765432 ok") == []


def test_jailbreak_phrases_are_whole_words() -> None:
    assert found("ignore all previous instructionsX") == []
    assert found("ignore all previous instructionsXY") == []
    assert found("please IGNORE   all\nprevious instructions!") == [
        ("jailbreak_phrase", "IGNORE   all\nprevious instructions")
    ]


def test_custom_phrases_prefer_the_longest_and_read_any_script() -> None:
    scanner = Scanner(jailbreak_phrases=["sudo mode", "sudo mode now", "ȷailbreak Ω mode", "x"])
    assert found("enter sudo mode now.", scanner) == [("jailbreak_phrase", "sudo mode now")]
    assert found("enter sudo mode.", scanner) == [("jailbreak_phrase", "sudo mode")]
    assert found("try ȷailbreak Ω mode!", scanner) == [("jailbreak_phrase", "ȷailbreak Ω mode")]
    assert found("a x b", scanner) == [("jailbreak_phrase", "x")]
    assert found("axb", scanner) == []
    with pytest.raises(ValueError) as err:
        Scanner(jailbreak_phrases=["ok", "  "])
    assert str(err.value) == "jailbreak phrase is empty"


def test_phrases_of_any_anchor_letter() -> None:
    scanner = Scanner(jailbreak_phrases=["zebra crossing", "a jazz night", "bbq"])
    assert found("the zebra crossing", scanner) == [("jailbreak_phrase", "zebra crossing")]
    assert found("a jazz night out", scanner) == [("jailbreak_phrase", "a jazz night")]
    assert found("bbq!", scanner) == [("jailbreak_phrase", "bbq")]
    assert found("bbqx abbq", scanner) == []


def test_a_phrase_anchored_past_its_first_letter_checks_the_letters_before() -> None:
    # "my" anchors on "y" and "bbq" on "q": the letters before must be there too.
    scanner = Scanner(jailbreak_phrases=["my secret", "bbq"])
    assert found("my secret!", scanner) == [("jailbreak_phrase", "my secret")]
    assert found("oy secret!", scanner) == []
    assert found("  q!", scanner) == []


def test_a_custom_pattern_that_matches_nothing_finds_nothing() -> None:
    scanner = Scanner([("empty", r"q*"), ("ticket", r"T-[0-9]+")])
    assert found("abc T-12 x", scanner) == [("ticket", "T-12")]


def test_a_custom_pattern_runs_on_the_text_itself() -> None:
    scanner = Scanner([("cafe", r"café-[0-9]{3}"), ("ticket", r"\bACME-[0-9]{4}\b")])
    assert found("order café-123 ok", scanner) == [("cafe", "café-123")]
    assert found("see ACME-1234 and xACME-1234", scanner) == [("ticket", "ACME-1234")]


def test_a_finding_that_ends_exactly_at_the_release_edge_goes_out_at_once() -> None:
    """The edge is `holdback` characters before the end: a finding ending right there
    is whole, so it is released (redacted) now, not held for the next push."""
    scanner = Scanner()
    email = "mail jane.doe@acme-corp.com"
    text = email + " " * scanner.holdback
    redactor = StreamRedactor(scanner, lambda f: "redact")
    assert redactor.push(text) == "mail [REDACTED:pii]"
