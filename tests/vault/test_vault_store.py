"""The vault over both backends: SQLite in a temp dir and PostgreSQL in an isolated schema."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from palyra.storage.db import Database, database_url_for
from palyra.storage.schema import vault_secrets
from palyra.vault import (
    InvalidRef,
    KeyRotationError,
    MasterKey,
    MasterKeyMissing,
    SecretTooLarge,
    Vault,
    VaultRef,
    VaultTampered,
    WrongMasterKey,
    list_secrets,
    open_vault,
    rotate_key_files,
)
from palyra.vault.crypto import encode_master_key, generate_master_key, kek_id
from palyra.vault.keys import ENV_VAR, create_key_file, pending_key_path, read_key_file

from conftest import PG_URL

ENVELOPE = ("kek_id", "value_nonce", "value_ciphertext", "dek_nonce", "wrapped_dek")


@dataclass
class Backend:
    """One database (a SQLite file or a PostgreSQL schema) that several Database objects can open."""

    kind: str
    url: str
    schema: str
    state_dir: Path
    opened: list[Database] = field(default_factory=list)

    async def open(self) -> Database:
        database = Database(self.url, schema=self.schema)
        await database.start()
        self.opened.append(database)
        return database


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        found = Backend("sqlite", database_url_for("", tmp_path), "", tmp_path / "state")
    else:
        schema = request.getfixturevalue("pg_schema")
        found = Backend("postgresql", database_url_for(PG_URL, tmp_path), schema, tmp_path / "state")
    yield found
    for database in found.opened:
        await database.close()


@pytest.fixture
async def db(backend: Backend) -> Database:
    return await backend.open()


@pytest.fixture
async def vault(db: Database, backend: Backend) -> Vault:
    return await open_vault(db, backend.state_dir, {})


def env_key(master: bytes) -> dict[str, str]:
    return {ENV_VAR: encode_master_key(master)}


async def row(db: Database, ref: str) -> dict[str, Any]:
    r = VaultRef.parse(ref)
    async with db.engine.connect() as conn:
        found = (
            await conn.execute(
                select(vault_secrets).where(vault_secrets.c.scope == r.scope, vault_secrets.c.key == r.key)
            )
        ).first()
    assert found is not None
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in found._mapping.items()}


async def set_columns(db: Database, ref: str, **values: Any) -> None:
    r = VaultRef.parse(ref)
    async with db.engine.begin() as conn:
        await conn.execute(
            update(vault_secrets)
            .where(vault_secrets.c.scope == r.scope, vault_secrets.c.key == r.key)
            .values(**values)
        )


async def test_migration_creates_the_table(db: Database) -> None:
    assert await db.is_ready()
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM vault_secrets"))).scalar_one() == 0


async def test_round_trip(vault: Vault) -> None:
    await vault.put("global/openai_api_key", "sk-one")
    await vault.put(VaultRef("agent:a1", "openai_api_key"), "sk-agent ✓")
    assert await vault.get("global/openai_api_key") == "sk-one"
    assert await vault.get("GLOBAL/openai_api_key") == "sk-one"
    assert await vault.get("agent:a1/openai_api_key") == "sk-agent ✓"
    assert await vault.get("global/missing") is None
    assert await vault.get("agent:a2/openai_api_key") is None
    assert await vault.delete("global/openai_api_key") is True
    assert await vault.delete("global/openai_api_key") is False
    assert await vault.get("global/openai_api_key") is None
    assert await vault.get("agent:a1/openai_api_key") == "sk-agent ✓"
    await vault.put("global/empty", "")
    assert await vault.get("global/empty") == ""


async def test_replace_keeps_created_at(vault: Vault, db: Database) -> None:
    await vault.put("global/k", "first")
    before = await row(db, "global/k")
    await asyncio.sleep(0.01)
    await vault.put("global/k", "second value")
    after = await row(db, "global/k")
    assert await vault.get("global/k") == "second value"
    assert after["created_at"] == before["created_at"] and after["updated_at"] > before["updated_at"]
    assert after["value_bytes"] == len("second value")
    assert after["value_ciphertext"] != before["value_ciphertext"]


async def test_list_is_metadata_only(vault: Vault, db: Database) -> None:
    canary = "canary-list-7f3a9c"
    await vault.put("global/b", canary)
    await vault.put("global/a", "x" * 10)
    await vault.put("agent:a1/c", canary + canary)
    metas = await vault.list()
    assert [m.ref for m in metas] == ["agent:a1/c", "global/a", "global/b"]
    assert [m.value_bytes for m in metas] == [2 * len(canary), 10, len(canary)]
    assert {m.kek_id for m in metas} == {vault.kek_id}
    assert [m.ref for m in await vault.list("Global")] == ["global/a", "global/b"]
    assert [m.ref for m in await vault.list("agent:a1")] == ["agent:a1/c"]
    assert await vault.list("agent:nobody") == []
    assert canary not in repr(metas) and canary not in str([m.public() for m in metas])
    assert set(metas[0].public()) == {
        "ref", "scope", "key", "kek_id", "value_bytes", "created_at", "updated_at"
    }  # fmt: skip
    assert await list_secrets(db) == metas  # no master key needed
    with pytest.raises(InvalidRef):
        await vault.list("principal:x")


async def test_value_limit_is_64_kib(vault: Vault) -> None:
    await vault.put("global/big", "x" * 65536)
    assert await vault.get("global/big") == "x" * 65536
    with pytest.raises(SecretTooLarge) as exc:
        await vault.put("global/big", "x" * 65537)
    assert str(exc.value) == "secret value exceeds max bytes (65537 > 65536)"
    with pytest.raises(SecretTooLarge, match=r"\(65538 > 65536\)"):
        await vault.put("global/wide", "é" * 32769)  # counted in UTF-8 bytes
    assert await vault.get("global/big") == "x" * 65536


async def test_invalid_refs_are_rejected_before_storage(vault: Vault) -> None:
    with pytest.raises(InvalidRef, match=r"vault ref must have shape '<scope>/<key>'"):
        await vault.put("openai_api_key", "v")
    with pytest.raises(InvalidRef, match="lowercase letters"):
        await vault.put("global/OpenAI", "v")
    with pytest.raises(InvalidRef, match="'global' or 'agent:<id>'"):
        await vault.get("principal:x/k")
    assert await vault.list() == []


async def test_ciphertext_moved_to_another_name_fails(vault: Vault, db: Database) -> None:
    await vault.put("global/a", "secret-a")
    await vault.put("global/b", "secret-b")
    await vault.put("agent:x/a", "secret-x")
    stolen = {k: v for k, v in (await row(db, "global/a")).items() if k in ENVELOPE}
    for target in ("global/b", "agent:x/a"):
        await set_columns(db, target, **stolen)
        with pytest.raises(VaultTampered) as exc:
            await vault.get(target)
        assert f"secret {target} failed authentication" in str(exc.value)
    assert await vault.get("global/a") == "secret-a"


@pytest.mark.parametrize("column", ["value_ciphertext", "wrapped_dek", "value_nonce", "dek_nonce"])
@pytest.mark.parametrize("position", [0, -1])
async def test_flipped_byte_is_an_error_never_garbage(
    vault: Vault, db: Database, column: str, position: int
) -> None:
    await vault.put("global/k", "the real value")
    data = bytearray((await row(db, "global/k"))[column])
    data[position] ^= 0x40
    await set_columns(db, "global/k", **{column: bytes(data)})
    with pytest.raises(VaultTampered, match="secret global/k failed authentication"):
        await vault.get("global/k")


async def test_truncated_ciphertext_is_an_error(vault: Vault, db: Database) -> None:
    await vault.put("global/k", "the real value")
    await set_columns(db, "global/k", value_ciphertext=(await row(db, "global/k"))["value_ciphertext"][:-4])
    with pytest.raises(VaultTampered):
        await vault.get("global/k")


async def test_wrong_master_key_from_environment(db: Database, backend: Backend) -> None:
    first = generate_master_key()
    vault = await open_vault(db, backend.state_dir, env_key(first))
    await vault.put("global/k", "v")
    other = generate_master_key()
    with pytest.raises(WrongMasterKey) as exc:
        await open_vault(db, backend.state_dir, env_key(other))
    message = str(exc.value)
    assert f"was sealed with master key {kek_id(first)}" in message
    assert f"but PALYRA_VAULT_KEY is key {kek_id(other)}" in message
    assert "set PALYRA_VAULT_KEY to the key used before" in message
    assert ("schema " + backend.schema if backend.schema else "palyra.db") in message
    assert encode_master_key(first) not in message and encode_master_key(other) not in message
    assert not backend.state_dir.exists()  # an environment key never writes a file


async def test_wrong_key_file_names_the_file(vault: Vault, db: Database, backend: Backend) -> None:
    await vault.put("global/k", "v")
    other_dir = backend.state_dir.parent / "other-state"
    create_key_file(other_dir / "vault.key", generate_master_key())
    with pytest.raises(WrongMasterKey) as exc:
        await open_vault(db, other_dir, {})
    message = str(exc.value)
    assert f"was sealed with master key {vault.kek_id}" in message
    assert f"but {other_dir / 'vault.key'} is key" in message
    assert "restore the vault.key used before" in message and ENV_VAR in message
    # The key in use is the right one: opening with it still works.
    assert await (await open_vault(db, backend.state_dir, {})).get("global/k") == "v"


async def test_reads_check_the_key_id_before_decrypting(vault: Vault, db: Database) -> None:
    await vault.put("global/k", "v")
    stranger = Vault(db, MasterKey(generate_master_key(), ENV_VAR))
    with pytest.raises(WrongMasterKey):
        await stranger.get("global/k")


async def test_missing_key_file_with_existing_rows(vault: Vault, db: Database, backend: Backend) -> None:
    await vault.put("global/k", "v")
    key_file = backend.state_dir / "vault.key"
    saved = key_file.read_bytes()
    key_file.unlink()
    for _ in range(2):  # the same message on every start: the stand-in key is not kept
        with pytest.raises(MasterKeyMissing) as exc:
            await open_vault(db, backend.state_dir, {})
        message = str(exc.value)
        assert f"holds 1 secret(s) sealed with master key {vault.kek_id}" in message
        assert f"but {key_file} did not exist" in message and "restore vault.key" in message
        assert not key_file.exists()
    key_file.write_bytes(saved)
    assert await (await open_vault(db, backend.state_dir, {})).get("global/k") == "v"


async def test_an_empty_vault_accepts_a_new_key(db: Database, backend: Backend) -> None:
    vault = await open_vault(db, backend.state_dir, {})
    assert vault.master_key.generated
    other = await open_vault(db, backend.state_dir, env_key(generate_master_key()))
    assert other.kek_id != vault.kek_id


async def test_two_keys_never_mix(db: Database, backend: Backend) -> None:
    one = await open_vault(db, backend.state_dir, env_key(generate_master_key()))
    two = await open_vault(db, backend.state_dir, env_key(generate_master_key()))
    results = await asyncio.gather(
        *(v.put(f"global/k{i}", "v") for i in range(6) for v in (one, two)), return_exceptions=True
    )
    assert all(r is None or isinstance(r, WrongMasterKey) for r in results)
    ids = await one.stored_key_ids()
    assert len(ids) == 1
    winner = one if one.kek_id in ids else two
    # Whatever the interleaving, everything stored is sealed under one key (the winner's) and opens
    # with it; a write refused for a key mix is refused whole. Which names survive depends on the race.
    stored = [i for i in range(6) if await winner.get(f"global/k{i}") is not None]
    assert sum(ids.values()) == len(stored) >= 1
    assert all([await winner.get(f"global/k{i}") for i in stored])


async def test_concurrent_writers_same_key(backend: Backend, db: Database) -> None:
    vault_a = await open_vault(db, backend.state_dir, {})
    vault_b = await open_vault(await backend.open(), backend.state_dir, {})
    values = [f"value-{i}" for i in range(24)]
    await asyncio.gather(
        *(v.put("global/shared", val) for v, val in zip([vault_a, vault_b] * 12, values, strict=True))
    )
    assert await vault_a.get("global/shared") in values
    assert await vault_b.get("global/shared") == await vault_a.get("global/shared")
    metas = await vault_a.list()
    assert len(metas) == 1 and metas[0].value_bytes == len(await vault_a.get("global/shared") or "")


async def test_concurrent_writers_different_keys(backend: Backend, db: Database) -> None:
    vault_a = await open_vault(db, backend.state_dir, {})
    vault_b = await open_vault(await backend.open(), backend.state_dir, {})
    await asyncio.gather(
        *(v.put(f"agent:a{i % 3}/k{i}", f"v{i}") for i, v in enumerate([vault_a, vault_b] * 15))
    )
    assert len(await vault_a.list()) == 30
    for i in range(30):
        assert await vault_b.get(f"agent:a{i % 3}/k{i}") == f"v{i}"


async def test_canary_never_in_the_raw_database(vault: Vault, db: Database, backend: Backend) -> None:
    canary = "CANARY-d41d8cd98f00b204e980"
    await vault.put("global/canary", canary)
    await vault.put("agent:a1/canary", canary * 100)
    assert await vault.get("global/canary") == canary
    needles = [canary.encode(), canary.encode().hex().encode(), canary.encode("utf-16-le")]
    if backend.kind == "sqlite":
        dump = b""
        for suffix in ("", "-wal"):
            path = backend.state_dir.parent / f"palyra.db{suffix}"
            if path.exists():
                dump += path.read_bytes()
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert b"global" in dump  # the dump did see the rows
    else:
        async with db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT row_to_json(v)::text FROM vault_secrets v"))).scalars()
            dump = "\n".join(rows).encode()
        assert b"canary" in dump  # the key name is there; the value is not
    for needle in needles:
        assert needle not in dump


async def test_rotation_rewraps_every_data_key(vault: Vault, db: Database, backend: Backend) -> None:
    for i in range(5):
        await vault.put(f"global/k{i}", f"value-{i}")
    before = {i: await row(db, f"global/k{i}") for i in range(5)}
    old_key = vault.master_key
    result = await rotate_key_files(backend.state_dir, vault)
    assert (result.rotated, result.old_kek_id) == (5, old_key.kek_id)
    assert result.new_kek_id == vault.kek_id != old_key.kek_id
    assert result.key_file == backend.state_dir / "vault.key"
    assert read_key_file(backend.state_dir / "vault.key") == vault.master_key.key
    assert stat.S_IMODE((backend.state_dir / "vault.key").stat().st_mode) == 0o600
    assert not pending_key_path(backend.state_dir).exists()
    for i in range(5):
        after = await row(db, f"global/k{i}")
        for same in ("value_ciphertext", "value_nonce", "value_bytes", "created_at", "updated_at"):
            assert after[same] == before[i][same]
        assert after["wrapped_dek"] != before[i]["wrapped_dek"]
        assert after["kek_id"] == result.new_kek_id
    # The old key no longer opens the vault; the new one (on disk) does.
    with pytest.raises(WrongMasterKey):
        await Vault(db, MasterKey(old_key.key, ENV_VAR)).start()
    reopened = await open_vault(db, backend.state_dir, {})
    assert [await reopened.get(f"global/k{i}") for i in range(5)] == [f"value-{i}" for i in range(5)]


async def test_rotation_with_environment_key_writes_no_files(db: Database, backend: Backend) -> None:
    old, new = generate_master_key(), generate_master_key()
    vault = await open_vault(db, backend.state_dir, env_key(old))
    await vault.put("global/k", "v")
    with pytest.raises(KeyRotationError, match="comes from PALYRA_VAULT_KEY") as exc:
        await rotate_key_files(backend.state_dir, vault)
    assert "--new-key-stdin" in exc.value.hint
    result = await rotate_key_files(backend.state_dir, vault, new)
    assert result.key_file is None and result.new_kek_id == kek_id(new) and result.rotated == 1
    assert not backend.state_dir.exists()
    with pytest.raises(WrongMasterKey, match="PALYRA_VAULT_KEY is key"):
        await open_vault(db, backend.state_dir, env_key(old))
    assert await (await open_vault(db, backend.state_dir, env_key(new))).get("global/k") == "v"


async def test_rotation_refuses_the_same_key_and_an_empty_vault(vault: Vault, backend: Backend) -> None:
    with pytest.raises(KeyRotationError, match="the vault is empty"):
        await rotate_key_files(backend.state_dir, vault)
    assert not pending_key_path(backend.state_dir).exists()
    await vault.put("global/k", "v")
    with pytest.raises(KeyRotationError, match="is the current one"):
        await rotate_key_files(backend.state_dir, vault, vault.master_key.key)
    assert not pending_key_path(backend.state_dir).exists()


async def test_rotation_is_all_or_nothing(vault: Vault, db: Database, backend: Backend) -> None:
    for i in range(4):
        await vault.put(f"global/k{i}", f"v{i}")
    data = bytearray((await row(db, "global/k3"))["value_ciphertext"])
    data[0] ^= 1
    await set_columns(db, "global/k3", value_ciphertext=bytes(data))
    old_id = vault.kek_id
    with pytest.raises(VaultTampered, match=r"secret global/k3 failed authentication.*Nothing was rotated"):
        await rotate_key_files(backend.state_dir, vault)
    assert await vault.stored_key_ids() == {old_id: 4} and vault.kek_id == old_id
    assert not pending_key_path(backend.state_dir).exists()
    assert await (await open_vault(db, backend.state_dir, {})).get("global/k0") == "v0"


async def test_interrupted_rotation_after_commit_is_completed(
    vault: Vault, db: Database, backend: Backend
) -> None:
    await vault.put("global/k", "v")
    new = generate_master_key()
    # Crash between the commit and the rename: vault.key.new holds the key the rows now need.
    create_key_file(pending_key_path(backend.state_dir), new)
    await vault.rotate_key(new)
    assert read_key_file(backend.state_dir / "vault.key") != new
    reopened = await open_vault(db, backend.state_dir, {})
    assert reopened.kek_id == kek_id(new) and reopened.master_key.source == str(
        backend.state_dir / "vault.key"
    )
    assert read_key_file(backend.state_dir / "vault.key") == new
    assert not pending_key_path(backend.state_dir).exists()
    assert await reopened.get("global/k") == "v"


async def test_interrupted_rotation_before_commit_is_discarded(
    vault: Vault, db: Database, backend: Backend
) -> None:
    await vault.put("global/k", "v")
    old = read_key_file(backend.state_dir / "vault.key")
    # Crash after writing vault.key.new, before the re-wrap committed.
    create_key_file(pending_key_path(backend.state_dir), generate_master_key())
    reopened = await open_vault(db, backend.state_dir, {})
    assert reopened.kek_id == vault.kek_id and reopened.master_key.pending is None
    assert not pending_key_path(backend.state_dir).exists()
    assert read_key_file(backend.state_dir / "vault.key") == old
    assert await reopened.get("global/k") == "v"
    # And a rotation after that works as usual.
    assert (await rotate_key_files(backend.state_dir, reopened)).rotated == 1


async def test_a_stale_pending_key_never_blocks_a_wrong_key_error(
    vault: Vault, db: Database, backend: Backend
) -> None:
    await vault.put("global/k", "v")
    other_dir = backend.state_dir.parent / "other"
    create_key_file(other_dir / "vault.key", generate_master_key())
    load_pending = generate_master_key()
    create_key_file(pending_key_path(other_dir), load_pending)
    with pytest.raises(WrongMasterKey):
        await open_vault(db, other_dir, {})
    assert read_key_file(pending_key_path(other_dir)) == load_pending  # unknown key material is kept


async def test_rotation_during_a_running_process_is_picked_up(
    vault: Vault, db: Database, backend: Backend
) -> None:
    """A daemon keeps working when `palyra vault rotate-key` re-keys the vault under it."""
    await vault.put("global/k", "v")
    other = await open_vault(await backend.open(), backend.state_dir, {})
    await rotate_key_files(backend.state_dir, other)
    assert await vault.get("global/k") == "v"
    assert vault.kek_id == other.kek_id
    await rotate_key_files(backend.state_dir, other)
    await vault.put("global/k2", "v2")  # the write notices the new key, re-seals and retries
    assert await other.get("global/k2") == "v2"
    assert set(await vault.stored_key_ids()) == {other.kek_id}


async def test_a_process_with_an_environment_key_is_told_to_restart(db: Database, backend: Backend) -> None:
    old, new = generate_master_key(), generate_master_key()
    running = await open_vault(db, backend.state_dir, env_key(old))
    await running.put("global/k", "v")
    rotating = await open_vault(await backend.open(), backend.state_dir, env_key(old))
    await rotate_key_files(backend.state_dir, rotating, new)
    with pytest.raises(WrongMasterKey, match=f"sealed with master key {kek_id(new)}"):
        await running.get("global/k")
    with pytest.raises(WrongMasterKey):
        await running.put("global/k2", "v")
    assert await running.stored_key_ids() == {kek_id(new): 1}  # the rejected write left nothing


async def test_writes_racing_a_rotation_end_under_one_key(
    vault: Vault, db: Database, backend: Backend
) -> None:
    for i in range(3):
        await vault.put(f"global/seed{i}", "s")
    rotating = await open_vault(await backend.open(), backend.state_dir, {})
    await asyncio.gather(
        rotate_key_files(backend.state_dir, rotating),
        *(vault.put(f"global/race{i}", f"r{i}") for i in range(10)),
    )
    assert set(await vault.stored_key_ids()) == {rotating.kek_id}
    fresh = await open_vault(db, backend.state_dir, {})
    assert [await fresh.get(f"global/race{i}") for i in range(10)] == [f"r{i}" for i in range(10)]
