"""Fake OpenAI / Anthropic upstreams: real aiohttp servers on 127.0.0.1, one thread + event loop each.

Every fake records each request it receives and answers either from a per-path queue of scripted
``Reply`` objects or, when that queue is empty, with a default behaviour that speaks the provider's
wire format (JSON bodies and SSE streams).

Scripting rules (``FakeUpstream.script(path, *replies)``):

* a Reply with a body (``json``, ``sse`` or ``raw``) is sent as is; a body-less Reply with
  ``status >= 400`` gets the provider's error body for that status; a body-less Reply with a
  success status gets the *default* response, with the Reply's headers merged in and its faults
  (delay, chunk delay, cut, split, hang) applied to it;
* scripted replies are answered without any auth / header checks;
* ``hang`` never sends headers; combined with ``cut_after`` it sends the headers and that many SSE
  frames (or body bytes) and then stalls (connection left open) until the server stops;
* ``cut_after`` on a non-SSE body sends only that many body bytes (Content-Length stays the full
  size), then closes the connection;
* ``reset`` resets the connection (RST) before anything is sent; combined with ``cut_after`` it sends
  the headers and that many SSE frames (or body bytes) first.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.parser
import email.policy
import hashlib
import itertools
import json as jsonlib
import re
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

__all__ = [
    "FakeAnthropic",
    "FakeOpenAI",
    "FakeUpstream",
    "Recorded",
    "Reply",
    "UploadedFile",
    "parse_sse",
]

SseItem = str | bytes | dict[str, Any] | list[Any] | tuple[str, Any]


@dataclass
class Reply:
    """One scripted response (see the module docstring for how body-less replies behave)."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # OpenAI: data payloads (dict/list -> JSON, str sent raw such as "[DONE]");
    # Anthropic: (event, data) tuples. bytes items are written verbatim (fully malformed frames).
    sse: list[SseItem] | None = None
    raw: bytes | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    hang: bool = False
    reset: bool = False
    cut_after: int | None = None
    split_utf8: bool = False

    @property
    def has_body(self) -> bool:
        return self.json is not None or self.sse is not None or self.raw is not None


@dataclass
class UploadedFile:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case keys; repeated headers joined with ", "
    json: Any  # parsed JSON body, or None
    form: dict[str, str | UploadedFile] | None  # multipart / urlencoded fields (last value wins)
    body: bytes
    query: dict[str, str]
    received_at: float  # time.monotonic()
    form_items: list[tuple[str, str | UploadedFile]] = field(default_factory=list)
    disconnected: bool = False  # set when writing the response failed (client went away)

    @property
    def files(self) -> dict[str, UploadedFile]:
        return {k: v for k, v in (self.form or {}).items() if isinstance(v, UploadedFile)}


# --------------------------------------------------------------------------- helpers


def _dumps(obj: Any) -> str:
    return jsonlib.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode_sse_item(item: SseItem) -> bytes:
    """Encode one SSE frame: ``(event, data)`` tuple, data payload (dict/list/str) or verbatim bytes."""
    if isinstance(item, bytes):
        return item
    event: str | None = None
    data: Any = item
    if isinstance(item, tuple):
        event, data = item
    payload = data if isinstance(data, str) else _dumps(data)
    lines = [f"event: {event}"] if event is not None else []
    lines += [f"data: {line}" for line in payload.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def parse_sse(data: bytes | str) -> list[tuple[str | None, str]]:
    """Parse an SSE byte stream into ``(event, data)`` pairs (multi-line data joined with "\\n")."""
    text = data.decode() if isinstance(data, bytes) else data
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    frames: list[tuple[str | None, str]] = []
    for block in text.split("\n\n"):
        event: str | None = None
        datas: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                datas.append(value)
        if datas or event is not None:
            frames.append((event, "\n".join(datas)))
    return frames


def _utf8_pieces(data: bytes) -> list[bytes]:
    """Split ``data`` right after the lead byte of every multibyte UTF-8 sequence (or in half)."""
    cuts = [i + 1 for i, b in enumerate(data) if b >= 0xC0]
    if not cuts and len(data) > 1:
        cuts = [len(data) // 2]
    pieces, start = [], 0
    for cut in cuts:
        if cut > start:
            pieces.append(data[start:cut])
            start = cut
    if start < len(data):
        pieces.append(data[start:])
    return pieces


_WORD = re.compile(r"\s*\S+")


def word_pieces(text: str) -> list[str]:
    """One piece per word, whitespace kept (leading), so that ``"".join(pieces) == text``."""
    parts = _WORD.findall(text)
    rest = text[len("".join(parts)) :]
    if rest:
        if parts:
            parts[-1] += rest
        else:
            parts = [rest]
    return parts


def word_count(text: str) -> int:
    return len(text.split())


def _truncate_words(text: str, limit: Any) -> tuple[str, bool]:
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < word_count(text):
        return "".join(word_pieces(text)[:limit]).rstrip(), True
    return text, False


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str | UploadedFile]]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    items: list[tuple[str, str | UploadedFile]] = []
    if not msg.is_multipart():
        return items
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            ctype = part.get("content-type")
            items.append(
                (str(name), UploadedFile(filename, part.get_content_type() if ctype else None, payload))
            )
        else:
            charset = part.get_content_charset() or "utf-8"
            items.append((str(name), payload.decode(charset, errors="replace")))
    return items


