"""Outcomes as PostgreSQL records them: attempts counted, errors kept or replaced."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg

from ms07.store import jobs


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _claimed(conn: psycopg.AsyncConnection, destination: str = "a") -> jobs.ClaimedJob:
    did = str(uuid.uuid4())
    async with conn.transaction():
        await jobs.insert_jobs(conn, [jobs.NewJob(did, destination, b'{"x": 1}')])
    claimed = await jobs.claim_jobs(conn, [did], 30)
    await conn.commit()
    return claimed[did]


async def _row(conn: psycopg.AsyncConnection, did: str) -> tuple:
    cur = await conn.execute("SELECT status, attempts, last_error_code, last_error FROM distribution_jobs "
                             "WHERE distribution_id = %s", (did,))
    return await cur.fetchone()


async def test_a_handed_back_job_keeps_its_last_error_and_attempt_count(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        job = await _claimed(conn)
        failed = jobs.AttemptRow(1, _now(), _now(), False, 503, "HTTP_5XX", "HTTP 503: busy")
        await jobs.record_outcomes(conn, [jobs.Outcome(job.distribution_id, "a", "retrying", "w1", [failed],
                                                       "HTTP_5XX", "HTTP 503: busy", _now())])
        assert await _row(conn, job.distribution_id) == ("retrying", 1, "HTTP_5XX", "HTTP 503: busy")

        # A draining worker hands a claimed job back before its HTTP request: no attempt,
        # no error of its own, so the job's story stays what it was.
        await jobs.claim_jobs(conn, [job.distribution_id], 30)
        await conn.commit()
        await jobs.record_outcomes(conn, [jobs.Outcome(job.distribution_id, "a", "retrying", "w1", [],
                                                       None, None, _now())])
        assert await _row(conn, job.distribution_id) == ("retrying", 1, "HTTP_5XX", "HTTP 503: busy")

        # Delivered: the error is cleared, as before.
        await jobs.claim_jobs(conn, [job.distribution_id], 30)
        await conn.commit()
        ok = jobs.AttemptRow(2, _now(), _now(), True, 200)
        await jobs.record_outcomes(conn, [jobs.Outcome(job.distribution_id, "a", "delivered", "w1", [ok])])
        assert await _row(conn, job.distribution_id) == ("delivered", 2, None, None)
