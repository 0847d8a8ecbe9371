"""The admin token: from PALYRA_ADMIN_TOKEN, else generated once into <state_dir>/admin_token (0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def admin_token_path(state_dir: Path) -> Path:
    return state_dir / "admin_token"


def load_admin_token(state_dir: Path, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """Return (token, where it came from). Creates the file on first use."""
    env = os.environ if environ is None else environ
    from_env = env.get("PALYRA_ADMIN_TOKEN", "").strip()
    if from_env:
        return from_env, "PALYRA_ADMIN_TOKEN"
    path = admin_token_path(state_dir)
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return token, str(path)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = "palyra_admin_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, str(path)
