"""List prices Palyra ships with, in USD per million tokens (transcription: per minute of audio).

Standard (not batch, not priority) tier. ``effective_from`` is the day a price took effect: a model's
launch, or a later price change, which gets a row of its own so that older runs keep their old price.
Operators override or extend these with ``[[pricing]]`` entries and the admin API; see
``palyra.governance.pricing`` for how the layers and the cost formula work.

Sources, read 2026-11-25:

- OpenAI: the API pricing page (developers.openai.com/api/docs/pricing, formerly
  platform.openai.com/docs/pricing), cross-checked against LiteLLM's
  ``model_prices_and_context_window.json`` (as synced 2026-07-24). Prompt-cache writes are not billed
  by OpenAI, so OpenAI rows leave ``cache_write_per_million_usd`` unset.
- Anthropic: platform.claude.com/docs/en/about-claude/pricing ("Model pricing": base input, 5-minute
  cache write, cache hit, output), cross-checked against the same LiteLLM file.
"""

from __future__ import annotations

from palyra.governance.pricing import Price, parse_effective_from


def _rows(
    names: tuple[str, ...],
    input_usd: float,
    output_usd: float,
    cached_usd: float | None,
    cache_write_usd: float | None,
    since: str,
    per_minute_usd: float | None = None,
) -> tuple[Price, ...]:
    return tuple(
        Price(
            model_id=name,
            input_per_million_usd=input_usd,
            output_per_million_usd=output_usd,
            cached_input_per_million_usd=cached_usd,
            cache_write_per_million_usd=cache_write_usd,
            effective_from=parse_effective_from(since),
            source="shipped",
            per_minute_usd=per_minute_usd,
        )
        for name in names
    )


# fmt: off
SHIPPED_PRICES: tuple[Price, ...] = (
    # --- OpenAI chat and reasoning models -------------------------------------------------------
    #     names                       input   output  cached  write  since
    # `gpt-4o` pointed at gpt-4o-2024-05-13 ($5/$15) until 2024-10-02, then at gpt-4o-2024-08-06.
    *_rows(("gpt-4o",),                 5.00, 15.00,  None,   None, "2024-05-13"),
    *_rows(("gpt-4o",),                 2.50, 10.00,  1.25,   None, "2024-10-02"),
    # The first snapshot kept its launch price and never had prompt caching.
    *_rows(("gpt-4o-2024-05-13",),      5.00, 15.00,  None,   None, "2024-05-13"),
    *_rows(("gpt-4o-mini",),            0.15,  0.60,  0.075,  None, "2024-07-18"),
    *_rows(("gpt-4.1",),                2.00,  8.00,  0.50,   None, "2025-04-14"),
    *_rows(("gpt-4.1-mini",),           0.40,  1.60,  0.10,   None, "2025-04-14"),
    *_rows(("gpt-4.1-nano",),           0.10,  0.40,  0.025,  None, "2025-04-14"),
    # o3 launched at $10/$40 and was cut by 80 % on 2025-06-10.
    *_rows(("o3",),                    10.00, 40.00,  2.50,   None, "2025-04-16"),
    *_rows(("o3",),                     2.00,  8.00,  0.50,   None, "2025-06-10"),
    *_rows(("o3-mini",),                1.10,  4.40,  0.55,   None, "2025-01-31"),
    *_rows(("o4-mini",),                1.10,  4.40,  0.275,  None, "2025-04-16"),
    *_rows(("gpt-5",),                  1.25, 10.00,  0.125,  None, "2025-08-07"),
    *_rows(("gpt-5-mini",),             0.25,  2.00,  0.025,  None, "2025-08-07"),
    *_rows(("gpt-5-nano",),             0.05,  0.40,  0.005,  None, "2025-08-07"),

    # --- OpenAI embeddings (input only) ---------------------------------------------------------
    *_rows(("text-embedding-3-small",), 0.02,  0.0,   None,   None, "2024-01-25"),
    *_rows(("text-embedding-3-large",), 0.13,  0.0,   None,   None, "2024-01-25"),
    # ada-002 launched at $0.40 and was cut by 75 % on 2023-06-13.
    *_rows(("text-embedding-ada-002",), 0.40,  0.0,   None,   None, "2022-12-15"),
    *_rows(("text-embedding-ada-002",), 0.10,  0.0,   None,   None, "2023-06-13"),

    # --- OpenAI transcription, per minute of audio ----------------------------------------------
    # whisper-1 is billed per minute (to the second). The gpt-4o transcribe models are billed per
    # audio and text token ($6 / $3 per 1M audio tokens); ``Usage`` has no audio-token field, so they
    # are priced at OpenAI's published per-minute estimate instead, and their tokens at 0 so that
    # nothing is counted twice.
    *_rows(("whisper-1",),              0.0,   0.0,   None,   None, "2023-03-01", per_minute_usd=0.006),
    *_rows(("gpt-4o-transcribe",),      0.0,   0.0,   None,   None, "2025-03-20", per_minute_usd=0.006),
    *_rows(("gpt-4o-mini-transcribe",), 0.0,   0.0,   None,   None, "2025-03-20", per_minute_usd=0.003),

    # --- Anthropic --------------------------------------------------------------------------------
    #     names                                   input   output  cached  write  since
    # Cache hits cost 0.1x input and 5-minute cache writes 1.25x input on every model below.
    *_rows(("claude-opus-4-1",),                   15.00, 75.00,  1.50, 18.75, "2025-08-05"),
    *_rows(("claude-opus-4", "claude-opus-4-0"),    15.00, 75.00,  1.50, 18.75, "2025-05-22"),
    *_rows(("claude-sonnet-4-5",),                  3.00, 15.00,  0.30,  3.75, "2025-09-29"),
    *_rows(("claude-sonnet-4", "claude-sonnet-4-0"), 3.00, 15.00,  0.30,  3.75, "2025-05-22"),
    *_rows(("claude-3-7-sonnet",),                  3.00, 15.00,  0.30,  3.75, "2025-02-24"),
    *_rows(("claude-haiku-4-5",),                   1.00,  5.00,  0.10,  1.25, "2025-10-15"),
    # Launched 2024-11-04 at $1/$5 and lowered to the price below weeks later; only the current
    # price is shipped.
    *_rows(("claude-3-5-haiku",),                   0.80,  4.00,  0.08,  1.00, "2024-11-04"),
)
# fmt: on
