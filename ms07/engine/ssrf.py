"""SSRF guard (opt-in, ``network.deny_private``): destinations may not reach loopback,
private, link-local, multicast or reserved addresses, IPv4-mapped IPv6 included.

The check runs on the addresses the resolver returns -- the ones aiohttp then connects
to -- so a DNS answer pointing inside is refused, not just a URL that names an inside
address. Redirects are never followed, so a 3xx cannot lead inside either.
``network.allow_cidrs`` opens chosen ranges.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from ms07.config import NetworkConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenAddress(OSError):
    """A destination resolved only to addresses the SSRF guard refuses."""

    permanent = True


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def forbidden_reason(address: str, allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """Why ``address`` may not be connected to, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address} is not an IP address"
    real = _unmapped(ip)
    for net in allow:
        if real.version == net.version and real in net:
            return None
    for label, test in (
        # Most specific first: link-local and unspecified ranges are also "private".
        ("loopback", real.is_loopback),
        ("link-local", real.is_link_local),
        ("multicast", real.is_multicast),
        ("unspecified", real.is_unspecified),
        ("reserved", real.is_reserved),
        ("private", real.is_private),
        ("not globally routable", not real.is_global),
    ):
        if test:
            return f"{address} is a {label} address"
    return None


class GuardedResolver(AbstractResolver):
    def __init__(self, network: NetworkConfig, inner: AbstractResolver | None = None) -> None:
        self.allow = [ipaddress.ip_network(c, strict=False) for c in network.allow_cidrs]
        self._inner = inner

    def check_literal(self, url: str) -> str | None:
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
        reason = forbidden_reason(host, self.allow)
        return f"destination address refused by the SSRF guard: {reason}" if reason else None

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[dict[str, Any]]:
        if self._inner is None:
            self._inner = DefaultResolver()
        answers = await self._inner.resolve(host, port, family)
        allowed = [a for a in answers if forbidden_reason(a["host"], self.allow) is None]
        if not allowed:
            reasons = "; ".join(sorted({forbidden_reason(a["host"], self.allow) or "" for a in answers}))
            raise ForbiddenAddress(f"{host} refused by the SSRF guard: {reasons}")
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def resolver_for(network: NetworkConfig) -> GuardedResolver | None:
    return GuardedResolver(network) if network.deny_private else None
