"""OpenAI ↔ Anthropic translation: golden files for every rule, properties for turn structure.

Golden files live in ``golden/anthropic/``: ``request_*`` (OpenAI body in, Anthropic body or error out),
``response_*`` (Anthropic body in, ChatResult out) and ``stream_*`` (SSE events in, internal events
out). Run with ``PALYRA_UPDATE_GOLDEN=1`` to rewrite the outputs from the code, then read the diff
against the rules before committing it: a regenerated golden file proves nothing by itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra.errors import InvalidRequest, PalyraError, UpstreamFailed
from palyra.providers.anthropic_translate import (
    PLACEHOLDER_USER_TEXT,
    StreamTranslator,
    map_stop_reason,
    tool_use_id,
    translate_request,
    translate_response,
)
from palyra.providers.base import Capabilities, ModelTarget
from palyra.providers.types import (
    ChatRequest,
    ImagePart,
    Message,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
)
from palyra.surface.openai_requests import parse_chat_request

GOLDEN = Path(__file__).parent / "golden" / "anthropic"
UPDATE = os.environ.get("PALYRA_UPDATE_GOLDEN") == "1"


def target(max_output_tokens: int = 8192) -> ModelTarget:
    return ModelTarget(
        model_id="claude",
        provider_id="anthropic",
        upstream_model="claude-sonnet-4-5-20250929",
        role="chat",
        capabilities=Capabilities(
            tools=True, vision=True, json_mode=True, streaming=True, max_context_tokens=200_000
        ),
        max_output_tokens=max_output_tokens,
    )


def chat_request(openai: dict[str, Any]) -> ChatRequest:
    """The ChatRequest the HTTP surface would build from this OpenAI body."""
    body = dict(openai)
    # The surface already refuses n > 1; the translator must refuse it on its own too, so n is set
    # after parsing to reach it.
    n = body.pop("n", None)
    request = parse_chat_request(json.dumps(body).encode())
    request.n = n
    return request


def event_json(event: StreamEvent) -> dict[str, Any]:
    return {"type": type(event).__name__, **dataclasses.asdict(event)}


def error_json(exc: PalyraError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "code": exc.code, "param": exc.param}


def golden_files(prefix: str) -> list[Path]:
    return sorted(GOLDEN.glob(f"{prefix}_*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- structural checks shared by golden and property tests --------------------------------------------


def assert_valid_anthropic_messages(body: dict[str, Any]) -> None:
    """What Anthropic's validator enforces on ``messages`` and ``system``."""
    messages = body["messages"]
    assert messages, "at least one message"
    assert messages[0]["role"] == "user"
    for prev, cur in itertools.pairwise(messages):
        assert prev["role"] != cur["role"], "roles must alternate"
    for m in messages:
        assert m["role"] in ("user", "assistant")
        assert m["content"], "no empty turns"
        kinds = [b["type"] for b in m["content"]]
        for b in m["content"]:
            if b["type"] == "text":
                assert b["text"].strip(), "no blank text blocks"
        if m["role"] == "user":
            results = [k == "tool_result" for k in kinds]
            assert results == sorted(results, reverse=True), "tool_result blocks come first"
            ids = [b["tool_use_id"] for b in m["content"] if b["type"] == "tool_result"]
            assert len(ids) == len(set(ids)), "no duplicate tool results"
        else:
            assert "tool_result" not in kinds and "image" not in kinds
    last = messages[-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        assert last["content"][-1]["text"] == last["content"][-1]["text"].rstrip()
    for b in body.get("system", ()):
        assert b["type"] == "text" and b["text"].strip()


# --- golden files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", golden_files("request"), ids=lambda p: p.stem)
def test_request_golden(path: Path) -> None:
    case = load(path)
    request = chat_request(case["openai"])
    tgt = target(case.get("max_output_tokens", 8192))
    stream = bool(case.get("stream", False))
    try:
        out = translate_request(request, tgt, stream=stream)
    except InvalidRequest as exc:
        if UPDATE:
            case.pop("anthropic", None)
            case.pop("json_tool", None)
            case["error"] = error_json(exc)
            save(path, case)
        assert "error" in case, f"unexpected error: {exc}"
        assert error_json(exc) == case["error"]
        assert exc.message
        return
    if UPDATE:
        case.pop("error", None)
        case["anthropic"] = out.body
        case["json_tool"] = out.json_tool
        save(path, case)
    assert "error" not in case, "expected an error"
    assert out.body == case["anthropic"]
    assert out.json_tool == case["json_tool"]
    assert_valid_anthropic_messages(out.body)
    json.dumps(out.body)  # the body must be serialisable as is


@pytest.mark.parametrize("path", golden_files("response"), ids=lambda p: p.stem)
def test_response_golden(path: Path) -> None:
    case = load(path)
    result = translate_response(case["anthropic"], json_tool=case["json_tool"])
    got = dataclasses.asdict(result)
    if UPDATE:
        case["expected"] = got
        save(path, case)
    assert got == case["expected"]
    if case["json_tool"] is not None:
        assert result.finish_reason != "tool_calls"
        assert all(c.name != case["json_tool"] for c in result.tool_calls)


@pytest.mark.parametrize("path", golden_files("stream"), ids=lambda p: p.stem)
def test_stream_golden(path: Path) -> None:
    case = load(path)
    translator = StreamTranslator(json_tool=case["json_tool"])
    got: list[dict[str, Any]] = []
    error: dict[str, Any] | None = None
    try:
        for event, data in case["events"]:
            got.extend(event_json(e) for e in translator.feed(event, data))
    except UpstreamFailed as exc:
        error = {"type": "UpstreamFailed", "code": exc.code, "message": exc.message}
    if UPDATE:
        case["expected"] = got
        if error is None:
            case.pop("error", None)
        else:
            old = case.get("error", {})
            case["error"] = {
                "type": error["type"],
                "code": error["code"],
                "message_contains": old.get("message_contains", error["message"]),
            }
        save(path, case)
    assert got == case["expected"]
    if "error" in case:
        assert error is not None, "expected the stream to raise"
        assert error["code"] == case["error"]["code"]
        assert case["error"]["message_contains"] in error["message"]
    else:
        assert error is None
        # The order every provider promises: deltas, then one Finish, then one UsageReport.
        kinds = [e["type"] for e in got]
        assert kinds[-2:] == ["Finish", "UsageReport"]
        assert kinds.count("Finish") == kinds.count("UsageReport") == 1
    if case["json_tool"] is not None:
        assert all(e["type"] != "ToolCallDelta" for e in got)
        assert {"type": "Finish", "reason": "tool_calls"} not in got


def test_golden_directory_holds_only_known_kinds() -> None:
    names = [p.name for p in GOLDEN.iterdir()]
    assert names
    assert all(n.split("_", 1)[0] in {"request", "response", "stream"} and n.endswith(".json") for n in names)


def test_json_schema_stream_text_is_the_schema_answer() -> None:
    """Streamed JSON mode concatenates to exactly what the non-streamed reply would say."""
    case = load(GOLDEN / "stream_json_tool.json")
    translator = StreamTranslator(json_tool="json_response")
    text = ""
    for event, data in case["events"]:
        for e in translator.feed(event, data):
            if isinstance(e, TextDelta):
                text += e.text
    assert json.loads(text) == {"answer": "ok", "score": 7}


# --- focused unit tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "pause_turn"),
        ("brand_new", "brand_new"),
        (None, "stop"),
    ],
)
def test_map_stop_reason(reason: str | None, expected: str) -> None:
    assert map_stop_reason(reason) == expected


