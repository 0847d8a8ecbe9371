"""The vault: envelope-encrypted secrets in the database, opened by one master key."""

from palyra.vault.errors import (
    InvalidMasterKey,
    InvalidRef,
    KeyRotationError,
    MasterKeyMissing,
    SecretTooLarge,
    VaultError,
    VaultTampered,
    WrongMasterKey,
)
from palyra.vault.keys import MasterKey, load_master_key
from palyra.vault.refs import VaultRef
from palyra.vault.rotation import RotationResult, rotate_key_files
from palyra.vault.store import MAX_VALUE_BYTES, SecretMeta, Vault, list_secrets, open_vault

__all__ = [
    "MAX_VALUE_BYTES",
    "InvalidMasterKey",
    "InvalidRef",
    "KeyRotationError",
    "MasterKey",
    "MasterKeyMissing",
    "RotationResult",
    "SecretMeta",
    "SecretTooLarge",
    "Vault",
    "VaultError",
    "VaultRef",
    "VaultTampered",
    "WrongMasterKey",
    "list_secrets",
    "load_master_key",
    "open_vault",
    "rotate_key_files",
]
