"""Results as plain data, and the markdown report built from them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from daemon_proc import CpuTimes
from loadgen import RoundSamples, Samples, percentile

DISTURBED_CPU_PCT = 20.0
GATEWAY_NAMES = {"palyra": "Palyra", "litellm": "LiteLLM", "direct": "Direct"}
CPU_NOTE = (
    "CPU columns: percent of one core over the measured phase (the machine's total is nproc x 100%). "
    "Gateway CPU is the gateway's (Palyra's or LiteLLM's process and its children); "
    "Mock CPU is the mock upstream's (proxied runs only). "
    "Other CPU is everything else (kernel networking, other processes) plus steal, less the other "
    "gateway's CPU when both run; above "
    f"{DISTURBED_CPU_PCT:.0f}% the phase is listed under Problems as disturbed."
)
INTERLEAVED_NOTE = (
    "Interleaved rounds: sequential requests on one keep-alive connection per target, alternating "
    "direct-to-mock and through-Palyra rounds (which side goes first alternates too). p50 is the median "
    "of the round medians, p99 is over all rounds' requests. Added p50 is the median of the per-round "
    "differences (Palyra round median minus direct round median); added p99 is Palyra p99 minus direct "
    "p99. Overhead is the gateway's own figure: Palyra's x-palyra-overhead-ms header, LiteLLM's "
    "x-litellm-overhead-duration-ms. With --compare litellm the rounds rotate over direct, Palyra and "
    "LiteLLM, and the gateway CPU is over all of them."
)


@dataclass(slots=True)
class Phase:
    """One measured scenario against one daemon."""

    scenario: str
    label: str
    concurrency: int
    ok: int
    errors: dict[str, int]
    error_samples: list[str]
    elapsed_s: float
    rate_per_s: float
    latency_ms: dict[str, float | None]
    overhead_ms: dict[str, float | None]
    ttfb_ms: dict[str, float | None]
    daemon_cpu_pct: float
    client_cpu_pct: float
    postgres_cpu_pct: float
    other_cpu_pct: float
    steal_pct: float
    upstream_cpu_pct: float = 0.0
    target: str = "palyra"  # who answered: palyra, litellm, or direct (the mock itself)
    rss_before_kib: int | None = None  # the target's RSS (process tree) before the phase
    rss_max_kib: int | None = None  # and the largest of the samples taken during it

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(slots=True)
class Interleaved:
    """Sequential rounds alternating direct-to-mock and through-Palyra: Palyra's added latency."""

    scenario: str
    label: str
    stream: bool
    rounds: int
    per_round: int
    direct_ok: int
    proxied_ok: int
    errors: dict[str, int]  # keys say the side: "direct: HTTP 502", "palyra: HTTP 500"
    error_samples: list[str]
    elapsed_s: float
    direct_ms: dict[str, float | None]  # p50 = median of round medians, p99 over all requests
    proxied_ms: dict[str, float | None]
    added_ms: dict[str, float | None]  # p50 = median of per-round differences, p99 = difference of p99s
    direct_ttfb_ms: dict[str, float | None]
    proxied_ttfb_ms: dict[str, float | None]
    added_ttfb_ms: dict[str, float | None]
    overhead_ms: dict[str, float | None]  # x-palyra-overhead-ms over all proxied requests
    round_medians_ms: dict[str, list[float]]  # direct, palyra; latency of each round
    daemon_cpu_pct: float
    client_cpu_pct: float
    upstream_cpu_pct: float
    postgres_cpu_pct: float
    other_cpu_pct: float
    steal_pct: float
    target: str = "palyra"  # the gateway compared with the direct rounds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(slots=True)
class IdleRss:
    """A gateway's memory with nothing to do: right after start-up, and after a few requests (which load
    what is loaded lazily, such as a tokenizer) and a pause."""

    at_start_kib: int | None
    after_requests_kib: int | None
    requests: int
    settle_s: float


