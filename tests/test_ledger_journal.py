"""The strict audit's journal: opening rows on disk in one append, folded into the
ledger by its writer, or by the next process to start when the writer never got to
them. Real files, real SQLite, real processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from addon import cli
from addon.ledger import journal
from addon.ledger.db import open_db
from addon.ledger.recovery import InstanceLease, close_abandoned, instances_dir
from addon.ledger.store import open_database
from addon.ledger.writer import AuditWriter
from tests.postgres_server import ledger_at
from tests.proxy import ROOT

__all__ = ["ledger_at"]  # the fixture, parametrised over SQLite and PostgreSQL

INSTANCE = "journal000000001"


def rows(db: Path, sql: str, *params: object) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def opening(n: int) -> dict[str, object]:
    return {"id": f"{INSTANCE}{n:016x}", "started_at": 100.0 + n, "status": "pending",
            "instance_id": INSTANCE, "user": "alice", "model": "gpt-4o-mini"}  # fmt: skip


def on_disk(db: Path) -> list[dict[str, object]]:
    """Every row in the instance's journal segments, as the file says."""
    found = []
    for segment in journal.segments(instances_dir(db)).get(INSTANCE, []):
        found += [json.loads(line)[1] for line in segment.read_bytes().splitlines()]
    return found


def committed_once(writer: AuditWriter) -> None:
    assert asyncio.run(writer.insert_durably("requests", {"id": "first", "status": "completed"}))


@pytest.fixture
def journaled(tmp_path: Path) -> Iterator[tuple[AuditWriter, Path]]:
    db = tmp_path / "audit.db"
    writer = AuditWriter(db, linger=30.0)  # nothing reaches the ledger unless asked
    writer.open_journal(instances_dir(db), INSTANCE)
    yield writer, db
    writer.close()


def test_rows_are_on_disk_when_it_returns_and_in_the_ledger_after_the_writer(
    journaled: tuple[AuditWriter, Path],
) -> None:
    writer, db = journaled
    # Until the ledger has taken a write, the ledger itself decides.
    assert writer.insert_journaled("requests", opening(0)) is False
    committed_once(writer)
    assert writer.insert_journaled("requests", opening(1), opening(2)) is True
    assert on_disk(db) == [opening(1), opening(2)]
    assert rows(db, "select count(*) from requests where status = 'pending'") == [(0,)]
    (segment,) = journal.segments(instances_dir(db))[INSTANCE]
    assert oct(os.stat(segment).st_mode & 0o777) == "0o600"
    writer.flush()
    assert rows(db, "select id, user from requests where status = 'pending' order by id") == [
        (opening(1)["id"], "alice"),
        (opening(2)["id"], "alice"),
    ]
    writer.close()
    # Every row before the seal is in: the segment is gone.
    assert journal.segments(instances_dir(db)) == {}
    assert writer.health()["rows_lost"] == 0


