"""OpenAI ↔ Anthropic translation as properties: any valid OpenAI chat request becomes a valid Anthropic
Messages request, and any valid Anthropic answer (whole or streamed) becomes a valid OpenAI answer.

"Valid OpenAI request" is checked, not assumed: every generated body validates against the official
``CreateChatCompletionRequest`` schema and goes through the same parser the HTTP surface uses. The
Anthropic side is checked against ``anthropic_schema`` (the documented request shape plus the turn
rules Anthropic enforces). On the way back, bodies and stream chunks validate against the official
``CreateChatCompletionResponse`` and ``CreateChatCompletionStreamResponse`` schemas, and nothing the
model said is lost: text, tool calls with their arguments, finish reasons and usage.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palyra.providers.anthropic_translate import (
    StreamTranslator,
    map_stop_reason,
    translate_request,
    translate_response,
)
from palyra.providers.base import Capabilities, ModelTarget
from palyra.providers.types import Finish, UsageReport
from palyra.surface import openai_responses as enc
from palyra.surface.openai_requests import parse_chat_request

from anthropic_schema import assert_valid_anthropic_request
from openai_schema import validate

PROPERTY = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
TARGET = ModelTarget(
    model_id="claude",
    provider_id="anthropic",
    upstream_model="claude-sonnet-4-5",
    role="chat",
    capabilities=Capabilities(
        tools=True, vision=True, json_mode=True, streaming=True, max_context_tokens=200_000
    ),
    max_output_tokens=8192,
)

TEXT = st.one_of(
    st.sampled_from(["", " ", "\n", "hi", "  padded  ", "trailing ", "{json?}"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
)
NAME = st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=8))
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=3)
IMAGE_BYTES = {
    "image/png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 8,
    "image/jpeg": b"\xff\xd8\xff\xe0" + b"\x00" * 12,
    "image/gif": b"GIF89a" + b"\x00" * 10,
    "image/webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
}


@st.composite
def image_part(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        url = "https://img.example.com/" + draw(NAME) + ".png"
    else:
        real = draw(st.sampled_from(sorted(IMAGE_BYTES)))
        declared = draw(st.sampled_from([real, "image/jpg", "image/png"]))
        url = f"data:{declared};base64," + base64.b64encode(IMAGE_BYTES[real]).decode()
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if draw(st.booleans()):
        part["image_url"]["detail"] = draw(st.sampled_from(["auto", "low", "high"]))
    return part


def text_content() -> st.SearchStrategy[Any]:
    return st.one_of(TEXT, st.lists(TEXT.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=3))


@st.composite
def conversation(draw: st.DrawFn, tool_names: list[str]) -> list[dict[str, Any]]:
    """Messages in an order OpenAI accepts: an assistant's tool calls are answered, each exactly once,
    by the tool messages right after it."""
    messages: list[dict[str, Any]] = []
    used_ids: set[str] = set()
    for role in draw(
        st.lists(st.sampled_from(["system", "developer", "user", "assistant"]), min_size=1, max_size=8)
    ):
        if role in ("system", "developer"):
            messages.append({"role": role, "content": draw(text_content())})
        elif role == "user":
            parts = st.one_of(TEXT.map(lambda t: {"type": "text", "text": t}), image_part())
            content = draw(st.one_of(TEXT, st.lists(parts, min_size=1, max_size=3)))
            messages.append({"role": "user", "content": content})
        else:
            calls = []
            for _ in range(draw(st.integers(0, 3)) if tool_names else 0):
                # Ids minted by other providers: dots, colons and the like must still pair up, and
                # stay apart when they differ only in such characters.
                call_id = draw(st.sampled_from(["call_", "call.", "call:", "toolu_", "id-"])) + str(
                    draw(st.integers(1, 3))
                )
                if call_id in used_ids:
                    continue
                used_ids.add(call_id)
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": draw(st.sampled_from(tool_names)),
                            "arguments": json.dumps(draw(ARGUMENTS)),
                        },
                    }
                )
            message: dict[str, Any] = {"role": "assistant"}
            if calls:
                message["tool_calls"] = calls
                message["content"] = draw(st.one_of(st.none(), TEXT))
            else:
                message["content"] = draw(
                    st.one_of(
                        TEXT,
                        st.lists(TEXT.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=2),
                    )
                )
            messages.append(message)
            for call in draw(st.permutations(calls)):
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": draw(text_content())})
    if messages[-1]["role"] not in ("user", "tool"):
        messages.append({"role": "user", "content": draw(TEXT)})
    return messages


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    tool_names = draw(st.lists(NAME, max_size=4, unique=True))
    body: dict[str, Any] = {"model": "claude", "messages": draw(conversation(tool_names))}
    if tool_names:
        body["tools"] = []
        for name in tool_names:
            function: dict[str, Any] = {"name": name}
            if draw(st.booleans()):
                function["description"] = draw(TEXT)
            if draw(st.booleans()):
                function["parameters"] = {
                    "type": "object",
                    "properties": {
                        p: {"type": "string"} for p in draw(st.lists(NAME, max_size=3, unique=True))
                    },
                }
            body["tools"].append({"type": "function", "function": function})
        choice = draw(
            st.one_of(
                st.none(),
                st.sampled_from(["none", "auto", "required"]),
                st.sampled_from(tool_names).map(lambda n: {"type": "function", "function": {"name": n}}),
            )
        )
        if choice is not None:
            body["tool_choice"] = choice
        if draw(st.booleans()):
            body["parallel_tool_calls"] = draw(st.booleans())
    response_format = draw(
        st.one_of(
            st.none(),
            st.just({"type": "text"}),
            st.just({"type": "json_object"}),
            st.fixed_dictionaries(
                {
                    "type": st.just("json_schema"),
                    "json_schema": st.fixed_dictionaries(
                        {
                            "name": NAME,
                            "schema": st.one_of(
                                st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
                                st.just({"type": "array", "items": {"type": "string"}}),
                            ),
                        },
                        optional={"strict": st.booleans()},
                    ),
                }
            ),
        )
    )
    if response_format is not None:
        body["response_format"] = response_format
    optional: dict[str, st.SearchStrategy[Any]] = {
        "max_tokens": st.integers(1, 2**31 - 1),
        "max_completion_tokens": st.integers(1, 200_000),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4)),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "user": TEXT,
        "metadata": st.dictionaries(NAME, TEXT, max_size=3),
        "n": st.just(1),
        "stream": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


# --- OpenAI request -> Anthropic request --------------------------------------------------------------


@PROPERTY
@given(body=openai_requests(), stream=st.booleans())
def test_any_valid_openai_request_becomes_a_valid_anthropic_request(
    body: dict[str, Any], stream: bool
) -> None:
    validate("CreateChatCompletionRequest", body)
    request = parse_chat_request(json.dumps(body).encode())
    out = translate_request(request, TARGET, stream=stream).body
    assert_valid_anthropic_request(out)
    orjson.dumps(out)  # the adapter encodes it with orjson: no value may refuse

    # Nothing the client said is lost on the way.
    def texts(content: Any) -> list[str]:
        if isinstance(content, str):
            return [content]
        return [p["text"] for p in content or () if p.get("type") == "text"]

    system = [
        t for m in body["messages"] if m["role"] in ("system", "developer") for t in texts(m["content"])
    ]
    assert [b["text"] for b in out.get("system", [])][: len([t for t in system if t.strip()])] == [
        t for t in system if t.strip()
    ]
    sent_user_text = [
        t for m in body["messages"] if m["role"] == "user" for t in texts(m["content"]) if t.strip()
    ]
    got_user_text = [
        b["text"] for m in out["messages"] if m["role"] == "user" for b in m["content"] if b["type"] == "text"
    ]
    assert [t for t in got_user_text if t != "(continued)"] == [
        t for t in sent_user_text if t != "(continued)"
    ]
    calls = [c for m in body["messages"] for c in m.get("tool_calls") or ()]
    uses = [b for m in out["messages"] for b in m["content"] if b["type"] == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls
    ]
    results = [b for m in out["messages"] for b in m["content"] if b["type"] == "tool_result"]
    assert len(results) == len([m for m in body["messages"] if m["role"] == "tool"])
    for m, turn in zip(out["messages"], out["messages"][1:], strict=False):
        if m["role"] == "assistant":
            used = {b["id"] for b in m["content"] if b["type"] == "tool_use"}
            answered = {b["tool_use_id"] for b in turn["content"] if b["type"] == "tool_result"}
            assert used <= answered, "every tool use is answered in the next turn"
    assert out["max_tokens"] == (body.get("max_completion_tokens") or body.get("max_tokens") or 8192)
    if "temperature" in body:
        assert out["temperature"] == min(body["temperature"], 1.0)
    choice = body.get("tool_choice")
    if choice == "none":
        assert out["tool_choice"]["type"] == "none"
    elif choice == "required":
        assert out["tool_choice"]["type"] == "any"
    elif isinstance(choice, dict):
        assert out["tool_choice"] == {
            "type": "tool",
            "name": choice["function"]["name"],
            **({"disable_parallel_tool_use": True} if body.get("parallel_tool_calls") is False else {}),
        }


# --- Anthropic response -> OpenAI response ------------------------------------------------------------

# Reasons with an OpenAI equivalent. Others (pause_turn, reasons added later) are passed through as
# the translator documents, which the official finish_reason enum does not allow: see the test below.
STOP_REASONS = st.sampled_from(
    ["end_turn", "stop_sequence", "max_tokens", "tool_use", "refusal", "model_context_window_exceeded"]
)
USAGE = st.fixed_dictionaries(
    {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)},
    optional={
        "cache_read_input_tokens": st.integers(0, 10**6),
        "cache_creation_input_tokens": st.integers(0, 10**6),
    },
)


@st.composite
def anthropic_blocks(draw: st.DrawFn) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for kind in draw(st.lists(st.sampled_from(["text", "tool_use", "thinking"]), max_size=5)):
        if kind == "text":
            blocks.append({"type": "text", "text": draw(TEXT)})
        elif kind == "thinking":
            blocks.append({"type": "thinking", "thinking": draw(TEXT), "signature": "sig"})
        else:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": "toolu_" + draw(NAME),
                    "name": draw(NAME),
                    "input": draw(ARGUMENTS),
                }
            )
    return blocks


@PROPERTY
@given(blocks=anthropic_blocks(), stop=STOP_REASONS, usage=USAGE)
def test_any_anthropic_answer_becomes_a_valid_openai_answer(
    blocks: list[dict[str, Any]], stop: str, usage: dict[str, int]
) -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": blocks,
        "stop_reason": stop,
        "usage": usage,
    }
    result = translate_response(answer)
    body = enc.chat_completion(result, completion_id="chatcmpl-1", created=1, model="claude")
    validate("CreateChatCompletionResponse", json.loads(orjson.dumps(body)))
    message = body["choices"][0]["message"]
    uses = [b for b in blocks if b["type"] == "tool_use"]
    assert [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls", [])
    ] == [(u["name"], u["input"]) for u in uses]
    text = "".join(b["text"] for b in blocks if b["type"] == "text")
    assert (message["content"] or "") == text
    assert body["choices"][0]["finish_reason"] == map_stop_reason(stop)
    cache_read = usage.get("cache_read_input_tokens", 0)
    prompt = usage["input_tokens"] + cache_read + usage.get("cache_creation_input_tokens", 0)
    assert body["usage"]["prompt_tokens"] == prompt
    assert body["usage"]["completion_tokens"] == usage["output_tokens"]


# --- Anthropic stream -> OpenAI chunks ----------------------------------------------------------------


@st.composite
def anthropic_stream(
    draw: st.DrawFn,
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]], str, dict[str, int]]:
    """A stream Anthropic could send for these blocks: inputs split anywhere, pings anywhere, cumulative
    usage on message_start and message_delta."""
    blocks = draw(anthropic_blocks())
    stop = draw(STOP_REASONS)
    usage = draw(USAGE)
    events: list[tuple[str, dict[str, Any]]] = []

    def ping() -> None:
        if draw(st.integers(0, 4)) == 0:
            events.append(("ping", {"type": "ping"}))

    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    events.append(
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": start_usage}})
    )
    for index, block in enumerate(blocks):
        ping()
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            pieces = _split(draw, block["text"])
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        elif block["type"] == "thinking":
            start = {"type": "thinking", "thinking": ""}
            deltas = [{"type": "thinking_delta", "thinking": block["thinking"]}]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *_split(draw, raw)]]
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        )
        for delta in deltas:
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
            ping()
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events, blocks, stop, usage


def _split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=4))) | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(cuts)] or [""]


@PROPERTY
@given(stream=anthropic_stream(), include_usage=st.booleans())
def test_any_anthropic_stream_becomes_valid_openai_chunks(
    stream: tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]], str, dict[str, int]],
    include_usage: bool,
) -> None:
    events, blocks, stop, usage = stream
    translator = StreamTranslator()
    encoder = enc.ChunkEncoder(
        completion_id="chatcmpl-1", created=1, model="claude", include_usage=include_usage
    )
    frames = [encoder.role()]
    finishes = []
    usages = []
    for name, data in events:
        for event in translator.feed(name, data):
            if isinstance(event, Finish):
                finishes.append(event.reason)
                frame = encoder.event(event)
            elif isinstance(event, UsageReport):
                usages.append(event.usage)
                frame = encoder.usage(event.usage, {"cost_usd": 0.0})
            else:
                frame = encoder.event(event)
            if frame is not None:
                frames.append(frame)
    chunks = [json.loads(f.removeprefix(b"data: ")) for f in frames]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert finishes == [map_stop_reason(stop)]
    assert len(usages) == 1
    cache = usage.get("cache_read_input_tokens", 0) + usage.get("cache_creation_input_tokens", 0)
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (
        usage["input_tokens"] + cache,
        usage["output_tokens"],
    )

    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == "".join(b["text"] for b in blocks if b["type"] == "text")
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    for d in deltas:
        for call in d.get("tool_calls") or ():
            arguments[call["index"]] = arguments.get(call["index"], "") + call["function"].get(
                "arguments", ""
            )
            if call["function"].get("name"):
                names[call["index"]] = call["function"]["name"]
    uses = [b for b in blocks if b["type"] == "tool_use"]
    assert [(names[i], json.loads(arguments[i])) for i in sorted(arguments)] == [
        (u["name"], u["input"]) for u in uses
    ]


def test_unmapped_stop_reasons_pass_through() -> None:
    """Deliberate (anthropic_translate's docstring): a reason with no OpenAI equivalent is passed on, not
    forced to "stop", so a client can see it; it is the one place the official enum is not followed."""
    answer = {"content": [{"type": "text", "text": "x"}], "stop_reason": "pause_turn", "usage": {}}
    assert translate_response(answer).finish_reason == "pause_turn"
