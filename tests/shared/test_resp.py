"""The request path's Redis connection: replies matched in order, errors, lost connections, timeouts."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest

from palyra.shared.resp import (
    NoScriptError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
    RespPipe,
    encode,
)

REDIS_URL = os.environ.get("PALYRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_commands_are_encoded_as_resp_arrays() -> None:
    assert encode(("SET", "k", 1, 0.5, b"\x00\xff")) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n0.5\r\n$2\r\n\x00\xff\r\n"
    )


async def test_concurrent_calls_get_their_own_replies(redis_factory) -> None:
    pipe = RespPipe(REDIS_URL, timeout_s=2.0)
    key = "palyra:test-resp:" + secrets.token_hex(4)
    try:
        values = [str(i) * (i % 7 + 1) for i in range(300)]
        await asyncio.gather(*(pipe.call("HSET", key, f"f{i}", v) for i, v in enumerate(values)))
        got = await asyncio.gather(*(pipe.call("HGET", key, f"f{i}") for i in range(300)))
        assert got == values  # str replies, in each caller's order
        assert await pipe.call("HLEN", key) == 300
        mixed = await pipe.call_many([("HGET", key, "f1"), ("NOSUCHCOMMAND",), ("HGET", key, "f2")])
        assert mixed[0] == values[1] and mixed[2] == values[2]
        assert isinstance(mixed[1], ResponseError)  # one refusal does not spoil its neighbours
    finally:
        await pipe.call("DEL", key)
        await pipe.close()


async def test_refusals_keep_the_connection_and_noscript_is_its_own_error(redis_factory) -> None:
    pipe = RespPipe(REDIS_URL, timeout_s=2.0)
    try:
        with pytest.raises(NoScriptError):
            await pipe.call("EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError, match=r"wrong number of arguments|unknown command"):
            await pipe.call("GET")
        assert await pipe.call("PING") == "PONG"
    finally:
        await pipe.close()


async def test_a_lost_connection_fails_calls_in_flight_and_the_next_call_reconnects(proxy) -> None:
    pipe = RespPipe(proxy.url, timeout_s=2.0)
    try:
        assert await pipe.call("PING") == "PONG"
        await proxy.stop()
        with pytest.raises(RedisConnectionError):
            await pipe.call("PING")
        await proxy.start()
        assert await pipe.call("PING") == "PONG"
    finally:
        await pipe.close()


async def test_no_reply_in_time_is_a_timeout_and_the_connection_starts_afresh() -> None:
    silent = True
    connections = 0

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.read(65536):
            if not silent:
                writer.write(b"+PONG\r\n")
        writer.close()

    listener = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pipe = RespPipe(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    try:
        with pytest.raises(RedisTimeoutError):
            await pipe.call("PING")  # a Redis that accepts and never answers
        silent = False
        assert await pipe.call("PING") == "PONG"
        assert connections == 2  # a new connection: a late reply could not be matched to a new call
    finally:
        await pipe.close()
        listener.close()


async def test_the_database_number_in_the_url_is_selected(redis_factory) -> None:
    base = REDIS_URL.rsplit("/", 1)[0]
    key = "palyra:test-resp-db:" + secrets.token_hex(4)
    nine, zero = RespPipe(base + "/9", timeout_s=2.0), RespPipe(base + "/0", timeout_s=2.0)
    try:
        await nine.call("SET", key, "x")
        assert await nine.call("GET", key) == "x" and await zero.call("GET", key) is None
    finally:
        await nine.call("DEL", key)
        await nine.close()
        await zero.close()
