"""Benchmark the Palyra daemon: latency, overhead, throughput and memory on the deterministic provider.

The daemon runs in a subprocess pinned to one CPU, the load generator (asyncio + aiohttp on uvloop) in
this process pinned to another. Usage: `make bench ARGS="--duration 5"` or `python bench/run.py --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import platform
import secrets
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import aiohttp
import asyncpg
import uvloop

from daemon_proc import Daemon, DaemonSpec, background_cpu_pct, cpu_snapshot, proc_status_kib
from loadgen import Client, RequestFn, Samples, chat_body, embeddings_body, run_closed_loop, run_sequential
from report import DaemonRun, Phase, markdown, summarize, target_rows

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("sequential", "throughput", "stream", "embeddings", "access-log")
ACCESS_LOG_SCENARIOS = ("sequential", "throughput")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVER_CPU, CLIENT_CPU = 0, 1
JOURNAL_DRAIN_TIMEOUT_S = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per closed-loop scenario")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each closed loop")
    parser.add_argument("--concurrency", type=int, default=64, help="connections for the closed loops")
    parser.add_argument("--sequential-n", type=int, default=2000, help="requests in the sequential scenario")
    parser.add_argument("--sequential-warmup", type=int, default=200, help="warm-up requests before it")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--database-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL URL (--database postgres)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}; access-log reruns sequential and "
        "throughput against a second daemon with the access log on",
    )
    parser.add_argument(
        "--rev",
        help="benchmark this git revision (exported to a temp dir) instead of the working tree's src/",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the daemon and the client to CPUs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of markdown")
    parser.add_argument("--json-file", type=Path, help="also write the JSON results to this file")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or not args.scenarios:
        parser.error(
            f"--scenarios: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(SCENARIOS)}"
        )
    if args.concurrency < 1 or args.sequential_n < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--concurrency and --sequential-n must be >= 1, --duration > 0, --warmup >= 0")
    return args


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the machine and the command ------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def code_under_test(rev: str | None) -> str:
    if rev:
        return f"git {git('rev-parse', '--short', rev)} ({rev}), exported with git archive"
    return f"working tree, git {git('describe', '--always', '--dirty') or 'unknown'}"


@contextlib.contextmanager
def exported_source(rev: str | None) -> Iterator[str]:
    """With a revision, its src/ exported to a temp dir (the daemon runs it via PYTHONPATH); else ''."""
    if not rev:
        yield ""
        return
    cmd = ["git", "-C", str(REPO), "archive", "--format=tar", rev, "src"]
    archive = subprocess.run(cmd, capture_output=True, check=False)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {rev}: {archive.stderr.decode(errors='replace').strip()}")
    target = Path(tempfile.mkdtemp(prefix="palyra-bench-src-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
        yield str(target / "src")
    finally:
        shutil.rmtree(target, ignore_errors=True)


def machine_info(args: argparse.Namespace, pinned: bool, database_version: str) -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "palyra": f"{importlib.metadata.version('palyra')}, {code_under_test(args.rev)}",
        "client": f"aiohttp {aiohttp.__version__}, uvloop {importlib.metadata.version('uvloop')}",
        "database": f"{args.database} {database_version}".strip(),
        "pinning": f"daemon on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}" if pinned else "none",
        "busy before start": f"{background_cpu_pct():.0f}% of one core over 1 s (other processes)",
    }


def command_line(argv: list[str]) -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), "bench/run.py", *argv])


def pin_client(enabled: bool) -> bool:
    """Pin this process to CLIENT_CPU when the machine has both CPUs; say whether pinning is on."""
    available = os.sched_getaffinity(0)
    if not enabled or not {SERVER_CPU, CLIENT_CPU} <= available:
        if enabled:
            say(f"CPUs {SERVER_CPU} and {CLIENT_CPU} are not both available; running unpinned")
        return False
    os.sched_setaffinity(0, {CLIENT_CPU})
    return True


# --- the database -----------------------------------------------------------------------------------


async def _pg(url: str, sql: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(sql))
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_schema(runner: asyncio.Runner, url: str) -> Iterator[str]:
    """A fresh schema for one daemon, dropped afterwards."""
    schema = f"palyra_bench_{secrets.token_hex(4)}"
    try:
        yield schema
    finally:
        try:
            runner.run(_pg(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        except Exception as exc:
            say(f"could not drop schema {schema}: {exc}")


def journal_rows(runner: asyncio.Runner, daemon: Daemon, url: str, schema: str) -> int | None:
    """Rows in the run journal once the daemon has stopped (and flushed)."""
    try:
        if schema:
            return int(runner.run(_pg(url, f"SELECT count(*) FROM {schema}.runs")))
        with contextlib.closing(sqlite3.connect(daemon.state_dir / "palyra.db")) as db:
            return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])
    except Exception as exc:
        say(f"could not count journal rows: {exc}")
        return None


# --- scenarios --------------------------------------------------------------------------------------


async def measured(
    daemon: Daemon, scenario: str, label: str, concurrency: int, phase: Callable[[], Awaitable[Samples]]
) -> Phase:
    before = cpu_snapshot(daemon.pid)
    samples = await phase()
    result = summarize(scenario, label, concurrency, samples, cpu_snapshot(daemon.pid).since(before))
    errors = f", {result.error_count} errors" if result.error_count else ""
    say(
        f"  {label}: {result.ok} ok{errors}, {result.rate_per_s:,.0f}/s, "
        f"latency p50 {result.latency_ms['p50']} ms p99 {result.latency_ms['p99']} ms, "
        f"overhead p50 {result.overhead_ms['p50']} ms p99 {result.overhead_ms['p99']} ms"
    )
    return result


async def sequential(daemon: Daemon, client: Client, args: argparse.Namespace) -> Phase:
    call = client.unary("/v1/chat/completions", chat_body(stream=False))
    await run_sequential(call, args.sequential_warmup)
    return await measured(
        daemon, "sequential", "Chat, sequential", 1, lambda: run_sequential(call, args.sequential_n)
    )


async def closed_loop(
    daemon: Daemon, args: argparse.Namespace, scenario: str, label: str, call: RequestFn
) -> Phase:
    if args.warmup > 0:
        await run_closed_loop(call, args.concurrency, args.warmup)
    return await measured(
        daemon,
        scenario,
        label,
        args.concurrency,
        lambda: run_closed_loop(call, args.concurrency, args.duration),
    )


async def throughput(daemon: Daemon, client: Client, args: argparse.Namespace) -> Phase:
    call = client.unary("/v1/chat/completions", chat_body(stream=False))
    return await closed_loop(daemon, args, "throughput", "Chat, non-streaming", call)


async def stream(daemon: Daemon, client: Client, args: argparse.Namespace) -> Phase:
    call = client.streaming("/v1/chat/completions", chat_body(stream=True))
    return await closed_loop(daemon, args, "stream", "Chat, streaming", call)


async def embeddings(daemon: Daemon, client: Client, args: argparse.Namespace) -> Phase:
    call = client.unary("/v1/embeddings", embeddings_body())
    return await closed_loop(daemon, args, "embeddings", "Embeddings", call)


RUNNERS = {"sequential": sequential, "throughput": throughput, "stream": stream, "embeddings": embeddings}


async def run_scenarios(
    daemon: Daemon, args: argparse.Namespace, names: list[str]
) -> tuple[list[Phase], int]:
    """Run the named scenarios over one keep-alive session; return the phases and /v1 requests sent."""
    connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    phases: list[Phase] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, daemon.base_url, daemon.token)
        for name in names:
            if not daemon.alive():
                say(f"  the daemon has exited; skipping {name}")
                break
            phases.append(await RUNNERS[name](daemon, client, args))
    return phases, client.sent


# --- one daemon -------------------------------------------------------------------------------------


def journal_metrics(daemon: Daemon) -> dict[str, float]:
    """The journal gauges from /metrics (pending, written, dropped)."""
    values: dict[str, float] = {}
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(daemon.base_url + "/metrics", timeout=5) as resp,
    ):
        for line in resp.read().decode().splitlines():
            if line.startswith("palyra_journal_"):
                name, _, value = line.partition(" ")
                values[name] = float(value)
    return values


def wait_journal_drained(daemon: Daemon) -> float | None:
    """Seconds until the journal has written every record buffered during the load; None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < JOURNAL_DRAIN_TIMEOUT_S:
        if journal_metrics(daemon).get("palyra_journal_pending_records", 0.0) == 0.0:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def record_load_end(run: DaemonRun, daemon: Daemon) -> None:
    """Memory and journal state right after the load, then how long the journal takes to catch up."""
    run.died = not daemon.alive()
    if run.died:
        return
    run.rss_after_kib = proc_status_kib(daemon.pid, "VmRSS")
    run.rss_peak_kib = proc_status_kib(daemon.pid, "VmHWM")
    run.journal_pending_after_load = journal_metrics(daemon).get("palyra_journal_pending_records")
    run.journal_drain_s = wait_journal_drained(daemon)
    run.journal_dropped = journal_metrics(daemon).get("palyra_journal_dropped_records")


