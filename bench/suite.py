"""The benchmark suite of issue 9 on the full path: Palyra (and, with ``--compare litellm``, LiteLLM's
proxy) in front of the local mock upstream, every figure beside the same requests sent to the mock
directly.

One session per backend: the mock upstream, a fresh Palyra daemon serving gpt-4o-mini from it (token
auth, routing decision, budget reservation, provider call, cost, journal) and optionally LiteLLM, all
up at once. The scenarios run in a fixed order (idle memory first, the soak last), each against every
gateway in turn, so Palyra and LiteLLM see the same machine state:

- idle-rss: RSS right after start-up, and after a few requests and a pause.
- overhead: interleaved sequential rounds, non-streaming: direct, Palyra, LiteLLM, rotating.
- ttfb: the same with streams: added time to first byte and to the end of the stream.
- throughput / stream-throughput: closed loops at ``--concurrency``, direct first, then each gateway.
- loaded-rss: a closed loop of non-streaming and streaming requests, RSS sampled every 0.25 s.
- open-streams: ``--open-streams`` streams at once while the mock trickles their events, RSS sampled.
- soak: an open loop at ``--soak-rate`` for ``--soak-minutes``, RSS sampled every ``--soak-sample-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from backends import Backend, code_has_setting, journal_rows, postgres_schema, redis_prefix
from daemon_checks import record_load_end, record_stop
from daemon_proc import Daemon, DaemonSpec, cpu_snapshot, free_port, proc_status_kib, tree_rss_kib
from litellm_proc import LiteLLMProxy
from loadgen import (
    PROXIED_MODEL,
    Client,
    Outcome,
    RequestFn,
    RoundSamples,
    Samples,
    alternating,
    chat_body,
    run_interleaved,
    run_paced,
    run_sequential,
)
from mock_upstream import MockSettings, MockUpstream
from phases import RssSampler, Target, closed_loop, say, wait_quiet
from report import (
    DaemonRun,
    IdleRss,
    OpenStreams,
    Soak,
    latency_pcts,
    summarize_interleaved,
    ttfb_pcts,
)

SUITE_SCENARIOS = (
    "idle-rss",
    "overhead",
    "ttfb",
    "throughput",
    "stream-throughput",
    "loaded-rss",
    "open-streams",
    "soak",
)
CHAT_PATH = "/v1/chat/completions"
OPEN_STREAMS_GRACE_S = 120.0  # on top of the hold: how long a stream may take before it counts as failed
STREAM_EVENTS_BEYOND_CHUNKS = 4  # role, finish, usage, [DONE]


def proxied_body(stream: bool) -> bytes:
    """gpt-4o-mini; streams ask for the usage chunk, as Palyra itself does upstream, so the mock does
    the same work for a direct stream as for a proxied one and the client reads the same events."""
    return chat_body(stream=stream, model=PROXIED_MODEL, include_usage=stream)


@dataclass(slots=True)
class Suite:
    """The targets of one session and their results."""

    args: argparse.Namespace
    mock: MockUpstream
    direct: Target
    gateways: list[Target]
    runs: dict[str, DaemonRun]
    session: aiohttp.ClientSession
    clients: dict[str, list[Client]] = field(default_factory=dict)

    def client(self, target: Target, session: aiohttp.ClientSession | None = None) -> Client:
        """A client for the target (on the shared keep-alive session unless given another); every
        client is kept, so the requests sent to each gateway can be counted."""
        made = Client(session or self.session, target.base_url, target.token)
        self.clients.setdefault(target.name, []).append(made)
        return made

    def peers(self, target: Target) -> tuple[int, ...]:
        """The other gateways' processes: their CPU is not counted as other load on the machine."""
        return tuple(g.pid for g in self.gateways if g.pid is not None and g.name != target.name)

    def sent(self, name: str) -> int:
        return sum(c.sent for c in self.clients.get(name, []))

    def healthy(self, scenario: str) -> bool:
        down = [t.label for t in [self.direct, *self.gateways] if not t.alive()]
        if down:
            say(f"  {', '.join(down)} exited; skipping {scenario}")
        return not down


