"""The benchmark's verdict: every suite figure of Palyra beside LiteLLM's with the ratio and the target,
the deterministic path's targets, the problems, and the whole markdown report."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from report import (
    CPU_NOTE,
    DISTURBED_CPU_PCT,
    GATEWAY_NAMES,
    INTERLEAVED_NOTE,
    DaemonRun,
    Interleaved,
    Phase,
    daemon_table,
    interleaved_table,
    memory_table,
    results_table,
    run_name,
    soak_samples,
    table,
)

OVERHEAD_P50_TARGET_MS = 1.0
OVERHEAD_P99_TARGET_MS = 3.0
THROUGHPUT_TARGET_RPS = 3000.0
ADDED_TTFB_TARGET_MS = 1.0
OPEN_STREAMS_RSS_TARGET_MB = 300.0
IDLE_RSS_TARGET_MB = 80.0
SOAK_GROWTH_TARGET_PCT = 10.0
MB = 1_000_000 / 1024  # KiB per MB: memory targets are in MB (10^6 bytes)

SCOREBOARD_NOTE = (
    "Ratio: how many times better Palyra's figure is than LiteLLM's (LiteLLM / Palyra for times and "
    "memory, Palyra / LiteLLM for rates); above 1 Palyra is ahead. Both gateways ran against the same "
    "mock upstream in the same run, pinned to the same CPU, one after the other (the sequential "
    "scenarios interleave their rounds). Pass/fail is Palyra's figure against the target; memory is in "
    "MB (10^6 bytes), the process tree's VmRSS."
)


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure of one scenario, read from a gateway's run."""

    scenario: str
    name: str
    unit: str
    higher_is_better: bool
    read: Callable[[DaemonRun], float | None]
    goal: float | None = None  # at most (lower is better) or at least (higher is better)
    ratio: bool = True  # False where a quotient means nothing (a growth near zero, say)


def _interleaved(run: DaemonRun, scenario: str) -> Interleaved | None:
    return next((i for i in run.interleaved if i.scenario == scenario), None)


def _phase(run: DaemonRun, scenario: str, target: str | None = None) -> Phase | None:
    want = target or run.gateway
    return next((p for p in run.phases if p.scenario == scenario and p.target == want), None)


def _mb(kib: int | None) -> float | None:
    return None if kib is None else round(kib / MB, 1)


def _block(scenario: str, kind: str, key: str) -> Callable[[DaemonRun], float | None]:
    def read(run: DaemonRun) -> float | None:
        i = _interleaved(run, scenario)
        return None if i is None else getattr(i, kind)[key]

    return read


def _rate(scenario: str) -> Callable[[DaemonRun], float | None]:
    def read(run: DaemonRun) -> float | None:
        p = _phase(run, scenario)
        return None if p is None else p.rate_per_s

    return read


def _added_ttfb_loaded(run: DaemonRun) -> float | None:
    """Added TTFB p50 at the closed loop's concurrency: the gateway's minus the direct loop's."""
    p, d = _phase(run, "stream-throughput"), _phase(run, "stream-throughput", "direct")
    if p is None or d is None or p.ttfb_ms["p50"] is None or d.ttfb_ms["p50"] is None:
        return None
    return round(p.ttfb_ms["p50"] - d.ttfb_ms["p50"], 3)


def _loaded_rss(run: DaemonRun) -> float | None:
    p = _phase(run, "loaded-rss")
    return None if p is None else _mb(p.rss_max_kib)


METRICS = (
    Metric(
        "overhead",
        "added latency p50, sequential",
        "ms",
        False,
        _block("overhead", "added_ms", "p50"),
        OVERHEAD_P50_TARGET_MS,
    ),
    Metric(
        "overhead",
        "added latency p99, sequential",
        "ms",
        False,
        _block("overhead", "added_ms", "p99"),
        OVERHEAD_P99_TARGET_MS,
    ),
    Metric(
        "overhead", "gateway's own overhead header p50", "ms", False, _block("overhead", "overhead_ms", "p50")
    ),
    Metric(
        "ttfb",
        "added TTFB p50, sequential streams",
        "ms",
        False,
        _block("ttfb", "added_ttfb_ms", "p50"),
        ADDED_TTFB_TARGET_MS,
    ),
    Metric(
        "ttfb", "added whole-stream latency p50, sequential", "ms", False, _block("ttfb", "added_ms", "p50")
    ),
    Metric(
        "throughput",
        "non-streaming requests/s, closed loop",
        "req/s",
        True,
        _rate("throughput"),
        THROUGHPUT_TARGET_RPS,
    ),
    Metric("stream-throughput", "streams/s, closed loop", "streams/s", True, _rate("stream-throughput")),
    Metric(
        "stream-throughput", "added TTFB p50 under load (vs direct loop)", "ms", False, _added_ttfb_loaded
    ),
    Metric(
        "open-streams",
        "streams open at once (max)",
        "streams",
        True,
        lambda r: None if r.open_streams is None else float(r.open_streams.peak_open),
    ),
    Metric(
        "open-streams",
        "streams completed",
        "streams",
        True,
        lambda r: None if r.open_streams is None else float(r.open_streams.completed),
    ),
    Metric(
        "open-streams",
        "peak RSS with the streams open",
        "MB",
        False,
        lambda r: None if r.open_streams is None else _mb(r.open_streams.rss_peak_kib),
        OPEN_STREAMS_RSS_TARGET_MB,
    ),
    Metric(
        "idle-rss",
        "idle RSS after a few requests",
        "MB",
        False,
        lambda r: None if r.idle is None else _mb(r.idle.after_requests_kib),
        IDLE_RSS_TARGET_MB,
    ),
    Metric(
        "idle-rss",
        "RSS right after start-up",
        "MB",
        False,
        lambda r: None if r.idle is None else _mb(r.idle.at_start_kib),
    ),
    Metric("loaded-rss", "peak RSS under a mixed closed loop", "MB", False, _loaded_rss),
    Metric(
        "soak",
        "RSS growth after warm-up (last vs first sample)",
        "%",
        False,
        lambda r: None if r.soak is None else r.soak.growth_pct,
        SOAK_GROWTH_TARGET_PCT,
        ratio=False,
    ),
    Metric(
        "soak",
        "requests/s achieved at the soak's fixed rate",
        "req/s",
        True,
        lambda r: None if r.soak is None else r.soak.achieved_per_s,
    ),
)


