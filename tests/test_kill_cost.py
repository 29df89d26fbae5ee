"""Cost and the local token estimate, to the last digit: each test kills mutants of
addon/ledger/pricing.py that test_ledger lets through (see MUTATION.md)."""

from __future__ import annotations

import locale
import logging
from pathlib import Path

import pytest

from addon.config import ConfigError, Pricing
from addon.ledger.pricing import (
    BUILTIN_PRICING,
    Pricer,
    PricingTable,
    cost_usd,
    estimate_tokens,
    load_pricing,
)
from addon.protocols.canonical import Usage


def test_cache_rates_default_to_the_input_rate() -> None:
    price = Pricing(input=2, output=8)
    usage = Usage(
        input_tokens=1000, output_tokens=100, cache_read_tokens=300, cache_write_tokens=200
    )
    # 500 uncached + 300 read + 200 written, all at the input rate, then the output.
    assert cost_usd(usage, price) == 0.0028


def test_each_token_kind_has_its_own_rate() -> None:
    price = Pricing(input=3, output=15, cache_read=0.3, cache_write=3.75)
    assert cost_usd(Usage(input_tokens=1_000_000), price) == 3.0
    assert cost_usd(Usage(output_tokens=1_000_000), price) == 15.0
    read = Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert cost_usd(read, price) == 0.3
    written = Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000)
    assert cost_usd(written, price) == 3.75
    assert cost_usd(Usage(), price) == 0.0


def test_cached_tokens_beyond_the_input_count_never_cost_negative_input() -> None:
    # A provider that reports more cached tokens than input tokens (it happens)
    # must not be credited for the difference, nor charged one token extra.
    price = Pricing(input=1, output=1, cache_read=0, cache_write=0)
    usage = Usage(input_tokens=10, cache_read_tokens=8, cache_write_tokens=4)
    assert cost_usd(usage, price) == 0.0


def test_cost_is_rounded_to_ten_decimals() -> None:
    price = Pricing(input=1.23456789, output=0)
    assert cost_usd(Usage(input_tokens=1), price) == 1.2346e-06


def test_estimate_rounds_up_and_counts_every_text() -> None:
    assert estimate_tokens(["a"]) == 1
    assert estimate_tokens(["abcd"]) == 1
    assert estimate_tokens(["abcde"]) == 2
    assert estimate_tokens(["ab", "cd", "e"]) == 2
    assert estimate_tokens(["", ""]) == 0
    assert estimate_tokens(["x" * 4001]) == 1001


def test_price_for_takes_the_longest_matching_prefix_in_any_order() -> None:
    table = PricingTable(
        models={
            "gpt-4o-mini": Pricing(input=0.15, output=0.6),
            "gpt-4o": Pricing(input=2.5, output=10),
            "gpt": Pricing(input=9, output=9),
        }
    )
    assert table.price_for("gpt-4o-mini-2024") == Pricing(input=0.15, output=0.6)
    assert table.price_for("gpt-4o-2024") == Pricing(input=2.5, output=10)
    assert table.price_for("gpt-3.5") == Pricing(input=9, output=9)
    assert table.price_for("claude") is None
    assert PricingTable().price_for("gpt-4o") is None


def test_the_users_table_overlays_the_builtin_one(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(
        "models:\n  gpt-4o: {input: 1, output: 2}\n  house-model: {input: 5, output: 6}\n",
        encoding="utf-8",
    )
    table = load_pricing(path)
    assert table.price_for("gpt-4o") == Pricing(input=1, output=2)
    assert table.price_for("house-model-v2") == Pricing(input=5, output=6)
    # Untouched built-in entries stay.
    assert table.price_for("gpt-4o-mini") == Pricing(input=0.15, output=0.60, cache_read=0.075)


def test_no_table_or_a_missing_one_is_the_builtin_table(tmp_path: Path) -> None:
    builtin = load_pricing(None)
    assert builtin.price_for("gpt-4o") == Pricing(input=2.50, output=10.00, cache_read=1.25)
    assert load_pricing(tmp_path / "absent.yaml") == builtin
    assert load_pricing(BUILTIN_PRICING) == builtin


def test_a_table_with_every_model_commented_out_is_empty_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text("models:\n  # gpt-4o: {input: 1, output: 2}\n", encoding="utf-8")
    assert load_pricing(path) == load_pricing(None)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_pricing(empty) == load_pricing(None)


def test_the_users_table_is_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text("# prix en dollars, évidemment\nmodels:\n  m: {input: 1, output: 2}\n",
                    encoding="utf-8")  # fmt: skip
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # ASCII by default: only an explicit UTF-8 reads it
    try:
        assert load_pricing(path).price_for("m") == Pricing(input=1, output=2)
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


def test_a_broken_table_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text("models:\n  gpt-4o: {input: -1, output: 2}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_pricing(path)
    assert str(err.value).startswith(f"{path}: 1 validation error for PricingTable")
    path.write_text("models: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_pricing(path)
    assert str(err.value).startswith(f"{path}: while parsing a flow sequence")


def test_an_unreadable_table_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "pricing.yaml"
    folder.mkdir()  # exists, but is no file
    with pytest.raises(ConfigError) as err:
        load_pricing(folder)
    assert str(err.value) == (
        f"{folder}: cannot read the price table: [Errno 21] Is a directory: '{folder}'"
    )


def test_the_unpriced_warning_names_the_model_once_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pricer = Pricer(PricingTable())
    with caplog.at_level(logging.WARNING, logger="llmgate.ledger"):
        assert pricer.price("mystery-1", None) is None
        assert pricer.price("mystery-1", None) is None
        assert pricer.price("mystery-2", None) is None
        assert pricer.price("mystery-3", Pricing(input=1, output=1)) == Pricing(input=1, output=1)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "llmgate.ledger",
            "WARNING",
            "no price for model 'mystery-1': its cost is recorded as NULL",
        ),
        (
            "llmgate.ledger",
            "WARNING",
            "no price for model 'mystery-2': its cost is recorded as NULL",
        ),
    ]
