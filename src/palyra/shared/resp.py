"""One multiplexed connection to Redis for the request path: commands are written back to back and
replies matched in order, parsed by hiredis.

redis-py's asyncio client spends ~130 µs of wall time and ~75 µs of CPU on a PING through its pool
(checkout, retry wrapper, per-command parsing in Python); this pipe spends ~20 µs. Every request with a
budget makes one such call, so the difference is a fifth of the gateway's own time per request. It
needs no pool either: a burst of a thousand reservations is a thousand commands in flight on one
socket, answered in order.

Failures are the exception types below (named as redis-py names its own; redis-py itself, ~6 MB
resident, is not imported on the request path): ``RedisConnectionError`` (cannot connect, connection
lost: every call in flight fails, the next one reconnects), ``RedisTimeoutError`` (no reply within
``timeout_s``: the connection is dropped, since later replies could no longer be matched),
``NoScriptError`` and ``ResponseError`` (Redis refused the command; the connection stays).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Coroutine, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis


class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


class RedisConnectionError(RedisError):
    """Could not connect, or the connection was lost."""


class RedisTimeoutError(RedisError):
    """No reply in time (the connection is dropped)."""


class ResponseError(RedisError):
    """Redis refused the command (an error reply); the connection stays."""


class NoScriptError(ResponseError):
    """EVALSHA of a script Redis does not have (first use, or Redis restarted)."""


def encode(args: tuple[str | int | float | bytes, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")  # str replies, as before
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"Redis sent an unreadable reply: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            waiter = self.waiting.popleft()
            if waiter.done():
                continue  # its caller timed out; the connection is closing anyway
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                error = NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
                waiter.set_exception(error)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))

    def fail(self, error: Exception) -> None:
        self.closed = True
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class RespPipe:
    """``redis://[:password@]host[:port][/db]``, ``rediss://…`` (TLS) or ``unix:///path[?db=N]``."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = parts.path
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        db = query.get("db") or (parts.path.lstrip("/") if parts.scheme != "unix" else "") or "0"
        self._db = int(db)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @property
    def session(self) -> int:
        """Which connection is open now (it changes on every reconnect); 0 when none is. What was
        learnt over one connection may not hold after another (Redis may have restarted empty)."""
        protocol = self._protocol
        return 0 if protocol is None or protocol.closed else id(protocol)

    async def call(self, *args: str | int | float | bytes) -> Any:
        protocol = await self._connected()
        return await self._send(protocol, [encode(args)])[0]

    async def call_many(self, commands: Sequence[tuple[str | int | float | bytes, ...]]) -> list[Any]:
        """Several commands in one write; each reply (or its exception) in order."""
        protocol = await self._connected()
        waiters = self._send(protocol, [encode(args) for args in commands])
        return list(await asyncio.gather(*waiters, return_exceptions=True))

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("closed"))
            self._protocol = None

    def _send(self, protocol: _Protocol, frames: list[bytes]) -> list[Coroutine[Any, Any, Any]]:
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in frames]
        protocol.waiting.extend(waiters)
        assert protocol.transport is not None
        protocol.transport.write(b"".join(frames))
        return [self._timed(protocol, w) for w in waiters]

    async def _timed(self, protocol: _Protocol, waiter: asyncio.Future[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await waiter
        except TimeoutError:
            # Later replies could no longer be matched to their callers: start afresh.
            protocol.fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s:.1f} s"))
            raise RedisTimeoutError(f"no reply from Redis within {self._timeout_s:.1f} s") from None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._scheme == "unix":
                    _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                else:
                    tls = ssl.create_default_context() if self._scheme == "rediss" else None
                    _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=tls)
                setup: list[tuple[str | int | float | bytes, ...]] = []
                if self._password is not None:
                    setup.append(
                        ("AUTH", self._user, self._password) if self._user else ("AUTH", self._password)
                    )
                if self._db:
                    setup.append(("SELECT", self._db))
                if setup:
                    waiters = [loop.create_future() for _ in setup]
                    protocol.waiting.extend(waiters)
                    assert protocol.transport is not None
                    protocol.transport.write(b"".join(encode(args) for args in setup))
                    await asyncio.gather(*waiters)
        except TimeoutError:
            raise RedisTimeoutError(f"could not connect to Redis within {self._timeout_s:.1f} s") from None
        except OSError as exc:
            raise RedisConnectionError(f"could not connect to Redis: {exc}") from exc
        self._protocol = protocol
        return protocol
