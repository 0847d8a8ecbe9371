"""Benchmark the Palyra daemon on the full path against a local mock OpenAI-compatible upstream, side by
side with the same requests sent to the mock directly and (``--compare litellm``) through LiteLLM's
proxy; and, on request, the deterministic in-process provider path.

The gateway under test runs in a subprocess pinned to CPU 0; the load generator (asyncio + aiohttp on
uvloop, this process) pins itself to CPU 1 with os.sched_setaffinity, and the mock upstream shares CPU 1.
Scenarios, options and the report: bench/README.md. Usage: `make bench ARGS="--quick"`.
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
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import aiohttp
import asyncpg
import uvloop

from backends import (
    BACKENDS,
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    Backend,
    backend,
    journal_rows,
    postgres_schema,
    versions,
)
from daemon_checks import record_load_end, record_stop
from daemon_proc import Daemon, DaemonSpec, background_cpu_pct, tree_rss_kib
from litellm_proc import VENV as LITELLM_VENV
from litellm_proc import litellm_executable, litellm_version
from loadgen import Client, chat_body, embeddings_body, run_sequential
from mock_upstream import DEFAULT_CHUNKS, SERVERS
from phases import Target, closed_loop, measured, say, wait_quiet
from report import DaemonRun, Phase
from scoreboard import deterministic_target_rows, markdown, scoreboard_rows
from suite import SUITE_SCENARIOS, run_suite

REPO = Path(__file__).resolve().parent.parent
DETERMINISTIC_SCENARIOS = ("det-sequential", "det-throughput", "det-stream", "det-embeddings")
SCENARIOS = (*SUITE_SCENARIOS, *DETERMINISTIC_SCENARIOS, "det-access-log")
GROUPS = {
    "suite": [s for s in SUITE_SCENARIOS if s != "soak"],  # the default: everything but the 30-minute soak
    "det": [*DETERMINISTIC_SCENARIOS, "det-access-log"],
    "all": list(SCENARIOS),
}
ACCESS_LOG_SCENARIOS = ("det-sequential", "det-throughput")
SERVER_CPU, CLIENT_CPU = 0, 1
# Options whose default depends on --quick: (full run, quick smoke run).
SCALED: dict[str, tuple[float, float]] = {
    "duration": (10.0, 1.5),
    "warmup": (2.0, 0.3),
    "sequential_n": (2000, 100),
    "sequential_warmup": (200, 20),
    "overhead_rounds": (7, 3),
    "overhead_n": (200, 30),
    "open_streams": (1000, 1000),
    "open_streams_hold_s": (10.0, 3.0),
    "idle_requests": (20, 10),
    "idle_settle_s": (3.0, 1.0),
    "soak_minutes": (30.0, 0.25),
    "soak_rate": (500.0, 200.0),
    "soak_sample_s": (60.0, 3.0),
    "soak_warmup_s": (60.0, 3.0),
}
INTEGER_OPTIONS = {
    "sequential_n",
    "sequential_warmup",
    "overhead_rounds",
    "overhead_n",
    "open_streams",
    "idle_requests",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated scenarios or groups: {', '.join(SCENARIOS)}; groups suite (the default: "
        "the suite without soak), det (the deterministic path), all. Default with --quick: all",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: every scenario, short phases (under 2 minutes)"
    )
    parser.add_argument(
        "--backend",
        default="",
        help=f"comma-separated: {', '.join(BACKENDS)} (default embedded: SQLite, shared state in process); "
        "each backend gets its own daemons, one after the other",
    )
    parser.add_argument(
        "--database", choices=("sqlite", "postgres"), help="older spelling: --backend embedded / postgres"
    )
    parser.add_argument("--database-url", "--postgres-url", default=DEFAULT_POSTGRES_URL, dest="database_url")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis for --backend postgres+redis")
    parser.add_argument(
        "--compare",
        choices=("none", "litellm"),
        default="none",
        help="also run the suite through LiteLLM's proxy (bench/litellm_setup.sh installs it)",
    )
    parser.add_argument("--duration", type=float, help="seconds per closed loop (10; quick 1.5)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each closed loop (2; quick 0.3)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections for the closed loops")
    parser.add_argument("--sequential-n", type=int, help="det-sequential: requests (2000; quick 100)")
    parser.add_argument("--sequential-warmup", type=int, help="warm-up requests before sequential runs (200)")
    parser.add_argument("--overhead-rounds", type=int, help="overhead, ttfb: rounds per target (7; quick 3)")
    parser.add_argument("--overhead-n", type=int, help="overhead, ttfb: requests per round (200; quick 30)")
    parser.add_argument("--open-streams", type=int, help="open-streams: streams held open at once (1000)")
    parser.add_argument(
        "--open-streams-hold-s", type=float, help="open-streams: how long each stream lasts (10; quick 3)"
    )
    parser.add_argument("--idle-requests", type=int, help="idle-rss: requests before the idle sample (20)")
    parser.add_argument("--idle-settle-s", type=float, help="idle-rss: pause before the idle sample (3)")
    parser.add_argument(
        "--soak-minutes", type=float, help="soak: minutes per gateway (30; quick 0.25); also selects soak"
    )
    parser.add_argument("--soak-rate", type=float, help="soak: requests per second, open loop (500)")
    parser.add_argument("--soak-sample-s", type=float, help="soak: seconds between RSS samples (60)")
    parser.add_argument("--soak-warmup-s", type=float, help="soak: samples before this are not compared (60)")
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
        "over 2 s, the idle gateways included, is below PCT%% of one core; 0 (default): do not wait",
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
        "--workers",
        type=int,
        default=1,
        help="Palyra's server.workers (more than one needs a +redis backend; with --no-pin the workers "
        "share both CPUs with the client and the mock)",
    )
    parser.add_argument(
        "--token-counting",
        choices=("bpe", "estimate"),
        default="",
        help="Palyra's server.token_counting (default: the daemon's default, bpe); estimate never "
        "loads the BPE tokenizer (~25 MiB less after the first chat request)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the gateways, the client and the mock upstream to CPUs",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of markdown")
    parser.add_argument("--json-file", type=Path, help="also write the JSON results to this file")
    args = parser.parse_args(argv)
    soak_given = args.soak_minutes is not None
    short_soak = args.soak_sample_s is None and args.soak_warmup_s is None
    for name, (full, quick) in SCALED.items():
        if getattr(args, name) is None:
            value = quick if args.quick else full
            setattr(args, name, int(value) if name in INTEGER_OPTIONS else value)
    if short_soak and args.soak_minutes * 60.0 < 3 * args.soak_sample_s:
        # A soak of a few minutes: six samples, the first one the warm-up, rather than one a minute.
        args.soak_sample_s = args.soak_warmup_s = args.soak_minutes * 10.0
    args.scenarios = selected_scenarios(parser, args) + (["soak"] if soak_given else [])
    args.scenarios = list(dict.fromkeys(args.scenarios))
    args.backends = selected_backends(parser, args)
    check_args(parser, args)
    return args


def selected_scenarios(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    raw = args.scenarios or ("all" if args.quick else "suite")
    names: list[str] = []
    for item in (s.strip() for s in raw.split(",")):
        if not item:
            continue
        if item not in GROUPS and item not in SCENARIOS:
            parser.error(f"--scenarios: unknown {item}; choose from {', '.join([*SCENARIOS, *GROUPS])}")
        names += GROUPS.get(item, [item])
    if not names:
        parser.error("--scenarios: nothing selected")
    return list(dict.fromkeys(names))


def selected_backends(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Backend]:
    if args.database and args.backend:
        parser.error("--database and --backend exclude each other")
    raw = args.backend or {"postgres": "postgres"}.get(args.database or "", "embedded")
    names = list(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        parser.error(
            f"--backend: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(BACKENDS)}"
        )
    return [backend(n, args.database_url, args.redis_url) for n in names]


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.concurrency < 1 or args.sequential_n < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--concurrency and --sequential-n must be >= 1, --duration > 0, --warmup >= 0")
    if args.rev and args.src_dir:
        parser.error("--rev and --src-dir exclude each other")
    if args.src_dir and not (args.src_dir / "palyra" / "__init__.py").is_file():
        parser.error(f"--src-dir {args.src_dir}: no palyra package there (give the copy of src/)")
    if args.overhead_rounds < 1 or args.overhead_n < 1 or args.mock_chunks < 1 or args.mock_delay_ms < 0:
        parser.error("--overhead-rounds, --overhead-n and --mock-chunks must be >= 1, --mock-delay-ms >= 0")
    if args.open_streams < 1 or args.open_streams_hold_s <= 0 or args.idle_requests < 0:
        parser.error("--open-streams must be >= 1, --open-streams-hold-s > 0, --idle-requests >= 0")
    if args.soak_minutes <= 0 or args.soak_rate <= 0 or args.soak_sample_s <= 0 or args.soak_warmup_s < 0:
        parser.error("--soak-minutes, --soak-rate and --soak-sample-s must be > 0, --soak-warmup-s >= 0")
    if args.compare == "litellm" and litellm_executable() is None:
        parser.error(
            f"--compare litellm: LiteLLM is not installed in {LITELLM_VENV}; run bench/litellm_setup.sh"
        )


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


def machine_info(args: argparse.Namespace, pinned: bool, stores: str) -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "palyra": f"{importlib.metadata.version('palyra')}, {code_under_test(args.rev, args.src_dir)}",
        "client": f"aiohttp {aiohttp.__version__}, uvloop {importlib.metadata.version('uvloop')}",
        "backends": f"{', '.join(b.name for b in args.backends)}; {stores}",
        "pinning": (
            f"gateway (Palyra, LiteLLM) on CPU {SERVER_CPU}, load generator and mock upstream on CPU "
            f"{CLIENT_CPU}"
            if pinned
            else "none"
        ),
        "nofile limit": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "busy before start": f"{background_cpu_pct():.0f}% of one core over 1 s (other processes)",
    }


def command_line(argv: list[str]) -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), "bench/run.py", *argv])


def raise_nofile_limit() -> None:
    """Open streams need two sockets per stream in the gateway; children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
            )


