"""The request flow behind the /v1 surface, independent of HTTP.

candidates from the registry → [governance: routing, budget reservation] → the dispatcher's one retry
loop over providers → [settle cost] → fill the run record. The HTTP surface parses and encodes; this
module decides.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from palyra.journal import RunRecord
from palyra.providers.credentials import REQUEST_AGENT
from palyra.providers.dispatch import AttemptLog, Dispatcher
from palyra.providers.failures import UpstreamAttemptError, to_client_error
from palyra.providers.registry import Needs, ProviderRegistry, ProviderRuntime, RegisteredModel
from palyra.providers.types import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    TranscriptionRequest,
    TranscriptionResult,
    Usage,
    UsageReport,
)
from palyra.usage_estimate import estimate_tokens


@dataclass(slots=True)
class RunContext:
    """One /v1 request in flight: its journal record and where its time went."""

    record: RunRecord
    started: float = field(default_factory=time.perf_counter)
    attempts: AttemptLog = field(default_factory=AttemptLog)
    model: RegisteredModel | None = None

    @property
    def upstream_s(self) -> float:
        return self.attempts.upstream_s

    def overhead_ms(self) -> float:
        return max(0.0, (time.perf_counter() - self.started - self.attempts.upstream_s) * 1000.0)

    def serve_with(self, model: RegisteredModel) -> None:
        self.model = model
        r = self.record
        r.model_id = model.config.model_id
        r.provider_id = model.config.provider_id
        r.upstream_model = model.target.upstream_model

    def apply_usage(self, usage: Usage) -> None:
        r = self.record
        r.prompt_tokens = usage.prompt_tokens
        r.completion_tokens = usage.completion_tokens
        r.cached_tokens = usage.cached_tokens
        r.cache_write_tokens = usage.cache_write_tokens
        r.usage_source = usage.source

    def sync_attempts(self) -> None:
        self.record.attempts = self.attempts.attempts
        if self.attempts.failovers:
            self.record.extra["failovers"] = self.attempts.failovers


def chat_needs(request: ChatRequest) -> Needs:
    rf = request.response_format
    return Needs(
        vision=request.has_images(),
        tools=bool(request.tools),
        json_mode=rf is not None and rf.type != "text",
        streaming=request.stream,
    )


class Gateway:
    def __init__(self, registry: ProviderRegistry, dispatcher: Dispatcher) -> None:
        self.registry = registry
        self.dispatcher = dispatcher

    async def chat(self, ctx: RunContext, request: ChatRequest) -> ChatResult:
        REQUEST_AGENT.set(ctx.record.agent_id)
        candidates = self.registry.candidates(request.model, "chat", chat_needs(request))
        try:
            served = await self.dispatcher.call(
                candidates, lambda p, t: p.chat(request, t), ctx.attempts, ctx.serve_with
            )
        finally:
            ctx.sync_attempts()
        ctx.apply_usage(served.value.usage)
        return served.value

    async def chat_stream(self, ctx: RunContext, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Open the stream (retrying and failing over until its first event). The caller pulls the rest;
        usage lands on the run record, estimated from what was streamed if the stream ends early."""
        REQUEST_AGENT.set(ctx.record.agent_id)
        candidates = self.registry.candidates(request.model, "chat", chat_needs(request))
        try:
            head, events, _model, runtime = await self.dispatcher.open_stream(
                candidates, lambda p, t: p.chat_stream(request, t), ctx.attempts, ctx.serve_with
            )
        finally:
            ctx.sync_attempts()
        return self._relay(ctx, request, head, events, runtime)

    async def _relay(
        self,
        ctx: RunContext,
        request: ChatRequest,
        head: StreamEvent | None,
        events: AsyncIterator[StreamEvent],
        runtime: ProviderRuntime,
    ) -> AsyncIterator[StreamEvent]:
        streamed: list[str] = []
        got_usage = False
        failure: UpstreamAttemptError | None = None
        opened = time.perf_counter()
        try:
            event = head
            while event is not None:
                if isinstance(event, TextDelta):
                    streamed.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    streamed.append(event.arguments)
                elif isinstance(event, UsageReport):
                    got_usage = True
                    ctx.apply_usage(event.usage)
                yield event
                t = time.perf_counter()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    event = None
                except UpstreamAttemptError as err:
                    failure = err
                    raise to_client_error(err) from None
                finally:
                    ctx.attempts.upstream_s += time.perf_counter() - t
        finally:
            if not got_usage:
                # The stream ended early (client gone, upstream cut): bill what was streamed,
                # marked estimated.
                ctx.apply_usage(
                    Usage(
                        prompt_tokens=estimate_prompt_tokens(request),
                        completion_tokens=estimate_tokens("".join(streamed)),
                        source="estimated",
                    )
                )
            await events.aclose()  # type: ignore[attr-defined]
            self.dispatcher.finish_stream(runtime, failure, time.perf_counter() - opened)

    async def embed(self, ctx: RunContext, request: EmbeddingRequest) -> EmbeddingResult:
        REQUEST_AGENT.set(ctx.record.agent_id)
        candidates = self.registry.candidates(request.model, "embeddings")
        try:
            served = await self.dispatcher.call(
                candidates, lambda p, t: p.embed(request, t), ctx.attempts, ctx.serve_with
            )
        finally:
            ctx.sync_attempts()
        ctx.apply_usage(served.value.usage)
        return served.value

    async def transcribe(self, ctx: RunContext, request: TranscriptionRequest) -> TranscriptionResult:
        REQUEST_AGENT.set(ctx.record.agent_id)
        candidates = self.registry.candidates(request.model, "audio_transcription")
        try:
            served = await self.dispatcher.call(
                candidates, lambda p, t: p.transcribe(request, t), ctx.attempts, ctx.serve_with
            )
        finally:
            ctx.sync_attempts()
        ctx.apply_usage(served.value.usage)
        return served.value


def estimate_prompt_tokens(request: ChatRequest) -> int:
    return sum(estimate_tokens(m.text()) + 4 for m in request.messages)
