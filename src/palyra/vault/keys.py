"""The master key: from PALYRA_VAULT_KEY, else ``<state_dir>/vault.key`` (generated once, 0600).

A rotation writes the new key to ``vault.key.new`` before touching the database and renames it over
``vault.key`` after the re-wrap commits, so a crash at any point leaves a key on disk that opens the
vault; start-up (``Vault.check_master_key``) finishes or discards the rename.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from palyra.vault.crypto import decode_master_key, derive_kek, encode_master_key, generate_master_key, kek_id
from palyra.vault.errors import InvalidMasterKey, MasterKeyMissing

ENV_VAR = "PALYRA_VAULT_KEY"
KEY_FILE = "vault.key"
PENDING_KEY_FILE = "vault.key.new"


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A loaded master key. ``source`` is ``PALYRA_VAULT_KEY`` or the key file's path."""

    key: bytes = field(repr=False)
    source: str
    # vault.key.new found beside vault.key: a rotation that did not finish its rename.
    pending: MasterKey | None = field(default=None, repr=False)
    # True when vault.key did not exist and was created by this load.
    generated: bool = False
    kek_id: str = field(init=False)
    kek: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kek_id", kek_id(self.key))
        object.__setattr__(self, "kek", derive_kek(self.key))

    @property
    def from_env(self) -> bool:
        return self.source == ENV_VAR

    @property
    def path(self) -> Path | None:
        return None if self.from_env else Path(self.source)


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def pending_key_path(state_dir: Path) -> Path:
    return state_dir / PENDING_KEY_FILE


def load_master_key(
    state_dir: Path, environ: Mapping[str, str] | None = None, *, create: bool = True
) -> MasterKey:
    """PALYRA_VAULT_KEY if set, else vault.key, else (``create``) a new vault.key."""
    env = os.environ if environ is None else environ
    from_env = env.get(ENV_VAR, "").strip()
    if from_env:
        return MasterKey(decode_master_key(from_env, source=ENV_VAR), ENV_VAR)
    path = key_path(state_dir)
    pending = _load_pending(pending_key_path(state_dir))
    existing = read_key_file(path)
    if existing is not None:
        return MasterKey(existing, str(path), pending)
    if not create:
        raise MasterKeyMissing(f"no vault master key: {ENV_VAR} is not set and {path} does not exist")
    master = generate_master_key()
    if create_key_file(path, master):
        return MasterKey(master, str(path), pending, generated=True)
    # Another process created it first; use theirs.
    theirs = read_key_file(path)
    if theirs is None:  # pragma: no cover - created and removed between two calls
        raise MasterKeyMissing(f"{path} vanished while it was being created; start again")
    return MasterKey(theirs, str(path), pending)


def read_key_file(path: Path) -> bytes | None:
    """The key in ``path``, None when the file does not exist. Tightens loose permissions."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        text = "\x00"
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return decode_master_key(text, source=str(path))


def create_key_file(path: Path, master: bytes) -> bool:
    """Create ``path`` (0600) holding ``master``; False when it already exists.

    The key is written to a private temporary file (O_CREAT|O_EXCL) and hard-linked into place, so
    the name never points at a partly written key and an existing key is never overwritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = _write_temp(path, master)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def replace_key_file(path: Path, master: bytes) -> None:
    """Atomically set ``path`` to ``master`` whether or not it exists."""
    tmp = _write_temp(path, master)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def promote_pending(master: MasterKey) -> MasterKey:
    """Finish a rotation: vault.key.new becomes vault.key. Returns the key now in vault.key."""
    path, pending = master.path, master.pending
    assert path is not None and pending is not None and pending.path is not None
    try:
        os.replace(pending.path, path)
    except FileNotFoundError:
        # Another process finished the rename first, or removed the file: make sure vault.key is right.
        if read_key_file(path) != pending.key:
            replace_key_file(path, pending.key)
    _fsync_dir(path.parent)
    return MasterKey(pending.key, str(path))


def discard_pending(master: MasterKey) -> MasterKey:
    """Remove a vault.key.new whose rotation never committed."""
    if master.pending is not None and master.pending.path is not None:
        _unlink_if_holds(master.pending.path, master.pending.key)
    return MasterKey(master.key, master.source, generated=master.generated)


def discard_generated(master: MasterKey) -> None:
    """Remove a vault.key created by this load, so the next start reports the same missing key."""
    if master.generated and master.path is not None:
        _unlink_if_holds(master.path, master.key)


def reread_key_files(master: MasterKey) -> list[MasterKey]:
    """The keys now on disk beside ``master`` (vault.key, then vault.key.new), for a vault re-keyed by
    another process. Always reported under vault.key's path: that is where the key ends up."""
    path = master.path
    if path is None:
        return []
    found = []
    for candidate in (path, path.with_name(PENDING_KEY_FILE)):
        try:
            key = read_key_file(candidate)
        except (InvalidMasterKey, OSError):
            continue
        if key is not None:
            found.append(MasterKey(key, str(path)))
    return found


def _load_pending(path: Path) -> MasterKey | None:
    try:
        key = read_key_file(path)
    except InvalidMasterKey:
        # Not a key (key files are linked into place whole), so no secret can be sealed with it.
        path.unlink(missing_ok=True)
        return None
    return None if key is None else MasterKey(key, str(path))


def _unlink_if_holds(path: Path, key: bytes) -> None:
    try:
        if read_key_file(path) == key:
            path.unlink(missing_ok=True)
    except InvalidMasterKey:
        pass


def _write_temp(path: Path, master: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (encode_master_key(master) + "\n").encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.chmod(tmp, 0o600)
    return tmp


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
