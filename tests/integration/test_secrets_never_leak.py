"""Plant canary secrets, use them every way a client can, then search everything the daemon wrote."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2 as httpx

from conftest import start_daemon


def everything_on_disk(root: Path) -> bytes:
    blobs = []
    for path in root.rglob("*"):
        if path.is_file():
            blobs.append(path.read_bytes())
    return b"\n".join(blobs)


def test_canary_tokens_appear_nowhere(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        token, data = d.create_token(name="canary", scopes=["*"])
        auth = {"Authorization": f"Bearer {token}"}
        guessed = "palyra_CANARYguessedTOKENvalue0123456789"
        seen: list[str] = []
        chat = {"model": "deterministic", "messages": [{"role": "user", "content": "hi"}]}
        for r in (
            httpx.post(d.v1 + "/chat/completions", json=chat, headers=auth),
            httpx.post(d.v1 + "/chat/completions", json={**chat, "stream": True}, headers=auth),
            httpx.post(d.v1 + "/chat/completions", json={"model": 1}, headers=auth),
            httpx.post(d.v1 + "/chat/completions", json=chat, headers={"Authorization": f"Bearer {guessed}"}),
            httpx.post(d.v1 + "/embeddings", json={"model": "hash-embedding-v1", "input": "x"}, headers=auth),
            httpx.get(d.v1 + "/models", headers=auth),
            httpx.get(d.base_url + "/metrics"),
        ):
            seen.append(r.text)
            seen.append(json.dumps(dict(r.headers)))
        with d.admin() as c:
            for path in (
                "/tokens",
                f"/tokens/{data['token_id']}",
                "/usage/runs",
                "/usage/summary",
                "/models",
                "/openapi.json",
            ):
                seen.append(c.get(path).text)
        assert d.stop() is not None
        seen.append(d.log())
        disk = everything_on_disk(d.state_dir)
        for secret in (token, guessed, token.removeprefix("palyra_")):
            assert all(secret not in text for text in seen), secret
            assert secret.encode() not in disk, secret
        # The admin token lives only in its own 0600 file or the environment, never elsewhere.
        assert all(d.admin_token not in text for text in seen)
        assert d.admin_token.encode() not in disk
    finally:
        d.stop()
