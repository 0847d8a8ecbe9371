"""`palyra memory add|search` against a daemon-like server in a thread, and with no daemon at all."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner

from palyra.callers.tokens import TokenService
from palyra.memory.cli import memory_app
from palyra.memory.store import MemoryStore
from palyra.memory.tables import MEMORY_TABLES
from palyra.shared_state import InProcessCounterStore
from palyra.storage.db import Database, database_url_for
from palyra.storage.schema import metadata
from palyra.storage.tokens import TokenRepository

from conftest import free_port
from memory_fakes import FakeEmbedder, build_memory_api

ADMIN = "palyra_admin_" + "c" * 40
ENV_VARS = ("PALYRA_CONFIG", "PALYRA_HOST", "PALYRA_PORT", "PALYRA_STATE_DIR", "PALYRA_DATABASE_URL")


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "palyra.toml"
    path.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\nstate_dir = "{tmp_path / "state"}"\n')
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PALYRA_ADMIN_TOKEN", ADMIN)


@pytest.fixture
def daemon_port(tmp_path: Path) -> Iterator[int]:
    """The memory router on a real port, its database opened in the server's own event loop."""
    db = Database(database_url_for("", tmp_path))
    embedder = FakeEmbedder()
    store = MemoryStore(db, embedder, target_model=embedder.target)
    tokens = TokenService(TokenRepository(db), InProcessCounterStore(), cache_ttl_s=0)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await db.start()
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda c: metadata.create_all(c, tables=list(MEMORY_TABLES)))
        yield
        await db.close()

    app = build_memory_api(store, tokens, ADMIN)
    app.router.lifespan_context = lifespan
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def test_add_then_search(tmp_path: Path, daemon_port: int) -> None:
    config = str(_config(tmp_path, daemon_port))
    runner = CliRunner()
    added = runner.invoke(
        memory_app,
        [
            "add",
            "the staging database lives in eu-west-1",
            "--agent",
            "ops",
            "--tag",
            "infra",
            "--tag",
            "db",
            "--ttl-days",
            "30",
            "-c",
            config,
            "--json",
        ],
    )
    assert added.exit_code == 0, added.output
    item = json.loads(added.stdout)
    assert item["agent_id"] == "ops" and item["tags"] == ["infra", "db"] and item["expires_at"] is not None
    plain = runner.invoke(
        memory_app, ["add", "lunch orders go in the shared sheet", "--agent", "ops", "-c", config]
    )
    assert plain.exit_code == 0 and "stored for agent ops" in plain.stdout

    found = runner.invoke(
        memory_app,
        [
            "search",
            "which region is the staging database in",
            "--agent",
            "ops",
            "-k",
            "2",
            "-c",
            config,
            "--json",
        ],
    )
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert len(hits) == 2 and hits[0]["item_id"] == item["item_id"] and hits[0]["score"] > hits[1]["score"]
    table = runner.invoke(memory_app, ["search", "staging database", "--agent", "ops", "-c", config])
    assert table.exit_code == 0 and item["item_id"] in table.stdout
    empty = runner.invoke(memory_app, ["search", "anything", "--agent", "nobody", "-c", config])
    assert empty.exit_code == 0

    bad = runner.invoke(memory_app, ["add", "x", "--agent", "not a valid agent", "-c", config])
    assert bad.exit_code == 1 and "400" in bad.output


def test_without_a_daemon_says_to_start_one(tmp_path: Path) -> None:
    config = str(_config(tmp_path, free_port()))
    result = CliRunner().invoke(memory_app, ["search", "anything", "-c", config])
    assert result.exit_code == 1
    assert "palyra serve" in result.output
