"""OpenAI-compatible and Anthropic upstreams behind the /v1 surface: fake upstreams (real HTTP servers)
with scripted replies and faults, the official openai SDK in front, the journal checked for each."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from conftest import Daemon, start_daemon
from fakes import FakeAnthropic, FakeOpenAI, Reply
from openai_schema import validate

OPENAI_KEY = "sk-proj-FAKEOPENAIKEY-canary-0123456789"
ANTHROPIC_KEY = "sk-ant-FAKEANTHROPICKEY-canary-0123456789"


class Upstreams:
    def __init__(self) -> None:
        self.oa = FakeOpenAI(api_key=OPENAI_KEY).start()
        self.an = FakeAnthropic(api_key=ANTHROPIC_KEY).start()
        self.flaky = FakeOpenAI().start()
        self.brk = FakeOpenAI().start()
        self.slow = FakeOpenAI().start()
        self.narrow = FakeOpenAI().start()

    def all(self) -> list[Any]:
        return [self.oa, self.an, self.flaky, self.brk, self.slow, self.narrow]

    def reset(self) -> None:
        for f in self.all():
            f.reset_state()

    def stop(self) -> None:
        for f in self.all():
            f.stop()


def provider(pid: str, kind: str, url: str, extra: str = "") -> str:
    return (
        f'[[model_provider.providers]]\nprovider_id = "{pid}"\nkind = "{kind}"\nbase_url = "{url}"\n'
        f"allow_private_base_url = true\nretry_backoff_ms = 5\n{extra}\n"
    )


def model(mid: str, pid: str, extra: str = "") -> str:
    return f'[[model_provider.models]]\nmodel_id = "{mid}"\nprovider_id = "{pid}"\n{extra}\n'


@pytest.fixture(scope="module")
def ups() -> Iterator[Upstreams]:
    u = Upstreams()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(ups: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    config = (
        "[model_provider]\nfailover_enabled = false\n"
        + provider("openai", "openai_compatible", ups.oa.base_url, 'api_key_env = "FAKE_OPENAI_KEY"')
        + provider("anthropic", "anthropic", ups.an.base_url, 'api_key_env = "FAKE_ANTHROPIC_KEY"')
        + provider("flaky", "openai_compatible", ups.flaky.base_url, "max_retries = 0")
        + provider(
            "breaker",
            "openai_compatible",
            ups.brk.base_url,
            "max_retries = 0\ncircuit_breaker = { failure_threshold = 2, cooldown_ms = 400 }",
        )
        + provider(
            "slow", "openai_compatible", ups.slow.base_url, "max_retries = 0\nrequest_timeout_ms = 300"
        )
        + provider(
            "narrow", "openai_compatible", ups.narrow.base_url, "max_concurrency = 1\nconcurrency_wait_ms = 0"
        )
        + model("gpt-4o-mini", "openai", 'upstream_model = "gpt-4o-mini-2024-07-18"')
        + model("text-embedding-3-small", "openai", 'role = "embeddings"')
        + model("whisper-1", "openai", 'role = "audio_transcription"')
        + model("claude", "anthropic", 'upstream_model = "claude-sonnet-4-5"\nmax_output_tokens = 1000')
        + model("flaky-model", "flaky", 'fallback_model_ids = ["claude"]')
        + model("text-only", "flaky", 'capabilities = { vision = false }\nfallback_model_ids = ["claude"]')
        + model("text-only-alone", "flaky", "capabilities = { vision = false }")
        + model("breaker-model", "breaker")
        + model("slow-model", "slow")
        + model("narrow-model", "narrow")
    )
    d = start_daemon(
        tmp_path_factory.mktemp("gw"),
        config=config,
        env={"FAKE_OPENAI_KEY": OPENAI_KEY, "FAKE_ANTHROPIC_KEY": ANTHROPIC_KEY},
    )
    yield d
    d.stop()


@pytest.fixture(scope="module")
def sdk(gw: Daemon) -> openai.OpenAI:
    token, _ = gw.create_token(name="upstreams", scopes=["*"])
    return gw.client(token)


@pytest.fixture(autouse=True)
def _fresh(ups: Upstreams) -> None:
    ups.reset()


def sse_lines(resp: Any) -> list[str]:
    return [line for line in resp.iter_lines() if line]


# --- OpenAI-compatible ---------------------------------------------------------------------------


def test_openai_chat_forwarded_with_key_and_upstream_model(
    gw: Daemon, sdk: openai.OpenAI, ups: Upstreams
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello upstream"}],
        temperature=0.3,
        logit_bias={"50256": -100},  # an OpenAI parameter Palyra does not model: passed through
        metadata={"palyra_agent": "a1", "purpose": "test"},
    )
    body = json.loads(raw.content)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "echo: hello upstream"
    assert body["model"] == "gpt-4o-mini"
    rec = ups.oa.last
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert rec.json["model"] == "gpt-4o-mini-2024-07-18"
    assert rec.json["temperature"] == 0.3 and rec.json["logit_bias"] == {"50256": -100}
    assert rec.json["metadata"] == {"purpose": "test"}
    run = gw.run(raw.headers["x-request-id"])
    assert run["provider_id"] == "openai" and run["usage_source"] == "provider"
    assert run["prompt_tokens"] == body["usage"]["prompt_tokens"] and run["attempts"] == 1
    assert run["upstream_model"] == "gpt-4o-mini-2024-07-18"


def test_openai_stream_injects_usage_and_strips_it(gw: Daemon, sdk: openai.OpenAI, ups: Upstreams) -> None:
    with sdk.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four"}], stream=True
    ) as resp:
        rid = resp.headers["x-request-id"]
        lines = sse_lines(resp)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert "usage" not in c  # the client did not ask for usage
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: one two three four"
    assert ups.oa.last.json["stream_options"] == {"include_usage": True}
    run = gw.run(rid)
    assert run["usage_source"] == "provider" and run["completion_tokens"] > 0 and run["stream"] is True


def test_openai_stream_with_usage_requested(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert chunks[-1].model_extra and chunks[-1].model_extra["palyra"]["provider_id"] == "openai"


def test_openai_tools_roundtrip(sdk: openai.OpenAI, ups: Upstreams) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    out = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "use it"}],
        tools=tools,
        tool_choice="required",  # type: ignore[arg-type]
    )
    assert out.choices[0].finish_reason == "tool_calls"
    assert out.choices[0].message.tool_calls[0].function.name == "lookup"  # type: ignore[index, union-attr]
    assert ups.oa.last.json["tool_choice"] == "required"
    streamed = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "use it"}],
            tools=tools,
            stream=True,  # type: ignore[arg-type]
        )
    )
    names = [
        tc.function.name
        for c in streamed
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
        if tc.function and tc.function.name
    ]
    assert names == ["lookup"]


def test_openai_embeddings_and_transcription(gw: Daemon, sdk: openai.OpenAI, ups: Upstreams) -> None:
    emb = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=4)
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 4
    assert ups.oa.last.json["dimensions"] == 4
    raw = sdk.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.mp3", b"ID3fakeaudio", "audio/mpeg"), response_format="srt", language="en"
    )
    assert raw.http_response.text.startswith("1\n")
    rec = ups.oa.last
    assert rec.path == "/v1/audio/transcriptions"
    assert rec.form is not None and rec.form["model"] == "whisper-1" and rec.form["language"] == "en"
    assert rec.files["file"].data == b"ID3fakeaudio"
    assert gw.run(raw.headers["x-request-id"])["provider_id"] == "openai"


# --- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_chat_translated(gw: Daemon, sdk: openai.OpenAI, ups: Upstreams) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="claude",
        messages=[{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi claude"}],
        stop="END",
    )
    body = json.loads(raw.content)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "echo: hi claude"
    rec = ups.an.last
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == ANTHROPIC_KEY and rec.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in rec.headers
    assert rec.json["model"] == "claude-sonnet-4-5" and rec.json["max_tokens"] == 1000
    assert rec.json["system"] == [{"type": "text", "text": "be kind"}]
    assert rec.json["stop_sequences"] == ["END"]
    run = gw.run(raw.headers["x-request-id"])
    assert run["provider_id"] == "anthropic" and run["prompt_tokens"] == body["usage"]["prompt_tokens"]


def test_anthropic_stream_and_tools(gw: Daemon, sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.with_streaming_response.create(
        model="claude",
        messages=[{"role": "user", "content": "stream this please"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        rid = resp.headers["x-request-id"]
        lines = sse_lines(resp)
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == (
        "echo: stream this please"
    )
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert gw.run(rid)["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"]
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    out = sdk.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "time?"}], tools=tools
    )  # type: ignore[arg-type]
    assert out.choices[0].finish_reason == "tool_calls"
    call = out.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {}  # type: ignore[union-attr]


# --- resilience ----------------------------------------------------------------------------------


def test_retry_honours_retry_after_then_succeeds(gw: Daemon, sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.oa.script(
        "/v1/chat/completions",
        FakeOpenAI.error_reply(429, headers={"retry-after-ms": "200"}),
        FakeOpenAI.error_reply(503),
    )
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "retry me"}]
    )
    assert raw.http_response.status_code == 200
    calls = ups.oa.requests_for("/v1/chat/completions")
    assert len(calls) == 3
    assert calls[1].received_at - calls[0].received_at >= 0.19  # waited for retry-after-ms
    assert gw.run(raw.headers["x-request-id"])["attempts"] == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 408])
def test_retryable_statuses(sdk: openai.OpenAI, ups: Upstreams, status: int) -> None:
    ups.oa.script("/v1/chat/completions", FakeOpenAI.error_reply(status))
    out = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].message.content == "echo: x"
    assert len(ups.oa.requests_for("/v1/chat/completions")) == 2


def test_exhausted_retries_are_502_with_sanitised_message(
    gw: Daemon, sdk: openai.OpenAI, ups: Upstreams
) -> None:
    leak = f"upstream exploded while using key {OPENAI_KEY} and Bearer {OPENAI_KEY}"
    ups.oa.script("/v1/chat/completions", *[FakeOpenAI.error_reply(500, leak)] * 3)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    err = info.value
    assert err.status_code == 502
    body = err.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["type"] == "upstream_error" and body["error"]["code"] == "transient"
    assert OPENAI_KEY not in err.response.text and "exploded" in body["error"]["message"]
    assert len(ups.oa.requests_for("/v1/chat/completions")) == 3
    run = gw.run(err.response.headers["x-request-id"])
    assert run["status"] == "error" and run["http_status"] == 502 and run["attempts"] == 3
    assert OPENAI_KEY not in (run["error_message"] or "")
    assert OPENAI_KEY not in gw.log()


def test_client_errors_are_not_retried_nor_failed_over(sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.flaky.script(
        "/v1/chat/completions",
        FakeOpenAI.error_reply(400, "This model's maximum context length is 8192 tokens"),
    )
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="flaky-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "context_length_exceeded"
    assert len(ups.flaky.requests) == 1 and ups.an.requests == []


def test_auth_failure_is_502_auth_invalid(sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.flaky.script("/v1/chat/completions", FakeOpenAI.error_reply(401))
    ups.an.script("/v1/messages", FakeAnthropic.error_reply(401))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="flaky-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and info.value.code == "auth_invalid"


def test_failover_to_fallback_model(gw: Daemon, sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.flaky.script("/v1/chat/completions", FakeOpenAI.error_reply(503))
    raw = sdk.chat.completions.with_raw_response.create(
        model="flaky-model", messages=[{"role": "user", "content": "fail over"}]
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-palyra-model"] == "claude" and raw.headers["x-palyra-provider"] == "anthropic"
    assert json.loads(raw.content)["model"] == "claude"
    run = gw.run(raw.headers["x-request-id"])
    assert run["requested_model"] == "flaky-model" and run["model_id"] == "claude" and run["attempts"] == 2


def test_stream_failover_before_first_byte(sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.flaky.script("/v1/chat/completions", Reply(reset=True))
    chunks = list(
        sdk.chat.completions.create(
            model="flaky-model", messages=[{"role": "user", "content": "s"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: s"
    assert chunks[0].model == "claude"


def test_vision_goes_to_capable_fallback_or_400(sdk: openai.OpenAI, ups: Upstreams) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    msg = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}]
    out = sdk.chat.completions.create(model="text-only", messages=msg)  # type: ignore[arg-type]
    assert out.model == "claude"
    assert ups.an.last.json["messages"][0]["content"][1]["source"] == {
        "type": "url",
        "url": "https://example.com/cat.png",
    }
    assert ups.flaky.requests == []
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="text-only-alone", messages=msg)  # type: ignore[arg-type]
    assert info.value.code == "model_not_vision_capable"


def test_circuit_opens_then_half_open_probe_closes_it(gw: Daemon, sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.brk.script("/v1/chat/completions", FakeOpenAI.error_reply(500), FakeOpenAI.error_reply(500))
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as info:
            sdk.chat.completions.create(model="breaker-model", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 502
    with gw.admin() as c:
        status = c.get("/providers/breaker").json()
    assert status["circuit"]["state"] == "open" and status["health"] == "cooling_down"
    # Open: refused without touching the upstream, with Retry-After.
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="breaker-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503 and info.value.code == "no_healthy_provider"
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert len(ups.brk.requests) == 2
    time.sleep(0.45)  # past the cooldown: half-open, one probe goes through and succeeds
    out = sdk.chat.completions.create(model="breaker-model", messages=[{"role": "user", "content": "probe"}])
    assert out.choices[0].message.content == "echo: probe"
    with gw.admin() as c:
        assert c.get("/providers/breaker").json()["circuit"]["state"] == "closed"
    metrics = httpx.get(gw.base_url + "/metrics").text
    assert 'palyra_provider_circuit_state{provider="breaker"} 0.0' in metrics


def test_timeout_before_headers_is_504(gw: Daemon, sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.slow.script("/v1/chat/completions", Reply(delay_s=2.0))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="slow-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"
    assert time.monotonic() - started < 1.5
    assert gw.run(info.value.response.headers["x-request-id"])["error_class"] == "upstream_timeout"


def test_malformed_json_is_502(sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.flaky.script("/v1/chat/completions", Reply(raw=b"{not json"))
    ups.an.script("/v1/messages", Reply(raw=b"<html>oops</html>"))
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="flaky-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and info.value.code == "malformed"


def test_stream_cut_midway_is_an_error_chunk_and_not_retried(
    gw: Daemon, sdk: openai.OpenAI, ups: Upstreams
) -> None:
    ups.oa.script("/v1/chat/completions", Reply(cut_after=3))
    with sdk.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
    ) as resp:
        rid = resp.headers["x-request-id"]
        lines = sse_lines(resp)
    assert lines[-1] != "data: [DONE]"
    last = json.loads(lines[-1][6:])
    validate("ErrorResponse", last)
    assert len(ups.oa.requests_for("/v1/chat/completions")) == 1
    run = gw.run(rid)
    assert run["status"] == "error" and run["usage_source"] == "estimated" and run["completion_tokens"] > 0


def test_anthropic_error_event_mid_stream(sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.an.script(
        "/v1/messages",
        Reply(
            sse=[
                (
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": "m",
                            "type": "message",
                            "role": "assistant",
                            "content": [],
                            "model": "c",
                            "usage": {"input_tokens": 3, "output_tokens": 1},
                        },
                    },
                ),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "partial"},
                    },
                ),
                ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ]
        ),
    )
    with sdk.chat.completions.with_streaming_response.create(
        model="claude", messages=[{"role": "user", "content": "x"}], stream=True
    ) as resp:
        lines = sse_lines(resp)
    assert json.loads(lines[-2][6:])["choices"][0]["delta"]["content"] == "partial"
    assert json.loads(lines[-1][6:])["error"]["code"] == "transient"  # as for HTTP 529


def test_client_disconnect_cancels_upstream_and_records_estimate(
    gw: Daemon, token_for: str, ups: Upstreams
) -> None:
    words = " ".join(f"w{i}" for i in range(60))
    ups.oa.script("/v1/chat/completions", Reply(chunk_delay_s=0.05))
    with httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": words}]},
        headers={"Authorization": f"Bearer {token_for}"},
    ) as resp:
        rid = resp.headers["x-request-id"]
        for i, _ in enumerate(resp.iter_lines()):
            if i >= 6:
                break
    run = gw.run(rid)
    assert run["status"] == "cancelled" and run["http_status"] == 499
    assert run["usage_source"] == "estimated" and run["completion_tokens"] > 0
    # The upstream saw the connection go away.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not ups.oa.last.disconnected:
        time.sleep(0.05)
    assert ups.oa.last.disconnected


def test_concurrency_limit_is_503_when_full(gw: Daemon, token_for: str, ups: Upstreams) -> None:
    ups.narrow.script("/v1/chat/completions", Reply(delay_s=0.6))
    results: list[int] = []

    def call() -> None:
        r = httpx.post(
            gw.v1 + "/chat/completions",
            json={"model": "narrow-model", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {token_for}"},
            timeout=10,
        )
        results.append(r.status_code)
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "provider_busy" and "retry-after" in r.headers

    first = threading.Thread(target=call)
    first.start()
    time.sleep(0.2)
    call()
    first.join()
    assert sorted(results) == [200, 503]


# --- operations ----------------------------------------------------------------------------------


def test_providers_status_test_and_discover(gw: Daemon, ups: Upstreams) -> None:
    with gw.admin() as c:
        listed = {p["provider_id"]: p for p in c.get("/providers").json()["data"]}
        assert listed["openai"]["credential_source"] == "env:FAKE_OPENAI_KEY"
        assert listed["openai"]["health"] in {"healthy", "degraded"}
        tested = c.post("/providers/openai/test").json()
        assert tested["state"] == "ok"
        found = c.post("/providers/anthropic/discover").json()
        assert found["state"] == "ok" and found["discovered_model_ids"]
        ups.oa.script("/v1/models", FakeOpenAI.error_reply(401, f"bad key {OPENAI_KEY}"))
        failed = c.post("/providers/openai/test").json()
        assert failed["state"] == "auth_failed" and OPENAI_KEY not in json.dumps(failed)
        assert c.post("/providers/nope/test").status_code == 404
        text = json.dumps(c.get("/providers").json())
    assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text


@pytest.fixture(scope="module")
def token_for(gw: Daemon) -> str:
    token, _ = gw.create_token(name="raw", scopes=["*"])
    return token


def test_missing_key_env_is_reported(tmp_path: Path, ups: Upstreams) -> None:
    config = provider(
        "openai", "openai_compatible", ups.oa.base_url, 'api_key_env = "NOT_SET_ANYWHERE"'
    ) + model("gpt-4o-mini", "openai")
    d = start_daemon(tmp_path, config=config)
    try:
        with d.admin() as c:
            status = c.get("/providers/openai").json()
        assert status["health"] == "unavailable" and status["credential_configured"] is False
        token, _ = d.create_token(name="t")
        r = httpx.post(
            d.v1 + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 502 and r.json()["error"]["code"] == "auth_invalid"
        assert "NOT_SET_ANYWHERE" in r.json()["error"]["message"]
        assert ups.oa.requests == []
    finally:
        d.stop()


def test_automatic_failover_to_another_provider(tmp_path: Path, ups: Upstreams) -> None:
    config = (
        provider("flaky", "openai_compatible", ups.flaky.base_url, "max_retries = 0")
        + provider("anthropic", "anthropic", ups.an.base_url, 'api_key_env = "FAKE_ANTHROPIC_KEY"')
        + model("flaky-model", "flaky")
        + model("claude", "anthropic")
    )
    d = start_daemon(tmp_path, config=config, env={"FAKE_ANTHROPIC_KEY": ANTHROPIC_KEY})
    try:
        ups.flaky.script("/v1/chat/completions", FakeOpenAI.error_reply(529))
        token, _ = d.create_token(name="t")
        r = httpx.post(
            d.v1 + "/chat/completions",
            json={"model": "flaky-model", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200 and r.headers["x-palyra-model"] == "claude"
    finally:
        d.stop()


def test_private_base_url_refused_without_opt_in(tmp_path: Path) -> None:
    config = (
        '[[model_provider.providers]]\nprovider_id = "local"\nkind = "openai_compatible"\n'
        'base_url = "https://10.1.2.3/v1"\n' + model("m", "local")
    )
    d = start_daemon(tmp_path, config=config, wait=False)
    assert d.proc.wait(30) == 2
    assert "model_provider.providers[0]" in d.log() and "allow_private_base_url" in d.log()


def test_cli_providers_list_and_test(gw: Daemon, ups: Upstreams) -> None:
    from test_lifecycle import cli

    env = {
        "PALYRA_STATE_DIR": str(gw.state_dir),
        "PALYRA_PORT": gw.base_url.rsplit(":", 1)[1],
        "PALYRA_ADMIN_TOKEN": gw.admin_token,
        "FAKE_OPENAI_KEY": OPENAI_KEY,
    }
    listed = cli("providers", "list", "--json", "--config", str(gw.config_path), env=env)
    assert listed.returncode == 0, listed.stderr
    assert {p["provider_id"] for p in json.loads(listed.stdout)} >= {"openai", "anthropic"}
    table = cli("providers", "list", "--config", str(gw.config_path), env=env)
    assert "openai" in table.stdout and "circuit" in table.stdout
    tested = cli("providers", "test", "openai", "--config", str(gw.config_path), env=env)
    assert tested.returncode == 0 and "ok" in tested.stdout
    ups.oa.script("/v1/models", FakeOpenAI.error_reply(401))
    failed = cli("providers", "test", "openai", "--json", "--config", str(gw.config_path), env=env)
    assert failed.returncode == 1 and json.loads(failed.stdout)[0]["state"] == "auth_failed"
    # With no daemon on the configured port the probe runs from the CLI itself.
    env["PALYRA_PORT"] = "1"
    local = cli("providers", "test", "openai", "--json", "--config", str(gw.config_path), env=env)
    assert local.returncode == 0, local.stderr + local.stdout
    assert json.loads(local.stdout)[0]["state"] == "ok"
    offline = cli("providers", "list", "--config", str(gw.config_path), env=env)
    assert "not reachable" in offline.stderr


def test_malformed_sse_before_output_fails_over_or_errors(sdk: openai.OpenAI, ups: Upstreams) -> None:
    ups.oa.script("/v1/chat/completions", Reply(sse=["{this is not json", "[DONE]"]))
    with pytest.raises(openai.APIStatusError) as info:
        list(
            sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert info.value.status_code == 502 and info.value.code == "malformed"


def test_utf8_split_across_reads_survives(sdk: openai.OpenAI, ups: Upstreams) -> None:
    text = "héllo wörld ☃ 日本語 🎉"
    ups.oa.script("/v1/chat/completions", Reply(split_utf8=True))
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {text}"
    ups.an.script("/v1/messages", Reply(split_utf8=True))
    chunks = list(
        sdk.chat.completions.create(model="claude", messages=[{"role": "user", "content": text}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {text}"


def test_anthropic_json_schema_has_no_tool_envelope(sdk: openai.OpenAI, ups: Upstreams) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ups.an.script(
        "/v1/messages",
        Reply(
            json={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "json_response", "input": {"city": "Oslo"}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4},
            }
        ),
    )
    out = sdk.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "where?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert json.loads(out.choices[0].message.content or "") == {"city": "Oslo"}
    assert out.choices[0].finish_reason == "stop" and not out.choices[0].message.tool_calls
    assert out.usage is not None and out.usage.prompt_tokens == 14
    assert out.usage.prompt_tokens_details is not None and out.usage.prompt_tokens_details.cached_tokens == 4
    sent = ups.an.last.json
    assert sent["tool_choice"] == {"type": "tool", "name": "json_response"}
