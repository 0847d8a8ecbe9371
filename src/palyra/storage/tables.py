"""Every table the migrations create, in one ``MetaData``: the schema an empty database is given."""

from __future__ import annotations

from sqlalchemy import MetaData


def all_tables() -> MetaData:
    # The feature packages add their tables to the one MetaData when imported.
    import palyra.jobs.tables
    import palyra.memory.tables
    import palyra.skills.tables  # noqa: F401
    from palyra.storage.schema import metadata

    return metadata