@dataclass(slots=True)
class OpenStreams:
    """Many streams held open at once through one gateway, the mock trickling their events."""

    requested: int
    opened: int  # streams whose first byte arrived
    peak_open: int  # the most streams between their first byte and their end at one moment
    completed: int  # streams that ended with data: [DONE]
    errors: dict[str, int]
    error_samples: list[str]
    open_s: float | None  # from the first request until every stream had its first byte; None: never
    elapsed_s: float
    chunk_interval_ms: float
    ttfb_ms: dict[str, float | None]
    rss_before_kib: int | None
    rss_peak_kib: int | None  # the largest sample while the streams were open
    rss_after_kib: int | None
    gateway_cpu_pct: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(slots=True)
class Soak:
    """An open-loop load at a fixed rate for minutes, the gateway's RSS sampled at a fixed interval."""

    minutes: float
    rate_per_s: float  # the schedule
    achieved_per_s: float  # successful requests per second
    scheduled: int
    skipped: int  # due while too many were in flight: not sent
    ok: int
    errors: dict[str, int]
    error_samples: list[str]
    latency_ms: dict[str, float | None]
    warmup_s: float  # samples before this are not compared
    samples: list[dict[str, float]]  # {"t_s", "rss_kib"}
    first_kib: int | None  # first sample after the warm-up
    last_kib: int | None
    growth_pct: float | None  # last vs first

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(slots=True)
class DaemonRun:
    """One daemon's life: its settings, the phases run against it, memory, journal and shutdown."""

    database: str
    access_log: bool
    phases: list[Phase] = field(default_factory=list)
    rss_idle_kib: int | None = None
    rss_after_kib: int | None = None
    rss_peak_kib: int | None = None
    requests_sent: int = 0
    journal_pending_after_load: float | None = None
    journal_drain_s: float | None = None
    journal_dropped: float | None = None
    journal_rows_after_stop: int | None = None
    stop_exit_code: int | None = None
    stop_seconds: float | None = None
    stop_killed: bool = False
    died: bool = False
    stderr_problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""
    proxied: bool = False  # served gpt-4o-mini from the mock upstream
    upstream: str = ""  # the mock upstream's description
    interleaved: list[Interleaved] = field(default_factory=list)
    upstream_died: bool = False
    upstream_stderr: list[str] = field(default_factory=list)
    gateway: str = "palyra"  # or litellm (--compare litellm)
    backend: str = "embedded"  # embedded, postgres (journal only) or postgres+redis
    version: str = ""  # the gateway's version (LiteLLM's; Palyra's is under Machine)
    idle: IdleRss | None = None
    open_streams: OpenStreams | None = None
    soak: Soak | None = None

    @property
    def failed(self) -> bool:
        return (
            self.died
            or self.stop_killed
            or self.upstream_died
            or any(p.error_count for p in self.phases)
            or any(i.error_count for i in self.interleaved)
            or bool(self.open_streams and self.open_streams.error_count)
            or bool(self.soak and self.soak.error_count)
        )