# --- the scenarios ----------------------------------------------------------------------------------


async def idle_rss(s: Suite) -> None:
    """A few sequential requests (half of them streams) load whatever loads lazily; then a pause."""
    n, settle = s.args.idle_requests, s.args.idle_settle_s
    for t in s.gateways:
        client = s.client(t)
        unary = client.unary(CHAT_PATH, proxied_body(False))
        stream = client.streaming(CHAT_PATH, proxied_body(True))
        await run_sequential(alternating(unary, stream), n)
        await asyncio.sleep(settle)
        run = s.runs[t.name]
        run.idle = IdleRss(run.rss_idle_kib, tree_rss_kib(t.pid), n, settle)
        after = f"after {n} requests and {settle:g} s {mib(run.idle.after_requests_kib)}"
        say(f"  {t.label}: RSS at start {mib(run.idle.at_start_kib)}, {after}")


async def interleaved(s: Suite, stream: bool) -> None:
    args = s.args
    body = proxied_body(stream)
    targets = [s.direct, *s.gateways]
    calls: list[RequestFn] = [
        (s.client(t).streaming if stream else s.client(t).unary)(CHAT_PATH, body) for t in targets
    ]
    await wait_quiet(args)
    for call in calls:
        await run_sequential(call, args.sequential_warmup)
    before = {t.name: cpu_snapshot(t.pid, s.mock.pid, s.peers(t)) for t in s.gateways}
    rounds, elapsed, client_cpu = await run_interleaved(calls, args.overhead_rounds, args.overhead_n)
    kind, scenario = ("streaming", "ttfb") if stream else ("non-streaming", "overhead")
    for k, t in enumerate(s.gateways, start=1):
        cpu = cpu_snapshot(t.pid, s.mock.pid, s.peers(t)).since(before[t.name])
        pair = RoundSamples(rounds[0], rounds[k], elapsed, client_cpu)
        label = f"{t.label}, {kind}, sequential"
        result = summarize_interleaved(scenario, label, stream, pair, cpu, target=t.name)
        s.runs[t.name].interleaved.append(result)
        errors = f", {result.error_count} errors" if result.error_count else ""
        ttfb = f"; added TTFB p50 {result.added_ttfb_ms['p50']} ms" if stream else ""
        say(
            f"  {label}: p50 direct {result.direct_ms['p50']} {t.name} {result.proxied_ms['p50']} added "
            f"{result.added_ms['p50']} ms, p99 added {result.added_ms['p99']} ms, own overhead p50 "
            f"{result.overhead_ms['p50']} ms{ttfb}{errors}"
        )


async def overhead(s: Suite) -> None:
    await interleaved(s, stream=False)


async def ttfb(s: Suite) -> None:
    await interleaved(s, stream=True)


async def closed_loops(s: Suite, stream: bool) -> None:
    """The direct baseline (what the client and the mock manage on their core), then each gateway."""
    body = proxied_body(stream)
    kind, scenario = ("streaming", "stream-throughput") if stream else ("non-streaming", "throughput")
    for t in [s.direct, *s.gateways]:
        client = s.client(t)
        call = (client.streaming if stream else client.unary)(CHAT_PATH, body)
        phase = await closed_loop(t, s.args, scenario, f"{t.label}, {kind}", call, s.mock.pid, s.peers(t))
        for name in [t.name] if t is not s.direct else list(s.runs):
            s.runs[name].phases.append(phase)


async def throughput(s: Suite) -> None:
    await closed_loops(s, stream=False)


async def stream_throughput(s: Suite) -> None:
    await closed_loops(s, stream=True)


