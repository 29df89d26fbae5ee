"""Pricing, cost and the local token estimate.

Cost is computed from the four token kinds with the normalised usage of
`addon.protocols.canonical.Usage`: uncached input, cache reads, cache writes and
output, each at its own per-million rate. A model without a price has no cost
(NULL), never a cost of zero.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from addon.config import ConfigError, Pricing
from addon.protocols.canonical import Usage

log = logging.getLogger("llmgate.ledger")

# The documented local estimate: about four characters of text per token, the
# rule of thumb OpenAI and Anthropic both publish for English text and code.
CHARS_PER_TOKEN = 4
# Inside the package, so an installed llmgate always finds it (pyproject's package-data).
BUILTIN_PRICING = Path(__file__).parent / "data" / "pricing.yaml"


class PricingTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, Pricing] = {}

    def price_for(self, model: str) -> Pricing | None:
        """Longest model-name prefix wins, so `gpt-4o-mini` is not priced as `gpt-4o`."""
        best: str | None = None
        for prefix in self.models:
            if model.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return self.models[best] if best is not None else None


def load_pricing(path: Path | None) -> PricingTable:
    """The built-in table with the user's table at `path` (if it exists) over it.

    The built-in table always applies: a policy directory without a pricing.yaml
    of its own must not leave every cost NULL and every cost budget refusing.
    The user's entries win model prefix by model prefix.
    """
    table = _read_table(BUILTIN_PRICING)
    if path is None or not path.exists() or path.resolve() == BUILTIN_PRICING.resolve():
        return table
    return PricingTable(models={**table.models, **_read_table(path).models})


def _read_table(path: Path) -> PricingTable:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(raw, dict) and raw.get("models") is None:
            raw = {**raw, "models": {}}  # `models:` with every entry commented out
        return PricingTable.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the price table: {exc}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def cost_usd(usage: Usage, price: Pricing | None) -> float | None:
    if price is None:
        return None
    cache_read_rate = price.cache_read if price.cache_read is not None else price.input
    cache_write_rate = price.cache_write if price.cache_write is not None else price.input
    uncached = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
    total = (
        uncached * price.input
        + usage.cache_read_tokens * cache_read_rate
        + usage.cache_write_tokens * cache_write_rate
        + usage.output_tokens * price.output
    )
    return round(total / 1_000_000, 10)


def estimate_tokens(texts: list[str]) -> int:
    chars = sum(len(t) for t in texts)
    return math.ceil(chars / CHARS_PER_TOKEN) if chars else 0


class Pricer:
    """Prices a call by its route's pricing, else the table; warns once per unpriced model."""

    def __init__(self, table: PricingTable) -> None:
        self.table = table
        self._warned: set[str] = set()

    def price(self, model: str, route_pricing: Pricing | None) -> Pricing | None:
        price = route_pricing or self.table.price_for(model)
        if price is None and model not in self._warned:
            self._warned.add(model)
            log.warning("no price for model %r: its cost is recorded as NULL", model)
        return price
