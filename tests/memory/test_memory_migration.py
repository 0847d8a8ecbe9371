"""Migration 0006 creates the memory tables exactly as palyra.memory.tables declares them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from palyra.memory.tables import MEMORY_TABLES
from palyra.storage.db import Database, database_url_for

from conftest import PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
async def migrated(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """Migrations only: no create_all, so a table missing from 0006 shows."""
    if request.param == "sqlite":
        database = Database(database_url_for("", tmp_path))
    else:
        database = Database(database_url_for(PG_URL, tmp_path), schema=request.getfixturevalue("pg_schema"))
    await database.start()
    yield database
    await database.close()


def _shape(conn: sa.Connection) -> dict[str, Any]:
    inspector = sa.inspect(conn)
    return {
        table.name: {
            "columns": {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)},
            "indexes": {i["name"]: tuple(i["column_names"]) for i in inspector.get_indexes(table.name)},
            "pk": tuple(inspector.get_pk_constraint(table.name)["constrained_columns"]),
        }
        for table in MEMORY_TABLES
    }


async def test_migration_matches_the_table_definitions(migrated: Database) -> None:
    assert await migrated.is_ready()
    async with migrated.engine.connect() as conn:
        shape = await conn.run_sync(_shape)
    for table in MEMORY_TABLES:
        declared = shape[table.name]
        assert declared["columns"] == {c.name: c.nullable for c in table.columns}
        assert declared["pk"] == tuple(c.name for c in table.primary_key.columns)
        assert declared["indexes"] == {i.name: tuple(c.name for c in i.columns) for i in table.indexes}
