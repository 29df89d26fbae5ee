"""The per-call log line reaches logging handlers, not mitmproxy's deprecated add_log event."""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy.log import LegacyLogEvents

from addon.gateway.call_log import log_call_line, spare_the_legacy_event, wanted


class _Loop:
    def __init__(self) -> None:
        self.scheduled: list[Any] = []

    def call_soon_threadsafe(self, callback: Any, hook: Any) -> None:
        self.scheduled.append(hook.entry.msg)


class _Master:
    def __init__(self) -> None:
        self.event_loop = _Loop()
        self.addons = self  # LegacyLogEvents schedules addons.trigger

    def trigger(self, hook: Any) -> None:
        raise AssertionError("scheduled only, never run here")


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_call_line_skips_the_add_log_event_and_reaches_the_other_handlers() -> None:
    master = _Master()
    legacy = LegacyLogEvents(master)  # type: ignore[arg-type]
    kept = _Kept()
    root = logging.getLogger()
    level = root.level
    root.addHandler(legacy)
    root.addHandler(kept)
    root.setLevel(logging.INFO)
    try:
        spare_the_legacy_event()
        spare_the_legacy_event()  # idempotent: one filter
        assert len(legacy.filters) == 1
        log = logging.getLogger("llmgate.test-call-log")
        log_call_line(log, "abc123 alice openai_chat gpt-4o completed 200")
        log.info("llmgate: something else")
        assert kept.lines == ["abc123 alice openai_chat gpt-4o completed 200",
                              "llmgate: something else"]  # fmt: skip
        assert [m.split("] ", 1)[1] for m in master.event_loop.scheduled] == [
            "llmgate: something else"
        ]
    finally:
        root.removeHandler(legacy)
        root.removeHandler(kept)
        root.setLevel(level)


def test_no_call_line_is_built_when_nothing_would_show_it() -> None:
    """`mitmdump -q`: the terminal log shows errors only; the line is skipped."""
    legacy = LegacyLogEvents(_Master())  # type: ignore[arg-type]
    quiet, shown = _Kept(), _Kept()
    quiet.setLevel(logging.ERROR)
    root = logging.getLogger()
    saved_handlers, level = root.handlers[:], root.level
    root.handlers = [legacy, quiet]
    root.setLevel(logging.DEBUG)
    log = logging.getLogger("llmgate.test-call-log-wanted")
    try:
        assert not wanted(log)
        root.addHandler(shown)  # mitmdump without -q, or mitmweb's event log
        assert wanted(log)
        root.setLevel(logging.WARNING)
        assert not wanted(log)
    finally:
        root.handlers = saved_handlers
        root.setLevel(level)
