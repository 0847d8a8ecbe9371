"""Start-up, operations endpoints, graceful shutdown and the CLI against a real daemon."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from conftest import REPO, Daemon, start_daemon
from fakes import FakeOpenAI, Reply

CHAT = {"model": "deterministic", "messages": [{"role": "user", "content": "hello"}]}


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PALYRA_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "palyra", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=60,
        cwd=REPO,
    )


def test_health_ready_metrics(daemon: Daemon, token: str) -> None:
    assert httpx.get(daemon.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(daemon.base_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["database"] is True
    httpx.post(daemon.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})
    text = httpx.get(daemon.base_url + "/metrics").text
    assert "palyra_requests_total" in text and 'endpoint="chat.completions"' in text
    assert "palyra_overhead_seconds_bucket" in text


def test_state_files_are_private(daemon: Daemon) -> None:
    for name in ("palyra.db",):
        mode = stat.S_IMODE((daemon.state_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE(daemon.state_dir.stat().st_mode) == 0o700


def test_generated_admin_token_file(tmp_path: Path) -> None:
    env = {"PALYRA_ADMIN_TOKEN": ""}
    d = start_daemon(tmp_path, env=env)
    try:
        path = d.state_dir / "admin_token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        admin = path.read_text().strip()
        assert (
            httpx.get(d.base_url + "/api/v1/tokens", headers={"Authorization": f"Bearer {admin}"}).status_code
            == 200
        )
        assert (
            httpx.get(d.base_url + "/api/v1/tokens", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert httpx.get(d.base_url + "/api/v1/tokens").status_code == 401
        assert "listening on http://127.0.0.1:" in d.log() and "palyra tokens create" in d.log()
    finally:
        d.stop()


def test_sigterm_flushes_queued_records(tmp_path: Path) -> None:
    # A flush interval far beyond the test keeps every record queued until shutdown.
    config = "[server]\njournal_flush_interval_ms = 60000\njournal_batch_size = 10000\n"
    d = start_daemon(tmp_path, config=config)
    token, _ = d.create_token(name="t")
    ids = []
    for _ in range(25):
        r = httpx.post(d.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    with d.admin() as c:
        assert c.get("/usage/runs", params={"request_id": ids[0]}).json()["data"] == []
    # uvicorn re-raises the captured SIGTERM after a clean shutdown, as systemd expects.
    assert d.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    out = cli(
        "usage",
        "--since",
        "1h",
        "--limit",
        "100",
        "--json",
        "--config",
        str(d.config_path),
        env={"PALYRA_STATE_DIR": str(d.state_dir)},
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    found = {r["request_id"] for r in data["runs"]}
    assert set(ids) <= found
    assert data["totals"][0]["requests"] >= 25


def test_sigkill_loses_no_record_of_a_completed_response(tmp_path: Path) -> None:
    config = "[server]\njournal_flush_interval_ms = 60000\njournal_batch_size = 10000\n"
    d = start_daemon(tmp_path, config=config)
    token, _ = d.create_token(name="t")
    ids = []
    for i in range(20):
        body = {**CHAT, "stream": i % 2 == 1}
        r = httpx.post(d.v1 + "/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    d.stop(signal.SIGKILL)
    restarted = start_daemon(tmp_path, config=config)
    try:
        with restarted.admin() as c:
            runs = c.get("/usage/runs", params={"limit": 100}).json()["data"]
        found = [r["request_id"] for r in runs]
        assert sorted(set(ids) & set(found)) == sorted(ids) and len(found) == len(set(found))
        assert "recovered 20 run record(s)" in restarted.log()
    finally:
        restarted.stop()


def test_sigterm_lets_an_open_stream_finish_and_refuses_new_connections(tmp_path: Path) -> None:
    with FakeOpenAI() as upstream:
        config = (
            "[server]\njournal_flush_interval_ms = 60000\ngraceful_shutdown_s = 10\n"
            '[[model_provider.providers]]\nprovider_id = "up"\nkind = "openai_compatible"\n'
            f'base_url = "{upstream.url}/v1"\nallow_private_base_url = true\n'
            '[[model_provider.models]]\nmodel_id = "up-model"\nprovider_id = "up"\n'
            'upstream_model = "gpt-4o-mini"\n'
        )
        d = start_daemon(tmp_path, config=config)
        token, _ = d.create_token(name="t")
        upstream.script("/v1/chat/completions", Reply(chunk_delay_s=0.2))
        body = {
            "model": "up-model",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        }
        with httpx.stream(
            "POST",
            d.v1 + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=20,
        ) as r:
            request_id = r.headers["x-request-id"]
            lines = (line for line in r.iter_lines() if line.startswith("data:"))
            next(lines)
            d.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                httpx.get(d.base_url + "/healthz", timeout=2)
            rest = list(lines)
        assert len(rest) >= 3 and rest[-1] == "data: [DONE]"  # the stream ran to its end
        assert d.proc.wait(20) in (0, -signal.SIGTERM)

    restarted = start_daemon(tmp_path, config=config)
    try:
        with restarted.admin() as c:
            row = c.get("/usage/runs", params={"request_id": request_id}).json()["data"][0]
        assert row["status"] == "ok" and row["stream"] is True and row["completion_tokens"] > 0
    finally:
        restarted.stop()


def test_cli_tokens_and_usage_while_daemon_runs(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    env = {
        "PALYRA_STATE_DIR": str(d.state_dir),
        "PALYRA_PORT": d.base_url.rsplit(":", 1)[1],
        "PALYRA_ADMIN_TOKEN": d.admin_token,
    }
    try:
        made = cli(
            "tokens",
            "create",
            "--name",
            "cli-made",
            "--scope",
            "chat",
            "--agent",
            "bot-1",
            "--expires-in",
            "30d",
            "--rate-limit-per-minute",
            "100",
            env=env,
        )
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        assert token.startswith("palyra_")
        r = httpx.post(d.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        listed = json.loads(cli("tokens", "list", "--json", env=env).stdout)
        mine = next(t for t in listed if t["name"] == "cli-made")
        assert mine["scopes"] == ["chat"] and mine["agent_id"] == "bot-1" and mine["status"] == "active"
        assert token not in json.dumps(listed)
        revoked = cli("tokens", "revoke", mine["token_id"], env=env)
        assert revoked.returncode == 0, revoked.stderr
        r = httpx.post(d.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
        usage = cli("usage", "--since", "1h", "--by", "agent", "--json", env=env)
        assert usage.returncode == 0, usage.stderr
        by_agent = {row["key"]: row for row in json.loads(usage.stdout)["totals"]}
        assert by_agent["bot-1"]["requests"] >= 1
        table = cli("usage", "--since", "1h", env=env)
        assert table.returncode == 0 and "chat.completions" in table.stdout
        csv_out = cli("usage", "--since", "1h", "--format", "csv", env=env)
        assert csv_out.stdout.splitlines()[0].startswith("request_id,")
    finally:
        d.stop()


def test_cli_errors_have_hints(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nprot = 8080\n")
    out = cli("config", "check", "--config", str(bad))
    assert out.returncode == 2
    assert "server.prot" in out.stderr and "unknown key" in out.stderr and "hint:" in out.stderr
    out = cli(
        "tokens",
        "create",
        "--name",
        "x",
        "--scope",
        "everything",
        env={"PALYRA_STATE_DIR": str(tmp_path / "s")},
    )
    assert out.returncode != 0 and "unknown scope" in out.stderr and "Traceback" not in out.stderr
    out = cli("usage", "--by", "colour")
    assert out.returncode != 0 and "hint:" in out.stderr


def test_init_writes_a_config_that_checks(tmp_path: Path) -> None:
    target = tmp_path / "palyra.toml"
    out = cli("init", "--path", str(target), "--state-dir", str(tmp_path / "st"))
    assert out.returncode == 0, out.stderr
    check = cli("config", "check", "--config", str(target), "--json")
    assert check.returncode == 0, check.stderr
    summary = json.loads(check.stdout)
    assert summary["default_chat_model_id"] == "deterministic"
    again = cli("init", "--path", str(target))
    assert again.returncode != 0 and "--force" in again.stderr


def test_config_error_stops_startup_naming_the_key(tmp_path: Path) -> None:
    config = (
        '[[model_provider.providers]]\nprovider_id = "p"\nkind = "deterministic"\n\n'
        '[[model_provider.models]]\nmodel_id = "m"\nprovider_id = "nope"\n'
    )
    d = start_daemon(tmp_path, config=config, wait=False)
    assert d.proc.wait(30) == 2
    assert "model_provider.models[0].provider_id" in d.log()
