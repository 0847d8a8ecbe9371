"""The private-network guard: URL syntax rules and destination checks (reference tests 20-26)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from palyra.netguard import UnsafeUrl, check_destination, is_private_address, validate_base_url


class FakeResolver:
    """Answers from a table; an unknown name fails the way getaddrinfo does."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


def resolver_for(answers: dict[str, list[str]]) -> FakeResolver:
    return FakeResolver(answers)


# --- validate_base_url: syntax -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("https://api.openai.com/", "https://api.openai.com"),
        ("HTTPS://API.Example.COM:8443/v1//", "https://api.example.com:8443/v1"),
    ],
)
def test_valid_public_urls_are_normalised(url: str, expected: str) -> None:
    assert validate_base_url(url, allow_private=False) == expected


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/v1", "http://localhost:11434/v1", "http://[::1]:8000/v1", "http://127.9.9.9/v1"],
)
def test_http_to_loopback_is_accepted_with_opt_in(url: str) -> None:
    assert validate_base_url(url + "/", allow_private=True) == url


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("file:///etc/passwd", "https"),
        ("ftp://example.com/v1", "https"),
        ("gopher://example.com/", "https"),
        ("http://example.com/v1", "http://"),
        ("http://10.0.0.5:8000/v1", "http://"),
        ("api.openai.com/v1", "absolute"),
        ("/v1", "absolute"),
        ("", "absolute"),
        ("https://user:pass@api.example.com/v1", "user name or password"),
        ("https://sk-secret@api.example.com/v1", "user name or password"),
        ("https://api.example.com/v1?key=1", "query"),
        ("https://api.example.com/v1?", "query"),
        ("https://api.example.com/v1#frag", "fragment"),
        ("https://:443/v1", "host"),
        ("https://api.example.com:99999/v1", "not a valid URL"),
        ("https://api.example.com:0/v1", "port 0"),
        ("https://api.example.com/v1\r\nX-Injected: 1", "control characters"),
        (" https://api.example.com/v1", "spaces"),
    ],
)
def test_bad_syntax_is_refused_even_with_opt_in(url: str, needle: str) -> None:
    with pytest.raises(UnsafeUrl, match="base_url") as info:
        validate_base_url(url, allow_private=True)
    assert needle in str(info.value)


def test_userinfo_is_never_echoed() -> None:
    with pytest.raises(UnsafeUrl) as info:
        validate_base_url("https://admin:hunter2@api.example.com/v1", allow_private=False)
    assert "hunter2" not in str(info.value)


def test_message_names_the_field() -> None:
    with pytest.raises(UnsafeUrl, match=r"^token_url must"):
        validate_base_url("ftp://auth.example.com/token", allow_private=False, field="token_url")


@pytest.mark.parametrize(
    "url",
    [
        "https://10.10.10.10/v1",
        "https://localhost/v1",
        "https://api.localhost/v1",
        "https://LOCALHOST./v1",
        "https://169.254.169.254/latest",
        "https://[fd00::1]/v1",
        "https://[::ffff:10.0.0.1]/v1",
        "http://127.0.0.1:8080/v1",
    ],
)
def test_private_literals_are_refused_without_opt_in(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="allow_private_base_url = true"):
        validate_base_url(url, allow_private=False)


def test_private_literal_is_accepted_with_opt_in() -> None:
    assert validate_base_url("https://10.10.10.10/v1", allow_private=True) == "https://10.10.10.10/v1"


# --- check_destination (reference tests 20-26) ---------------------------------------------------


async def test_private_ip_literal_is_refused_without_opt_in() -> None:  # 20
    resolve = resolver_for({})
    with pytest.raises(UnsafeUrl, match="allow_private_base_url"):
        await check_destination("https://10.10.10.10/v1", allow_private=False, resolver=resolve)
    assert resolve.calls == []


async def test_hostname_resolving_to_private_ip_is_refused() -> None:  # 21
    resolve = resolver_for({"internal.example.com": ["127.0.0.1"]})
    with pytest.raises(UnsafeUrl, match=r"resolves to private/local address 127\.0\.0\.1") as info:
        await check_destination("https://internal.example.com/v1", allow_private=False, resolver=resolve)
    assert "allow_private_base_url = true" in str(info.value)


async def test_hostname_with_any_private_answer_is_refused() -> None:
    resolve = resolver_for({"mixed.example.com": ["93.184.216.34", "10.1.2.3"]})
    with pytest.raises(UnsafeUrl, match=r"10\.1\.2\.3"):
        await check_destination("https://mixed.example.com/v1", allow_private=False, resolver=resolve)