def _ratio(metric: Metric, palyra: float | None, litellm: float | None) -> float | None:
    if palyra is None or litellm is None or not metric.ratio:
        return None
    num, den = (palyra, litellm) if metric.higher_is_better else (litellm, palyra)
    if den == 0:
        return None
    return round(num / den, 2)


def _met(metric: Metric, value: float | None, run: DaemonRun) -> bool | None:
    if value is None:
        return None
    if metric.scenario == "open-streams" and metric.unit == "streams":
        return run.open_streams is not None and value >= run.open_streams.requested
    if metric.goal is None:
        return None
    return value >= metric.goal if metric.higher_is_better else value <= metric.goal


def _goal(metric: Metric, run: DaemonRun) -> str:
    if metric.scenario == "open-streams" and metric.unit == "streams" and run.open_streams is not None:
        return f"all {run.open_streams.requested}"
    if metric.goal is None:
        return "-"
    sign = ">=" if metric.higher_is_better else "<="
    return f"{sign} {metric.goal:,g} {metric.unit}"


def scenario_command(scenario: str, backend: str, compare: bool) -> str:
    argv = [".venv/bin/python", "bench/run.py", "--scenarios", scenario, "--backend", backend]
    return shlex.join(argv + (["--compare", "litellm"] if compare else []))


def scoreboard_rows(runs: list[DaemonRun]) -> list[dict[str, Any]]:
    """One row per suite metric and backend that has a Palyra figure."""
    rows: list[dict[str, Any]] = []
    suite = [r for r in runs if r.proxied]
    for backend in dict.fromkeys(r.backend for r in suite):
        palyra = next((r for r in suite if r.backend == backend and r.gateway == "palyra"), None)
        litellm = next((r for r in suite if r.backend == backend and r.gateway == "litellm"), None)
        if palyra is None:
            continue
        for m in METRICS:
            ours = m.read(palyra)
            theirs = m.read(litellm) if litellm is not None else None
            if ours is None and theirs is None:
                continue
            rows.append(
                {
                    "scenario": m.scenario,
                    "backend": backend,
                    "metric": m.name,
                    "unit": m.unit,
                    "command": scenario_command(m.scenario, backend, litellm is not None),
                    "palyra": ours,
                    "litellm": theirs,
                    "ratio": _ratio(m, ours, theirs),
                    "target": _goal(m, palyra),
                    "met": _met(m, ours, palyra),
                }
            )
    return rows


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("req/s", "streams/s", "streams"):
        return f"{value:,.0f}"
    return f"{value:,.1f}" if unit in ("MB", "%") else f"{value:,.2f}"


_VERDICT = {True: "pass", False: "**fail**", None: "-"}


