"""The price table: layers, effective dates, name fallbacks, and the cost and estimate formulas."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest

from palyra.config.models import PricingConfig
from palyra.governance.prices_default import SHIPPED_PRICES
from palyra.governance.pricing import (
    ZERO,
    Costing,
    Price,
    PriceTable,
    cost,
    estimate,
    parse_effective_from,
    price_from_config,
)
from palyra.providers.types import Usage

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

# fmt: off
REQUIRED_MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o3-mini", "o4-mini",
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "text-embedding-3-small", "text-embedding-3-large",
    "text-embedding-ada-002", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
    "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4-5", "claude-sonnet-4", "claude-3-7-sonnet",
    "claude-3-5-haiku", "claude-haiku-4-5",
)
# fmt: on


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.from_config()


def price(model_id: str = "m", inp: float = 2.0, out: float = 8.0, **kw: object) -> Price:
    return Price(model_id, inp, out, **kw)  # type: ignore[arg-type]


# --- cost ----------------------------------------------------------------------------------------


def test_openai_cached_tokens_are_part_of_prompt_tokens_and_priced_at_the_cached_rate(
    table: PriceTable,
) -> None:
    # gpt-4o: $2.50 input, $1.25 cached, $10 output per 1M.
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    costing = table.cost_for("gpt-4o", None, "openai_compatible", usage, NOW)
    expected = (600 * 2.50 + 400 * 1.25 + 100 * 10.00) / 1e6
    assert costing.cost_usd == pytest.approx(expected)
    assert costing == Costing(costing.cost_usd, False, "shipped", costing.price)
    assert costing.price is not None and costing.price.model_id == "gpt-4o"


def test_anthropic_cache_write_and_read(table: PriceTable) -> None:
    # claude-sonnet-4-5: $3 input, $3.75 5-minute cache write, $0.30 cache hit, $15 output per 1M.
    usage = Usage(
        prompt_tokens=100 + 2000 + 5000, completion_tokens=500, cached_tokens=5000, cache_write_tokens=2000
    )
    costing = table.cost_for("sonnet", "claude-sonnet-4-5-20250929", "anthropic", usage, NOW)
    expected = (100 * 3.00 + 2000 * 3.75 + 5000 * 0.30 + 500 * 15.00) / 1e6
    assert costing.cost_usd == pytest.approx(expected)
    assert costing.pricing_missing is False


def test_missing_cached_and_cache_write_prices_fall_back_to_the_input_price() -> None:
    p = price(inp=2.0, out=8.0)
    usage = Usage(prompt_tokens=1000, completion_tokens=0, cached_tokens=300, cache_write_tokens=200)
    assert cost(p, usage) == pytest.approx(1000 * 2.0 / 1e6)


def test_inconsistent_usage_never_prices_negative_uncached_tokens() -> None:
    p = price(inp=2.0, out=8.0, cached_input_per_million_usd=1.0)
    usage = Usage(prompt_tokens=100, cached_tokens=300)  # an adapter that forgot to sum
    assert cost(p, usage) == pytest.approx(300 * 1.0 / 1e6)


def test_unknown_model_costs_none_and_is_flagged_never_zero(table: PriceTable) -> None:
    costing = table.cost_for("mystery", "mystery-upstream-9", "openai_compatible", Usage(10, 10), NOW)
    assert costing == Costing(None, True, None)
    assert table.estimate_for("mystery", None, "anthropic", 10, 10, NOW) is None


def test_deterministic_provider_costs_zero_and_is_not_missing(table: PriceTable) -> None:
    costing = table.cost_for("echo", None, "deterministic", Usage(1000, 1000), NOW)
    assert costing.cost_usd == 0.0
    assert costing.pricing_missing is False
    assert costing.price_source == "free"
    assert costing.price is ZERO
    assert table.estimate_for("echo", None, "deterministic", 10, 10, NOW) == 0.0
    assert cost(ZERO, Usage(10**6, 10**6, 10, 10)) == 0.0


def test_transcription_is_priced_per_minute_of_audio(table: PriceTable) -> None:
    costing = table.cost_for("whisper-1", None, "openai_compatible", Usage(), NOW, audio_seconds=90)
    assert costing.cost_usd == pytest.approx(1.5 * 0.006)
    mini = table.cost_for(
        "stt", "gpt-4o-mini-transcribe", "openai_compatible", Usage(50, 20), NOW, audio_seconds=60
    )
    assert mini.cost_usd == pytest.approx(0.003)


def test_per_minute_price_without_a_duration_is_missing_not_zero(table: PriceTable) -> None:
    costing = table.cost_for("whisper-1", None, "openai_compatible", Usage(), NOW)
    assert costing.cost_usd is None and costing.pricing_missing
    with pytest.raises(ValueError, match="per minute"):
        cost(price(per_minute_usd=0.006), Usage())


# --- estimate ------------------------------------------------------------------------------------


def test_estimate_prices_every_prompt_token_uncached_and_every_allowed_completion_token(
    table: PriceTable,
) -> None:
    p = table.price_for("gpt-4o", NOW)
    assert p is not None
    assert estimate(p, 1000, 500) == pytest.approx((1000 * 2.50 + 500 * 10.00) / 1e6)
    reserved = table.estimate_for("gpt-4o", None, "openai_compatible", 1000, 500, NOW)
    assert reserved == pytest.approx(0.0075)
    assert estimate(p, -5, -5) == 0.0
    whisper = table.price_for("whisper-1", NOW)
    assert whisper is not None
    assert estimate(whisper, 0, 0, audio_seconds=120) == pytest.approx(0.012)
    assert estimate(whisper, 0, 0) == 0.0  # unknown length: settled to the actual cost later


# --- layers and dates ----------------------------------------------------------------------------


def test_override_precedence_admin_over_config_over_shipped() -> None:
    config = [PricingConfig(model_id="gpt-4o", input_per_million_usd=2.0, output_per_million_usd=7.0)]
    table = PriceTable.from_config(config)
    p = table.price_for("gpt-4o", NOW)
    assert p is not None and (p.source, p.input_per_million_usd) == ("config", 2.0)

    stored = table.set(price("gpt-4o", 1.0, 4.0, source="config"))
    assert stored.source == "admin"
    p = table.price_for("gpt-4o", NOW)
    assert p is not None and (p.source, p.input_per_million_usd) == ("admin", 1.0)

    assert table.remove("gpt-4o") == 1
    p = table.price_for("gpt-4o", NOW)
    assert p is not None and p.source == "config"
    assert table.remove("gpt-4o", source="config") == 1
    p = table.price_for("gpt-4o", NOW)
    assert p is not None and (p.source, p.input_per_million_usd) == ("shipped", 2.50)
    assert table.remove("gpt-4o", source="admin") == 0


def test_config_without_effective_from_overrides_every_shipped_date() -> None:
    table = PriceTable.from_config(
        [PricingConfig(model_id="o3", input_per_million_usd=1.0, output_per_million_usd=1.0)]
    )
    for when in (datetime(2025, 5, 1, tzinfo=UTC), NOW):
        p = table.price_for("o3", when)
        assert p is not None and p.source == "config"


def test_a_future_dated_admin_price_does_not_unprice_the_past(table: PriceTable) -> None:
    table.set(price("gpt-4.1", 9.0, 9.0, effective_from="2027-01-01"))
    p = table.price_for("gpt-4.1", NOW)
    assert p is not None and (p.source, p.input_per_million_usd) == ("shipped", 2.0)
    p = table.price_for("gpt-4.1", datetime(2027, 2, 1, tzinfo=UTC))
    assert p is not None and (p.source, p.input_per_million_usd) == ("admin", 9.0)


def test_effective_from_picks_the_latest_price_not_after_the_time(table: PriceTable) -> None:
    before_cut = table.price_for("o3", datetime(2025, 5, 1, tzinfo=UTC))
    after_cut = table.price_for("o3", datetime(2025, 7, 1, tzinfo=UTC))
    assert before_cut is not None and before_cut.input_per_million_usd == 10.0
    assert after_cut is not None and after_cut.input_per_million_usd == 2.0
    assert table.price_for("o3", datetime(2025, 6, 10, tzinfo=UTC)) == after_cut  # inclusive
    assert table.price_for("o3", datetime(2025, 1, 1, tzinfo=UTC)) is None  # before launch


def test_several_admin_prices_per_model_and_removing_one_of_them() -> None:
    table = PriceTable()
    table.set(price("m", 1.0, 1.0, effective_from="2025-01-01"))
    table.set(price("m", 2.0, 2.0, effective_from="2025-06-01"))
    table.set(price("m", 3.0, 3.0, effective_from="2025-06-01"))  # same start: replaces
    assert len(table.all("admin")) == 2
    p = table.price_for("m", datetime(2025, 7, 1, tzinfo=UTC))
    assert p is not None and p.input_per_million_usd == 3.0
    assert table.remove("m", effective_from=date(2025, 6, 1)) == 1
    p = table.price_for("m", datetime(2025, 7, 1, tzinfo=UTC))
    assert p is not None and p.input_per_million_usd == 1.0


def test_naive_times_are_utc(table: PriceTable) -> None:
    assert table.price_for("o3", datetime(2025, 6, 10, 0, 0)) == table.price_for(
        "o3", datetime(2025, 6, 10, 0, 0, tzinfo=UTC)
    )


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "priced_as"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-opus-4-0", "claude-opus-4-0"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # its own price, not gpt-4o's
    ],
)
def test_dated_snapshots_aliases_and_prefixes(table: PriceTable, name: str, priced_as: str) -> None:
    p = table.price_for(name, NOW)
    assert p is not None and p.model_id == priced_as


def test_exact_snapshot_price_is_kept(table: PriceTable) -> None:
    p = table.price_for("gpt-4o-2024-05-13", NOW)
    assert p is not None and (p.input_per_million_usd, p.output_per_million_usd) == (5.0, 15.0)


def test_lookup_by_client_id_then_upstream_name_exact_names_first() -> None:
    table = PriceTable.from_config(
        [PricingConfig(model_id="fast", input_per_million_usd=0.01, output_per_million_usd=0.02)]
    )
    p = table.price_for_any(["fast", "gpt-4o-mini"], NOW)
    assert p is not None and p.model_id == "fast"
    p = table.price_for_any(["unpriced-alias", "gpt-4o-mini"], NOW)
    assert p is not None and p.model_id == "gpt-4o-mini"
    # An exact upstream match beats a looser spelling of the client id.
    table.set(price("house", 1.0, 1.0))
    p = table.price_for_any(["house-2024-12-31", "gpt-4o-mini"], NOW)
    assert p is not None and p.model_id == "gpt-4o-mini"
    assert table.price_for_any([None, "", "nothing"], NOW) is None


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "input_per_million_usd",
        "output_per_million_usd",
        "cached_input_per_million_usd",
        "cache_write_per_million_usd",
        "per_minute_usd",
    ],
)
@pytest.mark.parametrize("bad", [-0.01, math.nan, math.inf])
def test_negative_and_non_finite_prices_are_rejected(field: str, bad: float) -> None:
    values = {"model_id": "m", "input_per_million_usd": 1.0, "output_per_million_usd": 1.0, field: bad}
    with pytest.raises(ValueError, match=field):
        Price(**values)  # type: ignore[arg-type]


def test_other_invalid_prices_are_rejected() -> None:
    with pytest.raises(ValueError, match="model_id"):
        price(" ")
    with pytest.raises(ValueError, match="source"):
        price(source="vendor")
    with pytest.raises(ValueError, match="ISO"):
        price(effective_from="June 2025")
    with pytest.raises(ValueError, match="effective_from"):
        price(effective_from=20250610)


def test_effective_from_is_parsed_from_iso_strings_and_dates() -> None:
    midnight = datetime(2025, 6, 10, tzinfo=UTC)
    assert price(effective_from="2025-06-10").effective_from == midnight
    assert price(effective_from=date(2025, 6, 10)).effective_from == midnight
    assert price(effective_from="2025-06-10T02:00:00+02:00").effective_from == midnight
    assert price(effective_from="2025-06-10T00:00:00Z").effective_from == midnight
    assert price(effective_from=datetime(2025, 6, 10)).effective_from == midnight
    assert price().effective_from is None
    assert parse_effective_from(None) is None


def test_config_entries_become_config_prices() -> None:
    entry = PricingConfig(
        model_id="house",
        input_per_million_usd=1.0,
        output_per_million_usd=2.0,
        cached_input_per_million_usd=0.1,
        cache_write_per_million_usd=1.25,
        effective_from="2026-01-01",
    )
    p = price_from_config(entry)
    assert p == Price("house", 1.0, 2.0, 0.1, 1.25, datetime(2026, 1, 1, tzinfo=UTC), "config")
    assert price_from_config(entry, source="admin").source == "admin"
    assert p.public() == {
        "model_id": "house",
        "input_per_million_usd": 1.0,
        "output_per_million_usd": 2.0,
        "cached_input_per_million_usd": 0.1,
        "cache_write_per_million_usd": 1.25,
        "effective_from": "2026-01-01T00:00:00+00:00",
        "source": "config",
        "per_minute_usd": None,
    }


# --- the shipped table ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", REQUIRED_MODELS)
def test_shipped_prices_cover_the_current_models(table: PriceTable, model_id: str) -> None:
    p = table.price_for(model_id, NOW)
    assert p is not None and p.model_id == model_id and p.source == "shipped"
    if model_id.startswith("claude"):
        assert p.cached_input_per_million_usd is not None
        assert p.cache_write_per_million_usd is not None
    elif model_id.startswith(("gpt", "o")) and "transcribe" not in model_id:
        assert p.cached_input_per_million_usd is not None
    if "transcribe" in model_id or model_id == "whisper-1":
        assert p.per_minute_usd is not None


def test_shipped_prices_are_all_dated_and_shipped() -> None:
    assert all(p.source == "shipped" and p.effective_from is not None for p in SHIPPED_PRICES)
    keys = [(p.model_id, p.effective_from) for p in SHIPPED_PRICES]
    assert len(keys) == len(set(keys))