def pin_client(enabled: bool) -> bool:
    """Pin this process to CLIENT_CPU when the machine has both CPUs; say whether pinning is on."""
    available = os.sched_getaffinity(0)
    if not enabled or not {SERVER_CPU, CLIENT_CPU} <= available:
        if enabled:
            say(f"CPUs {SERVER_CPU} and {CLIENT_CPU} are not both available; running unpinned")
        return False
    os.sched_setaffinity(0, {CLIENT_CPU})
    return True


# --- the deterministic path: the in-process provider, no upstream -----------------------------------


async def det_sequential(target: Target, client: Client, args: argparse.Namespace) -> Phase:
    call = client.unary("/v1/chat/completions", chat_body(stream=False))
    await wait_quiet(args)
    await run_sequential(call, args.sequential_warmup)
    return await measured(
        target, "det-sequential", "Chat, sequential", 1, lambda: run_sequential(call, args.sequential_n)
    )


async def det_throughput(target: Target, client: Client, args: argparse.Namespace) -> Phase:
    call = client.unary("/v1/chat/completions", chat_body(stream=False))
    return await closed_loop(target, args, "det-throughput", "Chat, non-streaming", call)


async def det_stream(target: Target, client: Client, args: argparse.Namespace) -> Phase:
    call = client.streaming("/v1/chat/completions", chat_body(stream=True))
    return await closed_loop(target, args, "det-stream", "Chat, streaming", call)