def scoreboard_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["Scenario", "Backend", "Figure", "Command", "Palyra", "LiteLLM", "Ratio", "Target", "Pass/fail"]
    body = [
        [
            r["scenario"],
            r["backend"],
            f"{r['metric']} ({r['unit']})",
            f"`{r['command']}`",
            _num(r["palyra"], r["unit"]),
            _num(r["litellm"], r["unit"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["target"],
            _VERDICT[r["met"]],
        ]
        for r in rows
    ]
    return table(header, body)


# --- the deterministic path (no upstream): the daemon's own header and throughput -------------------


def _check(name: str, goal: str, value: float | None, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value, "met": met}


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def deterministic_target_rows(runs: list[DaemonRun]) -> list[dict[str, Any]]:
    """The overhead header and throughput targets on each backend's deterministic daemon."""
    checks: list[dict[str, Any]] = []
    goal50, goal99 = f"<= {OVERHEAD_P50_TARGET_MS:g} ms", f"<= {OVERHEAD_P99_TARGET_MS:g} ms"
    for run in runs:
        if run.proxied or run.access_log:
            continue
        for p in run.phases:
            if p.scenario not in ("det-sequential", "det-throughput"):
                continue
            where = f"{run.backend}, " + ("sequential" if p.concurrency == 1 else f"{p.concurrency} conns")
            p50, p99 = p.overhead_ms["p50"], p.overhead_ms["p99"]
            checks.append(_check(f"Header p50, {where}", goal50, p50, _at_most(p50, OVERHEAD_P50_TARGET_MS)))
            checks.append(_check(f"Header p99, {where}", goal99, p99, _at_most(p99, OVERHEAD_P99_TARGET_MS)))
            if p.scenario == "det-throughput":
                met = p.rate_per_s >= THROUGHPUT_TARGET_RPS
                goal = f">= {THROUGHPUT_TARGET_RPS:,.0f}"
                checks.append(_check(f"Non-streaming chat requests/s, {where}", goal, p.rate_per_s, met))
    return checks


def deterministic_targets_table(runs: list[DaemonRun]) -> list[str]:
    rows = [
        [
            c["target"],
            c["goal"],
            "-" if c["measured"] is None else f"{c['measured']:,.2f}",
            {True: "yes", False: "**no**", None: "-"}[c["met"]],
        ]
        for c in deterministic_target_rows(runs)
    ]
    return table(["Target", "Goal", "Measured", "Met"], rows) if rows else []


# --- problems and the whole report ----------------------------------------------------------------


def _errors(label: str, where: str, errors: dict[str, int], samples: list[str]) -> list[str]:
    if not errors:
        return []
    kinds = ", ".join(f"{k} x{n}" for k, n in sorted(errors.items()))
    return [f"- {label} ({where}): {kinds}", *(f"  - sample: `{s}`" for s in samples)]


def problems_section(runs: list[DaemonRun]) -> list[str]:
    lines: list[str] = []
    for run in runs:
        where = run_name(run)
        # The direct baselines are shared by the gateways of a session; report them once, with Palyra.
        phases = [p for p in run.phases if p.target != "direct" or run.gateway == "palyra"]
        measured: list[Phase | Interleaved] = [*phases, *run.interleaved]
        for q in measured:
            lines += _errors(q.label, where, q.errors, q.error_samples)
            if q.other_cpu_pct + q.steal_pct > DISTURBED_CPU_PCT:
                share = f"{q.other_cpu_pct + q.steal_pct:.0f}% of a core"
                lines.append(f"- {q.label} ({where}): disturbed, other CPU use {share}")
        if run.open_streams is not None:
            o = run.open_streams
            lines += _errors("Open streams", where, o.errors, o.error_samples)
        if run.soak is not None:
            lines += _errors("Soak", where, run.soak.errors, run.soak.error_samples)
            if run.soak.skipped:
                lines.append(f"- Soak ({where}): {run.soak.skipped} requests not sent (too many in flight)")
        if run.died:
            lines.append(f"- the gateway ({where}) exited during the run")
        if run.upstream_died:
            lines.append(f"- the mock upstream ({where}) exited during the run")
        if run.upstream_stderr:
            lines.append(f"- mock upstream stderr ({where}), last {len(run.upstream_stderr)} lines:")
            lines += ["", "```", *run.upstream_stderr, "```", ""]
        rows = run.journal_rows_after_stop
        if rows is not None and rows != run.requests_sent:
            lines.append(f"- journal ({where}): {rows} rows for {run.requests_sent} requests sent")
        if run.stderr_problems:
            lines.append(f"- gateway stderr warnings/errors ({where}), last {len(run.stderr_problems)}:")
            lines += ["", "```", *run.stderr_problems, "```", ""]
    return lines


def markdown(runs: list[DaemonRun], machine: dict[str, str], command: str) -> str:
    lines = ["## Palyra benchmark"]
    rows = scoreboard_rows(runs)
    if rows:
        lines += ["", "### Scoreboard", "", *scoreboard_table(rows), "", SCOREBOARD_NOTE]
    for run in runs:
        lines += ["", f"### {run_name(run)}", ""]
        if run.proxied:
            name = GATEWAY_NAMES.get(run.gateway, run.gateway) + (f" ({run.version})" if run.version else "")
            lines += [f"Model gpt-4o-mini through {name} to the mock upstream: {run.upstream}.", ""]
        if run.interleaved:
            lines += [*interleaved_table(run), "", INTERLEAVED_NOTE, ""]
        if run.phases:
            lines += results_table(run)
        if run.soak is not None:
            lines += ["", f"Soak RSS samples (seconds:MiB): {soak_samples(run)}"]
    memory = memory_table(runs)
    if memory:
        lines += ["", "### Memory", "", *memory]
    lines += ["", CPU_NOTE, "", "### Gateways", "", *daemon_table(runs)]
    deterministic = deterministic_targets_table(runs)
    if deterministic:
        lines += ["", "### Deterministic path targets", "", *deterministic]
    problems = problems_section(runs)
    lines += ["", "### Problems", "", *(problems or ["none: no errors, no warnings in the gateways' logs"])]
    lines += ["", "### Machine", ""] + [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "### Command", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
