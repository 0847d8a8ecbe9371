"""The price table: what a model costs at a given time, and what a request cost.

Prices come in three layers, highest first: ``admin`` (set at run time through the admin API),
``config`` (``[[pricing]]`` entries) and ``shipped`` (``palyra.governance.prices_default``). For a model
the highest layer that has a price in effect at the requested time wins; a layer whose prices all
start later falls through to the next one, so a future-dated admin price does not unprice the past.
Within a layer the price with the latest ``effective_from`` not after that time applies
(``effective_from=None`` means "since always").

A model is looked up by every name it goes by, exact names first: the id clients use, then the
upstream model name, then the same names with a leading ``provider/`` prefix, a trailing snapshot date
(``gpt-4o-mini-2024-07-18``, ``claude-sonnet-4-5-20250929``, ``claude-3-5-haiku@20241022``) or a
``-latest`` suffix removed. A dated snapshot with its own price (``gpt-4o-2024-05-13``) is listed
explicitly and therefore matched exactly.

Cost, with ``Usage`` in OpenAI's convention (``prompt_tokens`` includes cached and cache-write tokens):

    uncached    = prompt_tokens - cached_tokens - cache_write_tokens      (never below 0)
    cost        = uncached           * input
                + cached_tokens      * cached_input   (input when not set)
                + cache_write_tokens * cache_write    (input when not set)
                + completion_tokens  * output
                + audio_seconds / 60 * per_minute     (transcription models)
    all token prices per million tokens, USD.

Decisions worth knowing:

- A missing cached-input or cache-write price falls back to the *input* price. That over-reports a
  cache hit rather than under-reporting it; for cache writes it is exact for OpenAI (which does not
  bill them) and 20 % low for Anthropic (5-minute writes cost 1.25x input), which is why every shipped
  Anthropic price sets ``cache_write_per_million_usd`` and ``[[pricing]]`` entries for Claude should too.
- ``Usage`` does not say whether a cache write was a 5-minute or a 1-hour one; all writes are priced at
  the 5-minute rate (1-hour writes cost 2x input, so those are under-reported by 37.5 %).
- Anthropic's long-context tier (prompts above 200K tokens on Sonnet 4/4.5) is not modelled.
- An unknown model costs ``None`` with ``pricing_missing=True``, never 0 (see the gateway anchors: a
  silent $0 under-reported one route about 150x for weeks). Only providers of a free kind
  (``deterministic``) cost 0.
- Transcription models are priced per minute of audio (``per_minute_usd``), computed from the duration
  the upstream reports, per second without rounding up. A per-minute price without a duration cannot be
  computed and is reported as missing, not as 0.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Literal

from palyra.config.models import PricingConfig
from palyra.providers.types import Usage

PriceSource = Literal["shipped", "config", "admin"]
CostSource = Literal["shipped", "config", "admin", "free"]

LAYERS: tuple[PriceSource, ...] = ("admin", "config", "shipped")
"""Layers in order of precedence."""

FREE_PROVIDER_KINDS = frozenset({"deterministic"})
"""Provider kinds that never cost anything: their models cost 0 and are not reported as unpriced."""

_PER_MILLION = 1_000_000.0
_DATE_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest)$")
_SINCE_ALWAYS = datetime.min.replace(tzinfo=UTC)


def parse_effective_from(value: str | date | datetime | None) -> datetime | None:
    """An aware UTC datetime from an ISO date (``2025-06-10``), ISO datetime, ``date`` or ``datetime``.

    A date means midnight UTC; a naive datetime is taken as UTC.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"effective_from {text!r} is not an ISO date or datetime") from None
    if not isinstance(value, datetime):
        return datetime.combine(value, time.min, tzinfo=UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Price:
    """One price of one model, from ``effective_from`` on. Token prices are USD per million tokens.

    ``effective_from`` accepts a ``date``, a ``datetime`` or an ISO string and is always stored as an
    aware UTC ``datetime`` (or ``None``: in effect since always).
    """

    model_id: str
    input_per_million_usd: float
    output_per_million_usd: float
    cached_input_per_million_usd: float | None = None
    cache_write_per_million_usd: float | None = None
    effective_from: datetime | date | None = None
    source: PriceSource = "shipped"
    per_minute_usd: float | None = None  # audio transcription, USD per minute of input audio

    def __post_init__(self) -> None:
        if not self.model_id or not self.model_id.strip():
            raise ValueError("a price needs a model_id")
        for name in (
            "input_per_million_usd",
            "output_per_million_usd",
            "cached_input_per_million_usd",
            "cache_write_per_million_usd",
            "per_minute_usd",
        ):
            amount = getattr(self, name)
            if amount is None:
                continue
            if not isinstance(amount, int | float) or isinstance(amount, bool):
                raise ValueError(f"{name} must be a number, got {amount!r}")
            if not math.isfinite(amount) or amount < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {amount!r}")
        if self.source not in LAYERS:
            raise ValueError(f"source must be one of {', '.join(LAYERS)}, got {self.source!r}")
        raw: object = self.effective_from
        if not (raw is None or isinstance(raw, str | date)):
            raise ValueError(f"effective_from must be a date, datetime or ISO string, got {raw!r}")
        object.__setattr__(self, "effective_from", parse_effective_from(raw))

    @property
    def starts_at(self) -> datetime:
        """``effective_from`` as a datetime; the earliest possible one when it is ``None``."""
        value = self.effective_from
        return value if isinstance(value, datetime) else _SINCE_ALWAYS

    def public(self) -> dict[str, Any]:
        """The price as JSON-ready data (``effective_from`` as an ISO string), for the admin API."""
        data = dataclasses.asdict(self)
        data["effective_from"] = self.effective_from.isoformat() if self.effective_from else None
        return data


def price_from_config(entry: PricingConfig, source: PriceSource = "config") -> Price:
    """A ``Price`` from a ``[[pricing]]`` entry (or an admin API body of the same shape)."""
    return Price(
        model_id=entry.model_id,
        input_per_million_usd=entry.input_per_million_usd,
        output_per_million_usd=entry.output_per_million_usd,
        cached_input_per_million_usd=entry.cached_input_per_million_usd,
        cache_write_per_million_usd=entry.cache_write_per_million_usd,
        effective_from=parse_effective_from(entry.effective_from),
        source=source,
    )


def zero_price(model_id: str = "*") -> Price:
    """A price of 0 for everything, for providers that cost nothing."""
    return Price(model_id, 0.0, 0.0, 0.0, 0.0, None, "shipped")


ZERO = zero_price()


@dataclass(frozen=True, slots=True)
class Costing:
    """What a request cost, or why it could not be priced. ``cost_usd`` is never 0 for lack of a price."""

    cost_usd: float | None
    pricing_missing: bool
    price_source: CostSource | None
    price: Price | None = None


def cost(price: Price, usage: Usage, audio_seconds: float | None = None) -> float:
    """The cost in USD of ``usage`` at ``price``.

    Raises ``ValueError`` when ``price`` is per minute and ``audio_seconds`` is not given.
    """
    uncached = max(0, usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens)
    input_price = price.input_per_million_usd
    cached_price = price.cached_input_per_million_usd
    write_price = price.cache_write_per_million_usd
    total = (
        uncached * input_price
        + usage.cached_tokens * (input_price if cached_price is None else cached_price)
        + usage.cache_write_tokens * (input_price if write_price is None else write_price)
        + usage.completion_tokens * price.output_per_million_usd
    ) / _PER_MILLION
    if price.per_minute_usd is not None:
        if audio_seconds is None:
            raise ValueError(f"{price.model_id} is priced per minute of audio; a duration is needed")
        total += max(0.0, audio_seconds) / 60.0 * price.per_minute_usd
    return total


def estimate(
    price: Price, prompt_tokens: int, max_completion_tokens: int, audio_seconds: float | None = None
) -> float:
    """An upper estimate in USD for a budget reservation: every prompt token at the uncached input price
    and every allowed completion token at the output price (plus the audio, when its length is known).

    Anthropic cache writes (1.25x input) are the one way a prompt can cost more than this; the
    reservation is settled to the actual cost afterwards either way.
    """
    total = (
        max(0, prompt_tokens) * price.input_per_million_usd
        + max(0, max_completion_tokens) * price.output_per_million_usd
    ) / _PER_MILLION
    if price.per_minute_usd is not None and audio_seconds is not None:
        total += max(0.0, audio_seconds) / 60.0 * price.per_minute_usd
    return total


def _key(model_id: str) -> str:
    return model_id.strip().casefold()


def _fallback_names(name: str) -> Iterator[str]:
    """Looser spellings of ``name``: without a ``provider/`` prefix, without a snapshot date suffix."""
    base = name.rsplit("/", 1)[-1] if "/" in name else name
    if base != name:
        yield base
    undated = _DATE_SUFFIX.sub("", base)
    if undated != base and undated:
        yield undated


class PriceTable:
    """Prices by model and time, in three layers (admin > config > shipped). Not thread-safe: it is
    read and changed on the event loop only."""

    def __init__(self, shipped: Iterable[Price] = (), config: Iterable[PricingConfig | Price] = ()) -> None:
        self._layers: dict[PriceSource, dict[str, list[Price]]] = {layer: {} for layer in LAYERS}
        for price in shipped:
            self._put(dataclasses.replace(price, source="shipped") if price.source != "shipped" else price)
        for entry in config:
            price = entry if isinstance(entry, Price) else price_from_config(entry)
            self._put(dataclasses.replace(price, source="config") if price.source != "config" else price)

    @classmethod
    def from_config(
        cls, config: Iterable[PricingConfig] = (), *, shipped: Iterable[Price] | None = None
    ) -> PriceTable:
        """The shipped defaults (or ``shipped``) overlaid with the ``[[pricing]]`` entries."""
        if shipped is None:
            # Imported here: the defaults module builds its entries from ``Price``.
            from palyra.governance.prices_default import SHIPPED_PRICES

            shipped = SHIPPED_PRICES
        return cls(shipped=shipped, config=config)

    # -- changes ----------------------------------------------------------------------------------

    def set(self, price: Price) -> Price:
        """Add an admin price, replacing one with the same model and ``effective_from``; returns it."""
        stored = price if price.source == "admin" else dataclasses.replace(price, source="admin")
        self._put(stored)
        return stored

    def remove(
        self,
        model_id: str,
        source: PriceSource = "admin",
        effective_from: str | date | datetime | None = None,
    ) -> int:
        """Remove a model's prices from one layer (only the one starting at ``effective_from``, if
        given). Returns how many were removed."""
        layer = self._layers[source]
        key = _key(model_id)
        prices = layer.get(key, [])
        if effective_from is None:
            kept: list[Price] = []
        else:
            start = parse_effective_from(effective_from)
            kept = [p for p in prices if p.effective_from != start]
        removed = len(prices) - len(kept)
        if kept:
            layer[key] = kept
        else:
            layer.pop(key, None)
        return removed

    def replace_layer(self, source: PriceSource, prices: Iterable[Price]) -> None:
        """Make one layer exactly ``prices`` (a replica catching up with admin changes made elsewhere)."""
        self._layers[source] = {}
        for price in prices:
            self._put(price if price.source == source else dataclasses.replace(price, source=source))

    def _put(self, price: Price) -> None:
        prices = self._layers[price.source].setdefault(_key(price.model_id), [])
        prices[:] = [p for p in prices if p.effective_from != price.effective_from]
        prices.append(price)
        prices.sort(key=lambda p: p.starts_at, reverse=True)

    # -- lookups ----------------------------------------------------------------------------------

    def all(self, source: PriceSource | None = None) -> list[Price]:
        """Every price (of one layer), by model then start, for listing."""
        layers = LAYERS if source is None else (source,)
        found = [p for layer in layers for ps in self._layers[layer].values() for p in ps]
        return sorted(found, key=lambda p: (_key(p.model_id), LAYERS.index(p.source), p.starts_at))

    def _exact(self, name: str, at: datetime) -> Price | None:
        key = _key(name)
        for layer in LAYERS:
            for price in self._layers[layer].get(key, ()):  # newest first
                if price.starts_at <= at:
                    return price
        return None

    def price_for(self, model_id: str, at: datetime) -> Price | None:
        """The price of ``model_id`` in effect at ``at`` (a naive ``at`` is UTC), or ``None``."""
        return self.price_for_any((model_id,), at)

    def price_for_any(self, names: Iterable[str | None], at: datetime) -> Price | None:
        """The price of the first name that has one: exact names first, in order, then their looser
        spellings (no ``provider/`` prefix, no snapshot date)."""
        when = parse_effective_from(at) or _SINCE_ALWAYS
        candidates = [n.strip() for n in names if n and n.strip()]
        for name in candidates:
            if (price := self._exact(name, when)) is not None:
                return price
        for name in candidates:
            for loose in _fallback_names(name):
                if (price := self._exact(loose, when)) is not None:
                    return price
        return None

    def cost_for(
        self,
        model_id: str,
        upstream_model: str | None,
        provider_kind: str,
        usage: Usage,
        at: datetime,
        *,
        audio_seconds: float | None = None,
    ) -> Costing:
        """What a finished request cost. Free provider kinds cost 0; an unpriced model costs ``None``."""
        if provider_kind in FREE_PROVIDER_KINDS:
            return Costing(0.0, False, "free", ZERO)
        price = self.price_for_any((model_id, upstream_model), at)
        if price is None:
            return Costing(None, True, None)
        if price.per_minute_usd is not None and audio_seconds is None:
            return Costing(None, True, price.source, price)
        return Costing(cost(price, usage, audio_seconds), False, price.source, price)

    def estimate_for(
        self,
        model_id: str,
        upstream_model: str | None,
        provider_kind: str,
        prompt_tokens: int,
        max_completion_tokens: int,
        at: datetime,
        *,
        audio_seconds: float | None = None,
    ) -> float | None:
        """The reservation estimate in USD for a request about to be sent (see ``estimate``): 0 for a
        free provider kind, ``None`` when the model has no price."""
        if provider_kind in FREE_PROVIDER_KINDS:
            return 0.0
        price = self.price_for_any((model_id, upstream_model), at)
        if price is None:
            return None
        return estimate(price, prompt_tokens, max_completion_tokens, audio_seconds)
