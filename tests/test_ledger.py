"""Pricing, cost and the audit writer."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from addon.config import Pricing
from addon.ledger.pricing import Pricer, cost_usd, estimate_tokens, load_pricing
from addon.ledger.store import cap_body
from addon.ledger.writer import AuditWriter
from addon.protocols.canonical import Usage
from addon.sqlite_wal import connect_wal
from tests.proxy import ROOT


def test_longest_prefix_wins_and_route_pricing_overrides() -> None:
    table = load_pricing(ROOT / "policies" / "pricing.yaml")
    # Rates from addon/ledger/data/pricing.yaml (policies/pricing.yaml adds none).
    mini = table.price_for("gpt-4o-mini-2024-07-18")
    assert mini is not None and (mini.input, mini.output, mini.cache_read) == (0.15, 0.60, 0.075)
    full = table.price_for("gpt-4o-2024-08-06")
    assert full is not None and (full.input, full.output, full.cache_read) == (2.50, 10.00, 1.25)
    assert table.price_for("no-such-model") is None
    own = Pricing(input=1, output=2)
    assert Pricer(table).price("gpt-4o", own) is own


def test_cost_uses_all_four_token_kinds() -> None:
    price = Pricing(input=3, output=15, cache_read=0.3, cache_write=3.75)
    usage = Usage(input_tokens=1_000_000 + 200 + 100, output_tokens=10,
                  cache_read_tokens=200, cache_write_tokens=100)  # fmt: skip
    expected = (1_000_000 * 3 + 200 * 0.3 + 100 * 3.75 + 10 * 15) / 1_000_000
    assert cost_usd(usage, price) == pytest.approx(expected)
    assert cost_usd(usage, None) is None


def test_unpriced_model_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer(load_pricing(None))
    assert pricer.price("mystery", None) is None
    assert pricer.price("mystery", None) is None
    assert sum("mystery" in r.message for r in caplog.records) == 1


def test_estimate_is_four_characters_per_token() -> None:
    assert estimate_tokens(["abcd", "efghi"]) == 3
    assert estimate_tokens([]) == 0


def test_payload_cap_marks_truncation() -> None:
    assert cap_body(b"short", 10) == ("short", False)
    text, truncated = cap_body("é".encode() * 10, 5)
    assert truncated and text.startswith("éé") and "truncated, 20 bytes" in text


def test_writer_batches_and_flushes_everything_on_close(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "a.db")
    for i in range(500):
        writer.insert("requests", {"id": f"r{i}", "status": "pending", "started_at": i})
        writer.update("requests", f"r{i}", {"status": "completed"})
    writer.close()
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("select count(*), min(status), max(status) from requests").fetchone() == (
        500, "completed", "completed",
    )  # fmt: skip
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:  # sqlite3's own `with` does not close
        return conn.execute(sql).fetchall()


def test_unknown_columns_are_dropped_and_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    column = f"no_such_{tmp_path.name}"  # named once per process: a name of this test's own
    writer = AuditWriter(tmp_path / "a.db")
    for i in range(3):
        writer.insert("requests", {"id": f"r{i}", "status": "pending", column: "v4lue"})
    writer.update("requests", "r0", {column: 1})  # nothing left to write
    writer.close()
    assert rows(writer.path, "select count(*) from requests") == [(3,)]
    said = [r.getMessage() for r in caplog.records if column in r.getMessage()]
    assert len(said) == 1 and "v4lue" not in said[0]


def test_synchronous_is_applied(tmp_path: Path) -> None:
    for setting, code in (("normal", 1), ("full", 2)):
        with closing(connect_wal(tmp_path / "a.db", synchronous=setting)) as conn:
            assert conn.execute("pragma synchronous").fetchone() == (code,)
    with pytest.raises(ValueError):
        connect_wal(tmp_path / "a.db", synchronous="off")  # type: ignore[arg-type]
    writer = AuditWriter(tmp_path / "a.db", synchronous="full")
    writer.insert("requests", {"id": "r"})
    writer.close()
    assert rows(tmp_path / "a.db", "select id from requests") == [("r",)]
