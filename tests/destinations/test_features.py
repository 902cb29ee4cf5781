"""Batching, signing, rate limits, health probes, payload limits, SSRF guard, overrides."""

from __future__ import annotations

import base64
import json
import socket
import time
from typing import Any

import pytest
from aiohttp import web

from ms07 import keys
from ms07.engine.signing import signature
from ms07.engine.ssrf import forbidden_reason
from tests.support import Sink, acli, hang, status, submit_n, wait_for


async def _by_status(engine: Any) -> dict[str, int]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, count(*) FROM distribution_jobs GROUP BY status")
        return dict(await cur.fetchall())


async def _settled(engine: Any, n: int) -> dict[str, int] | None:
    counts = await _by_status(engine)
    done = sum(v for k, v in counts.items() if k in ("delivered", "failed", "dead"))
    return counts if done == n else None


# ---------------------------------------------------------------------- batching


def batch_receiver(reject: set[str] | None = None) -> Any:
    """Accepts arrays; a batch holding a rejected distribution id gets 400 as a whole."""

    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        items = json.loads(await request.read())
        if any(i["payload"].get("bad") for i in items):
            return web.Response(status=400, text="item rejected")
        return web.Response(text="ok")

    return respond


async def test_batches_hold_at_most_max_items_and_account_for_every_job(make_settings, sink: Sink,
                                                                        start_engine) -> None:
    sink.on("/batch", batch_receiver())
    engine = await start_engine(make_settings(destinations=[{
        "name": "b", "url": sink.url("/batch"), "batch": {"max_items": 10, "max_wait_ms": 20, "max_concurrent": 2}}]))
    ids = await submit_n(engine, "b", 95)
    counts = await wait_for(lambda: _settled(engine, 95), what="95 settled")
    assert counts == {"delivered": 95}
    sizes = [len(json.loads(r.body)) for r in sink.received]
    assert max(sizes) <= 10 and sum(sizes) == 95
    assert len(sizes) < 95  # they really were batched
    received = [item["distribution_id"] for r in sink.received for item in json.loads(r.body)]
    assert sorted(received) == sorted(ids)
    first = json.loads(sink.received[0].body)[0]
    assert set(first) == {"distribution_id", "payload"} and "i" in first["payload"]
    assert sink.received[0].headers["X-Distribution-Batch-Size"] == str(sizes[0])
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(DISTINCT distribution_id), count(*) FROM distribution_attempts")
        assert await cur.fetchone() == (95, 95)  # each job its own attempt row


