"""Which llmgate processes sharing a ledger are alive, and closing the calls of dead ones.

On SQLite every process holds an exclusive flock on
`<db>.instances/<instance id>.lock` (`InstanceLease`) for as long as it runs; on
PostgreSQL, which processes on other machines share, a session advisory lock on a
hash of the id (`postgres.AdvisoryLease`). The kernel drops a flock (the server an
advisory lock) when its holder dies, however it dies (kill -9 included), so a lease
another process can take belongs to a dead process. That process will never close
its `pending` rows; `close_abandoned` closes them as `interrupted`.

flock, not fcntl's POSIX locks (which SQLite uses): a flock belongs to the open
file description, so closing some other descriptor of the file cannot drop it
(see addon.private_files), and two descriptors exclude each other even within
one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path
from typing import Any

from addon.ledger import journal
from addon.ledger.db import LedgerDB, is_postgres, open_db
from addon.ledger.store import open_database
from addon.private_files import private_dir, private_file

INTERRUPTED_REASON = "process_ended"
INTERRUPTED_ERROR = "the llmgate process handling this call ended before it finished"
# Request ids are the instance id (16 hex digits) and a counter; rows written before
# the instance_id column existed are attributed by that prefix.
ID_PREFIX_LENGTH = 16
# Instance ids come from the ledger's rows too; only these ever name a file.
_SAFE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def instances_dir(db_path: str | Path) -> Path:
    return Path(f"{db_path}.instances")


def lock_path(db_path: str | Path, instance_id: str) -> Path | None:
    """The instance's lock file; None for an id that cannot be a file name."""
    if not _SAFE_ID.fullmatch(instance_id):
        return None
    return instances_dir(db_path) / f"{instance_id}.lock"


class InstanceLease:
    """Says "instance `instance_id` is alive" to every process sharing the ledger.

    Take it before writing the instance's first row: until then, recovery in another
    process takes the instance's pending rows for a dead one's.
    """

    def __init__(self, db_path: str | Path, instance_id: str) -> None:
        self.instance_id = instance_id
        self._fd: int | None = None
        self._advisory: Any = None
        if is_postgres(db_path):
            from addon.ledger.postgres import AdvisoryLease

            self._advisory = AdvisoryLease(str(db_path), instance_id)
            return
        path = lock_path(db_path, instance_id)
        if path is None:
            raise ValueError(f"{instance_id!r} cannot be an instance id")
        private_dir(path.parent)
        private_file(path)
        fd = os.open(path, os.O_RDWR)  # not inherited by child processes (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"instance {instance_id} is held by another process") from None
        self.path = path
        self._fd = fd

    def close(self) -> None:
        if self._advisory is not None:
            self._advisory.close()
            self._advisory = None
        if self._fd is None:
            return
        # Removed while still locked, so no other process can find it lockable first.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> InstanceLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_alive(db_path: str | Path, instance_id: str) -> bool:
    """Whether some process holds the instance's lease now; changes nothing (doctor)."""
    if is_postgres(db_path):
        from addon.ledger import postgres

        db = open_db(db_path)
        try:
            return postgres.is_alive(db.raw, instance_id)
        finally:
            db.close()
    path = lock_path(db_path, instance_id)
    if path is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # Shared: two probes do not see each other as the instance.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def pending_by_instance(conn: LedgerDB) -> list[tuple[str, int, float | None]]:
    """(instance id, pending rows, oldest started_at), on any connection to the ledger."""
    owner = f"substr(id, 1, {ID_PREFIX_LENGTH})"
    if "instance_id" in conn.columns("requests"):
        owner = f"coalesce(instance_id, {owner})"
    rows = conn.execute(
        f"SELECT {owner} AS instance, count(*), min(started_at) FROM requests"
        " WHERE status = 'pending' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return [(str(i), int(n), oldest) for i, n, oldest in rows]


def close_abandoned(db_path: str | Path, own_instance: str, now: float | None = None) -> list[str]:
    """Close the pending rows of every dead instance but `own_instance`.

    Returns the instances found dead: those with pending rows, and those that left
    a lock file without any (their quota reservations may still be unsettled).
    An instance whose lease another process holds is never touched.
    """
    now = time.time() if now is None else now
    if is_postgres(db_path):
        return _close_abandoned_pg(str(db_path), own_instance, now)
    held: dict[str, int | None] = {}  # dead instance -> its lock, held until closed
    db = open_database(db_path)
    try:
        journals = journal.segments(instances_dir(db_path))
        candidates = {instance for instance, _, _ in pending_by_instance(db)}
        candidates |= _lock_file_ids(db_path) | set(journals)
        for instance in sorted(candidates - {own_instance}):
            dead, fd = _lock_if_dead(db_path, instance)
            if dead:
                held[instance] = fd
        # A dead instance's journal first: its rows may not have reached the ledger.
        folded = [segment for instance in held for segment in journals.get(instance, [])]
        for segment in folded:
            journal.fold(db, segment)
        if held:
            _interrupt(db, list(held), now)
        for segment in folded:
            journal.unlink(segment)
        for instance, fd in held.items():
            path = lock_path(db_path, instance)
            if fd is not None and path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    finally:
        for fd in held.values():
            if fd is not None:
                os.close(fd)
        db.close()
    return list(held)


def _close_abandoned_pg(url: str, own_instance: str, now: float) -> list[str]:
    """`close_abandoned` on PostgreSQL: an instance whose advisory lock this session can
    take is dead; the lock is held until its rows are closed. Only instances with
    pending rows are found: a lease leaves no trace once its session ends."""
    from addon.ledger import postgres

    db = open_database(url)
    held: list[str] = []
    try:
        candidates = {instance for instance, _, _ in pending_by_instance(db)}
        for instance in sorted(candidates - {own_instance}):
            if postgres.lock_if_dead(db.raw, instance):
                held.append(instance)
        if held:
            _interrupt(db, held, now)
    finally:
        for instance in held:
            postgres.unlock(db.raw, instance)
        db.close()
    return held


def _lock_file_ids(db_path: str | Path) -> set[str]:
    try:
        names = os.listdir(instances_dir(db_path))
    except FileNotFoundError:
        return set()
    return {name.removesuffix(".lock") for name in names if name.endswith(".lock")}


def _lock_if_dead(db_path: str | Path, instance: str) -> tuple[bool, int | None]:
    """(dead, the descriptor now holding its lock, if it has a lock file)."""
    path = lock_path(db_path, instance)
    if path is None:
        return True, None
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True, None  # never took a lease (an older llmgate), or already recovered
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False, None
    return True, fd


def _interrupt(conn: LedgerDB, instances: list[str], now: float) -> None:
    larger = "max" if conn.dialect == "sqlite" else "greatest"
    fields = (
        "UPDATE requests SET status = 'interrupted', reason = ?, error = ?, finished_at = ?,"
        f" latency_ms = {larger}((? - started_at) * 1000, 0) WHERE status = 'pending' AND "
    )
    values = (INTERRUPTED_REASON, INTERRUPTED_ERROR, now, now)
    with conn.transaction():
        conn.executemany(fields + "instance_id = ?", [(*values, i) for i in instances])
        conn.executemany(
            fields + f"instance_id IS NULL AND substr(id, 1, {ID_PREFIX_LENGTH}) = ?",
            [(*values, i) for i in instances],
        )
