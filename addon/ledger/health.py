"""The audit writer's counters, and the faults the test suite can inject into it."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("llmgate.audit")

FAULTS_VARIABLE = "LLMGATE_TEST_FAULTS"
KNOWN_FAULTS = ("ledger_raise_once", "ledger_disk_full")
DISK_FULL = "database or disk is full"


@dataclass
class Faults:
    """Test-only faults, named in LLMGATE_TEST_FAULTS (see `AuditWriter`)."""

    raise_once: bool = False
    disk_full: bool = False

    @classmethod
    def from_environment(cls) -> Faults:
        names = {n.strip() for n in os.environ.get(FAULTS_VARIABLE, "").split(",") if n.strip()}
        for name in sorted(names - set(KNOWN_FAULTS)):
            log.warning("%s: unknown fault %r ignored", FAULTS_VARIABLE, name)
        if names & set(KNOWN_FAULTS):
            log.warning("%s: injecting %s", FAULTS_VARIABLE, ", ".join(sorted(names)))
        return cls("ledger_raise_once" in names, "ledger_disk_full" in names)

    def before_write(self) -> None:
        if self.disk_full:
            raise sqlite3.OperationalError(DISK_FULL)


def describe_error(exc: BaseException) -> str:
    """The type, and the message only of SQLite's errors and PostgreSQL's connection
    errors (server gone, refused): other messages may quote a body or a value."""
    name = type(exc).__name__
    if isinstance(exc, sqlite3.Error) or _is_pg_connection_error(exc):
        return f"{name}: {' '.join(str(exc).split())[:200]}"
    return name


def _is_pg_connection_error(exc: BaseException) -> bool:
    # By name, so that SQLite-only installs never import psycopg for a log line.
    return any(
        kind.__module__.startswith("psycopg") and kind.__name__ == "OperationalError"
        for kind in type(exc).__mro__
    )


def where(exc: BaseException) -> str:
    """An exception's type and innermost frame, never its message."""
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return describe_error(exc) + place


class WriterStats:
    """Counters shared by the writer, its supervisor and the threads that queue ops.

    Every op ends as exactly one of written (as queued), reduced (in reduced form)
    or lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written = 0
        self._reduced = 0
        self._lost = 0
        self._restarts = 0
        self._last_error: str | None = None
        self._last_error_at: float | None = None

    def count(self, written: int = 0, reduced: int = 0, lost: int = 0) -> None:
        with self._lock:
            self._written += written
            self._reduced += reduced
            self._lost += lost

    def error(self, exc: BaseException) -> None:
        text = describe_error(exc)
        with self._lock:
            self._last_error = text
            self._last_error_at = time.time()

    def restarted(self) -> None:
        with self._lock:
            self._restarts += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rows_written": self._written,
                "rows_reduced": self._reduced,
                "rows_lost": self._lost,
                "restarts": self._restarts,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
            }
