"""What every quota store offers, whatever it keeps its counters in.

Two stores implement it as peers: `QuotaStore` (SQLite, one file beside the
ledger, the embedded default) and `RedisQuotaStore` (one Redis server shared by
a fleet of llmgate processes). Both count the same sliding windows the same way
(see addon/quota/store.py for the semantics) and answer with the same
`WindowState`/`Exceeded` values, so budget.py, the worker and the 429 never know
which one they talk to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # store.py imports the errors below
    from addon.quota.windows import AppliedWindow, Demand, Exceeded, WindowState


class QuotaUnavailable(Exception):  # noqa: N818 - the name is what the caller is told
    """The store could not be reached or could not answer: the call is refused (503
    `quota_unavailable`) unless `quota.on_unavailable: allow` admits it unmetered."""


class DuplicateReservation(ValueError):
    """A reservation id used twice: a bug in the caller, never a reason to admit."""


class QuotaBackend(Protocol):
    def reserve(
        self,
        reservation_id: str,
        windows: list[AppliedWindow],
        demand: Demand,
        now: float | None = None,
    ) -> list[WindowState] | Exceeded:
        """Admit `demand` in every window or in none; Exceeded names the longest wait."""
        ...

    def settle(self, reservation_id: str, actual: Demand, now: float | None = None) -> None:
        """Replace the reserved amounts by the actual usage, keeping the reservation time."""
        ...

    def settle_many(self, settlements: list[tuple[str, Demand]]) -> None: ...

    def release(self, reservation_id: str) -> None:
        """The call never went out: it counts nowhere."""
        ...

    def release_instances(self, instance_ids: list[str]) -> int:
        """Release the unsettled reservations whose ids begin with these instance ids."""
        ...

    def states(
        self, windows: list[AppliedWindow], now: float | None = None
    ) -> list[WindowState]: ...

    def prune(self, older_than: float, scope_keys: Iterable[str] | None = None) -> int: ...

    def close(self) -> None: ...
