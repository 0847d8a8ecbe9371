"""Time the routing hot path: ``extract`` + ``score`` (complexity) and a whole ``decide`` (routing).

In-process, no daemon: each prompt shape is timed ``--n`` times after a warm-up, one call per sample
with ``time.perf_counter_ns``, and p50/p99 are printed in microseconds. The shapes are a short
question, a 4 KB conversation of 20 messages (the budget: well under 1 ms p99) and a single 32 KB
message (scanning is capped at the newest 8 KB of user text, so this shows the cap at work).
Usage: ``.venv/bin/python bench/scorer.py [--n 20000] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

from palyra.config.models import ModelConfig
from palyra.governance.complexity import extract, score
from palyra.governance.routing import RoutingMode, decide
from palyra.providers.registry import Needs, RegisteredModel, _register
from palyra.providers.types import ChatRequest, Message, Role, TextPart

PROSE = (
    "We run a small service that ingests events and writes them to a database. Then we noticed the "
    "latency climbs every evening; why would that be, and how should we compare the options? "
)
CODE = "```python\ndef handle(event):\n    rows = db.execute('SELECT * FROM t WHERE id = ?', event.id)\n```\n"
STEPS = "First, look at the queue. Then check the indexes.\n1. profile\n2. fix\n- verify\n"


def text_of(size: int, seed: int) -> str:
    chunks = (PROSE, CODE, STEPS)
    out: list[str] = []
    total = 0
    i = seed
    while total < size:
        piece = chunks[i % len(chunks)]
        out.append(piece)
        total += len(piece)
        i += 1
    return "".join(out)[:size]


def conversation(total_chars: int, messages: int) -> ChatRequest:
    per = total_chars // messages
    roles: tuple[Role, Role] = ("user", "assistant")
    return ChatRequest(
        model="std",
        messages=[Message(roles[i % 2], [TextPart(text_of(per, i))]) for i in range(messages)],
    )


SHAPES = {
    "short (1 msg, 40 B)": ChatRequest(
        model="std", messages=[Message("user", [TextPart("What is the capital of Portugal, please?")])]
    ),
    "4 KB / 20 msgs": conversation(4096, 20),
    "32 KB / 1 msg": conversation(32 * 1024, 1),
}


def fleet() -> list[RegisteredModel]:
    def m(model_id: str, kind: str, provider: str, **tiers: str) -> RegisteredModel:
        return _register(ModelConfig(model_id=model_id, provider_id=provider, **tiers), kind)

    return [
        m("mini", "openai_compatible", "openai", cost_tier="low", latency_tier="low"),
        m("std", "openai_compatible", "openai"),
        m("big", "anthropic", "anthropic"),
        m("big-fast", "anthropic", "anthropic", latency_tier="low"),
        m("echo", "deterministic", "echo"),
    ]


def percentiles(fn: Callable[[], object], n: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    samples.sort()
    return samples[n // 2] / 1000, samples[min(n - 1, int(n * 0.99))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000, help="timed calls per shape and step")
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args()

    models = fleet()
    requested = models[1]
    rows = []
    for name, request in SHAPES.items():
        features = extract(request)

        def decide_once(request: ChatRequest = request) -> object:
            return decide(
                request,
                requested,
                models,
                RoutingMode.DRY_RUN,
                needs=Needs(),
                context_tokens=1000,
                unavailable_providers=set(),
            )

        steps: dict[str, Callable[[], object]] = {
            "extract+score": lambda request=request: score(extract(request)),  # type: ignore[misc]
            "decide": decide_once,
        }
        for step, fn in steps.items():
            p50, p99 = percentiles(fn, args.n, args.warmup)
            rows.append({"shape": name, "step": step, "p50_us": round(p50, 1), "p99_us": round(p99, 1)})
        rows[-1]["score"] = round(score(features), 3)

    if args.json:
        print(json.dumps({"python": platform.python_version(), "n": args.n, "rows": rows}, indent=2))
        return
    print(f"Python {platform.python_version()} on {platform.machine()}, n={args.n} per row\n")
    print("| shape | step | p50 µs | p99 µs |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['step']} | {r['p50_us']} | {r['p99_us']} |")
    scores = {r["shape"]: r["score"] for r in rows if "score" in r}
    print("\nscores: " + ", ".join(f"{k}: {v}" for k, v in scores.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
