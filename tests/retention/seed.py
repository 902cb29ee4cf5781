"""Jobs of every status and age, with attempts, written straight into the tables."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from ms07.store.status import TERMINAL, JobStatus

# Ages (hours since the job finished) on both sides of the defaults (7 days delivered,
# 30 days failed/dead).
AGES = {"young": 1, "week_and_a_half": 24 * 10, "forty_days": 24 * 40}
ATTEMPTS_PER_JOB = 2


async def seed(conn: psycopg.AsyncConnection[Any], per_cell: int = 3) -> dict[tuple[str, str], list[str]]:
    """``per_cell`` jobs of each (status, age); open jobs get an old ``completed_at`` too
    (a job replayed after it finished once), so the status alone must keep them."""
    made: dict[tuple[str, str], list[str]] = {}
    for status in JobStatus:
        for label, hours in AGES.items():
            ids = [str(uuid.uuid4()) for _ in range(per_cell)]
            made[(status.value, label)] = ids
            await conn.execute(
                """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, created_at,
                                                  updated_at, completed_at, idempotency_key)
                   SELECT i, 'ms09', %s, convert_to('{"n":' || n || '}', 'UTF8'),
                          now() - make_interval(hours => %s + 1), now() - make_interval(hours => %s),
                          now() - make_interval(hours => %s), 'k-' || i::text
                     FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(i, n)""",
                (status.value, hours, hours, hours, ids))
            await conn.execute(
                """INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status,
                                                      response_status_code, started_at, completed_at)
                   SELECT i, 'ms09', a, CASE WHEN a = %s AND %s THEN 'success' ELSE 'failed' END, 500,
                          now() - make_interval(hours => %s, mins => 10 - a),
                          now() - make_interval(hours => %s, mins => 10 - a)
                     FROM unnest(%s::uuid[]) AS i, generate_series(1, %s) AS a""",
                (ATTEMPTS_PER_JOB, status == JobStatus.DELIVERED, hours, hours, ids, ATTEMPTS_PER_JOB))
    await conn.commit()
    return made


def expected_gone(made: dict[tuple[str, str], list[str]], delivered_h: float, parked_h: float) -> set[str]:
    gone = set()
    for (status, label), ids in made.items():
        if status not in {s.value for s in TERMINAL}:
            continue
        limit = delivered_h if status == JobStatus.DELIVERED else parked_h
        if AGES[label] > limit:
            gone.update(ids)
    return gone


async def job_ids(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    cur = await conn.execute("SELECT distribution_id::text FROM distribution_jobs")
    return {r[0] for r in await cur.fetchall()}


async def attempt_jobs(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute("SELECT distribution_id::text, count(*) FROM distribution_attempts GROUP BY 1")
    return {r[0]: r[1] for r in await cur.fetchall()}
