"""Property-based requests to /v1 over real HTTP: random, truncated, deeply nested, wrong-typed and huge
bodies, odd headers and tokens. Whatever arrives, the daemon answers in time, never with a 5xx, always
with an OpenAI-shaped error when it refuses, and never with a stack trace, a path or a class name.

The daemon is this module's own (its body limit is lowered so "huge" stays cheap, and the guessing
limit is off so random tokens do not lock the fuzzer out); it must still be healthy at the end, with
no unexpected error in its log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Daemon, start_daemon
from leaks import assert_no_internals
from openai_schema import validate

MAX_BODY = 256 * 1024
RESPONSE_BOUND_S = 5.0
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
ENDPOINTS = ["/chat/completions", "/embeddings"]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    config = f"[server]\nmax_json_body_bytes = {MAX_BODY}\nauth_failure_limit_per_minute = 0\n"
    d = start_daemon(tmp_path_factory.mktemp("fuzz-v1"), config=config)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def http(fuzzed: Daemon) -> Iterator[httpx.Client]:
    token, _ = fuzzed.create_token(name="fuzz", scopes=["*"])
    with httpx.Client(
        base_url=fuzzed.v1, headers={"Authorization": f"Bearer {token}"}, timeout=RESPONSE_BOUND_S * 2
    ) as client:
        yield client


def send(
    http: httpx.Client, path: str, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    started = time.monotonic()
    r = http.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})
    took = time.monotonic() - started
    assert took < RESPONSE_BOUND_S, f"{path} took {took:.2f} s"
    return r


def check(r: httpx.Response) -> None:
    """The invariants every answer keeps."""
    assert r.status_code < 500, r.text[:1000]
    assert_no_internals(r.text)
    if r.status_code >= 400:
        body = r.json()
        validate("ErrorResponse", body)
        assert body["error"]["message"]
        if body["error"]["code"] != "unknown_url":  # the router's own 404 precedes any endpoint
            assert r.headers.get("x-request-id", "").startswith("req_")
        return
    assert r.headers.get("x-request-id", "").startswith("req_")
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        # SSE lines end at CR, LF or CRLF only: str.splitlines would also split inside a JSON string
        # holding U+2028, U+0085…, which JSON (and so the frame) carries unescaped.
        lines = r.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        frames = [line[6:] for line in lines if line.startswith("data: ")]
        assert frames, r.text[:500]
        assert frames[-1] == "[DONE]" or '"error"' in frames[-1], r.text[:500]
        for frame in frames[:-1]:
            validate("CreateChatCompletionStreamResponse", json.loads(frame))
        return
    json.loads(r.text)


# --- strategies -------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
TEXT = st.text(max_size=60)


@st.composite
def valid_chat(draw: st.DrawFn) -> dict[str, Any]:
    """A request the deterministic model serves."""
    messages: list[dict[str, Any]] = []
    for role in draw(st.lists(st.sampled_from(["system", "developer", "user", "assistant"]), max_size=4)):
        messages.append({"role": role, "content": draw(TEXT)})
    messages.append({"role": "user", "content": draw(TEXT)})
    body: dict[str, Any] = {"model": "deterministic", "messages": messages}
    if draw(st.booleans()):
        body["tools"] = [
            {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
            for name in draw(
                st.lists(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), max_size=3, unique=True)
            )
        ]
    optional = {
        "stream": st.booleans(),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 4096),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": st.lists(TEXT, max_size=4),
        "user": TEXT,
        "metadata": st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), TEXT, max_size=3),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if body.get("stream") and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


def valid_embedding() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "model": st.just("hash-embedding-v1"),
            "input": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4)),
        },
        optional={"encoding_format": st.sampled_from(["float", "base64"]), "dimensions": st.integers(1, 256)},
    )


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, (*prefix, i))
    return out


def set_path(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: set_path(value[head], rest, new)}
    copy = list(value)
    copy[head] = set_path(copy[head], rest, new)
    return copy


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid body with one to three fields replaced by any JSON value (wrong types, wrong shapes) or
    dropped."""
    body: Any = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_of(body)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if draw(st.booleans()) and isinstance(path[-1], str):
            parent = path[:-1]
            node = body
            for p in parent:
                node = node[p]
            body = set_path(body, parent, {k: v for k, v in node.items() if k != path[-1]})
        else:
            body = set_path(body, path, draw(JSON))
    return dict(body) if isinstance(body, dict) else {"value": body}


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# --- properties -------------------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(ENDPOINTS), raw=st.binary(max_size=2048))
def test_random_bytes(http: httpx.Client, path: str, raw: bytes) -> None:
    check(send(http, path, raw))


@FUZZ
@given(path=st.sampled_from(ENDPOINTS), value=JSON)
def test_any_json_value(http: httpx.Client, path: str, value: Any) -> None:
    check(send(http, path, json.dumps(value).encode()))


@FUZZ
@given(body=valid_chat())
def test_valid_chat_requests_are_served(http: httpx.Client, body: dict[str, Any]) -> None:
    r = send(http, "/chat/completions", json.dumps(body).encode())
    check(r)
    assert r.status_code == 200, r.text[:500]
    if not body.get("stream"):
        validate("CreateChatCompletionResponse", r.json())


@FUZZ
@given(body=st.one_of(mutated(valid_chat()), mutated(valid_embedding())))
def test_wrong_types_and_missing_fields(http: httpx.Client, body: dict[str, Any]) -> None:
    path = "/embeddings" if body.get("model") == "hash-embedding-v1" else "/chat/completions"
    check(send(http, path, json.dumps(body).encode()))


