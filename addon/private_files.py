"""Files only llmgate's own user may read: the ledger, its quota file, the HMAC key.

The ledger holds prompts and replies, the key store's hashes and the HMAC key
that makes findings' hashes unguessable; none of it is for other local users.
Files are created 0600 (and a directory llmgate creates, 0700); a file found
with group or other permission bits is tightened, with one log line saying so.
SQLite gives a database's `-wal` and `-shm` the main file's mode, so the main
file is made private before SQLite opens it.

An existing database file is never opened here, only stat'ed and chmod'ed by
path: closing any descriptor of a file drops every POSIX lock this process
holds on it, including the locks of SQLite connections on other threads, and
two processes could then both believe they hold SQLite's write lock.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

log = logging.getLogger("llmgate")

FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm")

# Held from creating a file to closing its descriptor. Every store passes through
# it before SQLite opens the file, so while that descriptor is open no connection
# of this process can hold a lock on the file.
_CREATING = threading.Lock()


def private_dir(path: Path) -> None:
    """Create `path` 0700 when it is missing; an existing directory is left alone.

    It may be a shared directory (a temporary one, a home) that is not ours to change.
    """
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    # mkdir's mode is filtered by the umask; say exactly what is meant.
    os.chmod(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Create `path` empty and 0600 if it is missing, else tighten its mode (see `tighten`)."""
    private_dir(path.parent)
    with _CREATING:
        try:
            # O_EXCL: a descriptor is only ever opened on a file nobody has open yet.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            return
        except FileExistsError:
            pass
    tighten(path)


def tighten(path: Path) -> None:
    """Drop group and other permission bits of an existing file; a missing file is fine."""
    try:
        old = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    new = old & ~0o077
    if new != old:
        os.chmod(path, new)
        log.warning("%s was open to other users: mode changed from %04o to %04o", path, old, new)


def private_sqlite(path: Path) -> None:
    """The database file and whatever `-wal`/`-shm` a previous run left, before opening."""
    private_file(path)
    tighten_sqlite_side_files(path)


def tighten_sqlite_side_files(path: Path) -> None:
    for suffix in SQLITE_SIDE_FILES:
        tighten(path.with_name(path.name + suffix))
