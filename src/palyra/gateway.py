"""The request flow behind the /v1 surface, independent of HTTP.

resolve the model → check what it can do → [governance: routing, budget] → call the provider →
[settle cost] → fill the run record. The HTTP surface parses and encodes; this module decides.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from palyra.errors import InvalidRequest
from palyra.journal import RunRecord
from palyra.providers.base import Provider
from palyra.providers.registry import ProviderRegistry, RegisteredModel
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
    upstream_s: float = 0.0
    model: RegisteredModel | None = None

    def overhead_ms(self) -> float:
        return max(0.0, (time.perf_counter() - self.started - self.upstream_s) * 1000.0)

    def apply_usage(self, usage: Usage) -> None:
        r = self.record
        r.prompt_tokens = usage.prompt_tokens
        r.completion_tokens = usage.completion_tokens
        r.cached_tokens = usage.cached_tokens
        r.cache_write_tokens = usage.cache_write_tokens
        r.usage_source = usage.source


class Gateway:
    def __init__(self, registry: ProviderRegistry) -> None:
        self.registry = registry

    def _resolve(self, ctx: RunContext, model_id: str, role: str) -> tuple[RegisteredModel, Provider]:
        entry, provider = self.registry.resolve(model_id, role)
        ctx.model = entry
        r = ctx.record
        r.model_id = entry.config.model_id
        r.provider_id = entry.config.provider_id
        r.upstream_model = entry.target.upstream_model
        return entry, provider

    async def chat(self, ctx: RunContext, request: ChatRequest) -> ChatResult:
        entry, provider = self._resolve(ctx, request.model, "chat")
        check_chat_capabilities(entry, request)
        ctx.record.attempts += 1
        t = time.perf_counter()
        try:
            result = await provider.chat(request, entry.target)
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.apply_usage(result.usage)
        return result

    async def chat_stream(self, ctx: RunContext, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Resolve and open the upstream stream. The caller pulls events; usage lands on the record."""
        entry, provider = self._resolve(ctx, request.model, "chat")
        check_chat_capabilities(entry, request)
        ctx.record.attempts += 1
        return self._timed_stream(ctx, provider.chat_stream(request, entry.target), request)

    async def _timed_stream(
        self, ctx: RunContext, events: AsyncIterator[StreamEvent], request: ChatRequest
    ) -> AsyncIterator[StreamEvent]:
        streamed: list[str] = []
        got_usage = False
        try:
            while True:
                t = time.perf_counter()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
                finally:
                    ctx.upstream_s += time.perf_counter() - t
                if isinstance(event, TextDelta):
                    streamed.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    streamed.append(event.arguments)
                elif isinstance(event, UsageReport):
                    got_usage = True
                    ctx.apply_usage(event.usage)
                yield event
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
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def embed(self, ctx: RunContext, request: EmbeddingRequest) -> EmbeddingResult:
        entry, provider = self._resolve(ctx, request.model, "embeddings")
        ctx.record.attempts += 1
        t = time.perf_counter()
        try:
            result = await provider.embed(request, entry.target)
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.apply_usage(result.usage)
        return result

    async def transcribe(self, ctx: RunContext, request: TranscriptionRequest) -> TranscriptionResult:
        entry, provider = self._resolve(ctx, request.model, "audio_transcription")
        ctx.record.attempts += 1
        t = time.perf_counter()
        try:
            result = await provider.transcribe(request, entry.target)
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.apply_usage(result.usage)
        return result


def check_chat_capabilities(entry: RegisteredModel, request: ChatRequest) -> None:
    caps = entry.target.capabilities
    mid = entry.config.model_id
    if request.has_images() and not caps.vision:
        raise InvalidRequest(
            f"model '{mid}' does not accept images; use a model with vision or send text only",
            code="model_not_vision_capable",
            param="messages",
        )
    if request.tools and not caps.tools:
        raise InvalidRequest(
            f"model '{mid}' does not support tools; use a model with tool support or remove tools",
            code="model_not_tool_capable",
            param="tools",
        )
    rf = request.response_format
    if rf is not None and rf.type != "text" and not caps.json_mode:
        raise InvalidRequest(
            f"model '{mid}' does not support JSON output; remove response_format or pick another model",
            code="model_not_json_capable",
            param="response_format",
        )
    if request.stream and not caps.streaming:
        raise InvalidRequest(
            f"model '{mid}' does not support streaming; send stream: false",
            code="model_not_stream_capable",
            param="stream",
        )


def estimate_prompt_tokens(request: ChatRequest) -> int:
    return sum(estimate_tokens(m.text()) + 4 for m in request.messages)
