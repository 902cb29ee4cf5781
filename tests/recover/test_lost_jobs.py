"""Lost jobs have one implementation (ms07/reconcile.py) that the engine's reconciler,
``recover requeue-from-db`` and ``diagnose queue`` share: they agree on what is lost, a
job one of them re-enqueued is lost for none of the others, and one race guard decides."""

from __future__ import annotations

import ast
import asyncio
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis as redis_sync

from ms07 import keys, reconcile
from ms07.diagnose import run_check_async
from ms07.diagnose.options import DiagnoseOptions
from ms07.engine import upkeep
from ms07.queue import Queue, open_redis
from ms07.store import db
from ms07.store import lost as lost_store
from tests.support import hang, wait_for

N = 5


def _record(database_url: str, n: int, idle_seconds: float, status: str = "queued") -> list[str]:
    """n jobs Postgres holds (as a submit records them) and Redis does not."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO destinations (name, url) VALUES ('s', 'http://127.0.0.1:9/') ON CONFLICT DO NOTHING")
        for did in ids:
            conn.execute(
                "INSERT INTO distribution_jobs (distribution_id, destination_name, payload, status, updated_at) "
                "VALUES (%s, 's', '\\x7b7d', %s, now() - make_interval(secs => %s))",
                (did, status, idle_seconds),
            )
    return ids


def _in_stream(redis_url: str) -> list[str]:
    rc = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [f["id"] for _, f in rc.xrange(keys.stream("default"))]
    finally:
        rc.close()


async def _diagnosed_lost(settings: Any, grace: float) -> list[str]:
    opts = DiagnoseOptions.from_settings(settings, lost_grace_seconds=grace)
    result = await run_check_async(settings, "queue", opts)
    assert result.finding("lost_messages") is not None
    return sorted(j["distribution_id"] for j in result.details["lost"])


async def test_requeued_by_recover_is_lost_for_neither_the_reconciler_nor_diagnose(
    make_settings: Any, start_engine: Any, sink: Any, cli: Any, database_url: str, redis_url: str
) -> None:
    sink.on("/in", hang(60))  # deliveries hang: the jobs stay open while the reconciler looks
    settings = make_settings(destinations=[{"name": "s", "url": sink.url("/in")}],
                             distribution={"reconcile_interval_seconds": 3600})
    lost = _record(database_url, N, idle_seconds=3600)
    fresh = _record(database_url, 1, idle_seconds=0)  # within the grace: its XADD may be on the way
    _record(database_url, 1, idle_seconds=3600, status="delivered")

    # diagnose and recover's dry run find the same jobs.
    assert await _diagnosed_lost(settings, grace=60) == sorted(lost)
    dry = await asyncio.to_thread(cli, "recover", "requeue-from-db", "--dry-run", "--older-than", "60")
    assert dry.exit_code == 0, dry.output
    assert f"{N} not in Redis now" in " ".join(dry.output.split())

    result = await asyncio.to_thread(cli, "recover", "requeue-from-db", "--yes", "--older-than", "60")
    assert result.exit_code == 0, result.output
    assert f"enqueued {N} job(s) again" in " ".join(result.output.split())
    assert sorted(_in_stream(redis_url)) == sorted(lost)

    # The engine's reconciler: its first pass runs at start (a silent worker marked dead
    # says it is over); then a pass of our own that counts every open job as old enough.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) "
                     "VALUES ('ghost', 'h', 1, now() - interval '2 days', now() - interval '1 day', 'x')")
    engine = await start_engine(settings, http_port=None)

    def ghost_marked_dead() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute("SELECT status FROM worker_heartbeats WHERE worker_id = 'ghost'").fetchone()
        return row is not None and row[0] == "dead"

    await wait_for(ghost_marked_dead, timeout=20, what="the engine's first reconciler pass")
    await wait_for(lambda: len(sink.keys("/in")) >= N, timeout=20, what="every requeued job claimed")
    rc = redis_sync.Redis.from_url(redis_url)
    try:
        await wait_for(lambda: not rc.exists(keys.RECONCILER_LOCK), timeout=10, what="the first pass's lease released")
    finally:
        rc.close()
    # Of every open job, only the one recover's grace spared is lost: the N recover
    # re-enqueued get no second entry.
    assert await upkeep.reconcile(engine, older_than=0.001) == 1
    assert engine.metrics.requeued._value.get() == 1
    assert sorted(_in_stream(redis_url)) == sorted(lost + fresh)

    assert await _diagnosed_lost(settings, grace=0.001) == []


async def test_a_job_that_moves_on_after_the_scan_is_neither_reported_nor_requeued(
    database_url: str, redis_url: str
) -> None:
    ids = _record(database_url, 2, idle_seconds=3600)
    pool = await db.open_pool(database_url, min_size=1, max_size=2)
    client = await open_redis(redis_url)
    queue = Queue(client)

    async def queue_of() -> Queue:
        return queue

    try:
        # --older-than 0, the tightest a repair runs with: the guard cannot lean on the age.
        scan = await reconcile.find_lost(pool.connection, queue_of, 0, 100)
        assert sorted(j.distribution_id for j in scan.lost) == sorted(ids)
        # A worker defers the first one meanwhile (still open, updated_at bumped).
        async with pool.connection() as conn:
            await conn.execute("UPDATE distribution_jobs SET status = 'retrying', updated_at = now() "
                               "WHERE distribution_id = %s", (ids[0],))
        stamps = [(j.distribution_id, j.updated_at) for j in scan.lost]
        async with pool.connection() as conn:
            assert await lost_store.unchanged(conn, stamps) == {ids[1]}  # diagnose's re-check
        done = await reconcile.requeue(pool.connection, queue, scan.lost)  # the repair's claim
        assert [j.distribution_id for j in done] == [ids[1]]
        assert _in_stream(redis_url) == [ids[1]]
        # A second repair acting on the same findings (two operators, or recover beside the
        # reconciler) re-enqueues nothing: the first claim moved updated_at on.
        assert await reconcile.requeue(pool.connection, queue, scan.lost) == []
        assert _in_stream(redis_url) == [ids[1]]
    finally:
        await client.aclose()
        await pool.close()


def test_recover_imports_no_engine_internals() -> None:
    """recover shares the repair through ms07/reconcile.py, not through ms07.engine."""
    root = Path(__file__).resolve().parents[2] / "ms07" / "recover"
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} {n}" for n in names
                      if n == "ms07.engine" or n.startswith("ms07.engine.")]
    assert found == []
