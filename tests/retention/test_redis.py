"""Nothing in Redis grows with the history: after a workload and a retention run, the
streams, the delayed set and the DLQ are empty and every other key expires."""

from __future__ import annotations

import redis as redis_sync

from ms07 import keys
from ms07.ops import retention
from ms07.store.status import JobStatus
from tests.support import Sink, fail_first, status, submit_n, wait_for


async def _settled(engine, ids: list[str]) -> bool:  # type: ignore[no-untyped-def]
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE distribution_id = ANY(%s::uuid[])"
                                 " AND status IN (%s, %s)", (ids, JobStatus.DELIVERED.value, JobStatus.DEAD.value))
        return (await cur.fetchone())[0] == len(ids)  # type: ignore[index]


async def test_nothing_in_redis_outlives_its_job(make_settings, sink: Sink, start_engine, redis_url: str) -> None:
    sink.on("/flaky", fail_first(5)).on("/down", status(500))
    settings = make_settings(
        destinations=[{"name": "flaky", "url": sink.url("/flaky")}, {"name": "down", "url": sink.url("/down")}],
        distribution={"max_attempts": 3}, circuit_breaker={"failure_threshold": 1000},
        # Ages of about a second (0.00002 days): everything finished goes at the end.
        retention={"delivered_days": 0.00002, "dead_days": 0.00002, "interval_seconds": 3600,
                   "batch_pause_seconds": 0})
    engine = await start_engine(settings)
    ids = await submit_n(engine, "flaky", 30) + await submit_n(engine, "down", 10)
    await wait_for(lambda: _settled(engine, ids), timeout=30, what="every job delivered or dead")
    rc = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert rc.xlen(keys.DLQ) == 10
        await wait_for(lambda: _old_enough(engine), timeout=10, what="the jobs to pass their age")
        async with engine.pool.connection() as conn:
            run = await retention.prune(conn, settings.retention, redis=engine.queue.redis)
        assert run.removed["distribution_jobs"]["rows"] == 40
        assert run.removed["dlq_entries"]["rows"] == 10
        assert rc.xlen(keys.DLQ) == 0
        for q in settings.distribution.priorities:
            assert rc.xlen(keys.stream(q)) == 0  # acknowledged entries are deleted
            assert rc.zcard(keys.delayed(q)) == 0
        lasting = {k for k in rc.keys("*") if rc.ttl(k) == -1}
        allowed = {keys.DLQ} | {keys.stream(q) for q in settings.distribution.priorities}
        assert lasting <= allowed, f"keys that never expire: {sorted(lasting - allowed)}"
    finally:
        rc.close()


async def _old_enough(engine) -> bool:  # type: ignore[no-untyped-def]
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE completed_at > now() - interval '3 s'")
        return (await cur.fetchone())[0] == 0  # type: ignore[index]
