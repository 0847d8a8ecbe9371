"""The `palyra` command line. Human-readable output by default, JSON with --json.

Commands that read or change state work while the daemon runs: they use the same database.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from palyra.callers.admin import load_admin_token
from palyra.callers.tokens import TokenService, parse_duration
from palyra.config.load import load_config
from palyra.config.models import PalyraConfig
from palyra.config.template import TEMPLATE
from palyra.errors import ConfigError, PalyraError
from palyra.shared_state import InProcessCounterStore
from palyra.storage.db import Database, database_url_for
from palyra.storage.runs import GROUP_COLUMNS, RunRepository
from palyra.storage.tokens import TokenRepository

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Palyra LLM gateway.")
config_app = typer.Typer(no_args_is_help=True, help="Validate configuration.")
tokens_app = typer.Typer(no_args_is_help=True, help="API tokens for the /v1 surface.")
app.add_typer(config_app, name="config")
app.add_typer(tokens_app, name="tokens")
providers_app = typer.Typer(no_args_is_help=True, help="Upstream providers: health and probes.")
app.add_typer(providers_app, name="providers")
auth_app = typer.Typer(no_args_is_help=True, help="Auth profiles: provider credentials kept in the vault.")
app.add_typer(auth_app, name="auth")
budgets_app = typer.Typer(no_args_is_help=True, help="Budgets and their alerts.")
app.add_typer(budgets_app, name="budgets")
routing_app = typer.Typer(no_args_is_help=True, help="Smart routing decisions.")
app.add_typer(routing_app, name="routing")


class _Console:
    """rich's Console, made on first use: rich stays unloaded in `palyra serve` unless it must print."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def _table(*columns: Any, **options: Any) -> Table:
    from rich.table import Table

    return Table(*columns, **options)