async def test_a_4xx_batch_is_split_and_only_the_bad_item_fails(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/batch", batch_receiver())
    engine = await start_engine(make_settings(destinations=[{
        "name": "b", "url": sink.url("/batch"), "batch": {"max_items": 5, "max_wait_ms": 200}}]))
    good = await submit_n(engine, "b", 4)
    [bad] = await submit_n(engine, "b", 1, payload={"bad": True})
    counts = await wait_for(lambda: _settled(engine, 5), what="settled")
    assert counts == {"delivered": 4, "failed": 1}
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT distribution_id::text FROM distribution_jobs WHERE status = 'failed'")
        assert [r[0] for r in await cur.fetchall()] == [bad]
        cur = await conn.execute(
            "SELECT attempt, status, response_status_code FROM distribution_attempts WHERE distribution_id = %s "
            "ORDER BY attempt", (good[0],))
        assert await cur.fetchall() == [(1, "failed", 400), (2, "success", 200)]
    [(_, dlq)] = await engine.queue.dlq_entries()
    assert dlq["distribution_id"] == bad and dlq["reason"] == "permanent_failure"


async def test_batch_5xx_retries_the_whole_batch(make_settings, sink: Sink, start_engine) -> None:
    from tests.support import fail_first

    sink.on("/batch", fail_first(1, 503))
    engine = await start_engine(make_settings(destinations=[{
        "name": "b", "url": sink.url("/batch"), "batch": {"max_items": 10, "max_wait_ms": 100}}]))
    await submit_n(engine, "b", 3)
    assert await wait_for(lambda: _settled(engine, 3)) == {"delivered": 3}
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, count(*) FROM distribution_attempts GROUP BY status ORDER BY 1")
        assert await cur.fetchall() == [("failed", 3), ("success", 3)]


async def test_draining_hands_back_the_batches_not_yet_sent(make_settings, sink: Sink, start_engine,
                                                             database_url) -> None:
    import psycopg

    sink.on("/batch", hang(1))  # one batch in flight at a time, answered after a second
    engine = await start_engine(make_settings(destinations=[{
        "name": "b", "url": sink.url("/batch"), "batch": {"max_items": 2, "max_wait_ms": 10, "max_concurrent": 1}}]))
    await submit_n(engine, "b", 10)
    await wait_for(lambda: len(sink.received) >= 1, what="the first batch in flight")
    await engine.stop()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT status, count(*) FROM distribution_jobs GROUP BY status")
        counts = dict(await cur.fetchall())
    # The batch in flight finished; the batches waiting for the slot went back to the
    # queue (retrying, no attempt) instead of being sent during the drain.
    # The first batch holds 2 items, or 1 when the second was claimed after its 10 ms wait
    # (a loaded machine): whatever it held is what was delivered.
    assert len(sink.received) == 1
    sent = len(json.loads(sink.received[0].body))
    assert sent in (1, 2)
    assert counts.get("delivered") == sent and "processing" not in counts, counts
    assert engine.handed_back == counts.get("retrying", 0) > 0, (engine.handed_back, counts)
    assert counts.get("retrying", 0) + counts.get("queued", 0) == 10 - sent, counts


# ---------------------------------------------------------------------- signing

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_spec_example() -> None:
    # The example of the Standard Webhooks specification.
    assert signature(SPEC_SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


async def test_signed_deliveries_verify_with_the_reference_library(make_settings, sink: Sink, start_engine,
                                                                   monkeypatch) -> None:
    from standardwebhooks.webhooks import Webhook

    old = "whsec_" + base64.b64encode(b"the-old-secret-of-32-bytes-long!").decode()
    monkeypatch.setenv("T_SIGN", SPEC_SECRET)
    monkeypatch.setenv("T_SIGN_OLD", old)
    engine = await start_engine(make_settings(destinations=[{
        "name": "s", "url": sink.url("/in"),
        "signing": {"secret_env": "T_SIGN", "previous_secret_env": "T_SIGN_OLD"}}]))
    [did] = await submit_n(engine, "s", 1, payload={"report": 1})
    await wait_for(lambda: sink.received, what="delivery")
    req = sink.received[0]
    assert req.headers["webhook-id"] == did
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 60
    assert len(req.headers["webhook-signature"].split(" ")) == 2  # both secrets sign during rotation
    headers = {k.lower(): v for k, v in req.headers.items()}
    Webhook(SPEC_SECRET).verify(req.body, headers)  # raises on a bad signature
    Webhook(old).verify(req.body, headers)
    with pytest.raises(Exception, match="(?i)no matching signature"):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(req.body, headers)


# ---------------------------------------------------------------------- rate limit


async def test_rate_limit_holds_within_10_percent_over_5_seconds(make_settings, sink: Sink, start_engine) -> None:
    rate = 20.0
    settings = make_settings(destinations=[{"name": "r", "url": sink.url("/in"), "rate_limit": {"per_second": rate}}],
                             distribution={"claim_idle_seconds": 30})
    first = await start_engine(settings)
    second = await start_engine(settings)  # two replicas share the limit through Redis
    await submit_n(first, "r", 400)
    await wait_for(lambda: len(sink.received) >= 1, what="first delivery")
    t0 = sink.received[0].at
    await wait_for(lambda: sink.received[-1].at - t0 >= 5.0, timeout=15, what="5 seconds of deliveries")
    in_window = sum(1 for r in sink.received if r.at - t0 < 5.0)
    assert abs(in_window - rate * 5) <= rate * 5 * 0.10, in_window
    assert second.delivered > 0  # both replicas delivered within the one shared budget


async def test_a_burst_of_rate_limited_jobs_reserves_without_exhausting_redis(
        make_settings, sink: Sink, start_engine, captured_logs) -> None:
    """500 held jobs of a rate-limited destination reserved their slots at once: past the
    Redis client's 100 connections the reservation raised, and those jobs waited for a
    reclaim (``claim_idle_seconds``, 60 s here) instead of being delivered."""
    from ms07.ops.submit import build_jobs, record_and_enqueue
    from ms07.runtime import Runtime

    settings = make_settings(
        destinations=[{"name": "r", "url": sink.url("/in"), "rate_limit": {"per_second": 5000, "burst": 5000}}],
        distribution={"claim_idle_seconds": 60, "read_batch": 500})
    async with Runtime(settings) as rt, rt.connection() as conn:
        new = [job for _ in range(500) for job in build_jobs(settings, ["r"], b'{"n": 1}')[0]]
        await record_and_enqueue(conn, await rt.queue(), new)
    engine = await start_engine(settings)
    await wait_for(lambda: engine.delivered >= 500, timeout=40, what="500 delivered")
    assert "delivery crashed" not in captured_logs.getvalue()


# ---------------------------------------------------------------------- health probes


async def test_health_probe_loop_updates_destinations(make_settings, sink: Sink, start_engine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    sink.on("/health", status(200))
    engine = await start_engine(make_settings(
        destinations=[{"name": "up", "url": sink.url("/in"), "health_url": sink.url("/health")},
                      {"name": "down", "url": f"http://127.0.0.1:{closed}/in",
                       "health_url": f"http://127.0.0.1:{closed}/health"}],
        service={"health_check_interval_seconds": 0.2}))

    async def health() -> dict[str, str] | None:
        async with engine.pool.connection() as conn:
            cur = await conn.execute("SELECT name, health_status FROM destinations WHERE last_health_check IS NOT NULL")
            rows = dict(await cur.fetchall())
        return rows if len(rows) == 2 else None

    assert await wait_for(health, what="both probed") == {"up": "healthy", "down": "unhealthy"}
    assert engine.metrics.destination_healthy.labels("up")._value.get() == 1
    assert engine.metrics.destination_healthy.labels("down")._value.get() == 0


async def test_probe_never_blocks_deliveries(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/health", hang(30))
    engine = await start_engine(make_settings(
        destinations=[{"name": "a", "url": sink.url("/in"), "health_url": sink.url("/health")}],
        service={"health_check_interval_seconds": 0.1}))
    await wait_for(lambda: sink.counts["/health"] >= 1, what="a probe hanging")
    ids = await submit_n(engine, "a", 5)
    await wait_for(lambda: sink.unique_keys("/in") == set(ids), what="delivered while the probe hangs")


async def test_destinations_check_cli(make_settings, sink: Sink, env_for, tmp_path) -> None:
    import yaml

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": [
        {"name": "up", "url": sink.url("/in"), "health_url": sink.url("/health")},
        {"name": "down", "url": f"http://127.0.0.1:{closed}/x"}]}))
    result = await acli(["--config", str(cfg), "destinations", "check", "--json"], env_for)
    assert result.exit_code == 1
    probes = {p["name"]: p for p in json.loads(result.output)}
    assert probes["up"]["healthy"] and probes["up"]["http_status"] == 200 and probes["up"]["addresses"] == ["127.0.0.1"]
    assert probes["down"]["failed_stage"] == "tcp"
    result = await acli(["--config", str(cfg), "destinations", "check", "up"], env_for)
    assert result.exit_code == 0 and "ok" in result.output
    result = await acli(["--config", str(cfg), "destinations", "check", "nope"], env_for)
    assert result.exit_code == 4 and "unknown destination 'nope'" in result.output