def _pcts(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, q in (("p50", 50.0), ("p99", 99.0)):
        v = percentile(values, q)
        out[name] = None if v is None else round(v * scale, 3)
    return out


def _cpu_shares(cpu: CpuTimes, client_cpu_s: float, elapsed_s: float) -> dict[str, float]:
    """CPU of each party in percent of one core; "other" is the machine's busy time minus theirs."""
    elapsed = elapsed_s or float("nan")
    known = cpu.daemon_s + cpu.postgres_s + cpu.upstream_s + cpu.peers_s + client_cpu_s
    other_s = max(0.0, cpu.busy_s - known)
    return {
        "daemon_cpu_pct": round(100.0 * cpu.daemon_s / elapsed, 1),
        "client_cpu_pct": round(100.0 * client_cpu_s / elapsed, 1),
        "upstream_cpu_pct": round(100.0 * cpu.upstream_s / elapsed, 1),
        "postgres_cpu_pct": round(100.0 * cpu.postgres_s / elapsed, 1),
        "other_cpu_pct": round(100.0 * other_s / elapsed, 1),
        "steal_pct": round(100.0 * cpu.steal_s / elapsed, 1),
    }


def summarize(
    scenario: str,
    label: str,
    concurrency: int,
    samples: Samples,
    cpu: CpuTimes,
    *,
    target: str = "palyra",
    rss: tuple[int | None, int | None] = (None, None),
) -> Phase:
    """Percentiles, rates and CPU shares (100% is one core) of one measured phase; ``rss`` is the
    target's RSS before the phase and the largest sample during it."""
    elapsed = samples.elapsed_s or float("nan")
    return Phase(
        scenario=scenario,
        label=label,
        concurrency=concurrency,
        ok=samples.ok,
        errors=dict(samples.errors),
        error_samples=samples.error_samples,
        elapsed_s=round(samples.elapsed_s, 3),
        rate_per_s=round(samples.ok / elapsed, 1),
        latency_ms=_pcts(samples.latencies_s, 1000.0),
        overhead_ms=_pcts(samples.overheads_ms),
        ttfb_ms=_pcts(samples.ttfbs_s, 1000.0),
        **_cpu_shares(cpu, samples.client_cpu_s, samples.elapsed_s),
        target=target,
        rss_before_kib=rss[0],
        rss_max_kib=rss[1],
    )


def latency_pcts(samples: Samples) -> dict[str, float | None]:
    return _pcts(samples.latencies_s, 1000.0)


def ttfb_pcts(samples: Samples) -> dict[str, float | None]:
    return _pcts(samples.ttfbs_s, 1000.0)


def _pooled(rounds: list[Samples], attr: str) -> list[float]:
    values: list[float] = []
    for r in rounds:
        values += getattr(r, attr)
    return values


def _round_medians(rounds: list[Samples], attr: str) -> list[float]:
    """Each round's median in ms (rounds without successful requests are skipped)."""
    out = []
    for r in rounds:
        p50 = percentile(getattr(r, attr), 50.0)
        if p50 is not None:
            out.append(p50 * 1000.0)
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _compare(
    direct: list[Samples], proxied: list[Samples], attr: str
) -> tuple[
    dict[str, float | None], dict[str, float | None], dict[str, float | None], list[float], list[float]
]:
    """Direct and proxied p50 (median of round medians) and p99 (pooled), and what Palyra adds."""
    d_med, p_med = _round_medians(direct, attr), _round_medians(proxied, attr)
    d99 = _pcts(_pooled(direct, attr), 1000.0)["p99"]
    p99 = _pcts(_pooled(proxied, attr), 1000.0)["p99"]
    paired = [p - d for d, p in zip(d_med, p_med, strict=False)]
    added99 = None if d99 is None or p99 is None else round(p99 - d99, 3)
    return (
        {"p50": _median(d_med), "p99": d99},
        {"p50": _median(p_med), "p99": p99},
        {"p50": _median(paired), "p99": added99},
        d_med,
        p_med,
    )


def summarize_interleaved(
    scenario: str, label: str, stream: bool, samples: RoundSamples, cpu: CpuTimes, target: str = "palyra"
) -> Interleaved:
    errors: dict[str, int] = {}
    error_samples: list[str] = []
    for side, rounds in (("direct", samples.direct), ("palyra", samples.proxied)):
        for r in rounds:
            for kind, n in r.errors.items():
                errors[f"{side}: {kind}"] = errors.get(f"{side}: {kind}", 0) + n
            error_samples += [f"{side}: {e}" for e in r.error_samples]
    direct, proxied, added, d_med, p_med = _compare(samples.direct, samples.proxied, "latencies_s")
    none: dict[str, float | None] = {"p50": None, "p99": None}
    ttfb = _compare(samples.direct, samples.proxied, "ttfbs_s") if stream else (none, none, none, [], [])
    return Interleaved(
        scenario=scenario,
        label=label,
        stream=stream,
        rounds=len(samples.proxied),
        per_round=samples.proxied[0].attempts if samples.proxied else 0,
        direct_ok=sum(r.ok for r in samples.direct),
        proxied_ok=sum(r.ok for r in samples.proxied),
        errors=errors,
        error_samples=error_samples[:6],
        elapsed_s=round(samples.elapsed_s, 3),
        direct_ms=direct,
        proxied_ms=proxied,
        added_ms=added,
        direct_ttfb_ms=ttfb[0],
        proxied_ttfb_ms=ttfb[1],
        added_ttfb_ms=ttfb[2],
        overhead_ms=_pcts(_pooled(samples.proxied, "overheads_ms")),
        round_medians_ms={"direct": [round(v, 3) for v in d_med], target: [round(v, 3) for v in p_med]},
        **_cpu_shares(cpu, samples.client_cpu_s, samples.elapsed_s),
        target=target,
    )


# --- markdown -------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def _drain(run: DaemonRun) -> str:
    if run.journal_pending_after_load is None:
        return "-"
    return "not drained" if run.journal_drain_s is None else f"{run.journal_drain_s:.2f} s"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def run_name(run: DaemonRun) -> str:
    """``embedded, palyra`` (the suite), ``postgres+redis, litellm``, ``embedded, deterministic``..."""
    if run.proxied:
        return f"{run.backend}, {run.gateway}"
    return f"{run.backend}, deterministic" + (", access log on" if run.access_log else "")


def results_table(run: DaemonRun) -> list[str]:
    header = [
        "Scenario",
        "Conns",
        "OK",
        "Errors",
        "Rate /s",
        "Latency p50 ms",
        "Latency p99 ms",
        "Overhead p50 ms",
        "Overhead p99 ms",
        "TTFB p50 ms",
        "TTFB p99 ms",
        "Gateway CPU",
        "Client CPU",
        *(["Mock CPU"] if run.proxied else []),
        "PostgreSQL CPU",
        "Other CPU",
        "RSS before",
        "RSS max",
    ]
    rows = [
        [
            p.label,
            str(p.concurrency),
            str(p.ok),
            str(p.error_count),
            f"{p.rate_per_s:,.0f}",
            ms(p.latency_ms["p50"]),
            ms(p.latency_ms["p99"]),
            ms(p.overhead_ms["p50"]),
            ms(p.overhead_ms["p99"]),
            ms(p.ttfb_ms["p50"]),
            ms(p.ttfb_ms["p99"]),
            pct(p.daemon_cpu_pct),
            pct(p.client_cpu_pct),
            *([pct(p.upstream_cpu_pct)] if run.proxied else []),
            pct(p.postgres_cpu_pct),
            pct(p.other_cpu_pct + p.steal_pct),
            mib(p.rss_before_kib),
            mib(p.rss_max_kib),
        ]
        for p in run.phases
    ]
    return table(header, rows)


def interleaved_table(run: DaemonRun) -> list[str]:
    name = GATEWAY_NAMES.get(run.gateway, run.gateway)
    header = [
        "Scenario",
        "Metric",
        "Rounds x requests",
        "Direct p50 ms",
        "Direct p99 ms",
        f"{name} p50 ms",
        f"{name} p99 ms",
        "Added p50 ms",
        "Added p99 ms",
        "Overhead p50 ms",
        "Overhead p99 ms",
        "Errors",
        "Gateway CPU",
        "Client CPU",
        "Mock CPU",
        "PostgreSQL CPU",
        "Other CPU",
    ]
    rows = []
    for i in run.interleaved:
        metrics = [("latency", i.direct_ms, i.proxied_ms, i.added_ms)]
        if i.stream:
            metrics.append(("TTFB", i.direct_ttfb_ms, i.proxied_ttfb_ms, i.added_ttfb_ms))
        for n, (metric, d, p, a) in enumerate(metrics):
            first = n == 0
            rows.append(
                [
                    i.label if first else "",
                    metric,
                    f"{i.rounds} x {i.per_round}" if first else "",
                    ms(d["p50"]),
                    ms(d["p99"]),
                    ms(p["p50"]),
                    ms(p["p99"]),
                    ms(a["p50"]),
                    ms(a["p99"]),
                    ms(i.overhead_ms["p50"]) if first else "",
                    ms(i.overhead_ms["p99"]) if first else "",
                    str(i.error_count) if first else "",
                    pct(i.daemon_cpu_pct) if first else "",
                    pct(i.client_cpu_pct) if first else "",
                    pct(i.upstream_cpu_pct) if first else "",
                    pct(i.postgres_cpu_pct) if first else "",
                    pct(i.other_cpu_pct + i.steal_pct) if first else "",
                ]
            )
    return table(header, rows)


def memory_table(runs: list[DaemonRun]) -> list[str]:
    """Idle RSS, open streams and the soak, one row per gateway that ran any of them."""
    header = [
        "Gateway",
        "RSS at start",
        "RSS idle after requests",
        "Open streams: completed / asked",
        "Open at once (max)",
        "Open streams: all open after",
        "RSS with streams open (peak)",
        "Stream TTFB p50 / p99 ms",
        "Soak: rate asked / achieved",
        "Soak: RSS first / last",
        "Soak: growth",
    ]
    rows = []
    for run in runs:
        i, o, k = run.idle, run.open_streams, run.soak
        if i is None and o is None and k is None:
            continue
        rows.append(
            [
                run_name(run),
                mib(i.at_start_kib) if i else mib(run.rss_idle_kib),
                mib(i.after_requests_kib) if i else "-",
                f"{o.completed} / {o.requested}" if o else "-",
                str(o.peak_open) if o else "-",
                ("never" if o.open_s is None else f"{o.open_s:.2f} s") if o else "-",
                mib(o.rss_peak_kib) if o else "-",
                f"{ms(o.ttfb_ms['p50'])} / {ms(o.ttfb_ms['p99'])}" if o else "-",
                f"{k.rate_per_s:,.0f} / {k.achieved_per_s:,.0f} per s" if k else "-",
                f"{mib(k.first_kib)} / {mib(k.last_kib)}" if k else "-",
                ("-" if k.growth_pct is None else f"{k.growth_pct:+.1f}%") if k else "-",
            ]
        )
    return table(header, rows) if rows else []


def soak_samples(run: DaemonRun) -> str:
    """The soak's RSS samples on one line: ``0:150.1 60:152.3 ...`` (seconds:MiB)."""
    if run.soak is None:
        return ""
    return " ".join(f"{s['t_s']:.0f}s:{s['rss_kib'] / 1024:.1f}" for s in run.soak.samples)


def daemon_table(runs: list[DaemonRun]) -> list[str]:
    header = [
        "Gateway",
        "RSS idle",
        "RSS after load",
        "RSS peak",
        "/v1 requests sent",
        "Journal pending after load",
        "Drained in",
        "Journal rows after stop",
        "Dropped",
        "SIGTERM to exit",
    ]
    rows = []
    for run in runs:
        stop = "-" if run.stop_seconds is None else f"{run.stop_seconds:.2f} s (exit {run.stop_exit_code})"
        if run.stop_killed:
            stop += ", SIGKILLed"
        rows.append(
            [
                run_name(run),
                mib(run.rss_idle_kib),
                mib(run.rss_after_kib),
                mib(run.rss_peak_kib),
                str(run.requests_sent),
                "-" if run.journal_pending_after_load is None else f"{run.journal_pending_after_load:.0f}",
                _drain(run),
                "-" if run.journal_rows_after_stop is None else str(run.journal_rows_after_stop),
                "-" if run.journal_dropped is None else f"{run.journal_dropped:.0f}",
                stop,
            ]
        )
    return table(header, rows)
