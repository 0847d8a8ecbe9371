"""Storage against both backends: SQLite in a temp dir and PostgreSQL in an isolated schema."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from palyra.callers.tokens import TokenService, hash_token
from palyra.journal import JournalWriter, RunRecord
from palyra.shared_state import InProcessCounterStore
from palyra.storage.db import Database, database_url_for
from palyra.storage.runs import RunRepository
from palyra.storage.tokens import TokenRepository

from conftest import PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(database_url_for("", tmp_path))
    else:
        schema = request.getfixturevalue("pg_schema")
        database = Database(database_url_for(PG_URL, tmp_path), schema=schema)
    await database.start()
    yield database
    await database.close()


async def test_migrations_applied_and_ready(db: Database) -> None:
    assert await db.is_ready()
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(__import__("sqlalchemy").inspect(c).get_table_names()))
    assert {"api_tokens", "runs", "alembic_version"} <= tables
    # Migrating again is a no-op (every replica runs it at start).
    await db.migrate()
    assert await db.is_ready()


async def test_postgres_schema_is_isolated(pg_schema: str, tmp_path: Path) -> None:
    database = Database(database_url_for(PG_URL, tmp_path), schema=pg_schema)
    await database.start()
    try:
        async with database.engine.connect() as conn:
            found = (
                await conn.execute(
                    text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": pg_schema},
                )
            ).scalar_one()
        assert found >= 3
    finally:
        await database.close()


async def test_sqlite_file_is_private_and_wal(tmp_path: Path) -> None:
    database = Database(database_url_for("", tmp_path))
    await database.start()
    try:
        path = tmp_path / "palyra.db"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        async with database.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
    finally:
        await database.close()


async def test_tokens_roundtrip(db: Database) -> None:
    service = TokenService(TokenRepository(db), InProcessCounterStore(), cache_ttl_s=0)
    record, plaintext = await service.create(name="n", scopes=["chat"], agent_id="a1", expires_in_s=3600)
    assert plaintext.startswith("palyra_") and len(plaintext) > 30
    async with db.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT token_hash FROM api_tokens"))).scalars().all()
        everything = str((await conn.execute(text("SELECT * FROM api_tokens"))).all())
    assert stored == [hash_token(plaintext)]
    assert plaintext not in everything
    caller = await service.authenticate(f"Bearer {plaintext}", time.time())
    assert caller.token.token_id == record.token_id and caller.token.agent_id == "a1"
    assert await service.revoke(record.token_id) is True
    assert await service.revoke(record.token_id) is False
    listed = await TokenRepository(db).list()
    assert listed[0].revoked_at is not None


async def test_journal_writer_batches_and_totals(db: Database) -> None:
    repo = RunRepository(db)
    writer = JournalWriter(repo, flush_interval_s=0.05, batch_size=7)
    writer.start()
    now = time.time()
    for i in range(20):
        writer.record(
            RunRecord(
                request_id=f"req_{i}",
                created_at=now - i,
                finished_at=now - i,
                endpoint="chat.completions",
                model_id="m1" if i % 2 else "m2",
                agent_id="a",
                status="ok" if i % 5 else "error",
                http_status=200 if i % 5 else 502,
                prompt_tokens=10,
                completion_tokens=5,
                cost_usd=0.5 if i % 2 else None,
                pricing_missing=not i % 2,
            )
        )
    await writer.close()
    assert writer.written == 20 and writer.pending == 0
    totals = (await repo.totals())[0]
    assert totals["requests"] == 20 and totals["errors"] == 4
    assert totals["prompt_tokens"] == 200 and totals["total_tokens"] == 300
    assert totals["cost_usd"] == pytest.approx(5.0) and totals["unpriced_runs"] == 10
    by_model = {r["key"]: r for r in await repo.totals(by="model")}
    assert by_model["m1"]["requests"] == 10
    recent = await repo.recent(limit=3)
    assert [r["request_id"] for r in recent] == ["req_0", "req_1", "req_2"]
    assert (await repo.get("req_3"))["http_status"] == 200  # type: ignore[index]
    assert await repo.recent(since=now - 4.5, filters={"model": "m2"}) == [
        r for r in await repo.recent(limit=100) if r["created_at"] >= now - 4.5 and r["model_id"] == "m2"
    ]


async def test_journal_keeps_records_when_the_database_fails(tmp_path: Path) -> None:
    database = Database(database_url_for("", tmp_path))
    await database.start()
    repo = RunRepository(database)
    writer = JournalWriter(repo, flush_interval_s=0.01, batch_size=100)
    writer.record(RunRecord(request_id="r1", created_at=1.0, finished_at=1.0, endpoint="x"))
    async with database.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE runs RENAME TO runs_away"))
    with pytest.raises(Exception, match="runs"):
        await writer.flush()
    assert writer.pending == 1  # nothing lost
    async with database.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE runs_away RENAME TO runs"))
    await writer.flush()
    assert writer.pending == 0 and await repo.get("r1") is not None
    await database.close()


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    from palyra.storage.db import HEAD_REVISION, head_revision_of_scripts

    assert head_revision_of_scripts() == HEAD_REVISION  # bump HEAD_REVISION with every new migration


async def test_token_reads_are_shared_and_refreshed_ahead(db: Database) -> None:
    import asyncio
    import contextlib

    from palyra.errors import AuthenticationFailed

    repo = TokenRepository(db)
    service = TokenService(repo, InProcessCounterStore(), cache_ttl_s=5.0)
    record, plaintext = await service.create(name="busy")
    reads = 0
    real = repo.find_by_hash

    async def counted(token_hash: str):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)  # a database round trip, so the concurrent callers overlap
        return await real(token_hash)

    repo.find_by_hash = counted  # type: ignore[method-assign]
    now = time.time()
    callers = await asyncio.gather(*(service.authenticate(f"Bearer {plaintext}", now) for _ in range(50)))
    assert reads == 1 and {c.token.token_id for c in callers} == {record.token_id}  # one read, not 50

    # Within the last fifth of the TTL the cached record answers at once and a re-read starts behind it.
    await service.authenticate(f"Bearer {plaintext}", now + 4.5)
    await asyncio.sleep(0.05)
    assert reads == 2

    # Revocation wins over a read that was already in flight.
    slow = asyncio.ensure_future(service.authenticate(f"Bearer {plaintext}", time.time() + 60))
    await asyncio.sleep(0)
    assert await service.revoke(record.token_id) is True
    with contextlib.suppress(AuthenticationFailed):
        await slow  # started before the revocation: whatever it read is not cached
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await service.authenticate(f"Bearer {plaintext}", time.time() + 60)


def _schema_diff(conn) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from palyra.storage.tables import all_tables

    context = MigrationContext.configure(conn, opts={"compare_server_default": True, "compare_type": True})
    return list(compare_metadata(context, all_tables()))


async def test_an_empty_database_is_created_from_the_definitions_as_the_migrations_would(
    db: Database, tmp_path: Path
) -> None:
    """A first start creates the schema from the table definitions and stamps it (no Alembic); the
    migrations applied one by one to another empty database must give exactly that schema."""
    from sqlalchemy import inspect

    from palyra.storage.db import HEAD_REVISION, _upgrade

    async with db.engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar() == HEAD_REVISION
    if db.is_sqlite:
        migrated = Database(database_url_for("", tmp_path / "by-migrations"))
    else:
        migrated = Database(database_url_for(PG_URL, tmp_path), schema=f"{db.schema}_m")
    await migrated.start(migrate=False)
    try:
        async with migrated.engine.begin() as conn:
            if not db.is_sqlite:
                await conn.execute(text(f'CREATE SCHEMA "{migrated.schema}"'))
            assert await conn.run_sync(lambda c: inspect(c).get_table_names()) == []
            await conn.run_sync(_upgrade)
            assert await conn.run_sync(_schema_diff) == []
        assert await migrated.is_ready()
    finally:
        if not db.is_sqlite:
            async with migrated.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{migrated.schema}" CASCADE'))
        await migrated.close()
