"""Secrets are compared in constant time: a source scan for ``==``/``!=`` on anything named like a secret,
and a check that the places that compare secrets use ``hmac.compare_digest``.

API tokens are looked up by their SHA-256 (callers/tokens.py), so the database never compares the token
itself; timing can reveal at most a prefix of a hash.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "palyra"
SECRET_NAME = re.compile(
    r"(^|_)(admin_token|token_value|plaintext|secret|client_secret|password|csrf|csrf_token|signature|sig|"
    r"hmac|mac|digest|verifier|code_verifier|api_key|key_value|supplied|session_token)$",
    re.IGNORECASE,
)


def operand_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return operand_name(node.func)
    return None


def is_sql_column(node: ast.expr) -> bool:
    """``table.c.column == value`` builds a WHERE clause; nothing is compared in Python."""
    text = ast.unparse(node)
    return ".c." in text or text.startswith("_t.") or "bindparam" in text


def secret_comparisons() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(is_sql_column(o) for o in operands):
                continue
            names = [operand_name(o) for o in operands]
            if any(n and SECRET_NAME.search(n) for n in names):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_secret_is_compared_with_equality() -> None:
    assert secret_comparisons() == []


@pytest.mark.parametrize(
    "module",
    ["surface/admin_api.py", "surface/admin_memory.py", "console/session.py"],
)
def test_secret_checks_use_compare_digest(module: str) -> None:
    source = (SRC / module).read_text(encoding="utf-8")
    assert "hmac.compare_digest(" in source


def test_the_scan_would_catch_a_plain_comparison(tmp_path: Path) -> None:
    tree = ast.parse("if supplied == admin_token: pass\nif token.c.token_hash == token_hash: pass")
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    flagged = [
        c
        for c in compares
        if not any(is_sql_column(o) for o in [c.left, *c.comparators])
        and any((n := operand_name(o)) and SECRET_NAME.search(n) for o in [c.left, *c.comparators])
    ]
    assert [ast.unparse(c) for c in flagged] == ["supplied == admin_token"]
