"""Live probes of a destination: the guide's ``nslookup``, ``telnet`` and ``curl -v`` in one (docs/architecture.md).

Used by the engine's health loop, ``ms07 destinations check`` and ``diagnose timeouts``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ms07.config import NetworkConfig
from ms07.logs import clip


@dataclass
class ProbeResult:
    url: str
    healthy: bool = False
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None


@dataclass
class FullProbe:
    """DNS, TCP and HTTP of one URL, each timed."""

    url: str
    host: str = ""
    port: int = 0
    addresses: list[str] = field(default_factory=list)
    dns_ms: float | None = None
    dns_error: str | None = None
    tcp_ms: float | None = None
    tcp_error: str | None = None
    http_ms: float | None = None
    http_status: int | None = None
    http_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300

    @property
    def failed_stage(self) -> str | None:
        if self.dns_error:
            return "dns"
        if self.tcp_error:
            return "tcp"
        if self.http_error or not self.healthy:
            return "http"
        return None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["healthy"] = self.healthy
        data["failed_stage"] = self.failed_stage
        return data


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return clip(text, 300)  # an auth failure may quote what the endpoint was sent


async def probe_http(url: str, *, timeout: float = 5.0, auth: Any = None,
                     network: NetworkConfig | None = None) -> ProbeResult:
    """GET ``url``; healthy when it answers 2xx within ``timeout``. With ``network`` (the
    engine's health loop) the request goes through the SSRF guard's connector."""
    from ms07.engine import ssrf

    result = ProbeResult(url)
    headers = {}
    t0 = time.perf_counter()
    try:
        if auth is not None:
            headers.update(await auth.headers())
        async with aiohttp.ClientSession(connector=ssrf.connector(network),
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as client:
            async with client.get(url, headers=headers, allow_redirects=False) as resp:
                result.status_code = resp.status
        result.healthy = 200 <= result.status_code < 300
        if not result.healthy:
            result.error = f"HTTP {result.status_code}"
    except Exception as exc:  # every failure is a verdict, not a crash
        refused = ssrf.refusal(exc)
        result.error = str(refused) if refused is not None else _describe(exc)
    result.latency_ms = _ms(t0)
    return result


async def probe_full(url: str, *, timeout: float = 3.0, auth: Any = None) -> FullProbe:
    """DNS resolve, TCP connect and HTTP GET of ``url``, each with ``timeout``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    out = FullProbe(url, host, port)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        out.addresses = sorted({i[4][0] for i in infos})
    except Exception as exc:
        out.dns_error = _describe(exc)
        return out
    finally:
        out.dns_ms = _ms(t0)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(out.addresses[0], port)
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    except Exception as exc:
        out.tcp_error = _describe(exc)
        out.tcp_ms = _ms(t0)
        return out
    out.tcp_ms = _ms(t0)
    http = await probe_http(url, timeout=timeout, auth=auth)
    out.http_ms, out.http_status, out.http_error = http.latency_ms, http.status_code, http.error
    return out
