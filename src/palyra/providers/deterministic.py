"""An offline provider whose every answer is a pure function of the request.

It lets the gateway, its tests and its benchmarks run end to end without a network or an API key:
the same request always yields the same reply, tool call, embedding or transcript, byte for byte.
Nothing here reads the clock or a random source; variety comes from hashing the input.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import math
import re
import string
import struct
import wave
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from palyra.errors import InvalidRequest
from palyra.providers.base import ModelTarget
from palyra.providers.types import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    Finish,
    ImagePart,
    Message,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    TranscriptionRequest,
    TranscriptionResult,
    TranscriptSegment,
    Usage,
    UsageReport,
)

MODEL_IDS = ["deterministic", "hash-embedding-v1", "deterministic-transcribe"]
DEFAULT_EMBEDDING_DIMS = 64
MAX_EMBEDDING_DIMS = 8192
WORDS_PER_TEXT_CHUNK = 4
CHARS_PER_ARGUMENTS_CHUNK = 16
WORDS_PER_SEGMENT = 8
# Speech runs at roughly 150 words a minute; the transcript length should track the audio length.
WORDS_PER_SECOND = 2.5
# Without a readable WAV header, assume 16 kHz 8-bit mono so the estimate grows with the upload.
ESTIMATED_BYTES_PER_SECOND = 16_000
MIN_DURATION_S = 0.1
# Recursive schemas would otherwise build forever; past this depth a value is left null.
MAX_SCHEMA_DEPTH = 16
MAX_BUILT_ITEMS = 64

# fmt: off
TRANSCRIPT_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "then", "runs",
    "across", "green", "field", "under", "bright", "morning", "sun", "while", "birds", "sing", "in",
    "tall", "trees", "near", "quiet", "river", "where", "children", "play", "with", "small", "boats",
    "made", "of", "paper", "that", "drift", "slowly", "toward", "old", "stone", "bridge", "at", "edge",
    "town", "people", "walk", "home", "after", "long", "day", "work", "talking", "about", "weather",
    "news", "family", "plans", "for", "weekend", "market", "square",
)
# fmt: on

_WORD = re.compile(r"\S+")
_WORD_WITH_TRAILING_SPACE = re.compile(r"\S+\s*")
_FORMAT_EXAMPLES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class DeterministicProvider:
    """The Provider protocol over pure functions of the request; it holds no state worth closing."""

    kind = "deterministic"

    def __init__(self, provider_id: str) -> None:
        self.provider_id = provider_id

    async def chat(self, request: ChatRequest, target: ModelTarget) -> ChatResult:
        return compose_chat(request, target)

    async def chat_stream(self, request: ChatRequest, target: ModelTarget) -> AsyncIterator[StreamEvent]:
        # Streaming replays the non-streamed result so both paths can never disagree.
        result = compose_chat(request, target)
        for event in stream_events(result):
            yield event
            # A real upstream delivers chunks over time; let other tasks run between them.
            await asyncio.sleep(0)

    async def embed(self, request: EmbeddingRequest, target: ModelTarget) -> EmbeddingResult:
        dims = request.dimensions if request.dimensions is not None else target.dimensions
        dims = DEFAULT_EMBEDDING_DIMS if dims is None else dims
        if not 1 <= dims <= MAX_EMBEDDING_DIMS:
            raise InvalidRequest(
                f"dimensions must be between 1 and {MAX_EMBEDDING_DIMS}, got {dims}",
                code="invalid_dimensions",
                param="dimensions",
            )
        vectors = [hash_embedding(text, dims) for text in request.inputs]
        prompt_tokens = sum(max(1, count_words(text)) for text in request.inputs)
        return EmbeddingResult(vectors=vectors, usage=Usage(prompt_tokens=prompt_tokens, source="provider"))

    async def transcribe(self, request: TranscriptionRequest, target: ModelTarget) -> TranscriptionResult:
        return compose_transcription(request)

    async def list_models(self) -> list[str]:
        return list(MODEL_IDS)

    async def close(self) -> None:
        return None


# Chat


def compose_chat(request: ChatRequest, target: ModelTarget) -> ChatResult:
    digest = conversation_digest(request.messages)
    prompt_tokens = count_prompt_words(request)
    upstream_id = f"chatcmpl-det-{digest[:16]}"
    tool = choose_tool(request)
    if tool is not None:
        call = ToolCall(
            id=f"call_{short_hash(digest + tool.name)}",
            name=tool.name,
            arguments=tool_arguments(tool, topic_word(request.messages)),
        )
        completion_tokens = max(1, count_words(call.name) + count_words(call.arguments))
        return ChatResult(
            text=None,
            tool_calls=[call],
            finish_reason="tool_calls",
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, source="provider"),
            upstream_id=upstream_id,
        )
    text, truncated = compose_text(request, target)
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=max(1, count_words(text)), source="provider")
    return ChatResult(
        text=text,
        tool_calls=[],
        finish_reason="length" if truncated else "stop",
        usage=usage,
        upstream_id=upstream_id,
    )


def compose_reply(messages: list[Message]) -> str:
    if messages and messages[-1].role == "tool":
        return f"Deterministic reply to tool result: {messages[-1].text().strip() or '(empty)'}"
    subject = latest_user_text(messages).strip() or f"a conversation of {plural(len(messages), 'message')}"
    images = sum(1 for m in messages for p in m.content or () if isinstance(p, ImagePart))
    if images:
        subject += f" ({plural(images, 'image')})"
    return f"Deterministic reply to: {subject}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def compose_text(request: ChatRequest, target: ModelTarget) -> tuple[str, bool]:
    """The reply text in the requested format, and whether max_tokens cut it short."""
    response_format = request.response_format
    if response_format is not None and response_format.type == "json_schema" and response_format.schema:
        # A structured reply is returned whole: cut JSON would be useless to the caller.
        seed = topic_word(request.messages)
        return json.dumps(build_value_from_schema(response_format.schema, seed, all_properties=True)), False
    reply, truncated = truncate_words(compose_reply(request.messages), word_budget(request, target))
    if response_format is not None and response_format.type != "text":
        # Only the prose inside is cut by max_tokens, so the document still parses.
        return json.dumps({"reply": reply}), truncated
    return reply, truncated


def choose_tool(request: ChatRequest) -> ToolSpec | None:
    """The tool to call, or None when the model should answer in text."""
    choice = request.tool_choice
    if not request.tools or (choice is not None and choice.mode == "none"):
        return None
    # After a tool result the model reports back instead of calling again, as a real model would.
    if request.messages and request.messages[-1].role == "tool":
        return None
    if choice is not None and choice.mode == "function":
        named = next((t for t in request.tools if t.name == choice.name), None)
        if named is None:
            raise InvalidRequest(
                f"tool_choice names function {choice.name!r}, which is not in tools",
                code="invalid_tool_choice",
                param="tool_choice",
            )
        return named
    return request.tools[0]


def tool_arguments(tool: ToolSpec, seed: str) -> str:
    built = build_value_from_schema(tool.parameters, seed) if tool.parameters else {}
    return json.dumps(built if isinstance(built, dict) else {})


def word_budget(request: ChatRequest, target: ModelTarget) -> int | None:
    """Words the reply may use: the request's max_tokens, else the model's own output ceiling."""
    if request.max_tokens is not None:
        return max(1, request.max_tokens)
    return target.max_output_tokens if target.max_output_tokens > 0 else None


def truncate_words(text: str, limit: int | None) -> tuple[str, bool]:
    """Cut after ``limit`` words, keeping the original whitespace; report whether anything was cut."""
    if limit is None or len(text) <= limit:  # fewer characters than the limit: fewer words too
        return text, False
    words = list(itertools.islice(_WORD.finditer(text), limit + 1))
    if len(words) <= limit:
        return text, False
    return text[: words[limit - 1].end()], True


def count_words(text: str) -> int:
    return len(text.split())


def count_prompt_words(request: ChatRequest) -> int:
    words = 0
    for message in request.messages:
        words += count_words(message.text())
        for call in message.tool_calls:
            words += count_words(call.name) + count_words(call.arguments)
    return words + sum(count_words(tool.name) for tool in request.tools)


def conversation_digest(messages: list[Message]) -> str:
    canonical = [
        {
            "role": m.role,
            "name": m.name,
            "tool_call_id": m.tool_call_id,
            "content": [
                {"text": p.text} if not isinstance(p, ImagePart) else {"image": p.url, "detail": p.detail}
                for p in m.content or ()
            ],
            "tool_calls": [[c.id, c.name, c.arguments] for c in m.tool_calls],
        }
        for m in messages
    ]
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def latest_user_text(messages: list[Message]) -> str:
    return next((m.text() for m in reversed(messages) if m.role == "user" and m.text().strip()), "")


def topic_word(messages: list[Message]) -> str:
    """The longest word of the latest user text: likely the topic, so built values look on-subject."""
    words = [w.strip(string.punctuation) for w in latest_user_text(messages).split()]
    return max((w for w in words if w), key=len, default="deterministic")


def stream_events(result: ChatResult) -> Iterator[StreamEvent]:
    if result.text is not None:
        for piece in text_chunks(result.text, WORDS_PER_TEXT_CHUNK):
            yield TextDelta(text=piece)
    for index, call in enumerate(result.tool_calls):
        yield ToolCallDelta(index=index, id=call.id, name=call.name, arguments="")
        for start in range(0, len(call.arguments), CHARS_PER_ARGUMENTS_CHUNK):
            piece = call.arguments[start : start + CHARS_PER_ARGUMENTS_CHUNK]
            yield ToolCallDelta(index=index, arguments=piece)
    yield Finish(reason=result.finish_reason)
    yield UsageReport(usage=result.usage)


def text_chunks(text: str, words_per_chunk: int) -> list[str]:
    """Pieces of about ``words_per_chunk`` words whose concatenation is exactly ``text``."""
    tokens = _WORD_WITH_TRAILING_SPACE.findall(text)
    leading = text[: len(text) - len(text.lstrip())]
    if not tokens:
        return [text] if text else []
    chunks = ["".join(tokens[i : i + words_per_chunk]) for i in range(0, len(tokens), words_per_chunk)]
    chunks[0] = leading + chunks[0]
    return chunks


# Structured values


def build_value_from_schema(
    schema: Any,
    seed_word: str,
    *,
    all_properties: bool = False,
    root: dict[str, Any] | None = None,
    depth: int = 0,
) -> Any:
    """A value valid for common JSON schemas, chosen without randomness.

    Objects carry only their ``required`` properties unless ``all_properties``: tool arguments stay
    minimal, structured replies stay maximally filled in.
    """
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        # ``true`` accepts anything; ``false`` and runaway recursion get null.
        return seed_word if schema is True and depth <= MAX_SCHEMA_DEPTH else None
    root = schema if root is None else root

    def build(sub: Any) -> Any:
        return build_value_from_schema(
            sub, seed_word, all_properties=all_properties, root=root, depth=depth + 1
        )

    if "$ref" in schema:
        return build(resolve_ref(root, schema["$ref"]))
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return build(schema[combinator][0])
    kind = schema_type(schema)
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties") or {}
        names = list(properties) if all_properties else list(schema.get("required") or [])
        return {name: build(properties.get(name, {})) for name in names}
    if kind == "array":
        count = min(int(schema.get("minItems", 0)), MAX_BUILT_ITEMS)
        return [build(schema.get("items", {})) for _ in range(count)]
    if kind == "string":
        return build_string(schema, seed_word)
    if kind == "integer":
        return math.ceil(clamp_number(schema, 1))
    if kind == "number":
        return float(clamp_number(schema, 1.0))
    if kind == "boolean":
        return True
    return None


def schema_type(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        return next((t for t in declared if t != "null"), "null")
    if isinstance(declared, str):
        return declared
    if "properties" in schema:
        return "object"
    return "array" if "items" in schema else "string"


def resolve_ref(root: dict[str, Any], ref: str) -> Any:
    """Follow a local ``#/...`` pointer, as pydantic-generated schemas use for nested models."""
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        key = part.replace("~1", "/").replace("~0", "~")
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node


