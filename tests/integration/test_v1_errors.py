"""Each row of the INTERFACE error table that the deterministic path can produce, over real HTTP.

Every error body is validated against the official ErrorResponse schema and checked in the journal.
"""

from __future__ import annotations

import time
from typing import Any

import httpx2 as httpx
import openai
import pytest

from conftest import Daemon
from openai_schema import validate

CHAT = {"model": "deterministic", "messages": [{"role": "user", "content": "hello"}]}


def post(daemon: Daemon, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(daemon.v1 + path, headers=headers, timeout=30, **kwargs)


def assert_error(
    r: httpx.Response, status: int, type_: str, code: str, param: str | None = None
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    validate("ErrorResponse", body)
    assert body["error"]["type"] == type_
    assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert "Traceback" not in r.text
    assert r.headers["x-request-id"].startswith("req_")
    return dict(body["error"])


def test_malformed_json_is_400(daemon: Daemon, token: str) -> None:
    r = post(
        daemon,
        "/chat/completions",
        token,
        content=b'{"model": "deterministic", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert_error(r, 400, "invalid_request_error", "invalid_json")
    run = daemon.run(r.headers["x-request-id"])
    assert run["status"] == "error" and run["http_status"] == 400 and run["error_class"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "deterministic"}, "missing_required_parameter", "messages"),
        ({**CHAT, "temperature": 5}, "invalid_value", "temperature"),
        ({**CHAT, "messages": "hello"}, "invalid_type", "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "invalid_value", "messages[0]"),
        (
            {**CHAT, "messages": [{"role": "tool", "content": "x"}]},
            "missing_required_parameter",
            "messages[0].tool_call_id",
        ),
        ({**CHAT, "stream": "yes"}, "invalid_type", "stream"),
        ({**CHAT, "n": 2}, "unsupported_value", "n"),
        ({**CHAT, "messages": []}, "invalid_value", "messages"),
    ],
)
def test_bad_field_names_param(
    daemon: Daemon, token: str, body: dict[str, Any], code: str, param: str
) -> None:
    r = post(daemon, "/chat/completions", token, json=body)
    assert_error(r, 400, "invalid_request_error", code, param)


def test_sdk_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="deterministic", messages=[{"role": "user", "content": "x"}], top_p=3
        )
    assert info.value.code == "invalid_value" and info.value.param == "top_p"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic abc", "Bearer sk-not-a-palyra-token", "Bearer palyra_unknowntoken123456789"],
)
def test_missing_or_invalid_token_is_401(daemon: Daemon, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = httpx.post(daemon.v1 + "/chat/completions", json=CHAT, headers=headers)
    assert_error(r, 401, "authentication_error", "invalid_api_key")
    run = daemon.run(r.headers["x-request-id"])
    assert run["http_status"] == 401 and run["token_id"] is None


def test_admin_token_is_not_an_api_token(daemon: Daemon) -> None:
    r = post(daemon, "/chat/completions", daemon.admin_token, json=CHAT)
    assert_error(r, 401, "authentication_error", "invalid_api_key")


def test_expired_token_is_401(daemon: Daemon) -> None:
    token, _ = daemon.create_token(name="short", expires_in="1s")
    assert post(daemon, "/chat/completions", token, json=CHAT).status_code == 200
    time.sleep(1.2)
    r = post(daemon, "/chat/completions", token, json=CHAT)
    assert "expired" in assert_error(r, 401, "authentication_error", "invalid_api_key")["message"]


def test_revoked_token_is_401_at_once(daemon: Daemon) -> None:
    token, data = daemon.create_token(name="to-revoke")
    assert post(daemon, "/chat/completions", token, json=CHAT).status_code == 200
    with daemon.admin() as c:
        assert c.post(f"/tokens/{data['token_id']}/revoke").status_code == 200
    r = post(daemon, "/chat/completions", token, json=CHAT)
    assert "revoked" in assert_error(r, 401, "authentication_error", "invalid_api_key")["message"]


def test_missing_scope_is_403(daemon: Daemon) -> None:
    token, _ = daemon.create_token(name="embed-only", scopes=["embeddings"])
    r = post(daemon, "/chat/completions", token, json=CHAT)
    assert_error(r, 403, "permission_error", "missing_scope")
    r = httpx.get(daemon.v1 + "/models", headers={"Authorization": f"Bearer {token}"})
    assert_error(r, 403, "permission_error", "missing_scope")
    ok = post(daemon, "/embeddings", token, json={"model": "hash-embedding-v1", "input": "x"})
    assert ok.status_code == 200


def test_token_bound_to_agent_cannot_act_as_another(daemon: Daemon) -> None:
    token, _ = daemon.create_token(name="bound", agent_id="agent-a")
    r = post(daemon, "/chat/completions", token, json=CHAT, headers={"X-Palyra-Agent": "agent-b"})
    assert_error(r, 403, "permission_error", "agent_forbidden")
    r = post(daemon, "/chat/completions", token, json={**CHAT, "metadata": {"palyra_agent": "agent-b"}})
    assert_error(r, 403, "permission_error", "agent_forbidden")
    ok = post(daemon, "/chat/completions", token, json=CHAT)
    assert ok.status_code == 200
    assert daemon.run(ok.headers["x-request-id"])["agent_id"] == "agent-a"


def test_unknown_model_is_404(daemon: Daemon, token: str, client: openai.OpenAI) -> None:
    r = post(daemon, "/chat/completions", token, json={**CHAT, "model": "gpt-9-ultra"})
    assert_error(r, 404, "invalid_request_error", "model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9-ultra")
    # A model of another role is a clear 400, not a silent reroute.
    r = post(daemon, "/chat/completions", token, json={**CHAT, "model": "hash-embedding-v1"})
    assert_error(r, 400, "invalid_request_error", "model_role_mismatch", "model")


def test_body_too_large_is_413(daemon: Daemon, token: str) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (8 * 1024 * 1024 + 10)}]}
    r = post(daemon, "/chat/completions", token, json=big)
    assert_error(r, 413, "invalid_request_error", "request_too_large")
    audio = b"\x00" * (25 * 1024 * 1024 + 10)
    r = post(
        daemon,
        "/audio/transcriptions",
        token,
        files={"file": ("a.wav", audio, "audio/wav")},
        data={"model": "deterministic-transcribe"},
    )
    assert_error(r, 413, "invalid_request_error", "request_too_large")


