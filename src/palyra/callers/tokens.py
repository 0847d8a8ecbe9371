"""API tokens: minting (shown once), verification with a short cache, scopes, agent binding, rate limit."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from palyra.errors import AuthenticationFailed, InvalidRequest, PermissionDenied, RateLimited
from palyra.shared_state import CounterStore
from palyra.storage.tokens import TokenRecord, TokenRepository

TOKEN_PREFIX = "palyra_"
SCOPES = frozenset({"models", "chat", "embeddings", "audio", "memory", "*"})
DEFAULT_SCOPES = ("models", "chat", "embeddings", "audio")
_AGENT_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
log = logging.getLogger("palyra.tokens")
_NEGATIVE_TTL_S = 1.0
_CACHE_MAX = 10_000
# A cached token in the last fifth of its TTL is re-read in the background, so busy tokens never wait
# for the database; an expired one is read once however many requests want it at that moment.
_REFRESH_AHEAD = 0.8


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration; use a number with s, m, h, d or w (e.g. 30d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_agent_id(agent_id: str, param: str = "agent_id") -> str:
    if not _AGENT_ID.match(agent_id):
        raise InvalidRequest(
            f"{param} must be 1-128 characters of letters, digits, '_', '.', ':', '@' or '-'",
            code="invalid_agent_id",
            param=param,
        )
    return agent_id


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated /v1 caller."""

    token: TokenRecord

    def require_scope(self, scope: str) -> None:
        if scope not in self.token.scopes and "*" not in self.token.scopes:
            raise PermissionDenied(
                f"this API token lacks the '{scope}' scope; create a token with --scope {scope}",
                code="missing_scope",
            )

    def agent_for(self, requested: str | None) -> str | None:
        """The agent this request acts as; a token bound to an agent cannot act as another."""
        bound = self.token.agent_id
        if requested is None:
            return bound
        validate_agent_id(requested, "X-Palyra-Agent")
        if bound is not None and requested != bound:
            raise PermissionDenied(
                f"this API token is bound to agent '{bound}' and cannot act as agent '{requested}'",
                code="agent_forbidden",
            )
        return requested


