"""The daemon under test: a `palyra serve` subprocess with its own state dir, config and API token."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
GRACEFUL_SHUTDOWN_S = 10
STDERR_TAIL_LINES = 20
PROBLEM_LEVELS = ('"level":"warning"', '"level":"error"', '"level":"critical"')
# The proxied daemon's upstream: one OpenAI-compatible provider, one priced model, one budget policy.
UPSTREAM_PROVIDER_ID = "mock"
UPSTREAM_MODEL = "gpt-4o-mini"  # in the shipped price table, so every run is costed
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-bench-mock-upstream"


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    """How to start one daemon."""

    cpu: int | None
    access_log: bool
    database_url: str = ""
    database_schema: str = ""
    source_dir: str = ""  # a src/ directory to run instead of the installed palyra (PYTHONPATH)
    upstream_base_url: str = ""  # proxied: serve UPSTREAM_MODEL from this OpenAI-compatible base URL
    upstream_max_concurrency: int = 64  # proxied: the provider's max_concurrency (and connection pool)
    redis_url: str = ""  # server.redis_url: shared state (counters, leases, breakers) in Redis
    redis_key_prefix: str = ""  # server.redis_key_prefix, when the code under test has that setting
    workers: int = 1  # server.workers: worker processes on one port (needs redis_url)
    token_counting: str = ""  # server.token_counting ("bpe", "estimate"); empty: the default


@dataclass(frozen=True, slots=True)
class StopResult:
    exit_code: int | None
    seconds: float
    killed: bool


def palyra_command() -> list[str]:
    """The `palyra` entry point next to this interpreter, else `python -m palyra`."""
    script = Path(sys.executable).parent / "palyra"
    return [str(script)] if script.exists() else [sys.executable, "-m", "palyra"]


def wait_answering(
    url: str,
    *,
    alive: Callable[[], bool],
    what: str,
    last_words: Callable[[], str],
    timeout_s: float,
    poll_s: float,
) -> None:
    """Until ``url`` answers 200: raise if the process dies first (with its last output) or on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited during start-up:\n{last_words()}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1.0) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(poll_s)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(state_dir: Path, port: int, spec: DaemonSpec) -> Path:
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f"state_dir = {_toml_str(str(state_dir))}",
        f"access_log = {'true' if spec.access_log else 'false'}",
        f"graceful_shutdown_s = {GRACEFUL_SHUTDOWN_S}",
    ]
    if spec.database_url:
        lines.append(f"database_url = {_toml_str(spec.database_url)}")
    if spec.database_schema:
        lines.append(f"database_schema = {_toml_str(spec.database_schema)}")
    if spec.redis_url:
        lines.append(f"redis_url = {_toml_str(spec.redis_url)}")
    if spec.redis_key_prefix:
        lines.append(f"redis_key_prefix = {_toml_str(spec.redis_key_prefix)}")
    if spec.workers > 1:
        lines.append(f"workers = {spec.workers}")
    if spec.token_counting:
        lines.append(f"token_counting = {_toml_str(spec.token_counting)}")
    if spec.upstream_base_url:
        lines += upstream_config(spec.upstream_base_url, spec.upstream_max_concurrency)
    path = state_dir / "palyra.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upstream_config(base_url: str, max_concurrency: int = 64) -> list[str]:
    """The full proxied path: token auth, routing (suggest, the default mode), a budget reservation on
    every request, the upstream call, cost from the shipped price of gpt-4o-mini, the journal.

    ``max_concurrency`` bounds the requests in flight to the provider and sizes its connection pool;
    the open-streams scenario needs it above the number of streams it holds open."""
    return [
        "",
        "[[model_provider.providers]]",
        f"provider_id = {_toml_str(UPSTREAM_PROVIDER_ID)}",
        'kind = "openai_compatible"',
        f"base_url = {_toml_str(base_url)}",
        "allow_private_base_url = true",
        f"api_key_env = {_toml_str(UPSTREAM_KEY_ENV)}",
        f"max_concurrency = {max_concurrency}",
        "",
        "[[model_provider.models]]",
        f"model_id = {_toml_str(UPSTREAM_MODEL)}",
        f"provider_id = {_toml_str(UPSTREAM_PROVIDER_ID)}",
        "",
        "[[budgets]]",
        'policy_id = "bench"',
        'scope = "global"',
        'metric = "usd"',
        'window = "day"',
        "hard_limit = 1000000",
    ]