@pytest.mark.parametrize(
    ("etype", "code"),
    [
        ("overloaded_error", "overloaded"),
        ("rate_limit_error", "rate_limited"),
        ("api_error", "transient"),
        ("authentication_error", "auth_invalid"),
        ("permission_error", "permission_denied"),
        ("invalid_request_error", "invalid_request"),
        ("billing_error", "transient"),
        (None, "transient"),
    ],
)
def test_stream_error_codes(etype: str | None, code: str) -> None:
    translator = StreamTranslator()
    with pytest.raises(UpstreamFailed) as info:
        translator.feed("error", {"type": "error", "error": {"type": etype, "message": "boom 42"}})
    assert info.value.code == code
    assert "boom 42" in info.value.message
    assert info.value.status == 502


def test_stream_usage_is_available_mid_stream_and_never_summed() -> None:
    t = StreamTranslator()
    start = {"input_tokens": 10, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 2}
    t.feed("message_start", {"type": "message_start", "message": {"usage": {**start, "output_tokens": 1}}})
    assert (t.usage.prompt_tokens, t.usage.completion_tokens) == (17, 1)
    for out in (5, 9):
        delta = {"stop_reason": None}
        t.feed(
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {**start, "output_tokens": out}},
        )
    u = t.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens) == (17, 9, 5, 2)
    assert u.source == "provider"


