"""LiteLLM's proxy as the comparison gateway: a `litellm --config` subprocess from bench/.litellm-venv
(made by bench/litellm_setup.sh), pointed at the same mock upstream as Palyra.

It serves the same model name, gpt-4o-mini, as an ``openai/`` model at the mock's base URL, with a
master key (so each request is authenticated) and its default server (uvicorn, one worker). It runs
with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (the cost map shipped in the package: each response is
costed, nothing is fetched) and ``LITELLM_LOG=WARNING`` (no per-request access log, as Palyra runs with
``access_log = false``), in an environment that holds nothing of the caller's but ``PATH``.

Not comparable on purpose and said so in the report: without its PostgreSQL database (which needs
Prisma's engine binaries, downloaded at first start) LiteLLM has no virtual keys, spend log or budgets,
so its path is shorter than Palyra's. With ``--backend postgres+redis`` it gets the same Redis for its
router state (``router_settings.redis_host``/``redis_port``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from daemon_proc import UPSTREAM_KEY, UPSTREAM_MODEL, free_port, wait_answering

VENV = Path(__file__).resolve().parent / ".litellm-venv"
START_TIMEOUT_S = 120.0  # the proxy imports a great deal before it listens
STOP_TIMEOUT_S = 20.0


def litellm_executable() -> Path | None:
    path = VENV / "bin" / "litellm"
    return path if path.exists() else None


def litellm_version() -> str:
    """The installed litellm's version, read from its metadata without importing it."""
    for meta in sorted((VENV / "lib").glob("python*/site-packages/litellm-*.dist-info/METADATA")):
        for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def config_yaml(upstream_base_url: str, master_key: str, redis_url: str) -> str:
    """The proxy's config; JSON is valid YAML, so no YAML library is needed here."""
    config: dict[str, object] = {
        "model_list": [
            {
                "model_name": UPSTREAM_MODEL,
                "litellm_params": {
                    "model": f"openai/{UPSTREAM_MODEL}",
                    "api_base": upstream_base_url,
                    "api_key": UPSTREAM_KEY,
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False},
    }
    if redis_url:
        parsed = urllib.parse.urlsplit(redis_url)
        config["router_settings"] = {"redis_host": parsed.hostname, "redis_port": parsed.port or 6379}
    return json.dumps(config, indent=2) + "\n"


class LiteLLMProxy:
    """One running proxy; a context manager (stopped and its temp dir removed on exit)."""

    def __init__(self, upstream_base_url: str, *, cpu: int | None, redis_url: str = "") -> None:
        executable = litellm_executable()
        if executable is None:
            raise RuntimeError(f"LiteLLM is not installed in {VENV}: run bench/litellm_setup.sh")
        self.executable = executable
        self.cpu = cpu
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.token = "sk-bench-litellm-" + secrets.token_hex(8)
        self.version = litellm_version()
        self.workdir = Path(tempfile.mkdtemp(prefix="palyra-bench-litellm-"))
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(config_yaml(upstream_base_url, self.token, redis_url), encoding="utf-8")
        self.stderr_path = self.workdir / "litellm.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def describe(self) -> str:
        return f"litellm {self.version}, `litellm --config` with uvicorn, 1 worker"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "WARNING",
        }

    def __enter__(self) -> LiteLLMProxy:
        taskset = self.cpu is not None and shutil.which("taskset") is not None
        pin = ["taskset", "-c", str(self.cpu)] if taskset else []
        cmd = [*pin, str(self.executable), "--config", str(self.config_path)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"]
        with self.stderr_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env(),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so its children stop with it
            )
        if self.cpu is not None and not taskset:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        wait_answering(
            self.base_url + "/health/liveliness",
            alive=self.alive,
            what="the LiteLLM proxy",
            last_words=self.log_tail,
            timeout_s=START_TIMEOUT_S,
            poll_s=0.2,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> tuple[int | None, float, bool]:
        """SIGTERM to its process group, SIGKILL if it hangs: exit code, seconds, killed."""
        assert self.proc is not None
        started = time.monotonic()
        killed = False
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                killed = True
        return self.proc.returncode, time.monotonic() - started, killed

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self, lines: int = 20) -> list[str]:
        """Lines of its log that look like warnings, errors or tracebacks."""
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        marks = ("WARNING", "ERROR", "Traceback", "Exception")
        return [line[:600] for line in text.splitlines() if any(m in line for m in marks)][-lines:]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
