"""Credential handling, pinned down to the byte: each test here kills mutants that
the e2e suites catch only slowly or not at all (see MUTATION.md)."""

from __future__ import annotations

import locale
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from addon.credentials import (
    SecretStore,
    credential_header,
    key_shaped,
    mask_fields,
    mask_query,
    masked,
    read_secrets_file,
    replace_found,
    replace_in_fields,
    storable_headers,
    strip_credential_params,
    unmask_fields,
)


@contextmanager
def ascii_locale() -> Iterator[None]:
    """The C locale, whose default encoding is ASCII: a reader relying on the default
    would fail on a non-ASCII secret on such a host."""
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


def secrets_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secrets.env"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_environment_wins_over_the_file_and_empty_means_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SecretStore(str(secrets_file(tmp_path, "A=from-file\nB=file-b\nE=\n")))
    monkeypatch.setenv("A", "from-env")
    monkeypatch.setenv("B", "")  # an empty variable must not hide the file's value
    monkeypatch.delenv("E", raising=False)
    monkeypatch.delenv("LLMGATE_KILL_UNSET", raising=False)
    assert store.get("A") == "from-env"
    assert store.get("B") == "file-b"
    assert store.get("E") is None  # an empty value is no secret
    assert store.get("LLMGATE_KILL_UNSET") is None


def test_a_store_without_a_file_reads_the_environment_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMGATE_KILL_SECRET", "s3cret")
    monkeypatch.delenv("LLMGATE_KILL_UNSET", raising=False)
    assert SecretStore().get("LLMGATE_KILL_SECRET") == "s3cret"
    assert SecretStore("").get("LLMGATE_KILL_SECRET") == "s3cret"
    assert SecretStore().get("LLMGATE_KILL_UNSET") is None


def test_the_secrets_file_format(tmp_path: Path) -> None:
    text = (
        "\n"
        "   # an indented comment\n"
        "export  SPACED = ' padded value '\n"
        'QUOTED="q=1"\n'
        "EQUALS=a=b=c\n"
        "EMPTY=\n"
        "UNICODE=pässwörd\n"
        "  TRIMMED=x  \n"
        "XES='XmasX'\n"
    )
    assert read_secrets_file(secrets_file(tmp_path, text)) == {
        "SPACED": " padded value ",  # quotes keep the spaces they enclose
        "QUOTED": "q=1",
        "EQUALS": "a=b=c",
        "EMPTY": "",
        "UNICODE": "pässwörd",
        "TRIMMED": "x",
        "XES": "XmasX",  # only quotes are stripped from the ends
    }


def test_the_secrets_file_is_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    path = secrets_file(tmp_path, "PASS=pässwörd\n")
    with ascii_locale():
        assert read_secrets_file(path) == {"PASS": "pässwörd"}


@pytest.mark.parametrize(
    ("text", "line"),
    [("A=1\nno-equals-sign\n", 2), ("=value-without-name\n", 1), ("# c\n\n  = x\n", 3)],
)
def test_a_bad_line_names_its_number_but_never_its_text(
    tmp_path: Path, text: str, line: int
) -> None:
    path = secrets_file(tmp_path, text)
    with pytest.raises(ValueError) as err:
        read_secrets_file(path)
    assert str(err.value) == f"{path}:{line}: expected NAME=value"


def test_a_missing_secrets_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    with pytest.raises(ValueError) as err:
        SecretStore(str(missing))
    assert str(err.value) == f"{missing}: secrets file not found (LLMGATE_SECRETS)"


def test_credential_header_shapes() -> None:
    assert credential_header("authorization", "sk-1") == ("authorization", "Bearer sk-1")
    assert credential_header("x-api-key", "sk-ant-1") == ("x-api-key", "sk-ant-1")
    assert credential_header("x-goog-api-key", "AIza1") == ("x-goog-api-key", "AIza1")


