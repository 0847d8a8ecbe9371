"""The OpenAI-compatible adapter: OpenAI, Groq, Together, Ollama, vLLM and anything else that speaks
the OpenAI HTTP API. One attempt per call; retries, breakers and failover live in the registry.

Streams always ask the upstream for usage (``stream_options.include_usage``) so every run is costed from
the provider's own count; the surface strips the usage chunk again when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson

from palyra.config.models import ProviderConfig
from palyra.providers.base import ModelTarget
from palyra.providers.credentials import CredentialSource, key_or_fail
from palyra.providers.failures import (
    FailureClass,
    UpstreamAttemptError,
    classify_http,
    malformed_error,
    not_an_event_stream,
)
from palyra.providers.http_client import make_upstream_session, upstream_call
from palyra.providers.sse import read_events
from palyra.providers.types import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    Finish,
    Message,
    RefusalDelta,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    TranscriptionRequest,
    TranscriptionResult,
    TranscriptSegment,
    Usage,
    UsageReport,
)
from palyra.providers.upstream_http import Timeouts, UpstreamSession, multipart_form
from palyra.usage_estimate import estimate_tokens

PALYRA_METADATA_PREFIX = "palyra_"


def message_json(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if m.content is None:
        out["content"] = None
    elif len(m.content) == 1 and isinstance(m.content[0], TextPart):
        out["content"] = m.content[0].text
    else:
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            else:
                image: dict[str, Any] = {"url": p.url}
                if p.detail:
                    image["detail"] = p.detail
                parts.append({"type": "image_url", "image_url": image})
        out["content"] = parts
    if m.name:
        out["name"] = m.name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    return out


def chat_body(request: ChatRequest, target: ModelTarget, *, stream: bool) -> dict[str, Any]:
    """The upstream request: the client's parameters, the upstream's model name, usage always on."""
    body: dict[str, Any] = dict(request.extra)
    body["model"] = target.upstream_model
    body["messages"] = [message_json(m) for m in request.messages]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        tools = []
        for t in request.tools:
            fn: dict[str, Any] = {"name": t.name}
            if t.description is not None:
                fn["description"] = t.description
            if t.parameters is not None:
                fn["parameters"] = t.parameters
            if t.strict is not None:
                fn["strict"] = t.strict
            tools.append({"type": "function", "function": fn})
        body["tools"] = tools
    if request.tool_choice is not None:
        tc = request.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": tc.name}} if tc.mode == "function" else tc.mode
        )
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    rf = request.response_format
    if rf is not None:
        if rf.type == "json_schema":
            schema: dict[str, Any] = {"name": rf.name or "response"}
            if rf.schema is not None:
                schema["schema"] = rf.schema
            if rf.strict is not None:
                schema["strict"] = rf.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            body["response_format"] = {"type": rf.type}
    if request.max_tokens is not None:
        body[request.max_tokens_field] = request.max_tokens
    for name in ("temperature", "top_p", "seed", "user"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = request.stop
    if request.metadata:
        # Palyra's attribution keys are for Palyra, not for the upstream.
        forwarded = {k: v for k, v in request.metadata.items() if not k.startswith(PALYRA_METADATA_PREFIX)}
        if forwarded:
            body["metadata"] = forwarded
    return body


def _content_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _usage(raw: Any, fallback_prompt: int, fallback_completion: int) -> Usage:
    if not isinstance(raw, dict) or "prompt_tokens" not in raw:
        return Usage(fallback_prompt, fallback_completion, source="estimated")
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
        source="provider",
    )


def parse_chat_response(body: Any, request: ChatRequest, provider_id: str) -> ChatResult:
    try:
        choice = body["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError):
        raise malformed_error(provider_id, "the response has no choices") from None
    text = _content_text(message.get("content"))
    calls = []
    for raw in message.get("tool_calls") or ():
        fn = raw.get("function") or {}
        if not fn.get("name"):
            continue
        calls.append(ToolCall(id=raw.get("id") or "", name=fn["name"], arguments=fn.get("arguments") or "{}"))
    prompt_estimate = sum(estimate_tokens(m.text()) for m in request.messages)
    usage = _usage(body.get("usage"), prompt_estimate, estimate_tokens(text or ""))
    return ChatResult(
        text=text,
        tool_calls=calls,
        finish_reason=choice.get("finish_reason") or "stop",
        usage=usage,
        upstream_id=body.get("id"),
        system_fingerprint=body.get("system_fingerprint"),
        refusal=message.get("refusal"),
    )


def chunk_events(chunk: dict[str, Any]) -> list[StreamEvent]:
    """One upstream chunk → internal events (deltas, then the finish reason, then usage)."""
    events: list[StreamEvent] = []
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            events.append(TextDelta(content))
        if delta.get("refusal"):
            events.append(RefusalDelta(delta["refusal"]))
        for tc in delta.get("tool_calls") or ():
            fn = tc.get("function") or {}
            events.append(
                ToolCallDelta(
                    index=int(tc.get("index", 0)),
                    id=tc.get("id"),
                    name=fn.get("name"),
                    arguments=fn.get("arguments") or "",
                )
            )
        if choice.get("finish_reason"):
            events.append(Finish(choice["finish_reason"]))
    usage = chunk.get("usage")
    if isinstance(usage, dict) and "prompt_tokens" in usage:
        events.append(UsageReport(_usage(usage, 0, 0)))
    return events


class OpenAICompatibleProvider:
    kind = "openai_compatible"

    def __init__(self, config: ProviderConfig, credentials: CredentialSource) -> None:
        if not config.base_url:
            raise ValueError("an openai_compatible provider needs base_url")
        self.provider_id = config.provider_id
        self.base_url = config.base_url.rstrip("/")
        self._credentials = credentials
        self._timeout = Timeouts(
            total=config.request_timeout_ms / 1000.0, connect=config.connect_timeout_ms / 1000.0
        )
        # Streams may run long; what must not happen is a silence longer than the request timeout.
        self._stream_timeout = Timeouts(
            total=None,
            connect=config.connect_timeout_ms / 1000.0,
            read=config.request_timeout_ms / 1000.0,
        )
        self._pool_size = config.max_concurrency
        self._allow_private = config.allow_private_base_url
        self._session: UpstreamSession | None = None
        # Keys this adapter has sent, so upstream error text echoing one is redacted exactly.
        self._sent_keys: set[str] = set()

    def _http(self) -> UpstreamSession:
        if self._session is None or self._session.closed:
            self._session = make_upstream_session(
                self.provider_id, pool_size=self._pool_size, allow_private=self._allow_private
            )
        return self._session

    async def _headers(self, content_type: str | None = "application/json") -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        key = await key_or_fail(self._credentials, self.provider_id)
        if key and len(self._sent_keys) < 8:
            self._sent_keys.add(key)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        data = orjson.dumps(body)
        async with (
            upstream_call(self.provider_id, path, self._sent_keys),
            self._http().post(
                self.base_url + path,
                data=data,
                headers=await self._headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp,
        ):
            raw = await resp.read()
            if resp.status != 200:
                raise classify_http(
                    resp.status,
                    raw.decode(errors="replace"),
                    resp.headers,
                    self.provider_id,
                    secrets=self._sent_keys,
                )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise malformed_error(self.provider_id, f"{path} returned a body that is not JSON") from None

    async def chat(self, request: ChatRequest, target: ModelTarget) -> ChatResult:
        body = await self._post_json("/chat/completions", chat_body(request, target, stream=False))
        return parse_chat_response(body, request, self.provider_id)

    async def chat_stream(self, request: ChatRequest, target: ModelTarget) -> AsyncIterator[StreamEvent]:
        data = orjson.dumps(chat_body(request, target, stream=True))
        headers = await self._headers()
        headers["Accept"] = "text/event-stream"
        async with (
            upstream_call(self.provider_id, "stream", self._sent_keys),
            self._http().post(
                self.base_url + "/chat/completions",
                data=data,
                headers=headers,
                timeout=self._stream_timeout,
                allow_redirects=False,
            ) as resp,
        ):
            if resp.status != 200:
                raw = await resp.read()
                raise classify_http(
                    resp.status,
                    raw.decode(errors="replace"),
                    resp.headers,
                    self.provider_id,
                    secrets=self._sent_keys,
                )
            done = seen = False
            async for _event, payload in read_events(resp.content):
                seen = True
                if payload.strip() == "[DONE]":
                    done = True
                    break
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise malformed_error(
                        self.provider_id, "the stream carried a chunk that is not JSON"
                    ) from None
                if isinstance(chunk, dict) and "error" in chunk:
                    raise classify_http(
                        502, json.dumps(chunk), {}, self.provider_id, secrets=self._sent_keys, in_stream=True
                    )
                for event in chunk_events(chunk):
                    yield event
            if not done:
                if not seen and resp.content_type != "text/event-stream":
                    raise not_an_event_stream(self.provider_id, resp.content_type)
                raise UpstreamAttemptError(
                    failure_class=FailureClass.TRANSIENT,
                    status=None,
                    message=f"{self.provider_id} closed the stream before [DONE]",
                    retryable=True,  # only ever retried if nothing reached the client yet
                    retry_after_s=None,
                    failover_eligible=True,
                    provider_id=self.provider_id,
                )

    async def embed(self, request: EmbeddingRequest, target: ModelTarget) -> EmbeddingResult:
        body: dict[str, Any] = dict(request.extra)
        body.update({"model": target.upstream_model, "input": request.inputs, "encoding_format": "float"})
        dims = request.dimensions or target.dimensions
        if dims is not None:
            body["dimensions"] = dims
        if request.user:
            body["user"] = request.user
        resp = await self._post_json("/embeddings", body)
        try:
            items = sorted(resp["data"], key=lambda d: int(d.get("index", 0)))
            vectors = [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError):
            raise malformed_error(self.provider_id, "the embeddings response has no usable data") from None
        if len(vectors) != len(request.inputs):
            raise malformed_error(
                self.provider_id, f"asked for {len(request.inputs)} embeddings, got {len(vectors)}"
            )
        usage_raw = resp.get("usage") or {}
        prompt = usage_raw.get("prompt_tokens")
        usage = (
            Usage(int(prompt), 0, source="provider")
            if prompt is not None
            else Usage(sum(estimate_tokens(t) for t in request.inputs), 0, source="estimated")
        )
        return EmbeddingResult(vectors=vectors, usage=usage)

    async def transcribe(self, request: TranscriptionRequest, target: ModelTarget) -> TranscriptionResult:
        fields: list[tuple[str, str | bytes, str | None, str | None]] = [
            ("file", request.audio, request.filename, request.content_type),
            ("model", target.upstream_model, None, None),
            # verbose_json carries duration and segments, from which every client format is rendered.
            ("response_format", "verbose_json", None, None),
        ]
        if request.language:
            fields.append(("language", request.language, None, None))
        if request.prompt:
            fields.append(("prompt", request.prompt, None, None))
        if request.temperature is not None:
            fields.append(("temperature", str(request.temperature), None, None))
        fields += [(key, value, None, None) for key, value in request.extra.items()]
        form, form_type = multipart_form(fields)
        async with upstream_call(self.provider_id, "/audio/transcriptions", self._sent_keys):
            async with self._http().post(
                self.base_url + "/audio/transcriptions",
                data=form,
                headers=await self._headers(content_type=form_type),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise classify_http(
                        resp.status,
                        raw.decode(errors="replace"),
                        resp.headers,
                        self.provider_id,
                        secrets=self._sent_keys,
                    )
        try:
            body = orjson.loads(raw)
            text = str(body["text"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise malformed_error(
                self.provider_id, "the transcription response is not JSON with text"
            ) from None
        duration = float(body.get("duration") or 0.0)
        segments = [
            TranscriptSegment(float(s.get("start", 0.0)), float(s.get("end", 0.0)), str(s.get("text", "")))
            for s in body.get("segments") or ()
            if isinstance(s, dict)
        ]
        if not segments and text:
            segments = [TranscriptSegment(0.0, duration, text)]
        return TranscriptionResult(
            text=text,
            language=str(body.get("language") or request.language or "en"),
            duration_s=duration,
            segments=segments,
            usage=Usage(0, estimate_tokens(text), source="estimated"),
        )

    async def list_models(self) -> list[str]:
        async with (
            upstream_call(self.provider_id, "/models", self._sent_keys),
            self._http().get(
                self.base_url + "/models",
                headers=await self._headers(None),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp,
        ):
            raw = await resp.read()
            if resp.status != 200:
                raise classify_http(
                    resp.status,
                    raw.decode(errors="replace"),
                    resp.headers,
                    self.provider_id,
                    secrets=self._sent_keys,
                )
        try:
            return [str(m["id"]) for m in orjson.loads(raw)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise malformed_error(self.provider_id, "/models did not return a model list") from None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)  # let the transports close
