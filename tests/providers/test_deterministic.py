"""The deterministic provider: same request, same answer, on every path the gateway exposes."""

from __future__ import annotations

import io
import json
import math
import wave
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.errors import InvalidRequest
from palyra.providers.base import Capabilities, ModelTarget
from palyra.providers.deterministic import (
    DeterministicProvider,
    build_value_from_schema,
    hash_embedding,
    wav_duration_s,
)
from palyra.providers.types import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    Finish,
    ImagePart,
    Message,
    ResponseFormat,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    TranscriptionRequest,
    UsageReport,
)

WEATHER = ToolSpec(
    name="get_weather",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
            "detailed": {"type": "boolean"},
            "note": {"type": "string"},
        },
        "required": ["city", "unit", "days", "detailed"],
    },
)
CLOCK = ToolSpec(name="get_time", parameters={"type": "object", "properties": {"tz": {"type": "string"}}})


def make_target(dimensions: int | None = None, max_output_tokens: int = 4096) -> ModelTarget:
    return ModelTarget(
        model_id="deterministic",
        provider_id="det",
        upstream_model="deterministic",
        role="chat",
        capabilities=Capabilities(
            tools=True, vision=True, json_mode=True, streaming=True, max_context_tokens=None
        ),
        max_output_tokens=max_output_tokens,
        dimensions=dimensions,
    )


def user(text: str) -> Message:
    return Message(role="user", content=[TextPart(text)])


def chat_request(*messages: Message, **options: Any) -> ChatRequest:
    return ChatRequest(model="deterministic", messages=list(messages), **options)


async def collect(provider: DeterministicProvider, request: ChatRequest) -> list[StreamEvent]:
    return [event async for event in provider.chat_stream(request, make_target())]


