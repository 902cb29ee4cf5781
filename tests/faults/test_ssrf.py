"""The SSRF guard (network.deny_private), beyond tests/destinations/test_features.py: every
blocked range in its IPv6 spellings, DNS answers pointing inside, redirects toward the
inside, and the requests the engine makes besides deliveries (health probes, OAuth2
token fetches)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from ms07.config import NetworkConfig
from ms07.engine.ssrf import ForbiddenAddress, GuardedResolver, forbidden_reason
from ms07.submit import submit
from tests.support import Sink, status, wait_for

pytestmark = pytest.mark.faults

INSIDE_V4 = ["127.0.0.1", "127.255.255.254", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254",
             "100.64.0.1", "0.0.0.0", "224.0.0.251", "240.0.0.1", "255.255.255.255", "192.0.2.1",
             "198.18.0.1", "198.51.100.7", "203.0.113.9"]


@pytest.mark.parametrize("v4", INSIDE_V4)
def test_every_inside_ipv4_range_is_refused_in_every_spelling(v4: str) -> None:
    packed = int(ipaddress.IPv4Address(v4))
    spellings = [
        v4,
        f"::ffff:{v4}",  # IPv4-mapped
        str(ipaddress.IPv6Address((0xFFFF << 32) | packed)),  # the same, hex-written
        str(ipaddress.IPv6Address((0x2002 << 112) | (packed << 80))),  # 6to4
        str(ipaddress.IPv6Address((0x64FF9B << 96) | packed)),  # NAT64 well-known prefix
        f"::{v4}",  # IPv4-compatible (deprecated)
    ]
    for address in spellings:
        assert forbidden_reason(address, []) is not None, address


@pytest.mark.parametrize("v6", ["::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "fec0::1",
                                "ff02::1", "2001:db8::1", "100::1", "2001::1", "2001:10::1", "::ffff:0:a00:1"])
def test_inside_ipv6_ranges_are_refused(v6: str) -> None:
    assert forbidden_reason(v6, []) is not None


def test_an_allowlist_opens_only_its_range() -> None:
    allow = [ipaddress.ip_network("10.1.0.0/16")]
    assert forbidden_reason("10.1.2.3", allow) is None
    assert forbidden_reason("::ffff:10.1.2.3", allow) is None
    assert forbidden_reason("10.2.0.1", allow) is not None
    assert forbidden_reason("127.0.0.1", allow) is not None


class Answers:
    """A DNS answer, as aiohttp's resolver interface returns it."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": h, "port": port, "family": socket.AF_INET6 if ":" in h else socket.AF_INET,
                 "proto": 0, "flags": 0} for h in self.hosts]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("answer", [("127.0.0.1",), ("::ffff:127.0.0.1",), ("169.254.169.254",), ("10.0.0.1", "::1"),
                                    ("64:ff9b::a9fe:a9fe",)])
async def test_a_dns_answer_pointing_inside_is_refused(answer: tuple[str, ...]) -> None:
    guard = GuardedResolver(NetworkConfig(deny_private=True), inner=Answers(*answer))  # type: ignore[arg-type]
    with pytest.raises(ForbiddenAddress, match="refused by the SSRF guard"):
        await guard.resolve("rebind.example", 443)


async def test_a_mixed_dns_answer_keeps_only_the_outside_addresses() -> None:
    guard = GuardedResolver(NetworkConfig(deny_private=True),
                            inner=Answers("10.0.0.7", "93.184.216.34", "::ffff:127.0.0.1"))  # type: ignore[arg-type]
    assert [a["host"] for a in await guard.resolve("mixed.example", 443)] == ["93.184.216.34"]


async def _settled_one(engine: Any) -> tuple[str, str | None, str | None]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, last_error_code, last_error FROM distribution_jobs")
        row = await cur.fetchone()
    return row if row and row[0] in ("delivered", "failed", "dead") else None  # type: ignore[return-value]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_toward_the_inside_is_never_followed(make_settings, sink: Sink, start_engine,
                                                              code: int) -> None:
    for target in ("/internal", "/metadata"):
        sink.on(target, status(200))
    inside = f"http://localhost:{sink.port}/internal"
    sink.on("/redirect", status(code, {"Location": inside}))
    # The guard lets the sink's own address through (it has to, to reach it at all):
    # the redirect, not the guard, is what is tested here.
    engine = await start_engine(make_settings(
        destinations=[{"name": "r", "url": sink.url("/redirect"), "health_url": sink.url("/redirect")}],
        network={"deny_private": True, "allow_cidrs": ["127.0.0.1/32"]},
        service={"health_check_interval_seconds": 0.1}))
    async with engine.pool.connection() as conn:
        await submit(conn, engine.queue, engine.settings, ["r"], {"x": 1})
    state, code_, message = await wait_for(lambda: _settled_one(engine), what="settled")
    assert (state, code_) == ("failed", "HTTP_3XX") and "not followed" in (message or "")
    await wait_for(lambda: sink.counts["/redirect"] >= 3, what="health probes of the redirecting URL")
    assert sink.counts["/internal"] == 0
    [(_, dlq)] = await engine.queue.dlq_entries()
    assert dlq["reason"] == "permanent_failure"


async def test_health_probes_respect_the_guard(make_settings, sink: Sink, start_engine) -> None:
    """With deny_private, the engine's own health probes may not reach inside either."""
    sink.on("/health", status(200))
    engine = await start_engine(make_settings(
        destinations=[{"name": "in", "url": sink.url("/in"), "health_url": sink.url("/health")},
                      {"name": "named", "url": f"http://localhost:{sink.port}/in",
                       "health_url": f"http://localhost:{sink.port}/health"}],
        network={"deny_private": True}, service={"health_check_interval_seconds": 0.1}))

    async def health() -> dict[str, tuple[str, str]] | None:
        async with engine.pool.connection() as conn:
            cur = await conn.execute("SELECT name, health_status, last_health_error FROM destinations "
                                     "WHERE last_health_check IS NOT NULL")
            rows = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
        return rows if len(rows) == 2 else None

    rows = await wait_for(health, what="both probed")
    assert sink.counts["/health"] == 0
    assert all(s == "unhealthy" and "SSRF guard" in (e or "") for s, e in rows.values()), rows


async def test_oauth2_token_fetches_respect_the_guard(make_settings, sink: Sink, start_engine, monkeypatch) -> None:
    monkeypatch.setenv("T_CLIENT_SECRET", "cs-guarded")
    sink.on("/token", status(200, body='{"access_token": "t", "expires_in": 60}'))
    engine = await start_engine(make_settings(
        destinations=[{"name": "o", "url": "http://93.184.216.34:9/in",
                       "auth": {"type": "oauth2_client_credentials", "token_url": sink.url("/token"),
                                "client_id": "c", "client_secret_env": "T_CLIENT_SECRET"}}],
        network={"deny_private": True}, distribution={"max_attempts": 1}))
    async with engine.pool.connection() as conn:
        await submit(conn, engine.queue, engine.settings, ["o"], {"x": 1})
    state, code, message = await wait_for(lambda: _settled_one(engine), what="settled")
    assert sink.counts["/token"] == 0
    assert code == "DESTINATION_FORBIDDEN" and "SSRF guard" in (message or "")
    assert state == "failed"
