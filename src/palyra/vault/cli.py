"""`palyra vault …`: list secret metadata and rotate the master key. Registered by palyra.cli."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.table import Table

# Imported as a module and used at call time: palyra.cli imports this module while it loads.
import palyra.cli as base_cli
from palyra.storage.db import Database
from palyra.vault.crypto import decode_master_key
from palyra.vault.errors import VaultError
from palyra.vault.keys import ENV_VAR, load_master_key
from palyra.vault.rotation import RotationResult, rotate_key_files
from palyra.vault.store import SecretMeta, list_secrets, open_vault

vault_app = typer.Typer(no_args_is_help=True, help="The encrypted secret vault.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (or PALYRA_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
T = TypeVar("T")


def _fail(exc: VaultError) -> NoReturn:
    base_cli.fail(exc.message, exc.hint)


def _run(config: Path | None, work: Callable[[Database, Path], Awaitable[T]]) -> T:
    cfg = base_cli._load(config)
    state_dir = Path(cfg.server.state_dir).expanduser().resolve()

    async def guarded(db: Database) -> T:
        try:
            return await work(db, state_dir)
        except VaultError as exc:
            _fail(exc)

    return base_cli._run_db(cfg, guarded)


@vault_app.command("list")
def vault_list(
    scope: Annotated[str | None, typer.Option("--scope", help="global or agent:<id>.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List secrets: ref, size, times. Never their values."""

    async def work(db: Database, state_dir: Path) -> tuple[list[SecretMeta], str | None]:
        metas = await list_secrets(db, scope)
        try:
            current = load_master_key(state_dir, os.environ, create=False)
        except VaultError:
            return metas, None
        return metas, current.kek_id

    metas, current_id = _run(config, work)
    if as_json:
        base_cli._emit_json([m.public() for m in metas])
        return
    table = Table("ref", "bytes", "updated", "master key")
    for m in metas:
        table.add_row(m.ref, str(m.value_bytes), base_cli._ts(m.updated_at), m.kek_id)
    base_cli.out.print(table)
    sealed = {m.kek_id for m in metas}
    if current_id is not None and sealed and sealed != {current_id}:
        base_cli.err.print(
            f"[yellow]warning:[/] the configured master key is {current_id}; "
            "the secrets above need the key named in their row"
        )


@vault_app.command("rotate-key")
def vault_rotate_key(
    config: ConfigOpt = None,
    new_key_stdin: Annotated[
        bool,
        typer.Option("--new-key-stdin", help=f"Read the new key from stdin (required with {ENV_VAR})."),
    ] = False,
) -> None:
    """Re-wrap every secret's data key under a new master key. Values are never decrypted to disk."""
    new_key = None
    if new_key_stdin:
        try:
            new_key = decode_master_key(sys.stdin.readline(), source="the new key on stdin")
        except VaultError as exc:
            _fail(exc)

    async def work(db: Database, state_dir: Path) -> RotationResult:
        vault = await open_vault(db, state_dir, os.environ)
        count = sum((await vault.stored_key_ids()).values())
        base_cli.err.print(
            f"re-wrapping the data keys of {count} secret(s) under a new master key "
            f"(current key {vault.kek_id}, from {vault.master_key.source})…"
        )
        return await rotate_key_files(state_dir, vault, new_key)

    result = _run(config, work)
    done = f"rotated {result.rotated} secret(s): master key {result.old_kek_id} → {result.new_kek_id}"
    if result.key_file is None:
        base_cli.out.print(
            f"{done}. Now set {ENV_VAR} to the new key on every replica and restart them: "
            "the old key no longer opens the vault."
        )
    else:
        base_cli.out.print(
            f"{done}; the new key is in {result.key_file}. Back it up: without it the secrets are lost."
        )