def wav_bytes(seconds: float, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x01\x00" * int(seconds * rate))
    return buffer.getvalue()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture
def provider() -> DeterministicProvider:
    return DeterministicProvider("det")


# Chat


async def test_same_request_gives_same_result(provider: DeterministicProvider) -> None:
    first = await provider.chat(chat_request(user("Hello there")), make_target())
    second = await provider.chat(chat_request(user("Hello there")), make_target())
    assert first == second
    assert first.text == "Deterministic reply to: Hello there"
    assert first.finish_reason == "stop"
    assert first.upstream_id is not None and first.upstream_id.startswith("chatcmpl-det-")


async def test_different_conversations_differ(provider: DeterministicProvider) -> None:
    first = await provider.chat(chat_request(user("Hello there")), make_target())
    second = await provider.chat(chat_request(user("Goodbye now")), make_target())
    assert first.text != second.text
    assert first.upstream_id != second.upstream_id


async def test_usage_counts_words(provider: DeterministicProvider) -> None:
    request = chat_request(Message(role="system", content=[TextPart("Be brief.")]), user("one two three"))
    result = await provider.chat(request, make_target())
    assert result.usage.prompt_tokens == 5
    assert result.usage.completion_tokens == 6  # "Deterministic reply to: one two three"
    assert result.usage.source == "provider"


async def test_images_are_mentioned(provider: DeterministicProvider) -> None:
    message = Message(role="user", content=[TextPart("What is this?"), ImagePart("https://x.test/a.png")])
    result = await provider.chat(chat_request(message), make_target())
    assert result.text == "Deterministic reply to: What is this? (1 image)"


async def test_conversation_without_user_text_still_gets_a_reply(provider: DeterministicProvider) -> None:
    message = Message(role="user", content=[ImagePart("https://x.test/a.png"), ImagePart("data:,")])
    result = await provider.chat(chat_request(message), make_target())
    assert result.text == "Deterministic reply to: a conversation of 1 message (2 images)"


async def test_max_tokens_truncates_with_length(provider: DeterministicProvider) -> None:
    result = await provider.chat(chat_request(user("a b c d e f"), max_tokens=4), make_target())
    assert result.text == "Deterministic reply to: a"
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 4


async def test_max_tokens_large_enough_stops(provider: DeterministicProvider) -> None:
    result = await provider.chat(chat_request(user("a b"), max_tokens=5), make_target())
    assert result.text == "Deterministic reply to: a b"
    assert result.finish_reason == "stop"


# Tools


async def test_tool_call_has_exactly_the_required_arguments(provider: DeterministicProvider) -> None:
    request = chat_request(user("Weather in Paris?"), tools=[WEATHER, CLOCK])
    result = await provider.chat(request, make_target())
    assert result.text is None
    assert result.finish_reason == "tool_calls"
    [call] = result.tool_calls
    assert call.name == "get_weather"
    assert call.id.startswith("call_")
    arguments = json.loads(call.arguments)
    assert arguments == {"city": "Weather", "unit": "celsius", "days": 1, "detailed": True}
    jsonschema.validate(arguments, WEATHER.parameters or {})


async def test_named_tool_choice_is_honoured(provider: DeterministicProvider) -> None:
    choice = ToolChoice(mode="function", name="get_time")
    result = await provider.chat(
        chat_request(user("time?"), tools=[WEATHER, CLOCK], tool_choice=choice), make_target()
    )
    [call] = result.tool_calls
    assert call.name == "get_time"
    assert call.arguments == "{}"


async def test_unknown_named_tool_is_rejected(provider: DeterministicProvider) -> None:
    choice = ToolChoice(mode="function", name="missing")
    with pytest.raises(InvalidRequest) as caught:
        await provider.chat(chat_request(user("hi"), tools=[WEATHER], tool_choice=choice), make_target())
    assert caught.value.param == "tool_choice"


async def test_tool_choice_none_answers_in_text(provider: DeterministicProvider) -> None:
    request = chat_request(user("Weather?"), tools=[WEATHER], tool_choice=ToolChoice(mode="none"))
    result = await provider.chat(request, make_target())
    assert result.tool_calls == []
    assert result.text == "Deterministic reply to: Weather?"
    assert result.finish_reason == "stop"


async def test_after_a_tool_result_the_reply_reports_it(provider: DeterministicProvider) -> None:
    request = chat_request(
        user("Weather in Paris?"),
        Message(
            role="assistant",
            content=None,
            tool_calls=[ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')],
        ),
        Message(role="tool", content=[TextPart("18C and sunny")], tool_call_id="call_1"),
        tools=[WEATHER],
    )
    result = await provider.chat(request, make_target())
    assert result.tool_calls == []
    assert result.text is not None and "18C and sunny" in result.text
    assert result.finish_reason == "stop"


def test_schema_builder_covers_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {
            "kind": {"const": "fixed"},
            "choice": {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "string"}]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "empty": {"type": "array", "items": {"type": "string"}},
            "ratio": {"type": "number", "maximum": 0.5},
            "maybe": {"type": ["null", "boolean"]},
            "nothing": {"type": "null"},
            "child": {"$ref": "#/$defs/Child"},
        },
        "required": ["kind", "choice", "tags", "empty", "ratio", "maybe", "nothing", "child"],
        "$defs": {
            "Child": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "extra": {"type": "string"}},
                "required": ["name"],
            }
        },
    }
    value = build_value_from_schema(schema, "topic")
    assert value == {
        "kind": "fixed",
        "choice": 5,
        "tags": ["topic", "topic"],
        "empty": [],
        "ratio": 0.5,
        "maybe": True,
        "nothing": None,
        "child": {"name": "topic"},
    }
    jsonschema.validate(value, schema)


# JSON output


async def test_json_object_output_parses(provider: DeterministicProvider) -> None:
    request = chat_request(user("Give me JSON"), response_format=ResponseFormat(type="json_object"))
    result = await provider.chat(request, make_target())
    assert result.text is not None
    assert json.loads(result.text) == {"reply": "Deterministic reply to: Give me JSON"}


async def test_json_object_output_still_parses_when_truncated(provider: DeterministicProvider) -> None:
    request = chat_request(
        user("a b c d e f"), response_format=ResponseFormat(type="json_object"), max_tokens=3
    )
    result = await provider.chat(request, make_target())
    assert result.text is not None
    assert json.loads(result.text) == {"reply": "Deterministic reply to:"}
    assert result.finish_reason == "length"