def build_string(schema: dict[str, Any], seed_word: str) -> str:
    value = _FORMAT_EXAMPLES.get(str(schema.get("format")), seed_word)
    min_length = int(schema.get("minLength", 0))
    if len(value) < min_length:
        value = ((value or "x") * min_length)[:min_length]
    max_length = schema.get("maxLength")
    return value[: int(max_length)] if max_length is not None else value


def clamp_number(schema: dict[str, Any], preferred: float) -> float:
    value = preferred
    if (low := bound(schema, "minimum")) is not None:
        value = max(value, low)
    if (low := bound(schema, "exclusiveMinimum")) is not None and value <= low:
        value = low + 1
    if (high := bound(schema, "maximum")) is not None:
        value = min(value, high)
    if (high := bound(schema, "exclusiveMaximum")) is not None and value >= high:
        value = high - 1
    return value


def bound(schema: dict[str, Any], key: str) -> float | None:
    # Draft-4 schemas spell exclusive bounds as booleans; those carry no number to clamp to.
    value = schema.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# Embeddings


def hash_embedding(text: str, dims: int) -> list[float]:
    """A bag-of-words vector: each word adds a fixed signed weight to one hashed slot.

    Word order is ignored on purpose, so texts sharing words point the same way and the cosine of
    unrelated texts stays near zero.
    """
    vector = [0.0] * dims
    for word in text.lower().split():
        token = word.strip(string.punctuation)
        if not token:
            continue
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        # Slot, sign and weight come from different bytes so they vary independently.
        slot = int.from_bytes(digest[2:], "big") % dims
        sign = -1.0 if digest[0] & 0x80 else 1.0
        vector[slot] += sign * (1 + (digest[1] % 64) / 64)
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        # Empty or fully cancelling input still yields a unit vector, as callers may divide by the norm.
        return [1.0] + [0.0] * (dims - 1)
    return [x / norm for x in vector]


