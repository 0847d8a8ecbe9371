"""Complexity features and score: extraction on crafted prompts, bounds, monotonicity, determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.governance import complexity
from palyra.governance.complexity import SCAN_CAP_CHARS, Features, explain, extract, score
from palyra.providers.types import (
    ChatRequest,
    ContentPart,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    TextPart,
    ToolCall,
    ToolSpec,
)


def msg(role: Role, *parts: str | ContentPart) -> Message:
    return Message(role, [TextPart(p) if isinstance(p, str) else p for p in parts])


def ask(text: str, **kwargs: object) -> ChatRequest:
    return ChatRequest(model="m", messages=[msg("user", text)], **kwargs)  # type: ignore[arg-type]


def features(**overrides: object) -> Features:
    base: dict[str, object] = {
        "chars": 0,
        "token_estimate": 0,
        "messages": 1,
        "user_turns": 1,
        "has_code": False,
        "reasoning_markers": 0,
        "multi_step_markers": 0,
        "json_mode": False,
        "images": 0,
        "tools": 0,
        "max_tokens_requested": None,
    }
    base.update(overrides)
    return Features(**base)  # type: ignore[arg-type]


# --- extraction ---------------------------------------------------------------------------------


def test_small_talk_is_trivial() -> None:
    f = extract(ask("hi, what is the capital of France?"))
    assert f.has_code is False
    assert f.reasoning_markers == 0
    assert f.multi_step_markers == 0
    assert score(f) < 0.05


@pytest.mark.parametrize(
    "text",
    [
        "Why does this fail?\n```python\nprint(1/0)\n```",
        "fix def parse(line): return line.split()",
        "what does function add(a, b) { return a + b } return?",
        "class Parser(Base): is this right?",
        "explain SELECT id FROM users WHERE age > 3",
        'Traceback (most recent call last):\n  File "a.py", line 3, in <module>\nZeroDivisionError',
        'Exception in thread "main" java.lang.NullPointerException\n    at com.x.Main.run(Main.java:10)',
        "import numpy as np\nnp.zeros(3)",
        "#include <stdio.h>\nint main() {\n  return 0;\n}",
        "const total = items.reduce((a, b) => { return a + b })",
    ],
)
def test_code_is_detected(text: str) -> None:
    assert extract(ask(text)).has_code is True


@pytest.mark.parametrize(
    "text",
    [
        "please select the best option from the list",
        "what is the function of the liver?",
        "my class starts at 9 and the teacher is strict",
        "we import goods from China and sell them in Spain",
        "let me know what you think",
    ],
)
def test_prose_is_not_code(text: str) -> None:
    assert extract(ask(text)).has_code is False


def test_reasoning_markers_count_distinct_words_and_phrases() -> None:
    f = extract(ask("Why? Compare the trade-offs, then prove it step by step. Why, why, WHY?"))
    # why, compare, trade-offs, prove, "step by step"; "why" repeated counts once
    assert f.reasoning_markers == 5


def test_multi_step_markers_count_sequence_words_and_list_items() -> None:
    text = (
        "First, parse the file. Then validate it. Finally, write it out:\n1. parse\n2) check\n- save\n* done"
    )
    f = extract(ask(text))
    assert f.multi_step_markers == 3 + 4


def test_images_tools_json_and_max_tokens() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            msg("user", "what is in these?", ImagePart("https://x/a.png"), ImagePart("data:image/png;b"))
        ],
        tools=[ToolSpec("search"), ToolSpec("fetch"), ToolSpec("calc")],
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
        max_tokens=1234,
    )
    f = extract(request)
    assert (f.images, f.tools, f.json_mode, f.max_tokens_requested) == (2, 3, True, 1234)


@pytest.mark.parametrize(
    ("kind", "expected"), [("json_object", True), ("json_schema", True), ("text", False)]
)
def test_json_mode_follows_response_format(kind: str, expected: bool) -> None:
    assert extract(ask("x", response_format=ResponseFormat(type=kind))).json_mode is expected  # type: ignore[arg-type]
    assert extract(ask("x")).json_mode is False


def test_lengths_depth_and_turns() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            msg("system", "s" * 100),
            msg("user", "u" * 40),
            Message("assistant", None, tool_calls=[ToolCall("c1", "f", '{"a": 1}')]),
            Message("tool", [TextPart("t" * 10)], tool_call_id="c1"),
            msg("user", "v" * 50),
        ],
    )
    f = extract(request)
    assert f.chars == 100 + 40 + len('{"a": 1}') + 10 + 50
    assert f.token_estimate == math.ceil(f.chars / 4)
    assert (f.messages, f.user_turns) == (5, 2)
    assert extract(request, token_count=7).token_estimate == 7


def test_only_user_text_is_scanned() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            msg("system", "Analyze, compare, prove, design. ```code``` First, then, finally."),
            msg("user", "hello"),
        ],
    )
    f = extract(request)
    assert (f.has_code, f.reasoning_markers, f.multi_step_markers) == (False, 0, 0)


def test_scan_keeps_the_newest_user_text_only() -> None:
    old = msg("user", "why would you prove this? " + "a" * (2 * SCAN_CAP_CHARS))
    new = msg("user", "compare them")
    f = extract(ChatRequest(model="m", messages=[old, msg("assistant", "ok"), new]))
    assert f.reasoning_markers == 1  # "compare"; "why"/"prove" fell outside the window
    assert f.chars > 2 * SCAN_CAP_CHARS  # lengths still count everything

    tail = msg("user", "a" * (2 * SCAN_CAP_CHARS) + " now analyze it")
    assert extract(ChatRequest(model="m", messages=[tail])).reasoning_markers == 1


def test_extraction_is_deterministic() -> None:
    request = ask("First compare X and Y, then design Z.\n```\nx = 1\n```", max_tokens=500)
    assert extract(request) == extract(request)
    assert score(extract(request)) == score(extract(request))
    assert explain(extract(request)) == explain(extract(request))


def test_as_dict_lists_every_field() -> None:
    f = extract(ask("hi"))
    assert f.as_dict() == dataclasses.asdict(f)


# --- score -------------------------------------------------------------------------------------


def test_weights_sum_to_one() -> None:
    weights = [v for k, v in vars(complexity).items() if k.startswith("W_")]
    assert math.isclose(sum(weights), 1.0)


def test_explain_sums_to_score_and_names_every_feature() -> None:
    f = extract(ask("Why?\n```py\ndef f(): pass\n```", max_tokens=800))
    parts = explain(f)
    assert set(parts) == {
        "length",
        "code",
        "reasoning",
        "multi_step",
        "depth",
        "images",
        "tools",
        "json_mode",
        "output",
    }
    assert math.isclose(sum(parts.values()), score(f))
    assert parts["code"] == complexity.W_CODE


def test_everything_saturated_scores_one() -> None:
    f = features(
        token_estimate=10**6,
        messages=100,
        has_code=True,
        reasoning_markers=50,
        multi_step_markers=50,
        json_mode=True,
        images=9,
        tools=50,
        max_tokens_requested=10**6,
    )
    assert math.isclose(score(f), 1.0)
    assert score(features(messages=0, user_turns=0)) == 0.0


def test_crafted_prompts_order_sensibly() -> None:
    trivial = score(extract(ask("thanks!")))
    code_question = score(extract(ask("Why does this fail?\n```python\nprint(1/0)\n```")))
    hard = score(
        extract(
            ask(
                "Design a sharded cache. First compare write-through and write-back trade-offs, then "
                "prove the consistency argument step by step, and finally optimize:\n"
                "1. latency\n2. throughput\n```go\nfunc main() {\n}\n```",
                max_tokens=4000,
            ),
            token_count=4000,
        )
    )
    assert trivial < 0.3 < code_question < 0.7 < hard


_counts = st.integers(min_value=0, max_value=10**6)
_features = st.builds(
    Features,
    chars=_counts,
    token_estimate=_counts,
    messages=_counts,
    user_turns=_counts,
    has_code=st.booleans(),
    reasoning_markers=_counts,
    multi_step_markers=_counts,
    json_mode=st.booleans(),
    images=_counts,
    tools=_counts,
    max_tokens_requested=st.none() | _counts,
)


@given(_features)
def test_score_is_within_bounds(f: Features) -> None:
    assert 0.0 <= score(f) <= 1.0
    assert all(v >= 0.0 for v in explain(f).values())


_GROWABLE = (
    "token_estimate",
    "messages",
    "reasoning_markers",
    "multi_step_markers",
    "images",
    "tools",
)


@given(_features, st.sampled_from(_GROWABLE), st.integers(min_value=1, max_value=10**4))
def test_score_never_drops_when_a_feature_grows(f: Features, name: str, by: int) -> None:
    grown = dataclasses.replace(f, **{name: getattr(f, name) + by})
    assert score(grown) >= score(f)


@given(_features, st.sampled_from(["has_code", "json_mode"]))
def test_score_never_drops_when_a_flag_is_set(f: Features, name: str) -> None:
    assert score(dataclasses.replace(f, **{name: True})) >= score(f)


@given(_features, st.integers(min_value=1, max_value=10**4))
def test_score_never_drops_when_more_output_is_requested(f: Features, by: int) -> None:
    grown = dataclasses.replace(f, max_tokens_requested=(f.max_tokens_requested or 0) + by)
    assert score(grown) >= score(f)


_SENTENCES = st.sampled_from(
    [
        "Why is that?",
        "Compare both options.",
        "Then prove it.",
        "Analyze the trade-offs step by step.",
        "Finally, design the schema.",
        "Some plain filler words about nothing in particular.",
        "\n1. one more item",
    ]
)


@given(st.lists(_SENTENCES, max_size=8), _SENTENCES)
def test_appending_text_never_lowers_the_score(sentences: list[str], extra: str) -> None:
    """Within the scan window, more text (markers or filler) never makes a prompt look simpler."""
    before = " ".join(sentences)
    assert score(extract(ask(before + " " + extra))) >= score(extract(ask(before)))
