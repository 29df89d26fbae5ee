"""One pass over a text for every detector: Hyperscan says which passes can match at all.

Each builtin pass is a regex that `re` runs at ~0.5 ms per MB even where it finds
nothing, and a 1 MB prompt went through 19 of them. Hyperscan (Intel's multi-pattern
engine, the one Snort and Suricata scan with) compiles every pass's regex in prefilter
mode, which may report a match the regex would not make but never misses one, and
scans each view of the text once for all of them. A pass it does not report cannot
match and is skipped; a pass it reports runs as before, over the whole text, so the
findings are exactly those of the full scan.

Any doubt runs the full scan: without hyperscan (not installed, or a CPU it does not
support), for a pass whose regex it cannot compile, for a view it is not given
(custom patterns run on the original text, non-ASCII phrases on its Unicode lower
case), and when a scan errs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from addon.safety.detectors import Pass

log = logging.getLogger(__name__)

try:
    import hyperscan
except ImportError as exc:  # a CPU or platform without a wheel: the full scan, said once
    hyperscan = None
    UNAVAILABLE = f"hyperscan is not importable ({exc}); every detector scans every text"
else:
    UNAVAILABLE = ""

# The views whose passes are gated, and the bytes each is checked on. The lower-case
# view's passes are checked on the ASCII view without case, which reports everything
# they match there (and saves a scan). On these ASCII bytes Hyperscan's classes are
# Python's with re.ASCII (tests/test_safety_prefilter.py compares them byte by byte).
GATED_VIEWS: dict[str, tuple[str, bool]] = {
    "ascii": ("ascii", False),
    "lower": ("ascii", True),
    "mask": ("mask", False),
}


class ByteViews(Protocol):
    def as_bytes(self, view: str) -> bytes: ...


# "c(?<=abc)": the detectors' idiom for a fast literal prefix in `re` (see detectors.py).
# Hyperscan drops a look-behind in prefilter mode; written as the literal "abc" it
# says the same and keeps the prefilter tight.
_LEAD_LOOKBEHIND = re.compile(r"(?P<c>[A-Za-z0-9])\(\?<=(?P<text>[A-Za-z0-9_ ]*(?P=c))\)")


def prefilter_pattern(pattern: str) -> str:
    """The pattern Hyperscan gets: a leading look-behind of the idiom made literal."""
    lead = _LEAD_LOOKBEHIND.match(pattern)
    return lead["text"] + pattern[lead.end() :] if lead else pattern


@lru_cache(maxsize=64)
def _database(patterns: tuple[tuple[str, bool], ...]) -> Any:
    """Compiled once per set of (pattern, caseless): a scanner is built per policy (in
    the tests, by the hundred), and a compile costs milliseconds."""
    assert hyperscan is not None
    base = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH
    db = hyperscan.Database()
    db.compile(
        expressions=[prefilter_pattern(pattern).encode("ascii") for pattern, _ in patterns],
        ids=list(range(len(patterns))),
        flags=[base | (hyperscan.HS_FLAG_CASELESS if caseless else 0) for _, caseless in patterns],
    )
    return db


class Prefilter:
    def __init__(self, passes: Sequence[Pass], enabled: bool = True) -> None:
        self._gates: list[tuple[str, Any, tuple[int, ...]]] = []  # view, database, passes
        self._scratch = threading.local()  # a scan's scratch space is one thread's
        if hyperscan is None and enabled:
            _say_once(UNAVAILABLE)
        gated: dict[str, list[int]] = {}
        for k, p in enumerate(passes):
            if p.view in GATED_VIEWS and not p.custom and p.regex.pattern.isascii():
                gated.setdefault(GATED_VIEWS[p.view][0], []).append(k)
        for scanned, indexes in gated.items() if hyperscan is not None and enabled else ():
            caseless = [GATED_VIEWS[passes[k].view][1] for k in indexes]
            patterns = tuple(zip((passes[k].regex.pattern for k in indexes), caseless, strict=True))
            try:
                db = _database(patterns)
            except hyperscan.error as exc:
                log.warning("safety prefilter off for the %s view's passes: %s", scanned, exc)
                continue
            self._gates.append((scanned, db, tuple(indexes)))
        self._always = frozenset(range(len(passes))).difference(*(g[2] for g in self._gates))

    @property
    def ungated(self) -> frozenset[int]:
        """The passes that scan every text whatever the prefilter says."""
        return self._always

    def live(self, views: ByteViews) -> frozenset[int] | None:
        """The indexes of the passes that may match, or None: run them all."""
        if not self._gates:
            return None
        found = set(self._always)
        try:
            for view, db, indexes in self._gates:
                db.scan(
                    views.as_bytes(view),
                    match_event_handler=_reported,
                    context=(found, indexes),
                    scratch=self._scratch_for(view, db),
                )
        except Exception as exc:  # noqa: BLE001 - whatever failed, the full scan runs
            log.warning("safety prefilter: a scan failed, so every detector ran: %s", exc)
            return None
        return frozenset(found)

    def _scratch_for(self, view: str, db: Any) -> Any:
        spaces: dict[str, Any] = self._scratch.__dict__.setdefault("spaces", {})
        if (scratch := spaces.get(view)) is None:
            scratch = spaces[view] = hyperscan.Scratch(db)
        return scratch


@lru_cache(maxsize=1)
def _say_once(message: str) -> None:
    log.warning("safety prefilter off: %s", message)


_Seen = tuple[set[int], tuple[int, ...]]  # the passes reported so far; a database's passes


def _reported(i: int, _start: int, _end: int, _flags: int, seen: _Seen) -> None:
    found, indexes = seen
    found.add(indexes[i])
