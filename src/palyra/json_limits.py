"""Limits on free-form JSON values a client sends on: how deep they nest, how large their integers are.

Values a model leaves free (tool parameters, JSON schemas, tool-call arguments, pass-through fields)
travel on to upstreams and into the journal. orjson refuses to encode nesting past 255 levels and
integers outside 64 bits, and the standard library's parser recurses; a value past either limit
would otherwise surface as a 500 deep in an adapter instead of a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

JsonProblem = Literal["too_deep", "integer_out_of_range"]


def json_problem(value: Any, *, base_depth: int, max_depth: int) -> JsonProblem | None:
    """What makes ``value`` unfit to pass on, or None. ``base_depth`` is the nesting of the container
    ``value`` sits in (the request body's own object is 1). Iterative, so depth costs no stack."""
    stack = [(value, base_depth + 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            if isinstance(node, int) and not isinstance(node, bool) and not INT64_MIN <= node <= INT64_MAX:
                return "integer_out_of_range"
            continue
        if depth > max_depth:
            return "too_deep"
        stack.extend((child, depth + 1) for child in children)
    return None
