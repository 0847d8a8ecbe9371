"""The load generator: request bodies, one timed request per call, sequential and closed-loop drivers."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHAT_MODEL = "deterministic"
PROXIED_MODEL = "gpt-4o-mini"
EMBEDDINGS_MODEL = "hash-embedding-v1"
SYSTEM_PROMPT = "You are a helpful assistant for an online bookshop. Answer briefly, politely and accurately."
USER_PROMPT = "Can you recommend two mystery novels set in Scotland for a long train journey this weekend?"
EMBEDDINGS_INPUT = "A mystery novel set in the Scottish Highlands, told by a retired detective on a train."
MAX_ERROR_SAMPLES = 3


def chat_body(*, stream: bool, model: str = CHAT_MODEL, include_usage: bool = False) -> bytes:
    """A small realistic chat request: a system and a user message, about 30 words in all."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT},
        ],
    }
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def embeddings_body() -> bytes:
    return orjson.dumps({"model": EMBEDDINGS_MODEL, "input": EMBEDDINGS_INPUT})


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request. ``error`` is None on success, else a short kind such as ``HTTP 503``."""

    latency_s: float
    overhead_ms: float | None = None
    ttfb_s: float | None = None
    error: str | None = None
    detail: str = ""


RequestFn = Callable[[], Awaitable[Outcome]]


@dataclass(slots=True)
class Samples:
    """Everything a measured phase collected."""

    latencies_s: list[float] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)
    ttfbs_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    attempts: int = 0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    def add(self, outcome: Outcome) -> None:
        self.attempts += 1
        if outcome.error is not None:
            self.errors[outcome.error] += 1
            if len(self.error_samples) < MAX_ERROR_SAMPLES:
                self.error_samples.append(f"{outcome.error}: {outcome.detail[:300]}")
            return
        self.latencies_s.append(outcome.latency_s)
        if outcome.overhead_ms is not None:
            self.overheads_ms.append(outcome.overhead_ms)
        if outcome.ttfb_s is not None:
            self.ttfbs_s.append(outcome.ttfb_s)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


OVERHEAD_HEADERS = ("x-palyra-overhead-ms", "x-litellm-overhead-duration-ms")


def _overhead(resp: aiohttp.ClientResponse) -> float | None:
    """The gateway's own overhead figure: Palyra's header, or LiteLLM's (absent on direct requests)."""
    raw = resp.headers.get(OVERHEAD_HEADERS[0]) or resp.headers.get(OVERHEAD_HEADERS[1])
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