@pytest.mark.parametrize(
    ("path", "stripped"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/models?", "/v1/models"),
        ("/m?key=1", "/m"),
        ("/m?KEY=1&Api_Key=2&apikey=3&ACCESS_TOKEN=4", "/m"),
        ("/m?alt=sse&key=1&empty=", "/m?alt=sse&empty="),
        ("/m?keys=1&token=2", "/m?keys=1&token=2"),
        ("/m?q=a+b&key=1", "/m?q=a+b"),
        ("/m?a=1?b&key=2", "/m?a=1%3Fb"),  # the first "?" starts the query
        # A raw non-UTF-8 byte reaches us as a surrogate (mitmproxy decodes with
        # surrogateescape); it must come back as that byte, percent-encoded.
        ("/m?x=\udcff&key=1", "/m?x=%FF"),
    ],
)
def test_strip_credential_params(path: str, stripped: str) -> None:
    assert strip_credential_params(path) == stripped


def test_storable_headers_from_a_mapping_keeps_only_harmless_names() -> None:
    headers = {
        "Content-Type": "application/json",
        "X-Request-Id": "r1",
        "Proxy-Authorization": "Basic eA==",
        "X-Auth-Token": "t",
        "OpenAI-Organization": "org",
        "X-Session-Id": "s",
        "X-Credential": "c",
        "Set-Cookie": "a=b",
        "X-My-Secret": "s",
        "api-key": "k",
    }
    assert storable_headers(headers) == {
        "content-type": "application/json",
        "x-request-id": "r1",
        "openai-organization": "org",
    }


def test_storable_headers_from_raw_fields_decode_latin_1() -> None:
    fields = [
        (b"User-Agent", b"caf\xe9/1.0"),
        (b"X-API-KEY", b"k"),
        (b"Accept", b"*/*"),
    ]
    assert storable_headers(fields) == {"user-agent": "café/1.0", "accept": "*/*"}


@pytest.mark.parametrize(
    ("value", "label", "shown"),
    [
        ("Bearer sk-abcdefghijklmnop", "route secret K", "Bearer sk-…(route secret K)"),
        ("  token   sk-abcdefghijklm  ", "L", "token sk-…(L)"),  # 16 characters: a hint
        ("Bearer sk-abcdefghijkl", "L", "Bearer …(L)"),  # 15 characters: none
        ("sk-ant-api03-abcdefgh", "L", "sk-…(L)"),
        ("short", "L", "…(L)"),
        ("", "L", "…(L)"),
        ("one two three four five", "L", "one…(L)"),  # not "scheme value": hint the whole
    ],
)
def test_masked(value: str, label: str, shown: str) -> None:
    assert masked(value, label) == shown


@pytest.mark.parametrize(
    ("value", "shaped"),
    [
        (b"lg-abcdefgh", True),
        (b"Bearer lg-abc_def-1", True),
        (b"LG-ABCDEFGH", True),
        (b"x=Lg-abcdefgh", True),
        (b"lg-abcdefg", False),  # seven characters after the prefix
        (b"xlg-abcdefgh", False),
        (b"1lg-abcdefgh", False),
        (b"-lg-abcdefgh", False),
        (b"_lg-abcdefgh", False),
        (b"lg_abcdefgh", False),
        (b"g-abcdefgh", False),
        (b"", False),
    ],
)
def test_key_shaped(value: bytes, shaped: bool) -> None:
    assert key_shaped(value) is shaped


def test_mask_fields_masks_credentials_and_keeps_the_originals() -> None:
    fields = (
        (b"Host", b"api.openai.com"),
        (b"Authorization", b"Bearer sk-caller-own-key-1234"),
        (b"X-Trace", b"lg-abcdefghijklmnopqrstuvwx"),
        (b"Cookie", b"s=1"),
        (b"Accept", b"*/*"),
    )
    kept, originals = mask_fields(fields, "caller's key")
    assert kept == (
        (b"Host", b"api.openai.com"),
        (b"Authorization", "Bearer sk-…(caller's key)".encode()),
        (b"X-Trace", "lg-…(llmgate key)".encode()),
        (b"Cookie", "…(caller's key)".encode()),
        (b"Accept", b"*/*"),
    )
    assert originals == (
        (b"Authorization", b"Bearer sk-caller-own-key-1234"),
        (b"X-Trace", b"lg-abcdefghijklmnopqrstuvwx"),
        (b"Cookie", b"s=1"),
    )


