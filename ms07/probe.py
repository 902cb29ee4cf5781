"""Live probes of a destination: the guide's ``nslookup``, ``telnet`` and ``curl -v`` in one.

Used by the engine's health loop, ``ms07 destinations check`` and ``diagnose timeouts``.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from ms07.logs import redact


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


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The one TLS context of every short-lived httpx client (health probes, OAuth2 token
    fetches): built as ``verify=True`` would build it, once per process.

    A client made with ``verify=True`` builds its own context and loads the whole CA
    bundle into it: ~0.75 MiB of OpenSSL memory (invisible to tracemalloc) and ~40 ms of
    CPU per client. httpcore's pool and connections form a reference cycle, so a closed
    client is freed only by the cyclic GC, which the engine runs rarely (engine/daemon.py):
    a health probe of a live destination every 30 s kept ~1.5 MiB/min of contexts alive
    (docs/reliability.md, "Hardening 2026-12-03: memory during an outage")."""
    return httpx.create_ssl_context()


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return redact(text)[:300]  # an auth failure may quote what the endpoint was sent


async def probe_http(url: str, *, timeout: float = 5.0, auth: Any = None) -> ProbeResult:
    """GET ``url``; healthy when it answers 2xx within ``timeout``."""
    result = ProbeResult(url)
    headers = {}
    t0 = time.perf_counter()
    try:
        if auth is not None:
            headers.update(await auth.headers())
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=ssl_context()) as client:
            resp = await client.get(url, headers=headers)
        result.status_code = resp.status_code
        result.healthy = 200 <= resp.status_code < 300
        if not result.healthy:
            result.error = f"HTTP {resp.status_code}"
    except Exception as exc:  # every failure is a verdict, not a crash
        result.error = _describe(exc)
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
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=timeout
        )
        out.addresses = sorted({i[4][0] for i in infos})
    except Exception as exc:
        out.dns_error = _describe(exc)
        return out
    finally:
        out.dns_ms = _ms(t0)
    t0 = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(out.addresses[0], port), timeout=timeout)
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
