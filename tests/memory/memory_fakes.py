"""Memory test helpers: a database on either backend with the memory tables, a fake embedder, a clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from palyra.callers.tokens import TokenService
from palyra.errors import InvalidRequest, PalyraError, UpstreamFailed
from palyra.memory.store import EmbedOutcome, MemoryStore
from palyra.memory.tables import MEMORY_TABLES
from palyra.providers.deterministic import hash_embedding
from palyra.storage.db import Database, database_url_for
from palyra.storage.schema import metadata
from palyra.surface.admin_memory import build_memory_router, memory_caller

from conftest import PG_URL

T0 = 1_700_000_000.0
DAY = 86_400.0
BACKENDS = ["sqlite", "postgresql"]


@asynccontextmanager
async def memory_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """``request.param`` picks the backend; PostgreSQL gets an isolated schema."""
    if request.param == "sqlite":
        database = Database(database_url_for("", tmp_path))
    else:
        schema = request.getfixturevalue("pg_schema")
        database = Database(database_url_for(PG_URL, tmp_path), schema=schema)
    await database.start()
    # Migration 0006 creates these; until it is at head, create them here (a no-op once it is).
    async with database.engine.begin() as conn:
        await conn.run_sync(lambda c: metadata.create_all(c, tables=list(MEMORY_TABLES)))
    try:
        yield database
    finally:
        await database.close()


class FakeEmbedder:
    """The deterministic provider's hash embeddings, with a switchable model and failures."""

    def __init__(self, model: str = "hash-embedding-v1", dims: int = 64) -> None:
        self.model = model
        self.dims = dims
        self.fail = False
        self.fail_after: int | None = None  # fail every call once this many have succeeded
        self.refuse = "POISON"  # a call with a text containing this is refused like an over-long input
        self.calls: list[tuple[list[str], str | None]] = []

    async def __call__(self, texts: list[str], agent: str | None) -> EmbedOutcome:
        if self.fail or (self.fail_after is not None and len(self.calls) >= self.fail_after):
            raise UpstreamFailed("the embeddings upstream is down")
        if any(self.refuse in t for t in texts):
            raise InvalidRequest("maximum context length exceeded", code="context_length_exceeded")
        self.calls.append((list(texts), agent))
        return EmbedOutcome([hash_embedding(t, self.dims) for t in texts], self.model, self.dims)

    def target(self) -> tuple[str, int]:
        return self.model, self.dims


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _error(exc: PalyraError) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    return JSONResponse(body, status_code=exc.status)


def build_memory_api(store: MemoryStore, tokens: TokenService, admin_token: str) -> FastAPI:
    """The admin API's error mapping, with only the memory router mounted."""
    app = FastAPI()

    @app.exception_handler(PalyraError)
    async def palyra_error(_request: Request, exc: PalyraError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(InvalidRequest(str(exc.errors()[0]["msg"]), code="invalid_value"))

    app.include_router(
        build_memory_router(store=store, caller=memory_caller(admin_token, tokens)), prefix="/api/v1"
    )
    return app
