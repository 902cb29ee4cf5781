"""The engine's upkeep runs retention: one replica at a time, counted in the metrics,
the last success reported by every replica."""

from __future__ import annotations

import psycopg

from tests.retention.seed import ATTEMPTS_PER_JOB, expected_gone, job_ids, seed
from tests.support import wait_for


async def test_two_engines_remove_each_row_once(make_settings, start_engine, database_url: str) -> None:
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        made = await seed(conn, per_cell=20)
        everything = await job_ids(conn)
        gone = expected_gone(made, 24 * 7, 24 * 30)
        settings = make_settings(retention={"interval_seconds": 0.2, "batch_size": 7, "batch_pause_seconds": 0})
        engines = [await start_engine(settings) for _ in range(2)]

        async def done() -> bool:
            return await job_ids(conn) == everything - gone

        await wait_for(done, timeout=20, what="retention removed the finished jobs past their age")

        def removed(table: str) -> float:
            return sum(e.metrics.retention_rows.labels(table)._value.get() for e in engines)

        def reported() -> bool:
            return all(e.metrics.retention_last_success._value.get() > 0 for e in engines)

        await wait_for(reported, timeout=10, what="every replica reports the last success")
        # Each row counted once: no two replicas removed the same rows.
        assert removed("distribution_jobs") == len(gone)
        assert removed("distribution_attempts") == ATTEMPTS_PER_JOB * len(gone)
        assert all(e.metrics.retention_enabled._value.get() == 1 for e in engines)
        cur = await conn.execute("SELECT DISTINCT runner FROM retention_runs")
        assert {r[0] for r in await cur.fetchall()} <= {e.worker_id for e in engines}
        assert b"zenia_distribution_retention_removed_rows_total" in engines[0].metrics.exposition()
    finally:
        await conn.close()


async def test_retention_off_removes_nothing(make_settings, database_url: str) -> None:
    from ms07.ops import retention

    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        await seed(conn, per_cell=2)
        everything = await job_ids(conn)
        settings = make_settings(retention={"delivered_days": 0, "dead_days": None})
        run = await retention.prune(conn, settings.retention)
        assert run.outcome == "done" and all(c["rows"] == 0 for c in run.plan.values())
        cur = await conn.execute("SELECT count(*) FROM retention_runs")
        assert (await cur.fetchone())[0] == 0  # type: ignore[index]
        assert await job_ids(conn) == everything
    finally:
        await conn.close()
