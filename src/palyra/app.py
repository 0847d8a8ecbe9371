"""The composition root: builds every component from the configuration and wires them together.

Nothing else constructs components or reads configuration; modules receive what they need here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from palyra.auth.audit import AuditLog
from palyra.auth.credential import AuthProfileCredential
from palyra.auth.oauth import OAuthClient, PendingAttempts
from palyra.auth.profiles import ProfileRepository
from palyra.auth.service import AuthService
from palyra.callers.admin import load_admin_token
from palyra.callers.tokens import TokenService
from palyra.config.models import PalyraConfig, ProviderConfig
from palyra.console import ConsoleSessions, build_console
from palyra.errors import InvalidRequest, PalyraError
from palyra.gateway import Gateway, RunContext
from palyra.governance.admin_store import sync_admin_governance
from palyra.governance.alerts import AlertLog
from palyra.governance.budgets import Policy
from palyra.governance.pricing import PriceTable
from palyra.governance.service import Governance
from palyra.governance.tokenizer import use_bpe
from palyra.jobs import JobContext, JobSpec, Scheduler
from palyra.journal import JournalWriter, RunRecord
from palyra.journal_spool import Spool
from palyra.memory.backfill import run_backfill
from palyra.memory.maintenance import run_maintenance
from palyra.memory.store import SYSTEM_AGENT, EmbedOutcome, MemoryStore
from palyra.metrics import Metrics
from palyra.providers.credentials import CredentialSource
from palyra.providers.dispatch import Dispatcher
from palyra.providers.registry import ProviderRegistry, credential_for
from palyra.providers.status import provider_status
from palyra.providers.types import EmbeddingRequest
from palyra.shared import SharedState
from palyra.shared.breaker import AsyncCircuitBreaker
from palyra.skills import SkillService, run_reaudit
from palyra.storage.db import Database, database_url_for
from palyra.storage.runs import RunRepository
from palyra.storage.tokens import TokenRepository
from palyra.surface.auth_guard import FailedAuthLimiter
from palyra.surface.openai_http import OpenAISurface, new_request_id
from palyra.surface.openai_requests import RequestLimits
from palyra.vault.keys import load_master_key
from palyra.vault.store import Vault

log = logging.getLogger("palyra.app")


@dataclass
class Components:
    config: PalyraConfig
    state_dir: Path
    db: Database
    registry: ProviderRegistry
    tokens: TokenService
    token_repo: TokenRepository
    runs: RunRepository
    journal: JournalWriter
    metrics: Metrics
    admin_token: str
    admin_token_source: str
    vault: Vault
    memory: MemoryStore
    skills: SkillService
    scheduler: Scheduler
    governance: Governance
    alerts: AlertLog
    auth: AuthService
    audit: AuditLog
    oauth: OAuthClient
    attempts: PendingAttempts
    shared: SharedState
    auth_failures: FailedAuthLimiter


def state_dir_of(config: PalyraConfig) -> Path:
    path = Path(config.server.state_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def build_components(config: PalyraConfig) -> Components:
    state_dir = state_dir_of(config)
    use_bpe(config.server.token_counting == "bpe")
    db = Database(
        database_url_for(config.server.database_url, state_dir), schema=config.server.database_schema
    )
    vault = Vault(db, load_master_key(state_dir))
    audit = AuditLog(db)
    oauth = OAuthClient(allow_private=any(o.allow_private for o in config.auth.oauth.values()))
    auth = AuthService(
        ProfileRepository(db), vault, audit, oauth, config, cache_ttl_s=config.auth.profile_cache_ttl_s
    )

    def credentials(provider: ProviderConfig) -> CredentialSource:
        if provider.auth_profile_id:
            return AuthProfileCredential(auth, provider)
        return credential_for(provider)

    shared = SharedState.from_url(
        config.server.redis_url,
        prefix=config.server.redis_key_prefix,
        max_connections=config.server.redis_max_connections,
    )

    def breaker(provider_id: str, failure_threshold: int, cooldown_s: float) -> AsyncCircuitBreaker:
        return shared.circuit_breaker(provider_id, failure_threshold=failure_threshold, cooldown_s=cooldown_s)

    registry = ProviderRegistry(
        config.model_provider,
        credentials=credentials,
        breakers=breaker,
        limits=shared.concurrency_limit,
    )
    token_repo = TokenRepository(db)
    tokens = TokenService(
        token_repo,
        shared.counters,
        cache_ttl_s=config.server.token_cache_ttl_s,
        default_rate_limit_per_minute=config.server.default_token_rate_limit_per_minute,
    )
    runs = RunRepository(db)

    async def after_flush() -> None:
        await token_repo.touch(tokens.drain_last_used())

    journal = JournalWriter(
        runs,
        flush_interval_s=config.server.journal_flush_interval_ms / 1000.0,
        batch_size=config.server.journal_batch_size,
        after_flush=after_flush,
        spool=Spool(state_dir / "journal"),
    )
    admin_token, admin_source = load_admin_token(state_dir)
    metrics = Metrics()
    alerts = AlertLog(db)
    governance: Governance | None = None

    async def spend(policy: Policy, since: float) -> list[tuple[int, float]]:
        return await runs.spend_by_minute(metric=policy.metric, scope=policy.scope, since=since)

    ledger = shared.budget_ledger(
        [Policy.from_config(b) for b in config.budgets],
        spend,
        lambda policy, window, spent, limit: (
            governance.on_soft_limit(policy, window, spent, limit) if governance else None
        ),
    )
    governance = Governance(
        prices=PriceTable.from_config(config.pricing),
        ledger=ledger,
        alerts=alerts,
        registry=registry,
        routing_mode=config.routing.mode,
        metrics=metrics,
    )
    skills = SkillService(db, state_dir / "skills", audit, alerts)
    memory = MemoryStore(db, _unwired_embedder, target_model=lambda: _embedding_target(registry))
    return Components(
        config=config,
        state_dir=state_dir,
        db=db,
        registry=registry,
        tokens=tokens,
        token_repo=token_repo,
        runs=runs,
        journal=journal,
        metrics=metrics,
        governance=governance,
        alerts=alerts,
        admin_token=admin_token,
        admin_token_source=admin_source,
        vault=vault,
        memory=memory,
        skills=skills,
        scheduler=Scheduler(db, registry=metrics.registry),
        auth=auth,
        audit=audit,
        oauth=oauth,
        attempts=PendingAttempts(),
        shared=shared,
        auth_failures=FailedAuthLimiter(
            shared.counters, limit_per_minute=config.server.auth_failure_limit_per_minute
        ),
    )


def build_app(config: PalyraConfig) -> Starlette:
    c = build_components(config)
    surface = OpenAISurface(
        gateway=Gateway(c.registry, Dispatcher(c.registry.runtimes, c.metrics), c.governance),
        tokens=c.tokens,
        journal=c.journal,
        metrics=c.metrics,
        max_json_bytes=config.server.max_json_body_bytes,
        max_audio_bytes=config.server.max_audio_body_bytes,
        started_at=int(time.time()),
        access_log_enabled=config.server.access_log,
        limits=RequestLimits(
            max_json_depth=config.server.max_json_depth,
            max_messages=config.server.max_messages,
            max_tools=config.server.max_tools,
        ),
        auth_failures=c.auth_failures,
    )
    c.scheduler = build_jobs(c, surface)
    # The web console's login: a signed cookie plus a CSRF header on changes (palyra.console.session).
    sessions = ConsoleSessions(
        c.admin_token, always_secure=config.server.public_base_url.startswith("https://")
    )

    def admin_api() -> ASGIApp:
        # FastAPI and the admin routes' models are ~15 MB that a gateway serving only /v1 never
        # needs: built on the first /api/v1 request (the CLI's and the console's), not at start.
        from palyra.surface.admin_api import build_admin_api

        return build_admin_api(c, sessions)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        # Redis down does not make a replica unready: every replica shares it, so taking them out of
        # the load balancer would only turn budget 503s into connection errors.
        ready = await c.db.is_ready()
        body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "database": ready}
        body["shared_state"] = await c.shared.ready() if c.shared.shared else None
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(_request: Request) -> Response:
        c.metrics.journal_pending.set(c.journal.pending)
        c.metrics.journal_written.set(c.journal.written)
        c.metrics.journal_dropped.set(c.journal.dropped)
        for runtime in c.registry.runtimes.values():
            c.metrics.observe_provider(await provider_status(runtime, c.registry))
        return Response(c.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = (
            f"{request.method} {request.url.path} is not allowed"
            if status == 405
            else f"no endpoint {request.url.path}; see GET /v1/models and the README"
        )
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "method_not_allowed" if status == 405 else "unknown_url",
            }
        }
        return Response(orjson.dumps(body), status, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await c.db.start()
        await c.vault.check_master_key()
        await sync_admin_governance(c.db, c.governance.ledger, c.governance.prices)
        await c.journal.recover()
        c.journal.start()
        await c.scheduler.start()
        syncing = asyncio.create_task(_keep_governance_in_sync(c))
        # Everything built so far lives as long as the process: keep it out of the cyclic collector's
        # scans, so a full collection under load walks request garbage, not ~1 M start-up objects.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            syncing.cancel()
            await c.scheduler.stop()
            await c.journal.close()
            surface.access_log.flush()
            await c.shared.aclose()
            await c.alerts.drain()
            await c.auth.drain()
            await c.oauth.close()
            await c.registry.close()
            await c.db.close()

    v1_routes = surface.routes()
    app = PalyraApp(
        routes=[
            *v1_routes,
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Mount("/api/v1", app=BuiltOnFirstUse(admin_api)),
            Mount("/console", app=build_console(sessions, public_base_url=config.server.public_base_url)),
        ],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )
    app.state.components = c
    app.fast_routes = {
        (method, route.path): route.endpoint
        for route in v1_routes
        if "{" not in route.path
        for method in route.methods or ()
        if method != "HEAD"
    }
    return app


class PalyraApp(Starlette):
    """Starlette, with the /v1 endpoints called straight from one dictionary lookup on (method, path).

    Their handler turns every exception into an OpenAI-shaped error itself (``OpenAISurface._serve``),
    so the error middleware, the route table and the endpoint wrappers (~35 µs a request, a tenth of
    the daemon's CPU for a proxied call) are skipped for them; anything else, a wrong method included,
    takes the full way.
    """

    fast_routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.fast_routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                scope["app"] = self
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class BuiltOnFirstUse:
    """An ASGI app built by ``factory`` when the first request reaches it."""

    def __init__(self, factory: Callable[[], ASGIApp]) -> None:
        self._factory = factory
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is None:
            app = self._app = self._factory()
        await app(scope, receive, send)


async def _keep_governance_in_sync(c: Components) -> None:
    """Pick up budgets and prices another replica set through the admin API."""
    interval = c.config.server.policy_sync_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await sync_admin_governance(c.db, c.governance.ledger, c.governance.prices)
        except Exception:  # a database blip: keep what we have, try again next round
            log.warning("could not re-read budgets and prices from the database", exc_info=True)


async def _unwired_embedder(texts: list[str], agent: str | None) -> EmbedOutcome:  # pragma: no cover
    raise RuntimeError("the memory embedder is wired by build_jobs")


def _embedding_target(registry: ProviderRegistry) -> tuple[str, int | None]:
    model_id = registry.defaults.get("embeddings")
    if not model_id or model_id not in registry.models:
        raise InvalidRequest(
            "no default embeddings model is configured; set model_provider.default_embeddings_model_id",
            code="embeddings_unavailable",
        )
    return model_id, registry.models[model_id].target.dimensions


def build_jobs(c: Components, surface: OpenAISurface) -> Scheduler:
    """Wire memory embeddings through the normal provider path and register the built-in jobs."""
    gateway = surface.gateway

    async def embed(texts: list[str], agent: str | None) -> EmbedOutcome:
        model_id, dims = _embedding_target(c.registry)
        ctx = RunContext(
            RunRecord(
                request_id=new_request_id(),
                created_at=time.time(),
                endpoint="embeddings",
                agent_id=agent or SYSTEM_AGENT,
                requested_model=model_id,
            )
        )
        status = 200
        try:
            result = await gateway.embed(ctx, EmbeddingRequest(model=model_id, inputs=texts, dimensions=dims))
        except PalyraError as exc:
            ctx.record.status, ctx.record.error_class, status = "error", exc.code, exc.status
            raise
        finally:
            surface.finish_run(ctx, status)
        served = ctx.record.model_id or model_id
        width = len(result.vectors[0]) if result.vectors else (dims or 0)
        return EmbedOutcome(vectors=result.vectors, model_id=served, dims=width)

    c.memory.embedder = embed
    config = c.config
    scheduler = c.scheduler

    async def maintenance(_ctx: JobContext) -> dict[str, Any]:
        return await run_maintenance(c.db, config.memory, now=time.time())

    async def backfill(_ctx: JobContext) -> dict[str, Any]:
        return await run_backfill(c.memory, config.cron.embeddings_backfill_batch_size)

    async def reaudit(_ctx: JobContext) -> dict[str, Any]:
        return dict(await run_reaudit(c.skills))

    async def oauth_refresh(_ctx: JobContext) -> dict[str, Any]:
        return await c.auth.refresh_due(window_s=300.0)

    scheduler.register(
        JobSpec(
            name="memory_maintenance",
            handler=maintenance,
            interval_s=config.cron.memory_maintenance_interval_s,
            settings=config.memory.model_dump(),
            description="Delete expired and surplus memory items (TTL, ttl_days, max_entries, max_bytes); "
            "weekly vacuum.",
        )
    )
    scheduler.register(
        JobSpec(
            name="embeddings_backfill",
            handler=backfill,
            interval_s=config.cron.embeddings_backfill_interval_s,
            settings={"batch_size": config.cron.embeddings_backfill_batch_size},
            description="Embed memory items with no vector or a vector from another model, oldest first.",
        )
    )
    scheduler.register(
        JobSpec(
            name="skill_reaudit",
            handler=reaudit,
            interval_s=config.cron.skill_reaudit_interval_s,
            description="Re-verify installed skills on disk; quarantine failures (never lifts one).",
        )
    )
    scheduler.register(
        JobSpec(
            name="oauth_refresh",
            handler=oauth_refresh,
            interval_s=60,
            settings={"window_s": 300},
            description="Refresh OAuth profiles expiring within five minutes (single-flight, backoff kept).",
        )
    )
    return scheduler
