"""The one narrow protocol every provider adapter implements, and the target it is asked to serve.

The HTTP surface and the registry know only this protocol; an adapter knows only its upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from palyra.providers.types import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    StreamEvent,
    TranscriptionRequest,
    TranscriptionResult,
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    tools: bool
    vision: bool
    json_mode: bool
    streaming: bool
    max_context_tokens: int | None


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A registry model resolved for one call: what the upstream calls it and what it can do."""

    model_id: str
    provider_id: str
    upstream_model: str
    role: str
    capabilities: Capabilities
    max_output_tokens: int
    dimensions: int | None = None


class Provider(Protocol):
    """An upstream. Methods raise ``palyra.errors.PalyraError`` subclasses on failure."""

    provider_id: str
    kind: str

    async def chat(self, request: ChatRequest, target: ModelTarget) -> ChatResult: ...

    def chat_stream(self, request: ChatRequest, target: ModelTarget) -> AsyncIterator[StreamEvent]:
        """Yield deltas, then ``Finish``, then ``UsageReport`` (always, even if the client did not ask)."""
        ...

    async def embed(self, request: EmbeddingRequest, target: ModelTarget) -> EmbeddingResult: ...

    async def transcribe(self, request: TranscriptionRequest, target: ModelTarget) -> TranscriptionResult: ...

    async def list_models(self) -> list[str]: ...

    async def close(self) -> None: ...