# Transcription


def compose_transcription(request: TranscriptionRequest) -> TranscriptionResult:
    if not request.audio:
        raise InvalidRequest("the audio file is empty", code="invalid_audio", param="file")
    duration = wav_duration_s(request.audio)
    if duration is None:
        duration = max(MIN_DURATION_S, len(request.audio) / ESTIMATED_BYTES_PER_SECOND)
    words = transcript_words(request.audio, max(3, round(duration * WORDS_PER_SECOND)))
    return TranscriptionResult(
        text=" ".join(words),
        language=request.language or "en",
        duration_s=duration,
        segments=split_segments(words, duration),
        usage=Usage(prompt_tokens=0, completion_tokens=len(words), source="provider"),
    )


def wav_duration_s(data: bytes) -> float | None:
    """Seconds of audio in a PCM WAV, or None when ``data`` is not one the stdlib can read."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            rate, frame_size = wav.getframerate(), wav.getsampwidth() * wav.getnchannels()
            # Count the frames actually present: streamed WAVs often carry a placeholder length.
            frames = len(wav.readframes(wav.getnframes())) // frame_size if frame_size else 0
    # The stdlib reader signals malformed chunk sizes with RuntimeError as well as wave.Error.
    except (wave.Error, EOFError, struct.error, ValueError, RuntimeError):
        return None
    return frames / rate if rate > 0 and frames > 0 else None


def transcript_words(audio: bytes, count: int) -> list[str]:
    stream = hashlib.shake_256(hashlib.sha256(audio).digest()).digest(count)
    words = [TRANSCRIPT_WORDS[b % len(TRANSCRIPT_WORDS)] for b in stream]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return words


def split_segments(words: list[str], duration: float) -> list[TranscriptSegment]:
    total = len(words)
    segments = []
    for start in range(0, total, WORDS_PER_SEGMENT):
        end = min(start + WORDS_PER_SEGMENT, total)
        segments.append(
            TranscriptSegment(
                start_s=duration * start / total,
                end_s=duration if end == total else duration * end / total,
                text=" ".join(words[start:end]),
            )
        )
    return segments
