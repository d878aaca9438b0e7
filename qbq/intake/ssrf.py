"""Which page URLs qbq may fetch: http(s) without credentials, to public addresses only.

`check_url` is the static check (before any lookup); `AddressPolicy` decides on every address a
connection is about to be made to, after DNS — so a name that resolves to 127.0.0.1, a redirect
to 10.0.0.5 or `http://2130706433/` are all refused without a connection being made.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import SplitResult, urlsplit

from qbq.errors import PageUrlRefusedError

__all__ = ["AddressPolicy", "IPAddress", "check_url", "host_of", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES: Final = ("http", "https")
# The forms inet_aton reads as IPv4: 127.1, 0x7f000001, 2130706433, 0177.0.0.1.
_IPV4_SHORTHAND: Final = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_PRIVATE_HINT: Final = ("is not a public internet address (set QBQ_ALLOW_PRIVATE_URLS=true to "
                        "fetch from local test servers)")


def host_of(url: str) -> str:
    """The host of `url` for messages ('?' when there is none): never the path or the query."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return "?"
    return host or "?"


def check_url(url: str, policy: AddressPolicy) -> SplitResult:
    """The URL split, if qbq may fetch it: http(s), a host, no user:password, and — when the host
    is an address literal in any form — an allowed address. Else `PageUrlRefusedError`."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise PageUrlRefusedError("not a valid URL") from None  # its message may quote the URL
    if parts.scheme.lower() not in _SCHEMES:
        scheme = parts.scheme.lower() or "none"
        raise PageUrlRefusedError(f"URL scheme '{scheme[:20]}' is not allowed (http or https only)")
    if parts.username is not None or parts.password is not None:
        raise PageUrlRefusedError("the URL carries credentials (user:password@); qbq never sends "
                                  "them - use a presigned URL instead")
    host = parts.hostname
    if not host:
        raise PageUrlRefusedError("the URL has no host")
    literal = literal_address(host)
    if literal is not None:
        policy.check(literal, port or (443 if parts.scheme.lower() == "https" else 80))
    return parts


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP literal stands for (any IPv4 shorthand included)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _IPV4_SHORTHAND.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_public_address(ip: IPAddress) -> bool:
    """A globally routable unicast address; IPv6 forms that embed an IPv4 address (mapped,
    6to4, Teredo, NAT64) must embed a public one too."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address | None] = [ip.ipv4_mapped, ip.sixtofour]
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(e is not None and not is_public_address(e) for e in embedded):
            return False
    return bool(ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                      or ip.is_loopback or ip.is_link_local or ip.is_private))


@dataclass(frozen=True)
class AddressPolicy:
    """Decides on each address qbq is about to connect to for a page.

    `allow_private` (QBQ_ALLOW_PRIVATE_URLS) lets any address through; `allowed` lets through
    exactly these (address, port) pairs (tests allow-list their own loopback servers).
    """

    allow_private: bool = False
    allowed: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def check(self, ip: IPAddress, port: int) -> None:
        """Raise `PageUrlRefusedError` unless a connection to ip:port is allowed."""
        if self.allow_private or is_public_address(ip) or (str(ip), port) in self.allowed:
            return
        raise PageUrlRefusedError(f"refused: the URL's host {_PRIVATE_HINT}")

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for host:port, all checked; refused as a whole when any
        is not allowed (a name that answers with a private address is not trusted)."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise PageUrlRefusedError("the URL's host name does not resolve") from exc
        addresses: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            self.check(ip, port)
            if str(ip) not in addresses:
                addresses.append(str(ip))
        if not addresses:
            raise PageUrlRefusedError("the URL's host name does not resolve")
        return addresses
