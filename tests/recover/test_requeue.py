"""``recover requeue-from-db``: what a FLUSHALL lost comes back from PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import redis as redis_sync

from ms07 import keys
from ms07.queue import Queue, open_redis
from ms07.store import db, jobs
from tests.recover.conftest import audit_rows


def _submit(database_url: str, redis_url: str, n: int, priority: str = "default") -> list[str]:
    """Record n jobs and enqueue them, as ``ms07 submit`` does."""

    async def go() -> list[str]:
        new = [
            jobs.NewJob(str(uuid.uuid4()), "ms09-reporter", b"{}", priority=priority)
            for _ in range(n)
        ]
        conn = await db.connect(database_url, autocommit=True)
        try:
            await conn.execute(
                "INSERT INTO destinations (name, url) VALUES ('ms09-reporter', "
                "'http://127.0.0.1:9/') "
                "ON CONFLICT DO NOTHING"
            )
            await jobs.insert_jobs(conn, new)
        finally:
            await conn.close()
        client = await open_redis(redis_url)
        try:
            await Queue(client).enqueue((j.priority, j.distribution_id, j.destination) for j in new)
        finally:
            await client.aclose()
        return [j.distribution_id for j in new]

    return asyncio.run(go())


def _in_stream(rc: redis_sync.Redis) -> set[str]:
    return {f["id"] for _, f in rc.xrange(keys.stream("default"))}


def test_brings_back_what_flushall_lost(
    cli: Any, rc: redis_sync.Redis, database_url: str, redis_url: str
) -> None:
    ids = _submit(database_url, redis_url, 25)
    with psycopg.connect(
        database_url, autocommit=True
    ) as conn:  # one delivered: not to be requeued
        conn.execute(
            "UPDATE distribution_jobs SET status = 'delivered' WHERE distribution_id = %s",
            (ids[0],),
        )
        conn.execute(
            "UPDATE distribution_jobs SET status = 'retrying' WHERE distribution_id = %s", (ids[1],)
        )
    assert _in_stream(rc) == set(ids)
    rc.flushall()

    dry = cli("recover", "requeue-from-db", "--dry-run", "--older-than", "0")
    assert dry.exit_code == 0, dry.output
    assert "24 not in Redis now" in " ".join(dry.output.split())
    assert rc.dbsize() == 0

    result = cli("recover", "requeue-from-db", "--yes", "--older-than", "0")
    assert result.exit_code == 0, result.output
    assert _in_stream(rc) == set(ids[1:])
    assert rc.xinfo_groups(keys.stream("default"))[0]["name"] == keys.GROUP
    steps = [
        (r["step_index"], r["outcome"])
        for r in audit_rows(database_url)
        if r["outcome"] != "running"
    ]
    assert steps == [(None, "started"), (1, "ok"), (2, "ok"), (None, "completed")]

    again = cli("recover", "requeue-from-db", "--yes", "--older-than", "0")
    assert again.exit_code == 0, again.output
    assert "nothing to enqueue" in again.output
    assert rc.xlen(keys.stream("default")) == 24, "running it twice enqueues nothing twice"


def test_grace_leaves_recent_jobs_to_the_submit_in_flight(
    cli: Any, rc: redis_sync.Redis, database_url: str, redis_url: str
) -> None:
    _submit(database_url, redis_url, 3)
    rc.flushall()
    result = cli("recover", "requeue-from-db", "--yes")  # default grace: 30 s
    assert result.exit_code == 0, result.output
    assert rc.dbsize() == 0
