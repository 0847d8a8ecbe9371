"""Encoding results as OpenAI response bodies and SSE chunks.

Shapes follow ``CreateChatCompletionResponse``, ``CreateChatCompletionStreamResponse``,
``CreateEmbeddingResponse`` and the transcription responses of the official OpenAPI document.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from palyra.errors import PalyraError
from palyra.providers.types import (
    ChatResult,
    EmbeddingResult,
    Finish,
    RefusalDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    TranscriptionResult,
    Usage,
)


def error_body(exc: PalyraError) -> bytes:
    return orjson.dumps(
        {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def chat_completion(result: ChatResult, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": result.refusal}
    if result.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in result.tool_calls
        ]
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}
        ],
        "usage": usage_json(result.usage),
    }
    if result.system_fingerprint:
        body["system_fingerprint"] = result.system_fingerprint
    return body


class ChunkEncoder:
    """Turns stream events into ``data: …`` SSE frames for one completion."""

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage

    def _frame(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        chunk: dict[str, Any] = {
            **self._head,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if self._include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def role(self) -> bytes:
        return self._frame({"role": "assistant", "content": ""})

    def event(self, event: StreamEvent, palyra: dict[str, Any] | None = None) -> bytes | None:
        if isinstance(event, TextDelta):
            return self._frame({"content": event.text})
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.index}
            if event.id is not None:
                call["id"] = event.id
                call["type"] = "function"
            fn: dict[str, Any] = {"arguments": event.arguments}
            if event.name is not None:
                fn["name"] = event.name
            call["function"] = fn
            return self._frame({"tool_calls": [call]})
        if isinstance(event, RefusalDelta):
            return self._frame({"refusal": event.text})
        if isinstance(event, Finish):
            # Without a usage chunk to come, what is known only at the end rides on the finish chunk.
            extra = {} if self._include_usage or palyra is None else {"palyra": palyra}
            return self._frame({}, event.reason, **extra)
        return None

    def usage(self, usage: Usage, palyra: dict[str, Any]) -> bytes | None:
        if not self._include_usage:
            return None
        chunk = {**self._head, "choices": [], "usage": usage_json(usage), "palyra": palyra}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    @staticmethod
    def error(exc: PalyraError) -> bytes:
        return b"data: " + error_body(exc) + b"\n\n"

    DONE = b"data: [DONE]\n\n"


def embeddings(result: EmbeddingResult, *, model: str, encoding_format: str) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(result.vectors):
        embedding: Any = vector
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens},
    }


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def transcription(result: TranscriptionResult, response_format: str) -> tuple[bytes, str]:
    """The body and its media type for each ``response_format``."""
    if response_format == "text":
        return (result.text + "\n").encode(), "text/plain; charset=utf-8"
    if response_format == "srt":
        blocks = [
            f"{i}\n{_timestamp(s.start_s, ',')} --> {_timestamp(s.end_s, ',')}\n{s.text}\n"
            for i, s in enumerate(result.segments, start=1)
        ]
        return "\n".join(blocks).encode(), "text/plain; charset=utf-8"
    if response_format == "vtt":
        blocks = [
            f"{_timestamp(s.start_s, '.')} --> {_timestamp(s.end_s, '.')}\n{s.text}\n"
            for s in result.segments
        ]
        return ("WEBVTT\n\n" + "\n".join(blocks)).encode(), "text/vtt; charset=utf-8"
    usage = {"type": "duration", "seconds": max(1, round(result.duration_s))}
    if response_format == "verbose_json":
        body: dict[str, Any] = {
            "task": "transcribe",
            "language": result.language,
            "duration": result.duration_s,
            "text": result.text,
            "segments": [
                {
                    "id": i,
                    "seek": 0,
                    "start": s.start_s,
                    "end": s.end_s,
                    "text": s.text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": 0.0,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.0,
                }
                for i, s in enumerate(result.segments)
            ],
            "usage": usage,
        }
    else:
        body = {"text": result.text, "usage": usage}
    return orjson.dumps(body), "application/json"
