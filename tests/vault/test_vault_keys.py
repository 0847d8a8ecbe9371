"""The master key on disk and in the environment: generation, permissions, precedence, errors."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from palyra.vault.crypto import encode_master_key, generate_master_key, kek_id
from palyra.vault.errors import InvalidMasterKey, MasterKeyMissing
from palyra.vault.keys import (
    ENV_VAR,
    create_key_file,
    load_master_key,
    pending_key_path,
    read_key_file,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_once_with_private_permissions(tmp_path: Path) -> None:
    state_dir = tmp_path / "new" / "state"
    first = load_master_key(state_dir, {})
    assert first.generated and first.source == str(state_dir / "vault.key")
    assert mode(state_dir) == 0o700 and mode(state_dir / "vault.key") == 0o600
    text = (state_dir / "vault.key").read_text()
    assert text == encode_master_key(first.key) + "\n" and len(text.strip()) == 43
    again = load_master_key(state_dir, {})
    assert again.key == first.key and not again.generated and again.kek_id == kek_id(first.key)
    assert [p.name for p in state_dir.iterdir()] == ["vault.key"]  # no temporary files left


def test_key_is_never_in_repr(tmp_path: Path) -> None:
    master = load_master_key(tmp_path, {})
    assert encode_master_key(master.key) not in repr(master) and repr(master.key) not in repr(master)


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    load_master_key(tmp_path, {})
    os.chmod(tmp_path / "vault.key", 0o644)
    load_master_key(tmp_path, {})
    assert mode(tmp_path / "vault.key") == 0o600


def test_environment_wins_and_writes_nothing(tmp_path: Path) -> None:
    master = generate_master_key()
    loaded = load_master_key(tmp_path / "s", {ENV_VAR: f" {encode_master_key(master)}\n"})
    assert loaded.key == master and loaded.source == ENV_VAR and loaded.from_env and loaded.path is None
    assert not (tmp_path / "s").exists()
    # An empty variable counts as unset.
    assert load_master_key(tmp_path / "s", {ENV_VAR: "  "}).source == str(tmp_path / "s" / "vault.key")


def test_bad_environment_key_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(InvalidMasterKey, match=r"^PALYRA_VAULT_KEY must be 32 random bytes.*16 bytes"):
        load_master_key(tmp_path, {ENV_VAR: encode_master_key(bytes(16))})


def test_bad_key_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "vault.key").write_text("garbage\n")
    with pytest.raises(InvalidMasterKey) as exc:
        load_master_key(tmp_path, {})
    assert str(exc.value).startswith(f"{tmp_path / 'vault.key'} must be 32 random bytes")


def test_missing_key_without_create(tmp_path: Path) -> None:
    with pytest.raises(
        MasterKeyMissing, match=r"PALYRA_VAULT_KEY is not set and .*vault\.key does not exist"
    ):
        load_master_key(tmp_path, {}, create=False)
    assert not (tmp_path / "vault.key").exists()


def test_create_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    a, b = generate_master_key(), generate_master_key()
    assert create_key_file(path, a) is True
    assert create_key_file(path, b) is False
    assert read_key_file(path) == a and mode(path) == 0o600


def test_concurrent_first_loads_agree(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_master_key(tmp_path, {}).key, range(16)))
    assert len(set(keys)) == 1
    assert read_key_file(tmp_path / "vault.key") == keys[0]


def test_pending_key_is_loaded_beside_the_current_one(tmp_path: Path) -> None:
    current = load_master_key(tmp_path, {})
    new = generate_master_key()
    create_key_file(pending_key_path(tmp_path), new)
    loaded = load_master_key(tmp_path, {})
    assert loaded.key == current.key and loaded.pending is not None and loaded.pending.key == new
    # A vault.key.new that is not a key cannot have sealed anything: it is removed.
    pending_key_path(tmp_path).write_text("half a ke")
    assert load_master_key(tmp_path, {}).pending is None
    assert not pending_key_path(tmp_path).exists()


def test_files_stay_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_master_key(tmp_path / "s", {})
        create_key_file(pending_key_path(tmp_path / "s"), generate_master_key())
    finally:
        os.umask(previous)
    assert mode(tmp_path / "s") == 0o700
    assert mode(tmp_path / "s" / "vault.key") == mode(pending_key_path(tmp_path / "s")) == 0o600