@FUZZ
@given(body=st.one_of(valid_chat(), valid_embedding()), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_bodies(http: httpx.Client, body: dict[str, Any], cut: float) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode()
    path = "/embeddings" if body.get("model") == "hash-embedding-v1" else "/chat/completions"
    r = send(http, path, raw[: int(len(raw) * cut)])
    check(r)
    assert r.status_code == 400


@settings(FUZZ, max_examples=30)
@given(
    body=valid_chat(),
    depth=st.integers(1, 1200),
    where=st.sampled_from(["extra", "parameters", "schema", "message"]),
)
def test_deeply_nested_values(http: httpx.Client, body: dict[str, Any], depth: int, where: str) -> None:
    deep = nested(depth)
    if where == "extra":
        body["x_deep"] = deep
    elif where == "parameters":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"p": deep}}}]
    elif where == "schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"p": deep}}}
    else:
        body["messages"][-1]["content"] = deep
    r = send(http, "/chat/completions", json.dumps(body).encode())
    check(r)
    if depth > 64:
        assert r.status_code == 400


@settings(FUZZ, max_examples=20)
@given(
    size=st.integers(MAX_BODY - 64, MAX_BODY * 3),
    chunked=st.booleans(),
    path=st.sampled_from(ENDPOINTS),
)
def test_huge_bodies(http: httpx.Client, size: int, chunked: bool, path: str) -> None:
    prefix = b'{"model":"deterministic","messages":[{"role":"user","content":"'
    raw = prefix + b"x" * max(0, size - len(prefix) - 4) + b'"}]}'
    if chunked:
        r = http.post(path, content=iter([raw[i : i + 65536] for i in range(0, len(raw), 65536)]))
    else:
        r = send(http, path, raw)
    check(r)
    if len(raw) > MAX_BODY:
        assert r.status_code == 413


@settings(FUZZ, max_examples=20)
@given(
    count=st.integers(2000, 2100),
    what=st.sampled_from(["messages", "tools"]),
)
def test_many_messages_or_tools(http: httpx.Client, count: int, what: str) -> None:
    body: dict[str, Any] = {"model": "deterministic", "messages": [{"role": "user", "content": "hi"}]}
    if what == "messages":
        body["messages"] = body["messages"] * count
    else:
        body["tools"] = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(count // 8)]
    r = send(http, "/chat/completions", json.dumps(body).encode())
    check(r)
    limit = 2048 if what == "messages" else 256
    assert (r.status_code == 400) == (len(body[what]) > limit)


# Header values as HTTP allows them: visible ASCII, inner spaces only.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.strip)


@FUZZ
@given(
    authorization=st.one_of(
        st.none(),
        HEADER_TEXT,
        HEADER_TEXT.map(lambda t: ("Bearer " + t).strip()),
        HEADER_TEXT.map(lambda t: ("Bearer palyra_" + t).strip()),
    ),
    agent=st.one_of(st.none(), HEADER_TEXT),
    session=st.one_of(st.none(), HEADER_TEXT),
    content_type=st.one_of(st.none(), HEADER_TEXT),
)
def test_odd_headers_and_tokens(
    fuzzed: Daemon,
    http: httpx.Client,
    authorization: str | None,
    agent: str | None,
    session: str | None,
    content_type: str | None,
) -> None:
    headers = {"authorization": authorization or ""}
    for name, value in (
        ("x-palyra-agent", agent),
        ("x-palyra-session", session),
        ("content-type", content_type),
    ):
        if value is not None:
            headers[name] = value
    body = json.dumps({"model": "deterministic", "messages": [{"role": "user", "content": "hi"}]}).encode()
    started = time.monotonic()
    r = httpx.post(fuzzed.v1 + "/chat/completions", content=body, headers=headers, timeout=10)
    assert time.monotonic() - started < RESPONSE_BOUND_S
    check(r)
    assert r.status_code in (200, 400, 401, 403)


@FUZZ
@given(model_id=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=80))
def test_model_lookup_with_any_id(http: httpx.Client, model_id: str) -> None:
    r = http.get("/models/" + quote(model_id, safe=""))
    check(r)
    assert r.status_code in (200, 404, 405)


@settings(FUZZ, max_examples=30)
@given(
    fields=st.dictionaries(
        st.sampled_from(["model", "language", "prompt", "temperature", "response_format", "x"]),
        HEADER_TEXT,
        max_size=6,
    ),
    audio=st.one_of(st.none(), st.binary(max_size=512)),
)
def test_transcription_forms(http: httpx.Client, fields: dict[str, str], audio: bytes | None) -> None:
    files = {"file": ("a.wav", audio, "audio/wav")} if audio is not None else None
    started = time.monotonic()
    r = http.post("/audio/transcriptions", data=fields, files=files)
    assert time.monotonic() - started < RESPONSE_BOUND_S
    assert r.status_code < 500, r.text[:500]
    assert_no_internals(r.text)
    if r.status_code >= 400:
        validate("ErrorResponse", r.json())


def test_daemon_survived_with_a_clean_log(fuzzed: Daemon, http: httpx.Client) -> None:
    """Runs last in this module: nothing above may have produced an unexpected error."""
    assert httpx.get(fuzzed.base_url + "/healthz", timeout=5).status_code == 200
    assert fuzzed.proc.poll() is None
    log = fuzzed.log()
    assert "unexpected error" not in log and "Traceback" not in log, log[-3000:]
