"""Alembic environment: migrations always run on a connection handed in by ``Database.migrate``."""

from __future__ import annotations

from alembic import context

from palyra.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by running the alembic CLI by hand
    raise RuntimeError("run migrations through `palyra serve` or palyra.storage.Database.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