def record_stop(run: DaemonRun, daemon: Daemon, journal_count: Callable[[], int | None]) -> None:
    stopped = daemon.stop()
    run.stop_exit_code = stopped.exit_code
    run.stop_seconds = stopped.seconds
    run.stop_killed = stopped.killed
    run.journal_rows_after_stop = journal_count()
    run.stderr_problems = daemon.stderr_problems()
    if run.failed:
        run.stderr_tail = daemon.stderr_tail()


def bench_daemon(
    runner: asyncio.Runner, args: argparse.Namespace, access_log: bool, names: list[str]
) -> DaemonRun:
    """Start a fresh daemon, run the scenarios against it, stop it, and say what happened."""
    run = DaemonRun(database=args.database, access_log=access_log)
    pg = args.database == "postgres"
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(postgres_schema(runner, args.database_url)) if pg else ""
        spec = DaemonSpec(
            cpu=None if args.no_pin else SERVER_CPU,
            access_log=access_log,
            database_url=args.database_url if pg else "",
            database_schema=schema,
            source_dir=args.source_dir,
        )
        daemon = stack.enter_context(Daemon(spec))
        say(f"daemon pid {daemon.pid} on {daemon.base_url} ({run.database}, access log {access_log})")
        run.rss_idle_kib = proc_status_kib(daemon.pid, "VmRSS")
        run.phases, run.requests_sent = runner.run(run_scenarios(daemon, args, names))
        record_load_end(run, daemon)
        record_stop(run, daemon, lambda: journal_rows(runner, daemon, args.database_url, schema))
    return run


