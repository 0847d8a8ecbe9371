"""Benchmark the Palyra daemon: latency, overhead, throughput and memory on the deterministic provider,
and on the proxied path to a local mock OpenAI-compatible upstream.

The daemon runs in a subprocess pinned to one CPU, the load generator (asyncio + aiohttp on uvloop) in
this process pinned to another; the mock upstream (proxied scenarios) shares the load generator's CPU.
Usage: `make bench ARGS="--duration 5"` or `python bench/run.py --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
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

from daemon_proc import (
    Daemon,
    DaemonSpec,
    background_cpu_pct,
    cpu_snapshot,
    free_port,
    machine_cpu_seconds,
    proc_status_kib,
)
from loadgen import (
    PROXIED_MODEL,
    Client,
    RequestFn,
    Samples,
    chat_body,
    embeddings_body,
    run_closed_loop,
    run_interleaved,
    run_sequential,
)
from mock_upstream import DEFAULT_CHUNKS, SERVERS, MockSettings, MockUpstream
from report import DaemonRun, Interleaved, Phase, markdown, summarize, summarize_interleaved, target_rows

REPO = Path(__file__).resolve().parent.parent
DETERMINISTIC_SCENARIOS = ("sequential", "throughput", "stream", "embeddings")
PROXIED_SCENARIOS = ("proxied-overhead", "proxied-throughput", "proxied-stream")
SCENARIOS = (*DETERMINISTIC_SCENARIOS, "access-log", *PROXIED_SCENARIOS)
ACCESS_LOG_SCENARIOS = ("sequential", "throughput")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVER_CPU, CLIENT_CPU = 0, 1
UPSTREAM_CPU = CLIENT_CPU  # the mock upstream shares the load generator's core
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
        "throughput against a second daemon with the access log on; the proxied-* scenarios run against "
        "a third daemon that serves gpt-4o-mini from a local mock upstream",
    )
    parser.add_argument(
        "--overhead-rounds", type=int, default=7, help="proxied-overhead: alternating rounds each way"
    )
    parser.add_argument(
        "--overhead-n", type=int, default=200, help="proxied-overhead: sequential requests per round"
    )
    parser.add_argument(
        "--mock-chunks", type=int, default=DEFAULT_CHUNKS, help="mock upstream: content chunks per stream"
    )
    parser.add_argument(
        "--mock-delay-ms", type=float, default=0.0, help="mock upstream: fixed delay before each answer"
    )
    parser.add_argument("--mock-server", choices=SERVERS, default="asgi", help="mock upstream: server")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="PCT",
        help="before each measured phase, wait (up to --quiet-timeout s) until the machine's CPU use "
        "over 2 s, the idle daemon included, is below PCT%% of one core; 0 (default): do not wait",
    )
    parser.add_argument("--quiet-timeout", type=float, default=300.0, help="longest wait for --wait-quiet")
    parser.add_argument(
        "--rev",
        help="benchmark this git revision (exported to a temp dir) instead of the working tree's src/",
    )
    parser.add_argument(
        "--src-dir",
        type=Path,
        help="run the daemon from this copy of src/ (e.g. `cp -r src /tmp/snap`), so that several runs "
        "measure the same code while the working tree changes; reported with a digest of its .py files",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the daemon, the client and the mock upstream to CPUs",
    )
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
    if args.rev and args.src_dir:
        parser.error("--rev and --src-dir exclude each other")
    if args.src_dir and not (args.src_dir / "palyra" / "__init__.py").is_file():
        parser.error(f"--src-dir {args.src_dir}: no palyra package there (give the copy of src/)")
    if args.overhead_rounds < 1 or args.overhead_n < 1 or args.mock_chunks < 1 or args.mock_delay_ms < 0:
        parser.error("--overhead-rounds, --overhead-n and --mock-chunks must be >= 1, --mock-delay-ms >= 0")
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


def source_digest(src: Path) -> str:
    """sha256 over the paths and contents of every .py file under ``src`` (first 12 hex digits)."""
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def code_under_test(rev: str | None, src_dir: Path | None = None) -> str:
    if rev:
        return f"git {git('rev-parse', '--short', rev)} ({rev}), exported with git archive"
    if src_dir:
        return (
            f"a copy of src/ at {src_dir} (sha256 of its .py files {source_digest(src_dir)}), "
            f"working tree at git {git('describe', '--always', '--dirty') or 'unknown'}"
        )
    status = git("status", "--porcelain", "--", "src").splitlines()
    modified = sum(1 for line in status if not line.startswith("??"))
    untracked = len(status) - modified
    changes = f"; under src/: {modified} modified, {untracked} untracked" if status else "; src/ clean"
    return f"working tree, git {git('describe', '--always', '--dirty') or 'unknown'}{changes}"


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
        "palyra": f"{importlib.metadata.version('palyra')}, {code_under_test(args.rev, args.src_dir)}",
        "client": f"aiohttp {aiohttp.__version__}, uvloop {importlib.metadata.version('uvloop')}",
        "database": f"{args.database} {database_version}".strip(),
        "pinning": (
            f"daemon on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}, mock upstream (proxied "
            f"scenarios) on CPU {UPSTREAM_CPU}"
            if pinned
            else "none"
        ),
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
    daemon: Daemon,
    scenario: str,
    label: str,
    concurrency: int,
    phase: Callable[[], Awaitable[Samples]],
    upstream_pid: int | None = None,
) -> Phase:
    before = cpu_snapshot(daemon.pid, upstream_pid)
    samples = await phase()
    cpu = cpu_snapshot(daemon.pid, upstream_pid).since(before)
    result = summarize(scenario, label, concurrency, samples, cpu)
    errors = f", {result.error_count} errors" if result.error_count else ""
    say(
        f"  {label}: {result.ok} ok{errors}, {result.rate_per_s:,.0f}/s, "
        f"latency p50 {result.latency_ms['p50']} ms p99 {result.latency_ms['p99']} ms, "
        f"overhead p50 {result.overhead_ms['p50']} ms p99 {result.overhead_ms['p99']} ms"
    )
    return result


async def sequential(daemon: Daemon, client: Client, args: argparse.Namespace) -> Phase:
    call = client.unary("/v1/chat/completions", chat_body(stream=False))
    await wait_quiet(args)
    await run_sequential(call, args.sequential_warmup)
    return await measured(
        daemon, "sequential", "Chat, sequential", 1, lambda: run_sequential(call, args.sequential_n)
    )


async def closed_loop(
    daemon: Daemon,
    args: argparse.Namespace,
    scenario: str,
    label: str,
    call: RequestFn,
    upstream_pid: int | None = None,
) -> Phase:
    await wait_quiet(args)
    if args.warmup > 0:
        await run_closed_loop(call, args.concurrency, args.warmup)
    return await measured(
        daemon,
        scenario,
        label,
        args.concurrency,
        lambda: run_closed_loop(call, args.concurrency, args.duration),
        upstream_pid,
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


# --- proxied scenarios: the same requests direct to the mock upstream and through Palyra -------------


def proxied_body(stream: bool) -> bytes:
    """gpt-4o-mini; streams ask for the usage chunk, as Palyra itself does upstream, so the mock does
    the same work for a direct stream as for a proxied one and the client reads the same events."""
    return chat_body(stream=stream, model=PROXIED_MODEL, include_usage=stream)


async def interleaved_phase(
    daemon: Daemon,
    upstream: MockUpstream,
    args: argparse.Namespace,
    stream: bool,
    clients: tuple[Client, Client],
) -> Interleaved:
    direct, proxied = clients
    body = proxied_body(stream)
    make = Client.streaming if stream else Client.unary
    direct_call = make(direct, "/v1/chat/completions", body)
    proxied_call = make(proxied, "/v1/chat/completions", body)
    await wait_quiet(args)
    await run_sequential(direct_call, args.sequential_warmup)
    await run_sequential(proxied_call, args.sequential_warmup)
    before = cpu_snapshot(daemon.pid, upstream.pid)
    samples = await run_interleaved(direct_call, proxied_call, args.overhead_rounds, args.overhead_n)
    cpu = cpu_snapshot(daemon.pid, upstream.pid).since(before)
    kind = "streaming" if stream else "non-streaming"
    scenario = "proxied-overhead-stream" if stream else "proxied-overhead"
    result = summarize_interleaved(scenario, f"Proxied chat, {kind}, sequential", stream, samples, cpu)
    errors = f", {result.error_count} errors" if result.error_count else ""
    ttfb = (
        f"; TTFB direct {result.direct_ttfb_ms['p50']} palyra {result.proxied_ttfb_ms['p50']} "
        f"added {result.added_ttfb_ms['p50']} ms"
        if stream
        else ""
    )
    say(
        f"  {result.label}: p50 direct {result.direct_ms['p50']} palyra {result.proxied_ms['p50']} "
        f"added {result.added_ms['p50']} ms, p99 direct {result.direct_ms['p99']} palyra "
        f"{result.proxied_ms['p99']} added {result.added_ms['p99']} ms, overhead p50 "
        f"{result.overhead_ms['p50']} p99 {result.overhead_ms['p99']} ms{ttfb}{errors}"
    )
    return result


async def proxied_closed_loops(
    daemon: Daemon,
    upstream: MockUpstream,
    args: argparse.Namespace,
    stream: bool,
    clients: tuple[Client, Client],
) -> list[Phase]:
    """The direct baseline (the mock and the client alone), then the same load through Palyra."""
    direct, proxied = clients
    body = proxied_body(stream)
    make = Client.streaming if stream else Client.unary
    kind = "streaming" if stream else "non-streaming"
    scenario = "proxied-stream" if stream else "proxied-throughput"
    return [
        await closed_loop(
            daemon,
            args,
            scenario + "-direct",
            f"Direct to mock, {kind}",
            make(direct, "/v1/chat/completions", body),
            upstream.pid,
        ),
        await closed_loop(
            daemon,
            args,
            scenario,
            f"Proxied chat, {kind}",
            make(proxied, "/v1/chat/completions", body),
            upstream.pid,
        ),
    ]


async def run_proxied(
    daemon: Daemon,
    upstream: MockUpstream,
    args: argparse.Namespace,
    name: str,
    clients: tuple[Client, Client],
) -> tuple[list[Phase], list[Interleaved]]:
    if name == "proxied-overhead":
        return [], [
            await interleaved_phase(daemon, upstream, args, False, clients),
            await interleaved_phase(daemon, upstream, args, True, clients),
        ]
    return await proxied_closed_loops(daemon, upstream, args, name == "proxied-stream", clients), []


async def run_scenarios(
    daemon: Daemon, args: argparse.Namespace, names: list[str], upstream: MockUpstream | None = None
) -> tuple[list[Phase], list[Interleaved], int]:
    """Run the named scenarios over one keep-alive session; return the phases and /v1 requests sent
    to the daemon (requests sent directly to the mock upstream are not counted)."""
    connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    phases: list[Phase] = []
    interleaved: list[Interleaved] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, daemon.base_url, daemon.token)
        for name in names:
            if not daemon.alive():
                say(f"  the daemon has exited; skipping {name}")
                break
            if upstream is None:
                phases.append(await RUNNERS[name](daemon, client, args))
                continue
            if not upstream.alive():
                say(f"  the mock upstream has exited; skipping {name}")
                break
            direct = Client(session, upstream.base_url, "sk-bench-direct")
            more, rounds = await run_proxied(daemon, upstream, args, name, (direct, client))
            phases += more
            interleaved += rounds
    return phases, interleaved, client.sent


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
    runner: asyncio.Runner,
    args: argparse.Namespace,
    access_log: bool,
    names: list[str],
    proxied: bool = False,
) -> DaemonRun:
    """Start a fresh daemon (proxied: and the mock upstream first), run the scenarios against it, stop
    it, and say what happened."""
    run = DaemonRun(database=args.database, access_log=access_log, proxied=proxied)
    pg = args.database == "postgres"
    with contextlib.ExitStack() as stack:
        upstream: MockUpstream | None = None
        if proxied:
            settings = MockSettings(chunks=args.mock_chunks, delay_ms=args.mock_delay_ms)
            cpu = None if args.no_pin else UPSTREAM_CPU
            upstream = MockUpstream(free_port(), settings, server=args.mock_server, cpu=cpu)
            stack.enter_context(upstream)
            run.upstream = upstream.describe()
            say(f"mock upstream pid {upstream.pid} on {upstream.base_url} ({run.upstream})")
        schema = stack.enter_context(postgres_schema(runner, args.database_url)) if pg else ""
        spec = DaemonSpec(
            cpu=None if args.no_pin else SERVER_CPU,
            access_log=access_log,
            database_url=args.database_url if pg else "",
            database_schema=schema,
            source_dir=args.source_dir,
            upstream_base_url=upstream.base_url + "/v1" if upstream is not None else "",
        )
        daemon = stack.enter_context(Daemon(spec))
        what = "proxied to the mock upstream" if proxied else f"access log {access_log}"
        say(f"daemon pid {daemon.pid} on {daemon.base_url} ({run.database}, {what})")
        run.rss_idle_kib = proc_status_kib(daemon.pid, "VmRSS")
        run.phases, run.interleaved, run.requests_sent = runner.run(
            run_scenarios(daemon, args, names, upstream)
        )
        if upstream is not None:
            run.upstream_died = not upstream.alive()
        record_load_end(run, daemon)
        record_stop(run, daemon, lambda: journal_rows(runner, daemon, args.database_url, schema))
        if upstream is not None:
            upstream.__exit__()
            text = upstream.stderr_text()
            run.upstream_stderr = text.splitlines()[-20:] if text else []
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
    main_names = [n for n in args.scenarios if n in DETERMINISTIC_SCENARIOS]
    proxied_names = [n for n in args.scenarios if n in PROXIED_SCENARIOS]
    runs: list[DaemonRun] = []
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, exported_source(args.rev) as src:
            args.source_dir = str(args.src_dir.resolve()) if args.src_dir else src
            machine = machine_info(args, pinned, database_version(runner, args))
            if main_names:
                runs.append(bench_daemon(runner, args, access_log=False, names=main_names))
            if "access-log" in args.scenarios:
                runs.append(bench_daemon(runner, args, access_log=True, names=list(ACCESS_LOG_SCENARIOS)))
            if proxied_names:
                runs.append(bench_daemon(runner, args, access_log=False, names=proxied_names, proxied=True))
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
            what = "proxied" if run.proxied else f"access log {run.access_log}"
            say(f"problems in the {run.database} run ({what}); daemon stderr tail:")
            print(run.stderr_tail, file=sys.stderr)
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
