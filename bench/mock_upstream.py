"""A fast OpenAI-compatible mock upstream for the proxied benchmark, and the subprocess that runs it.

Serves ``POST /v1/chat/completions`` (a JSON completion with usage, or with ``"stream": true`` an SSE
stream: a role chunk, ``--chunks`` content chunks of one word each, a finish chunk, a usage chunk when
the request asks for ``stream_options.include_usage``, then ``data: [DONE]``) and ``GET /v1/models``.
It answers every request the same way (it only reads ``model``, ``stream``, ``stream_options`` and the
message lengths), after an optional fixed ``--delay-ms``; each SSE event is its own write, with an
optional ``--chunk-interval-ms`` between them. Any ``Authorization`` header is accepted.
``POST /_mock/settings`` with ``{"delay_ms": ..., "chunk_interval_ms": ...}`` changes those two for the
requests that follow (the open-streams scenario turns streams into a slow trickle this way) and answers
with the settings now in force.

Two servers with the same behaviour: ``asgi`` (a raw ASGI callable under uvicorn with uvloop and
httptools, no framework; the default, the faster of the two on the benchmark machine) and ``aiohttp``
(``aiohttp.web``). Run it alone with ``python bench/mock_upstream.py --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SERVERS = ("asgi", "aiohttp")
DEFAULT_CHUNKS = 20
REPLY = (
    "Try The Skeleton Road by Val McDermid and Knots and Crosses by Ian Rankin; both are set in Scotland "
    "and both keep the pages turning on a long train journey north through the hills and the glens"
)
WORDS = REPLY.split(" ")
START_TIMEOUT_S = 20.0
SETTINGS_PATH = "/_mock/settings"
BAD_SETTINGS = b'{"error":{"message":"expected delay_ms, chunk_interval_ms >= 0","type":"bad_settings"}}'
STOP_TIMEOUT_S = 10.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class MockSettings:
    chunks: int = DEFAULT_CHUNKS
    delay_ms: float = 0.0
    chunk_interval_ms: float = 0.0


class Responder:
    """Builds the answers; everything that does not depend on the request is encoded once."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.delay_s = settings.delay_ms / 1000.0
        self.interval_s = settings.chunk_interval_ms / 1000.0
        self.words = [WORDS[i % len(WORDS)] + " " for i in range(settings.chunks)]
        self.text = "".join(self.words).rstrip()
        self.models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1721172741, "owned_by": "mock"}
                    for m in ("gpt-4o-mini", "gpt-4o")
                ],
            }
        )
        self.counter = 0

    def configure(self, body: bytes) -> bytes | None:
        """Apply ``POST /_mock/settings``; the settings now in force, or None for a bad body."""
        changes = self.parse(body)
        if changes is None or not set(changes) <= {"delay_ms", "chunk_interval_ms"}:
            return None
        values = [changes.get(k) for k in ("delay_ms", "chunk_interval_ms")]
        if any(v is not None and (not isinstance(v, int | float) or v < 0) for v in values):
            return None
        if values[0] is not None:
            self.delay_s = values[0] / 1000.0
        if values[1] is not None:
            self.interval_s = values[1] / 1000.0
        return orjson.dumps(
            {"delay_ms": self.delay_s * 1000.0, "chunk_interval_ms": self.interval_s * 1000.0}
        )

    @staticmethod
    def parse(body: bytes) -> dict[str, Any] | None:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return request if isinstance(request, dict) else None

    @staticmethod
    def prompt_tokens(request: dict[str, Any]) -> int:
        chars = 0
        for m in request.get("messages") or ():
            content = m.get("content") if isinstance(m, dict) else None
            chars += len(content) if isinstance(content, str) else 0
        return max(1, chars // 4)

    def _ident(self) -> tuple[str, int]:
        self.counter += 1
        return f"chatcmpl-mock{self.counter:010d}", int(time.time())

    def completion(self, request: dict[str, Any]) -> bytes:
        ident, created = self._ident()
        prompt = self.prompt_tokens(request)
        return orjson.dumps(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": request.get("model") or "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": self.settings.chunks,
                    "total_tokens": prompt + self.settings.chunks,
                },
                "system_fingerprint": "fp_mock",
            }
        )

    def stream_events(self, request: dict[str, Any]) -> list[bytes]:
        """Every SSE event of one stream, in order (each is written separately)."""
        ident, created = self._ident()
        model = request.get("model") or "gpt-4o-mini"
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"

        def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}

        events = [event([delta({"role": "assistant", "content": "", "refusal": None})])]
        events += [event([delta({"content": word})]) for word in self.words]
        events.append(event([delta({}, "stop")]))
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            prompt = self.prompt_tokens(request)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": self.settings.chunks,
                "total_tokens": prompt + self.settings.chunks,
            }
            events.append(event([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return events


# --- the raw ASGI server (uvicorn) ----------------------------------------------------------------

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def asgi_app(responder: Responder) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            await reply(send, 200, responder.models_body, JSON_HEADERS)
            return
        if method != "POST" or path not in ("/v1/chat/completions", SETTINGS_PATH):
            await reply(send, 404, b'{"error":{"message":"not found","type":"not_found"}}', JSON_HEADERS)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if path == SETTINGS_PATH:
            settings = responder.configure(b"".join(chunks))
            await reply(send, 200 if settings else 400, settings or BAD_SETTINGS, JSON_HEADERS)
            return
        request = responder.parse(b"".join(chunks))
        if request is None:
            body = b'{"error":{"message":"the body is not a JSON object","type":"invalid_request_error"}}'
            await reply(send, 400, body, JSON_HEADERS)
            return
        if responder.delay_s:
            await asyncio.sleep(responder.delay_s)
        if not request.get("stream"):
            await reply(send, 200, responder.completion(request), JSON_HEADERS)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for frame in responder.stream_events(request):
            if responder.interval_s:
                await asyncio.sleep(responder.interval_s)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def serve_asgi(host: str, port: int, responder: Responder) -> None:
    import uvicorn

    uvicorn.run(
        asgi_app(responder),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=4096,
    )


# --- the aiohttp.web server -----------------------------------------------------------------------


def serve_aiohttp(host: str, port: int, responder: Responder) -> None:
    import uvloop
    from aiohttp import web

    async def models(_request: web.Request) -> web.Response:
        return web.Response(body=responder.models_body, content_type="application/json")

    async def settings(http: web.Request) -> web.Response:
        body = responder.configure(await http.read())
        return web.Response(
            status=200 if body else 400, body=body or BAD_SETTINGS, content_type="application/json"
        )

    async def chat(http: web.Request) -> web.StreamResponse:
        request = responder.parse(await http.read())
        if request is None:
            body = b'{"error":{"message":"the body is not a JSON object","type":"invalid_request_error"}}'
            return web.Response(status=400, body=body, content_type="application/json")
        if responder.delay_s:
            await asyncio.sleep(responder.delay_s)
        if not request.get("stream"):
            return web.Response(body=responder.completion(request), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(http)
        for frame in responder.stream_events(request):
            if responder.interval_s:
                await asyncio.sleep(responder.interval_s)
            await resp.write(frame)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post(SETTINGS_PATH, settings)
    uvloop.install()
    web.run_app(app, host=host, port=port, access_log=None, print=None, backlog=4096)


# --- the subprocess ---------------------------------------------------------------------------------


class MockUpstream:
    """The mock as a subprocess, optionally pinned to one CPU. A context manager: stopped on exit."""

    def __init__(
        self, port: int, settings: MockSettings, *, server: str = "asgi", cpu: int | None = None
    ) -> None:
        self.port = port
        self.settings = settings
        self.server = server
        self.cpu = cpu
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path: Path | None = None
        self._stderr_kept = ""  # the stderr file's text, kept when the file is removed on exit

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def describe(self) -> str:
        s = self.settings
        server = "raw ASGI app under uvicorn (uvloop, httptools)" if self.server == "asgi" else "aiohttp.web"
        pin = f", pinned to CPU {self.cpu}" if self.cpu is not None else ", unpinned"
        return (
            f"{server}{pin}; {s.chunks} content chunks per stream, delay {s.delay_ms:g} ms, "
            f"chunk interval {s.chunk_interval_ms:g} ms"
        )

    def __enter__(self) -> MockUpstream:
        taskset = self.cpu is not None and shutil.which("taskset") is not None
        pin = ["taskset", "-c", str(self.cpu)] if taskset else []
        s = self.settings
        cmd = [
            *pin,
            sys.executable,
            str(Path(__file__).resolve()),
            "--port",
            str(self.port),
            "--server",
            self.server,
            "--chunks",
            str(s.chunks),
            "--delay-ms",
            str(s.delay_ms),
            "--chunk-interval-ms",
            str(s.chunk_interval_ms),
        ]
        fd, name = tempfile.mkstemp(prefix="palyra-bench-mock-", suffix=".stderr")
        self.stderr_path = Path(name)
        with open(fd, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        if self.cpu is not None and not taskset:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        from daemon_proc import wait_answering  # the harness side only, not the mock server

        wait_answering(
            self.base_url + "/v1/models",
            alive=self.alive,
            what="the mock upstream",
            last_words=self.stderr_text,
            timeout_s=START_TIMEOUT_S,
            poll_s=0.05,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def configure(self, *, delay_ms: float | None = None, chunk_interval_ms: float | None = None) -> None:
        """Change the delay and the pause between stream events for the requests that follow."""
        changes = {"delay_ms": delay_ms, "chunk_interval_ms": chunk_interval_ms}
        body = orjson.dumps({k: v for k, v in changes.items() if v is not None})
        request = urllib.request.Request(self.base_url + SETTINGS_PATH, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5.0) as resp:
            resp.read()

    def stderr_text(self) -> str:
        if self.stderr_path is None:
            return self._stderr_kept
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return self._stderr_kept

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stderr_path is not None:  # keep the text, remove the temp file
            self._stderr_kept = self.stderr_text()
            self.stderr_path.unlink(missing_ok=True)
            self.stderr_path = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--server", choices=SERVERS, default="asgi")
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help="content chunks per stream")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="fixed delay before each answer")
    parser.add_argument(
        "--chunk-interval-ms", type=float, default=0.0, help="pause before each SSE event of a stream"
    )
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.delay_ms < 0 or args.chunk_interval_ms < 0:
        parser.error("--chunks must be >= 1, --delay-ms and --chunk-interval-ms >= 0")
    responder = Responder(MockSettings(args.chunks, args.delay_ms, args.chunk_interval_ms))
    (serve_asgi if args.server == "asgi" else serve_aiohttp)(args.host, args.port, responder)


if __name__ == "__main__":
    main()
