"""Profile the daemon's hot path under load with py-spy: where does a /v1 request's time go?

    .venv/bin/python bench/profile_hotpath.py [--seconds 10] [--concurrency 64] [--model deterministic]
        [--upstream] [--out /tmp/palyra-profile]

Starts a daemon on the embedded default (deterministic provider, full path: token auth, routing,
budget reservation, cost, journal), drives it with a closed-loop aiohttp client pinned to the other
core, records the daemon with ``py-spy record`` (speedscope JSON and a collapsed-stack text file), and
prints the twenty functions with the most samples, self and inclusive. Needs py-spy (dev extra).
With ``--upstream``, the proxied path instead: the bench's mock upstream on the load generator's core
and the bench suite's config (an openai_compatible provider, gpt-4o-mini, a global USD budget).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from daemon_proc import UPSTREAM_KEY, UPSTREAM_KEY_ENV, UPSTREAM_MODEL, upstream_config
from mock_upstream import MockSettings, MockUpstream

REPO = Path(__file__).resolve().parents[1]
BODY = orjson.dumps(
    {
        "model": "deterministic",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for an online bookshop."},
            {"role": "user", "content": "Recommend two mystery novels set in Scotland for a train journey."},
        ],
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(url: str, token: str, body: bytes, seconds: float, concurrency: int) -> int:
    done = 0
    stop_at = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"HTTP {r.status}")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def top(collapsed: Path, n: int = 20) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    print(f"\n{total} samples. Self time:")
    for frame, samples in own.most_common(n):
        print(f"  {100 * samples / total:5.1f}%  {frame}")
    print("Inclusive time (palyra frames):")
    shown = 0
    for frame, samples in inclusive.most_common():
        if "palyra" in frame:
            print(f"  {100 * samples / total:5.1f}%  {frame}")
            shown += 1
            if shown == n:
                break


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", default="deterministic")
    parser.add_argument(
        "--upstream",
        action="store_true",
        help="the proxied path: a mock OpenAI-compatible upstream on the other core, model gpt-4o-mini",
    )
    parser.add_argument("--no-profile", action="store_true", help="only measure CPU per request")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "palyra-profile")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="palyra-profile-"))
    port = free_port()
    admin = "admin-" + secrets.token_hex(8)
    env = {**os.environ, "PALYRA_ADMIN_TOKEN": admin}
    env.pop("PALYRA_CONFIG", None)
    cmd = [sys.executable, "-m", "palyra", "serve", "--port", str(port), "--state-dir", str(state)]
    stack = contextlib.ExitStack()
    if args.upstream:
        mock = stack.enter_context(MockUpstream(free_port(), MockSettings(chunks=20, delay_ms=0), cpu=1))
        config = state / "palyra.toml"
        config.write_text("\n".join(upstream_config(mock.base_url + "/v1")) + "\n", encoding="utf-8")
        env[UPSTREAM_KEY_ENV] = UPSTREAM_KEY
        cmd += ["--config", str(config)]
        args.model = UPSTREAM_MODEL
    daemon = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        os.sched_setaffinity(daemon.pid, {0})
        os.sched_setaffinity(0, {1})
        token = asyncio.run(_setup(base, admin))
        body = BODY.replace(b'"deterministic"', orjson.dumps(args.model))
        asyncio.run(load(base + "/v1/chat/completions", token, body, 3.0, args.concurrency))  # warm-up
        # CPU time per request: robust to other load on the machine, unlike requests/s.
        cpu_before = cpu_seconds(daemon.pid)
        done = asyncio.run(load(base + "/v1/chat/completions", token, body, 5.0, args.concurrency))
        used = cpu_seconds(daemon.pid) - cpu_before
        print(f"daemon CPU per request: {1e6 * used / done:.0f} µs ({done} requests, {used:.2f} s CPU)")
        if args.no_profile:
            return
        collapsed = args.out / "profile.txt"
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(daemon.pid),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                "500",
                "--format",
                "raw",
                "--output",
                str(collapsed),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        done = asyncio.run(load(base + "/v1/chat/completions", token, body, args.seconds, args.concurrency))
        print(f"{done / (time.monotonic() - started):.0f} req/s at concurrency {args.concurrency}")
        spy.wait(60)
        top(collapsed)
        print(f"\ncollapsed stacks: {collapsed}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        stack.close()
        shutil.rmtree(state, ignore_errors=True)


async def _setup(base: str, admin: str) -> str:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get(base + "/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("daemon did not start")
            await asyncio.sleep(0.1)
        async with session.post(
            base + "/api/v1/tokens", json={"name": "profile"}, headers={"Authorization": f"Bearer {admin}"}
        ) as r:
            return str((await r.json())["token"])


if __name__ == "__main__":
    main()
