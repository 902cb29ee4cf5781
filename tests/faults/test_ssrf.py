"""The SSRF guard (network.deny_private), beyond tests/destinations/test_features.py: every
blocked range in its IPv6 spellings, DNS answers pointing inside, redirects toward the
inside, and the requests the engine makes besides deliveries (health probes, OAuth2
token fetches)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
import pytest

from ms07.config import NetworkConfig
from ms07.engine import ssrf
from ms07.engine.ssrf import forbidden_reason
from ms07.ops.submit import submit
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
    """A DNS answer, as aiohttp's resolver interface returns it: the one fake here, a name
    server that answers what the test says (real ones cannot be told to point inside)."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": h, "port": port, "family": socket.AF_INET6 if ":" in h else socket.AF_INET,
                 "proto": 0, "flags": 0} for h in self.hosts]

    async def close(self) -> None:
        return None


@pytest.fixture
def loopback_only(monkeypatch) -> list[Any]:
    """A tripwire under aiohttp: a connection attempt to anything but 127.0.0.1 is recorded
    and fails instead of leaving the machine, so a broken guard fails the test, not a probe
    of 169.254.169.254."""
    import aiohappyeyeballs

    real = aiohappyeyeballs.start_connection
    outside: list[Any] = []

    async def start_connection(addr_infos: Any, *args: Any, **kwargs: Any) -> Any:
        away = [a[4][0] for a in addr_infos if a[4][0] != "127.0.0.1"]
        if away:
            outside.extend(away)
            raise OSError(f"test tripwire: connection to {away} attempted")
        return await real(addr_infos, *args, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", start_connection)
    return outside


async def _get(network: NetworkConfig, url: str, resolver: Any = None) -> int:
    kwargs = {"resolver": resolver} if resolver is not None else {}
    async with aiohttp.ClientSession(connector=ssrf.connector(network, **kwargs),
                                     timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(url, allow_redirects=False) as resp:
            return resp.status


@pytest.mark.parametrize("answer", [("127.0.0.1",), ("::ffff:127.0.0.1",), ("169.254.169.254",), ("10.0.0.1", "::1"),
                                    ("64:ff9b::a9fe:a9fe",), ("fd00:ec2::254",)])
async def test_a_dns_answer_pointing_inside_is_refused(sink: Sink, loopback_only: list[Any],
                                                       answer: tuple[str, ...]) -> None:
    guard = NetworkConfig(deny_private=True)
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await _get(guard, f"http://rebind.example:{sink.port}/in", Answers(*answer))
    refused = ssrf.refusal(caught.value)
    assert refused is not None and "refused by the SSRF guard" in str(refused)
    assert loopback_only == [] and sink.counts["/in"] == 0


async def test_a_mixed_dns_answer_keeps_only_the_allowed_addresses(sink: Sink, loopback_only: list[Any]) -> None:
    """Only 127.0.0.1 is opened: the private and metadata addresses of the same answer are
    dropped before any connection attempt, and the delivery reaches the sink."""
    guard = NetworkConfig(deny_private=True, allow_cidrs=["127.0.0.1/32"])
    answer = Answers("10.0.0.7", "169.254.169.254", "127.0.0.1", "::ffff:10.0.0.8")
    assert await _get(guard, f"http://mixed.example:{sink.port}/in", answer) == 200
    assert loopback_only == [] and sink.counts["/in"] == 1


METADATA_SPELLINGS = ["169.254.169.254", "⑯⑨.254.169.254", "１６９.２５４.１６９.２５４", "169。254。169。254",
                      "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::]",
                      "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518", "[fd00:ec2::254]",
                      "metadata.google.internal"]


async def test_the_metadata_address_is_refused_before_connecting(loopback_only: list[Any]) -> None:
    """Every spelling of the cloud metadata address: refused by the guard, and no
    connection attempted (the tripwire would have recorded it)."""
    guard = NetworkConfig(deny_private=True)
    wrong = {}
    for host in METADATA_SPELLINGS:
        # metadata.google.internal: answered by the fake DNS, as GCE's resolver would.
        resolver = Answers("169.254.169.254") if host.endswith(".internal") else None
        try:
            wrong[host] = await _get(guard, f"http://{host}/latest/meta-data/", resolver)
        except aiohttp.ClientError as exc:
            refused = ssrf.refusal(exc)
            if refused is None or "refused by the SSRF guard" not in str(refused):
                wrong[host] = repr(exc)
    assert wrong == {} and loopback_only == []


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
        destinations=[{"name": "o", "url": f"http://localhost:{sink.port}/in",
                       "auth": {"type": "oauth2_client_credentials", "token_url": sink.url("/token"),
                                "client_id": "c", "client_secret_env": "T_CLIENT_SECRET"}}],
        network={"deny_private": True}, distribution={"max_attempts": 1}))
    async with engine.pool.connection() as conn:
        await submit(conn, engine.queue, engine.settings, ["o"], {"x": 1})
    state, code, message = await wait_for(lambda: _settled_one(engine), what="settled")
    assert sink.counts["/token"] == 0
    assert code == "DESTINATION_FORBIDDEN" and "SSRF guard" in (message or "")
    assert state == "failed"