# Piped output keeps whole rows on a line, so grep and less see one run per line.
out = _Console(width=None if sys.stdout.isatty() else 200)
err = _Console(stderr=True)
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (or PALYRA_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def fail(message: str, hint: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    err.print(f"[dim]hint:[/] {hint}", highlight=False)
    raise typer.Exit(code)


def _load(config: Path | None, **server: Any) -> PalyraConfig:
    try:
        return load_config(config, overrides={"server": server} if server else None)
    except ConfigError as exc:
        fail(str(exc), "fix the key named above, then run `palyra config check`", 2)


def _run_db(cfg: PalyraConfig, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        state_dir = Path(cfg.server.state_dir).expanduser().resolve()
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = Database(database_url_for(cfg.server.database_url, state_dir), schema=cfg.server.database_schema)
        try:
            await db.start()
        except Exception as exc:
            fail(
                f"cannot open the database: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                "check server.database_url / PALYRA_DATABASE_URL and that the database is reachable",
            )
        try:
            return await work(db)
        finally:
            await db.close()

    try:
        return asyncio.run(go())
    except PalyraError as exc:
        fail(exc.message, "see `palyra --help` for the command's options")


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _ts(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="State directory.")] = None,
) -> None:
    """Run the daemon."""
    from palyra.server import serve as run_server

    cfg = _load(config, host=host, port=port, state_dir=str(state_dir) if state_dir else None)
    try:
        run_server(cfg)
    except ConfigError as exc:
        fail(str(exc), "fix the key named above, then run `palyra config check`", 2)


@app.command()
def init(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="State directory to use.")] = Path(".palyra"),
    path: Annotated[Path, typer.Option("--path", help="Where to write the config.")] = Path("palyra.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented palyra.toml."""
    if path.exists() and not force:
        fail(f"{path} already exists", "pass --force to overwrite it, or --path to write elsewhere")
    path.write_text(TEMPLATE.format(state_dir=str(state_dir)), encoding="utf-8")
    out.print(f"wrote {path}; start with: palyra serve --config {path}")


@config_app.command("check")
def config_check(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Validate the configuration without starting."""
    cfg = _load(config)
    mp = cfg.model_provider
    summary = {
        "ok": True,
        "providers": [p.provider_id for p in mp.providers],
        "models": [m.model_id for m in mp.models],
        "default_chat_model_id": mp.default_chat_model_id,
        "default_embeddings_model_id": mp.default_embeddings_model_id,
        "default_audio_transcription_model_id": mp.default_audio_transcription_model_id,
        "database": "postgresql" if cfg.server.database_url.startswith("postgres") else "sqlite",
    }
    if as_json:
        _emit_json(summary)
        return
    out.print(
        f"config OK: {len(mp.providers)} provider(s), {len(mp.models)} model(s); "
        f"default chat model {mp.default_chat_model_id}"
    )


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="What the token is for.")],
    agent: Annotated[str | None, typer.Option("--agent", help="Bind the token to one agent.")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="models, chat, embeddings, audio, memory or * (repeatable)."),
    ] = None,
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="e.g. 30d, 12h.")] = None,
    rate_limit_per_minute: Annotated[
        int | None, typer.Option("--rate-limit-per-minute", help="Requests per minute; 0 unlimited.")
    ] = None,
    routing_mode: Annotated[
        str | None,
        typer.Option("--routing-mode", help="Override routing.mode: off|suggest|dry_run|enforced."),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token. The token is printed once, alone on the last line."""
    cfg = _load(config)
    expires = None
    if expires_in:
        try:
            expires = parse_duration(expires_in)
        except ValueError as exc:
            fail(str(exc), "use --expires-in 30d")

    async def work(db: Database) -> tuple[dict[str, Any], str]:
        service = TokenService(TokenRepository(db), InProcessCounterStore())
        record, plaintext = await service.create(
            name=name,
            scopes=scope,
            agent_id=agent,
            expires_in_s=expires,
            rate_limit_per_minute=rate_limit_per_minute,
            routing_mode=routing_mode,
        )
        return record.public(), plaintext

    public, plaintext = _run_db(cfg, work)
    if as_json:
        _emit_json({**public, "token": plaintext})
        return
    err.print(
        f"created {public['token_id']} ({public['name']}), scopes {' '.join(public['scopes'])}"
        + (f", agent {public['agent_id']}" if public["agent_id"] else "")
        + ". Store the token now: it is not shown again."
    )
    print(plaintext)


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List API tokens (never their values)."""
    cfg = _load(config)
    records = _run_db(cfg, lambda db: TokenRepository(db).list())
    rows = [r.public() for r in records]
    if as_json:
        _emit_json(rows)
        return
    table = _table("id", "name", "prefix", "scopes", "agent", "rate/min", "status", "expires", "last used")
    for r in rows:
        table.add_row(
            str(r["token_id"]),
            str(r["name"]),
            str(r["prefix"]) + "…",
            " ".join(r["scopes"]),  # type: ignore[arg-type]
            str(r["agent_id"] or "-"),
            str(r["rate_limit_per_minute"] or "-"),
            str(r["status"]),
            _ts(r["expires_at"]),  # type: ignore[arg-type]
            _ts(r["last_used_at"]),  # type: ignore[arg-type]
        )
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke an API token. A running daemon rejects it at once when reachable, else within seconds."""
    cfg = _load(config)
    via_daemon = _revoke_via_daemon(cfg, token_id)
    if via_daemon is None:

        async def work(db: Database) -> bool | None:
            repo = TokenRepository(db)
            if await repo.get(token_id) is None:
                return None
            changed, _ = await repo.revoke(token_id, now=time.time())
            return changed

        result = _run_db(cfg, work)
        if result is None:
            fail(f"no token {token_id}", "list tokens with `palyra tokens list`")
        note = f"running daemons stop accepting it within {cfg.server.token_cache_ttl_s:g} s"
    else:
        note = "the daemon rejects it from now on"
    if as_json:
        _emit_json({"token_id": token_id, "revoked": True})
        return
    out.print(f"revoked {token_id}; {note}")


def _revoke_via_daemon(cfg: PalyraConfig, token_id: str) -> bool | None:
    """Ask a running daemon to revoke (so its cache forgets the token now). None: no daemon answered."""
    answer = _daemon_call(cfg, "POST", f"/api/v1/tokens/{token_id}/revoke")
    if answer is None:
        return None
    status, _ = answer
    if status == 404:
        fail(f"no token {token_id}", "list tokens with `palyra tokens list`")
    return status == 200


def _daemon_call(cfg: PalyraConfig, method: str, path: str, timeout: float = 15.0) -> tuple[int, Any] | None:
    """Call the running daemon's admin API; None when no daemon answers on the configured address."""
    state_dir = Path(cfg.server.state_dir).expanduser().resolve()
    try:
        admin_token, _ = load_admin_token(state_dir)
    except OSError:
        return None
    host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    import urllib.error  # with urllib.request, ~1 MB that `palyra serve` does not need
    import urllib.request

    req = urllib.request.Request(
        f"http://{host}:{cfg.server.port}{path}",
        method=method,
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return None


@providers_app.command("list")
def providers_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Providers with health, circuit state, load and recent latency (from the running daemon)."""
    cfg = _load(config)
    answer = _daemon_call(cfg, "GET", "/api/v1/providers")
    if answer is None or answer[0] != 200:
        rows = [
            {
                "provider_id": p.provider_id,
                "kind": p.kind,
                "base_url": p.base_url,
                "health": "unknown (daemon not running)",
            }
            for p in cfg.model_provider.providers
        ]
        if as_json:
            _emit_json(rows)
            return
        err.print(
            "the daemon is not reachable; showing the configuration only (start it with `palyra serve`)"
        )
        table = _table("provider", "kind", "base url", "health")
        for r in rows:
            table.add_row(str(r["provider_id"]), str(r["kind"]), str(r["base_url"] or "-"), str(r["health"]))
        out.print(table)
        return
    data = answer[1]["data"]
    if as_json:
        _emit_json(data)
        return
    table = _table(
        "provider", "kind", "health", "circuit", "in flight", "requests", "error rate", "p50 ms", "last error"
    )
    for p in data:
        m = p["metrics"]
        last = m["last_error"]
        table.add_row(
            p["provider_id"],
            p["kind"],
            p["health"],
            p["circuit"]["state"],
            f"{p['concurrency']['in_flight']}/{p['concurrency']['limit']}",
            str(m["requests"]),
            f"{m['error_rate']:.1%}",
            "-" if m["latency_ms_p50"] is None else f"{m['latency_ms_p50']:.1f}",
            "-" if last is None else f"{last['class']}: {last['message'][:60]}",
        )
    out.print(table)


@providers_app.command("test")
def providers_test(
    provider_id: Annotated[str | None, typer.Argument(help="Provider to probe; all when omitted.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe upstreams (their model list): address, credential and API shape in one call."""
    cfg = _load(config)
    ids = [provider_id] if provider_id else [p.provider_id for p in cfg.model_provider.providers if p.enabled]
    results = []
    for pid in ids:
        answer = _daemon_call(cfg, "POST", f"/api/v1/providers/{pid}/test")
        if answer is None:
            results.append(_probe_locally(cfg, pid))
        elif answer[0] == 404:
            fail(f"no enabled provider {pid!r}", "see `palyra providers list`")
        else:
            results.append(answer[1])
    if as_json:
        _emit_json(results)
    else:
        for r in results:
            mark = "[green]ok[/]" if r["state"] == "ok" else f"[red]{r['state']}[/]"
            out.print(f"{r['provider_id']}: {mark} {r.get('message', '')} ({r.get('latency_ms', '-')} ms)")
    if any(r["state"] != "ok" for r in results):
        raise typer.Exit(1)


def _probe_locally(cfg: PalyraConfig, provider_id: str) -> dict[str, Any]:
    from palyra.providers.registry import ProviderRegistry
    from palyra.providers.status import probe

    async def go() -> dict[str, Any]:
        registry = ProviderRegistry(cfg.model_provider)
        try:
            runtime = registry.runtimes.get(provider_id)
            if runtime is None:
                fail(f"no enabled provider {provider_id!r}", "see `palyra providers list`")
            return await probe(runtime, registry, discover=False)
        finally:
            await registry.close()

    return asyncio.run(go())


def _run_auth(cfg: PalyraConfig, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(service)`` with an AuthService over the shared database and vault."""
    from palyra.auth.audit import AuditLog
    from palyra.auth.oauth import OAuthClient
    from palyra.auth.profiles import ProfileRepository
    from palyra.auth.service import AuthService
    from palyra.vault.keys import load_master_key
    from palyra.vault.store import Vault

    async def go(db: Database) -> T:
        state_dir = Path(cfg.server.state_dir).expanduser().resolve()
        vault = Vault(db, load_master_key(state_dir))
        await vault.check_master_key()
        allow_private = any(o.allow_private for o in cfg.auth.oauth.values())
        oauth = OAuthClient(allow_private=allow_private)
        service = AuthService(ProfileRepository(db), vault, AuditLog(db), oauth, cfg, cache_ttl_s=0)
        try:
            return await work(service)
        finally:
            await service.drain()
            await oauth.close()

    return _run_db(cfg, go)


def _read_secret_from_stdin(what: str) -> str:
    import getpass

    value = getpass.getpass(f"{what} (input hidden): ") if sys.stdin.isatty() else sys.stdin.read()
    value = value.strip()
    if not value:
        fail(
            f"no {what} on standard input",
            "pipe it in, e.g. `printenv OPENAI_API_KEY | palyra auth add-key ...`",
        )
    return value


@auth_app.command("add-key")
def auth_add_key(
    provider: Annotated[str, typer.Option("--provider", help="openai, anthropic or custom.")],
    profile_id: Annotated[str, typer.Option("--profile-id", help="Profile id (reuse one to rotate).")],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Scope the profile to one agent.")] = None,
    custom_name: Annotated[str | None, typer.Option("--custom-name", help="For --provider custom.")] = None,
    provider_id: Annotated[
        str | None,
        typer.Option("--provider-id", help="Configured provider whose base_url validates the key."),
    ] = None,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the upstream check.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store an API key (read from stdin, never argv) in the vault under an auth profile."""
    from palyra.auth.key_check import KeyCheckFailed
    from palyra.auth.profiles import ProfileError

    cfg = _load(config)
    key = _read_secret_from_stdin("API key")

    async def work(service: Any) -> tuple[dict[str, Any], bool]:
        try:
            profile, rotated = await service.add_api_key(
                provider=provider,
                api_key=key,
                profile_name=name,
                profile_id=profile_id,
                agent_id=agent,
                custom_name=custom_name,
                validate=not no_validate,
                provider_id=provider_id,
            )
        except ProfileError as exc:
            fail(f"{exc.field}: {exc.message}", "fix the option named above")
        except KeyCheckFailed as exc:
            fail(
                f"the key was not stored: {exc.message}",
                "check the key, or pass --no-validate to store it unchecked",
            )
        return await service.view(profile), rotated

    view, rotated = _run_auth(cfg, work)
    if as_json:
        _emit_json(view)
        return
    verb = "rotated" if rotated else "saved"
    out.print(f"{verb} auth profile {view['profile_id']} ({view['provider']}, {view['health']})")


@auth_app.command("list")
def auth_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Auth profiles with health (static | ok | expiring | expired | missing); never secrets."""
    cfg = _load(config)

    async def work(service: Any) -> list[dict[str, Any]]:
        return [await service.view(p) for p in await service.repo.list(limit=500)]

    views = _run_auth(cfg, work)
    if as_json:
        _emit_json(views)
        return
    table = _table("profile", "provider", "type", "scope", "health", "eligibility", "expires")
    for v in views:
        scope = "global" if v["scope"]["kind"] == "global" else f"agent:{v['scope']['agent_id']}"
        table.add_row(
            v["profile_id"],
            v["provider"],
            v["credential"]["type"],
            scope,
            v["health"],
            v["eligibility"],
            _ts(v["credential"]["expires_at"]),
        )
    out.print(table)


@auth_app.command("show")
def auth_show(profile_id: str, config: ConfigOpt = None) -> None:
    """One profile in full (JSON), without secrets."""
    cfg = _load(config)

    async def work(service: Any) -> dict[str, Any] | None:
        profile = await service.repo.get(profile_id)
        return None if profile is None else await service.view(profile)

    view = _run_auth(cfg, work)
    if view is None:
        fail(f"no auth profile {profile_id!r}", "see `palyra auth list`")
    _emit_json(view)


@auth_app.command("refresh")
def auth_refresh(profile_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Refresh an OAuth profile's access token now."""
    from palyra.auth.profiles import ProfileError

    cfg = _load(config)

    async def work(service: Any) -> dict[str, Any]:
        try:
            return dict(await service.refresh(profile_id, force=True))
        except ProfileError as exc:
            fail(exc.message, "see `palyra auth list`")

    outcome = _run_auth(cfg, work)
    if as_json:
        _emit_json(outcome)
    else:
        out.print(f"{profile_id}: {outcome['state']}: {outcome['message']}")
    if outcome["state"] in ("failed", "cooldown"):
        raise typer.Exit(1)


@auth_app.command("revoke")
def auth_revoke(profile_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke (OAuth: at the provider too) and remove a profile and its vault secrets."""
    from palyra.auth.oauth import OAuthError
    from palyra.auth.profiles import ProfileError

    cfg = _load(config)

    async def work(service: Any) -> dict[str, Any]:
        try:
            return dict(await service.revoke(profile_id))
        except ProfileError as exc:
            fail(exc.message, "see `palyra auth list`")
        except OAuthError as exc:
            fail(
                f"{exc}; nothing was removed",
                "retry later; the provider's revocation endpoint did not answer",
            )

    outcome = _run_auth(cfg, work)
    if as_json:
        _emit_json(outcome)
    else:
        out.print(outcome["message"])


@auth_app.command("delete")
def auth_delete(profile_id: str, config: ConfigOpt = None) -> None:
    """Remove a profile and its vault secrets locally (no call to the provider)."""
    cfg = _load(config)

    async def work(service: Any) -> bool:
        return bool(await service.delete(profile_id))

    if not _run_auth(cfg, work):
        fail(f"no auth profile {profile_id!r}", "see `palyra auth list`")
    out.print(f"deleted {profile_id} and its vault secrets")


@budgets_app.command("list")
def budgets_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Budget policies with spend, reservations and room left in the current window."""
    cfg = _load(config)
    answer = _daemon_call(cfg, "GET", "/api/v1/budgets")
    if answer is not None and answer[0] == 200:
        rows = answer[1]["data"]
    else:
        from palyra.governance.admin_store import load_admin_policies
        from palyra.governance.budgets import Policy, window_key, window_start

        async def work(db: Database) -> list[dict[str, Any]]:
            repo = RunRepository(db)
            policies = [Policy.from_config(b) for b in cfg.budgets] + await load_admin_policies(db)
            out = []
            now = time.time()
            for p in policies:
                spent = sum(
                    a
                    for _, a in await repo.spend_by_minute(
                        metric=p.metric, scope=p.scope, since=window_start(p.window, now)
                    )
                )
                out.append(
                    {
                        "policy_id": p.policy_id,
                        "scope": p.scope,
                        "metric": p.metric,
                        "window": p.window,
                        "soft_limit": p.soft_limit,
                        "hard_limit": p.hard_limit,
                        "source": p.source,
                        "window_key": window_key(p.window, now),
                        "spent": spent,
                        "reserved": None,
                        "remaining": None if p.hard_limit is None else max(0.0, p.hard_limit - spent),
                    }
                )
            return out

        rows = _run_db(cfg, work)
    if as_json:
        _emit_json(rows)
        return
    table = _table("policy", "scope", "metric", "window", "spent", "soft", "hard", "remaining")

    def num(metric: str, v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if metric == "usd" else f"{v:,.0f}")

    for r in rows:
        m = r["metric"]
        table.add_row(
            r["policy_id"],
            r["scope"],
            m,
            f"{r['window']} ({r['window_key']})",
            num(m, r["spent"]),
            num(m, r["soft_limit"]),
            num(m, r["hard_limit"]),
            num(m, r["remaining"]),
        )
    out.print(table)


@budgets_app.command("alerts")
def budgets_alerts(
    limit: Annotated[int, typer.Option("--limit", help="How many.")] = 50,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Alerts: soft budget limits crossed, unpriced models used."""
    from palyra.governance.alerts import AlertLog

    cfg = _load(config)
    rows = _run_db(cfg, lambda db: AlertLog(db).list(limit=limit))
    if as_json:
        _emit_json(rows)
        return
    table = _table("time", "kind", "subject", "window", "message", "webhook")
    for r in rows:
        table.add_row(
            _ts(r["at"]), r["kind"], r["subject"], r["window_key"], r["message"], r["webhook_status"] or "-"
        )
    out.print(table)


@routing_app.command("decisions")
def routing_decisions(
    limit: Annotated[int, typer.Option("--limit", help="How many.")] = 20,
    since: Annotated[str | None, typer.Option("--since", help="e.g. 7d.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Routing decisions with score, recommendation and the saving (or loss) per run and in total."""
    cfg = _load(config)
    start = None
    if since:
        try:
            start = time.time() - parse_duration(since)
        except ValueError as exc:
            fail(str(exc), "use --since 7d")

    async def work(db: Database) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        repo = RunRepository(db)
        return await repo.decisions(limit=limit, since=start), await repo.decision_totals(since=start)

    rows, totals = _run_db(cfg, work)
    if as_json:
        for row in rows:
            for key in ("reason_codes", "features", "candidates"):
                row[key] = json.loads(row[key]) if row[key] else None
        _emit_json({"data": rows, "totals": totals})
        return
    table = _table(
        "time", "mode", "requested", "recommended", "served", "score", "actual $", "if routed $", "saving $"
    )

    def money(v: Any) -> str:
        return "-" if v is None else f"{v:.6f}"

    for r in rows:
        table.add_row(
            _ts(r["at"]),
            r["mode"],
            r["requested_model"] or "-",
            r["recommended_model"] or "-",
            r["served_model"] or "-",
            "-" if r["score"] is None else f"{r['score']:.2f}",
            money(r["actual_cost_usd"]),
            money(r["recommended_cost_usd"]),
            money(r["saving_usd"]),
        )
    out.print(table)
    out.print(
        f"{totals['decisions']} decision(s); total saving {money(totals['saving_usd'])} USD "
        "(dry_run: what following the router would have saved; enforced: what it saved)"
    )


@app.command()
def usage(
    since: Annotated[str, typer.Option("--since", help="How far back, e.g. 7d, 24h.")] = "7d",
    by: Annotated[str | None, typer.Option("--by", help="model, agent, session, provider or token.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    limit: Annotated[int, typer.Option("--limit", help="Recent runs to list.")] = 20,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent runs and totals from the run journal."""
    if as_json:
        fmt = "json"
    if fmt not in ("table", "json", "csv"):
        fail(f"unknown format {fmt!r}", "use --format table, json or csv")
    if by is not None and by not in GROUP_COLUMNS:
        fail(f"cannot group by {by!r}", f"use --by {' | '.join(GROUP_COLUMNS)}")
    try:
        start = time.time() - parse_duration(since)
    except ValueError as exc:
        fail(str(exc), "use --since 7d")
    cfg = _load(config)

    async def work(db: Database) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        repo = RunRepository(db)
        totals = await repo.totals(since=start, by=by)
        recent = [] if by else await repo.recent(since=start, limit=limit)
        return totals, recent

    totals, recent = _run_db(cfg, work)
    if fmt == "json":
        _emit_json({"since": since, "by": by, "totals": totals, "runs": recent})
        return
    if fmt == "csv":
        rows = totals if by else recent
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return
    if not by and recent:
        table = _table(
            "time",
            "request id",
            "endpoint",
            "model",
            "agent",
            "status",
            "tokens in/out",
            "ms",
            title="recent runs",
        )
        for r in recent:
            table.add_row(
                _ts(r["created_at"]),
                r["request_id"],
                r["endpoint"],
                r["model_id"] or r["requested_model"] or "-",
                r["agent_id"] or "-",
                f"{r['http_status']} {r['status']}",
                f"{r['prompt_tokens']}/{r['completion_tokens']}",
                f"{r['latency_ms']:.1f}",
            )
        out.print(table)
    table = _table(
        *(["key"] if by else []),
        "requests",
        "errors",
        "prompt",
        "completion",
        "cost usd",
        title=f"totals since {since}",
    )
    for t in totals:
        cost = "-" if t["cost_usd"] is None else f"{t['cost_usd']:.6f}"
        cells = [
            str(t["requests"]),
            str(t["errors"]),
            str(t["prompt_tokens"]),
            str(t["completion_tokens"]),
            cost,
        ]
        table.add_row(*([str(t["key"] or "-")] if by else []), *cells)
    out.print(table)


def main() -> None:
    if sys.argv[1:2] != ["serve"]:  # the daemon needs none of the command groups (nor what they load)
        _add_command_groups()
    app()


def _add_command_groups() -> None:
    from palyra.jobs.cli import cron_app
    from palyra.memory.cli import memory_app
    from palyra.skills.cli import skills_app
    from palyra.vault.cli import vault_app

    app.add_typer(vault_app, name="vault", help="The encrypted vault: metadata and master-key rotation.")
    app.add_typer(cron_app, name="cron", help="Background jobs: list, run history, run now.")
    app.add_typer(memory_app, name="memory", help="Agent memory: add items, search them.")
    app.add_typer(skills_app, name="skills", help="Signed skill packages: install, list, audit, trust.")


def serve_main() -> None:
    """`palyrad`: the daemon alone."""
    sys.argv = [sys.argv[0], "serve", *sys.argv[1:]]
    app()
