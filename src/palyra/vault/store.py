"""The vault over the database: every replica reads the same envelope-encrypted secrets.

Each row carries ``kek_id``, the fingerprint of the master key that sealed its data key, so a wrong
master key is detected and named before anything is decrypted. All rows share one ``kek_id``: a
rotation re-wraps them in one transaction, and a write that finds the vault re-keyed under it rolls
back instead of mixing keys.
"""

from __future__ import annotations

import builtins
import importlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from palyra.storage.db import Database, redact_url
from palyra.storage.schema import vault_secrets
from palyra.vault.crypto import Envelope, aad_for, derive_kek, kek_id, open_, rewrap, seal
from palyra.vault.errors import (
    KeyRotationError,
    MasterKeyMissing,
    SecretTooLarge,
    VaultTampered,
    WrongMasterKey,
)
from palyra.vault.keys import (
    ENV_VAR,
    MasterKey,
    discard_generated,
    discard_pending,
    load_master_key,
    promote_pending,
    reread_key_files,
)
from palyra.vault.refs import VaultRef, normalize_scope

MAX_VALUE_BYTES = 64 * 1024

_t = vault_secrets.c
_ENVELOPE_COLUMNS = (_t.kek_id, _t.value_nonce, _t.value_ciphertext, _t.dek_nonce, _t.wrapped_dek)


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """What may be shown about a secret: everything but its value."""

    scope: str
    key: str
    kek_id: str
    value_bytes: int
    created_at: float
    updated_at: float

    @property
    def ref(self) -> str:
        return f"{self.scope}/{self.key}"

    def public(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "scope": self.scope,
            "key": self.key,
            "kek_id": self.kek_id,
            "value_bytes": self.value_bytes,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


async def list_secrets(db: Database, scope: str | None = None) -> list[SecretMeta]:
    """Metadata of every secret (of one scope), sorted by scope and key. Needs no master key."""
    query = select(_t.scope, _t.key, _t.kek_id, _t.value_bytes, _t.created_at, _t.updated_at).order_by(
        _t.scope, _t.key
    )
    if scope is not None:
        query = query.where(_t.scope == normalize_scope(scope))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        SecretMeta(
            scope=r.scope,
            key=r.key,
            kek_id=r.kek_id,
            value_bytes=r.value_bytes,
            created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


async def open_vault(db: Database, state_dir: Path, environ: Mapping[str, str] | None = None) -> Vault:
    """Load the master key, check it against the database, finish an interrupted rotation."""
    vault = Vault(db, load_master_key(state_dir, environ))
    await vault.start()
    return vault


class Vault:
    def __init__(self, db: Database, master_key: MasterKey) -> None:
        self._db = db
        self._master = master_key

    @property
    def master_key(self) -> MasterKey:
        return self._master

    @property
    def kek_id(self) -> str:
        return self._master.kek_id

    async def start(self) -> None:
        await self.check_master_key()

    async def check_master_key(self) -> None:
        """Raise WrongMasterKey / MasterKeyMissing unless the loaded key opens every row.

        Also settles a rotation interrupted between its commit and its rename: when the rows carry
        the id of vault.key.new, the rename is completed; when they carry the old id, the new file is
        stale and removed.
        """
        stored = await self.stored_key_ids()
        master = self._master
        if master.pending is not None:
            if stored and set(stored) == {master.pending.kek_id}:
                self._master = promote_pending(master)
                return
            if set(stored) <= {master.kek_id}:
                self._master = master = discard_pending(master)
        if set(stored) <= {master.kek_id}:
            return
        if master.generated:
            discard_generated(master)
            raise MasterKeyMissing(
                f"the vault in {self._where()} holds {sum(stored.values())} secret(s) sealed with master "
                f"key {_ids(stored)}, but {master.source} did not exist ({ENV_VAR} is not set either); "
                f"restore vault.key from a backup into {master.source}, or set {ENV_VAR} to the key "
                "used before"
            )
        raise self._wrong_key(stored)

    async def stored_key_ids(self) -> dict[str, int]:
        """kek_id → number of secrets sealed under it (one entry in a healthy vault)."""
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(select(_t.kek_id, func.count()).group_by(_t.kek_id))).all()
        return {r[0]: r[1] for r in rows}

    async def put(self, ref: VaultRef | str, value: str) -> None:
        """Store or replace a secret (``created_at`` survives a replace)."""
        vref = VaultRef.of(ref)
        plaintext = value.encode("utf-8")
        if len(plaintext) > MAX_VALUE_BYTES:
            raise SecretTooLarge(f"secret value exceeds max bytes ({len(plaintext)} > {MAX_VALUE_BYTES})")
        aad = aad_for(vref.scope, vref.key)
        for _ in range(2):
            master = self._master
            env = seal(master.kek, aad, plaintext)
            try:
                async with self._db.engine.begin() as conn:
                    await self._lock_writers(conn)
                    await conn.execute(self._upsert(vref, master.kek_id, env, len(plaintext), time.time()))
                    # Checked after our own write, with writers serialized: a row sealed under another
                    # key (a rotation that committed first, a replica with another key) rolls us back.
                    other = (
                        await conn.execute(select(_t.kek_id).where(_t.kek_id != master.kek_id).limit(1))
                    ).scalar()
                    if other is not None:
                        raise _Rekeyed(other)
                return
            except _Rekeyed as exc:
                if not self._adopt(exc.kek_id):
                    raise self._wrong_key({exc.kek_id: 1}) from None
        raise self._wrong_key({})  # pragma: no cover - re-keyed twice during one put

    async def get(self, ref: VaultRef | str) -> str | None:
        vref = VaultRef.of(ref)
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*_ENVELOPE_COLUMNS).where(_t.scope == vref.scope, _t.key == vref.key)
                )
            ).first()
        if row is None:
            return None
        kek = self._kek_for(row.kek_id)
        try:
            plaintext = open_(kek, aad_for(vref.scope, vref.key), _envelope(row))
        except VaultTampered:
            raise _tampered(vref) from None
        return plaintext.decode("utf-8")

    async def delete(self, ref: VaultRef | str) -> bool:
        vref = VaultRef.of(ref)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                delete(vault_secrets).where(_t.scope == vref.scope, _t.key == vref.key)
            )
        return bool(result.rowcount)

    async def list(self, scope: str | None = None) -> builtins.list[SecretMeta]:
        return await list_secrets(self._db, scope)

    async def rotate_key(self, new_master: bytes) -> int:
        """Re-wrap every data key under ``new_master`` in one transaction; returns how many.

        Value ciphertexts are untouched and no plaintext value is produced. Every row is authenticated
        under the old key first: one tampered row aborts the whole rotation.
        """
        old = self._master
        new_id, new_kek = kek_id(new_master), derive_kek(new_master)
        if new_id == old.kek_id:
            raise KeyRotationError(
                f"the new master key is the current one (key {new_id}); nothing to rotate",
                hint="use a freshly generated key",
            )
        async with self._db.engine.begin() as conn:
            await self._lock_writers(conn)
            rows = (await conn.execute(select(_t.scope, _t.key, *_ENVELOPE_COLUMNS))).all()
            if not rows:
                # Nothing records the switch in an empty vault, so a replica still holding the old key
                # could seal its first secret with it afterwards.
                raise KeyRotationError(
                    "the vault is empty, so there is nothing to re-wrap; the current master key stays",
                    hint="to start with another key, replace vault.key or PALYRA_VAULT_KEY while the "
                    "vault is empty",
                )
            foreign = {r.kek_id for r in rows} - {old.kek_id}
            if foreign:
                raise self._wrong_key(dict.fromkeys(foreign, 1))
            updates = []
            for r in rows:
                try:
                    env = rewrap(old.kek, new_kek, aad_for(r.scope, r.key), _envelope(r))
                except VaultTampered:
                    raise _tampered(VaultRef(r.scope, r.key), " Nothing was rotated.") from None
                updates.append(
                    {
                        "b_scope": r.scope,
                        "b_key": r.key,
                        "dek_nonce": env.dek_nonce,
                        "wrapped_dek": env.wrapped_dek,
                    }
                )
            if updates:
                await conn.execute(
                    update(vault_secrets)
                    .where(_t.scope == bindparam("b_scope"), _t.key == bindparam("b_key"))
                    .values(kek_id=new_id),
                    updates,
                )
        self._master = MasterKey(new_master, old.source)
        return len(rows)

    async def _lock_writers(self, conn: AsyncConnection) -> None:
        """Serialize writers (puts and rotations) so a key mix can never commit. Readers go on.

        SQLite: take the database write lock now rather than at the first write. PostgreSQL: a table
        lock that conflicts with itself and with INSERT/UPDATE/DELETE, but not with SELECT.
        """
        if self._db.is_sqlite:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await conn.execute(text("LOCK TABLE vault_secrets IN SHARE ROW EXCLUSIVE MODE"))

    def _upsert(self, vref: VaultRef, kid: str, env: Envelope, size: int, now: float) -> Any:
        values = {
            "scope": vref.scope,
            "key": vref.key,
            "kek_id": kid,
            "value_nonce": env.value_nonce,
            "value_ciphertext": env.value_ct,
            "dek_nonce": env.dek_nonce,
            "wrapped_dek": env.wrapped_dek,
            "value_bytes": size,
            "created_at": now,
            "updated_at": now,
        }
        # The dialect's own INSERT (for ON CONFLICT), imported for the dialect in use only.
        dialect = "sqlite" if self._db.is_sqlite else "postgresql"
        insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert
        stmt = insert(vault_secrets).values(**values)
        keep = ("scope", "key", "created_at")
        return stmt.on_conflict_do_update(
            index_elements=[_t.scope, _t.key],
            set_={name: stmt.excluded[name] for name in values if name not in keep},
        )

    def _kek_for(self, stored_id: str) -> bytes:
        if stored_id == self._master.kek_id or self._adopt(stored_id):
            return self._master.kek
        raise self._wrong_key({stored_id: 1})

    def _adopt(self, stored_id: str) -> bool:
        """Another process rotated the key: pick the new one up from the key files, if it is there."""
        for candidate in reread_key_files(self._master):
            if candidate.kek_id == stored_id:
                self._master = candidate
                return True
        return False

    def _where(self) -> str:
        where = redact_url(self._db.url)
        return f"{where} (schema {self._db.schema})" if self._db.schema else where

    def _wrong_key(self, stored: Mapping[str, int]) -> WrongMasterKey:
        master = self._master
        sealed = f"sealed with master key {_ids(stored)}" if stored else "re-keyed while in use"
        if master.from_env:
            fix = f"set {ENV_VAR} to the key used before"
        else:
            fix = f"restore the vault.key used before into {master.source} (or set {ENV_VAR} to that key)"
        return WrongMasterKey(
            f"the vault in {self._where()} was {sealed}, but {master.source} is key {master.kek_id}; {fix}"
        )


class _Rekeyed(Exception):
    def __init__(self, kek_id: str) -> None:
        super().__init__(kek_id)
        self.kek_id = kek_id


def _ids(stored: Iterable[str]) -> str:
    return " and ".join(sorted(stored))


def _envelope(row: Any) -> Envelope:
    return Envelope(
        value_nonce=bytes(row.value_nonce),
        value_ct=bytes(row.value_ciphertext),
        dek_nonce=bytes(row.dek_nonce),
        wrapped_dek=bytes(row.wrapped_dek),
    )


def _tampered(vref: VaultRef, extra: str = "") -> VaultTampered:
    return VaultTampered(
        f"secret {vref} failed authentication: its ciphertext was modified, or copied from another "
        f"scope or key.{extra}"
    )
