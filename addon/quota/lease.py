"""Who may decide a SQLite quota file's calls from memory: its sole user, and only while
nobody else has it open.

Two flocks beside the file (`<file>.owner` and `<file>.guests`) say who uses it:
- the **owner** holds `.owner` exclusively. It alone reads and writes the file, so it
  may keep the windows in memory and write its rows behind (addon/quota/owned.py);
- a **guest** holds `.guests` shared, then `.owner` shared: every process that
  uses the file through SQLite transactions (a second gateway, the `llmgate`
  command, a test's `QuotaStore`). While a guest holds `.owner`, nobody can own it.

A guest that arrives while there is an owner waits for `.owner`. The owner looks for
guests every few milliseconds (`guest_waiting`: `.guests` cannot be taken
exclusively), writes out every row it holds and becomes a guest itself (`hand_over`):
`.guests` shared, then `.owner` shared, a downgrade no other process can slip into.
Until then the waiting guest has read nothing, so every decision the owner made
from memory came before the guest's first read: nothing is decided twice.

flock, not SQLite's own locks: the kernel drops a flock when its process dies (kill
-9 included), so a dead owner never holds a file; and two descriptors exclude each
other even within one process, which the tests rely on.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from addon.private_files import private_file

GUEST_WAIT_STEP_S = 0.005


class OwnerWillNotHandOver(TimeoutError):
    """The file's owner did not hand it over in time (its process is stuck)."""


def _open_lock(path: Path) -> int:
    private_file(path)
    return os.open(path, os.O_RDWR)  # not inherited by child processes (PEP 446)


class QuotaLease:
    """This process's standing on one quota file: owner, guest, or neither yet."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self._owner_fd = _open_lock(path.with_name(path.name + ".owner"))
        self._guests_fd = _open_lock(path.with_name(path.name + ".guests"))
        self._fds: tuple[int, ...] = (self._owner_fd, self._guests_fd)
        self.owner = False
        self.guest = False
        # The loop's operations and a watching thread both probe `.guests`.
        self._probe = threading.Lock()

    def try_own(self) -> bool:
        """Own the file if nobody uses it; False (nothing taken) if anybody does."""
        try:
            fcntl.flock(self._owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.owner = True
        return True

    def join(self, timeout_s: float) -> None:
        """Become a guest: wait up to `timeout_s` for an owner to hand over. Raises
        OwnerWillNotHandOver, holding nothing, when it does not."""
        with self._probe:
            fcntl.flock(self._guests_fd, fcntl.LOCK_SH)  # an owner's probe is brief
        try:
            self._shared_owner_lock(timeout_s)
        except BaseException:
            fcntl.flock(self._guests_fd, fcntl.LOCK_UN)
            raise
        self.guest = True

    def guest_waiting(self) -> bool:
        """True when another process holds, or waits to hold, the file as a guest."""
        with self._probe:
            try:
                fcntl.flock(self._guests_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(self._guests_fd, fcntl.LOCK_UN)
            return False

    def hand_over(self) -> None:
        """From owner to guest; the caller has written out everything it held."""
        with self._probe:
            fcntl.flock(self._guests_fd, fcntl.LOCK_SH)
        fcntl.flock(self._owner_fd, fcntl.LOCK_SH)  # a downgrade: granted at once
        self.owner = False
        self.guest = True

    def close(self) -> None:
        fds, self._fds = self._fds, ()
        for fd in fds:
            os.close(fd)  # drops its flock
        self.owner = self.guest = False

    def _shared_owner_lock(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._owner_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OwnerWillNotHandOver(
                        "the quota file's owning llmgate process did not hand it over in "
                        f"{timeout_s:g} s; if it is stuck, stop it"
                    ) from None
                time.sleep(GUEST_WAIT_STEP_S)
