"""The strict audit's opening rows, on disk in one append before a call leaves.

`audit.on_failure: refuse` promises that a call's opening row is on disk before
anything is sent upstream. Committing it to SQLite on the event loop cost ~0.1 ms
a call (BENCH.md, "The opening row in a journal"): a WAL commit writes one 4 KiB
page for each b-tree the row touches, and a `requests` row touches six (the
table, its key, four indexes). One write(2) of the row as a JSON line costs a few
microseconds and is exactly as durable as that commit with `synchronous: normal`:
when either returns, the bytes are in the kernel's page cache, so both survive
the process dying (kill -9, OOM) and neither survives a power cut.

The ledger's writer inserts the same rows with its next batch; the journal only
matters when the process dies first, or when the ledger cannot take them.

Files: `<db>.instances/<instance>.journal-<n>`, beside the instance's lease
(recovery.py), so that only a dead instance's journal is ever read by another
process. The event loop appends to one segment and seals it at `SEGMENT_BYTES`;
the writer deletes a sealed segment once every row queued before the seal is
committed, and keeps it, to fold again, if any op was lost meanwhile. `fold`
inserts the rows of a segment that the ledger lacks (ON CONFLICT DO NOTHING: a
row the writer wrote, and perhaps closed since, stays as it is). Recovery folds a
dead instance's segments before it closes that instance's pending rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

from addon.ledger.db import LedgerDB
from addon.ledger.schema import PRIMARY_KEYS, q
from addon.ledger.store import clean_row
from addon.private_files import FILE_MODE, private_dir

log = logging.getLogger("llmgate.audit")

SEGMENT_BYTES = 1 << 20
# With less free space than this, the journal declines and the ledger decides: a
# disk too full for the ledger's next commit refuses strict calls at once, as
# before there was a journal, rather than once the writer's next batch has failed.
RESERVE_BYTES = 1 << 20
_INFIX = ".journal-"
# Segment numbers unique in the process: a ledger reopened by the same process
# (a new llmgate_db) keeps its instance id, and may have left a segment behind.
_numbers = itertools.count()


class Journal:
    """One instance's append-only segments. Used on the event loop only."""

    def __init__(self, directory: Path, instance_id: str) -> None:
        self._directory = directory
        self._stem = f"{instance_id}{_INFIX}"
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._short_of_space = False

    def append(self, table: str, rows: list[dict[str, Any]]) -> bool:
        """True once every row is in the current segment; False if none is (a torn
        write is cut off again, so that the segment's next line starts clean)."""
        try:
            data = b"".join(_line(table, row) for row in rows)
        except (TypeError, ValueError):  # not JSON: the writer's path reduces and counts it
            return False
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            if not self._room(self._fd):
                return False
            written = os.write(self._fd, data)
        except OSError as exc:
            log.error("audit journal: append failed (%s)", type(exc).__name__)
            self._cut_back()
            return False
        if written != len(data):  # a full disk, part way through
            self._cut_back()
            return False
        self._size += written
        return True

    @property
    def full(self) -> bool:
        return self._size >= SEGMENT_BYTES

    def seal(self) -> Path | None:
        """Close the current segment and return it (None if none was open): nothing
        more is appended to it, so the writer may delete it once its rows are in."""
        if self._fd is None:
            return None
        os.close(self._fd)
        sealed, self._fd, self._path, self._size = self._path, None, None, 0
        return sealed

    def _room(self, fd: int) -> bool:
        space = os.fstatvfs(fd)
        short = space.f_bavail * space.f_frsize < RESERVE_BYTES
        if short != self._short_of_space:
            self._short_of_space = short
            if short:
                log.warning(
                    "audit journal: under %d bytes free on the ledger's disk; "
                    "strict calls wait for the ledger's own commit",
                    RESERVE_BYTES,
                )
            else:
                log.warning("audit journal: room on the ledger's disk again")
        return not short

    def _open(self) -> None:
        private_dir(self._directory)
        path = self._directory / f"{self._stem}{next(_numbers)}"
        # O_EXCL: never append to a segment some earlier writer left behind.
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._path, self._size = path, 0

    def _cut_back(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self.seal()  # its torn tail stays last; fold skips it


class SealedSegments:
    """The writer thread's side: a sealed segment is deleted once the writer has
    applied the batch holding its retire op, or kept and folded in again when an op
    may have been lost before it."""

    def __init__(self) -> None:
        self.lost = False  # an op was lost (set by the writer's loss count)
        self._carried = False
        self._kept: list[Path] = []

    @property
    def kept(self) -> bool:
        return bool(self._kept)

    def begin_batch(self) -> None:
        self._carried, self.lost = self.lost, False

    def end_batch(self, retired: list[Path]) -> None:
        """Delete the segments this batch retired, or keep them if an op was lost in
        it or since the last retire. A loss in this batch also keeps the next one:
        ops after a retire in the batch belong to the next segment."""
        lost_here = self.lost
        for segment in retired:
            if self._carried or lost_here:
                self._kept.append(segment)  # some row before it may be missing
            else:
                unlink(segment)  # every row queued before it is in
        self.lost = lost_here or (self._carried and not retired)

    def fold_kept(self, conn: LedgerDB) -> list[Exception]:
        """Once the ledger takes writes again: fold the kept segments in and delete
        them. One that fails stays, for the next try or the next process to start."""
        failures: list[Exception] = []
        still: list[Path] = []
        for segment in self._kept:
            try:
                fold(conn, segment)
                unlink(segment)
            except Exception as exc:  # noqa: BLE001 - kept, and reported by the writer
                log.error("audit journal %s not folded yet (%s)", segment.name, type(exc).__name__)
                failures.append(exc)
                still.append(segment)
        self._kept = still
        return failures


def _line(table: str, row: dict[str, Any]) -> bytes:
    return json.dumps([table, row], separators=(",", ":")).encode() + b"\n"


def segments(directory: Path) -> dict[str, list[Path]]:
    """The segments in `directory`, by instance id, oldest first."""
    found: dict[str, list[tuple[int, Path]]] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    for name in names:
        instance, infix, number = name.rpartition(_INFIX)
        if infix and instance and number.isdigit():
            found.setdefault(instance, []).append((int(number), directory / name))
    return {i: [path for _, path in sorted(paths)] for i, paths in found.items()}


def fold(conn: LedgerDB, path: Path) -> int:
    """Insert the rows of segment `path` that the ledger lacks, in one transaction;
    the number of rows read. A line that is not a row (a tail torn by a power cut)
    is skipped and logged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    statements: dict[str, list[tuple[Any, ...]]] = {}
    skipped = 0
    for line in data.splitlines():
        try:
            table, row = json.loads(line)
            cleaned = clean_row(table, row)
            if PRIMARY_KEYS[table] not in cleaned:
                raise ValueError("no key")
        except Exception:  # noqa: BLE001 - any line that is not a row of ours
            skipped += 1
            continue
        sql = _insert_missing_sql(table, tuple(cleaned))
        statements.setdefault(sql, []).append(tuple(cleaned.values()))
    if skipped:
        log.warning("audit journal %s: %d line(s) that are not rows skipped", path.name, skipped)
    with conn.transaction():
        for sql, params in statements.items():
            conn.executemany(sql, params)
    return sum(len(params) for params in statements.values())


def unlink(path: Path) -> None:
    """Delete a segment whose rows are in; one that cannot be deleted is folded again,
    harmlessly, by the next process to start."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("audit journal %s not deleted (%s)", path.name, type(exc).__name__)


def _insert_missing_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(q(c) for c in columns)
    values = ", ".join("?" * len(columns))
    key = q(PRIMARY_KEYS[table])
    return f"INSERT INTO {q(table)} ({names}) VALUES ({values}) ON CONFLICT ({key}) DO NOTHING"
