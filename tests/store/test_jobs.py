"""Outcomes as PostgreSQL records them: attempts counted, errors kept or replaced."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg

from ms07.store import jobs, lost


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


async def test_outcomes_are_stored_exactly_whatever_their_text_holds(database_url: str) -> None:
    """Timestamps to the microsecond, two attempts of one job, quotes, non-ASCII and a NUL
    (which PostgreSQL text cannot hold: a destination answering with binary once failed
    the whole outcome statement) go through the statement's JSON unchanged or replaced."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        job = await _claimed(conn)
        t0 = dt.datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=dt.UTC)
        t1 = t0 + dt.timedelta(microseconds=987)
        message = 'HTTP 400: "bad" \\ d\u00e9j\u00e0 vu \u2603 \x00end'
        rows = [jobs.AttemptRow(1, t0, t1, False, 401, "AUTHENTICATION_FAILED", "HTTP 401"),
                jobs.AttemptRow(2, t1, t1, False, 400, "HTTP_4XX", message)]
        await jobs.record_outcomes(conn, [jobs.Outcome(job.distribution_id, "a", "failed", "w\u00e9", rows,
                                                       "HTTP_4XX", message)])
        stored = message.replace("\x00", "\ufffd")
        assert await _row(conn, job.distribution_id) == ("failed", 2, "HTTP_4XX", stored)
        cur = await conn.execute(
            "SELECT attempt, worker_id, status, response_status_code, error_code, error_message, started_at,"
            " completed_at FROM distribution_attempts WHERE distribution_id = %s ORDER BY attempt",
            (job.distribution_id,))
        assert await cur.fetchall() == [
            (1, "w\u00e9", "failed", 401, "AUTHENTICATION_FAILED", "HTTP 401", t0, t1),
            (2, "w\u00e9", "failed", 400, "HTTP_4XX", stored, t1, t1),
        ]


async def test_inserted_jobs_are_stored_exactly(database_url: str) -> None:
    """Every byte of a binary payload, a non-ASCII correlation id, keys present and absent,
    row by row in the order given."""
    binary = bytes(range(256)) * 4
    new = [jobs.NewJob(str(uuid.uuid4()), "a", binary, "application/octet-stream", "caf\u00e9 \u2603 \U0001f600",
                       "high", "key-1", 3),
           jobs.NewJob(str(uuid.uuid4()), "b", b'{"x": "\\u0000"}'),
           jobs.NewJob(str(uuid.uuid4()), "a", b"", correlation_id='quote " and \\ backslash')]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        fresh, existing = await jobs.insert_jobs(conn, new)
        assert fresh == new and existing == {}
        cur = await conn.execute(
            "SELECT distribution_id::text, destination_name, payload, content_type, correlation_id, priority,"
            " idempotency_key, max_attempts, status FROM distribution_jobs WHERE distribution_id = ANY(%s::uuid[])",
            ([j.distribution_id for j in new],))
        stored = {r[0]: r[1:] for r in await cur.fetchall()}
    assert stored == {j.distribution_id: (j.destination, j.payload, j.content_type, j.correlation_id, j.priority,
                                          j.idempotency_key, j.max_attempts, "queued") for j in new}


def _index_scans(plan: dict) -> set[str]:
    found = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        found |= _index_scans(child)
    return found


async def test_lookups_by_id_probe_the_primary_key_whatever_the_statistics(database_url: str) -> None:
    """The claim (and the lost-jobs re-check and claim) reach jobs by id through the primary key, with
    statistics that date from an empty table (as after a fresh install or a TRUNCATE), and
    are never prepared: a generic plan cached while the table was small once made every
    claim scan a partial index of all open jobs."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("ANALYZE distribution_jobs")  # statistics of an empty table
        await conn.execute(
            """INSERT INTO distribution_jobs (distribution_id, destination_name, payload, status)
               SELECT gen_random_uuid(), 'a', convert_to(repeat('x', 1000), 'UTF8'),
                      CASE WHEN i % 4 = 0 THEN 'delivered' ELSE 'queued' END
                 FROM generate_series(1, 4000) AS i"""
        )
        cur = await conn.execute("SELECT distribution_id::text, updated_at FROM distribution_jobs LIMIT 7")
        scanned = [(r[0], r[1]) for r in await cur.fetchall()]
        ids = [i for i, _ in scanned]
        cur = await conn.execute(f"EXPLAIN (FORMAT JSON) {jobs._CLAIM}", (jobs.id_list(ids), 30))
        plan = (await cur.fetchone())[0][0]["Plan"]
        assert _index_scans(plan) == {"distribution_jobs_pkey"}, ("claim", plan)
        for name, sql in (("lost: re-check", lost.UNCHANGED), ("lost: claim", lost.CLAIM_UNCHANGED)):
            cur = await conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", lost._scanned(scanned))
            plan = (await cur.fetchone())[0][0]["Plan"]
            assert _index_scans(plan) == {"distribution_jobs_pkey"}, (name, plan)

        for _ in range(12):  # psycopg prepares on the 5th run, PostgreSQL goes generic after 5 more
            await jobs.claim_jobs(conn, ids, 30)
            await lost.unchanged(conn, scanned)
            await lost.claim_unchanged(conn, scanned)
            await jobs.job_statuses(conn, ids)
        cur = await conn.execute("SELECT statement FROM pg_prepared_statements")
        assert [s for (s,) in await cur.fetchall() if "distribution_jobs" in s] == []


async def test_attempt_timestamps_keep_every_microsecond(database_url: str) -> None:
    """The attempt rows travel as microseconds since the epoch (to_timestamp of a double):
    no instant of this era or the next may come back a microsecond off."""
    import random

    rng = random.Random(7)
    base = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    instants = [base + dt.timedelta(microseconds=rng.randrange(0, 4_102_444_800 * 10**6)) for _ in range(300)]
    instants += [dt.datetime(2026, 12, 3, 23, 59, 59, 999999, tzinfo=dt.UTC),
                 dt.datetime(2026, 12, 3, 18, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        job = await _claimed(conn)
        rows = [jobs.AttemptRow(i + 1, t, t, False, 503, "HTTP_5XX", "busy") for i, t in enumerate(instants)]
        await jobs.record_outcomes(conn, [jobs.Outcome(job.distribution_id, "a", "retrying", "w1", rows,
                                                       "HTTP_5XX", "busy", _now())])
        cur = await conn.execute("SELECT started_at, completed_at FROM distribution_attempts "
                                 "WHERE distribution_id = %s ORDER BY attempt", (job.distribution_id,))
        assert await cur.fetchall() == [(t, t) for t in instants]
