"""The engine end to end: real Redis, PostgreSQL and HTTP destinations on loopback."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from ms07 import keys
from ms07.ops.submit import submit
from tests.support import Sink, fail_first, hang, ok, reset, status, submit_n, wait_for


async def _statuses(engine: Any) -> dict[str, int]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, count(*) FROM distribution_jobs GROUP BY status")
        return {s: n for s, n in await cur.fetchall()}


async def _delivered(engine: Any, n: int) -> bool:
    return (await _statuses(engine)).get("delivered", 0) == n


async def test_happy_path_delivers_every_distribution_once(make_settings, sink: Sink, start_engine) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]))
    ids = await submit_n(engine, "a", 50)
    await wait_for(lambda: _delivered(engine, 50), what="50 delivered")
    assert sink.unique_keys("/in") == set(ids)
    assert len(sink.keys("/in")) == 50  # exactly once on the happy path
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'success') FROM distribution_attempts")
        assert await cur.fetchone() == (50, 50)
    await wait_for(lambda: engine.in_flight == 0, what="slots released")
    stats = await engine.queue.stats()
    assert stats["queues"]["default"]["length"] == 0
    assert stats["queues"]["default"]["pending"] == 0


async def test_request_headers(make_settings, sink: Sink, start_engine) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in"),
                                                             "headers": {"X-Team": "ms09"}}]))
    [did] = await submit_n(engine, "a", payload={"hello": "world"})
    await wait_for(lambda: _delivered(engine, 1))
    req = sink.received[0]
    assert req.headers["Idempotency-Key"] == did
    assert req.headers["X-Distribution-Id"] == did
    assert req.headers["X-Distribution-Attempt"] == "1"
    assert req.headers["X-Team"] == "ms09"
    assert req.headers["Content-Type"] == "application/json"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", req.headers["traceparent"])
    assert req.headers["traceparent"][3:35] == did.replace("-", "")
    assert req.body == b'{"hello":"world"}'


async def test_retry_then_success(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/flaky", fail_first(2, 503))
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/flaky")}]))
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: _delivered(engine, 1), what="delivered after retries")
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT attempt, status, response_status_code, error_code FROM distribution_attempts "
            "WHERE distribution_id = %s ORDER BY attempt", (did,))
        rows = await cur.fetchall()
    assert rows == [(1, "failed", 503, "HTTP_5XX"), (2, "failed", 503, "HTTP_5XX"), (3, "success", 200, None)]
    assert [r.headers["X-Distribution-Attempt"] for r in sink.received] == ["1", "2", "3"]


async def test_retries_exhausted_then_dlq_replay(make_settings, sink: Sink, start_engine, env_for) -> None:
    from tests.support import acli

    sink.on("/down", status(500))
    settings = make_settings(destinations=[{"name": "a", "url": sink.url("/down")}],
                             distribution={"max_attempts": 3})
    engine = await start_engine(settings)
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: _dead(engine, did), what="job dead")
    assert sink.counts["/down"] == 3
    dlq = await engine.queue.dlq_entries()
    assert [(f["distribution_id"], f["reason"], f["error_code"]) for _, f in dlq] == [
        (did, "max_retries_exceeded", "HTTP_5XX")]
    sink.on("/down", status(200))
    result = await acli(["dlq", "replay", did], env_for)
    assert result.exit_code == 0, result.output
    await wait_for(lambda: _delivered(engine, 1), what="delivered after replay")
    assert await engine.queue.dlq_entries() == []


async def _dead(engine: Any, did: str) -> bool:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = %s", (did,))
        row = await cur.fetchone()
    return bool(row and row[0] in ("dead", "failed"))


@pytest.mark.parametrize(
    "behaviour, code, status_code",
    [(status(404), "HTTP_4XX", 404), (status(302, {"Location": "http://127.0.0.1:1/elsewhere"}), "HTTP_3XX", 302),
     (status(413), "PAYLOAD_TOO_LARGE", 413)],
)
async def test_permanent_failures_go_straight_to_dlq(make_settings, sink: Sink, start_engine, behaviour, code,
                                                     status_code) -> None:
    sink.on("/x", behaviour)
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/x")}]))
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: _dead(engine, did))
    assert sink.counts["/x"] == 1  # no retry, redirect not followed
    assert sink.counts["/elsewhere"] == 0
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, last_error_code FROM distribution_jobs")
        assert await cur.fetchone() == ("failed", code)
        cur = await conn.execute("SELECT response_status_code FROM distribution_attempts")
        assert await cur.fetchone() == (status_code,)
    [(_, fields)] = await engine.queue.dlq_entries()
    assert fields["reason"] == "permanent_failure"


async def test_429_retry_after_is_honoured(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/busy", status(429, {"Retry-After": "30"}))
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/busy")}]))
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: sink.counts["/busy"] >= 1)
    score = await wait_for(lambda: engine.queue.redis.zscore(keys.delayed("default"), did), what="deferred")
    assert score - time.time() > 25  # not the 0.05 s backoff: the destination's 30 s
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, last_error_code FROM distribution_jobs")
        assert await cur.fetchone() == ("retrying", "RATE_LIMITED")


@pytest.mark.parametrize("behaviour, code", [(hang(10), "READ_TIMEOUT"), (reset(), "CONNECTION_ERROR")])
async def test_network_failures_are_retried(make_settings, sink: Sink, start_engine, behaviour, code) -> None:
    sink.on("/bad", behaviour)
    engine = await start_engine(make_settings(
        destinations=[{"name": "a", "url": sink.url("/bad"), "timeout_seconds": 0.5}],
        distribution={"max_attempts": 2}))
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: _dead(engine, did), timeout=20)
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status, error_code FROM distribution_attempts ORDER BY attempt")
        assert await cur.fetchall() == [("failed", code), ("failed", code)]


async def test_connection_refused(make_settings, start_engine) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": f"http://127.0.0.1:{port}/"}],
                                              distribution={"max_attempts": 1}))
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: _dead(engine, did))
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT error_code FROM distribution_attempts")
        assert await cur.fetchone() == ("CONNECTION_ERROR",)


async def test_circuit_opens_defers_and_recovers(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/down", status(503))
    settings = make_settings(
        destinations=[{"name": "down", "url": sink.url("/down")}, {"name": "up", "url": sink.url("/up")}],
        circuit_breaker={"failure_threshold": 3, "recovery_timeout": 1.0},
        distribution={"max_attempts": 50},
        service={"concurrency": 1, "http_port": 0},
    )
    engine = await start_engine(settings)
    down = await submit_n(engine, "down", 5)
    await wait_for(lambda: engine.breakers["down"].state == "open", what="circuit open")
    hits_when_open = sink.counts["/down"]
    assert hits_when_open == 3
    up = await submit_n(engine, "up", 10)  # the healthy destination keeps flowing
    await wait_for(lambda: sink.unique_keys("/up") == set(up), what="healthy destination delivered")
    async with engine.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM distribution_jobs WHERE destination_name = 'down' AND status = 'retrying' "
            "AND last_error_code = 'CIRCUIT_OPEN'")
        assert (await cur.fetchone())[0] >= 1  # deferred, not failed
        cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE status IN ('failed', 'dead')")
        assert (await cur.fetchone())[0] == 0
    await wait_for(lambda: engine.queue.redis.hget(keys.circuit("down"), "state"), what="state published")
    sink.on("/down", status(200))
    await wait_for(lambda: engine.breakers["down"].state == "closed", timeout=20, what="circuit closed")
    await wait_for(lambda: sink.unique_keys("/down") >= set(down), timeout=20, what="deferred ones delivered")
    assert engine.metrics.circuit_state.labels("down")._value.get() == 0


async def test_malformed_and_unknown_entries_go_to_dlq(make_settings, sink: Sink, start_engine) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]))
    stream = keys.stream("default")
    await engine.queue.redis.xadd(stream, {"garbage": "1"})
    await engine.queue.redis.xadd(stream, {"id": "not-a-uuid"})
    ghost = str(uuid.uuid4())
    await engine.queue.redis.xadd(stream, {"id": ghost, "destination": "a"})
    [good] = await submit_n(engine, "a")
    await wait_for(lambda: _delivered(engine, 1))
    dlq = await wait_for(lambda: _dlq_len(engine, 3), what="3 DLQ entries")
    codes = sorted(f["error_code"] for _, f in dlq)
    assert codes == ["INVALID_MESSAGE", "INVALID_MESSAGE", "MESSAGE_NOT_FOUND"]
    await wait_for(lambda: engine.in_flight == 0)
    stats = await engine.queue.stats()
    assert stats["queues"]["default"]["length"] == 0 and stats["queues"]["default"]["pending"] == 0
    assert sink.unique_keys("/in") == {good}


async def _dlq_len(engine: Any, n: int) -> Any:
    entries = await engine.queue.dlq_entries()
    return entries if len(entries) == n else None


async def test_duplicate_entry_of_a_delivered_job_is_acked(make_settings, sink: Sink, start_engine) -> None:
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]))
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: _delivered(engine, 1))
    await engine.queue.enqueue([("default", did, "a")])  # e.g. a reconciler repair that raced
    await wait_for(lambda: _stream_empty(engine), what="duplicate acked")
    assert sink.keys("/in") == [did]


async def _stream_empty(engine: Any) -> bool:
    stats = await engine.queue.stats()
    q = stats["queues"]["default"]
    return q["length"] == 0 and q["pending"] == 0


async def test_reconciler_repairs_a_flushall(make_settings, sink: Sink, start_engine) -> None:
    sink.on("/in", hang(0.0))
    settings = make_settings(destinations=[{"name": "a", "url": sink.url("/in")}],
                             distribution={"reconcile_interval_seconds": 0.5, "reconcile_after_seconds": 1})
    engine = await start_engine(settings)
    await engine.stop(grace=1)  # stop consuming; jobs stay queued in Postgres
    from ms07.engine.engine import Engine

    async with engine.runtime.__class__(settings) as rt:
        q = await rt.queue()
        async with rt.connection() as conn:
            ids = [(await submit(conn, q, settings, ["a"], {"i": i})).distributions[0]["distribution_id"]
                   for i in range(20)]
        await q.redis.flushall()  # Redis loses everything
    engine2 = Engine(settings)
    await engine2.start()
    try:
        await wait_for(lambda: sink.unique_keys("/in") == set(ids), timeout=20, what="all 20 repaired and delivered")
        assert engine2.metrics.requeued._value.get() == 20
    finally:
        await engine2.stop(grace=1)


async def test_heartbeats_in_redis_and_postgres(make_settings, sink: Sink, start_engine) -> None:
    import json

    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]))
    raw = await wait_for(lambda: engine.queue.redis.get(keys.heartbeat(engine.worker_id)), what="heartbeat key")
    beat = json.loads(raw)
    assert beat["worker_id"] == engine.worker_id and beat["status"] == "active" and beat["rss_bytes"] > 0
    assert 0 < await engine.queue.redis.ttl(keys.heartbeat(engine.worker_id)) <= 60

    async def row() -> Any:
        async with engine.pool.connection() as conn:
            cur = await conn.execute("SELECT status, rss_bytes > 0 FROM worker_heartbeats WHERE worker_id = %s",
                                     (engine.worker_id,))
            return await cur.fetchone()

    # The Redis key is written first, the row in the same pass just after.
    assert await wait_for(row, what="heartbeat row") == ("active", True)
    await engine.stop(grace=1)
    import psycopg
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(engine.settings.redis_url)
    try:
        assert await client.exists(keys.heartbeat(engine.worker_id)) == 0  # gone at a clean stop
    finally:
        await client.aclose()
    async with await psycopg.AsyncConnection.connect(engine.settings.database_url) as conn:
        cur = await conn.execute("SELECT status FROM worker_heartbeats WHERE worker_id = %s", (engine.worker_id,))
        assert await cur.fetchone() == ("stopped",)


async def test_housekeeping_marks_silent_workers_dead_and_drops_empty_dead_consumers(
        make_settings, sink: Sink, start_engine) -> None:
    from ms07.engine import upkeep
    from ms07.engine.health import readiness
    from ms07.runtime import Runtime

    settings = make_settings(destinations=[{"name": "a", "url": sink.url("/in")}])
    stream = keys.stream("default")
    async with Runtime(settings) as rt:  # before the engine runs: two consumers that died
        q = await rt.queue()
        await q.ensure_groups()
        await q.redis.xgroup_createconsumer(stream, keys.GROUP, "killed-1")  # holding nothing
        async with rt.connection() as conn:
            [did] = [(await submit(conn, q, settings, ["a"], {})).distributions[0]["distribution_id"]]
        await q.redis.xreadgroup(keys.GROUP, "killed-2", {stream: ">"}, count=1)  # holding one
        async with rt.connection() as conn:
            await conn.execute(
                "INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, status, version) "
                "VALUES ('killed-1', 'h', 1, now() - interval '2 hours', now() - interval '1 hour', 'active', '0')")
    engine = await start_engine(settings)
    await upkeep.housekeeping(engine, consumer_idle_ms=0)
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM worker_heartbeats WHERE worker_id = 'killed-1'")
        assert await cur.fetchone() == ("dead",)
    names = {c["name"] for c in await engine.queue.redis.xinfo_consumers(stream, keys.GROUP)}
    assert "killed-1" not in names  # idle, empty, no heartbeat: gone
    assert "killed-2" in names  # holds an entry: deleting it would lose it
    report = await readiness(engine)
    assert report["checks"]["workers"] == "healthy"
    assert did not in sink.unique_keys()


async def test_a_worker_holds_at_most_concurrency_times_prefetch_entries(make_settings, sink: Sink,
                                                                          start_engine) -> None:
    """The reader counts what it has read against ``max_held`` before its next read, though
    the claim of the previous read may still be running (read and claim overlap)."""
    sink.on("/in", hang(1))
    engine = await start_engine(make_settings(service={"concurrency": 2, "prefetch": 1},
                                              destinations=[{"name": "a", "url": sink.url("/in")}]))
    assert engine.max_held == 2
    await submit_n(engine, "a", 10)
    await wait_for(lambda: len(sink.received) >= 2, what="two deliveries in flight")
    stats = await engine.queue.stats()
    assert stats["queues"]["default"]["pending"] == 2, stats["queues"]["default"]
    assert engine.in_flight == 2


async def test_past_the_grace_period_unfinished_deliveries_stay_pending_for_the_next_worker(
        make_settings, sink: Sink, start_engine) -> None:
    """Stopped with two deliveries hanging and four claimed jobs waiting for a delivery
    coroutine: stop() ends soon after the grace period, nothing is acked or recorded as
    delivered, and the next worker takes every entry over and delivers it once."""
    sink.on("/in", hang(4))
    settings = make_settings(service={"concurrency": 2, "prefetch": 3},
                             distribution={"timeout_seconds": 5, "claim_idle_seconds": 6},
                             destinations=[{"name": "a", "url": sink.url("/in")}])
    engine = await start_engine(settings)
    ids = await submit_n(engine, "a", 6)
    await wait_for(lambda: len(sink.received) == 2 and engine.in_flight == 6
                   and all(h.job is not None for h in engine.held_entries()), what="2 in flight, 4 claimed")
    t0 = time.monotonic()
    await engine.stop(grace=0.5)
    assert time.monotonic() - t0 < 3
    assert engine.in_flight == 0 and engine.delivered == 0
    async with engine.runtime.__class__(settings) as rt:
        q = await rt.queue()
        stats = await q.stats()
        assert stats["queues"]["default"]["pending"] == 6, stats["queues"]["default"]
        async with rt.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE status = 'processing'")
            assert (await cur.fetchone())[0] == 6

    sink.on("/in", ok)
    from ms07.engine.engine import Engine

    engine2 = Engine(settings)
    await engine2.start()
    try:
        await wait_for(lambda: set(ids) <= sink.unique_keys("/in"), timeout=30,
                       what="all six delivered by the next worker")
        await wait_for(lambda: _stream_empty(engine2), what="every entry acked")
    finally:
        await engine2.stop(grace=1)
