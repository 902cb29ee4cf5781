"""Migrations are idempotent and the guide's diagnostic SQL runs unchanged (docs/architecture.md, "Data model")."""

from __future__ import annotations

import psycopg
import pytest

from ms07.store import db

# The troubleshooting guide's five queries, verbatim.
GUIDE_QUERIES = {
    "stuck jobs": """
SELECT distribution_id, status, created_at,
       EXTRACT(EPOCH FROM (NOW() - created_at))/60 AS minutes_old
FROM distribution_jobs
WHERE status = 'processing'
  AND created_at < NOW() - INTERVAL '30 minutes';
""",
    "unhealthy destinations": """
SELECT name, health_status, last_health_check,
       EXTRACT(EPOCH FROM (NOW() - last_health_check))/60 AS minutes_since_check
FROM destinations
WHERE health_status = 'unhealthy';
""",
    "latency per destination": """
SELECT
    destination_name,
    COUNT(*) AS total_attempts,
    AVG(EXTRACT(EPOCH FROM (completed_at - started_at))) AS avg_latency_seconds,
    MAX(EXTRACT(EPOCH FROM (completed_at - started_at))) AS max_latency_seconds,
    COUNT(CASE WHEN status = 'failed' THEN 1 END) AS failed_attempts
FROM distribution_attempts
WHERE started_at >= NOW() - INTERVAL '1 hour'
GROUP BY destination_name
ORDER BY avg_latency_seconds DESC;
""",
    "auth errors": """
SELECT
    destination_name,
    response_status_code,
    error_message,
    COUNT(*) AS occurrences
FROM distribution_attempts
WHERE response_status_code IN (401, 403)
  AND started_at >= NOW() - INTERVAL '1 hour'
GROUP BY destination_name, response_status_code, error_message
ORDER BY occurrences DESC;
""",
    "stale workers": """
SELECT
    COUNT(*) AS active_workers,
    COUNT(CASE WHEN updated_at < NOW() - INTERVAL '5 minutes' THEN 1 END) AS stale_workers
FROM worker_heartbeats;
""",
    "resource usage": """
SELECT
    COUNT(*) AS active_distributions,
    AVG(EXTRACT(EPOCH FROM (NOW() - created_at))) AS avg_queue_time_seconds
FROM distribution_jobs
WHERE status = 'processing';
""",
}


async def test_migrate_twice_is_idempotent(database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        assert await db.migrate(conn) == []  # the template is already migrated
        assert await db.migrate(conn) == []
        assert await db.schema_version(conn) == max(v for v, _, _ in db.migrations())
    finally:
        await conn.close()


async def test_fresh_database_migrates(servers) -> None:  # type: ignore[no-untyped-def]
    name = "ms07_fresh_migrate"
    with psycopg.connect(servers.admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    url = servers.database_url(name)
    try:
        conn = await db.connect(url)
        applied = await db.migrate(conn)
        assert applied == [f"{v:04d}_{n}" for v, n, _ in db.migrations()]
        assert await db.migrate(conn) == []
        await conn.close()
    finally:
        with psycopg.connect(servers.admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("name", sorted(GUIDE_QUERIES))
async def test_guide_queries_run_unchanged(database_url: str, name: str) -> None:
    conn = await db.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, created_at) "
            "VALUES (gen_random_uuid(), 'd', 'processing', '\\x7b7d', now() - interval '1 hour')"
        )
        await conn.execute(
            "INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status, "
            "response_status_code, error_message, started_at, completed_at) "
            "VALUES (gen_random_uuid(), 'd', 1, 'failed', 401, 'HTTP 401', now(), now())"
        )
        await conn.execute(
            "INSERT INTO destinations (name, url, health_status, last_health_check) "
            "VALUES ('d', 'http://x', 'unhealthy', now())"
        )
        await conn.execute(
            "INSERT INTO worker_heartbeats (worker_id, host, pid, started_at, updated_at, version) "
            "VALUES ('w', 'h', 1, now(), now() - interval '10 minutes', '0')"
        )
        cur = await conn.execute(GUIDE_QUERIES[name])
        rows = await cur.fetchall()
        assert len(rows) == 1, rows
    finally:
        await conn.close()


async def test_guide_queries_use_indexes(database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        await conn.execute("SET enable_seqscan = off")
        for name in ("stuck jobs", "auth errors", "latency per destination"):
            cur = await conn.execute("EXPLAIN " + GUIDE_QUERIES[name])
            plan = "\n".join(r[0] for r in await cur.fetchall())
            assert "Seq Scan" not in plan, (name, plan)
    finally:
        await conn.close()
