"""The fault matrix: every upstream fault, for both upstream kinds, streamed and not, with and without a
failover candidate. For each the client gets the documented error (or a successful failover), the
provider's breaker counts the call once, and the journal holds exactly one record with the outcome.

docs/ARCHITECTURE.md "Fault handling" is the table these tests hold the daemon to.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import openai
import pytest

from conftest import Daemon, start_daemon
from fakes import FakeAnthropic, FakeOpenAI, FakeUpstream, Reply

TIMEOUT_MS = 250  # every faulty provider's request_timeout_ms: "hangs forever" ends after this
COOLDOWN_MS = 600  # long enough to observe an open circuit on a busy machine
PROMPT = "one two three four five six seven eight"
KINDS = {"openai": "openai_compatible", "anthropic": "anthropic"}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
# Frames a default stream sends before the fault so that text has reached the client: OpenAI's role
# chunk and two words; Anthropic's message_start, content_block_start, ping and two words.
FRAMES_BEFORE = {"openai": 3, "anthropic": 5}
BODY_BYTES_BEFORE = 20  # for a plain JSON answer: headers and the start of the body


@dataclass(frozen=True)
class Fault:
    name: str
    reply: Callable[[str, bool], Reply]  # (kind, stream) -> what the upstream does
    status: int  # what the client gets when nothing can take over
    code: str
    retried: bool  # the provider's own retries apply (when nothing reached the client yet)
    mid_stream: bool = False  # when streaming, the fault comes after text reached the client
    streams: tuple[bool, ...] = (False, True)


def _status(status: int, **headers: str) -> Callable[[str, bool], Reply]:
    return lambda kind, stream: Reply(status=status, headers=dict(headers))


def _after_output(**fault: Any) -> Callable[[str, bool], Reply]:
    return lambda kind, stream: Reply(cut_after=FRAMES_BEFORE[kind] if stream else BODY_BYTES_BEFORE, **fault)


def _malformed_json(kind: str, stream: bool) -> Reply:
    if not stream:
        return Reply(raw=b'{"id": "x", "choices": [{"index": 0, "mess')
    if kind == "openai":
        return Reply(sse=['{"id": "x", "object": "chat.completion.chunk", "choi'])
    return Reply(sse=[("message_start", '{"type": "message_start", "mess')])


def _malformed_sse(kind: str, stream: bool) -> Reply:
    if not stream:  # an upstream that ignored stream=false
        return Reply(
            raw=b'data: {"id": "x"}\n\ndata: [DONE]\n\n', headers={"content-type": "text/event-stream"}
        )
    # A proxy or captive portal answering 200 with a page instead of an event stream.
    return Reply(raw=b"<html><body>upstream proxy</body></html>\n", headers={"content-type": "text/html"})


def _error_event(kind: str, stream: bool) -> Reply:
    if kind == "openai":
        return Reply(sse=[FakeOpenAI.error_body(503, "The engine is currently overloaded")])
    return Reply(sse=[("message_start", _message_start()), FakeAnthropic.error_event()])


def _error_event_after_output(kind: str, stream: bool) -> Reply:
    """Two words, then the upstream's own error frame (Anthropic: overloaded_error)."""
    words = ["echo:", " one"]
    if kind == "openai":
        chunks: list[Any] = [
            {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [c]}
            for c in ({"index": 0, "delta": {"content": w}, "finish_reason": None} for w in words)
        ]
        return Reply(sse=[*chunks, FakeOpenAI.error_body(500)])
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
        )
        for w in words
    ]
    return Reply(
        sse=[
            ("message_start", _message_start()),
            ("content_block_start", start),
            *deltas,
            FakeAnthropic.error_event(),
        ]
    )


def _message_start() -> dict[str, Any]:
    message = {"id": "msg_x", "type": "message", "role": "assistant", "content": [], "model": "m"}
    return {"type": "message_start", "message": {**message, "usage": {"input_tokens": 3, "output_tokens": 1}}}