def test_stream_event_name_taken_from_data_when_sse_event_line_missing() -> None:
    t = StreamTranslator()
    assert t.feed("", {"type": "ping"}) == []
    out = t.feed("", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}})
    assert [event_json(e) for e in out] == [{"type": "Finish", "reason": "stop"}]


def test_stream_tool_block_with_prefilled_input() -> None:
    t = StreamTranslator()
    block = {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {"a": 1}}
    out = t.feed("content_block_start", {"type": "content_block_start", "index": 3, "content_block": block})
    assert out == [ToolCallDelta(0, id="toolu_x", name="f", arguments='{"a":1}')]


def test_response_only_first_forced_json_call_is_the_answer() -> None:
    body = {
        "id": "m",
        "content": [
            {"type": "tool_use", "id": "a", "name": "json_response", "input": {"x": 1}},
            {"type": "tool_use", "id": "b", "name": "json_response", "input": {"x": 2}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    result = translate_response(body, json_tool="json_response")
    assert (result.text, result.tool_calls, result.finish_reason) == ('{"x":1}', [], "stop")


def test_response_without_json_tool_keeps_a_tool_named_like_it() -> None:
    body = {
        "id": "m",
        "content": [{"type": "tool_use", "id": "a", "name": "json_response", "input": {}}],
        "stop_reason": "tool_use",
    }
    result = translate_response(body)
    assert result.tool_calls == [ToolCall("a", "json_response", "{}")]
    assert result.text is None and result.finish_reason == "tool_calls"
    assert result.usage.prompt_tokens == 0


def _req(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest(model="claude", messages=list(messages), **kw)


@pytest.mark.parametrize("arguments", ["[1, 2]", '"text"', "42"])
def test_tool_arguments_must_be_a_json_object(arguments: str) -> None:
    request = _req(
        Message("user", [TextPart("go")]),
        Message("assistant", None, tool_calls=[ToolCall("c1", "f", arguments)]),
    )
    with pytest.raises(InvalidRequest) as info:
        translate_request(request, target(), stream=False)
    assert info.value.code == "invalid_tool_arguments"
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_images_outside_user_messages_are_rejected() -> None:
    request = _req(Message("user", [TextPart("hi")]), Message("assistant", [ImagePart("https://x/y.png")]))
    with pytest.raises(InvalidRequest) as info:
        translate_request(request, target(), stream=False)
    assert info.value.param == "messages[1].content[0]"


def test_tool_message_needs_an_id() -> None:
    request = _req(Message("user", [TextPart("hi")]), Message("tool", [TextPart("r")]))
    with pytest.raises(InvalidRequest) as info:
        translate_request(request, target(), stream=False)
    assert info.value.param == "messages[1].tool_call_id"


def test_request_is_not_mutated() -> None:
    request = chat_request(
        {
            "model": "claude",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "parallel_tool_calls": False,
        }
    )
    before = dataclasses.asdict(request)
    first = translate_request(request, target(), stream=False)
    first.body["tools"][0]["input_schema"]["properties"]["x"] = {}
    assert dataclasses.asdict(request) == before
    assert translate_request(request, target(), stream=False).body["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {},
    }


# --- properties -------------------------------------------------------------------------------------

TEXTS = st.one_of(
    st.sampled_from(["", " ", "\n\t ", "hi", "  padded  ", "ends with space ", "line\n"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=6),
)


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """OpenAI-valid conversations: tool messages only answer the latest assistant's calls (some calls may
    go unanswered, system messages may sit between), everything else in any order."""
    messages: list[Message] = []
    unanswered: list[str] = []
    next_id = 0
    for _ in range(draw(st.integers(1, 14))):
        role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
        if role == "tool" and not unanswered:
            role = "user"
        if role == "tool":
            call_id = draw(st.sampled_from(unanswered))
            unanswered.remove(call_id)
            messages.append(Message("tool", [TextPart(draw(TEXTS))], tool_call_id=call_id))
        elif role == "assistant":
            content = draw(st.one_of(st.none(), st.lists(TEXTS.map(TextPart), max_size=2)))
            calls = []
            for _ in range(draw(st.integers(0, 3))):
                next_id += 1
                calls.append(ToolCall(f"call.{next_id}", "f", draw(st.sampled_from(["", "{}", '{"a":1}']))))
            messages.append(Message("assistant", content, tool_calls=calls))  # type: ignore[arg-type]
            unanswered = [c.id for c in calls]
        else:
            parts = draw(st.lists(TEXTS.map(TextPart), min_size=1, max_size=3))
            messages.append(Message(role, parts))  # type: ignore[arg-type]
            if role == "user":
                unanswered = []
    return messages


@settings(max_examples=300, deadline=None)
@given(conversations())
def test_translated_turns_are_always_valid(messages: list[Message]) -> None:
    body = translate_request(_req(*messages), target(), stream=False).body
    assert_valid_anthropic_messages(body)

    system_texts = [
        p.text
        for m in messages
        if m.role in ("system", "developer")
        for p in m.content or ()
        if isinstance(p, TextPart) and p.text.strip()
    ]
    assert [b["text"] for b in body.get("system", [])] == system_texts

    def carries_content(m: Message) -> bool:
        if m.role in ("system", "developer"):
            return False
        return m.role == "tool" or bool(m.tool_calls) or bool(m.text().strip())

    first_turn = next((m for m in messages if carries_content(m)), None)
    placeholder = {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]}
    needs_placeholder = first_turn is None or first_turn.role == "assistant"
    assert (body["messages"][0] == placeholder) == needs_placeholder

    answered = {m.tool_call_id for m in messages if m.role == "tool"}
    turns = body["messages"]
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        results_next = set()
        if k + 1 < len(turns):
            results_next = {b["tool_use_id"] for b in turns[k + 1]["content"] if b["type"] == "tool_result"}
        for block in turn["content"]:
            if block["type"] == "tool_use" and any(tool_use_id(a) == block["id"] for a in answered if a):
                assert block["id"] in results_next, f"{block['id']} unanswered in the next user turn"


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    st.lists(st.integers(0, 50), max_size=6),
)
def test_streamed_arguments_concatenate_to_the_original(arguments: dict[str, Any], cuts: list[int]) -> None:
    raw = json.dumps(arguments)
    bounds = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    pieces = [""] + [raw[a:b] for a, b in itertools.pairwise(bounds)]
    t = StreamTranslator()
    block = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    out = t.feed("content_block_start", {"type": "content_block_start", "index": 1, "content_block": block})
    for piece in pieces:
        delta = {"type": "input_json_delta", "partial_json": piece}
        out += t.feed("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
    assert all(isinstance(e, ToolCallDelta) and e.index == 0 for e in out)
    assert len(out) == 1 + len(pieces)
    assert json.loads("".join(e.arguments for e in out if isinstance(e, ToolCallDelta))) == arguments
