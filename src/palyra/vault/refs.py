"""Vault refs: ``<scope>/<key>``, where scope is ``global`` or ``agent:<id>``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from palyra.vault.errors import InvalidRef

MAX_KEY_BYTES = 128
MAX_AGENT_ID_CHARS = 128
GLOBAL_SCOPE = "global"
AGENT_SCOPE_PREFIX = "agent:"

_KEY = re.compile(r"[a-z0-9._-]+")
_AGENT_ID = re.compile(rf"[A-Za-z0-9_.:@-]{{1,{MAX_AGENT_ID_CHARS}}}")
_REF_SHAPE = "vault ref must have shape '<scope>/<key>' (for example 'global/openai_api_key')"


def normalize_scope(text: str) -> str:
    """The canonical scope: ``global`` (any case) or ``agent:<id>``."""
    scope = text.strip()
    if scope.lower() == GLOBAL_SCOPE:
        return GLOBAL_SCOPE
    if scope.startswith(AGENT_SCOPE_PREFIX):
        agent_id = scope[len(AGENT_SCOPE_PREFIX) :]
        if not _AGENT_ID.fullmatch(agent_id):
            raise InvalidRef(
                f"agent id in vault scope {scope!r} must be 1-{MAX_AGENT_ID_CHARS} characters of "
                "letters, digits, '_', '.', ':', '@' or '-'"
            )
        return scope
    raise InvalidRef(f"vault scope must be 'global' or 'agent:<id>', got {scope!r}")


def normalize_key(text: str) -> str:
    key = text.strip()
    if not key:
        raise InvalidRef("secret key cannot be empty")
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InvalidRef(f"secret key exceeds max bytes ({size} > {MAX_KEY_BYTES})")
    if not _KEY.fullmatch(key):
        raise InvalidRef("secret key can only contain lowercase letters, digits, '.', '_' or '-'")
    return key


@dataclass(frozen=True, slots=True)
class VaultRef:
    """A validated, canonical ref. Constructing one validates and normalizes both parts."""

    scope: str
    key: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", normalize_scope(self.scope))
        object.__setattr__(self, "key", normalize_key(self.key))

    @classmethod
    def parse(cls, text: str) -> VaultRef:
        scope, sep, key = text.strip().partition("/")
        if not sep or not scope.strip() or not key.strip():
            raise InvalidRef(_REF_SHAPE)
        return cls(scope, key)

    @classmethod
    def of(cls, ref: VaultRef | str) -> VaultRef:
        return ref if isinstance(ref, VaultRef) else cls.parse(ref)

    def __str__(self) -> str:
        return f"{self.scope}/{self.key}"
