"""Limits on /v1 bodies beyond their size: JSON nesting, number of messages and tools, integer width.

Each refusal is a 400 ``invalid_request_error`` naming the field, before anything reaches a provider.
The body-size limit (413) is in tests/integration/test_v1_errors.py and tests/fuzz/test_v1_fuzz.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from palyra.errors import InvalidRequest
from palyra.providers.anthropic_translate import translate_request
from palyra.providers.base import Capabilities, ModelTarget
from palyra.providers.types import ChatRequest, Message, TextPart, ToolCall
from palyra.surface.openai_requests import RequestLimits, parse_chat_request, parse_embedding_request

from conftest import Daemon, start_daemon
from openai_schema import validate

CHAT: dict[str, Any] = {"model": "deterministic", "messages": [{"role": "user", "content": "hi"}]}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def refused(body: dict[str, Any] | bytes, limits: RequestLimits = RequestLimits()) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw, limits)
    return info.value


# --- the parser -------------------------------------------------------------------------------------


def test_defaults() -> None:
    assert RequestLimits() == RequestLimits(max_json_depth=64, max_messages=2048, max_tools=256)


def test_message_count() -> None:
    parse_chat_request(json.dumps({**CHAT, "messages": CHAT["messages"] * 2048}).encode())
    exc = refused({**CHAT, "messages": CHAT["messages"] * 2049})
    assert (exc.code, exc.param, exc.status) == ("array_above_max_length", "messages", 400)
    assert "2048" in exc.message and "2049" in exc.message


def test_tool_count() -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(257)]
    parse_chat_request(json.dumps({**CHAT, "tools": tools[:256]}).encode())
    exc = refused({**CHAT, "tools": tools})
    assert (exc.code, exc.param) == ("array_above_max_length", "tools")


@pytest.mark.parametrize(
    ("where", "param", "base"),
    [
        ("extra", "x_custom", 1),
        ("parameters", "tools[0].function.parameters", 4),
        ("schema", "response_format.json_schema.schema", 3),
    ],
)
def test_nesting_of_free_form_values(where: str, param: str, base: int) -> None:
    def body(depth: int) -> dict[str, Any]:
        # ``depth`` levels of value below the container it sits in: the body's depth is base + depth.
        value = {"p": nested(depth - 1)}
        if where == "extra":
            return {**CHAT, "x_custom": value}
        if where == "parameters":
            return {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": value}}]}
        return {
            **CHAT,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": value}},
        }

    parse_chat_request(json.dumps(body(64 - base)).encode())
    exc = refused(body(65 - base))
    assert (exc.code, exc.param) == ("json_too_deep", param)
    assert "64 levels" in exc.message


def test_nesting_past_the_parser_is_named_too() -> None:
    deep = b"[" * 1000 + b"1" + b"]" * 1000
    exc = refused(b'{"model":"deterministic","messages":[{"role":"user","content":"hi"}],"x":' + deep + b"}")
    assert (exc.code, exc.param) == ("json_too_deep", None)
    assert "nested too deeply" in exc.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 10**30), ("max_completion_tokens", 2**31), ("seed", 2**63), ("x_custom", [1, 2**64])],
)
def test_integers_must_fit(field: str, value: Any) -> None:
    exc = refused({**CHAT, field: value})
    assert exc.param == field and exc.status == 400


def test_non_json_numbers_still_name_the_field() -> None:
    exc = refused(b'{"model":"deterministic","messages":[{"role":"user","content":"hi"}],"temperature":NaN}')
    assert exc.param == "temperature"


def test_embedding_pass_through_fields_are_checked() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_embedding_request(json.dumps({"model": "m", "input": "x", "x_deep": nested(100)}).encode())
    assert (info.value.code, info.value.param) == ("json_too_deep", "x_deep")


@pytest.mark.parametrize(
    "arguments",
    [
        "[" * 5000 + "]" * 5000,
        '{"a": ' + "[" * 100 + "]" * 100 + "}",
        '{"n": 1e400}',
        '{"n": 99999999999999999999999}',
    ],
)
def test_tool_arguments_the_anthropic_body_could_not_carry(arguments: str) -> None:
    """Arguments are a string to OpenAI; the Anthropic translation parses them, and refuses what orjson
    could not encode (it would otherwise be a 500 in the adapter)."""
    target = ModelTarget(
        model_id="c",
        provider_id="a",
        upstream_model="c",
        role="chat",
        capabilities=Capabilities(
            tools=True, vision=True, json_mode=True, streaming=True, max_context_tokens=1000
        ),
        max_output_tokens=100,
    )
    request = ChatRequest(
        model="c",
        messages=[
            Message("user", [TextPart("go")]),
            Message("assistant", None, tool_calls=[ToolCall("c1", "f", arguments)]),
            Message("tool", [TextPart("r")], tool_call_id="c1"),
        ],
    )
    try:
        body = translate_request(request, target, stream=False).body
    except InvalidRequest as exc:
        assert exc.code == "invalid_tool_arguments"
        assert exc.param == "messages[1].tool_calls[0].function.arguments"
        return
    orjson.dumps(body)  # accepted only when it can be sent


# --- over HTTP, with the limits from the config file -------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    config = "[server]\nmax_json_depth = 10\nmax_messages = 3\nmax_tools = 2\n"
    d = start_daemon(tmp_path_factory.mktemp("limits"), config=config)
    yield d
    d.stop()


def post(d: Daemon, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        d.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def assert_400(r: httpx.Response, code: str, param: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    validate("ErrorResponse", body)
    assert (body["error"]["type"], body["error"]["code"], body["error"]["param"]) == (
        "invalid_request_error",
        code,
        param,
    )


def test_configured_limits_are_enforced(small: Daemon) -> None:
    token, _ = small.create_token(name="limits")
    assert post(small, token, {**CHAT, "messages": CHAT["messages"] * 3}).status_code == 200
    assert_400(
        post(small, token, {**CHAT, "messages": CHAT["messages"] * 4}), "array_above_max_length", "messages"
    )
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(3)]
    assert post(small, token, {**CHAT, "tools": tools[:2]}).status_code == 200
    assert_400(post(small, token, {**CHAT, "tools": tools}), "array_above_max_length", "tools")
    assert post(small, token, {**CHAT, "x_meta": nested(9)}).status_code == 200
    assert_400(post(small, token, {**CHAT, "x_meta": nested(10)}), "json_too_deep", "x_meta")
    r = post(small, token, {**CHAT, "max_tokens": 10**30})
    assert_400(r, "invalid_value", "max_tokens")


def test_limits_are_validated_in_the_config(tmp_path: Any) -> None:
    from palyra.config.models import ServerConfig

    with pytest.raises(ValueError, match="max_json_depth"):
        ServerConfig(max_json_depth=500)
    with pytest.raises(ValueError, match="max_messages"):
        ServerConfig(max_messages=0)
