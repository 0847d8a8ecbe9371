"""A server-sent-events reader over an aiohttp body: yields (event, data) as each event completes.

Lines are split on bytes before decoding, so a multibyte UTF-8 character split across network reads is
reassembled before it is decoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def read_events(lines: AsyncIterable[bytes]) -> AsyncIterator[tuple[str, str]]:
    """``lines`` yields raw lines (as ``aiohttp.StreamReader`` does); comments are skipped."""
    event = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield event or "message", "\n".join(data)
