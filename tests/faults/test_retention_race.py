"""Retention racing a delivering engine: a second process delivers (with retries) while
prune removes 20,000 old rows in small batches and old dead jobs are replayed under it.
Nothing accepted may be lost (the fault ledger), and every old row ends either removed
or replayed and delivered."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import psycopg
import pytest

from ms07.ops import dlq, retention
from ms07.runtime import Runtime
from ms07.store.status import JobStatus
from tests.faults.harness import FAST, REPORT, exit_code, ledger, submit_many, wait_settled
from tests.support import EngineProcess, Sink, destination, fail_first, wait_for, write_config

pytestmark = pytest.mark.faults

OLD_DELIVERED = 20_000
OLD_DEAD = 200


async def _seed_old(conn: psycopg.AsyncConnection) -> list[str]:  # type: ignore[type-arg]
    await conn.execute(
        """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, attempts,
                                          created_at, updated_at, completed_at)
           SELECT gen_random_uuid(), 'a', %s, '\\x7b7d', 1, now() - interval '10 days',
                  now() - interval '10 days', now() - interval '10 days'
             FROM generate_series(1, %s)""", (JobStatus.DELIVERED.value, OLD_DELIVERED))
    cur = await conn.execute(
        """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, attempts, max_attempts,
                                          last_error_code, created_at, updated_at, completed_at)
           SELECT gen_random_uuid(), 'a', %s, '\\x7b7d', 5, 5, 'HTTP_5XX', now() - interval '40 days',
                  now() - interval '40 days', now() - interval '40 days'
             FROM generate_series(1, %s)
        RETURNING distribution_id::text""", (JobStatus.DEAD.value, OLD_DEAD))
    dead = [r[0] for r in await cur.fetchall()]
    await conn.execute(
        """INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status, started_at,
                                              completed_at)
           SELECT distribution_id, 'a', 1, 'failed', completed_at, completed_at FROM distribution_jobs""")
    return dead


async def test_retention_racing_a_delivering_engine_loses_nothing(tmp_path: Path, sink: Sink, env_for,
                                                                  make_settings, database_url, redis_url) -> None:
    sink.on("/in", fail_first(60))  # retries land while retention runs
    dests = [destination("a", sink.url("/in"))]
    breaker = {"failure_threshold": 1000}  # the failures are retried, not deferred behind an open circuit
    config = write_config(tmp_path / "engine.yaml", {
        "service": {"drain_grace_seconds": 5, "heartbeat_interval_seconds": 1, "concurrency": 8, "prefetch": 4},
        "distribution": {**FAST, "max_attempts": 20}, "circuit_breaker": breaker, "destinations": dests})
    settings = make_settings(destinations=dests, distribution={**FAST, "max_attempts": 20}, circuit_breaker=breaker)
    ret = dataclasses.replace(settings.retention, batch_size=200, batch_pause_seconds=0)
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    old_dead = await _seed_old(conn)
    proc = EngineProcess(config, env_for, tmp_path / "engine.log").start()
    stop = asyncio.Event()
    runs: list[retention.Run] = []
    replayed: list[str] = []
    try:
        await wait_for(proc.started, timeout=30, what="the engine started")
        async with Runtime(settings, migrate=False) as rt:
            queue = await rt.queue()

            async def prune_loop() -> None:
                async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as own:
                    # First the old dead jobs alone, in batches as small as the replay's
                    # chunks, so that the two take the same rows turn about.
                    dead_first = dataclasses.replace(ret, delivered_days=None, batch_size=10)
                    runs.append(await retention.prune(own, dead_first, redis=queue.redis))
                    while not stop.is_set():
                        runs.append(await retention.prune(own, ret, redis=queue.redis))

            async def replay_old() -> None:
                async with rt.connection() as own:
                    for i in range(0, len(old_dead), 10):
                        replayed.extend(await dlq.replay(own, queue, settings, old_dead[i:i + 10]))

            pruning = asyncio.create_task(prune_loop())
            submitted, _ = await asyncio.gather(
                submit_many(settings, "a", [{"i": i} for i in range(400)]), replay_old())
            await wait_settled(database_url, submitted + replayed, seconds=60)
            stop.set()
            await pruning
            final = await retention.prune(conn, ret, redis=queue.redis)  # whatever the loop left
        assert len(runs) >= 2 and runs[1].removed["distribution_jobs"]["rows"] > 0  # while the engine delivered
    finally:
        stop.set()
        proc.terminate()
        await exit_code(proc)
        proc.kill()
    lg = await ledger("retention racing a delivering engine (20,000 old rows pruned, old dead replayed)",
                      database_url, redis_url, sink, submitted + replayed)
    REPORT.append(lg)
    print(f"old dead jobs: {len(replayed)} replayed, {OLD_DEAD - len(replayed)} removed by retention first")
    lg.check()
    assert lg.delivered == set(submitted) | set(replayed)
    cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE created_at < now() - interval '5 days'"
                             " AND NOT distribution_id = ANY(%s::uuid[])", (replayed,))
    assert (await cur.fetchone())[0] == 0  # type: ignore[index]  # every old row not replayed is gone
    removed = sum(r.removed["distribution_jobs"]["rows"] for r in [*runs, final])
    assert removed == OLD_DELIVERED + OLD_DEAD - len(replayed)
    await conn.close()