FAULTS = [
    Fault("rate_limited_429", _status(429, **{"retry-after": "1"}), 502, "rate_limited", retried=True),
    Fault("server_error_500", _status(500), 502, "transient", retried=True),
    Fault("unavailable_503", _status(503), 502, "transient", retried=True),
    Fault("overloaded_529", _status(529), 502, "transient", retried=True),
    Fault("error_event_before_output", _error_event, 502, "transient", retried=True, streams=(True,)),
    Fault(
        "error_event_mid_stream",
        _error_event_after_output,
        502,
        "transient",
        retried=True,
        mid_stream=True,
        streams=(True,),
    ),
    Fault("timeout_before_headers", lambda k, s: Reply(delay_s=5), 504, "upstream_timeout", retried=True),
    Fault(
        "timeout_mid_stream", _after_output(hang=True), 504, "upstream_timeout", retried=True, mid_stream=True
    ),
    Fault("connection_reset", lambda k, s: Reply(reset=True), 502, "transient", retried=True),
    Fault("reset_mid_stream", _after_output(reset=True), 502, "transient", retried=True, mid_stream=True),
    Fault("malformed_json", _malformed_json, 502, "malformed", retried=False),
    Fault("malformed_sse", _malformed_sse, 502, "malformed", retried=False),
    Fault("hangs_forever", lambda k, s: Reply(hang=True), 504, "upstream_timeout", retried=True),
    Fault(
        "silent_after_headers",
        lambda k, s: Reply(hang=True, cut_after=0),
        504,
        "upstream_timeout",
        retried=True,
    ),
]


class Upstreams:
    """One fake per faulty provider (retrying alone, or failing over) and a healthy backup."""

    def __init__(self) -> None:
        self.fakes: dict[str, FakeUpstream] = {
            "openai": FakeOpenAI().start(),
            "openai-fo": FakeOpenAI().start(),
            "anthropic": FakeAnthropic().start(),
            "anthropic-fo": FakeAnthropic().start(),
            "backup": FakeOpenAI().start(),
        }

    def reset(self) -> None:
        for fake in self.fakes.values():
            fake.reset_state()

    def stop(self) -> None:
        for fake in self.fakes.values():
            fake.stop()


def _config(ups: Upstreams) -> str:
    parts = [
        "[server]\njournal_flush_interval_ms = 20\n\n[model_provider]\nfailover_enabled = false\n",
    ]
    for name, fake in ups.fakes.items():
        kind = KINDS.get(name.removesuffix("-fo"), "openai_compatible")
        base = fake.url + "/v1" if isinstance(fake, FakeOpenAI) else fake.url
        retries = 1 if name in KINDS else 0
        parts.append(
            f'[[model_provider.providers]]\nprovider_id = "{name}"\nkind = "{kind}"\nbase_url = "{base}"\n'
            f"allow_private_base_url = true\nmax_retries = {retries}\nretry_backoff_ms = 5\n"
            f"request_timeout_ms = {TIMEOUT_MS}\nconnect_timeout_ms = 1000\n"
            f"circuit_breaker = {{ failure_threshold = 2, cooldown_ms = {COOLDOWN_MS} }}\n"
        )
        fallback = '["backup"]' if name.endswith("-fo") else "[]"
        parts.append(
            f'[[model_provider.models]]\nmodel_id = "{name}"\nprovider_id = "{name}"\n'
            f"fallback_model_ids = {fallback}\n"
        )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def ups() -> Iterator[Upstreams]:
    u = Upstreams()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(ups: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("faults"), config=_config(ups))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def sdk(gw: Daemon) -> openai.OpenAI:
    token, _ = gw.create_token(name="faults", scopes=["*"])
    return gw.client(token, timeout=10)


@pytest.fixture(scope="module")
def admin(gw: Daemon) -> Iterator[httpx.Client]:
    with gw.admin() as client:
        yield client


@pytest.fixture(autouse=True)
def _fresh(ups: Upstreams) -> Iterator[None]:
    ups.reset()
    yield
    ups.reset()


@dataclass
class Outcome:
    request_id: str
    text: str = ""
    error: openai.APIError | None = None
    headers: dict[str, str] | None = None


