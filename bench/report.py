"""Results as plain data, and the markdown report built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon_proc import CpuTimes
from loadgen import Samples, percentile

OVERHEAD_P50_TARGET_MS = 1.0
OVERHEAD_P99_TARGET_MS = 3.0
THROUGHPUT_TARGET_RPS = 3000.0
DISTURBED_CPU_PCT = 20.0
CPU_NOTE = (
    "CPU columns: percent of one core over the measured phase (the machine's total is nproc x 100%). "
    "Other CPU is everything else (kernel networking, other processes) plus steal; above "
    f"{DISTURBED_CPU_PCT:.0f}% the phase is listed under Problems as disturbed."
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

    @property
    def failed(self) -> bool:
        return self.died or self.stop_killed or any(p.error_count for p in self.phases)


def _pcts(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, q in (("p50", 50.0), ("p99", 99.0)):
        v = percentile(values, q)
        out[name] = None if v is None else round(v * scale, 3)
    return out


def summarize(scenario: str, label: str, concurrency: int, samples: Samples, cpu: CpuTimes) -> Phase:
    """Percentiles, rates and CPU shares (100% is one core) of one measured phase."""
    elapsed = samples.elapsed_s or float("nan")
    other_s = max(0.0, cpu.busy_s - cpu.daemon_s - cpu.postgres_s - samples.client_cpu_s)
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
        daemon_cpu_pct=round(100.0 * cpu.daemon_s / elapsed, 1),
        client_cpu_pct=round(100.0 * samples.client_cpu_s / elapsed, 1),
        postgres_cpu_pct=round(100.0 * cpu.postgres_s / elapsed, 1),
        other_cpu_pct=round(100.0 * other_s / elapsed, 1),
        steal_pct=round(100.0 * cpu.steal_s / elapsed, 1),
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
            _pct(p.postgres_cpu_pct),
            _pct(p.other_cpu_pct + p.steal_pct),
        ]
        for p in run.phases
    ]
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
        for p in run.phases:
            if p.other_cpu_pct + p.steal_pct > DISTURBED_CPU_PCT:
                share = f"{p.other_cpu_pct + p.steal_pct:.0f}% of a core"
                lines.append(f"- {p.label} ({_run_name(run)}): disturbed, other CPU use {share}")
        if run.died:
            lines.append(f"- the daemon ({_run_name(run)}) exited during the run")
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
        lines += ["", f"### {_run_name(run)}", "", *results_table(run)]
    lines += ["", CPU_NOTE, "", "### Daemon", "", *daemon_table(runs)]
    lines += ["", "### Targets", "", *targets_table(runs)]
    problems = problems_section(runs)
    lines += ["", "### Problems", "", *(problems or ["none: no errors, no warnings in the daemon log"])]
    lines += ["", "### Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "### Command", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