def clean_env(state_dir: Path, source_dir: str) -> dict[str, str]:
    """The caller's environment without PALYRA_* overrides, which would beat the bench's config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALYRA_") and k != "PYTHONPATH"}
    env["PALYRA_STATE_DIR"] = str(state_dir)
    env[UPSTREAM_KEY_ENV] = UPSTREAM_KEY
    if source_dir:
        env["PYTHONPATH"] = source_dir
    return env


class Daemon:
    """One running daemon. Use as a context manager: it is stopped and its state dir removed on exit."""

    def __init__(self, spec: DaemonSpec) -> None:
        self.spec = spec
        self.state_dir = Path(tempfile.mkdtemp(prefix="palyra-bench-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = write_config(self.state_dir, self.port, spec)
        self.env = clean_env(self.state_dir, spec.source_dir)
        self.stdout_path = self.state_dir / "daemon.stdout"
        self.stderr_path = self.state_dir / "daemon.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.stop_result: StopResult | None = None

    def __enter__(self) -> Daemon:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        cpu = self.spec.cpu
        taskset = cpu is not None and shutil.which("taskset") is not None
        pin = ["taskset", "-c", str(cpu)] if taskset else []
        cmd = [*pin, *palyra_command(), "serve", "--config", str(self.config_path), "--port", str(self.port)]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        if cpu is not None and not taskset:
            os.sched_setaffinity(self.proc.pid, {cpu})  # no taskset: pin right after the start
        self.wait_healthy()
        self.token = self.create_token()

    def wait_healthy(self) -> None:
        wait_answering(
            self.base_url + "/healthz",
            alive=self.alive,
            what="the daemon",
            last_words=self.stderr_tail,
            timeout_s=HEALTH_TIMEOUT_S,
            poll_s=0.05,
        )

    def create_token(self) -> str:
        cmd = [*palyra_command(), "tokens", "create", "--name", "bench", "--config", str(self.config_path)]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"`palyra tokens create` failed ({done.returncode}): {done.stderr.strip()}")
        return lines[-1].strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> StopResult:
        """SIGTERM, then wait for the graceful shutdown (which flushes the journal); SIGKILL if it hangs."""
        assert self.proc is not None
        if self.stop_result is not None:
            return self.stop_result
        started = time.monotonic()
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
        self.stop_result = StopResult(self.proc.returncode, time.monotonic() - started, killed)
        return self.stop_result

    def close(self) -> None:
        if self.proc is not None:
            self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stderr_problems(self, lines: int = STDERR_TAIL_LINES) -> list[str]:
        """The last warning/error lines the daemon logged (and any line that is not a JSON log entry)."""
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        problems = [
            line[:600]
            for line in text.splitlines()
            if any(level in line for level in PROBLEM_LEVELS) or not line.startswith("{")
        ]
        return problems[-lines:]


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A ``VmRSS``/``VmHWM``-style line of /proc/<pid>/status, in KiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (a gateway may run workers in child processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_rss_kib(pid: int | None) -> int | None:
    """Resident memory of ``pid`` and its descendants (``VmRSS`` summed), in KiB."""
    if pid is None:
        return None
    values = [proc_status_kib(p, "VmRSS") for p in tree_pids(pid)]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of ``pid`` and its live descendants."""
    values = [proc_cpu_seconds(p) for p in tree_pids(pid)]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def proc_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # After the command name: state is fields[0], utime and stime are stat fields 14 and 15.
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU seconds over an interval: the daemon's, PostgreSQL's, all CPUs' busy time, steal, and the
    mock upstream's (0 without one)."""

    daemon_s: float
    postgres_s: float
    busy_s: float
    steal_s: float
    upstream_s: float = 0.0
    peers_s: float = 0.0  # the other gateways the bench started (idle or not, they are not "other" load)


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """Cumulative CPU counters at one instant; ``later.since(earlier)`` is the interval between."""

    daemon_s: float
    postgres_s: dict[int, float]  # per process, since backends come and go
    busy_s: float
    steal_s: float
    upstream_s: float = 0.0
    peers_s: float = 0.0

    def since(self, earlier: CpuSnapshot) -> CpuTimes:
        postgres = sum(max(0.0, s - earlier.postgres_s.get(pid, 0.0)) for pid, s in self.postgres_s.items())
        return CpuTimes(
            self.daemon_s - earlier.daemon_s,
            postgres,
            self.busy_s - earlier.busy_s,
            self.steal_s - earlier.steal_s,
            self.upstream_s - earlier.upstream_s,
            self.peers_s - earlier.peers_s,
        )


def postgres_cpu_seconds() -> dict[int, float]:
    """CPU time of every running process named ``postgres`` (the server and its backends)."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text(encoding="utf-8").strip() == "postgres":
                found[int(entry.name)] = proc_cpu_seconds(int(entry.name)) or 0.0
    return found


def machine_cpu_seconds() -> tuple[float, float]:
    """All CPUs' busy seconds (user, nice, system, irq, softirq) and steal seconds since boot."""
    with contextlib.suppress(OSError):
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        tick = os.sysconf("SC_CLK_TCK")
        return (user + nice + system + irq + softirq) / tick, steal / tick
    return 0.0, 0.0


def background_cpu_pct(seconds: float = 1.0) -> float:
    """How busy the machine is before the benchmark starts, in percent of one core."""
    busy0, steal0 = machine_cpu_seconds()
    time.sleep(seconds)
    busy1, steal1 = machine_cpu_seconds()
    return 100.0 * (busy1 - busy0 + steal1 - steal0) / seconds


def cpu_snapshot(
    pid: int | None, upstream_pid: int | None = None, peer_pids: tuple[int, ...] = ()
) -> CpuSnapshot:
    """The gateway's (``pid`` and its children; none for requests straight to the mock), PostgreSQL's,
    the mock upstream's, the other gateways' (``peer_pids``) and the whole machine's CPU time; zeros
    where /proc cannot be read."""
    busy, steal = machine_cpu_seconds()
    upstream = (proc_cpu_seconds(upstream_pid) or 0.0) if upstream_pid is not None else 0.0
    gateway = (tree_cpu_seconds(pid) or 0.0) if pid is not None else 0.0
    peers = sum(tree_cpu_seconds(p) or 0.0 for p in peer_pids)
    return CpuSnapshot(gateway, postgres_cpu_seconds(), busy, steal, upstream, peers)
