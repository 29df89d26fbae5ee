"""`Scanner.scan` finds `Finding`s (category, detector, span) in a text; `redact` and
`Finding.masked` make them safe to forward or store.

Every pass of `detectors` runs on one same-length view of the text (`_Views`). Non-ASCII
text is scanned through an ASCII copy ("?" per other character), so that every view keeps
the text's offsets. On a text of PREFILTER_MIN_CHARS or more, `prefilter` first says
which passes can match at all, and only those run.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

from addon.safety.detectors import (
    CATEGORY_OF,
    DEFAULT_JAILBREAK_PHRASES,
    builtin_passes,
    char_before,
    custom_pass,
    phrase_passes,
    random_looking,
)
from addon.safety.prefilter import Prefilter

Action = Literal["log", "redact", "block"]

_RANK = {name: i for i, name in enumerate(CATEGORY_OF)}  # a tie goes to the earlier name
_CAT_RANK = {"secrets": 0, "pii": 1, "custom": 2, "jailbreak": 3}
_B64 = frozenset(string.ascii_letters + string.digits + "/+=")
BACK = 192  # how far before the released edge a match may begin (a label, a key id)
_PAIR_GAP = 100  # an unlabelled AWS secret counts only this close to a key id
_MASK = bytes.maketrans(
    (string.digits + string.ascii_uppercase + string.ascii_lowercase).encode(),
    b"0" * 10 + b"A" * 26 + b"a" * 26,
)


@dataclass(frozen=True)
class Finding:
    category: str
    detector: str
    start: int
    end: int
    value: str

    def masked(self) -> str:
        """An excerpt safe to store: never more than 9 characters of the value."""
        if self.detector == "private_key":
            return "-----…----"  # an unterminated block's tail is key material
        value = self.value
        if len(value) >= 12:
            return f"{value[:5]}…{value[-4:]}"
        return f"…{value[-2:]}" if len(value) >= 6 else "…"


class _Cand(NamedTuple):
    start: int
    end: int
    name: str
    category: str
    ok: bool


class _Views:
    """Same-length views of one text; each pass runs on one of them. The ASCII ones
    start as bytes, which is what the prefilter scans; a pass decodes the view it runs on."""

    def __init__(self, text: str) -> None:
        self.text, self.ascii_bytes = text, text.encode("ascii", "replace")

    def as_bytes(self, view: str) -> bytes:
        return getattr(self, f"{view}_bytes")  # type: ignore[no-any-return]

    @cached_property
    def ascii(self) -> str:
        return self.text if self.text.isascii() else self.ascii_bytes.decode()

    @cached_property
    def lower_bytes(self) -> bytes:
        return self.ascii_bytes.lower()

    @cached_property
    def lower(self) -> str:
        return self.lower_bytes.decode()

    @cached_property
    def mask_bytes(self) -> bytes:
        return self.ascii_bytes.translate(_MASK)

    @cached_property
    def mask(self) -> str:
        return self.mask_bytes.decode()

    @cached_property
    def ulower(self) -> str:  # U+0130 lowercases to two characters: keep the offsets
        return "".join(c if len(c.lower()) != 1 else c.lower() for c in self.text)


# Shorter texts skip the prefilter and run every pass (~7 µs for 19 passes). In a
# loop on its own Hyperscan is cheaper even there, but in the proxy its tables are
# cold at every call: gating every text of small calls cost ~3% of throughput
# (three ABBA-ordered blocks of bench runs; with this threshold, none), and from
# about this size the passes it skips cost more than that.
PREFILTER_MIN_CHARS = 1024

_B64_40 = re.compile(r"[A-Za-z0-9/+]{40}")
_HEX = re.compile(r"[0-9a-fA-F]+")


class Scanner:
    def __init__(
        self,
        custom_patterns: Iterable[tuple[str, str]] = (),
        jailbreak_phrases: list[str] | None = None,
        prefilter: bool = True,  # False: every pass scans every text (the bench and tests)
        prefilter_from: int = PREFILTER_MIN_CHARS,
    ) -> None:
        phrases = DEFAULT_JAILBREAK_PHRASES if jailbreak_phrases is None else jailbreak_phrases
        self._passes = builtin_passes() + phrase_passes(phrases)
        self._passes += [custom_pass(name, pattern) for name, pattern in custom_patterns]
        paired = 40 + _PAIR_GAP + 20 + 1  # an AWS secret waiting for its key id
        self.holdback: int = max(paired, *(p.reach for p in self._passes))
        self.prefilter = Prefilter(self._passes, enabled=prefilter)
        self._prefilter_from = prefilter_from

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings sorted by start."""
        found = self.resolve(self.candidates(text))
        return [Finding(c, n, s, e, text[s:e]) for s, e, n, c, _ in found]

    def candidates(self, text: str, pos: int = 0) -> list[_Cand]:
        """Raw matches that start at or after `pos`: the valid ones, and the invalid ones
        that reach the end (they may still become valid as a stream grows)."""
        views, start, n = _Views(text), max(0, pos - BACK), len(text)
        out: list[_Cand] = []
        key_ids: list[tuple[int, int]] = []
        live = self.prefilter.live(views) if n >= self._prefilter_from else None
        for k, p in enumerate(self._passes):
            if live is not None and k not in live:
                continue
            src, i = getattr(views, p.view), start
            # i past the end: a pattern that matches the empty string (a custom `x*`)
            # would otherwise match at the end again and again, for ever.
            while i <= len(src) and (m := p.regex.search(src, i)) is not None:
                hit = p.fn(text, m, m.start() - p.back)
                i = m.start() + 1  # a rejected match may hide a real one inside it
                if hit is None:
                    continue
                name, s, e, ok = hit
                if ok:
                    i = max(i, e)
                    if name == "aws_access_key_id":
                        key_ids.append((s, e))
                if s >= pos and (ok or e + 1 >= n):
                    out.append(_Cand(s, e, name, "custom" if p.custom else CATEGORY_OF[name], ok))
        for s, e in key_ids:  # a bare 40-character base64 value is a secret only near a key id
            for m in _B64_40.finditer(text, max(0, s - _PAIR_GAP - 40), e + _PAIR_GAP + 40):
                a, b, value = m.start(), m.end(), m.group()
                edged = char_before(text, a) not in _B64 and text[b : b + 1] not in _B64
                if a >= pos and edged and random_looking(value) and not _HEX.fullmatch(value):
                    out.append(_Cand(a, b, "aws_secret_access_key", "secrets", True))
        return out

    @staticmethod
    def resolve(cands: list[_Cand]) -> list[_Cand]:
        """Merge overlapping valid matches into one span named by the most specific: a
        private key over anything inside it, secrets over PII, then the longer match,
        then the detector listed first in CATEGORIES."""
        good = sorted({c for c in cands if c.ok}, key=lambda c: (c.start, -c.end))
        out: list[_Cand] = []
        group: list[_Cand] = []
        end = -1
        for c in [*good, None]:
            if group and (c is None or c.start >= end):
                best = max(group, key=lambda g: (
                    g.name == "private_key", -_CAT_RANK[g.category], g.end - g.start,
                    -_RANK.get(g.name, len(_RANK)),
                ))  # fmt: skip
                out.append(best._replace(start=group[0].start, end=end))
                group = []
            if c is not None:
                end = max(end, c.end) if group else c.end
                group.append(c)
        return out


def redact(text: str, findings: list[Finding]) -> str:
    """Replace each finding's span with "[REDACTED:<category>]"."""
    out: list[str] = []
    prev = 0
    for f in sorted(findings, key=lambda f: f.start):
        if f.end > prev:
            out += [text[prev : max(f.start, prev)], f"[REDACTED:{f.category}]"]
            prev = f.end
    return "".join(out) + text[prev:]


def value_hmac(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
