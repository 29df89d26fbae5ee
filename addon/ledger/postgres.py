"""PostgreSQL specifics: connecting, and the instance lease as an advisory lock.

On SQLite an instance's lease is a flock beside the file, which only processes on
one machine can see. On PostgreSQL it is a session advisory lock on a hash of the
instance id, held by a connection of its own for as long as the process lives:
the server drops it when that session ends, however the process died (kill -9,
a lost machine once TCP keepalive notices), so a free lock means a dead instance.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from typing import Any

import psycopg

log = logging.getLogger("llmgate.audit")

CONNECT_TIMEOUT_S = 5
# A dead peer's session (and so its lease) is noticed within about a minute.
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def connect(url: str, *, read_only: bool = False) -> psycopg.Connection[Any]:
    """An autocommit connection; the CLI's refuses writes."""
    options = "-c default_transaction_read_only=on" if read_only else None
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="llmgate",
        options=options,
        **_KEEPALIVE,  # type: ignore[arg-type]
    )


def lock_key(instance_id: str) -> int:
    """The advisory lock of an instance: a signed 64-bit hash of its id."""
    digest = hashlib.sha256(b"llmgate-instance:" + instance_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLease:
    """`recovery.InstanceLease` on PostgreSQL: a session lock on its own connection.

    A server restart ends the session and with it the lock; a keeper thread notices
    (a `select 1` every `CHECK_SECONDS`) and takes the lock again on a new session,
    so the instance is not taken for dead for longer than the server was away.
    """

    CHECK_SECONDS = 5.0

    def __init__(self, url: str, instance_id: str) -> None:
        self.instance_id = instance_id
        self._url = url
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = self._take()
        if self._conn is None:
            raise RuntimeError(f"instance {instance_id} is held by another process")
        self._keeper = threading.Thread(target=self._keep, name="llmgate-lease", daemon=True)
        self._keeper.start()

    def _take(self) -> psycopg.Connection[Any] | None:
        conn = connect(self._url)
        got = conn.execute("select pg_try_advisory_lock(%s)", [lock_key(self.instance_id)])
        row = got.fetchone()
        if row and row[0]:
            return conn
        conn.close()
        return None

    def _keep(self) -> None:
        while not self._stop.wait(self.CHECK_SECONDS):
            conn = self._conn
            try:
                if conn is not None and not conn.broken:
                    conn.execute("select 1")
                    continue
            except psycopg.Error:
                pass
            with contextlib.suppress(Exception):
                if conn is not None:
                    conn.close()
            try:
                self._conn = self._take()
            except psycopg.Error:
                self._conn = None  # the server is still away: try again next time
                continue
            if self._conn is None:
                log.error("audit: instance %s's lease is held by another session", self.instance_id)
            else:
                log.warning("audit: instance lease taken again after the server came back")

    def close(self) -> None:
        self._stop.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing the session drops the lock
                conn.close()

    @property
    def held(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.broken and not conn.closed


def is_alive(conn: psycopg.Connection[Any], instance_id: str) -> bool:
    """Whether a session holds the instance's lock now; changes nothing (doctor)."""
    key = lock_key(instance_id)
    # Shared, and given back at once: two probes do not see each other as the instance.
    got = conn.execute("select pg_try_advisory_lock_shared(%s)", [key]).fetchone()
    if got and got[0]:
        conn.execute("select pg_advisory_unlock_shared(%s)", [key])
        return False
    return True


def lock_if_dead(conn: psycopg.Connection[Any], instance_id: str) -> bool:
    """Take a dead instance's lock on `conn` (held until `unlock`); False if it lives."""
    got = conn.execute("select pg_try_advisory_lock(%s)", [lock_key(instance_id)]).fetchone()
    return bool(got and got[0])


def unlock(conn: psycopg.Connection[Any], instance_id: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute("select pg_advisory_unlock(%s)", [lock_key(instance_id)])
