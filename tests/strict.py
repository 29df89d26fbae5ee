"""Helpers that keep a test from passing silently.

- `wait_until` polls a condition against a deadline, where a fixed sleep would
  either flake (too short) or pass without the condition ever being checked.
- `nonempty_glob` fails collection when a parametrisation over files finds none,
  which would otherwise collect zero cases and pass.
- `Workers` runs threads whose exceptions, failed asserts included, fail the test
  that started them: pytest only turns them into warnings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any


def wait_until[T](
    predicate: Callable[[], T], timeout: float = 10, what: str = "the condition", step: float = 0.02
) -> T:
    """The first truthy value of `predicate()`; AssertionError once `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: last {value!r}")
        time.sleep(step)


def nonempty_glob(folder: Path, pattern: str) -> list[Path]:
    """`sorted(folder.glob(pattern))`, refusing an empty match at collection time."""
    found = sorted(folder.glob(pattern))
    if not found:
        raise AssertionError(f"no files match {pattern!r} in {folder}: the cases would vanish")
    return found


def nonempty[T](cases: Iterable[T], what: str) -> list[T]:
    """`list(cases)`, refusing an empty list: a filter that drops every case passes silently."""
    out = list(cases)
    if not out:
        raise AssertionError(f"no cases for {what}")
    return out


class Workers:
    """Threads whose exceptions fail the test: `with Workers() as w: w.start(fn, arg)`.

    Leaving the block joins every thread and raises the first exception one of
    them raised (all of them, as an ExceptionGroup, when several did), or an
    AssertionError naming the threads still running after `timeout` seconds.
    """

    def __init__(self, timeout: float = 120) -> None:
        self.timeout = timeout
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, target: Callable[..., object], *args: Any, name: str | None = None) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # a failed assert is a BaseException too
                with self._lock:
                    self.errors.append(exc)

        # Daemon: a thread that hangs must not also hang the interpreter's exit.
        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        deadline = time.monotonic() + self.timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ExceptionGroup(f"{len(self.errors)} worker threads failed", self.errors)
        if alive:
            raise AssertionError(f"threads still running after {self.timeout} s: {alive}")

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.join()
            return
        # The body failed first: still wait for the threads, but report the body's error.
        deadline = time.monotonic() + self.timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
