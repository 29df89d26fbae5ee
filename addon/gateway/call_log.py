"""The one log line per call, kept off mitmproxy's deprecated `add_log` event.

mitmproxy 12 still turns every log record into an `AddLogHook` (its
`LegacyLogEvents` handler): a wake-up of the event loop through its self-pipe,
then the hook offered to every addon, each time. For a line written on every
call this cost more than writing it (the profile in BENCH.md: ~4% of the event
loop with one line per call). The hook is deprecated since mitmproxy 9 in
favour of logging handlers, and mitmproxy's own consumers (the terminal log of
mitmdump, mitmweb's event log) are logging handlers: they still get the line.
Only the deprecated event leaves it out.
"""

from __future__ import annotations

import logging

from mitmproxy.log import LegacyLogEvents

CALL_LINE = "llmgate_call_line"  # set on the record by `extra`


class _NotACallLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, CALL_LINE, False)


def wanted(log: logging.Logger) -> bool:
    """Whether a call line would be shown anywhere: `mitmdump -q` shows no INFO line,
    and then the line is not even built (it is not free: ~50 µs per call)."""
    if not log.isEnabledFor(logging.INFO):
        return False
    current: logging.Logger | None = log
    while current is not None:
        for handler in current.handlers:
            if handler.level <= logging.INFO and not isinstance(handler, LegacyLogEvents):
                return True
        current = current.parent if current.propagate else None
    return False


def log_call_line(log: logging.Logger, line: str) -> None:
    log.info(line, extra={CALL_LINE: True})


def spare_the_legacy_event() -> None:
    """Keep call lines out of mitmproxy's `add_log` event (idempotent)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LegacyLogEvents) and not any(
            isinstance(f, _NotACallLine) for f in handler.filters
        ):
            handler.addFilter(_NotACallLine())