async def test_an_allowed_range_is_reached_by_deliveries_probes_and_token_fetches(make_settings, sink: Sink,
                                                                                  start_engine, monkeypatch) -> None:
    """The guard's other side: with 127.0.0.1 allowed, the token is fetched, the health URL
    probed and the distribution delivered, all through the guarded connector."""
    monkeypatch.setenv("T_CLIENT_SECRET", "cs-allowed")
    sink.on("/token", status(200, body='{"access_token": "tok-1", "expires_in": 60}'))
    engine = await start_engine(make_settings(
        destinations=[{"name": "o", "url": f"http://localhost:{sink.port}/in", "health_url": sink.url("/health"),
                       "auth": {"type": "oauth2_client_credentials", "token_url": sink.url("/token"),
                                "client_id": "c", "client_secret_env": "T_CLIENT_SECRET"}}],
        network={"deny_private": True, "allow_cidrs": ["127.0.0.1/32"]},
        service={"health_check_interval_seconds": 0.1}))
    async with engine.pool.connection() as conn:
        await submit(conn, engine.queue, engine.settings, ["o"], {"x": 1})
    state, _, _ = await wait_for(lambda: _settled_one(engine), what="settled")
    assert state == "delivered"
    [delivery] = [r for r in sink.received if r.path == "/in"]
    assert delivery.headers["Authorization"] == "Bearer tok-1" and sink.counts["/token"] == 1

    async def healthy() -> bool:
        async with engine.pool.connection() as conn:
            cur = await conn.execute("SELECT health_status FROM destinations WHERE name = 'o'")
            return (await cur.fetchone())[0] == "healthy"

    await wait_for(healthy, what="probed healthy")


# ---------------------------------------------------------------------- hosts that normalise inside

# Spellings of 127.0.0.1 that a URL parser, IDNA (UTS 46) or the C library turn into it:
# Unicode digits and dots, integer and octal/hex forms, IPv4 in IPv6, case, trailing dots,
# percent-escapes and userinfo. Config load refuses most of them; the connector has to
# refuse every one that gets past it (an engine started with settings built in code).
LOOPBACK_SPELLINGS = [
    "①②⑦.0.0.1", "１２７.0.0.1", "𝟏𝟐𝟕.0.0.1", "127。0。0。1", "127．0．0．1", "127｡0｡0｡1", "①②⑦。⓪。⓪。①",
    "ｌｏｃａｌｈｏｓｔ", "LOCALHOST", "localhost.", "LocalHost.", "127.0.0.1.", "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:7f00:1]", "127.1", "127.0.1", "2130706433", "0x7f.0.0.1", "0x7f000001",
    "017700000001", "0177.0.0.1", "127.000.000.001", "%31%32%37.0.0.1", "evil@127.0.0.1", "127.0.0.1%2e",
    # Other roads to this machine: the unspecified address, the rest of 127/8, ::1 and friends.
    "0.0.0.0", "0", "127.127.127.127", "[::1]", "[0:0:0:0:0:0:0:1]", "[::]", "[::127.0.0.1]", "a.localhost",
]


def _bypassing_config(settings: Any, **changes: Any) -> Any:
    """The settings with destination fields replaced after validation: what the connector
    must refuse on its own."""
    import dataclasses

    dests = []
    for d in settings.destinations:
        extra = changes.get(d.name, {})
        auth = extra.pop("auth", None)
        d = dataclasses.replace(d, **extra)
        dests.append(dataclasses.replace(d, auth=dataclasses.replace(d.auth, **auth)) if auth else d)
    return settings.with_overrides(destinations=dests)