# ---------------------------------------------------------------------- payload limits


async def test_oversize_payload_refused_with_nothing_written(make_settings, sink: Sink, start_engine, env_for,
                                                             tmp_path) -> None:
    import aiohttp
    import yaml

    dests = [{"name": "small", "url": sink.url("/in"), "max_payload_bytes": 100}]
    engine = await start_engine(make_settings(destinations=dests))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{engine.http_port}/api/v1/distributions",
                             json={"destinations": ["small"], "payload": {"x": "y" * 200}}) as r:
            assert r.status == 413
            assert "over the 100-byte limit of destination 'small'" in (await r.json())["error"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": dests}))
    result = await acli(["--config", str(cfg), "submit", "-d", "small", "--data", json.dumps({"x": "y" * 200})],
                        env_for)
    assert result.exit_code == 2 and "over the 100-byte limit" in result.output
    assert await _by_status(engine) == {}
    assert await engine.queue.redis.xlen(keys.stream("default")) == 0


async def test_large_payload_delivered_intact(make_settings, sink: Sink, start_engine) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]))
    big = {"blob": "z" * (3 * 1024 * 1024)}
    await submit_n(engine, "a", 1, payload=big)
    await wait_for(lambda: sink.received, what="delivery")
    assert json.loads(sink.received[0].body) == big