async def det_embeddings(target: Target, client: Client, args: argparse.Namespace) -> Phase:
    call = client.unary("/v1/embeddings", embeddings_body())
    return await closed_loop(target, args, "det-embeddings", "Embeddings", call)


RUNNERS: dict[str, Callable[[Target, Client, argparse.Namespace], Awaitable[Phase]]] = {
    "det-sequential": det_sequential,
    "det-throughput": det_throughput,
    "det-stream": det_stream,
    "det-embeddings": det_embeddings,
}


async def run_deterministic(
    daemon: Daemon, args: argparse.Namespace, names: list[str]
) -> tuple[list[Phase], int]:
    """Run the named scenarios over one keep-alive session; return the phases and requests sent."""
    connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    phases: list[Phase] = []
    target = Target("palyra", "Palyra", daemon.base_url, daemon.token, daemon.pid, daemon.alive)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, daemon.base_url, daemon.token)
        for name in names:
            if not daemon.alive():
                say(f"  the daemon has exited; skipping {name}")
                break
            phases.append(await RUNNERS[name](target, client, args))
    return phases, client.sent


def bench_deterministic(
    runner: asyncio.Runner, args: argparse.Namespace, where: Backend, access_log: bool, names: list[str]
) -> DaemonRun:
    """Start a fresh daemon on the deterministic provider, run the scenarios, stop it, say what happened."""
    run = DaemonRun(database=where.database, access_log=access_log, backend=where.name)
    pg = where.database_url
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(postgres_schema(runner, pg)) if pg else ""
        spec = DaemonSpec(
            cpu=args.server_cpu,
            access_log=access_log,
            database_url=pg,
            database_schema=schema,
            source_dir=args.source_dir,
            redis_url=where.redis_url,
            workers=args.workers,
            token_counting=args.token_counting,
        )
        daemon = stack.enter_context(Daemon(spec))
        say(
            f"daemon pid {daemon.pid} on {daemon.base_url} ({where.name}, deterministic, "
            f"access log {access_log})"
        )
        run.rss_idle_kib = tree_rss_kib(daemon.pid)
        run.phases, run.requests_sent = runner.run(run_deterministic(daemon, args, names))
        record_load_end(run, daemon)
        record_stop(run, daemon, lambda: journal_rows(runner, daemon, pg, schema))
    return run