def test_mask_fields_names_an_llmgate_key_in_a_credential_header() -> None:
    kept, originals = mask_fields(((b"x-api-key", b"LG-ABCDEFGHIJKLMNOPQRST"),), "route")
    assert kept == ((b"x-api-key", "LG-…(llmgate key)".encode()),)
    assert originals == ((b"x-api-key", b"LG-ABCDEFGHIJKLMNOPQRST"),)


def test_mask_fields_masks_what_the_scanner_found_and_never_masks_twice() -> None:
    fields = (
        (b"X-Note", b"password hunter2-hunter2!"),
        (b"X-Other", b"plain"),
        (b"Authorization", "Bearer sk-…(route secret K)".encode()),
    )
    kept, originals = mask_fields(fields, "found", lambda value: b"hunter2" in value)
    assert kept == (
        (b"X-Note", "password hun…(found)".encode()),
        (b"X-Other", b"plain"),
        (b"Authorization", "Bearer sk-…(route secret K)".encode()),
    )
    assert originals == ((b"X-Note", b"password hunter2-hunter2!"),)


def test_mask_fields_decodes_latin_1() -> None:
    kept, _ = mask_fields(((b"X-Api-Key", b"caf\xe9caf\xe9caf\xe9caf\xe9caf\xe9"),), "L")
    assert kept == ((b"X-Api-Key", "caf…(L)".encode()),)


def test_unmask_fields_puts_the_originals_back_whatever_their_case() -> None:
    fields = (
        (b"Host", b"h"),
        (b"authorization", "Bearer sk-…(L)".encode()),
        (b"Accept", b"*/*"),
    )
    originals = ((b"Authorization", b"Bearer sk-real-key-0123456789"),)
    assert unmask_fields(fields, originals) == (
        (b"Host", b"h"),
        (b"Accept", b"*/*"),
        (b"Authorization", b"Bearer sk-real-key-0123456789"),
    )
    assert unmask_fields(fields, ()) == fields


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/v1/models", "/v1/models"),
        ("/m?alt=sse&x=a%20b", "/m?alt=sse&x=a%20b"),  # nothing to mask: untouched
        (
            "/m?key=AIzaSyA-1234567890abcdef&alt=sse",
            "/m?key=AIz...%28route+secret+G%29&alt=sse",
        ),
        ("/m?API_KEY=short&Access_Token=", "/m?API_KEY=...%28route+secret+G%29"
         "&Access_Token=...%28route+secret+G%29"),
    ],
)  # fmt: skip
def test_mask_query(path: str, shown: str) -> None:
    assert mask_query(path, "route secret G") == shown


def test_mask_query_splits_at_the_first_question_mark() -> None:
    assert mask_query("/m?a=1?b&key=k", "G") == "/m?a=1%3Fb&key=...%28G%29"


def test_mask_query_keeps_a_raw_byte() -> None:
    assert mask_query("/m?x=\udcff&key=k", "G") == "/m?x=%FF&key=...%28G%29"


def test_replace_found_replaces_every_value_everywhere() -> None:
    values = {"hunter2": "[PASSWORD_1]", "4111111111111111": "[CARD_1]"}
    text = "pw hunter2, again hunter2, card 4111111111111111"
    assert replace_found(text, values) == "pw [PASSWORD_1], again [PASSWORD_1], card [CARD_1]"
    assert replace_found(text, {}) == text


def test_replace_in_fields_reads_latin_1_and_writes_utf_8() -> None:
    fields = ((b"X-Note", b"caf\xe9 hunter2"), (b"Accept", b"*/*"))
    assert replace_in_fields(fields, {"hunter2": "[P]"}) == (
        (b"X-Note", b"caf\xc3\xa9 [P]"),
        (b"Accept", b"*/*"),
    )
