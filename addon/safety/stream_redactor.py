"""`StreamRedactor`: the scanner over a streamed text, with a bounded delay.

Each pattern has a `reach`, the longest text that can begin one of its matches without
matching yet. A raw match (valid or not) that ends at the window's end may still grow, so
it is held from its start; text more than `holdback = max(reach)` from the end is final
and is released. An open private-key block is such a growing match: it is held until its
END line or `finish()`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from addon.safety.scanner import BACK, Action, Finding, Scanner

_KEY_END = re.compile(r"-----END [A-Z ]{0,20}PRIVATE KEY(?: BLOCK)?-----")


class StreamRedactor:
    """Sliding window over a streamed text. push() returns the text that is safe to release
    now, already redacted per the actions; text that could still be the start of a secret is
    held back (at most `holdback` chars, except inside an open private-key block, which is
    held/redacted until its END line or the end of the stream). One redactor per stream;
    an action of None releases the finding unchanged, like "log"."""

    def __init__(self, scanner: Scanner, actions: Callable[[Finding], Action | None]) -> None:
        self.scanner = scanner
        self.actions = actions
        self.findings: list[Finding] = []
        self.blocked: Finding | None = None
        self._ctx = ""  # released raw text, for what looks behind (labels, key ids, local parts)
        self._buf = ""  # held raw text
        self._base = 0  # stream offset of _buf[0]
        self._key_open = False  # _buf starts with a private-key block that has no END yet
        self._key_seen = 0
        self._done = False

    def push(self, text: str) -> str:
        if self.blocked is not None or self._done or not text:
            return ""
        self._buf += text
        # A growing key block is not rescanned until an END line arrives.
        if self._key_open and not _KEY_END.search(self._buf, max(0, self._key_seen - 64)):
            self._key_seen = len(self._buf)
            return ""
        return self._release(final=False)

    def finish(self) -> str:
        if self.blocked is not None or self._done:
            return ""
        self._done = True
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text, pos = self._ctx + self._buf, len(self._ctx)
        n = len(text)
        cands = self.scanner.candidates(text, pos)
        found = self.scanner.resolve(cands)
        cut = n
        if not final:
            cut = max(pos, n - self.scanner.holdback)
            for c in cands:
                if c.end + 1 >= n:  # may still grow: hold it whole
                    cut = min(cut, c.start)
            for f in found:
                if f.start < cut < f.end:  # a closed key block goes out at its END line
                    cut = f.end if f.name == "private_key" and f.end + 1 < n else f.start
        out: list[str] = []
        prev = pos
        for s, e, name, category, _ in found:
            if s >= cut:
                break
            finding = Finding(category, name, self._base + s - pos, self._base + e - pos, text[s:e])
            self.findings.append(finding)
            action = self.actions(finding)
            if action == "block":
                self.blocked = finding
                self._ctx = self._buf = ""
                return "".join(out) + text[prev:s]
            redacted = action == "redact"
            out += [text[prev:s], f"[REDACTED:{category}]"] if redacted else [text[prev:e]]
            prev = e
        out.append(text[prev:cut])
        self._base += cut - pos
        self._ctx, self._buf = text[max(0, cut - BACK) : cut], text[cut:]
        self._key_open = not final and any(
            c.name == "private_key" and c.start == cut and c.end == n for c in cands
        )
        self._key_seen = len(self._buf)
        return "".join(out)
