"""The native Anthropic Messages API adapter. Translation is in ``anthropic_translate`` (pure
functions with golden tests); this module only speaks HTTP. One attempt per call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from palyra.config.models import ProviderConfig
from palyra.errors import InvalidRequest
from palyra.providers.anthropic_translate import StreamTranslator, translate_request, translate_response
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
    StreamEvent,
    TranscriptionRequest,
    TranscriptionResult,
)
from palyra.providers.upstream_http import Timeouts, UpstreamSession

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"
ERROR_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicProvider:
    kind = "anthropic"

    def __init__(self, config: ProviderConfig, credentials: CredentialSource) -> None:
        self.provider_id = config.provider_id
        base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        # Accept both https://api.anthropic.com and https://api.anthropic.com/v1 as the base.
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self._credentials = credentials
        self._timeout = Timeouts(
            total=config.request_timeout_ms / 1000.0, connect=config.connect_timeout_ms / 1000.0
        )
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

    async def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
            "accept": accept,
        }
        key = await key_or_fail(self._credentials, self.provider_id)
        if key and len(self._sent_keys) < 8:
            self._sent_keys.add(key)
        if key:
            headers["x-api-key"] = key
        return headers

    async def chat(self, request: ChatRequest, target: ModelTarget) -> ChatResult:
        translated = translate_request(request, target, stream=False)
        async with upstream_call(self.provider_id, "/v1/messages", self._sent_keys):
            async with self._http().post(
                self.base_url + "/v1/messages",
                data=orjson.dumps(translated.body),
                headers=await self._headers(),
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
        except orjson.JSONDecodeError:
            raise malformed_error(self.provider_id, "/v1/messages returned a body that is not JSON") from None
        if not isinstance(body, dict) or body.get("type") != "message":
            raise malformed_error(self.provider_id, "/v1/messages returned something other than a message")
        return translate_response(body, json_tool=translated.json_tool)

    async def chat_stream(self, request: ChatRequest, target: ModelTarget) -> AsyncIterator[StreamEvent]:
        translated = translate_request(request, target, stream=True)
        translator = StreamTranslator(json_tool=translated.json_tool)
        async with (
            upstream_call(self.provider_id, "stream", self._sent_keys),
            self._http().post(
                self.base_url + "/v1/messages",
                data=orjson.dumps(translated.body),
                headers=await self._headers("text/event-stream"),
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
            stopped = seen = False
            async for event, payload in read_events(resp.content):
                seen = True
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise malformed_error(self.provider_id, f"the {event} event is not JSON") from None
                if not isinstance(data, dict):
                    raise malformed_error(self.provider_id, f"the {event} event is not an object")
                name = event if event != "message" else str(data.get("type", ""))
                if name == "error":
                    raise self._error_event(payload, data)
                for out in translator.feed(name, data):
                    yield out
                if name == "message_stop":
                    stopped = True
                    break
            if not stopped:
                if not seen and resp.content_type != "text/event-stream":
                    raise not_an_event_stream(self.provider_id, resp.content_type)
                raise UpstreamAttemptError(
                    failure_class=FailureClass.TRANSIENT,
                    status=None,
                    message=f"{self.provider_id} closed the stream before message_stop",
                    retryable=True,  # only ever retried if nothing reached the client yet
                    retry_after_s=None,
                    failover_eligible=True,
                    provider_id=self.provider_id,
                )

    def _error_event(self, payload: str, data: dict[str, Any]) -> UpstreamAttemptError:
        """An ``event: error`` (often overloaded_error right after a 200): classified like the HTTP
        status Anthropic uses for the same error, so it is retried, failed over and counted the same."""
        error = data.get("error")
        error_type = str(error.get("type")) if isinstance(error, dict) else ""
        status = ERROR_EVENT_STATUS.get(error_type, 500)
        return classify_http(status, payload, {}, self.provider_id, secrets=self._sent_keys, in_stream=True)

    async def embed(self, request: EmbeddingRequest, target: ModelTarget) -> EmbeddingResult:
        raise InvalidRequest(
            f"provider '{self.provider_id}' (Anthropic) has no embeddings API; configure an embeddings model "
            "on another provider",
            code="unsupported_endpoint",
            param="model",
        )

    async def transcribe(self, request: TranscriptionRequest, target: ModelTarget) -> TranscriptionResult:
        raise InvalidRequest(
            f"provider '{self.provider_id}' (Anthropic) has no transcription API; configure a transcription "
            "model on another provider",
            code="unsupported_endpoint",
            param="model",
        )

    async def list_models(self) -> list[str]:
        headers = await self._headers()
        async with (
            upstream_call(self.provider_id, "/v1/models", self._sent_keys),
            self._http().get(
                self.base_url + "/v1/models", headers=headers, timeout=self._timeout, allow_redirects=False
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
            data: Any = orjson.loads(raw)
            return [str(m["id"]) for m in data["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise malformed_error(self.provider_id, "/v1/models did not return a model list") from None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)
