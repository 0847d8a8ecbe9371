"""`palyra memory add|search`. Registered by palyra.cli.

Both need an embedding, which only the daemon makes (through its providers, journal and budgets), so
they call the running daemon's admin API rather than the database.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

# Imported as a module and used at call time: palyra.cli imports this module while it loads.
import palyra.cli as base_cli
from palyra.callers.admin import load_admin_token
from palyra.config.models import PalyraConfig

memory_app = typer.Typer(no_args_is_help=True, help="Agent memory: add items and search them.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (or PALYRA_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
AgentOpt = Annotated[str, typer.Option("--agent", help="The agent whose memory this is.")]
DEFAULT_AGENT = "default"


def post_json(
    cfg: PalyraConfig, path: str, body: dict[str, Any], timeout: float = 30.0
) -> tuple[int, Any] | None:
    """POST JSON to the running daemon's admin API; None when no daemon answers."""
    state_dir = Path(cfg.server.state_dir).expanduser().resolve()
    try:
        admin_token, _ = load_admin_token(state_dir)
    except OSError:
        return None
    host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    req = urllib.request.Request(
        f"http://{host}:{cfg.server.port}{path}",
        method="POST",
        data=json.dumps(body).encode("utf-8"),
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
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


def _call(cfg: PalyraConfig, path: str, body: dict[str, Any], ok: int) -> Any:
    answer = post_json(cfg, path, body)
    if answer is None:
        base_cli.fail(
            f"no daemon answers on {cfg.server.host}:{cfg.server.port}",
            "memory needs the daemon to make embeddings: start it with `palyra serve`",
        )
    status, payload = answer
    if status != ok:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        base_cli.fail(
            f"the daemon answered {status}: {error.get('message', 'no details')}",
            "check the arguments (see --help) and the daemon log",
        )
    return payload


@memory_app.command("add")
def memory_add(
    text: Annotated[str, typer.Argument(help="What to remember.")],
    agent: AgentOpt = DEFAULT_AGENT,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    ttl_days: Annotated[
        float | None, typer.Option("--ttl-days", help="Forget it after this many days.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a memory item for an agent (embedded by the daemon)."""
    cfg = base_cli._load(config)
    body: dict[str, Any] = {"text": text, "agent_id": agent, "tags": tag or []}
    if ttl_days is not None:
        body["ttl_days"] = ttl_days
    item = _call(cfg, "/api/v1/memory/items", body, 201)
    if as_json:
        base_cli._emit_json(item)
        return
    note = "" if item.get("embedded") else " (not embedded yet; the backfill will embed it)"
    base_cli.out.print(f"{item['item_id']} stored for agent {item['agent_id']}{note}", highlight=False)


@memory_app.command("search")
def memory_search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    agent: AgentOpt = DEFAULT_AGENT,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many results.")] = 5,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The agent's memory items nearest the query, best first."""
    cfg = base_cli._load(config)
    hits = _call(cfg, "/api/v1/memory/search", {"query": query, "agent_id": agent, "k": k}, 200)["data"]
    if as_json:
        base_cli._emit_json(hits)
        return
    if not hits:
        base_cli.err.print(
            f"no memory items for agent {agent} match (items still being embedded are not searched)"
        )
        return
    table = Table("score", "item", "created", "tags", "text")
    for hit in hits:
        text = hit["text"] if len(hit["text"]) <= 120 else hit["text"][:117] + "..."
        table.add_row(
            f"{hit['score']:.3f}",
            hit["item_id"],
            base_cli._ts(hit["created_at"]),
            ", ".join(hit["tags"]),
            text,
        )
    base_cli.out.print(table)
