"""The /v1 surface on the deterministic provider, driven by the official openai SDK over real HTTP.

Every body and stream chunk is validated against the official OpenAPI schema, and every request is
looked up in the run journal by the x-request-id the client saw.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import wave

import httpx2 as httpx
import pytest
from openai import OpenAI

from conftest import Daemon
from openai_schema import validate


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


def test_models_list_and_get(daemon: Daemon, client: OpenAI) -> None:
    raw = client.models.with_raw_response.list()
    body = json.loads(raw.content)
    validate("ListModelsResponse", body)
    ids = {m["id"] for m in body["data"]}
    assert {"deterministic", "hash-embedding-v1", "deterministic-transcribe"} <= ids
    roles = {m["id"]: m["palyra"]["role"] for m in body["data"]}
    assert roles["hash-embedding-v1"] == "embeddings"
    model = client.models.retrieve("deterministic")
    validate("Model", model.model_dump())
    assert model.owned_by == "deterministic"
    assert daemon.run(raw.headers["x-request-id"])["endpoint"] == "models"


def test_chat_completion_non_streaming(daemon: Daemon, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="deterministic",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about the weather in Lisbon"},
        ],
        extra_headers={"X-Palyra-Agent": "weather-bot", "X-Palyra-Session": "s-1"},
    )
    body = json.loads(raw.content)
    validate("CreateChatCompletionResponse", body)
    completion = raw.parse()
    assert "weather in Lisbon" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    for header in (
        "x-request-id",
        "x-palyra-provider",
        "x-palyra-model",
        "x-palyra-routing-mode",
        "x-palyra-routing-recommended-model",
        "x-palyra-cost-usd",
        "x-palyra-budget-status",
        "x-palyra-overhead-ms",
    ):
        assert header in raw.headers, header
    assert raw.headers["x-palyra-provider"] == "deterministic"
    assert float(raw.headers["x-palyra-overhead-ms"]) >= 0
    run = daemon.run(raw.headers["x-request-id"])
    assert run["endpoint"] == "chat.completions"
    assert run["status"] == "ok" and run["http_status"] == 200
    assert run["agent_id"] == "weather-bot" and run["session_id"] == "s-1"
    assert run["prompt_tokens"] == completion.usage.prompt_tokens
    assert run["completion_tokens"] == completion.usage.completion_tokens
    assert run["usage_source"] == "provider"
    assert run["model_id"] == "deterministic" and run["provider_id"] == "deterministic"
    assert run["token_id"].startswith("tok_")


def test_chat_is_deterministic(client: OpenAI) -> None:
    msgs = [{"role": "user", "content": "same question"}]
    a = client.chat.completions.create(model="deterministic", messages=msgs)  # type: ignore[arg-type]
    b = client.chat.completions.create(model="deterministic", messages=msgs)  # type: ignore[arg-type]
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_streaming_with_usage(daemon: Daemon, client: OpenAI) -> None:
    words = " ".join(f"word{i}" for i in range(40))
    expected = client.chat.completions.create(
        model="deterministic", messages=[{"role": "user", "content": words}]
    )
    with client.chat.completions.with_streaming_response.create(
        model="deterministic",
        messages=[{"role": "user", "content": words}],
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        request_id = resp.headers["x-request-id"]
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == expected.choices[0].message.content
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) > 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"]["total_tokens"] > 0
    assert final["palyra"]["provider_id"] == "deterministic"
    assert all(c["usage"] is None for c in chunks[:-1])
    run = daemon.run(request_id)
    assert run["stream"] is True and run["status"] == "ok"
    assert run["completion_tokens"] == final["usage"]["completion_tokens"]


def test_streaming_without_usage_has_no_usage_chunk(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="deterministic", messages=[{"role": "user", "content": "hi there friend"}], stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))


def test_tool_calls(client: OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city", "days"],
                },
            },
        }
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="deterministic",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
    )
    validate("CreateChatCompletionResponse", json.loads(raw.content))
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert set(args) == {"city", "days"} and isinstance(args["days"], int)
    # Streaming the same request yields the same call, assembled from deltas.
    chunks = list(
        client.chat.completions.create(
            model="deterministic",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=tools,  # type: ignore[arg-type]
            stream=True,
        )
    )
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))
    streamed = "".join(
        (tc.function.arguments or "")
        for c in chunks
        for tc in (c.choices[0].delta.tool_calls or [] if c.choices else [])
        if tc.function
    )
    assert json.loads(streamed) == args
    # Feeding the tool result back gets a text answer.
    follow = client.chat.completions.create(
        model="deterministic",
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
        ],
        tools=tools,  # type: ignore[arg-type]
    )
    assert follow.choices[0].finish_reason == "stop"


def test_json_modes(client: OpenAI) -> None:
    obj = client.chat.completions.create(
        model="deterministic",
        messages=[{"role": "user", "content": "give me json"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model="deterministic",
        messages=[{"role": "user", "content": "a person"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    data = json.loads(out.choices[0].message.content or "")
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)


def test_max_tokens_truncates_with_length(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model="deterministic",
        messages=[{"role": "user", "content": "one two three four five six seven eight nine ten"}],
        max_tokens=3,
    )
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 3


def test_embeddings_float_and_base64(daemon: Daemon, client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="hash-embedding-v1",
        input=["the cat sat on the mat", "a cat on a mat", "stock market news"],
        encoding_format="float",
    )
    body = json.loads(raw.content)
    validate("CreateEmbeddingResponse", body)
    vecs = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 64 for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    run = daemon.run(raw.headers["x-request-id"])
    assert run["endpoint"] == "embeddings" and run["prompt_tokens"] == body["usage"]["prompt_tokens"]
    # The SDK asks for base64 by default and decodes it itself.
    sdk = client.embeddings.create(model="hash-embedding-v1", input="the cat sat on the mat", dimensions=32)
    assert len(sdk.data[0].embedding) == 32
    r = httpx.post(
        daemon.v1 + "/embeddings",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": "hash-embedding-v1", "input": "the cat sat on the mat", "encoding_format": "base64"},
    )
    packed = base64.b64decode(r.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert decoded == pytest.approx(vecs[0], abs=1e-6)


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcriptions_every_format(daemon: Daemon, client: OpenAI, fmt: str) -> None:
    audio = wav_bytes(3.0)
    raw = client.audio.transcriptions.with_raw_response.create(
        model="deterministic-transcribe",
        file=("clip.wav", audio, "audio/wav"),
        response_format=fmt,  # type: ignore[arg-type]
    )
    assert raw.http_response.status_code == 200
    text = raw.http_response.text
    if fmt == "json":
        validate("CreateTranscriptionResponseJson", json.loads(text))
    elif fmt == "verbose_json":
        body = json.loads(text)
        validate("CreateTranscriptionResponseVerboseJson", body)
        assert body["duration"] == pytest.approx(3.0)
        assert body["segments"][-1]["end"] == pytest.approx(3.0)
    elif fmt == "srt":
        assert text.startswith("1\n00:00:00,000 --> ")
    elif fmt == "vtt":
        assert text.startswith("WEBVTT")
    else:
        assert text.strip()
    run = daemon.run(raw.headers["x-request-id"])
    assert run["endpoint"] == "audio.transcriptions" and run["status"] == "ok"


def test_transcription_is_deterministic(client: OpenAI) -> None:
    audio = wav_bytes(1.0)
    a = client.audio.transcriptions.create(model="deterministic-transcribe", file=("a.wav", audio))
    b = client.audio.transcriptions.create(model="deterministic-transcribe", file=("b.wav", audio))
    assert a.text == b.text and a.text
