"""The OpenAI-compatible /v1 endpoints: caller auth, body limits, parsing, encoding, run records.

Plain Starlette endpoints (no per-request middleware) keep the hot path short. Every request, whatever
its outcome, leaves exactly one run record, written when the response (or the stream) is finished.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from palyra.callers.tokens import Caller, TokenService, validate_agent_id
from palyra.errors import AuthenticationFailed, InvalidRequest, ModelNotFound, PalyraError, RequestTooLarge
from palyra.gateway import Gateway, RunContext
from palyra.journal import JournalWriter, RunRecord
from palyra.logs import AccessLog
from palyra.metrics import Metrics
from palyra.providers.types import ChatRequest, Finish, StreamEvent, TranscriptionRequest, UsageReport
from palyra.surface import openai_responses as enc
from palyra.surface.auth_guard import FailedAuthLimiter, client_address
from palyra.surface.openai_requests import (
    DEFAULT_LIMITS,
    RequestLimits,
    parse_chat_request,
    parse_embedding_request,
)

log = logging.getLogger("palyra.surface")

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
NOT_YET = "n/a"  # routing, cost and budget headers until governance is configured


_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(6)
_request_ids = itertools.count(1)


def new_request_id() -> str:
    """Unique across processes (a random 48-bit prefix per process) and cheap: no system call, which
    on the request path would hand the GIL to the database thread."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):012x}"


