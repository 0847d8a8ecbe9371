"""Results as plain data, and the markdown report built from them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from daemon_proc import CpuTimes
from loadgen import RoundSamples, Samples, percentile

OVERHEAD_P50_TARGET_MS = 1.0
OVERHEAD_P99_TARGET_MS = 3.0
THROUGHPUT_TARGET_RPS = 3000.0
ADDED_TTFB_TARGET_MS = 1.0
DISTURBED_CPU_PCT = 20.0
CPU_NOTE = (
    "CPU columns: percent of one core over the measured phase (the machine's total is nproc x 100%). "
    "Mock CPU is the mock upstream's (proxied runs only). "
    "Other CPU is everything else (kernel networking, other processes) plus steal; above "
    f"{DISTURBED_CPU_PCT:.0f}% the phase is listed under Problems as disturbed."
)
INTERLEAVED_NOTE = (
    "Interleaved rounds: sequential requests on one keep-alive connection per target, alternating "
    "direct-to-mock and through-Palyra rounds (which side goes first alternates too). p50 is the median "
    "of the round medians, p99 is over all rounds' requests. Added p50 is the median of the per-round "
    "differences (Palyra round median minus direct round median); added p99 is Palyra p99 minus direct "
    "p99. Overhead is Palyra's x-palyra-overhead-ms header on the proxied requests."
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

    @property
    def failed(self) -> bool:
        return (
            self.died
            or self.stop_killed
            or self.upstream_died
            or any(p.error_count for p in self.phases)
            or any(i.error_count for i in self.interleaved)
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
    other_s = max(0.0, cpu.busy_s - cpu.daemon_s - cpu.postgres_s - cpu.upstream_s - client_cpu_s)
    return {
        "daemon_cpu_pct": round(100.0 * cpu.daemon_s / elapsed, 1),
        "client_cpu_pct": round(100.0 * client_cpu_s / elapsed, 1),
        "upstream_cpu_pct": round(100.0 * cpu.upstream_s / elapsed, 1),
        "postgres_cpu_pct": round(100.0 * cpu.postgres_s / elapsed, 1),
        "other_cpu_pct": round(100.0 * other_s / elapsed, 1),
        "steal_pct": round(100.0 * cpu.steal_s / elapsed, 1),
    }


def summarize(scenario: str, label: str, concurrency: int, samples: Samples, cpu: CpuTimes) -> Phase:
    """Percentiles, rates and CPU shares (100% is one core) of one measured phase."""
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
    )


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
    scenario: str, label: str, stream: bool, samples: RoundSamples, cpu: CpuTimes
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
        round_medians_ms={"direct": [round(v, 3) for v in d_med], "palyra": [round(v, 3) for v in p_med]},
        **_cpu_shares(cpu, samples.client_cpu_s, samples.elapsed_s),
    )


# --- markdown -------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def _drain(run: DaemonRun) -> str:
    if run.journal_pending_after_load is None:
        return "-"
    return "not drained" if run.journal_drain_s is None else f"{run.journal_drain_s:.2f} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _run_name(run: DaemonRun) -> str:
    if run.proxied:
        return f"{run.database}, proxied"
    return f"{run.database}, access log on" if run.access_log else run.database


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
        "Daemon CPU",
        "Client CPU",
        *(["Mock CPU"] if run.proxied else []),
        "PostgreSQL CPU",
        "Other CPU",
    ]
    rows = [
        [
            p.label,
            str(p.concurrency),
            str(p.ok),
            str(p.error_count),
            f"{p.rate_per_s:,.0f}",
            _ms(p.latency_ms["p50"]),
            _ms(p.latency_ms["p99"]),
            _ms(p.overhead_ms["p50"]),
            _ms(p.overhead_ms["p99"]),
            _ms(p.ttfb_ms["p50"]),
            _ms(p.ttfb_ms["p99"]),
            _pct(p.daemon_cpu_pct),
            _pct(p.client_cpu_pct),
            *([_pct(p.upstream_cpu_pct)] if run.proxied else []),
            _pct(p.postgres_cpu_pct),
            _pct(p.other_cpu_pct + p.steal_pct),
        ]
        for p in run.phases
    ]
    return _table(header, rows)


def interleaved_table(run: DaemonRun) -> list[str]:
    header = [
        "Scenario",
        "Metric",
        "Rounds x requests",
        "Direct p50 ms",
        "Direct p99 ms",
        "Palyra p50 ms",
        "Palyra p99 ms",
        "Added p50 ms",
        "Added p99 ms",
        "Overhead p50 ms",
        "Overhead p99 ms",
        "Errors",
        "Daemon CPU",
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
                    _ms(d["p50"]),
                    _ms(d["p99"]),
                    _ms(p["p50"]),
                    _ms(p["p99"]),
                    _ms(a["p50"]),
                    _ms(a["p99"]),
                    _ms(i.overhead_ms["p50"]) if first else "",
                    _ms(i.overhead_ms["p99"]) if first else "",
                    str(i.error_count) if first else "",
                    _pct(i.daemon_cpu_pct) if first else "",
                    _pct(i.client_cpu_pct) if first else "",
                    _pct(i.upstream_cpu_pct) if first else "",
                    _pct(i.postgres_cpu_pct) if first else "",
                    _pct(i.other_cpu_pct + i.steal_pct) if first else "",
                ]
            )
    return _table(header, rows)


def daemon_table(runs: list[DaemonRun]) -> list[str]:
    header = [
        "Daemon",
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
                _run_name(run),
                _mib(run.rss_idle_kib),
                _mib(run.rss_after_kib),
                _mib(run.rss_peak_kib),
                str(run.requests_sent),
                "-" if run.journal_pending_after_load is None else f"{run.journal_pending_after_load:.0f}",
                _drain(run),
                "-" if run.journal_rows_after_stop is None else str(run.journal_rows_after_stop),
                "-" if run.journal_dropped is None else f"{run.journal_dropped:.0f}",
                stop,
            ]
        )
    return _table(header, rows)


def _find(runs: list[DaemonRun], scenario: str) -> Phase | None:
    for run in runs:
        if run.access_log:
            continue
        for p in run.phases:
            if p.scenario == scenario:
                return p
    return None


def _find_interleaved(runs: list[DaemonRun], scenario: str) -> Interleaved | None:
    for run in runs:
        for i in run.interleaved:
            if i.scenario == scenario:
                return i
    return None


def _check(name: str, goal: str, value: float | None, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value, "met": met}


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def target_rows(runs: list[DaemonRun]) -> list[dict[str, Any]]:
    """The targets, checked against the access-log-off run."""
    checks: list[dict[str, Any]] = []
    seq, thr = _find(runs, "sequential"), _find(runs, "throughput")
    for phase in (seq, thr):
        if phase is None:
            continue
        where = "sequential" if phase is seq else f"{phase.concurrency} connections"
        p50, p99 = phase.overhead_ms["p50"], phase.overhead_ms["p99"]
        goal50, goal99 = f"<= {OVERHEAD_P50_TARGET_MS:g} ms", f"<= {OVERHEAD_P99_TARGET_MS:g} ms"
        checks.append(_check(f"Overhead p50, {where}", goal50, p50, _at_most(p50, OVERHEAD_P50_TARGET_MS)))
        checks.append(_check(f"Overhead p99, {where}", goal99, p99, _at_most(p99, OVERHEAD_P99_TARGET_MS)))
    if thr is not None:
        met = thr.rate_per_s >= THROUGHPUT_TARGET_RPS
        goal = f">= {THROUGHPUT_TARGET_RPS:,.0f}"
        checks.append(
            _check(f"Non-streaming chat requests/s, {thr.concurrency} connections", goal, thr.rate_per_s, met)
        )
    return checks + proxied_target_rows(runs)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def proxied_target_rows(runs: list[DaemonRun]) -> list[dict[str, Any]]:
    """The targets on the proxied path: added latency against the direct path, the overhead header,
    throughput and added time to first byte."""
    checks: list[dict[str, Any]] = []
    goal50, goal99 = f"<= {OVERHEAD_P50_TARGET_MS:g} ms", f"<= {OVERHEAD_P99_TARGET_MS:g} ms"
    seq = _find_interleaved(runs, "proxied-overhead")
    if seq is not None:
        for name, block in (("Proxied: added latency", seq.added_ms), ("Proxied: overhead", seq.overhead_ms)):
            p50, p99 = block["p50"], block["p99"]
            checks.append(
                _check(f"{name} p50, sequential", goal50, p50, _at_most(p50, OVERHEAD_P50_TARGET_MS))
            )
            checks.append(
                _check(f"{name} p99, sequential", goal99, p99, _at_most(p99, OVERHEAD_P99_TARGET_MS))
            )
    thr = _find(runs, "proxied-throughput")
    if thr is not None:
        p50, p99 = thr.overhead_ms["p50"], thr.overhead_ms["p99"]
        where = f"{thr.concurrency} connections"
        checks.append(
            _check(f"Proxied: overhead p50, {where}", goal50, p50, _at_most(p50, OVERHEAD_P50_TARGET_MS))
        )
        checks.append(
            _check(f"Proxied: overhead p99, {where}", goal99, p99, _at_most(p99, OVERHEAD_P99_TARGET_MS))
        )
        goal = f">= {THROUGHPUT_TARGET_RPS:,.0f}"
        met = thr.rate_per_s >= THROUGHPUT_TARGET_RPS
        checks.append(_check(f"Proxied: non-streaming chat requests/s, {where}", goal, thr.rate_per_s, met))
    goal_ttfb = f"<= {ADDED_TTFB_TARGET_MS:g} ms"
    seq_stream = _find_interleaved(runs, "proxied-overhead-stream")
    if seq_stream is not None:
        added = seq_stream.added_ttfb_ms["p50"]
        met_ttfb = _at_most(added, ADDED_TTFB_TARGET_MS)
        checks.append(_check("Proxied: added TTFB p50, sequential streams", goal_ttfb, added, met_ttfb))
    stream, direct = _find(runs, "proxied-stream"), _find(runs, "proxied-stream-direct")
    if stream is not None and direct is not None:
        added = _minus(stream.ttfb_ms["p50"], direct.ttfb_ms["p50"])
        name = f"Proxied: added TTFB p50, {stream.concurrency} streams (vs direct at {direct.concurrency})"
        checks.append(_check(name, goal_ttfb, added, _at_most(added, ADDED_TTFB_TARGET_MS)))
    return checks


def targets_table(runs: list[DaemonRun]) -> list[str]:
    rows = [
        [
            c["target"],
            c["goal"],
            "-" if c["measured"] is None else f"{c['measured']:,.2f}",
            {True: "yes", False: "**no**", None: "-"}[c["met"]],
        ]
        for c in target_rows(runs)
    ]
    return _table(["Target", "Goal", "Measured", "Met"], rows)


def problems_section(runs: list[DaemonRun]) -> list[str]:
    lines: list[str] = []
    for run in runs:
        for p in run.phases:
            if p.error_count:
                kinds = ", ".join(f"{k} x{n}" for k, n in sorted(p.errors.items()))
                lines.append(f"- {p.label} ({_run_name(run)}): {kinds}")
                lines += [f"  - sample: `{s}`" for s in p.error_samples]
        for i in run.interleaved:
            if i.error_count:
                kinds = ", ".join(f"{k} x{n}" for k, n in sorted(i.errors.items()))
                lines.append(f"- {i.label} ({_run_name(run)}): {kinds}")
                lines += [f"  - sample: `{s}`" for s in i.error_samples]
        measured: list[Interleaved | Phase] = [*run.interleaved, *run.phases]
        for q in measured:
            if q.other_cpu_pct + q.steal_pct > DISTURBED_CPU_PCT:
                share = f"{q.other_cpu_pct + q.steal_pct:.0f}% of a core"
                lines.append(f"- {q.label} ({_run_name(run)}): disturbed, other CPU use {share}")
        if run.died:
            lines.append(f"- the daemon ({_run_name(run)}) exited during the run")
        if run.upstream_died:
            lines.append(f"- the mock upstream ({_run_name(run)}) exited during the run")
        if run.upstream_stderr:
            lines.append(f"- mock upstream stderr ({_run_name(run)}), last {len(run.upstream_stderr)} lines:")
            lines += ["", "```", *run.upstream_stderr, "```", ""]
        rows = run.journal_rows_after_stop
        if rows is not None and rows != run.requests_sent:
            lines.append(f"- journal ({_run_name(run)}): {rows} rows for {run.requests_sent} requests sent")
        if run.stderr_problems:
            lines.append(
                f"- daemon stderr warnings/errors ({_run_name(run)}), last {len(run.stderr_problems)}:"
            )
            lines += ["", "```", *run.stderr_problems, "```", ""]
    return lines


def markdown(runs: list[DaemonRun], machine: dict[str, str], command: str) -> str:
    lines = ["## Palyra benchmark"]
    for run in runs:
        lines += ["", f"### {_run_name(run)}", ""]
        if run.proxied:
            lines += [f"Model gpt-4o-mini through Palyra to the mock upstream: {run.upstream}.", ""]
        if run.interleaved:
            lines += [*interleaved_table(run), "", INTERLEAVED_NOTE, ""]
        if run.phases:
            lines += results_table(run)
    lines += ["", CPU_NOTE, "", "### Daemon", "", *daemon_table(runs)]
    lines += ["", "### Targets", "", *targets_table(runs)]
    problems = problems_section(runs)
    lines += ["", "### Problems", "", *(problems or ["none: no errors, no warnings in the daemon log"])]
    lines += ["", "### Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "### Command", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