async def test_json_schema_output_fills_every_property(provider: DeterministicProvider) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "confidence": {"type": "number"},
            "count": {"type": "integer"},
            "sources": {"type": "array", "items": {"type": "string"}},
            "meta": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
        },
        "required": ["answer"],
        "additionalProperties": False,
    }
    request = chat_request(
        user("Capital of France?"),
        response_format=ResponseFormat(type="json_schema", schema=schema, name="answer"),
    )
    result = await provider.chat(request, make_target())
    assert result.text is not None
    document = json.loads(result.text)
    assert set(document) == set(schema["properties"])
    assert document["meta"] == {"ok": True}
    jsonschema.validate(document, schema)


# Streaming


async def test_stream_rebuilds_the_text_result(provider: DeterministicProvider) -> None:
    request = chat_request(user("please  tell me\na rather long story about   many things"))
    result = await provider.chat(request, make_target())
    events = await collect(provider, request)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == result.text
    assert events[-2] == Finish(reason=result.finish_reason)
    assert events[-1] == UsageReport(usage=result.usage)


async def test_stream_rebuilds_a_truncated_result(provider: DeterministicProvider) -> None:
    request = chat_request(user("one two three four five six seven"), max_tokens=6)
    result = await provider.chat(request, make_target())
    events = await collect(provider, request)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == result.text
    assert events[-2] == Finish(reason="length")


async def test_stream_rebuilds_the_tool_call(provider: DeterministicProvider) -> None:
    request = chat_request(user("Weather in Paris?"), tools=[WEATHER])
    result = await provider.chat(request, make_target())
    events = await collect(provider, request)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    [call] = result.tool_calls
    assert deltas[0] == ToolCallDelta(index=0, id=call.id, name=call.name, arguments="")
    assert len(deltas) > 2
    assert all(d.index == 0 and d.id is None and d.name is None for d in deltas[1:])
    assert "".join(d.arguments for d in deltas) == call.arguments
    assert not any(isinstance(e, TextDelta) for e in events)
    assert events[-2:] == [Finish(reason="tool_calls"), UsageReport(usage=result.usage)]


async def test_stream_matches_chat_for_json(provider: DeterministicProvider) -> None:
    request = chat_request(user("Give me JSON please"), response_format=ResponseFormat(type="json_object"))
    result: ChatResult = await provider.chat(request, make_target())
    events = await collect(provider, request)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == result.text


# Embeddings


async def test_embeddings_are_unit_norm_with_default_dims(provider: DeterministicProvider) -> None:
    request = EmbeddingRequest(model="hash-embedding-v1", inputs=["the cat sat", "", "!!!"])
    result = await provider.embed(request, make_target())
    assert len(result.vectors) == 3
    for vector in result.vectors:
        assert len(vector) == 64
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0)
    assert result.usage.prompt_tokens == 3 + 1 + 1
    assert result.usage.completion_tokens == 0


async def test_embedding_dimensions_come_from_request_then_target(provider: DeterministicProvider) -> None:
    inputs = ["hello world"]
    from_target = await provider.embed(EmbeddingRequest(model="e", inputs=inputs), make_target(dimensions=32))
    from_request = await provider.embed(
        EmbeddingRequest(model="e", inputs=inputs, dimensions=256), make_target(dimensions=32)
    )
    assert len(from_target.vectors[0]) == 32
    assert len(from_request.vectors[0]) == 256


