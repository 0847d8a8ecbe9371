"""Storage: the database, its migrations and the repositories over its tables."""

from palyra.storage.db import Database, database_url_for
from palyra.storage.runs import RunRepository
from palyra.storage.tokens import TokenRecord, TokenRepository

__all__ = ["Database", "RunRepository", "TokenRecord", "TokenRepository", "database_url_for"]