class OpenAISurface:
    def __init__(
        self,
        *,
        gateway: Gateway,
        tokens: TokenService,
        journal: JournalWriter,
        metrics: Metrics,
        max_json_bytes: int,
        max_audio_bytes: int,
        started_at: int,
        access_log_enabled: bool = True,
        limits: RequestLimits = DEFAULT_LIMITS,
        auth_failures: FailedAuthLimiter | None = None,
    ) -> None:
        self.gateway = gateway
        self.tokens = tokens
        self.journal = journal
        self.metrics = metrics
        self.max_json_bytes = max_json_bytes
        self.max_audio_bytes = max_audio_bytes
        self.started_at = started_at
        self.access_log_enabled = access_log_enabled
        self.access_log = AccessLog()
        self.limits = limits
        self.auth_failures = auth_failures

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
        ]

    # --- the shared frame around every endpoint -------------------------------------------------

    async def _serve(
        self,
        request: Request,
        endpoint: str,
        scope_name: str,
        work: Callable[[Request, RunContext, Caller], Awaitable[Response]],
    ) -> Response:
        now = time.time()
        ctx = RunContext(RunRecord(request_id=new_request_id(), created_at=now, endpoint=endpoint))
        try:
            caller = await self._authenticate(request, now)
            ctx.record.token_id = caller.token.token_id
            ctx.routing_mode = caller.token.routing_mode
            caller.require_scope(scope_name)
            await self.tokens.check_rate_limit(caller, now)
            response = await work(request, ctx, caller)
        except PalyraError as exc:
            response = self._error(ctx, exc)
        except Exception:
            log.exception("unexpected error serving %s (request %s)", endpoint, ctx.record.request_id)
            internal = PalyraError(
                f"internal error; the daemon log has the details under request id {ctx.record.request_id}"
            )
            response = self._error(ctx, internal)
        # Appended raw: these names are never already set, and MutableHeaders.update rescans the
        # header list for every key it sets.
        response.raw_headers.extend(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in self._headers(ctx).items()
        )
        if isinstance(response, SSEResponse):
            return response  # the stream finishes its own record
        self.finish_run(ctx, response.status_code)
        return response

    async def _authenticate(self, request: Request, now: float) -> Caller:
        header = _header(request, b"authorization")
        guard = self.auth_failures
        if guard is None:
            return await self.tokens.authenticate(header, now)
        address = client_address(request)
        guard.check(address, now)
        try:
            return await self.tokens.authenticate(header, now)
        except AuthenticationFailed as exc:
            if not header:
                raise  # no credential, no guess: a client that forgot its token is not counted
            raise await guard.failed(address, now, exc) from None

    def _headers(self, ctx: RunContext) -> dict[str, str]:
        r = ctx.record
        return {
            "x-request-id": r.request_id,
            "x-palyra-provider": r.provider_id or NOT_YET,
            "x-palyra-model": r.model_id or NOT_YET,
            "x-palyra-routing-mode": r.routing_mode or NOT_YET,
            "x-palyra-routing-recommended-model": r.routing_recommended_model or NOT_YET,
            "x-palyra-cost-usd": NOT_YET if r.cost_usd is None else f"{r.cost_usd:.8f}",
            "x-palyra-budget-status": r.extra.get("budget_status", "ok"),
            "x-palyra-overhead-ms": f"{ctx.overhead_ms():.3f}",
        }

    def _error(self, ctx: RunContext, exc: PalyraError) -> Response:
        r = ctx.record
        r.status = "error"
        r.error_class = exc.code
        r.error_message = exc.message[:500]
        headers = {}
        if exc.retry_after_s is not None:
            headers["retry-after"] = str(max(1, int(exc.retry_after_s + 0.999)))
        return Response(enc.error_body(exc), exc.status, headers=headers, media_type="application/json")

    def finish_run(self, ctx: RunContext, http_status: int) -> None:
        r = ctx.record
        r.http_status = http_status
        r.finished_at = time.time()
        elapsed = time.perf_counter() - ctx.started
        r.latency_ms = elapsed * 1000.0
        r.overhead_ms = ctx.overhead_ms()
        self.journal.record(r)
        self.metrics.request_finished(
            r.endpoint,
            r.model_id or "",
            r.provider_id or "",
            str(http_status),
            elapsed,
            r.overhead_ms / 1000.0,
            (r.prompt_tokens, r.completion_tokens, r.cached_tokens)
            if r.prompt_tokens or r.completion_tokens
            else None,
        )
        if self.access_log_enabled and self.access_log.enabled:
            self.access_log.write(
                {
                    "request_id": r.request_id,
                    "endpoint": r.endpoint,
                    "status": http_status,
                    "outcome": r.status,
                    "error": r.error_class,
                    "model": r.model_id,
                    "provider": r.provider_id,
                    "token_id": r.token_id,
                    "agent": r.agent_id,
                    "session": r.session_id,
                    "stream": r.stream,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "latency_ms": round(r.latency_ms, 3),
                    "overhead_ms": round(r.overhead_ms, 3),
                }
            )

    async def _body(self, request: Request, limit: int) -> bytes:
        declared = _header(request, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"request body exceeds the {limit // (1024 * 1024)} MiB limit")
        # The ASGI messages read directly: Request.stream() is an async generator around the same loop.
        receive = request.receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("the client closed the connection before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"request body exceeds the {limit // (1024 * 1024)} MiB limit")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _attribute(
        self, request: Request, ctx: RunContext, caller: Caller, metadata: dict[str, str] | None
    ) -> None:
        agent = _header(request, b"x-palyra-agent") or (metadata or {}).get("palyra_agent")
        session = _header(request, b"x-palyra-session") or (metadata or {}).get("palyra_session")
        ctx.record.agent_id = caller.agent_for(agent)
        if session is not None:
            ctx.record.session_id = validate_agent_id(session, "X-Palyra-Session")

    # --- models ---------------------------------------------------------------------------------

    def _model_json(self, model_id: str) -> dict[str, Any]:
        entry = self.gateway.registry.models[model_id]
        caps = entry.target.capabilities
        return {
            "id": model_id,
            "object": "model",
            "created": self.started_at,
            "owned_by": entry.config.provider_id,
            "palyra": {
                "role": entry.config.role,
                "provider_id": entry.config.provider_id,
                "provider_kind": entry.provider_kind,
                "upstream_model": entry.target.upstream_model,
                "capabilities": {
                    "tools": caps.tools,
                    "vision": caps.vision,
                    "json_mode": caps.json_mode,
                    "streaming": caps.streaming,
                    "max_context_tokens": caps.max_context_tokens,
                },
                "cost_tier": entry.cost_tier,
                "latency_tier": entry.latency_tier,
                "max_output_tokens": entry.target.max_output_tokens,
                "default": self.gateway.registry.defaults.get(entry.config.role) == model_id,
                "fallback_model_ids": list(entry.config.fallback_model_ids),
            },
        }

    async def list_models(self, request: Request) -> Response:
        async def work(request: Request, ctx: RunContext, caller: Caller) -> Response:
            data = [self._model_json(mid) for mid in self.gateway.registry.models]
            return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

        return await self._serve(request, "models", "models", work)

    async def get_model(self, request: Request) -> Response:
        async def work(request: Request, ctx: RunContext, caller: Caller) -> Response:
            model_id = request.path_params["model_id"]
            if model_id not in self.gateway.registry.models:
                raise ModelNotFound(f"the model '{model_id}' does not exist or is not enabled", param="model")
            return Response(orjson.dumps(self._model_json(model_id)), media_type="application/json")

        return await self._serve(request, "models", "models", work)

    # --- chat -----------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat.completions", "chat", self._chat)

    async def _chat(self, request: Request, ctx: RunContext, caller: Caller) -> Response:
        chat = parse_chat_request(await self._body(request, self.max_json_bytes), self.limits)
        r = ctx.record
        r.requested_model = chat.model
        r.stream = chat.stream
        self._attribute(request, ctx, caller, chat.metadata)
        completion_id = "chatcmpl-" + r.request_id[4:]
        created = int(r.created_at)
        if chat.stream:
            events = await self.gateway.chat_stream(ctx, chat)
            # Pull the first event before answering so a failure up to here is a proper HTTP error.
            try:
                first: StreamEvent | None = await anext(events)
            except StopAsyncIteration:
                first = None
            except BaseException:
                await events.aclose()  # type: ignore[attr-defined]
                raise
            model = r.model_id or chat.model
            encoder = enc.ChunkEncoder(
                completion_id=completion_id, created=created, model=model, include_usage=chat.include_usage
            )
            return SSEResponse(self._stream(ctx, chat, events, first, encoder))
        result = await self.gateway.chat(ctx, chat)
        body = enc.chat_completion(
            result, completion_id=completion_id, created=created, model=r.model_id or chat.model
        )
        return Response(orjson.dumps(body), media_type="application/json")

    async def _stream(
        self,
        ctx: RunContext,
        chat: ChatRequest,
        events: AsyncIterator[StreamEvent],
        first: StreamEvent | None,
        encoder: enc.ChunkEncoder,
    ) -> AsyncIterator[bytes]:
        status = 200
        finished = False
        try:
            yield encoder.role()
            event = first
            finish: Finish | None = None
            while event is not None:
                if isinstance(event, Finish):
                    # Held until usage arrives (it follows at once), so the cost can ride along.
                    finish = event
                elif isinstance(event, UsageReport):
                    if finish is not None:
                        yield encoder.event(finish, self._palyra_extra(ctx)) or b""
                        finish = None
                    frame = encoder.usage(event.usage, self._palyra_extra(ctx))
                    if frame is not None:
                        yield frame
                else:
                    frame = encoder.event(event)
                    if frame is not None:
                        yield frame
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    event = None
            if finish is not None:
                yield encoder.event(finish, self._palyra_extra(ctx)) or b""
            yield encoder.DONE
            finished = True
        except PalyraError as exc:
            ctx.record.status = "error"
            ctx.record.error_class = exc.code
            ctx.record.error_message = exc.message[:500]
            status = exc.status
            yield encoder.error(exc)
            finished = True
        finally:
            if not finished:
                ctx.record.status = "cancelled"
                ctx.record.error_class = "client_disconnected"
                status = 499
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
            self.finish_run(ctx, status)

    def _palyra_extra(self, ctx: RunContext) -> dict[str, Any]:
        return {
            "cost_usd": ctx.record.cost_usd,
            "provider_id": ctx.record.provider_id,
            "request_id": ctx.record.request_id,
        }

    # --- embeddings -----------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, "embeddings", "embeddings", self._embeddings)

    async def _embeddings(self, request: Request, ctx: RunContext, caller: Caller) -> Response:
        emb = parse_embedding_request(await self._body(request, self.max_json_bytes), self.limits)
        ctx.record.requested_model = emb.model
        self._attribute(request, ctx, caller, None)
        result = await self.gateway.embed(ctx, emb)
        body = enc.embeddings(
            result, model=ctx.record.model_id or emb.model, encoding_format=emb.encoding_format
        )
        return Response(orjson.dumps(body), media_type="application/json")

    # --- transcriptions -------------------------------------------------------------------------

    async def transcriptions(self, request: Request) -> Response:
        return await self._serve(request, "audio.transcriptions", "audio", self._transcriptions)

    async def _transcriptions(self, request: Request, ctx: RunContext, caller: Caller) -> Response:
        declared = _header(request, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_audio_bytes:
            raise RequestTooLarge(
                f"request body exceeds the {self.max_audio_bytes // (1024 * 1024)} MiB limit"
            )
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest(
                "send the audio as multipart/form-data with a 'file' part", code="invalid_content_type"
            )
        try:
            form = await request.form(max_files=1, max_fields=32, max_part_size=self.max_audio_bytes + 1)
        except Exception as exc:  # multipart errors carry no status of their own
            raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidRequest(
                    "missing required parameter: 'file'", code="missing_required_parameter", param="file"
                )
            audio = await upload.read()
            if len(audio) > self.max_audio_bytes:
                raise RequestTooLarge(
                    f"audio file exceeds the {self.max_audio_bytes // (1024 * 1024)} MiB limit"
                )
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        finally:
            await form.close()
        model = fields.pop("model", "")
        if not model:
            raise InvalidRequest(
                "missing required parameter: 'model'", code="missing_required_parameter", param="model"
            )
        response_format = fields.pop("response_format", "json")
        if response_format not in TRANSCRIPTION_FORMATS:
            raise InvalidRequest(
                f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
                code="invalid_value",
                param="response_format",
            )
        temperature: float | None = None
        if "temperature" in fields:
            try:
                temperature = float(fields.pop("temperature"))
            except ValueError:
                raise InvalidRequest(
                    "temperature must be a number", code="invalid_type", param="temperature"
                ) from None
            if not 0 <= temperature <= 1:
                raise InvalidRequest(
                    "temperature must be between 0 and 1", code="invalid_value", param="temperature"
                )
        ctx.record.requested_model = model
        self._attribute(request, ctx, caller, None)
        req = TranscriptionRequest(
            model=model,
            audio=audio,
            filename=upload.filename or "audio",
            content_type=upload.content_type or "application/octet-stream",
            language=fields.pop("language", None) or None,
            prompt=fields.pop("prompt", None) or None,
            temperature=temperature,
            response_format=response_format,  # type: ignore[arg-type]
            extra=fields,
        )
        result = await self.gateway.transcribe(ctx, req)
        body, media_type = enc.transcription(result, response_format)
        return Response(body, media_type=media_type)


class SSEResponse(Response):
    """A server-sent-events response that cancels its producer when the client goes away.

    The producer's ``finally`` then records the run with what was streamed so far.
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pump_task = asyncio.ensure_future(pump())
        watch_task = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
            if not pump_task.done():
                pump_task.cancel()
            await asyncio.gather(pump_task, return_exceptions=True)
        finally:
            watch_task.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


_READ_HEADERS = frozenset({b"authorization", b"content-length", b"x-palyra-agent", b"x-palyra-session"})


def _header(request: Request, name: bytes) -> str | None:
    """One of the headers /v1 reads. They are picked out of the request in one pass, the first time
    one is asked for: Starlette's ``Headers`` scans and lower-cases the whole list on every lookup."""
    picked: dict[bytes, str] | None = request.scope.get("palyra.headers")
    if picked is None:
        picked = {}
        for key, value in request.scope["headers"]:
            if key in _READ_HEADERS and key not in picked:  # ASGI servers send names lower-cased
                picked[key] = value.decode("latin-1")
        request.scope["palyra.headers"] = picked
    return picked.get(name)