class Client:
    """Builds the per-request callables over one shared session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.sent = 0

    def unary(self, path: str, body: bytes) -> RequestFn:
        """A non-streaming POST; the whole body is read before the clock stops."""
        url = self.base_url + path

        async def call() -> Outcome:
            self.sent += 1
            started = time.perf_counter()
            try:
                async with self.session.post(url, data=body, headers=self.headers) as resp:
                    payload = await resp.read()
                    latency = time.perf_counter() - started
                    if resp.status != 200:
                        return _http_error(latency, resp.status, payload)
                    return Outcome(latency, overhead_ms=_overhead(resp))
            except (aiohttp.ClientError, TimeoutError) as exc:
                return _client_error(started, exc)

        return call

    def streaming(self, path: str, body: bytes, on_first_byte: Callable[[], None] | None = None) -> RequestFn:
        """A streaming POST; the whole SSE body is read, and it must end with ``data: [DONE]``.

        Time to first byte runs from sending the request to the first chunk of the body;
        ``on_first_byte`` is called then (the open-streams scenario counts open streams with it).
        """
        url = self.base_url + path

        async def call() -> Outcome:
            self.sent += 1
            started = time.perf_counter()
            first: float | None = None
            tail = b""
            try:
                async with self.session.post(url, data=body, headers=self.headers) as resp:
                    if resp.status != 200:
                        payload = await resp.read()
                        return _http_error(time.perf_counter() - started, resp.status, payload)
                    async for chunk in resp.content.iter_any():
                        if first is None:
                            first = time.perf_counter()
                            if on_first_byte is not None:
                                on_first_byte()
                        tail = (tail + chunk)[-64:]
                    latency = time.perf_counter() - started
                    if first is None or b"data: [DONE]" not in tail:
                        detail = tail.decode(errors="replace")
                        return Outcome(latency, error="stream without [DONE]", detail=detail)
                    return Outcome(latency, overhead_ms=_overhead(resp), ttfb_s=first - started)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return _client_error(started, exc)

        return call


def _http_error(latency: float, status: int, payload: bytes) -> Outcome:
    return Outcome(latency, error=f"HTTP {status}", detail=payload.decode(errors="replace"))


def _client_error(started: float, exc: Exception) -> Outcome:
    return Outcome(time.perf_counter() - started, error=type(exc).__name__, detail=str(exc))


def _prepare() -> tuple[float, float]:
    """Collect garbage left by earlier phases so it is not charged to this one; return both clocks."""
    gc.collect()
    return time.perf_counter(), time.process_time()


async def run_sequential(call: RequestFn, count: int) -> Samples:
    """``count`` requests one after another over one connection."""
    samples = Samples()
    started, cpu = _prepare()
    for _ in range(count):
        samples.add(await call())
    samples.elapsed_s = time.perf_counter() - started
    samples.client_cpu_s = time.process_time() - cpu
    return samples


async def run_closed_loop(call: RequestFn, concurrency: int, duration_s: float) -> Samples:
    """``concurrency`` workers, each sending its next request as soon as the last one finished.

    Workers stop starting requests at the deadline; requests in flight then still count, and the
    elapsed time runs until the last of them finished.
    """
    samples = Samples()
    started, cpu = _prepare()
    deadline = started + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            samples.add(await call())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.elapsed_s = time.perf_counter() - started
    samples.client_cpu_s = time.process_time() - cpu
    return samples


@dataclass(slots=True)
class RoundSamples:
    """Sequential rounds alternating between two targets: one ``Samples`` per round and target."""

    direct: list[Samples] = field(default_factory=list)
    proxied: list[Samples] = field(default_factory=list)
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0


async def run_interleaved(
    calls: list[RequestFn], rounds: int, per_round: int
) -> tuple[list[list[Samples]], float, float]:
    """``rounds`` rounds of ``per_round`` sequential requests to each target; each round starts with
    the next target in turn (D P L, P L D, L D P, ...; with two targets D P, P D, ...), so drift in the
    machine's speed (other load, frequency, caches) hits every side alike. Returns one list of rounds
    per target, the elapsed time and the client's CPU time."""
    out: list[list[Samples]] = [[] for _ in calls]
    started, cpu = _prepare()
    for r in range(rounds):
        for k in range(len(calls)):
            i = (r + k) % len(calls)
            out[i].append(await run_sequential(calls[i], per_round))
    return out, time.perf_counter() - started, time.process_time() - cpu


def alternating(*calls: RequestFn) -> RequestFn:
    """One request function that takes turns among ``calls`` (a mixed load)."""
    turn = 0

    async def call() -> Outcome:
        nonlocal turn
        turn += 1
        return await calls[turn % len(calls)]()

    return call


@dataclass(slots=True)
class PacedSamples:
    """An open-loop run: what was sent on schedule and what was skipped because too many were in flight."""

    samples: Samples
    scheduled: int = 0
    skipped: int = 0


async def run_paced(
    call: RequestFn,
    rate_per_s: float,
    duration_s: float,
    max_in_flight: int,
    tick: Callable[[float], None] | None = None,
) -> PacedSamples:
    """Open loop: start a request every ``1 / rate_per_s`` seconds for ``duration_s``, whether or not the
    earlier ones have finished (a slow gateway does not slow the schedule down). At most
    ``max_in_flight`` are outstanding; a request due while that many are in flight is skipped and
    counted. ``tick(elapsed_s)`` is called about every 100 ms (the soak samples memory from it)."""
    out = PacedSamples(Samples())
    started, cpu = _prepare()
    in_flight: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate_per_s
    last_tick = started

    async def one() -> None:
        out.samples.add(await call())

    while True:
        now = time.perf_counter()
        elapsed = now - started
        if elapsed >= duration_s:
            break
        due = int(elapsed / interval) + 1 - out.scheduled
        for _ in range(max(0, due)):
            out.scheduled += 1
            if len(in_flight) >= max_in_flight:
                out.skipped += 1
                continue
            task = asyncio.create_task(one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if tick is not None and now - last_tick >= 0.1:
            last_tick = now
            tick(elapsed)
        await asyncio.sleep(min(interval, 0.005))
    if in_flight:
        await asyncio.gather(*in_flight)
    out.samples.elapsed_s = time.perf_counter() - started
    out.samples.client_cpu_s = time.process_time() - cpu
    return out