def run_backend(runner: asyncio.Runner, args: argparse.Namespace, where: Backend) -> list[DaemonRun]:
    runs: list[DaemonRun] = []
    suite = [n for n in args.scenarios if n in SUITE_SCENARIOS]
    if suite:
        say(f"suite on {where.name}: {', '.join(suite)}")
        runs += run_suite(runner, args, where, suite)
    det = [n for n in args.scenarios if n in DETERMINISTIC_SCENARIOS]
    if det:
        runs.append(bench_deterministic(runner, args, where, access_log=False, names=det))
    if "det-access-log" in args.scenarios:
        runs.append(
            bench_deterministic(runner, args, where, access_log=True, names=list(ACCESS_LOG_SCENARIOS))
        )
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    raise_nofile_limit()
    pinned = pin_client(not args.no_pin)
    args.no_pin = not pinned
    args.server_cpu = SERVER_CPU if pinned else None
    args.client_cpu = CLIENT_CPU if pinned else None
    runs: list[DaemonRun] = []
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, exported_source(args.rev) as src:
            args.source_dir = str(args.src_dir.resolve()) if args.src_dir else src
            machine = machine_info(args, pinned, versions(runner, args.backends))
            if args.compare == "litellm":
                machine["litellm"] = f"litellm[proxy] {litellm_version()} in {LITELLM_VENV.relative_to(REPO)}"
            for where in args.backends:
                runs += run_backend(runner, args, where)
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        say(f"cannot run the benchmark: {exc}")
        return 2
    command = command_line(argv)
    doc = {
        "machine": machine,
        "command": command,
        "scoreboard": scoreboard_rows(runs),
        "deterministic_targets": deterministic_target_rows(runs),
        "runs": [asdict(r) for r in runs],
    }
    if args.json_file:
        args.json_file.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(doc, indent=2) if args.json else markdown(runs, machine, command))
    for run in runs:
        if run.failed:
            kind = "suite" if run.proxied else "deterministic"
            say(f"problems in the {run.backend} run of {run.gateway} ({kind}); stderr tail:")
            print(run.stderr_tail, file=sys.stderr)
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