class TokenService:
    def __init__(
        self,
        repo: TokenRepository,
        counters: CounterStore,
        *,
        cache_ttl_s: float = 5.0,
        default_rate_limit_per_minute: int = 0,
    ) -> None:
        self._repo = repo
        self._counters = counters
        self._ttl = cache_ttl_s
        self._default_rate = default_rate_limit_per_minute
        # token hash -> (record or None for unknown, fetched at)
        self._cache: OrderedDict[str, tuple[TokenRecord | None, float]] = OrderedDict()
        self._reads: dict[str, asyncio.Future[TokenRecord | None]] = {}
        self._generation = 0  # bumped by revoke: a read that started before it is not cached
        self._background: set[asyncio.Task[TokenRecord | None]] = set()
        self.last_used: dict[str, float] = {}

    async def create(
        self,
        *,
        name: str,
        scopes: list[str] | tuple[str, ...] | None = None,
        agent_id: str | None = None,
        expires_in_s: float | None = None,
        rate_limit_per_minute: int | None = None,
        routing_mode: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """Mint a token; the plaintext is returned here and never again."""
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidRequest("name must be 1-200 characters", code="invalid_name", param="name")
        wanted = tuple(scopes) if scopes else DEFAULT_SCOPES
        unknown = sorted(set(wanted) - SCOPES)
        if unknown:
            raise InvalidRequest(
                f"unknown scope {', '.join(unknown)}; use {', '.join(sorted(SCOPES))}",
                code="invalid_scope",
                param="scopes",
            )
        if agent_id is not None:
            validate_agent_id(agent_id)
        if rate_limit_per_minute is not None and rate_limit_per_minute < 0:
            raise InvalidRequest(
                "rate_limit_per_minute must be >= 0 (0: unlimited)",
                code="invalid_rate_limit",
                param="rate_limit_per_minute",
            )
        if routing_mode is not None and routing_mode not in ("off", "suggest", "dry_run", "enforced"):
            raise InvalidRequest(
                "routing_mode must be off, suggest, dry_run or enforced",
                code="invalid_value",
                param="routing_mode",
            )
        if expires_in_s is not None and expires_in_s <= 0:
            raise InvalidRequest("expiry must be in the future", code="invalid_expiry", param="expires_in")
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(24)
        now = time.time()
        record = TokenRecord(
            token_id="tok_" + secrets.token_hex(8),
            name=name,
            display_prefix=plaintext[:12],
            scopes=frozenset(wanted),
            agent_id=agent_id,
            rate_limit_per_minute=rate_limit_per_minute,
            created_at=now,
            expires_at=now + expires_in_s if expires_in_s else None,
            revoked_at=None,
            last_used_at=None,
            routing_mode=routing_mode,
        )
        await self._repo.insert(record, hash_token(plaintext))
        return record, plaintext

    async def revoke(self, token_id: str) -> bool:
        changed, token_hash = await self._repo.revoke(token_id, now=time.time())
        self._generation += 1
        if token_hash is not None:
            self._cache.pop(token_hash, None)
        return changed

    async def authenticate(self, authorization: str | None, now: float) -> Caller:
        if not authorization:
            raise AuthenticationFailed(
                "missing API token; send 'Authorization: Bearer palyra_…' (create one with "
                "`palyra tokens create`)"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("the Authorization header must be 'Bearer palyra_…'")
        if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            raise AuthenticationFailed(
                "invalid API token; Palyra expects a token made by `palyra tokens create`"
            )
        token_hash = hash_token(token)
        record = await self._lookup(token_hash, now)
        # Lookup is by SHA-256 of the token: timing can reveal at most a prefix of a hash, never of a token.
        if record is None:
            raise AuthenticationFailed("invalid API token")
        if record.revoked_at is not None:
            raise AuthenticationFailed("this API token has been revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationFailed("this API token has expired; create a new one")
        self.last_used[record.token_id] = now
        return Caller(record)

    async def check_rate_limit(self, caller: Caller, now: float) -> None:
        limit = caller.token.rate_limit_per_minute
        if limit is None:
            limit = self._default_rate
        if not limit:
            return
        count, reset_in = await self._counters.hit(f"rl:token:{caller.token.token_id}", 60, now)
        if count > limit:
            raise RateLimited(
                f"API token rate limit of {limit} requests per minute exceeded; "
                "retry after the window resets",
                retry_after_s=max(1.0, reset_in),
            )

    async def _lookup(self, token_hash: str, now: float) -> TokenRecord | None:
        hit = self._cache.get(token_hash)
        if hit is not None:
            record, fetched = hit
            ttl = self._ttl if record is not None else min(self._ttl, _NEGATIVE_TTL_S)
            age = now - fetched
            if age < ttl:
                if record is not None and age >= ttl * _REFRESH_AHEAD and token_hash not in self._reads:
                    task = asyncio.ensure_future(self._read(token_hash))
                    self._background.add(task)
                    task.add_done_callback(self._background_done)
                return record
        return await self._read(token_hash)

    async def _read(self, token_hash: str) -> TokenRecord | None:
        """One database read per token hash at a time; concurrent callers share it."""
        pending = self._reads.get(token_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(token_hash))
            self._reads[token_hash] = pending
            pending.add_done_callback(lambda _: self._reads.pop(token_hash, None))
        return await asyncio.shield(pending)

    async def _fetch(self, token_hash: str) -> TokenRecord | None:
        generation = self._generation
        fetched = time.time()
        record = await self._repo.find_by_hash(token_hash)
        if generation == self._generation:
            self._cache[token_hash] = (record, fetched)
            self._cache.move_to_end(token_hash)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return record

    def _background_done(self, task: asyncio.Task[TokenRecord | None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Nothing waits on it; the next request past the TTL reads (and fails) in the open.
            log.warning("background re-read of an API token failed: %s", type(task.exception()).__name__)

    def drain_last_used(self) -> dict[str, float]:
        used, self.last_used = self.last_used, {}
        return used
