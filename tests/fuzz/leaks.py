"""What an answer must never show a client: stack traces, source paths, exception class names."""

from __future__ import annotations

import re

# Each names something only the daemon's inside knows; none can come from an echo of a client's
# own value in these tests, which never send them.
_INTERNALS = re.compile(
    r"Traceback \(most recent call last\)"
    r"|File \"[^\"]+\.py\""
    r"|site-packages|/src/palyra/|\.py\b:\d+"
    r"|\b(?:ValidationError|TypeError|KeyError|ValueError|AttributeError|RecursionError"
    r"|IndexError|AssertionError|RuntimeError|JSONDecodeError|IntegrityError|OperationalError)\b"
    r"|<class '|<object at 0x|\bat 0x[0-9a-f]{6,}"
    r"|pydantic_core|sqlalchemy|asyncpg|aiosqlite|aiohttp\.|orjson\."
)


def find_internals(text: str) -> list[str]:
    return [m.group(0) for m in _INTERNALS.finditer(text)]


def assert_no_internals(text: str) -> None:
    found = find_internals(text)
    assert not found, f"the answer shows internals {found}: {text[:500]}"