async def test_hostname_resolving_to_public_ip_is_accepted() -> None:  # 22
    resolve = resolver_for({"api.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]})
    await check_destination("https://api.example.com/v1", allow_private=False, resolver=resolve)
    assert resolve.calls == [("api.example.com", 443)]


async def test_resolver_gets_the_explicit_or_default_port() -> None:
    resolve = resolver_for({"api.example.com": ["93.184.216.34"]})
    await check_destination("https://api.example.com:8443/v1", allow_private=False, resolver=resolve)
    await check_destination("http://api.example.com/v1", allow_private=False, resolver=resolve)
    assert resolve.calls == [("api.example.com", 8443), ("api.example.com", 80)]


async def test_sync_resolver_is_accepted() -> None:
    await check_destination(
        "https://api.example.com/v1", allow_private=False, resolver=lambda host, port: ["93.184.216.34"]
    )
    with pytest.raises(UnsafeUrl, match="resolves to private/local"):
        await check_destination(
            "https://api.example.com/v1", allow_private=False, resolver=lambda host, port: ["192.168.1.1"]
        )


@pytest.mark.parametrize("address", ["100.64.0.1", "198.18.0.1", "240.0.0.1"])  # 23
async def test_special_use_ipv4_is_refused(address: str) -> None:
    resolve = resolver_for({"odd.example.com": [address]})
    with pytest.raises(UnsafeUrl, match="resolves to private/local address"):
        await check_destination("https://odd.example.com/v1", allow_private=False, resolver=resolve)
    with pytest.raises(UnsafeUrl, match="private/local address"):
        await check_destination(f"https://{address}/v1", allow_private=False, resolver=resolve)


@pytest.mark.parametrize("address", ["2001:db8::1", "ff02::1", "::ffff:10.0.0.1"])  # 24
async def test_special_use_ipv6_is_refused(address: str) -> None:
    resolve = resolver_for({"odd.example.com": [address]})
    with pytest.raises(UnsafeUrl, match="resolves to private/local address"):
        await check_destination("https://odd.example.com/v1", allow_private=False, resolver=resolve)
    with pytest.raises(UnsafeUrl, match="private/local address"):
        await check_destination(f"https://[{address}]/v1", allow_private=False, resolver=resolve)


async def test_unresolvable_hostname_is_refused() -> None:  # 25
    with pytest.raises(UnsafeUrl, match="could not be resolved to enforce the private-network guard"):
        await check_destination("https://nowhere.invalid/v1", allow_private=False, resolver=resolver_for({}))


async def test_empty_or_garbage_resolution_is_refused() -> None:
    with pytest.raises(UnsafeUrl, match="could not be resolved"):
        await check_destination(
            "https://api.example.com/v1", allow_private=False, resolver=resolver_for({"api.example.com": []})
        )
    with pytest.raises(UnsafeUrl, match="resolves to private/local address not-an-ip"):
        await check_destination(
            "https://api.example.com/v1",
            allow_private=False,
            resolver=resolver_for({"api.example.com": ["not-an-ip"]}),
        )


async def test_opt_in_accepts_private_destinations_without_resolving() -> None:  # 26
    resolve = resolver_for({})
    for url in ("https://10.10.10.10/v1", "http://localhost:11434/v1", "https://internal.corp/v1"):
        await check_destination(url, allow_private=True, resolver=resolve)
    assert resolve.calls == []


@pytest.mark.parametrize("url", ["https://localhost/v1", "https://a.b.localhost/v1", "https://[::1]/v1"])
async def test_local_names_are_refused_without_resolving(url: str) -> None:
    resolve = resolver_for({})
    with pytest.raises(UnsafeUrl, match="allow_private_base_url"):
        await check_destination(url, allow_private=False, resolver=resolve)
    assert resolve.calls == []


async def test_public_ip_literal_needs_no_resolution() -> None:
    resolve = resolver_for({})
    await check_destination("https://93.184.216.34/v1", allow_private=False, resolver=resolve)
    assert resolve.calls == []


async def test_system_resolver_refuses_loopback_name_variants() -> None:
    # Alternative spellings of 127.0.0.1 are not IP literals to ipaddress, but resolve to loopback.
    with pytest.raises(UnsafeUrl, match="private/local"):
        await check_destination("https://127.1/v1", allow_private=False)


# --- is_private_address ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "0.1.2.3",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.88.99.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::127.0.0.1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2001:db8::1",
        "fec0::1",
        "2002:c000:0204::1",
        "2001:0:4136:e378::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::1",
        "100::1",
        "3fff::1",
    ],
)
def test_private_and_special_use_addresses(address: str) -> None:
    assert is_private_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "198.20.0.1",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    ],
)
def test_public_addresses(address: str) -> None:
    assert not is_private_address(ipaddress.ip_address(address))
