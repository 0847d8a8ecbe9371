"""The request flow behind the /v1 surface, independent of HTTP.

candidates from the registry → [governance: routing, budget reservation] → the dispatcher's one retry
loop over providers → [settle cost] → fill the run record. The HTTP surface parses and encodes; this
module decides.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from palyra.governance.routing import AUTO_MODEL
from palyra.governance.service import Admission, Governance
from palyra.governance.tokenizer import count_chat_tokens, count_tokens
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
    UsageSource,
)
from palyra.usage_estimate import estimate_tokens


@dataclass(slots=True)
class RunContext:
    """One /v1 request in flight: its journal record and where its time went."""

    record: RunRecord
    started: float = field(default_factory=time.perf_counter)
    attempts: AttemptLog = field(default_factory=AttemptLog)
    model: RegisteredModel | None = None
    routing_mode: str | None = None  # the caller's token may override the configured mode

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

    def usage(self) -> Usage | None:
        r = self.record
        if r.usage_source is None:
            return None
        source: UsageSource = "provider" if r.usage_source == "provider" else "estimated"
        return Usage(r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.cache_write_tokens, source)

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
    def __init__(self, registry: ProviderRegistry, dispatcher: Dispatcher, governance: Governance) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self.governance = governance

    async def _admit_chat(
        self, ctx: RunContext, request: ChatRequest
    ) -> tuple[list[RegisteredModel], Admission]:
        """Routing decision, candidates, budget reservation: everything before the upstream call."""
        REQUEST_AGENT.set(ctx.record.agent_id)
        needs = chat_needs(request)
        prompt_tokens = count_chat_tokens(request.messages, request.tools, model=request.model)
        requested = request.model
        decision = self.governance.route(request, needs, prompt_tokens, ctx.routing_mode)
        if decision is not None:
            ctx.record.routing_mode = decision.mode.value
            ctx.record.routing_recommended_model = decision.recommended_model
            request.model = decision.served_model
        elif request.model == AUTO_MODEL:  # pragma: no cover - route() always decides for the virtual model
            raise RuntimeError("palyra/auto needs a routing decision")
        candidates = self.registry.candidates(request.model, "chat", needs)
        allowance = request.max_tokens or candidates[0].target.max_output_tokens
        estimate = self.governance.estimate(candidates[0], prompt_tokens, allowance)
        reservation = await self.governance.admit(ctx.record, estimate)
        return candidates, Admission(reservation, decision, requested)

    def _settle(self, ctx: RunContext, admission: Admission) -> None:
        if admission.settled:
            return
        admission.settled = True
        self.governance.settle(ctx.record, admission, ctx.model, ctx.usage())

    async def chat(self, ctx: RunContext, request: ChatRequest) -> ChatResult:
        candidates, admission = await self._admit_chat(ctx, request)
        try:
            served = await self.dispatcher.call(
                candidates, lambda p, t: p.chat(request, t), ctx.attempts, ctx.serve_with
            )
            ctx.apply_usage(served.value.usage)
        finally:
            ctx.sync_attempts()
            self._settle(ctx, admission)
        return served.value

    async def chat_stream(self, ctx: RunContext, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Open the stream (retrying and failing over until its first event). The caller pulls the rest;
        usage lands on the run record, estimated from what was streamed if the stream ends early."""
        candidates, admission = await self._admit_chat(ctx, request)
        try:
            head, events, _model, runtime = await self.dispatcher.open_stream(
                candidates, lambda p, t: p.chat_stream(request, t), ctx.attempts, ctx.serve_with
            )
        except BaseException:
            self._settle(ctx, admission)
            raise
        finally:
            ctx.sync_attempts()
        return self._relay(ctx, request, head, events, runtime, admission)

    async def _relay(
        self,
        ctx: RunContext,
        request: ChatRequest,
        head: StreamEvent | None,
        events: AsyncIterator[StreamEvent],
        runtime: ProviderRuntime,
        admission: Admission,
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
                    self._settle(ctx, admission)  # so the final chunk can carry the cost
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
            await self.dispatcher.finish_stream(runtime, failure, time.perf_counter() - opened)
            self._settle(ctx, admission)

    async def embed(self, ctx: RunContext, request: EmbeddingRequest) -> EmbeddingResult:
        REQUEST_AGENT.set(ctx.record.agent_id)
        candidates = self.registry.candidates(request.model, "embeddings")
        prompt_tokens = sum(count_tokens(text) for text in request.inputs)
        estimate = self.governance.estimate(candidates[0], prompt_tokens, 0)
        admission = Admission(await self.governance.admit(ctx.record, estimate), None, request.model)
        try:
            served = await self.dispatcher.call(
                candidates, lambda p, t: p.embed(request, t), ctx.attempts, ctx.serve_with
            )
            ctx.apply_usage(served.value.usage)
        finally:
            ctx.sync_attempts()
            self._settle(ctx, admission)
        return served.value

    async def transcribe(self, ctx: RunContext, request: TranscriptionRequest) -> TranscriptionResult:
        REQUEST_AGENT.set(ctx.record.agent_id)
        candidates = self.registry.candidates(request.model, "audio_transcription")
        # Audio is priced per minute of what the upstream hears; nothing to estimate in tokens up front.
        admission = Admission(None, None, request.model)
        try:
            served = await self.dispatcher.call(
                candidates, lambda p, t: p.transcribe(request, t), ctx.attempts, ctx.serve_with
            )
            ctx.apply_usage(served.value.usage)
            ctx.record.extra["audio_seconds"] = served.value.duration_s
        finally:
            ctx.sync_attempts()
            self._settle(ctx, admission)
        return served.value


def estimate_prompt_tokens(request: ChatRequest) -> int:
    return sum(estimate_tokens(m.text()) + 4 for m in request.messages)