def chat(sdk: openai.OpenAI, model: str, stream: bool, session: str) -> Outcome:
    """One request through the SDK; an error (HTTP or an error chunk mid-stream) is returned, not raised."""
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "extra_headers": {"X-Palyra-Session": session},
    }
    try:
        raw = sdk.chat.completions.with_raw_response.create(stream=stream, **kwargs)
    except openai.APIStatusError as err:
        headers = dict(err.response.headers)
        return Outcome(headers["x-request-id"], error=err, headers=headers)
    out = Outcome(raw.headers["x-request-id"], headers=dict(raw.headers))
    if not stream:
        out.text = raw.parse().choices[0].message.content or ""  # type: ignore[union-attr]
        return out
    try:
        for chunk in raw.parse():  # type: ignore[union-attr]
            out.text += "".join(c.delta.content or "" for c in chunk.choices)
    except openai.APIError as err:
        out.error = err
    return out


def circuit(admin: httpx.Client, provider_id: str) -> dict[str, Any]:
    return dict(admin.get(f"/providers/{provider_id}").json()["circuit"])


def record(admin: httpx.Client, request_id: str) -> dict[str, Any]:
    """The request's journal record, polled at a pace that suits a 20 ms flush interval."""
    deadline = time.monotonic() + 5
    while True:
        rows = admin.get("/usage/runs", params={"request_id": request_id}).json()["data"]
        if rows:
            return dict(rows[0])
        assert time.monotonic() < deadline, f"no run record for {request_id}"
        time.sleep(0.01)


def session_runs(admin: httpx.Client, session: str) -> list[dict[str, Any]]:
    return list(admin.get("/usage/runs", params={"session": session, "limit": 10}).json()["data"])


MATRIX = [
    pytest.param(
        fault,
        kind,
        stream,
        failover,
        id=f"{fault.name}-{kind}-{'stream' if stream else 'json'}-{'failover' if failover else 'alone'}",
    )
    for fault in FAULTS
    for kind in KINDS
    for stream in fault.streams
    for failover in (False, True)
]


@pytest.mark.parametrize(("fault", "kind", "stream", "failover"), MATRIX)
def test_fault(
    admin: httpx.Client,
    sdk: openai.OpenAI,
    ups: Upstreams,
    fault: Fault,
    kind: str,
    stream: bool,
    failover: bool,
) -> None:
    provider = f"{kind}-fo" if failover else kind
    upstream, backup = ups.fakes[provider], ups.fakes["backup"]
    mid_stream = stream and fault.mid_stream
    attempts_here = 2 if fault.retried and not failover and not mid_stream else 1
    upstream.script(PATHS[kind], *[fault.reply(kind, stream)] * attempts_here)
    session = "s-" + secrets.token_hex(6)

    started = time.monotonic()
    out = chat(sdk, provider, stream, session)
    elapsed = time.monotonic() - started

    # What the client sees.
    served_by_backup = failover and not mid_stream
    if served_by_backup:
        assert out.error is None, out.error
        assert out.text == f"echo: {PROMPT}"
        assert out.headers and out.headers["x-palyra-provider"] == "backup"
        assert out.headers["x-palyra-model"] == "backup"
    elif mid_stream:
        assert isinstance(out.error, openai.APIError) and not isinstance(out.error, openai.APIStatusError)
        assert out.error.code == fault.code and out.error.type == "upstream_error"
        assert out.text and f"echo: {PROMPT}".startswith(out.text)  # what arrived before the fault
    else:
        assert isinstance(out.error, openai.APIStatusError), out
        assert out.error.status_code == fault.status
        body = out.error.response.json()["error"]
        assert body["type"] == "upstream_error" and body["code"] == fault.code
        assert out.headers and out.headers["x-palyra-provider"] == provider
        if fault.name == "rate_limited_429":
            assert out.headers["retry-after"] == "1"
            assert elapsed >= 1.0  # the retry waited for the upstream's Retry-After
    assert len(upstream.requests_for(PATHS[kind])) == attempts_here
    assert len(backup.requests) == (1 if served_by_backup else 0)
    assert elapsed < 3.0 + (1.0 if fault.name == "rate_limited_429" else 0.0)  # bounded, busy machine or not

    # The journal: exactly one record, with the outcome.
    run = record(admin, out.request_id)
    assert run["session_id"] == session and run["stream"] is stream
    if served_by_backup:
        assert run["status"] == "ok" and run["http_status"] == 200 and run["error_class"] is None
        assert run["provider_id"] == "backup" and run["attempts"] == 2
    else:
        assert run["status"] == "error" and run["error_class"] == fault.code
        assert run["http_status"] == fault.status and run["provider_id"] == provider
        assert run["attempts"] == attempts_here
    if mid_stream:
        assert run["usage_source"] == "estimated" and run["completion_tokens"] > 0

    # The breaker counted the failed call once, however many attempts it made; the backup's is clean.
    state = circuit(admin, provider)
    assert (state["state"], state["consecutive_failures"]) == ("closed", 1)
    assert circuit(admin, "backup")["consecutive_failures"] == 0
    # A success resets the count (two failed calls in a row would open it: test_breaker_opens_...).
    healthy = chat(sdk, provider, stream, "s-heal-" + secrets.token_hex(4))
    assert healthy.error is None and healthy.headers and healthy.headers["x-palyra-provider"] == provider
    assert circuit(admin, provider)["consecutive_failures"] == 0

    assert [r["request_id"] for r in session_runs(admin, session)] == [out.request_id]


