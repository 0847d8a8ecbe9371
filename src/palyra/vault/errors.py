"""Vault errors. Each message says what is wrong; ``hint`` says what the operator can do about it."""

from __future__ import annotations

GENERATE_KEY_COMMAND = (
    'python -c "import secrets,base64;'
    "print(base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b'=').decode())\""
)


class VaultError(Exception):
    """Base of every vault error."""

    hint = "see `palyra vault --help`"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint


class InvalidRef(VaultError):
    """A vault ref, scope or key that does not follow the naming rules."""

    hint = "refs look like 'global/openai_api_key' or 'agent:<id>/<key>'"


class SecretTooLarge(VaultError):
    hint = "store at most 64 KiB per secret"


class VaultTampered(VaultError):
    """A ciphertext failed authentication: modified, truncated, or moved to another scope or key."""

    hint = "restore the row from a backup, or delete it and store the secret again"


class WrongMasterKey(VaultError):
    """The vault was sealed with a different master key than the one loaded."""

    hint = "set PALYRA_VAULT_KEY (or restore <state_dir>/vault.key) to the key the vault was sealed with"


class MasterKeyMissing(VaultError):
    """Secrets exist, but no master key was found to open them."""

    hint = "restore <state_dir>/vault.key from a backup, or set PALYRA_VAULT_KEY to the key used before"


class InvalidMasterKey(VaultError):
    """A master key that is not 32 bytes of base64url."""

    hint = f"generate a key with: {GENERATE_KEY_COMMAND}"


class KeyRotationError(VaultError):
    hint = "run `palyra vault list` to see which master key the secrets are sealed with"