# --------------------------------------------------------------------------- base server


class FakeUpstream:
    """A real HTTP server on 127.0.0.1:<ephemeral> running in its own thread and event loop."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._counters: dict[str, itertools.count[int]] = defaultdict(lambda: itertools.count(1))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._port = 0

    # ---- lifecycle

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._setup(sock))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}:{self._port}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            sock.close()
            self._thread.join(5)
            self._thread = self._loop = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from (
                failure[0] if failure else None
            )
        return self

    async def _setup(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _teardown(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()
        await self._runner.cleanup()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._teardown(), loop).result(10)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._loop = self._thread = self._runner = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- scripting & inspection (thread-safe)

    def script(self, path: str, *replies: Reply) -> None:
        """Queue replies for ``path`` (exact match, no query); when empty the default behaviour answers."""
        key = "/" + path.lstrip("/")
        with self._lock:
            self._scripts[key].extend(replies)

    def pending(self, path: str) -> int:
        with self._lock:
            return len(self._scripts.get("/" + path.lstrip("/"), ()))

    def reset_state(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()
            self._counters.clear()

    def requests_for(self, path: str) -> list[Recorded]:
        key = "/" + path.lstrip("/")
        with self._lock:
            return [r for r in self.requests if r.path == key]

    @property
    def last(self) -> Recorded:
        with self._lock:
            return self.requests[-1]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} requests, got {len(self.requests)}")
            time.sleep(0.005)

    def _next_id(self, kind: str) -> int:
        with self._lock:
            return next(self._counters[kind])

    # ---- provider hooks

    def default_reply(self, rec: Recorded) -> Reply:
        return self.error_reply(404)

    @classmethod
    def error_body(cls, status: int, message: str | None = None) -> Any:
        return {"error": {"message": message or _reason(status)}}

    @classmethod
    def error_reply(
        cls, status: int, message: str | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        return Reply(status=status, json=cls.error_body(status, message), headers=dict(headers or {}))

    def _extra_headers(self) -> dict[str, str]:
        return {}

    # ---- request handling

    async def _record(self, request: web.Request) -> Recorded:
        body = await request.read()
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            key = k.lower()
            headers[key] = f"{headers[key]}, {v}" if key in headers else v
        ctype = request.headers.get("content-type", "")
        parsed: Any = None
        items: list[tuple[str, str | UploadedFile]] = []
        form: dict[str, str | UploadedFile] | None = None
        if ctype.startswith("multipart/"):
            items = _parse_multipart(ctype, body)
            form = dict(items)
        elif ctype.startswith("application/x-www-form-urlencoded"):
            items = list(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
            form = dict(items)
        elif body:
            with contextlib.suppress(ValueError):
                parsed = jsonlib.loads(body)
        rec = Recorded(
            method=request.method,
            path=request.path,
            headers=headers,
            json=parsed,
            form=form,
            body=body,
            query=dict(request.query),
            received_at=time.monotonic(),
            form_items=items,
        )
        with self._lock:
            self.requests.append(rec)
        return rec

    async def _pause(self, seconds: float | None) -> bool:
        """Sleep (forever if None); returns True when the server is stopping."""
        assert self._stopping is not None
        if seconds is not None and seconds <= 0:
            return self._stopping.is_set()
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _abort(request: web.Request, rst: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()  # FIN after flushing what was written; no chunked terminator

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        with self._lock:
            queue = self._scripts.get(request.path)
            reply = queue.popleft() if queue else None
        reply = reply or Reply()

        if reply.reset and reply.cut_after is None:
            self._abort(request, rst=True)
            return web.Response()
        if reply.delay_s > 0 and await self._pause(reply.delay_s):
            self._abort(request, rst=False)
            return web.Response()
        if request.transport is None or request.transport.is_closing():
            rec.disconnected = True  # the client gave up while we were delaying
            return web.Response()

        if reply.has_body:
            body = reply
        elif reply.status >= 400:
            body = self.error_reply(reply.status)
        else:
            body = self.default_reply(rec)
        headers = {**self._extra_headers(), **body.headers, **(reply.headers if body is not reply else {})}
        stall = reply.hang and reply.cut_after is not None

        if reply.hang and not stall:
            await self._pause(None)
            self._abort(request, rst=False)
            return web.Response()

        try:
            if body.sse is not None:
                return await self._send_sse(request, rec, body, reply, headers, stall)
            return await self._send_body(request, rec, body, reply, headers, stall)
        except ConnectionError:
            rec.disconnected = True
            self._abort(request, rst=False)
            return web.Response()

    async def _send_sse(
        self,
        request: web.Request,
        rec: Recorded,
        body: Reply,
        reply: Reply,
        headers: dict[str, str],
        stall: bool,
    ) -> web.StreamResponse:
        assert body.sse is not None
        hdrs = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        hdrs.update({k.lower(): v for k, v in headers.items()})
        resp = web.StreamResponse(status=body.status, headers=hdrs)
        await resp.prepare(request)
        frames = [encode_sse_item(item) for item in body.sse]
        if reply.cut_after is not None:
            frames = frames[: reply.cut_after]
        for i, frame in enumerate(frames):
            if i and reply.chunk_delay_s > 0 and await self._pause(reply.chunk_delay_s):
                self._abort(request, rst=False)
                return resp
            await self._write(resp, frame, reply.split_utf8)
        await self._end(request, resp, reply, stall, cut=reply.cut_after is not None)
        return resp

    async def _end(
        self, request: web.Request, resp: web.StreamResponse, reply: Reply, stall: bool, *, cut: bool
    ) -> None:
        if stall:
            await self._pause(None)
            self._abort(request, rst=False)
        elif cut:
            if reply.reset:
                await self._pause(0.05)  # let the client read what was sent before the RST drops it
            self._abort(request, rst=reply.reset)
        else:
            await resp.write_eof()

    async def _send_body(
        self,
        request: web.Request,
        rec: Recorded,
        body: Reply,
        reply: Reply,
        headers: dict[str, str],
        stall: bool = False,
    ) -> web.StreamResponse:
        hdrs = {k.lower(): v for k, v in headers.items()}
        if body.raw is not None:
            data = body.raw
            hdrs.setdefault("content-type", "application/json")
        elif body.json is not None:
            data = _dumps(body.json).encode()
            hdrs.setdefault("content-type", "application/json")
        else:
            data = b""
        if reply.cut_after is None and not reply.split_utf8:
            return web.Response(status=body.status, body=data, headers=hdrs)
        resp = web.StreamResponse(status=body.status, headers=hdrs)
        resp.content_length = len(data)
        await resp.prepare(request)
        await self._write(
            resp, data[: reply.cut_after] if reply.cut_after is not None else data, reply.split_utf8
        )
        cut = reply.cut_after is not None and reply.cut_after < len(data)
        await self._end(request, resp, reply, stall, cut=cut)
        return resp

    async def _write(self, resp: web.StreamResponse, data: bytes, split: bool) -> None:
        if not split:
            await resp.write(data)
            return
        for i, piece in enumerate(_utf8_pieces(data)):
            if i:
                await asyncio.sleep(0.002)  # let each piece leave as its own TCP segment
            await resp.write(piece)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else f"HTTP {status}"


# --------------------------------------------------------------------------- OpenAI


_OPENAI_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}

DEFAULT_OPENAI_MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "whisper-1"]
TRANSCRIPT = "fake transcript"


def _openai_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


class FakeOpenAI(FakeUpstream):
    """OpenAI-compatible upstream; clients use ``base_url = fake.url + "/v1"``."""

    def __init__(self, api_key: str | None = None, models: Iterable[str] | None = None) -> None:
        super().__init__(api_key)
        self.models = list(models) if models is not None else list(DEFAULT_OPENAI_MODELS)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @classmethod
    def error_body(
        cls, status: int, message: str | None = None, type: str | None = None, code: str | None = None
    ) -> Any:
        d_msg, d_type, d_code = _OPENAI_ERRORS.get(
            status, (_reason(status), "server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {
            "error": {
                "message": message or d_msg,
                "type": type or d_type,
                "param": None,
                "code": code or d_code,
            }
        }

    @classmethod
    def error_reply(
        cls,
        status: int,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> Reply:
        body = cls.error_body(status, message, type, code)
        body["error"]["param"] = param
        return Reply(status=status, json=body, headers=dict(headers or {}))

    def _extra_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_fake_{self._next_id('request')}"}

    def default_reply(self, rec: Recorded) -> Reply:
        if self.api_key is not None and rec.headers.get("authorization") != f"Bearer {self.api_key}":
            return self.error_reply(401)
        route = (rec.method, rec.path)
        if route == ("POST", "/v1/chat/completions"):
            return self._chat(rec)
        if route == ("POST", "/v1/embeddings"):
            return self._embeddings(rec)
        if route in {("POST", "/v1/audio/transcriptions"), ("POST", "/v1/audio/translations")}:
            return self._transcription(rec)
        if route == ("GET", "/v1/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
            return Reply(json={"object": "list", "data": data})
        if rec.method == "GET" and rec.path.startswith("/v1/models/"):
            model = rec.path.removeprefix("/v1/models/")
            if model in self.models:
                return Reply(json={"id": model, "object": "model", "created": 0, "owned_by": "fake"})
            return self.error_reply(404, f"The model '{model}' does not exist", code="model_not_found")
        return self.error_reply(404, f"Invalid URL ({rec.method} {rec.path})", code=None)

    # ---- chat

    def _chat(self, rec: Recorded) -> Reply:
        req = rec.json
        if not isinstance(req, dict):
            return self.error_reply(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                "sent was not valid JSON.)",
            )
        if not req.get("model"):
            return self.error_reply(400, "you must provide a model parameter", code=None)
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.error_reply(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        model = req["model"]
        prompt_tokens = sum(
            word_count(_openai_text(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        user_text = next(
            (
                _openai_text(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        chat_id = f"chatcmpl-fake-{self._next_id('chat')}"
        created = int(time.time())
        tool = self._pick_tool(req, messages)
        if tool is not None:
            text, finish = None, "tool_calls"
            arguments = "{}"
            completion_tokens = 1
        else:
            text, truncated = _truncate_words(
                f"echo: {user_text}", req.get("max_completion_tokens", req.get("max_tokens"))
            )
            finish = "length" if truncated else "stop"
            completion_tokens = word_count(text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        call_id = "call_fake_1"
        if not req.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": [],
            }
            if tool is not None:
                message["tool_calls"] = [
                    {"id": call_id, "type": "function", "function": {"name": tool, "arguments": arguments}}
                ]
            return Reply(
                json={
                    "id": chat_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                }
            )

        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                c["usage"] = None
            return c

        frames: list[SseItem] = []
        if tool is not None:
            frames.append(
                chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": tool, "arguments": ""},
                            }
                        ],
                    }
                )
            )
            frames += [
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in arguments
            ]
        else:
            assert text is not None
            frames.append(chunk({"role": "assistant", "content": ""}))
            frames += [chunk({"content": piece}) for piece in word_pieces(text)]
        frames.append(chunk({}, finish))
        if include_usage:
            frames.append(
                {
                    "id": chat_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": usage,
                }
            )
        frames.append("[DONE]")
        return Reply(sse=frames)

    @staticmethod
    def _pick_tool(req: dict[str, Any], messages: list[Any]) -> str | None:
        tools = req.get("tools")
        choice = req.get("tool_choice", "auto")
        if not isinstance(tools, list) or not tools or choice == "none":
            return None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if isinstance(name, str):
                return name
        elif choice != "required" and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
            return None  # answered a tool result: reply with text so agent loops terminate
        first = tools[0] if isinstance(tools[0], dict) else {}
        return str((first.get("function") or {}).get("name", first.get("name", "tool")))

    # ---- embeddings

    def _embeddings(self, rec: Recorded) -> Reply:
        req = rec.json
        if not isinstance(req, dict) or "input" not in req:
            return self.error_reply(
                400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        raw_input = req["input"]
        if isinstance(raw_input, str) or (
            isinstance(raw_input, list) and raw_input and all(isinstance(t, int) for t in raw_input)
        ):
            inputs = [raw_input]
        elif isinstance(raw_input, list) and raw_input:
            inputs = list(raw_input)
        else:
            return self.error_reply(400, "'input' : input must be a string or an array", param="input")
        dims = req.get("dimensions") or 8
        if not isinstance(dims, int) or dims <= 0:
            return self.error_reply(400, "Invalid 'dimensions'", param="dimensions")
        b64 = req.get("encoding_format") == "base64"
        data = []
        prompt_tokens = 0
        for i, item in enumerate(inputs):
            prompt_tokens += word_count(item) if isinstance(item, str) else len(item)
            vector = fake_embedding(item, dims)
            packed = struct.pack(f"<{dims}f", *vector)
            value: Any = (
                base64.b64encode(packed).decode() if b64 else list(struct.unpack(f"<{dims}f", packed))
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        return Reply(
            json={
                "object": "list",
                "data": data,
                "model": req.get("model"),
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }
        )

    # ---- audio

    def _transcription(self, rec: Recorded) -> Reply:
        form = rec.form or {}
        if not isinstance(form.get("file"), UploadedFile):
            return self.error_reply(400, "Missing required parameter: 'file'.", param="file")
        if not form.get("model"):
            return self.error_reply(400, "Missing required parameter: 'model'.", param="model")
        fmt = form.get("response_format", "json")
        text_ct = {"content-type": "text/plain; charset=utf-8"}
        if fmt == "json":
            return Reply(json={"text": TRANSCRIPT})
        if fmt == "text":
            return Reply(raw=f"{TRANSCRIPT}\n".encode(), headers=text_ct)
        if fmt == "srt":
            return Reply(raw=f"1\n00:00:00,000 --> 00:00:01,000\n{TRANSCRIPT}\n\n".encode(), headers=text_ct)
        if fmt == "vtt":
            return Reply(
                raw=f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{TRANSCRIPT}\n\n".encode(), headers=text_ct
            )
        if fmt == "verbose_json":
            task = "translate" if rec.path.endswith("translations") else "transcribe"
            return Reply(
                json={
                    "task": task,
                    "language": "english",
                    "duration": 1.0,
                    "text": TRANSCRIPT,
                    "segments": [
                        {
                            "id": 0,
                            "seek": 0,
                            "start": 0.0,
                            "end": 1.0,
                            "text": TRANSCRIPT,
                            "tokens": [1, 2],
                            "temperature": 0.0,
                            "avg_logprob": -0.1,
                            "compression_ratio": 1.0,
                            "no_speech_prob": 0.0,
                        }
                    ],
                }
            )
        return self.error_reply(
            400,
            f"Invalid value: '{fmt}'. Supported values are: "
            "'json', 'text', 'srt', 'verbose_json', and 'vtt'.",
            param="response_format",
            code="invalid_value",
        )


def fake_embedding(item: Any, dims: int) -> list[float]:
    """Deterministic unit-length vector for an input (str or token list)."""
    seed = (item if isinstance(item, str) else _dumps(item)).encode()
    stream = b""
    counter = 0
    while len(stream) < dims * 4:
        stream += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    values = [(int.from_bytes(stream[i * 4 : i * 4 + 4], "little") / 2**32) * 2 - 1 for i in range(dims)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


# --------------------------------------------------------------------------- Anthropic


_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}

DEFAULT_ANTHROPIC_MODELS = [
    ("claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-opus-4-1", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
]


def _anthropic_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_result":
                texts.append(_anthropic_text(block.get("content")))
    return " ".join(t for t in texts if t)


class FakeAnthropic(FakeUpstream):
    """Anthropic Messages API upstream; clients use ``base_url = fake.url``."""

    def __init__(
        self, api_key: str | None = None, models: Iterable[tuple[str, str, str]] | None = None
    ) -> None:
        super().__init__(api_key)
        self.models = list(models) if models is not None else list(DEFAULT_ANTHROPIC_MODELS)

    @property
    def base_url(self) -> str:
        return self.url

    @classmethod
    def error_body(cls, status: int, message: str | None = None, type: str | None = None) -> Any:
        d_type, d_msg = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", _reason(status))
        )
        return {"type": "error", "error": {"type": type or d_type, "message": message or d_msg}}

    @classmethod
    def error_reply(
        cls,
        status: int,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        type: str | None = None,
    ) -> Reply:
        return Reply(status=status, json=cls.error_body(status, message, type), headers=dict(headers or {}))

    @staticmethod
    def error_event(type: str = "overloaded_error", message: str = "Overloaded") -> tuple[str, Any]:
        """An in-stream ``event: error`` frame, for scripting mid-stream failures."""
        return ("error", {"type": "error", "error": {"type": type, "message": message}})

    def _extra_headers(self) -> dict[str, str]:
        return {"request-id": f"req_fake_{self._next_id('request')}"}

    def default_reply(self, rec: Recorded) -> Reply:
        if self.api_key is not None and rec.headers.get("x-api-key") != self.api_key:
            return self.error_reply(401)
        if "anthropic-version" not in rec.headers:
            return self.error_reply(400, "anthropic-version: header is required")
        route = (rec.method, rec.path)
        if route == ("POST", "/v1/messages"):
            return self._messages(rec)
        if route == ("POST", "/v1/messages/count_tokens"):
            req = rec.json if isinstance(rec.json, dict) else {}
            return Reply(json={"input_tokens": self._input_tokens(req)})
        if route == ("GET", "/v1/models"):
            data = [
                {"type": "model", "id": mid, "display_name": name, "created_at": created}
                for mid, name, created in self.models
            ]
            return Reply(
                json={
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                }
            )
        return self.error_reply(404, "Not found")

    @staticmethod
    def _input_tokens(req: dict[str, Any]) -> int:
        messages = req.get("messages") if isinstance(req.get("messages"), list) else []
        total = word_count(_anthropic_text(req.get("system")))
        return total + sum(
            word_count(_anthropic_text(m.get("content"))) for m in messages if isinstance(m, dict)
        )

    def _messages(self, rec: Recorded) -> Reply:
        req = rec.json
        if not isinstance(req, dict):
            return self.error_reply(400, "There was an issue with your request body: invalid JSON")
        for key in ("model", "messages", "max_tokens"):
            if key not in req:
                return self.error_reply(400, f"{key}: Field required")
        messages = req["messages"]
        if not isinstance(messages, list) or not messages:
            return self.error_reply(400, "messages: at least one message is required")
        model = req["model"]
        input_tokens = self._input_tokens(req)
        user_text = next(
            (
                _anthropic_text(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        msg_id = f"msg_fake_{self._next_id('message')}"
        tool = self._pick_tool(req, messages)
        if tool is not None:
            stop_reason = "tool_use"
            output_tokens = 1
            text = ""
            content: list[dict[str, Any]] = [
                {"type": "tool_use", "id": "toolu_fake_1", "name": tool, "input": {}}
            ]
        else:
            text, truncated = _truncate_words(f"echo: {user_text}", req.get("max_tokens"))
            stop_reason = "max_tokens" if truncated else "end_turn"
            output_tokens = word_count(text)
            content = [{"type": "text", "text": text}]
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if not req.get("stream"):
            return Reply(
                json={
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
        start_message = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        frames: list[SseItem] = [("message_start", {"type": "message_start", "message": start_message})]
        if tool is not None:
            block = {"type": "tool_use", "id": "toolu_fake_1", "name": tool, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", "{", "}"]]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in word_pieces(text)]
        frames.append(
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        )
        frames.append(("ping", {"type": "ping"}))
        frames += [
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas
        ]
        frames.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        frames.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
        )
        frames.append(("message_stop", {"type": "message_stop"}))
        return Reply(sse=frames)

    @staticmethod
    def _pick_tool(req: dict[str, Any], messages: list[Any]) -> str | None:
        tools = req.get("tools")
        choice = req.get("tool_choice") if isinstance(req.get("tool_choice"), dict) else {"type": "auto"}
        if not isinstance(tools, list) or not tools or choice.get("type") == "none":
            return None
        if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
            return str(choice["name"])
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        content = last.get("content")
        answered = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
        if choice.get("type") != "any" and answered:
            return None  # answered a tool result: reply with text so agent loops terminate
        first = tools[0] if isinstance(tools[0], dict) else {}
        return str(first.get("name", "tool"))
