"""Running the daemon: uvicorn with uvloop and httptools, graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette

from palyra.app import Components, build_app
from palyra.config.models import PalyraConfig
from palyra.logs import configure_logging
from palyra.vault.errors import VaultError

# How the supervisor hands the resolved configuration to its worker processes.
WORKER_CONFIG_ENV = "PALYRA_WORKER_CONFIG"


def serve(config: PalyraConfig, *, announce: bool = True) -> None:
    configure_logging(config.server.log_level)
    app = build_app(config)
    c = app.state.components
    asyncio.run(_preflight(c))
    if announce:
        host, port = config.server.host, config.server.port
        shown = f"[{host}]" if ":" in host else host
        print(f"palyra: listening on http://{shown}:{port}  (OpenAI base URL: http://{shown}:{port}/v1)")
        print(f"palyra: state dir {c.state_dir}")
        print(f"palyra: database {c.db.url.split('://')[0]}  admin token from {c.admin_token_source}")
        print("palyra: get an API token with: palyra tokens create --name my-app")
        sys.stdout.flush()
    options: dict[str, Any] = {
        "host": config.server.host,
        "port": config.server.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "none",  # no WebSocket endpoint: do not load a WebSocket library either
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "timeout_graceful_shutdown": int(config.server.graceful_shutdown_s),
        "timeout_keep_alive": 30,
        "backlog": 4096,
    }
    if config.server.workers > 1:
        # A supervisor and N worker processes on one port; each builds its own app from the resolved
        # configuration (migrations already ran above, in this process).
        os.environ[WORKER_CONFIG_ENV] = config.model_dump_json()
        uvicorn.run("palyra.server:worker_app", factory=True, workers=config.server.workers, **options)
        return
    uv_config = uvicorn.Config(app, **options)
    uvicorn.Server(uv_config).run()


def worker_app() -> Starlette:
    """The app of one worker process (``server.workers`` > 1)."""
    config = PalyraConfig.model_validate_json(os.environ[WORKER_CONFIG_ENV])
    configure_logging(config.server.log_level)
    return build_app(config)


async def _preflight(c: Components) -> None:
    """Fail fast, with a message and a fix, on what would otherwise be a traceback at start-up."""
    try:
        await c.db.start()
        await c.vault.check_master_key()
    except VaultError as exc:
        print(f"palyra: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        print(f"palyra: cannot open the database: {type(exc).__name__}: {first}", file=sys.stderr)
        print(
            "hint: check server.database_url / PALYRA_DATABASE_URL and that the database is reachable",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    finally:
        await c.db.close()