@pytest.mark.parametrize("dimensions", [0, -1, 8193])
async def test_embedding_dimensions_out_of_range_are_rejected(
    provider: DeterministicProvider, dimensions: int
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await provider.embed(EmbeddingRequest(model="e", inputs=["x"], dimensions=dimensions), make_target())
    assert caught.value.code == "invalid_dimensions"
    assert caught.value.param == "dimensions"


def test_shared_words_are_closer_than_unrelated_text() -> None:
    base = hash_embedding("the quick brown fox jumps", 256)
    related = hash_embedding("a quick brown fox sleeps", 256)
    unrelated = hash_embedding("quarterly revenue exceeded forecasts", 256)
    assert cosine(base, related) > cosine(base, unrelated) + 0.3


def test_embedding_ignores_word_order_case_and_punctuation() -> None:
    assert hash_embedding("cat dog", 64) == hash_embedding("dog cat", 64)
    assert hash_embedding("Cat, dog!", 64) == hash_embedding("cat dog", 64)
    assert hash_embedding("cat dog", 64) != hash_embedding("cat bird", 64)


# Transcription


async def test_transcription_reads_wav_duration(provider: DeterministicProvider) -> None:
    audio = wav_bytes(2.0)
    request = TranscriptionRequest(model="t", audio=audio, filename="a.wav", content_type="audio/wav")
    result = await provider.transcribe(request, make_target())
    assert result.duration_s == pytest.approx(2.0)
    assert result.language == "en"
    words = result.text.split()
    assert len(words) == 5
    assert result.text[0].isupper() and result.text.endswith(".")
    assert result.usage.completion_tokens == 5
    assert result.usage.prompt_tokens == 0
    assert result == await provider.transcribe(request, make_target())


async def test_transcription_segments_cover_the_duration(provider: DeterministicProvider) -> None:
    request = TranscriptionRequest(
        model="t", audio=wav_bytes(10.0), filename="a.wav", content_type="audio/wav", language="fr"
    )
    result = await provider.transcribe(request, make_target())
    assert result.language == "fr"
    assert len(result.text.split()) == 25
    assert len(result.segments) == 4
    assert all(len(s.text.split()) <= 8 for s in result.segments)
    assert " ".join(s.text for s in result.segments) == result.text
    assert result.segments[0].start_s == 0.0
    assert result.segments[-1].end_s == pytest.approx(10.0)
    for before, after in zip(result.segments, result.segments[1:], strict=False):
        assert before.end_s == pytest.approx(after.start_s)
    assert result.segments[0].end_s == pytest.approx(8 / 25 * 10.0)


async def test_different_audio_gives_different_text(provider: DeterministicProvider) -> None:
    first = TranscriptionRequest(model="t", audio=b"a" * 64_000, filename="a.mp3", content_type="audio/mpeg")
    second = TranscriptionRequest(model="t", audio=b"b" * 64_000, filename="b.mp3", content_type="audio/mpeg")
    first_result = await provider.transcribe(first, make_target())
    second_result = await provider.transcribe(second, make_target())
    assert first_result.text != second_result.text


async def test_non_wav_audio_is_estimated_from_size(provider: DeterministicProvider) -> None:
    request = TranscriptionRequest(
        model="t", audio=b"\xff" * 48_000, filename="a.mp3", content_type="audio/mpeg"
    )
    result = await provider.transcribe(request, make_target())
    assert result.duration_s == pytest.approx(3.0)
    tiny = TranscriptionRequest(model="t", audio=b"x", filename="a.mp3", content_type="audio/mpeg")
    tiny_result = await provider.transcribe(tiny, make_target())
    assert tiny_result.duration_s == pytest.approx(0.1)
    assert len(tiny_result.text.split()) == 3


def test_wav_duration_rejects_non_wav_bytes() -> None:
    assert wav_duration_s(b"RIFF\x00\x00") is None
    assert wav_duration_s(b"not audio at all") is None
    assert wav_duration_s(wav_bytes(1.5, rate=8_000)) == pytest.approx(1.5)


@given(st.binary(min_size=1, max_size=200).map(lambda tail: b"RIFF\x00\x00\x00\x00WAVE" + tail))
def test_wav_duration_never_raises_on_malformed_headers(data: bytes) -> None:
    duration = wav_duration_s(data)
    assert duration is None or duration > 0


async def test_empty_audio_is_rejected(provider: DeterministicProvider) -> None:
    request = TranscriptionRequest(model="t", audio=b"", filename="a.wav", content_type="audio/wav")
    with pytest.raises(InvalidRequest) as caught:
        await provider.transcribe(request, make_target())
    assert caught.value.code == "invalid_audio"
    assert caught.value.param == "file"


# Housekeeping


async def test_models_and_close(provider: DeterministicProvider) -> None:
    assert provider.kind == "deterministic"
    assert provider.provider_id == "det"
    assert await provider.list_models() == ["deterministic", "hash-embedding-v1", "deterministic-transcribe"]
    await provider.close()
