"""What a quota window is asked and answers, whichever store counts it: the demand of
a call, a window bound to its scope key, its state, a refusal, and the arithmetic
of limits and waits that every store (store.py, redis_store.py, owned.py) shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from addon.config import QuotaWindow

KINDS = ("requests", "input_tokens", "output_tokens", "cost_usd")
LIMIT_NAMES = tuple(f"max_{kind}" for kind in KINDS)
NANO = 1_000_000_000
Units = tuple[int, int, int, int]  # a Demand with the cost in nano-dollars


@dataclass(frozen=True)
class Demand:
    """What one call consumes (or is reserved to consume)."""

    requests: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def units(self) -> Units:
        return (self.requests, self.input_tokens, self.output_tokens, round(self.cost_usd * NANO))


def demand_of(units: Sequence[int]) -> Demand:
    return Demand(units[0], units[1], units[2], units[3] / NANO)


@dataclass(frozen=True)
class AppliedWindow:
    """A configured window bound to the scope key it counts under ("user:alice", "global")."""

    window: QuotaWindow
    scope_key: str


@dataclass(frozen=True)
class WindowState:
    window: QuotaWindow
    scope_key: str
    used: Demand  # settled consumption inside the window now
    reserved: Demand  # unsettled reservations inside the window now
    reset_at: float | None  # when the oldest counted row leaves the window

    def remaining(self) -> dict[str, float | int | None]:
        """limit - used - reserved per limit name; never negative, as headers expect."""
        out: dict[str, float | int | None] = {}
        for kind, name in zip(KINDS, LIMIT_NAMES, strict=True):
            limit = getattr(self.window, name)
            if limit is None:
                out[name] = None
                continue
            left = limit - getattr(self.used, kind) - getattr(self.reserved, kind)
            out[name] = max(round(left, 9), 0.0) if kind == "cost_usd" else max(left, 0)
        return out


@dataclass(frozen=True)
class Exceeded:
    window: QuotaWindow
    scope_key: str
    limit_name: str
    limit: float
    current: float  # used + reserved
    requested: float
    retry_after: float  # seconds until this demand fits this window
    never_fits: bool = False  # the demand alone exceeds the limit (or the limit is 0)


def worse(a: Exceeded | None, b: Exceeded) -> Exceeded:
    """The answer a caller must heed: waiting cannot help one that never fits, else the
    longest wait, since the caller needs every window at once."""
    return a if a and (a.never_fits, a.retry_after) >= (b.never_fits, b.retry_after) else b


def ceil_ms(seconds: float) -> float:
    # round() first so float noise (30.000000000004) does not cost an extra ms.
    return math.ceil(round(max(seconds, 0.0) * 1000, 6)) / 1000


def violations(
    a: AppliedWindow, sums: Sequence[int], want: Units, wait: Callable[[int, int], float]
) -> Iterator[Exceeded]:
    """Every limit of `a` that `want` on top of `sums` (used + reserved units) breaks.

    `wait(kind index, excess units)` is the store's answer to "how long until that
    much has left the window"; both stores free rows oldest first (see `_wait`).
    """
    seconds = a.window.window_seconds
    for i, (kind, name) in enumerate(zip(KINDS, LIMIT_NAMES, strict=True)):
        limit = getattr(a.window, name)
        if limit is None:
            continue
        cap = limit_units(kind, limit)
        have = sums[i] + sums[4 + i]
        if cap > 0 and have + want[i] <= cap:
            continue
        never = cap == 0 or want[i] > cap
        after = float(seconds) if never else wait(i, have + want[i] - cap)
        scale = NANO if kind == "cost_usd" else 1
        yield Exceeded(
            a.window, a.scope_key, name, limit, have / scale, want[i] / scale, after, never
        )


def limit_units(kind: str, limit: float) -> int:
    """A limit in the stores' integer units (cost in nano-dollars)."""
    return round(limit * NANO) if kind == "cost_usd" else int(limit)
