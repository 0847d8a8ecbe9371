"""What a measured phase talks to and how it is timed: the target, the CPU and RSS around it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from daemon_proc import cpu_snapshot, machine_cpu_seconds, tree_rss_kib
from loadgen import RequestFn, Samples, run_closed_loop
from report import Phase, summarize

RSS_SAMPLE_S = 0.25


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: a gateway (Palyra, LiteLLM) or the mock itself (``direct``)."""

    name: str  # palyra, litellm, direct
    label: str  # for the report: "Palyra", "LiteLLM", "Direct to mock"
    base_url: str
    token: str
    pid: int | None  # the gateway's process (its children count too); None for direct
    alive: Callable[[], bool]


@dataclass(slots=True)
class RssSampler:
    """The target's RSS every ``every_s`` seconds while it runs (a background task)."""

    pid: int | None
    every_s: float = RSS_SAMPLE_S
    samples: list[int] = field(default_factory=list)

    @property
    def peak_kib(self) -> int | None:
        return max(self.samples) if self.samples else None

    async def _loop(self) -> None:
        while True:
            value = tree_rss_kib(self.pid)
            if value is not None:
                self.samples.append(value)
            await asyncio.sleep(self.every_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RssSampler]:
        if self.pid is None:
            yield self
            return
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            value = tree_rss_kib(self.pid)
            if value is not None:
                self.samples.append(value)


async def wait_quiet(args: argparse.Namespace) -> None:
    """With --wait-quiet, hold the next phase until other processes leave the CPUs alone."""
    if args.wait_quiet <= 0:
        return
    started = time.monotonic()
    while True:
        busy0, steal0 = machine_cpu_seconds()
        await asyncio.sleep(2.0)
        busy1, steal1 = machine_cpu_seconds()
        pct = 100.0 * (busy1 - busy0 + steal1 - steal0) / 2.0
        waited = time.monotonic() - started
        if pct < args.wait_quiet:
            if waited > 2.5:
                say(f"  waited {waited:.0f} s for a quiet machine ({pct:.0f}% of a core)")
            return
        if waited >= args.quiet_timeout:
            say(f"  the machine is still busy ({pct:.0f}% of a core) after {waited:.0f} s; going ahead")
            return


async def measured(
    target: Target,
    scenario: str,
    label: str,
    concurrency: int,
    phase: Callable[[], Awaitable[Samples]],
    upstream_pid: int | None = None,
    peer_pids: tuple[int, ...] = (),
) -> Phase:
    """Run one phase with the target's CPU and RSS watched, and summarize it."""
    rss_before = tree_rss_kib(target.pid)
    before = cpu_snapshot(target.pid, upstream_pid, peer_pids)
    async with RssSampler(target.pid).running() as rss:
        samples = await phase()
    cpu = cpu_snapshot(target.pid, upstream_pid, peer_pids).since(before)
    result = summarize(
        scenario, label, concurrency, samples, cpu, target=target.name, rss=(rss_before, rss.peak_kib)
    )
    errors = f", {result.error_count} errors" if result.error_count else ""
    say(
        f"  {label}: {result.ok} ok{errors}, {result.rate_per_s:,.0f}/s, "
        f"latency p50 {result.latency_ms['p50']} ms p99 {result.latency_ms['p99']} ms, "
        f"overhead p50 {result.overhead_ms['p50']} ms p99 {result.overhead_ms['p99']} ms"
    )
    return result


async def closed_loop(
    target: Target,
    args: argparse.Namespace,
    scenario: str,
    label: str,
    call: RequestFn,
    upstream_pid: int | None = None,
    peer_pids: tuple[int, ...] = (),
) -> Phase:
    """A warm-up, then ``--concurrency`` workers for ``--duration`` seconds."""
    await wait_quiet(args)
    if args.warmup > 0:
        await run_closed_loop(call, args.concurrency, args.warmup)
    return await measured(
        target,
        scenario,
        label,
        args.concurrency,
        lambda: run_closed_loop(call, args.concurrency, args.duration),
        upstream_pid,
        peer_pids,
    )
