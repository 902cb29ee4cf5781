"""diagnose queue: dead consumers, lost messages, evicting Redis, stale workers, DLQ."""

from __future__ import annotations

import redis

from ms07 import keys
from ms07.diagnose import run_check_async
from tests.diagnose.conftest import acli, hold, ids, parse, validate_check


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


async def test_consumer_that_read_entries_and_died(make_settings, db, redis_url, cli, config_file) -> None:
    r = client(redis_url)
    stream = keys.stream("default")
    r.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    jobs = [db.job("d1", "processing", created_ago=600, started_ago=600) for _ in range(3)]
    for did in jobs:
        r.xadd(stream, {"id": did, "destination": "d1"})
    # A worker read them and died: pending entries, no worker:heartbeat:<consumer> key.
    assert len(r.xreadgroup(keys.GROUP, "ghost-worker-1", {stream: ">"}, count=10)[0][1]) == 3
    r.close()
    result = await run_check_async(make_settings(), "queue")
    dead = result.finding("dead_consumers")
    assert dead.severity == "critical" and "ghost-worker-1 holds 3" in dead.evidence
    assert dead.command == "ms07 recover reclaim-pending"
    assert result.finding("no_live_workers").severity == "critical"
    assert result.finding("lost_messages").severity == "info"  # the stream still holds them
    consumers = next(s for s in result.sections if s.title.startswith("consumers"))
    assert consumers.rows == [["default", "ghost-worker-1", "3", consumers.rows[0][3], "none"]]
    res = await acli(cli, ["diagnose", "queue", "--json"], config=config_file())
    assert res.exit_code == 2
    data = parse(res)
    validate_check(data)
    assert ids(data)["queue.dead_consumers"] == "critical"


async def test_dead_consumer_while_a_live_worker_will_reclaim(make_settings, redis_url) -> None:
    r = client(redis_url)
    stream = keys.stream("default")
    r.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    r.xadd(stream, {"id": "00000000-0000-0000-0000-000000000001", "destination": "d1"})
    r.xreadgroup(keys.GROUP, "ghost", {stream: ">"}, count=10)
    r.set(keys.heartbeat("alive-1"), "{}")
    r.close()
    result = await run_check_async(make_settings(), "queue")
    assert result.finding("dead_consumers").severity == "warning"
    assert result.finding("no_live_workers") is None


async def test_job_queued_in_postgres_but_absent_from_redis(make_settings, db, redis_url) -> None:
    r = client(redis_url)
    r.xgroup_create(keys.stream("default"), keys.GROUP, id="0", mkstream=True)
    held = db.job("d1", "queued", created_ago=900)
    delayed = db.job("d1", "retrying", created_ago=900)
    lost = db.job("d1", "queued", created_ago=900)
    fresh = db.job("d1", "queued", created_ago=5)  # its XADD may still be on the way
    db.job("d1", "delivered", created_ago=900)
    r.xadd(keys.stream("default"), {"id": held, "destination": "d1"})
    r.zadd(keys.delayed("default"), {delayed: 9e9})
    r.close()
    result = await run_check_async(make_settings(), "queue")
    f = result.finding("lost_messages")
    assert f.severity == "critical" and f.summary.startswith("1 open job(s)")
    assert lost in f.evidence and held not in f.evidence and delayed not in f.evidence and fresh not in f.evidence
    assert f.command == "ms07 recover requeue-from-db"
    assert [j["distribution_id"] for j in result.details["lost"]] == [lost]
    assert result.exit_code == 2


async def test_recently_lost_job_is_a_warning_the_reconciler_will_fix(make_settings, db, redis_url) -> None:
    db.job("d1", "queued", created_ago=150)
    result = await run_check_async(make_settings(), "queue")
    assert result.finding("lost_messages").severity == "warning"


async def test_evicting_redis_is_critical(make_settings, redis_url, cli, config_file) -> None:
    r = client(redis_url)
    r.config_set("maxmemory-policy", "allkeys-lru")  # the guide's advice (docs/architecture.md); the fixture resets it
    r.xgroup_create(keys.stream("default"), keys.GROUP, id="0", mkstream=True)
    r.close()
    result = await run_check_async(make_settings(), "queue")
    f = result.finding("maxmemory_policy")
    assert f.severity == "critical" and "allkeys-lru" in f.summary
    assert result.finding("aof_off") is None  # the embedded Redis runs with AOF
    res = await acli(cli, ["diagnose", "queue"], config=config_file())
    assert res.exit_code == 2
    assert res.stdout.startswith("CRITICAL queue: Redis maxmemory-policy is allkeys-lru")


async def test_aof_off_is_a_warning(make_settings, redis_url) -> None:
    r = client(redis_url)
    r.config_set("appendonly", "no")
    r.xgroup_create(keys.stream("default"), keys.GROUP, id="0", mkstream=True)
    try:
        result = await run_check_async(make_settings(), "queue")
    finally:
        r.config_set("appendonly", "yes")
        r.close()
    assert result.finding("aof_off").severity == "warning"
    assert result.status == "warning"


async def test_stale_workers_dlq_and_overdue_retries(make_settings, db, redis_url) -> None:
    import time

    db.execute("INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) VALUES "
               "('w-stale', 'h-old', 1, now(), now() - interval '10 minutes', 'x'), "
               "('w-ancient', 'h', 2, now(), now() - interval '3 days', 'x'), "
               "('w-ok', 'h', 3, now(), now(), 'x')")
    db.execute("INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, status, version) "
               "VALUES ('w-stopped', 'h', 4, now(), now() - interval '1 hour', 'stopped', 'x')")
    r = client(redis_url)
    r.xgroup_create(keys.stream("default"), keys.GROUP, id="0", mkstream=True)
    r.xadd(keys.DLQ, {"distribution_id": "x", "reason": "permanent_failure"})
    r.zadd(keys.delayed("default"), {"00000000-0000-0000-0000-000000000002": time.time() - 600})
    r.set(keys.heartbeat("w-ok"), "{}")
    r.close()
    hold(redis_url, "w-stale", 2)  # still holds work and nothing took its place: a WARNING
    result = await run_check_async(make_settings(), "queue")
    stale = result.finding("stale_workers")
    assert stale.severity == "warning" and "w-stale" in stale.evidence
    assert "w-ancient" not in stale.evidence and "w-stopped" not in stale.evidence
    assert result.finding("gone_workers").severity == "info"
    assert result.finding("dlq").severity == "warning" and result.finding("dlq").command == "ms07 dlq list"
    assert result.finding("delayed_overdue").severity == "warning"
    assert result.status == "warning" and result.exit_code == 1
