"""Self-tests for the OpenAI spec validator in tests/openai_schema.py."""

from __future__ import annotations

import copy

import pytest

try:  # tests/ is a rootdir-style directory (no __init__.py): pytest puts it on sys.path
    from openai_schema import component_schema, is_valid, openapi_version, validate
except ModuleNotFoundError:  # tests/ became a package
    from tests.openai_schema import component_schema, is_valid, openapi_version, validate

CHAT_COMPLETION = {
    "id": "chatcmpl-x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}

STREAM_CHUNK = {
    "id": "chatcmpl-x",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
}


def test_spec_version_is_openapi_3() -> None:
    assert openapi_version().startswith(("3.0", "3.1"))


def test_chat_completion_passes() -> None:
    validate("CreateChatCompletionResponse", CHAT_COMPLETION)


def test_chat_completion_extra_fields_allowed() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    body["x_palyra"] = {"provider": "p"}
    body["choices"][0]["message"]["x_extra"] = 1
    validate("CreateChatCompletionResponse", body)


def test_chat_completion_missing_choices_fails() -> None:
    body = {k: v for k, v in CHAT_COMPLETION.items() if k != "choices"}
    with pytest.raises(AssertionError, match="'choices' is a required property"):
        validate("CreateChatCompletionResponse", body)


def test_chat_completion_message_requires_refusal() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    del body["choices"][0]["message"]["refusal"]
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.message: 'refusal'"):
        validate("CreateChatCompletionResponse", body)


def test_chat_completion_null_finish_reason_fails() -> None:
    # Non-streaming finish_reason is not nullable in the spec.
    body = copy.deepcopy(CHAT_COMPLETION)
    body["choices"][0]["finish_reason"] = None
    assert not is_valid("CreateChatCompletionResponse", body)


def test_stream_chunk_passes() -> None:
    validate("CreateChatCompletionStreamResponse", STREAM_CHUNK)


def test_stream_chunk_nullable_fields() -> None:
    # finish_reason / usage / logprobs are `nullable: true` (OpenAPI 3.0 idiom) in the spec.
    chunk = copy.deepcopy(STREAM_CHUNK)
    chunk["usage"] = None
    chunk["choices"][0]["logprobs"] = None
    validate("CreateChatCompletionStreamResponse", chunk)
    chunk["choices"] = []
    chunk["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    validate("CreateChatCompletionStreamResponse", chunk)


def test_stream_chunk_bad_finish_reason_fails() -> None:
    chunk = copy.deepcopy(STREAM_CHUNK)
    chunk["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason"):
        validate("CreateChatCompletionStreamResponse", chunk)


def test_stream_chunk_missing_finish_reason_fails() -> None:
    chunk = copy.deepcopy(STREAM_CHUNK)
    del chunk["choices"][0]["finish_reason"]
    assert not is_valid("CreateChatCompletionStreamResponse", chunk)


def test_error_response() -> None:
    ok = {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}}
    validate("ErrorResponse", ok)
    with pytest.raises(AssertionError, match=r"at \$\.error: 'nope' is not of type 'object'"):
        validate("ErrorResponse", {"error": "nope"})


def test_list_models_response() -> None:
    body = {
        "object": "list",
        "data": [{"id": "gpt-x", "object": "model", "created": 0, "owned_by": "palyra"}],
    }
    validate("ListModelsResponse", body)
    validate("Model", body["data"][0])
    assert not is_valid("Model", {"id": "gpt-x", "object": "model", "created": 0})


def test_embedding_and_transcription() -> None:
    validate(
        "CreateEmbeddingResponse",
        {
            "object": "list",
            "model": "e",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        },
    )
    validate("CreateTranscriptionResponseJson", {"text": "hello"})
    validate("CreateTranscriptionResponseVerboseJson", {"language": "english", "duration": 1.5, "text": "hi"})
    assert not is_valid("CreateTranscriptionResponseVerboseJson", {"text": "hi"})


def test_unknown_schema_name() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        validate("NoSuchSchema", {})


def test_nullable_is_translated() -> None:
    finish = component_schema("CreateChatCompletionStreamResponse")["properties"]["choices"]["items"]
    finish_reason = finish["properties"]["finish_reason"]
    assert "nullable" not in finish_reason
    assert {"type": "null"} in finish_reason["anyOf"]
