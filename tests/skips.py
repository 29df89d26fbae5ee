"""The skips a test run may contain, each with the reason it is acceptable.

A skip is a test that did not run, and a run with one looks green: so any skip
whose node id matches no pattern here fails the run (see `pytest_sessionfinish`
in tests/conftest.py), and every skip is printed with its reason in a "skips"
section at the end of the run.

Keys are fnmatch patterns over pytest node ids, e.g.
``"tests/test_x.py::test_y[*]"``; values say why skipping is right and when the
entry can go. Keep the list short: a test that cannot run here should rather
fail, or not be collected at all, with the reason written beside it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

# Empty: the last skip (test_protocols' vendor error format) became a test of its own.
ALLOWED_SKIPS: dict[str, str] = {}


def allowed_reason(nodeid: str, allowed: dict[str, str] = ALLOWED_SKIPS) -> str | None:
    """The documented reason for skipping `nodeid`, or None when it may not skip."""
    return next((why for pattern, why in allowed.items() if fnmatchcase(nodeid, pattern)), None)
