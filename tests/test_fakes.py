"""Self-tests for the fake upstream servers in ``tests/fakes``."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections.abc import Iterator

import aiohttp
import httpx2 as httpx
import pytest

from fakes import FakeAnthropic, FakeOpenAI, Reply, UploadedFile, parse_sse

OPENAI_KEY = "sk-fake-test"
ANTHROPIC_KEY = "sk-ant-fake-test"
ANTHROPIC_HEADERS = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture
def oai(openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    openai_server.reset_state()
    yield openai_server
    openai_server.reset_state()


@pytest.fixture
def ant(anthropic_server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    anthropic_server.reset_state()
    yield anthropic_server
    anthropic_server.reset_state()


@pytest.fixture(scope="module")
def oai_client(openai_server: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=openai_server.base_url, headers={"Authorization": f"Bearer {OPENAI_KEY}"}, timeout=5
    ) as client:
        yield client


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def chat_body(text: str = "hello there world", **extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def data_frames(raw: bytes) -> list[str]:
    return [data for _event, data in parse_sse(raw)]


# --------------------------------------------------------------------------- OpenAI


def test_openai_chat_default_non_stream(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    body = chat_body(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
        ]
    )
    resp = oai_client.post("/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    out = resp.json()
    assert out["id"] == "chatcmpl-fake-1"
    assert out["object"] == "chat.completion"
    assert out["model"] == "gpt-4o-mini"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: hello there"
    assert choice["finish_reason"] == "stop"
    usage = out["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (4, 3, 7)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert oai_client.post("/chat/completions", json=body).json()["id"] == "chatcmpl-fake-2"


def test_openai_auth_and_models(oai: FakeOpenAI, oai_client: httpx.Client, http: httpx.Client) -> None:
    resp = http.post(oai.base_url + "/chat/completions", json=chat_body())
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    models = oai_client.get("/models").json()
    assert models["object"] == "list"
    assert models["data"][0] == {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "fake"}


async def test_openai_chat_stream_with_usage(oai: FakeOpenAI) -> None:
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    body = chat_body("héllo wörld", stream=True, stream_options={"include_usage": True})
    async with (
        aiohttp.ClientSession() as session,
        session.post(oai.base_url + "/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = await resp.read()
    frames = data_frames(raw)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: héllo wörld"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == ["echo:", " héllo", " wörld"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_openai_stream_without_usage_and_tool_call(oai_client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    chunks = [
        json.loads(f)
        for f in data_frames(
            oai_client.post("/chat/completions", json=chat_body(stream=True, tools=tools)).content
        )
        if f != "[DONE]"
    ]
    assert all("usage" not in c for c in chunks)
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first == {
        "index": 0,
        "id": "call_fake_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    args = "".join(
        tc["function"]["arguments"] for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])
    )
    assert args == "{}"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    message = oai_client.post("/chat/completions", json=chat_body(tools=tools)).json()["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{}"}
    no_tools = oai_client.post("/chat/completions", json=chat_body(tools=tools, tool_choice="none")).json()
    assert no_tools["choices"][0]["message"]["content"] == "echo: hello there world"


def test_embeddings_float_and_base64(oai_client: httpx.Client) -> None:
    floats = oai_client.post("/embeddings", json={"model": "e", "input": ["a b", "c"]}).json()
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert len(floats["data"][0]["embedding"]) == 8
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    b64 = oai_client.post(
        "/embeddings", json={"model": "e", "input": "a b", "encoding_format": "base64", "dimensions": 8}
    ).json()
    decoded = list(struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"])))
    assert decoded == floats["data"][0]["embedding"]


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_stream_event_order(ant: FakeAnthropic, http: httpx.Client) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "hi there"}],
    }
    resp = http.post(ant.url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert resp.status_code == 200
    frames = parse_sse(resp.content)
    events = [e for e, _ in frames]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(d) for _, d in frames]
    assert all(p["type"] == e for p, e in zip(payloads, events, strict=True))
    start = payloads[0]["message"]
    assert start["id"] == "msg_fake_1" and start["content"] == []
    assert start["usage"]["input_tokens"] == 2 and start["usage"]["output_tokens"] == 1
    assert payloads[1]["content_block"] == {"type": "text", "text": ""}
    assert "".join(p["delta"]["text"] for p in payloads[3:6]) == "echo: hi there"
    assert payloads[7]["delta"]["stop_reason"] == "end_turn"
    assert payloads[7]["usage"]["output_tokens"] == 3


def test_anthropic_non_stream_tools_and_errors(ant: FakeAnthropic, http: httpx.Client) -> None:
    url = ant.url + "/v1/messages"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    out = http.post(url, json=body, headers=ANTHROPIC_HEADERS).json()
    assert out["content"] == [{"type": "text", "text": "echo: hi"}]
    assert out["stop_reason"] == "end_turn" and out["usage"]["cache_read_input_tokens"] == 0
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    out = http.post(url, json={**body, "tools": tools}, headers=ANTHROPIC_HEADERS).json()
    assert out["content"] == [{"type": "tool_use", "id": "toolu_fake_1", "name": "lookup", "input": {}}]
    assert out["stop_reason"] == "tool_use"

    bad_key = http.post(url, json=body, headers={**ANTHROPIC_HEADERS, "x-api-key": "nope"})
    assert bad_key.status_code == 401
    assert bad_key.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    no_version = http.post(url, json=body, headers={"x-api-key": ANTHROPIC_KEY})
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"

    ant.script("/v1/messages", Reply(status=529))
    overloaded = http.post(url, json=body, headers=ANTHROPIC_HEADERS)
    assert overloaded.status_code == 529
    assert overloaded.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    models = http.get(ant.url + "/v1/models", headers=ANTHROPIC_HEADERS).json()
    assert models["data"][0]["id"] == "claude-sonnet-4-5" and models["has_more"] is False


# --------------------------------------------------------------------------- faults & recording


def test_scripted_429_then_default(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    oai.script("/v1/chat/completions", Reply(status=429, headers={"Retry-After": "1", "retry-after-ms": "5"}))
    first = oai_client.post("/chat/completions", json=chat_body())
    assert first.status_code == 429
    assert first.headers["retry-after"] == "1" and first.headers["retry-after-ms"] == "5"
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    second = oai_client.post("/chat/completions", json=chat_body())
    assert second.status_code == 200
    assert len(oai.requests) == 2


async def test_reset_raises_connection_error(oai: FakeOpenAI, http: httpx.Client) -> None:
    oai.script("/v1/chat/completions", Reply(reset=True))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(oai.base_url + "/chat/completions", json=chat_body()) as resp:
                await resp.read()
    with pytest.raises(httpx.TransportError):
        oai.script("/v1/chat/completions", Reply(reset=True))
        http.post(oai.base_url + "/chat/completions", json=chat_body())


def test_cut_after_stops_without_done(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    oai.script("/v1/chat/completions", Reply(cut_after=2))
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        oai_client.stream("POST", "/chat/completions", json=chat_body(stream=True)) as resp,
    ):
        for piece in resp.iter_raw():
            received += piece
    frames = data_frames(received)
    assert len(frames) == 2
    assert "[DONE]" not in frames


def test_reset_or_stall_after_part_of_the_answer(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    oai.script("/v1/chat/completions", Reply(reset=True, cut_after=2))
    received = b""
    with (
        pytest.raises(httpx.TransportError),
        oai_client.stream("POST", "/chat/completions", json=chat_body(stream=True)) as resp,
    ):
        for piece in resp.iter_raw():
            received += piece
    assert len(data_frames(received)) == 2
    oai.script("/v1/chat/completions", Reply(hang=True, cut_after=5))
    with oai_client.stream("POST", "/chat/completions", json=chat_body(), timeout=0.3) as resp:
        assert resp.status_code == 200  # headers arrive, then five body bytes and silence
        with pytest.raises(httpx.ReadTimeout):
            resp.read()


def test_scripted_sse_malformed_frames_and_split_utf8(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    oai.script(
        "/v1/chat/completions",
        Reply(
            sse=[{"choices": [{"delta": {"content": "日本語 ü"}}]}, "{not json", "[DONE]"], split_utf8=True
        ),
    )
    frames = data_frames(oai_client.post("/chat/completions", json=chat_body(stream=True)).content)
    assert json.loads(frames[0])["choices"][0]["delta"]["content"] == "日本語 ü"
    assert frames[1:] == ["{not json", "[DONE]"]


async def test_default_stream_split_utf8_reassembles(oai: FakeOpenAI) -> None:
    oai.script("/v1/chat/completions", Reply(split_utf8=True))
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            oai.base_url + "/chat/completions", json=chat_body("€uro 東京", stream=True), headers=headers
        ) as resp,
    ):
        pieces = [chunk async for chunk in resp.content.iter_any()]
    chunks = [json.loads(f) for f in data_frames(b"".join(pieces)) if f != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: €uro 東京"


def test_malformed_json_and_delay(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    oai.script("/v1/chat/completions", Reply(raw=b'{"id": "x", "choices": ['), Reply(delay_s=0.3))
    assert oai_client.post("/chat/completions", json=chat_body()).content == b'{"id": "x", "choices": ['
    with pytest.raises(httpx.ReadTimeout):
        oai_client.post("/chat/completions", json=chat_body(), timeout=0.05)


def test_recorded_request_headers_and_json(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    before = time.monotonic()
    oai_client.post("/chat/completions?x=1", json=chat_body(), headers={"X-Trace": "abc"})
    rec = oai.last
    assert rec.method == "POST" and rec.path == "/v1/chat/completions" and rec.query == {"x": "1"}
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert rec.headers["x-trace"] == "abc"
    assert rec.json == chat_body()
    assert rec.received_at >= before


def test_multipart_transcription_recording(oai: FakeOpenAI, oai_client: httpx.Client) -> None:
    audio = b"RIFF\x00\xff\r\n--boundary-like\r\n\x80"
    resp = oai_client.post(
        "/audio/transcriptions",
        files={"file": ("clip.wav", audio, "audio/wav")},
        data={"model": "whisper-1", "response_format": "vtt", "language": "en"},
    )
    assert resp.status_code == 200
    assert resp.text.startswith("WEBVTT") and "fake transcript" in resp.text
    rec = oai.last
    assert rec.form is not None
    assert rec.form["model"] == "whisper-1" and rec.form["language"] == "en"
    assert rec.files["file"] == UploadedFile(filename="clip.wav", content_type="audio/wav", data=audio)
    default = oai_client.post(
        "/audio/transcriptions", files={"file": ("a.mp3", b"x", "audio/mpeg")}, data={"model": "whisper-1"}
    )
    assert default.json() == {"text": "fake transcript"}


def test_hang_is_released_by_stop_without_thread_leaks() -> None:
    fake = FakeOpenAI().start()
    thread = fake._thread
    fake.script("/v1/models", Reply(hang=True))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(fake.base_url + "/models", timeout=5)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    fake.wait_for_requests(1, timeout=2)
    started = time.monotonic()
    fake.stop()
    caller.join(2)
    assert time.monotonic() - started < 1.5
    assert not caller.is_alive() and len(errors) == 1
    assert thread is not None and not thread.is_alive()
