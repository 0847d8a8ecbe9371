"""Master key rotation with a key on disk that opens the vault at every instant.

1. the new key goes to ``vault.key.new`` (0600);
2. every data key is re-wrapped in one database transaction;
3. ``vault.key.new`` is renamed over ``vault.key``.

A crash before 2 commits leaves the old key valid and a stale ``vault.key.new``; a crash after leaves
the new key in ``vault.key.new``. Start-up tells the two apart by the kek_id on the rows
(``Vault.check_master_key``). A key from PALYRA_VAULT_KEY is never written anywhere: the new key is
passed in, and the operator updates the variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from palyra.vault.crypto import generate_master_key, kek_id
from palyra.vault.errors import GENERATE_KEY_COMMAND, KeyRotationError
from palyra.vault.keys import (
    ENV_VAR,
    MasterKey,
    create_key_file,
    discard_pending,
    key_path,
    pending_key_path,
    promote_pending,
)
from palyra.vault.store import Vault


@dataclass(frozen=True, slots=True)
class RotationResult:
    rotated: int
    old_kek_id: str
    new_kek_id: str
    # Where the new key now lives; None when it belongs in PALYRA_VAULT_KEY (the operator sets it).
    key_file: Path | None


async def rotate_key_files(state_dir: Path, vault: Vault, new_key: bytes | None = None) -> RotationResult:
    """Rotate to ``new_key`` (generated when None and the key lives in a file)."""
    old = vault.master_key
    if old.from_env:
        if new_key is None:
            raise KeyRotationError(
                f"the master key comes from {ENV_VAR}, so the new key has to come from you",
                hint=f"generate one with {GENERATE_KEY_COMMAND} and pipe it to "
                "`palyra vault rotate-key --new-key-stdin`",
            )
        rotated = await vault.rotate_key(new_key)
        return RotationResult(rotated, old.kek_id, kek_id(new_key), None)

    path, pending = key_path(state_dir), pending_key_path(state_dir)
    if old.path is None or old.path.resolve() != path.resolve():
        raise KeyRotationError(f"the vault's master key is {old.source}, not {path}")
    new_master = generate_master_key() if new_key is None else new_key
    if kek_id(new_master) == old.kek_id:
        await vault.rotate_key(new_master)  # raises: the new key is the current one
    if not create_key_file(pending, new_master):
        raise KeyRotationError(
            f"{pending} already exists: another rotation is running, or one was interrupted",
            hint="wait for the other rotation; if none is running, start palyra once (start-up finishes "
            "or discards it) and rotate again",
        )
    staged = MasterKey(old.key, str(path), pending=MasterKey(new_master, str(pending)))
    try:
        rotated = await vault.rotate_key(new_master)
    except Exception:
        await _discard_if_unused(vault, staged)
        raise
    promote_pending(staged)
    return RotationResult(rotated, old.kek_id, kek_id(new_master), path)


async def _discard_if_unused(vault: Vault, staged: MasterKey) -> None:
    """Remove vault.key.new unless rows were sealed with it; when unsure, leave it to start-up."""
    assert staged.pending is not None
    try:
        stored = await vault.stored_key_ids()
    except Exception:
        return
    if staged.pending.kek_id not in stored:
        discard_pending(staged)