BREAKER_FAULTS = {f.name: f for f in FAULTS if f.name in ("server_error_500", "timeout_mid_stream")}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_breaker_opens_refuses_then_probe_closes(
    admin: httpx.Client, sdk: openai.OpenAI, ups: Upstreams, kind: str, stream: bool
) -> None:
    """Two failed calls open the circuit (streamed ones too, even after output); an open circuit refuses
    without calling the upstream (503 with Retry-After) or fails over at once; after the cooldown one
    probe closes it."""
    fault = BREAKER_FAULTS["timeout_mid_stream" if stream else "server_error_500"]
    upstream = ups.fakes[kind]
    upstream.script(PATHS[kind], *[fault.reply(kind, stream)] * 4)
    for _ in range(2):
        failed = chat(sdk, kind, stream, "s-" + secrets.token_hex(6))
        assert failed.error is not None and failed.error.code == fault.code
    state = circuit(admin, kind)
    assert state["state"] == "open" and state["consecutive_failures"] == 2
    seen = len(upstream.requests)

    session = "s-" + secrets.token_hex(6)
    refused = chat(sdk, kind, stream, session)
    assert isinstance(refused.error, openai.APIStatusError) and refused.error.status_code == 503
    assert refused.error.code == "no_healthy_provider" and refused.headers
    assert int(refused.headers["retry-after"]) >= 1
    run = record(admin, refused.request_id)
    assert run["status"] == "error" and run["error_class"] == "no_healthy_provider"
    assert run["http_status"] == 503 and run["attempts"] == 0
    assert len(upstream.requests) == seen  # refused without a call

    # The failover model's provider is a different one: an open circuit here does not stop it.
    ups.fakes[f"{kind}-fo"].script(PATHS[kind], *[Reply(status=500)] * 2)
    for _ in range(2):
        chat(sdk, f"{kind}-fo", stream, "s-" + secrets.token_hex(6))
    assert circuit(admin, f"{kind}-fo")["state"] == "open"
    fo_seen = len(ups.fakes[f"{kind}-fo"].requests)
    moved = chat(sdk, f"{kind}-fo", stream, "s-" + secrets.token_hex(6))
    assert moved.error is None and moved.headers and moved.headers["x-palyra-provider"] == "backup"
    assert len(ups.fakes[f"{kind}-fo"].requests) == fo_seen  # skipped, not tried

    upstream.reset_state()
    ups.fakes[f"{kind}-fo"].reset_state()
    time.sleep(COOLDOWN_MS / 1000 + 0.05)  # past the cooldown: half-open, the next call is the probe
    assert circuit(admin, kind)["state"] == "half_open"
    probe = chat(sdk, kind, stream, "s-" + secrets.token_hex(6))
    assert probe.error is None and probe.text == f"echo: {PROMPT}"
    closed = circuit(admin, kind)
    assert (closed["state"], closed["consecutive_failures"]) == ("closed", 0)
    back = chat(sdk, f"{kind}-fo", stream, "s-" + secrets.token_hex(6))
    assert back.headers and back.headers["x-palyra-provider"] == f"{kind}-fo"