def test_chunked_body_over_limit_is_413(daemon: Daemon, token: str) -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield b'{"model":"deterministic","messages":[{"role":"user","content":"'
        for _ in range(9):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    r = post(daemon, "/chat/completions", token, content=gen(), headers={"content-type": "application/json"})
    assert_error(r, 413, "invalid_request_error", "request_too_large")


def test_rate_limit_is_429_with_retry_after(daemon: Daemon) -> None:
    token, _ = daemon.create_token(name="limited", rate_limit_per_minute=3)
    statuses = [post(daemon, "/chat/completions", token, json=CHAT).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = post(daemon, "/chat/completions", token, json=CHAT)
    assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # Another token is unaffected.
    other, _ = daemon.create_token(name="other")
    assert post(daemon, "/chat/completions", other, json=CHAT).status_code == 200


def test_unknown_path_and_method_are_openai_shaped(daemon: Daemon, token: str) -> None:
    r = httpx.get(daemon.v1 + "/nope", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404
    validate("ErrorResponse", r.json())
    r = httpx.get(daemon.v1 + "/chat/completions", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 405
    validate("ErrorResponse", r.json())


def test_transcription_validation(daemon: Daemon, token: str) -> None:
    r = post(
        daemon,
        "/audio/transcriptions",
        token,
        data={"model": "deterministic-transcribe"},
        files={"x": ("a", b"1")},
    )
    assert_error(r, 400, "invalid_request_error", "missing_required_parameter", "file")
    r = post(
        daemon,
        "/audio/transcriptions",
        token,
        files={"file": ("a.wav", b"RIFF", "audio/wav")},
        data={"model": "deterministic-transcribe", "response_format": "xml"},
    )
    assert_error(r, 400, "invalid_request_error", "invalid_value", "response_format")
    r = post(daemon, "/audio/transcriptions", token, json={"model": "deterministic-transcribe"})
    assert_error(r, 400, "invalid_request_error", "invalid_content_type")
