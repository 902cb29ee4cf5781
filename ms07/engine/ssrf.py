"""SSRF guard (opt-in, ``network.deny_private``): the engine's outbound requests --
deliveries, OAuth2 token fetches, health probes -- may not reach loopback, private,
link-local (the cloud metadata address), multicast or reserved addresses, IPv4-mapped,
6to4 and NAT64 IPv6 spellings included. ``network.allow_cidrs`` opens chosen ranges.

The check lives in the connector, on the host aiohttp is about to connect to: yarl has
already normalised it by then (IDNA/UTS 46 turns ``①②⑦.0.0.1`` or ``127。0。0。1`` into
``127.0.0.1``), and literal IP hosts, which aiohttp never hands to a resolver, pass
through the same method as resolved names, DNS cache hits included. Every address of the
answer is checked, so a name pointing inside is refused too, not only a URL that spells
an inside address. A numeric host that is not a canonical dotted quad (``2130706433``,
``127.1``, ``0x7f.1``) or a host with a percent-escape is refused outright: the C
library reads such hosts in ways a URL parser does not. Redirects are never followed, so
a 3xx cannot lead inside either.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import aiohttp

from ms07.config import NetworkConfig, host_problem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The hook below is aiohttp's own: a version without it would silently skip the guard.
if not callable(getattr(aiohttp.TCPConnector, "_resolve_host", None)):  # pragma: no cover
    raise ImportError("aiohttp.TCPConnector._resolve_host is gone: the SSRF guard cannot hook in")


class ForbiddenAddress(OSError):
    """A destination resolved only to addresses the SSRF guard refuses."""

    permanent = True
    code = "DESTINATION_FORBIDDEN"


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def forbidden_reason(address: str, allow: list[Network]) -> str | None:
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
        # fec0::/10, deprecated but still routed inside some networks; not "private" to Python.
        ("site-local", getattr(real, "is_site_local", False)),
        ("reserved", real.is_reserved),
        ("private", real.is_private),
        ("not globally routable", not real.is_global),
    ):
        if test:
            return f"{address} is a {label} address"
    return None


def allowed_networks(network: NetworkConfig) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in network.allow_cidrs]


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that connects only to addresses the guard allows."""

    def __init__(self, network: NetworkConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._allow = allowed_networks(network)

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[Any]:
        problem = host_problem(host)
        if problem is not None:
            raise ForbiddenAddress(f"{host} refused by the SSRF guard: {problem}")
        name = host.rstrip(".").lower()
        if name == "localhost" or name.endswith(".localhost"):
            # Loopback by definition (RFC 6761), whatever this resolver makes of "localhost.".
            self._check(host, [{"host": "127.0.0.1"}, {"host": "::1"}])
        return self._check(host, await super()._resolve_host(host, port, traces=traces))

    def _check(self, host: str, answers: list[Any]) -> list[Any]:
        allowed = [a for a in answers if forbidden_reason(a["host"], self._allow) is None]
        if not allowed:
            reasons = "; ".join(sorted({forbidden_reason(a["host"], self._allow) or "" for a in answers}))
            raise ForbiddenAddress(f"{host} refused by the SSRF guard: {reasons or 'no address'}")
        return allowed


def connector(network: NetworkConfig | None, **kwargs: Any) -> aiohttp.TCPConnector:
    """The connector for an outbound session of the engine: guarded when the config says so."""
    if network is not None and network.deny_private:
        return GuardedConnector(network, **kwargs)
    return aiohttp.TCPConnector(**kwargs)


def refusal(exc: BaseException) -> ForbiddenAddress | None:
    """The guard's refusal behind an aiohttp client error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ForbiddenAddress):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None
