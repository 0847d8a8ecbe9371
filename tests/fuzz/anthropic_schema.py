"""The Anthropic Messages API request body (POST /v1/messages), as far as Palyra sends it, as JSON Schema.

Written from Anthropic's published API reference: only the fields and block types the translator emits,
each closed with ``additionalProperties: false`` so a stray or misspelt key fails. The semantic rules a
schema cannot say (alternating turns, tool results answering the previous turn) are checked by
``assert_valid_anthropic_request``.
"""

from __future__ import annotations

import itertools
from typing import Any

from jsonschema import Draft202012Validator

_TEXT = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string", "pattern": r"\S"}},
    "required": ["type", "text"],
    "additionalProperties": False,
}
_IMAGE = {
    "type": "object",
    "properties": {
        "type": {"const": "image"},
        "source": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": "base64"},
                        "media_type": {"enum": ["image/jpeg", "image/png", "image/gif", "image/webp"]},
                        "data": {"type": "string", "minLength": 1},
                    },
                    "required": ["type", "media_type", "data"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": "url"},
                        "url": {"type": "string", "pattern": "^https?://"},
                    },
                    "required": ["type", "url"],
                    "additionalProperties": False,
                },
            ]
        },
    },
    "required": ["type", "source"],
    "additionalProperties": False,
}
_TOOL_ID = {"type": "string", "pattern": r"^[a-zA-Z0-9_-]+$"}
_TOOL_USE = {
    "type": "object",
    "properties": {
        "type": {"const": "tool_use"},
        "id": _TOOL_ID,
        "name": {"type": "string", "minLength": 1},
        "input": {"type": "object"},
    },
    "required": ["type", "id", "name", "input"],
    "additionalProperties": False,
}
_TOOL_RESULT = {
    "type": "object",
    "properties": {
        "type": {"const": "tool_result"},
        "tool_use_id": _TOOL_ID,
        "content": {"type": "string", "pattern": r"\S"},
        "is_error": {"type": "boolean"},
    },
    "required": ["type", "tool_use_id"],
    "additionalProperties": False,
}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"enum": ["user", "assistant"]},
        "content": {
            "type": "array",
            "minItems": 1,
            "items": {"anyOf": [_TEXT, _IMAGE, _TOOL_USE, _TOOL_RESULT]},
        },
    },
    "required": ["role", "content"],
    "additionalProperties": False,
}
_TOOL = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-zA-Z0-9_-]{1,64}$"},
        "description": {"type": "string"},
        "input_schema": {"type": "object", "properties": {"type": {"const": "object"}}, "required": ["type"]},
    },
    "required": ["name", "input_schema"],
    "additionalProperties": False,
}
_TOOL_CHOICE = {
    "oneOf": [
        {
            "type": "object",
            "properties": {
                "type": {"enum": ["auto", "any"]},
                "disable_parallel_tool_use": {"type": "boolean"},
            },
            "required": ["type"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "type": {"const": "tool"},
                "name": {"type": "string"},
                "disable_parallel_tool_use": {"type": "boolean"},
            },
            "required": ["type", "name"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"type": {"const": "none"}},
            "required": ["type"],
            "additionalProperties": False,
        },
    ]
}
MESSAGES_REQUEST = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "system": {"type": "array", "items": _TEXT},
        "stream": {"type": "boolean"},
        "tools": {"type": "array", "items": _TOOL},
        "tool_choice": _TOOL_CHOICE,
        "stop_sequences": {"type": "array", "items": {"type": "string", "pattern": r"\S"}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "metadata": {
            "type": "object",
            "properties": {"user_id": {"type": "string"}},
            "additionalProperties": False,
        },
    },
    "required": ["model", "max_tokens", "messages"],
    "additionalProperties": False,
}
_VALIDATOR = Draft202012Validator(MESSAGES_REQUEST)


def assert_valid_anthropic_request(body: dict[str, Any]) -> None:
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _VALIDATOR.iter_errors(body)]
    assert not problems, problems
    messages = body["messages"]
    assert messages[0]["role"] == "user", "the first turn is the user's"
    for prev, cur in itertools.pairwise(messages):
        assert prev["role"] != cur["role"], "turns alternate"
    tool_use_ids: list[str] = []
    for k, m in enumerate(messages):
        kinds = [b["type"] for b in m["content"]]
        if m["role"] == "assistant":
            assert set(kinds) <= {"text", "tool_use"}, kinds
            tool_use_ids += [b["id"] for b in m["content"] if b["type"] == "tool_use"]
            continue
        assert "tool_use" not in kinds
        results = [b["tool_use_id"] for b in m["content"] if b["type"] == "tool_result"]
        assert kinds[: len(results)] == ["tool_result"] * len(results), "tool results come first"
        assert len(results) == len(set(results)), "one result per tool use"
        if results:
            previous = messages[k - 1] if k else {"content": []}
            answered = {b["id"] for b in previous["content"] if b["type"] == "tool_use"}
            assert set(results) <= answered, "a tool result answers the turn right before it"
    assert len(tool_use_ids) == len(set(tool_use_ids)), "tool_use ids are unique in a request"
    last = messages[-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        text = last["content"][-1]["text"]
        assert text == text.rstrip(), "a final assistant turn has no trailing whitespace"
    tools = {t["name"] for t in body.get("tools", ())}
    assert len(tools) == len(body.get("tools", ())), "tool names are unique"
    choice = body.get("tool_choice")
    if choice is not None:
        assert tools, "tool_choice comes with tools"
        if choice["type"] == "tool":
            assert choice["name"] in tools
