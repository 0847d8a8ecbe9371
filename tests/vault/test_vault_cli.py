"""`palyra vault list` and `palyra vault rotate-key` against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from palyra.storage.db import Database, database_url_for
from palyra.vault import open_vault
from palyra.vault.cli import vault_app
from palyra.vault.crypto import encode_master_key, generate_master_key, kek_id
from palyra.vault.keys import ENV_VAR, read_key_file

from conftest import PG_URL

CANARY = "CANARY-cli-5e0c1b"


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for var in (
        "PALYRA_CONFIG",
        "PALYRA_STATE_DIR",
        "PALYRA_DATABASE_URL",
        "PALYRA_DATABASE_SCHEMA",
        ENV_VAR,
    ):
        monkeypatch.delenv(var, raising=False)
    server = f'state_dir = "{tmp_path / "state"}"\n'
    if request.param == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        server += f'database_url = "{PG_URL}"\ndatabase_schema = "{schema}"\n'
    path = tmp_path / "palyra.toml"
    path.write_text("[server]\n" + server)
    yield path


def seed(config: Path, environ: dict[str, str] | None = None) -> str:
    """Store two secrets the way the daemon would; returns the kek_id they are sealed with."""
    from palyra.config.load import load_config

    cfg = load_config(config, environ={})
    state_dir = Path(cfg.server.state_dir)

    async def go() -> str:
        db = Database(database_url_for(cfg.server.database_url, state_dir), schema=cfg.server.database_schema)
        await db.start()
        try:
            vault = await open_vault(db, state_dir, environ or {})
            await vault.put("global/openai_api_key", CANARY)
            await vault.put("agent:a1/token", CANARY * 3)
            return vault.kek_id
        finally:
            await db.close()

    return asyncio.run(go())


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Exit code, stdout, and stderr with rich's line wrapping undone."""
    result = CliRunner().invoke(vault_app, list(args), input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def flat(text: str) -> str:
    return " ".join(text.split())


def test_list_shows_metadata_never_values(config: Path) -> None:
    sealed_with = seed(config)
    code, out, _ = run("list", "--config", str(config), "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [r["ref"] for r in rows] == ["agent:a1/token", "global/openai_api_key"]
    assert [r["value_bytes"] for r in rows] == [3 * len(CANARY), len(CANARY)]
    assert {r["kek_id"] for r in rows} == {sealed_with}
    assert CANARY not in out
    code, out, _ = run("list", "--config", str(config), "--scope", "global")
    assert code == 0 and "global/openai_api_key" in out and "agent:a1" not in out and CANARY not in out
    assert str(len(CANARY)) in out and sealed_with in out


def test_list_needs_no_key_and_creates_none(config: Path, tmp_path: Path) -> None:
    code, out, _ = run("list", "--config", str(config), "--json")
    assert code == 0 and json.loads(out) == []
    assert not (tmp_path / "state" / "vault.key").exists()


def test_list_rejects_a_bad_scope_with_a_hint(config: Path) -> None:
    code, _, err = run("list", "--config", str(config), "--scope", "principal:x")
    assert code == 1
    assert "vault scope must be 'global' or 'agent:<id>'" in err and "hint:" in err


def test_rotate_key_with_a_key_file(config: Path, tmp_path: Path) -> None:
    old_id = seed(config)
    code, out, err = run("rotate-key", "--config", str(config))
    assert code == 0, err
    new_key = read_key_file(tmp_path / "state" / "vault.key")
    assert new_key is not None and kek_id(new_key) != old_id
    assert "re-wrapping the data keys of 2 secret(s)" in err
    assert f"rotated 2 secret(s): master key {old_id} → {kek_id(new_key)}" in flat(out)
    assert not (tmp_path / "state" / "vault.key.new").exists()
    assert CANARY not in out + err
    code, out, _ = run("list", "--config", str(config), "--json")
    assert {r["kek_id"] for r in json.loads(out)} == {kek_id(new_key)}


def test_rotate_key_with_an_environment_key(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = generate_master_key(), generate_master_key()
    seed(config, {ENV_VAR: encode_master_key(old)})
    monkeypatch.setenv(ENV_VAR, encode_master_key(old))
    code, _, err = run("rotate-key", "--config", str(config))
    assert code == 1 and "comes from PALYRA_VAULT_KEY" in err and "--new-key-stdin" in err

    code, _, err = run("rotate-key", "--config", str(config), "--new-key-stdin", stdin="too-short\n")
    assert code == 1 and "the new key on stdin must be 32 random bytes" in err

    code, out, err = run(
        "rotate-key", "--config", str(config), "--new-key-stdin", stdin=encode_master_key(new) + "\n"
    )
    assert code == 0, err
    assert f"→ {kek_id(new)}" in out and "set PALYRA_VAULT_KEY to the new key" in flat(out)
    assert encode_master_key(new) not in out + err
    assert (
        not (tmp_path / "state" / "vault.key").exists()
        and not (tmp_path / "state" / "vault.key.new").exists()
    )

    # The old key is now wrong, and start-up says which key and how to fix it.
    code, _, err = run("rotate-key", "--config", str(config), "--new-key-stdin", stdin=encode_master_key(old))
    assert code == 1
    assert f"sealed with master key {kek_id(new)}" in err and f"PALYRA_VAULT_KEY is key {kek_id(old)}" in err
    assert "hint:" in err


def test_rotate_key_on_an_empty_vault_is_refused(config: Path) -> None:
    code, _, err = run("rotate-key", "--config", str(config))
    assert code == 1 and "the vault is empty" in err and "hint:" in err