async def loaded_rss(s: Suite) -> None:
    """Half non-streaming, half streaming requests at ``--concurrency``; the phase records the RSS."""
    for t in s.gateways:
        client = s.client(t)
        call = alternating(
            client.unary(CHAT_PATH, proxied_body(False)), client.streaming(CHAT_PATH, proxied_body(True))
        )
        phase = await closed_loop(
            t, s.args, "loaded-rss", f"{t.label}, mixed load (RSS)", call, s.mock.pid, s.peers(t)
        )
        s.runs[t.name].phases.append(phase)
        say(f"  {t.label}: RSS before {mib(phase.rss_before_kib)}, max under load {mib(phase.rss_max_kib)}")


async def open_streams(s: Suite) -> None:
    args = s.args
    events = args.mock_chunks + STREAM_EVENTS_BEYOND_CHUNKS
    interval_ms = args.open_streams_hold_s * 1000.0 / events
    for t in s.gateways:
        await wait_quiet(args)
        s.mock.configure(chunk_interval_ms=interval_ms)
        try:
            result = await hold_streams(s, t, args.open_streams, args.open_streams_hold_s, interval_ms)
        finally:
            s.mock.configure(chunk_interval_ms=0.0)
        s.runs[t.name].open_streams = result
        opened = "never all open" if result.open_s is None else f"all open after {result.open_s:.2f} s"
        say(
            f"  {t.label}: {result.completed}/{result.requested} streams completed, {opened}, at most "
            f"{result.peak_open} open at once, RSS "
            f"{mib(result.rss_before_kib)} before, peak {mib(result.rss_peak_kib)}"
            + (f", {result.error_count} errors" if result.error_count else "")
        )


