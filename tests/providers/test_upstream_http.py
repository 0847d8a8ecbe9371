"""The adapters' HTTP client against real servers on loopback: keep-alive, bodies, timeouts, the SSRF
guard, the pool limit, broken connections, multipart."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from palyra.providers.upstream_http import (
    Timeouts,
    UpstreamConnectionError,
    UpstreamSession,
    multipart_form,
)

T = Timeouts(connect=2.0, total=5.0)


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A TCP server that answers with whatever bytes ``handle`` writes (malformed HTTP included)."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await handle(reader, writer)
        writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def session(**kw: object) -> UpstreamSession:
    options = {"pool_size": 4, "allow_private": True, **kw}
    return UpstreamSession("test", **options)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    peers: list[object] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        body = await request.read()
        return web.json_response({"got": body.decode(), "auth": request.headers.get("Authorization")})

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    async with aiohttp_server(app) as base:
        http = session()
        for i in range(3):
            async with http.post(
                base + "/v1/echo", data=b'{"n": %d}' % i, headers={"Authorization": "Bearer k"}, timeout=T
            ) as resp:
                assert resp.status == 200 and resp.content_type == "application/json"
                assert await resp.read() == b'{"got": "{\\"n\\": %d}", "auth": "Bearer k"}' % i
        await http.close()
    assert len(set(peers)) == 1  # one connection for all three


async def test_chunked_gzip_and_close_delimited_bodies() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"data: one\n\n", b"data: two\n", b"\ndata: [DONE]\n\n"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def zipped(_request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"x" * 100_000), headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_post("/chunked", chunked)
    app.router.add_get("/zipped", zipped)
    async with aiohttp_server(app) as base:
        http = session()
        async with http.post(base + "/chunked", data=b"{}", timeout=T) as resp:
            lines = [line async for line in resp.content]
        assert lines == [b"data: one\n", b"\n", b"data: two\n", b"\n", b"data: [DONE]\n", b"\n"]
        async with http.get(base + "/zipped", timeout=T) as resp:
            assert await resp.read() == b"x" * 100_000
        await http.close()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(until_close) as base:
        http = session()
        async with http.get(base + "/", timeout=T) as resp:
            assert await resp.read() == b"all of it"
        await http.close()


async def test_a_connection_lost_mid_body_or_malformed_http_is_a_connection_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    for handler in (cut, garbage):
        async with raw_server(handler) as base:
            http = session()
            with pytest.raises(UpstreamConnectionError):
                async with http.post(base + "/", data=b"{}", timeout=T) as resp:
                    await resp.read()
            await http.close()


async def test_timeouts_total_and_between_reads() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(silent) as base:
        http = session()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            async with http.post(base + "/", data=b"{}", timeout=Timeouts(connect=1, total=0.3)):
                pass
        assert loop.time() - started < 2
        await http.close()
    async with raw_server(stalls) as base:
        http = session()
        async with http.post(base + "/", data=b"{}", timeout=Timeouts(connect=1, read=0.3)) as resp:
            lines = resp.content
            with pytest.raises(TimeoutError):
                async for _ in lines:
                    pass
        await http.close()


async def test_private_addresses_need_allow_private() -> None:
    """Checked at connect time, on every address a name resolves to (DNS rebinding included)."""
    app = web.Application()

    async def reached(_request: web.Request) -> web.Response:
        return web.Response(text="reached")

    app.router.add_get("/", reached)
    async with aiohttp_server(app) as base:
        port = base.rsplit(":", 1)[1]
        for url in (base + "/", f"http://localhost:{port}/"):  # a literal, then a name
            http = session(allow_private=False)
            with pytest.raises(UpstreamConnectionError, match="allow_private_base_url"):
                async with http.get(url, timeout=T):
                    pass
            await http.close()
        allowed = session(allow_private=True)
        async with allowed.get(f"http://localhost:{port}/", timeout=T) as resp:
            assert await resp.read() == b"reached"
        await allowed.close()


async def test_the_pool_limit_queues_requests_beyond_it() -> None:
    in_flight = peak = 0
    peers: set[object] = set()

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", slow)
    async with aiohttp_server(app) as base:
        http = session(pool_size=2)

        async def one() -> bytes:
            async with http.post(base + "/", data=b"", timeout=T) as resp:
                return await resp.read()

        assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
        await http.close()
    assert peak == 2 and len(peers) == 2


async def test_a_large_stream_read_slowly_arrives_whole() -> None:
    """Reading pauses while the unread body is large, and resumes: nothing is lost or reordered."""
    blob = bytes(range(256)) * 8192  # 2 MiB

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(0, len(blob), 65536):
            await resp.write(blob[i : i + 65536])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/", big)
    async with aiohttp_server(app) as base:
        http = session()
        async with http.post(base + "/", data=b"", timeout=T) as resp:
            await asyncio.sleep(0.3)  # let the server fill what it can
            got = await resp.read()
        assert got == blob
        await http.close()


async def test_multipart_form_is_what_a_server_parses() -> None:
    seen: dict[str, object] = {}

    async def form(request: web.Request) -> web.Response:
        data = await request.post()
        upload = data["file"]
        seen.update(
            model=data["model"],
            filename=upload.filename,  # type: ignore[union-attr]
            content=upload.file.read(),  # type: ignore[union-attr]
            type=upload.content_type,  # type: ignore[union-attr]
        )
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", form)
    body, content_type = multipart_form(
        [("file", b"RIFF\x00\x01audio", 'clip "1".wav', "audio/wav"), ("model", "whisper-1", None, None)]
    )
    async with aiohttp_server(app) as base:
        http = session()
        async with http.post(base + "/", data=body, headers={"Content-Type": content_type}, timeout=T) as r:
            assert r.status == 200
        await http.close()
    assert seen == {
        "model": "whisper-1",
        "filename": "clip %221%22.wav",
        "content": b"RIFF\x00\x01audio",
        "type": "audio/wav",
    }


async def test_header_injection_is_refused() -> None:
    http = session()
    with pytest.raises(UpstreamConnectionError):
        async with http.get("http://127.0.0.1:9/", headers={"X-A": "v\r\nX-B: w"}, timeout=T):
            pass
    await http.close()


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for localhost (the CA, certificate and key files)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                critical=False,
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "palyra test CA")])
    ca_cert = cert("palyra test CA", ca_key, ca_name, ca_key, True)
    leaf = cert("localhost", key, ca_name, ca_key, False)
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_file, cert_file, key_file


async def test_https_verifies_the_certificate_and_the_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, cert_file, key_file = _tls_files(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"tls": request.secure})

    app.router.add_post("/v1/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        untrusted = session()  # the system's CAs do not know the test CA
        with pytest.raises(UpstreamConnectionError, match=r"TLS|certificate"):
            async with untrusted.post(f"https://localhost:{port}/v1/x", data=b"", timeout=T):
                pass
        await untrusted.close()

        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # read when the client makes its context
        trusted = session()
        async with trusted.post(f"https://localhost:{port}/v1/x", data=b"", timeout=T) as resp:
            assert resp.status == 200 and await resp.read() == b'{"tls": true}'
        await trusted.close()

        wrong_name = session()  # the certificate names localhost, not 127.0.0.1
        with pytest.raises(UpstreamConnectionError, match=r"TLS|certificate|match"):
            async with wrong_name.post(f"https://127.0.0.1:{port}/v1/x", data=b"", timeout=T):
                pass
        await wrong_name.close()
    finally:
        await runner.cleanup()


async def test_an_interim_response_is_skipped() -> None:
    async def continue_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)  # the interim response arrives alone
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with raw_server(continue_first) as base:
        http = session()
        async with http.post(base + "/", data=b"{}", timeout=T) as resp:
            assert resp.status == 201 and await resp.read() == b"done"
        await http.close()