def database_version(runner: asyncio.Runner, args: argparse.Namespace) -> str:
    if args.database == "postgres":
        return runner.run(_pg(args.database_url, "SHOW server_version"))
    return sqlite3.sqlite_version


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pinned = pin_client(not args.no_pin)
    args.no_pin = not pinned
    main_names = [n for n in args.scenarios if n != "access-log"]
    runs: list[DaemonRun] = []
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, exported_source(args.rev) as src:
            args.source_dir = src
            machine = machine_info(args, pinned, database_version(runner, args))
            if main_names:
                runs.append(bench_daemon(runner, args, access_log=False, names=main_names))
            if "access-log" in args.scenarios:
                runs.append(bench_daemon(runner, args, access_log=True, names=list(ACCESS_LOG_SCENARIOS)))
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        say(f"cannot run the benchmark: {exc}")
        return 2
    command = command_line(argv)
    doc = {"machine": machine, "command": command, "runs": [asdict(r) for r in runs]}
    doc["targets"] = target_rows(runs)
    if args.json_file:
        args.json_file.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(doc, indent=2) if args.json else markdown(runs, machine, command))
    for run in runs:
        if run.failed:
            say(f"problems in the {run.database} run (access log {run.access_log}); daemon stderr tail:")
            print(run.stderr_tail, file=sys.stderr)
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