async def hold_streams(s: Suite, t: Target, n: int, hold_s: float, interval_ms: float) -> OpenStreams:
    """Start ``n`` streams at once on ``n`` connections; they stay open about ``hold_s`` seconds."""
    opened = open_now = peak_open = 0
    all_open_at: float | None = None

    def first_byte() -> None:
        nonlocal opened, open_now, peak_open, all_open_at
        opened += 1
        open_now += 1
        peak_open = max(peak_open, open_now)
        if opened == n:
            all_open_at = time.perf_counter()

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=5)
    timeout = aiohttp.ClientTimeout(total=hold_s + OPEN_STREAMS_GRACE_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = s.client(t, session)
        body = proxied_body(True)

        async def one() -> Outcome:
            nonlocal open_now
            started_streaming = False

            def mark() -> None:
                nonlocal started_streaming
                started_streaming = True
                first_byte()

            outcome = await client.streaming(CHAT_PATH, body, mark)()
            if started_streaming:
                open_now -= 1
            return outcome

        rss_before = tree_rss_kib(t.pid)
        before = cpu_snapshot(t.pid, s.mock.pid, s.peers(t))
        started = time.perf_counter()
        async with RssSampler(t.pid).running() as rss:
            outcomes = await asyncio.gather(*(one() for _ in range(n)))
        open_s = None if all_open_at is None else all_open_at - started
        elapsed = time.perf_counter() - started
        cpu = cpu_snapshot(t.pid, s.mock.pid, s.peers(t)).since(before)
    samples = Samples()
    for outcome in outcomes:
        samples.add(outcome)
    return OpenStreams(
        requested=n,
        opened=opened,
        peak_open=peak_open,
        completed=samples.ok,
        errors=dict(samples.errors),
        error_samples=samples.error_samples,
        open_s=None if open_s is None else round(open_s, 3),
        elapsed_s=round(elapsed, 3),
        chunk_interval_ms=round(interval_ms, 1),
        ttfb_ms=ttfb_pcts(samples),
        rss_before_kib=rss_before,
        rss_peak_kib=rss.peak_kib,
        rss_after_kib=tree_rss_kib(t.pid),
        gateway_cpu_pct=round(100.0 * cpu.daemon_s / elapsed, 1) if elapsed else 0.0,
    )


async def soak(s: Suite) -> None:
    """An open loop at a fixed rate, one in four requests a stream; RSS every ``--soak-sample-s``."""
    for t in s.gateways:
        await wait_quiet(s.args)
        result = await soak_one(s, t)
        s.runs[t.name].soak = result
        growth = "-" if result.growth_pct is None else f"{result.growth_pct:+.1f}%"
        errors = f", {result.error_count} errors" if result.error_count else ""
        say(
            f"  {t.label}: {result.ok} ok at {result.achieved_per_s:,.0f}/s, RSS {mib(result.first_kib)} -> "
            f"{mib(result.last_kib)} ({growth}){errors}"
        )


async def soak_one(s: Suite, t: Target) -> Soak:
    args = s.args
    client = s.client(t)
    unary = client.unary(CHAT_PATH, proxied_body(False))
    call = alternating(unary, unary, unary, client.streaming(CHAT_PATH, proxied_body(True)))
    rss: list[dict[str, float]] = []
    next_sample = 0.0

    def tick(elapsed: float) -> None:
        nonlocal next_sample
        if elapsed >= next_sample:
            rss.append({"t_s": round(elapsed, 1), "rss_kib": float(tree_rss_kib(t.pid) or 0)})
            next_sample += args.soak_sample_s

    duration = args.soak_minutes * 60.0
    say(f"  {t.label}: soak for {duration:.0f} s at {args.soak_rate:g} req/s")
    paced = await run_paced(call, args.soak_rate, duration, max(64, args.concurrency), tick)
    rss.append({"t_s": round(paced.samples.elapsed_s, 1), "rss_kib": float(tree_rss_kib(t.pid) or 0)})
    return soak_result(args, paced.samples, paced.scheduled, paced.skipped, rss)


def soak_result(
    args: argparse.Namespace, samples: Samples, scheduled: int, skipped: int, rss: list[dict[str, float]]
) -> Soak:
    """Growth compares the last sample with the first one taken after the warm-up."""
    after = [r for r in rss if r["t_s"] >= args.soak_warmup_s and r["rss_kib"] > 0]
    first = int(after[0]["rss_kib"]) if after else None
    last = int(after[-1]["rss_kib"]) if after else None
    growth = None if not first or last is None or len(after) < 2 else round(100.0 * (last - first) / first, 2)
    elapsed = samples.elapsed_s or float("nan")
    return Soak(
        minutes=args.soak_minutes,
        rate_per_s=args.soak_rate,
        achieved_per_s=round(samples.ok / elapsed, 1),
        scheduled=scheduled,
        skipped=skipped,
        ok=samples.ok,
        errors=dict(samples.errors),
        error_samples=samples.error_samples,
        latency_ms=latency_pcts(samples),
        warmup_s=args.soak_warmup_s,
        samples=rss,
        first_kib=first,
        last_kib=last,
        growth_pct=growth,
    )


SCENARIOS: dict[str, Callable[[Suite], Awaitable[None]]] = {
    "idle-rss": idle_rss,
    "overhead": overhead,
    "ttfb": ttfb,
    "throughput": throughput,
    "stream-throughput": stream_throughput,
    "loaded-rss": loaded_rss,
    "open-streams": open_streams,
    "soak": soak,
}


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


async def run_scenarios(s: Suite, names: list[str]) -> None:
    for name in SUITE_SCENARIOS:
        if name in names:
            if not s.healthy(name):
                break
            say(f"{name}")
            await SCENARIOS[name](s)


# --- one session per backend --------------------------------------------------------------------------


def run_suite(
    runner: asyncio.Runner, args: argparse.Namespace, backend: Backend, names: list[str]
) -> list[DaemonRun]:
    """Start the mock, Palyra and (--compare litellm) LiteLLM, run the scenarios, stop them all."""
    palyra = DaemonRun(
        database=backend.database, access_log=False, proxied=True, gateway="palyra", backend=backend.name
    )
    runs = {"palyra": palyra}
    with contextlib.ExitStack() as stack:
        settings = MockSettings(chunks=args.mock_chunks, delay_ms=args.mock_delay_ms)
        mock = stack.enter_context(
            MockUpstream(free_port(), settings, server=args.mock_server, cpu=args.client_cpu)
        )
        palyra.upstream = mock.describe()
        say(f"mock upstream pid {mock.pid} on {mock.base_url} ({palyra.upstream})")
        pg = backend.database_url
        schema = stack.enter_context(postgres_schema(runner, pg)) if pg else ""
        has_prefix = bool(backend.redis_url) and code_has_setting(args.source_dir, "redis_key_prefix")
        prefix = stack.enter_context(redis_prefix(backend.redis_url, has_prefix))
        spec = DaemonSpec(
            cpu=args.server_cpu,
            access_log=False,
            database_url=pg,
            database_schema=schema,
            source_dir=args.source_dir,
            upstream_base_url=mock.base_url + "/v1",
            upstream_max_concurrency=max(64, args.concurrency, args.open_streams + 64),
            redis_url=backend.redis_url,
            redis_key_prefix=prefix,
            workers=args.workers,
            token_counting=args.token_counting,
        )
        daemon = stack.enter_context(Daemon(spec))
        palyra.rss_idle_kib = tree_rss_kib(daemon.pid)
        say(f"Palyra pid {daemon.pid} on {daemon.base_url} ({backend.name}, proxied to the mock upstream)")
        gateways = [Target("palyra", "Palyra", daemon.base_url, daemon.token, daemon.pid, daemon.alive)]
        proxy: LiteLLMProxy | None = None
        if args.compare == "litellm":
            proxy = stack.enter_context(
                LiteLLMProxy(mock.base_url + "/v1", cpu=args.server_cpu, redis_url=backend.redis_url)
            )
            runs["litellm"] = DaemonRun(
                database="-",
                access_log=False,
                proxied=True,
                gateway="litellm",
                backend=backend.name,
                version=f"litellm {proxy.version}",
                upstream=palyra.upstream,
                rss_idle_kib=tree_rss_kib(proxy.pid),
            )
            say(f"LiteLLM {proxy.version} pid {proxy.pid} on {proxy.base_url}")
            gateways.append(Target("litellm", "LiteLLM", proxy.base_url, proxy.token, proxy.pid, proxy.alive))
        direct = Target("direct", "Direct to mock", mock.base_url, "sk-bench-direct", None, mock.alive)
        runner.run(_session(args, mock, direct, gateways, runs, names))
        palyra.upstream_died = not mock.alive()
        record_load_end(palyra, daemon)
        record_stop(palyra, daemon, lambda: journal_rows(runner, daemon, pg, schema))
        if proxy is not None:
            finish_litellm(runs["litellm"], proxy)
        mock.__exit__()
        text = mock.stderr_text()
        palyra.upstream_stderr = text.splitlines()[-20:] if text else []
    return list(runs.values())


async def _session(
    args: argparse.Namespace,
    mock: MockUpstream,
    direct: Target,
    gateways: list[Target],
    runs: dict[str, DaemonRun],
    names: list[str],
) -> None:
    connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        suite = Suite(args, mock, direct, gateways, runs, session)
        await run_scenarios(suite, names)
    for name, run in runs.items():
        run.requests_sent = suite.sent(name)


def finish_litellm(run: DaemonRun, proxy: LiteLLMProxy) -> None:
    run.died = not proxy.alive()
    if not run.died:
        run.rss_after_kib = tree_rss_kib(proxy.pid)
        run.rss_peak_kib = proc_status_kib(proxy.pid, "VmHWM")
    run.stderr_problems = proxy.log_problems()
    code, seconds, killed = proxy.stop()
    run.stop_exit_code, run.stop_seconds, run.stop_killed = code, seconds, killed
    if run.failed:
        run.stderr_tail = proxy.log_tail()
