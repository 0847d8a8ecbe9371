"""The internal request, response and stream-event types every provider adapter speaks.

They are plain slotted dataclasses: built once per request by the HTTP surface, read by an adapter,
and cheap enough for the hot path. OpenAI-only parameters a model provider may still understand are
kept in ``extra`` so an OpenAI-compatible upstream receives them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = str  # stop | length | tool_calls | content_filter | or an upstream reason passed through
UsageSource = Literal["provider", "estimated"]


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    url: str  # an http(s) URL or a data: URI
    detail: str | None = None


ContentPart = TextPart | ImagePart


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document as a string, as OpenAI sends it


@dataclass(slots=True)
class Message:
    role: Role
    content: list[ContentPart] | None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)

    def text(self) -> str:
        """The text parts joined with newlines; images are left out."""
        if not self.content:
            return ""
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    def has_image(self) -> bool:
        return bool(self.content) and any(isinstance(p, ImagePart) for p in self.content or ())


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "function"]
    name: str | None = None  # set when mode == "function"


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    stream: bool = False
    include_usage: bool = False
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = None
    # Which name the client used; newer OpenAI models accept only max_completion_tokens, some
    # OpenAI-compatible servers only max_tokens, so the upstream gets the client's own spelling.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def has_images(self) -> bool:
        return any(m.has_image() for m in self.messages)


@dataclass(slots=True)
class Usage:
    """Token usage in OpenAI's convention: ``prompt_tokens`` includes cached and cache-write tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    source: UsageSource = "provider"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ChatResult:
    text: str | None
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    usage: Usage
    upstream_id: str | None = None
    system_fingerprint: str | None = None
    refusal: str | None = None


# Stream events, in the order a provider yields them: any number of deltas, then Finish, then Usage.


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class RefusalDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of tool call ``index``: the first piece carries id and name, later ones arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Finish:
    reason: FinishReason


@dataclass(slots=True)
class UsageReport:
    usage: Usage


StreamEvent = TextDelta | RefusalDelta | ToolCallDelta | Finish | UsageReport


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    usage: Usage


TranscriptionFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]


@dataclass(slots=True)
class TranscriptionRequest:
    model: str
    audio: bytes
    filename: str
    content_type: str
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    response_format: TranscriptionFormat = "json"
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class TranscriptSegment:
    start_s: float
    end_s: float
    text: str


@dataclass(slots=True)
class TranscriptionResult:
    text: str
    language: str
    duration_s: float
    segments: list[TranscriptSegment]
    usage: Usage
