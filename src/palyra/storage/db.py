"""The database: engine creation for SQLite or PostgreSQL, pragmas, file mode, migrations at start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration (tests check it against the scripts). A start on an up-to-date database, and
# /readyz, compare against it with one query instead of importing Alembic (~10 MB of memory).
HEAD_REVISION = "0007"
# Any fixed number; every replica takes the same advisory lock so only one migrates at a time.
_MIGRATION_LOCK_KEY = 0x7061_6C79_7261


def database_url_for(database_url: str, state_dir: Path) -> str:
    """The SQLAlchemy async URL: SQLite in the state dir when empty, else the configured server."""
    if not database_url:
        return f"sqlite+aiosqlite:///{(state_dir / 'palyra.db').resolve()}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://") :]
    if database_url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + database_url[len("postgresql://") :]
    if database_url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + database_url[len("sqlite:///") :]
    return database_url


def redact_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """Owns the async engine. ``start()`` creates it and brings the schema to the newest revision."""

    def __init__(self, url: str, *, schema: str = "") -> None:
        self.url = url
        self.schema = schema
        self.is_sqlite = url.startswith("sqlite")
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database.start() has not been called")
        return self._engine

    async def start(self, *, migrate: bool = True) -> None:
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            path = make_url(self.url).database
            if path and path != ":memory:":
                _create_private_file(Path(path))
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
            kwargs["pool_pre_ping"] = True
            if self.schema:
                kwargs["connect_args"] = {"server_settings": {"search_path": self.schema}}
        engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        self._engine = engine
        if not migrate:
            return
        await self.migrate()
        if self.is_sqlite:
            path = make_url(self.url).database
            for suffix in ("", "-wal", "-shm"):
                if path and os.path.exists(path + suffix):
                    os.chmod(path + suffix, 0o600)

    async def migrate(self) -> None:
        async with self.engine.connect() as conn:
            if not self.is_sqlite:
                if self.schema:
                    await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            try:
                if await conn.run_sync(_current_revision) != HEAD_REVISION:
                    await conn.run_sync(_create_or_upgrade)
            finally:
                if not self.is_sqlite:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            await conn.commit()

    async def is_ready(self) -> bool:
        """Reachable and at the newest migration."""
        try:
            async with self.engine.connect() as conn:
                current = await conn.run_sync(_current_revision)
        except Exception:
            return False
        return current == HEAD_REVISION

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _create_private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _create_or_upgrade(conn: Connection) -> None:
    """An empty database gets the newest schema in one go from the table definitions, stamped with
    the head revision (what Alembic's cookbook recommends: the definitions and the migrations give
    the same schema, which a test holds on SQLite and PostgreSQL); an older one is upgraded by the
    migrations. So a first start does not load Alembic (~11 MB that would stay resident)."""
    if inspect(conn).get_table_names():
        _upgrade(conn)
        return
    from palyra.storage.tables import all_tables

    all_tables().create_all(conn)
    conn.execute(
        text(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
    )
    conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": HEAD_REVISION})


def _upgrade(conn: Connection) -> None:
    from alembic import command  # only when a migration is due
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def head_revision_of_scripts() -> str | None:
    """The head according to the migration scripts themselves (for the test of ``HEAD_REVISION``)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()