async def test_hosts_that_normalise_to_loopback_are_refused_everywhere(make_settings, sink: Sink, start_engine,
                                                                       monkeypatch) -> None:
    """Deliveries (url), health probes (health_url) and OAuth2 token fetches (token_url) to
    every spelling of loopback end refused by the SSRF guard, and the sink hears nothing."""
    monkeypatch.setenv("T_CLIENT_SECRET", "cs-guarded")
    sink.on("/token", status(200, body='{"access_token": "t", "expires_in": 60}'))
    names = [f"s{i}" for i in range(len(LOOPBACK_SPELLINGS))]
    base = make_settings(
        destinations=[{"name": n, "url": sink.url("/placeholder")} for n in names]
        + [{"name": "tok", "url": f"http://localhost:{sink.port}/in",
            "auth": {"type": "oauth2_client_credentials", "token_url": sink.url("/placeholder"),
                     "client_id": "c", "client_secret_env": "T_CLIENT_SECRET"}}],
        network={"deny_private": True}, distribution={"max_attempts": 1},
        service={"health_check_interval_seconds": 0.1})
    changes: dict[str, Any] = {
        n: {"url": f"http://{h}:{sink.port}/in", "health_url": f"http://{h}:{sink.port}/health"}
        for n, h in zip(names, LOOPBACK_SPELLINGS, strict=True)}
    changes["tok"] = {"auth": {"token_url": f"http://127。0。0。1:{sink.port}/token"}}
    engine = await start_engine(_bypassing_config(base, **changes))
    async with engine.pool.connection() as conn:
        for n in [*names, "tok"]:
            await submit(conn, engine.queue, engine.settings, [n], {"x": 1})

    async def outcomes() -> dict[str, tuple[str, str, str]] | None:
        async with engine.pool.connection() as conn:
            cur = await conn.execute("SELECT destination_name, status, last_error_code, last_error "
                                     "FROM distribution_jobs WHERE status IN ('delivered', 'failed', 'dead')")
            rows = {r[0]: r[1:] for r in await cur.fetchall()}
        return rows if len(rows) == len(names) + 1 else None

    async def probed() -> dict[str, tuple[str, str]] | None:
        async with engine.pool.connection() as conn:
            cur = await conn.execute("SELECT name, health_status, last_health_error FROM destinations "
                                     "WHERE last_health_check IS NOT NULL")
            rows = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
        return rows if len(rows) == len(names) else None

    rows = await wait_for(outcomes, what="every distribution settled")
    health = await wait_for(probed, what="every destination probed")
    wrong = {LOOPBACK_SPELLINGS[names.index(n)] if n in names else n: r for n, r in rows.items()
             if r[:2] != ("failed", "DESTINATION_FORBIDDEN") or "SSRF guard" not in (r[2] or "")}
    assert wrong == {}
    unhealthy = {LOOPBACK_SPELLINGS[names.index(n)]: h for n, h in health.items()
                 if h[0] != "unhealthy" or "SSRF guard" not in (h[1] or "")}
    assert unhealthy == {}
    assert dict(sink.counts) == {}


CONFIG_REFUSED = {
    "①②⑦.0.0.1": "is not ASCII (the HTTP client would connect to '127.0.0.1')",
    "１２７.0.0.1": "is not ASCII", "127。0。0。1": "is not ASCII", "⑯⑨.254.169.254": "is not ASCII",
    "ｌｏｃａｌｈｏｓｔ": "is not ASCII", "bücher.example": "would connect to 'xn--bcher-kva.example'",
    "127.1": "not a canonical IP address", "2130706433": "not a canonical IP address",
    "0x7f.0.0.1": "not a canonical IP address", "017700000001": "not a canonical IP address",
    "0251.0376.0251.0376": "not a canonical IP address", "127.000.000.001": "not a canonical IP address",
    "127.0.0.1.": "not a canonical IP address", "%31%32%37.0.0.1": "is not a host name",
}


@pytest.mark.parametrize("field", ["url", "health_url", "token_url"])
def test_config_load_refuses_hosts_that_normalise_elsewhere(tmp_path, field: str) -> None:
    """A careless (or hostile) config is refused at load with one line naming the key,
    whether deny_private is on or not; ASCII names and canonical literals still load."""
    import yaml

    from ms07.config import load_settings
    from ms07.errors import ConfigError

    def settings_with(host: str) -> Any:
        url = f"http://{host}:8080/x"
        dest = {"name": "d", "url": "http://ok.example/in", "health_url": "http://ok.example/health",
                "auth": {"type": "oauth2_client_credentials", "token_url": "http://ok.example/token",
                         "client_id": "c", "client_secret_env": "S"}}
        if field == "token_url":
            dest["auth"]["token_url"] = url  # type: ignore[index]
        else:
            dest[field] = url
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"destinations": [dest]}, allow_unicode=True), encoding="utf-8")
        return load_settings(path, environ={})

    wrong = {}
    for host, message in CONFIG_REFUSED.items():
        try:
            settings_with(host)
            wrong[host] = "loaded"
        except ConfigError as exc:
            text = str(exc)
            if message not in text or f".{field}: host " not in text or "\n" in text:
                wrong[host] = text
    assert wrong == {}
    for host in ("ok.example", "xn--bcher-kva.example", "127.0.0.1", "[::1]", "svc_x.ns.svc.cluster.local",
                 "LOCALHOST"):
        settings_with(host)
