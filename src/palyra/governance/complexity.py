"""How hard a chat request looks: cheap, explainable features and a weighted score in [0, 1].

The router (``palyra.governance.routing``) uses the score to pick a tier. Everything here is rule-based
and runs on the request path, so it must stay far below a millisecond (``bench/scorer.py`` measures it):

- no regex is tried at every position: marker words come from one split of the lowercased text into
  tokens intersected with the marker set (distinct words, like the reference's keyword bonus: asking
  "why" five times is not harder than asking once), phrases from substring tests, and code and list
  items from searches that each start at a literal (a fast substring scan);
- lengths, images and depth come from one walk over the messages, without joining strings;
- only *user* text is scanned for markers, and only its newest ``SCAN_CAP_CHARS`` characters (newest
  turn first, the oldest kept piece cut to its tail). A system prompt is the same on every request of
  a deployment and would tilt them all alike; a long pasted history adds cost, not signal.

Consequence of the cap: markers older than the newest 8 KB of user text are not seen, so appending
text can push an early marker out of the window. The score itself is monotone in every feature.

The weights are a heuristic in the spirit of LiteLLM's complexity router (code and reasoning markers
dominate, length helps); calibrate them, and the router's thresholds, on labelled prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from palyra.providers.types import ChatRequest, TextPart

SCAN_CAP_CHARS = 8 * 1024
"""Only the newest 8 KB of user text is scanned for code and markers."""

# Weights of each feature's saturated value (each in [0, 1]); they sum to 1, so the score is in [0, 1].
W_LENGTH = 0.20
W_CODE = 0.20
W_REASONING = 0.30
W_MULTI_STEP = 0.10
W_DEPTH = 0.05
W_IMAGES = 0.05
W_TOOLS = 0.03
W_JSON = 0.03
W_OUTPUT = 0.04

# Where each saturating transform reaches 1: ``min(1, value / SAT_x)``.
SAT_TOKENS = 4000
SAT_REASONING = 3
SAT_MULTI_STEP = 4
SAT_MESSAGES = 20
SAT_IMAGES = 2
SAT_TOOLS = 5
SAT_OUTPUT_TOKENS = 4000

# Marker words: lowercased whitespace tokens after punctuation (but not "-") is blanked.
REASONING_WORDS = frozenset(
    {
        "prove",
        "proves",
        "proving",
        "proof",
        "proofs",
        "derive",
        "derives",
        "deriving",
        "derivation",
        "analyze",
        "analyse",
        "analyzing",
        "analysing",
        "analysis",
        "why",
        "compare",
        "comparing",
        "comparison",
        "contrast",
        "trade-off",
        "trade-offs",
        "tradeoff",
        "tradeoffs",
        "optimize",
        "optimise",
        "optimizing",
        "optimising",
        "optimization",
        "optimisation",
        "design",
        "designing",
        "architecture",
        "evaluate",
        "justify",
        "investigate",
        "debug",
        "debugging",
        "step-by-step",
        "implication",
        "implications",
        "rigorous",
        "rigorously",
    }
)
REASONING_PHRASES = ("step by step", "pros and cons", "root cause", "reason about")
SEQUENCE_WORDS = frozenset(
    {
        "first",
        "firstly",
        "second",
        "secondly",
        "then",
        "next",
        "finally",
        "lastly",
        "afterwards",
        "subsequently",
    }
)
SEQUENCE_PHRASES = ("after that",)
_MARKER_WORDS = REASONING_WORDS | SEQUENCE_WORDS
_BLANK_PUNCTUATION = str.maketrans(
    dict.fromkeys("!\"#$%&'()*+,./:;<=>?@[\\]^_`{|}~\u201c\u201d\u2018\u2019\u2026", " ")
)

# A numbered or bulleted list item at the start of a line (the scanned text is given a leading "\n").
_LIST_ITEM = re.compile(r"\n[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]+\S")

# Code: case-sensitive (``SELECT`` is SQL, "select" is English). Every check starts with a literal, so
# each is a fast substring search rather than a regex attempt at every position; the first hit wins.
_CODE_NEEDLES = (
    "```",
    "Traceback (most recent call last)",
    "Exception in thread ",
    "panicked at ",
    "console.log(",
    "System.out.",
    "public static ",
    "SELECT ",
    "INSERT INTO ",
    "DELETE FROM ",
    "CREATE TABLE ",
)
_CODE_PATTERNS = (
    re.compile(r"def [A-Za-z_]\w*\s*\("),
    re.compile(r"function(?: [\w$]+)? ?\([\w$, ]*\) ?\{"),
    re.compile(r"class [A-Z_]\w*(?:\s*[:({<]| extends | implements )"),
    re.compile(r"=> ?\{"),
    re.compile(r"\) ?\{[ \t]*\n"),
    # Line starts: imports, includes, declarations, Python and Java/JS stack frames.
    re.compile(
        r"\n[ \t]*(?:(?:from [\w.]+ )?import [\w.]+|#include ?[<\"]|(?:const|let|var) [\w$]+ = "
        r"|File \"[^\"\n]+\", line \d+|at [\w$.<>]+ ?\()"
    ),
)


@dataclass(frozen=True, slots=True)
class Features:
    """What a chat request looks like, as far as the router cares."""

    chars: int
    """Characters of text in all messages (every role, tool-call arguments included; images not)."""
    token_estimate: int
    """The prompt's tokens: the caller's count when given, else ``ceil(chars / 4)``."""
    messages: int
    """Conversation depth: the number of messages."""
    user_turns: int
    """Messages with role ``user``."""
    has_code: bool
    """Scanned user text has a code fence, code syntax (``def f(``, ``SELECT``…) or a stack trace."""
    reasoning_markers: int
    """Distinct reasoning words and phrases ("prove", "why", "compare", "trade-off", "design", "step by
    step"…) in the scanned text; a word repeated counts once."""
    multi_step_markers: int
    """Distinct sequence words ("first", "then", "finally"…) plus every numbered or bulleted list item."""
    json_mode: bool
    """A JSON ``response_format`` (``json_object`` or ``json_schema``) was asked for."""
    images: int
    """Image parts across all messages."""
    tools: int
    """Tool definitions offered to the model."""
    max_tokens_requested: int | None
    """The client's completion limit, if it set one."""

    def as_dict(self) -> dict[str, int | bool | None]:
        return {name: getattr(self, name) for name in self.__slots__}


def extract(request: ChatRequest, token_count: int | None = None) -> Features:
    """The features of ``request``; ``token_count`` (a real tokenizer's count) replaces the estimate."""
    chars = images = user_turns = 0
    for m in request.messages:
        if m.role == "user":
            user_turns += 1
        if m.content:
            for part in m.content:
                if isinstance(part, TextPart):
                    chars += len(part.text)
                else:
                    images += 1
        for call in m.tool_calls:
            chars += len(call.arguments)

    text = _scanned_user_text(request)
    reasoning = multi_step = 0
    has_code = False
    if text:
        low = text.lower()
        words = _MARKER_WORDS.intersection(low.translate(_BLANK_PUNCTUATION).split())
        reasoning = len(words & REASONING_WORDS) + sum(p in low for p in REASONING_PHRASES)
        multi_step = len(words & SEQUENCE_WORDS) + sum(p in low for p in SEQUENCE_PHRASES)
        text = "\n" + text
        multi_step += sum(1 for _ in _LIST_ITEM.finditer(text))
        has_code = any(n in text for n in _CODE_NEEDLES) or any(p.search(text) for p in _CODE_PATTERNS)
    rf = request.response_format
    return Features(
        chars=chars,
        token_estimate=token_count if token_count is not None else (chars + 3) // 4,
        messages=len(request.messages),
        user_turns=user_turns,
        has_code=has_code,
        reasoning_markers=reasoning,
        multi_step_markers=multi_step,
        json_mode=rf is not None and rf.type != "text",
        images=images,
        tools=len(request.tools),
        max_tokens_requested=request.max_tokens,
    )


def _scanned_user_text(request: ChatRequest) -> str:
    """The newest ``SCAN_CAP_CHARS`` characters of user text, in conversation order."""
    pieces: list[str] = []
    budget = SCAN_CAP_CHARS
    for m in reversed(request.messages):
        if m.role != "user" or not m.content:
            continue
        for part in reversed(m.content):
            if not isinstance(part, TextPart) or not part.text:
                continue
            t = part.text
            if len(t) >= budget:
                pieces.append(t[len(t) - budget :])
                return "\n".join(reversed(pieces))
            pieces.append(t)
            budget -= len(t) + 1
            if budget <= 0:
                return "\n".join(reversed(pieces))
    return "\n".join(reversed(pieces))


def explain(features: Features) -> dict[str, float]:
    """Each feature's contribution to the score; the values sum to ``score(features)``.

    ``contribution = weight * min(1, value / saturation)`` (booleans count as 0 or 1):

    ============  ===========  =============================
    key           weight       saturates at
    ============  ===========  =============================
    length        0.20         4000 tokens
    code          0.20         present
    reasoning     0.30         3 markers
    multi_step    0.10         4 markers
    depth         0.05         20 messages
    images        0.05         2 images
    tools         0.03         5 tools
    json_mode     0.03         requested
    output        0.04         4000 max_tokens requested
    ============  ===========  =============================
    """
    f = features
    return {
        "length": W_LENGTH * _sat(f.token_estimate, SAT_TOKENS),
        "code": W_CODE if f.has_code else 0.0,
        "reasoning": W_REASONING * _sat(f.reasoning_markers, SAT_REASONING),
        "multi_step": W_MULTI_STEP * _sat(f.multi_step_markers, SAT_MULTI_STEP),
        "depth": W_DEPTH * _sat(f.messages, SAT_MESSAGES),
        "images": W_IMAGES * _sat(f.images, SAT_IMAGES),
        "tools": W_TOOLS * _sat(f.tools, SAT_TOOLS),
        "json_mode": W_JSON if f.json_mode else 0.0,
        "output": W_OUTPUT * _sat(f.max_tokens_requested or 0, SAT_OUTPUT_TOKENS),
    }


def score(features: Features) -> float:
    """The complexity of a request in [0, 1]: the sum of ``explain(features)``."""
    return total(explain(features))


def total(contributions: dict[str, float]) -> float:
    """The score from ``explain``'s contributions."""
    return min(1.0, max(0.0, sum(contributions.values())))


def _sat(value: int, at: int) -> float:
    if value <= 0:
        return 0.0
    return 1.0 if value >= at else value / at
