"""The private-network guard for every URL Palyra sends credentials or prompts to.

Two steps, because they fail at different times: ``validate_base_url`` checks what can be told from the
text alone (at config load), ``check_destination`` checks where the host actually resolves to (before
connecting). Both refuse private and special-use destinations unless the operator opted in with
``allow_private_base_url = true``, so a tampered config or a hostile DNS answer cannot point the gateway
at cloud metadata services or internal admin ports.

The check resolves the name itself; the HTTP client resolves it again when it connects, so a DNS answer
that changes in between (rebinding) is not caught here.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import SplitResult, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[Sequence[str]] | Sequence[str]]
"""``(host, port) -> IP address strings``; sync or async. The default asks the event loop's resolver."""

OPT_IN = "allow_private_base_url = true"

_DEFAULT_PORTS = {"https": 443, "http": 80}
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)

_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, home of cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including 255.255.255.255 broadcast
    )
)

_PRIVATE_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses
        "100::/64",  # discard-only
        "2001::/32",  # Teredo: tunnels to an arbitrary IPv4 address
        "2001:2::/48",  # benchmarking
        "2001:10::/28",  # ORCHID
        "2001:20::/28",  # ORCHIDv2
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4: tunnels to an arbitrary IPv4 address
        "3fff::/20",  # documentation
        "64:ff9b:1::/48",  # local-use NAT64
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeUrl(ValueError):
    """A URL the gateway must not talk to. The message names the field and the fix."""


def is_private_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is private, local or special-use: anything that is not a public unicast host."""
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _PRIVATE_V4)
    if ip in _IPV4_MAPPED or ip in _NAT64:
        # The embedded IPv4 address is where the packets end up.
        return is_private_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return any(ip in net for net in _PRIVATE_V6)


def validate_base_url(url: str, *, allow_private: bool, field: str = "base_url") -> str:
    """Check ``url`` as text and return it normalised (no trailing ``/``); raise ``UnsafeUrl``.

    Requires an absolute https URL (http only to a loopback host) with a host and no credentials, query
    or fragment. Without ``allow_private``, a ``localhost`` name or a private IP literal is refused here
    already; hostnames are left to ``check_destination``.
    """
    if _CONTROL_OR_SPACE.search(url):
        raise UnsafeUrl(f"{field} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"{field} is not a valid URL ({exc}); use e.g. https://api.example.com/v1") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise UnsafeUrl(f"{field} must be an absolute URL such as https://api.example.com/v1")
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeUrl(f"{field} must use https (or http to a loopback host), not {scheme}://")
    if "@" in parts.netloc:
        # Never echo the URL: the userinfo is probably a credential.
        raise UnsafeUrl(f"{field} must not contain a user name or password; configure credentials separately")
    if "?" in url or "#" in url:
        raise UnsafeUrl(f"{field} must not contain a query string or fragment; give the base path only")
    host = _host_of(parts)
    if not host:
        raise UnsafeUrl(f"{field} must name a host, e.g. https://api.example.com/v1")
    if port == 0:
        raise UnsafeUrl(f"{field} has port 0; omit the port or give a real one")
    if scheme == "http" and not _is_loopback_host(host):
        raise UnsafeUrl(
            f"{field} uses http:// to {host!r}; use https:// (plain http is only allowed to "
            "localhost, 127.0.0.0/8 or ::1)"
        )
    if not allow_private:
        _refuse_literal_private(host, field)
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, parts.netloc.lower(), path, "", ""))


async def check_destination(
    url: str,
    *,
    allow_private: bool,
    resolver: Resolver | None = None,
    field: str = "base_url",
) -> None:
    """Refuse ``url`` unless its host is public: by name, by IP literal and by every DNS answer.

    Fails closed: a name that does not resolve, or resolves to nothing, is refused as well.
    """
    if allow_private:
        return
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 443)
    except ValueError as exc:
        raise UnsafeUrl(f"{field} is not a valid URL ({exc})") from None
    host = _host_of(parts)
    if not host:
        raise UnsafeUrl(f"{field} must name a host, e.g. https://api.example.com/v1")
    if _refuse_literal_private(host, field):
        return  # a public IP literal: nothing to resolve
    answers = await _resolve(host, port, resolver)
    if not answers:
        raise UnsafeUrl(
            f"{field} host {host!r} could not be resolved to enforce the private-network guard; "
            f"check the name, or set {OPT_IN} if it is a private upstream"
        )
    for answer in answers:
        ip = _parse_ip(answer)
        if ip is None or is_private_address(ip):
            raise UnsafeUrl(
                f"{field} host {host!r} resolves to private/local address {answer}; "
                f"set {OPT_IN} to allow private upstreams"
            )


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver returns for ``host``, as strings."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _host_of(parts: SplitResult) -> str:
    # urlsplit lowercases and unbrackets the host; a trailing dot names the same host.
    return (parts.hostname or "").rstrip(".")


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    # Shorthand IPv4 that C resolvers still accept (127.1, 2130706433, 0177.0.0.1, 0x7f.0.0.1) names an
    # address too; read it the way they do, so it cannot slip past the literal check as a "host name".
    if _LEGACY_IPV4.match(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    ip = _parse_ip(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and ip.is_loopback


def _refuse_literal_private(host: str, field: str) -> bool:
    """Raise for a local name or private IP literal; return whether ``host`` is a (public) IP literal."""
    if host == "localhost" or host.endswith(".localhost"):
        raise UnsafeUrl(f"{field} points at {host!r}, a local host; set {OPT_IN} to allow private upstreams")
    ip = _parse_ip(host)
    if ip is None:
        return False
    if is_private_address(ip):
        raise UnsafeUrl(
            f"{field} points at private/local address {host}; set {OPT_IN} to allow private upstreams"
        )
    return True


async def _resolve(host: str, port: int, resolver: Resolver | None) -> list[str]:
    try:
        if resolver is None:
            return await system_resolver(host, port)
        result = resolver(host, port)
        if inspect.isawaitable(result):
            result = await result
        return [str(a) for a in result]
    except (OSError, UnicodeError, ValueError):
        # gaierror is an OSError; an undecodable IDN name raises UnicodeError.
        return []