# ---------------------------------------------------------------------- SSRF guard


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("192.168.1.1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"), ("0.0.0.0", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("100.64.0.1", "not globally routable"),
    ("fc00::1", "private"),
])
def test_ssrf_blocked_ranges(address: str, kind: str) -> None:
    reason = forbidden_reason(address, [])
    assert reason is not None and kind in reason


def test_ssrf_public_and_allowlisted_pass() -> None:
    import ipaddress

    assert forbidden_reason("93.184.216.34", []) is None
    assert forbidden_reason("10.1.2.3", [ipaddress.ip_network("10.0.0.0/8")]) is None
    assert forbidden_reason("::ffff:10.1.2.3", [ipaddress.ip_network("10.0.0.0/8")]) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_ssrf_guard_refuses_inside_addresses(make_settings, sink: Sink, start_engine, host: str) -> None:
    url = f"http://{host}:{sink.port}/in"
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": url}],
                                              network={"deny_private": True}))
    await submit_n(engine, "a", 1)
    assert await wait_for(lambda: _settled(engine, 1)) == {"failed": 1}
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT error_code, error_message FROM distribution_attempts")
        code, message = await cur.fetchone()
    assert code == "DESTINATION_FORBIDDEN" and "SSRF guard" in message
    assert sink.received == []


async def test_ssrf_allowlist_opens_a_range(make_settings, sink: Sink, start_engine) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}],
                                              network={"deny_private": True, "allow_cidrs": ["127.0.0.0/8"]}))
    await submit_n(engine, "a", 1)
    assert await wait_for(lambda: _settled(engine, 1)) == {"delivered": 1}


# ---------------------------------------------------------------------- overrides


async def test_per_destination_overrides(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/slow", hang(5))
    sink.on("/down", status(500))
    engine = await start_engine(make_settings(
        destinations=[{"name": "slow", "url": sink.url("/slow"), "timeout_seconds": 0.3, "max_attempts": 1},
                      {"name": "down", "url": sink.url("/down"), "max_attempts": 2,
                       "circuit_breaker": {"failure_threshold": 50}}],
        distribution={"max_attempts": 5}, circuit_breaker={"failure_threshold": 1}))
    t0 = time.monotonic()
    await submit_n(engine, "slow", 1)
    await submit_n(engine, "down", 1)
    assert await wait_for(lambda: _settled(engine, 2)) == {"dead": 2}
    assert time.monotonic() - t0 < 4  # the 0.3 s timeout, not the 5 s default
    assert sink.counts["/down"] == 2  # its own max_attempts, its own circuit threshold
    assert engine.breakers["down"].state == "closed"
    assert engine.breakers["slow"].state == "open"  # the global threshold of 1