def test_a_full_segment_is_sealed_and_deleted_once_its_rows_are_in(
    journaled: tuple[AuditWriter, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, db = journaled
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 1000)
    committed_once(writer)
    for n in range(30):
        assert writer.insert_journaled("requests", opening(n))
    assert len(journal.segments(instances_dir(db))[INSTANCE]) > 3
    writer.flush()
    # Only the open segment is left; the sealed ones were retired after their rows.
    assert len(journal.segments(instances_dir(db))[INSTANCE]) == 1
    assert rows(db, "select count(*) from requests where status = 'pending'") == [(30,)]


def test_it_declines_what_the_ledger_must_decide(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    writer = AuditWriter(db)
    try:
        committed_once(writer)
        # No journal opened (no lease taken): nothing to append to.
        assert writer.insert_journaled("requests", opening(0)) is False
        writer.open_journal(instances_dir(db), INSTANCE)
        # A value that needs reducing goes the writer's way, which reduces and counts it.
        assert writer.insert_journaled("requests", {"id": "odd", "model": Odd()}) is False
        assert writer.insert_journaled("requests", opening(1)) is True
    finally:
        writer.close()
    assert writer.insert_journaled("requests", opening(2)) is False  # closed
    fsync = AuditWriter(tmp_path / "fsync.db", synchronous="full")
    try:  # its rows wait for an fsync, which a journal append does not do
        fsync.open_journal(instances_dir(tmp_path / "fsync.db"), INSTANCE)
        committed_once(fsync)
        assert fsync.insert_journaled("requests", opening(3)) is False
    finally:
        fsync.close()
    assert journal.segments(instances_dir(tmp_path / "fsync.db")) == {}


def test_postgres_ledgers_keep_the_writers_group_commit(ledger_at: str | Path) -> None:
    writer = AuditWriter(ledger_at)
    try:
        writer.open_journal(Path(f"{ledger_at}.instances"), INSTANCE)
        committed_once(writer)
        journaled = writer.insert_journaled("requests", opening(0))
    finally:
        writer.close()
    assert journaled is isinstance(ledger_at, Path)


class Odd:
    def __str__(self) -> str:
        raise ValueError("unprintable")


def test_a_failing_ledger_stops_the_journal_and_gets_its_rows_once_it_recovers(
    journaled: tuple[AuditWriter, Path],
) -> None:
    writer, db = journaled
    committed_once(writer)
    assert writer.insert_journaled("requests", opening(1))
    writer._faults.disk_full = True  # the test-only fault LLMGATE_TEST_FAULTS sets, now
    writer.flush()
    assert writer.health()["rows_lost"] == 1
    # The ledger failed its last write: strict calls are decided by it again.
    assert writer.insert_journaled("requests", opening(2)) is False
    assert asyncio.run(writer.insert_durably("requests", {"id": "refused"})) is False
    writer._faults.disk_full = False
    assert asyncio.run(writer.insert_durably("requests", {"id": "back", "status": "completed"}))
    writer.flush()
    # The row the failure lost was folded in from the journal, and the segment is gone.
    assert rows(db, "select id, status from requests where id = ?", opening(1)["id"]) == [
        (opening(1)["id"], "pending")
    ]
    assert journal.segments(instances_dir(db)) == {}
    assert writer.insert_journaled("requests", opening(3)) is True


def test_fold_adds_only_missing_rows_and_skips_a_torn_tail(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    open_database(db).close()
    conn = open_db(db)
    try:
        conn.execute(
            "insert into requests (id, status) values (?, 'completed')", (opening(1)["id"],)
        )
        segment = tmp_path / f"{INSTANCE}.journal-0"
        lines = [json.dumps(["requests", opening(n)]) for n in (1, 2)]
        segment.write_text("\n".join(lines) + '\n["requests", {"id": "torn', encoding="utf-8")
        assert journal.fold(conn, segment) == 2
    finally:
        conn.close()
    # The closed row stays closed; the missing one is added as the journal had it.
    assert rows(db, "select id, status, user from requests order by id") == [
        (opening(1)["id"], "completed", None),
        (opening(2)["id"], "pending", "alice"),
    ]


CRASHER = textwrap.dedent(
    """\
    import os, sys, time, asyncio
    from pathlib import Path
    from addon.ledger.recovery import InstanceLease, instances_dir
    from addon.ledger.writer import AuditWriter
    db, instance = Path(sys.argv[1]), sys.argv[2]
    lease = InstanceLease(db, instance)
    writer = AuditWriter(db, linger=60.0)
    writer.open_journal(instances_dir(db), instance)
    assert asyncio.run(writer.insert_durably("requests", {"id": "warm", "status": "completed"}))
    for n in range(5):
        row = {"id": f"{instance}{n:016x}", "status": "pending", "instance_id": instance,
               "started_at": 100.0}
        assert writer.insert_journaled("requests", row)
    print("journaled", flush=True)
    time.sleep(120)
    """
)


def test_a_process_killed_before_its_writer_ran_leaves_rows_the_next_one_folds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "audit.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(db), INSTANCE], cwd=ROOT, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == "journaled\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    # The writer lingered: the ledger never saw the five rows, only the journal has them.
    assert rows(db, "select count(*) from requests where instance_id = ?", INSTANCE) == [(0,)]
    assert len(journal.segments(instances_dir(db))[INSTANCE]) == 1
    # `llmgate doctor` says so (no gateway runs here: it exits 1 after its report).
    with pytest.raises(SystemExit):
        cli.main(["--db", str(db), "doctor", "--proxy", "127.0.0.1:9", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["journals"] == [{"instance": INSTANCE, "segments": 1, "alive": False}]
    with InstanceLease(db, "own0000000000000"):
        assert close_abandoned(db, "own0000000000000", now=103.0) == [INSTANCE]
    assert rows(db, "select status, reason, count(*) from requests where instance_id = ?"
                " group by 1, 2", INSTANCE) == [("interrupted", "process_ended", 5)]  # fmt: skip
    assert journal.segments(instances_dir(db)) == {}


def test_a_live_instances_journal_is_never_read(journaled: tuple[AuditWriter, Path]) -> None:
    writer, db = journaled
    with InstanceLease(db, INSTANCE):  # this instance is alive
        committed_once(writer)
        assert writer.insert_journaled("requests", opening(1))
        assert close_abandoned(db, "own0000000000000") == []
        assert len(journal.segments(instances_dir(db))[INSTANCE]) == 1
        assert rows(db, "select count(*) from requests where status = 'pending'") == [(0,)]


def test_a_disk_short_of_room_or_a_value_json_cannot_write_leaves_the_journal_as_it_was(
    journaled: tuple[AuditWriter, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, db = journaled
    committed_once(writer)
    assert writer.insert_journaled("requests", opening(1))
    monkeypatch.setattr(journal, "RESERVE_BYTES", 1 << 62)  # no disk has that much free
    assert writer.insert_journaled("requests", opening(2)) is False
    monkeypatch.undo()
    assert writer.insert_journaled("requests", opening(3))
    direct = journal.Journal(instances_dir(db), "direct0000000001")
    assert direct.append("requests", [{"id": "x", "model": {1, 2}}]) is False
    assert direct.seal() is None  # nothing was written, not even a segment's first line
    assert on_disk(db) == [opening(1), opening(3)]


def test_a_loss_keeps_every_segment_whose_rows_it_may_have_touched(tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / f"{INSTANCE}.journal-{n}" for n in range(4))
    for segment in (a, b, c, d):
        segment.write_bytes(b"")
    sealed = journal.SealedSegments()
    sealed.begin_batch()
    sealed.lost = True  # what the writer's loss count sets: an op of this batch lost
    sealed.end_batch([a])  # its rows may be the lost one: kept
    sealed.begin_batch()
    sealed.end_batch([b])  # ops after a's retire in that batch were b's: kept too
    sealed.begin_batch()
    sealed.end_batch([c])  # a batch with no loss since: every row before it is in
    sealed.begin_batch()
    sealed.lost = True
    sealed.end_batch([])  # a loss in a batch that retired nothing...
    sealed.begin_batch()
    sealed.end_batch([d])  # ...keeps the next segment retired
    assert [s.exists() for s in (a, b, c, d)] == [True, True, False, True]
    assert sealed.kept
