"""Jobs and attempts: the life of a distribution as Postgres records it.

Writes happen in batches (one statement for many jobs: a claim per read, one statement
for the attempt rows and job updates of many outcomes) so the database is not what
limits delivery.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ms07 import logs
from ms07.store.status import PARKED, PARKED_SQL, TERMINAL_SQL, AttemptStatus, JobStatus

# Kept for ms07/engine/engine.py until it reads ms07.store.status itself.
PARKED_STATUSES = PARKED


@dataclass(frozen=True, slots=True)
class NewJob:
    distribution_id: str
    destination: str
    payload: bytes
    content_type: str = "application/json"
    correlation_id: str | None = None
    priority: str = "default"
    idempotency_key: str | None = None
    max_attempts: int = 5


@dataclass(slots=True)
class ClaimedJob:
    """A job this worker now holds, as read back by :func:`claim_jobs`."""

    distribution_id: str
    destination: str
    payload: bytes
    content_type: str
    attempts: int
    max_attempts: int
    correlation_id: str | None
    priority: str
    created_at: dt.datetime


@dataclass(slots=True)
class AttemptRow:
    """One HTTP attempt: a row of ``distribution_attempts``."""

    attempt: int
    started_at: dt.datetime
    completed_at: dt.datetime
    success: bool
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(slots=True)
class Outcome:
    """What one processing of a job led to; written by :func:`record_outcomes`.

    ``attempts`` holds every HTTP request made (none when an open circuit deferred the
    job; two when a 401 led to a token refresh and a second request).
    """

    distribution_id: str
    destination: str
    status: str  # a JobStatus: delivered | retrying | failed | dead
    worker_id: str
    attempts: list[AttemptRow] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    next_attempt_at: dt.datetime | None = None


async def insert_jobs(
    conn: psycopg.AsyncConnection[Any], jobs: Sequence[NewJob]
) -> tuple[list[NewJob], dict[tuple[str, str], tuple[str, str | None]]]:
    """Insert new jobs (call inside a transaction when some have an idempotency key).

    Returns the jobs actually inserted and, for jobs whose (idempotency_key, destination)
    already existed, a map to the existing (distribution id, correlation id).

    A key is claimed by the insert itself (``ON CONFLICT DO NOTHING``), not by a look-up
    before it: two replicas inserting one key at once then both succeed, the loser
    waiting for the winner's commit and reading the winner's row back. A look-up first
    left both free to insert, and the loser's unique violation failed its whole group
    commit, unrelated submissions included (a 500 to each).
    """
    existing: dict[tuple[str, str], tuple[str, str | None]] = {}
    if not any(j.idempotency_key for j in jobs):
        if jobs:
            await conn.execute(_INSERT_JOBS, _insert_params(jobs))
        return list(jobs), existing
    inserted: set[str] = set()
    # One order for every inserter: two replicas inserting one key for destinations a and b
    # in opposite orders would each wait for the row the other holds (a deadlock, which
    # PostgreSQL breaks by failing one transaction: its whole group commit).
    pending = sorted(jobs, key=lambda j: (j.idempotency_key or "", j.destination))
    # A winner read back can be gone already (``dlq purge`` of a parked job): the key is
    # free again and the next round inserts it. Two rounds suffice but for a purge per round.
    for _ in range(_KEY_ROUNDS):
        cur = await conn.execute(_INSERT_JOBS + _ON_KEY_CONFLICT, _insert_params(pending), prepare=False)
        inserted.update(r[0] for r in await cur.fetchall())
        lost = [j for j in pending if j.distribution_id not in inserted]
        if not lost:
            break
        cur = await conn.execute(
            """SELECT idempotency_key, destination_name, distribution_id::text, correlation_id
                 FROM distribution_jobs
                WHERE (idempotency_key, destination_name) IN
                      (SELECT * FROM unnest(%s::text[], %s::text[]))""",
            ([j.idempotency_key for j in lost], [j.destination for j in lost]),
        )
        for key, dest, did, corr in await cur.fetchall():
            existing[(key, dest)] = (did, corr)
        pending = [j for j in lost if (j.idempotency_key or "", j.destination) not in existing]
        if not pending:
            break
    else:
        raise psycopg.errors.SerializationFailure("idempotency keys kept changing hands; retry")
    # In the order given (the insert's order is the lock order above): they are enqueued so.
    return [j for j in jobs if j.distribution_id in inserted], existing


_KEY_ROUNDS = 3


def _insert_params(jobs: Sequence[NewJob]) -> tuple[str, list[bytes]]:
    # (Correlation ids and idempotency keys were checked storable by submit.build_jobs.)
    rows = _json([{"i": j.distribution_id, "d": j.destination, "c": j.correlation_id, "p": j.priority,
                   "y": j.content_type, "k": j.idempotency_key, "m": j.max_attempts} for j in jobs])
    # The payloads as one binary bytea[] (%b): no hex text to build and escape.
    return rows, [j.payload for j in jobs]


# The columns travel as one JSON document and the payloads as a binary array, zipped by
# position (ROWS FROM): psycopg adapts a list parameter element by element in Python, and
# in text a bytea element is hex-encoded and then escaped for the array literal by a
# regular expression. Batches of 100 jobs of 1 KiB: 25-30 us of client CPU per job
# before, 5-9 after; batches of 5: 54-75 before, 33-39.
_INSERT_JOBS = f"""
INSERT INTO distribution_jobs (distribution_id, destination_name, correlation_id, priority, payload,
                               content_type, idempotency_key, max_attempts, status)
SELECT t.i, t.d, t.c, t.p, t.payload, t.y, t.k, t.m, '{JobStatus.QUEUED}'
  FROM ROWS FROM (json_to_recordset(%s::json) AS (i uuid, d text, c text, p text, y text, k text, m int),
                  unnest(%b::bytea[])) AS t(i, d, c, p, y, k, m, payload)
"""
# Only the idempotency index is an arbiter: a clash of distribution ids still raises.
_ON_KEY_CONFLICT = """
ON CONFLICT (idempotency_key, destination_name) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING distribution_id::text
"""


# Statements that pick jobs by id must reach them through the primary key whatever the
# planner believes about the table, in two ways:
#
# - "open" (queued, retrying or processing) is said as "not finished". Written as
#   ``status IN ('queued', 'retrying', ...)`` it implies the predicate of the partial
#   index distribution_jobs_open_updated_idx, and the planner may scan that index (every
#   open job) instead of probing the primary key: the claim did so on every call in a
#   paced benchmark whose statistics dated from an empty table, reading ~22,000 index
#   entries per claim of 7 jobs, and would in a backlog of a million jobs with
#   statistics from before it. ``status NOT IN ('delivered', 'failed', 'dead')`` says
#   the same and implies no partial index's predicate.
# - they run with ``prepare=False``: planned with each call's own ids and the table's
#   current size. psycopg prepares a statement on its 5th execution and PostgreSQL then
#   settles on a generic plan, which, made while the table was small, is a sequential
#   scan that stays in use as the table grows (until an ANALYZE invalidates it).
#   Planning costs ~0.15-0.2 ms per statement, i.e. per batch of jobs, not per job.

# The claim commits without waiting for the WAL flush (set_config(..., true) applies to
# this statement's own transaction only): it sits between the stream read and the HTTP
# request, and a disk stall on the host must not hold deliveries back. A claim lost in a
# PostgreSQL crash costs at most a repeat delivery, which at-least-once allows; outcomes
# (record_outcomes) still commit synchronously, and their flush covers earlier claims.
_CLAIM = f"""
UPDATE distribution_jobs
   SET status = '{JobStatus.PROCESSING}', started_at = now(), updated_at = now()
  FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
 WHERE distribution_id = ANY(string_to_array(%s, ',')::uuid[])
   AND status NOT IN {TERMINAL_SQL}
   AND (status <> '{JobStatus.PROCESSING}' OR started_at < now() - make_interval(secs => %s))
RETURNING distribution_id::text, destination_name, payload, content_type, attempts,
          max_attempts, correlation_id, priority, created_at
"""


def id_list(ids: Sequence[str]) -> str:
    """Ids for ``ANY(string_to_array(%s, ',')::uuid[])``: one string for psycopg to adapt
    instead of a list it adapts element by element in Python (the claim's and its status
    lookup's ids come from parse_entry, which checked each one is a UUID)."""
    return ",".join(ids)


async def claim_jobs(
    conn: psycopg.AsyncConnection[Any], ids: Sequence[str], lease_seconds: float
) -> dict[str, ClaimedJob]:
    """Mark jobs ``processing`` and read them, in one statement (committed asynchronously:
    run it in autocommit, or it makes the caller's whole transaction asynchronous).

    A job another worker holds (``processing`` with a lease younger than
    ``lease_seconds``) or one already finished is not returned: its stream entry is a
    duplicate and can be acknowledged.
    """
    if not ids:
        return {}
    cur = await conn.execute(_CLAIM, (id_list(ids), lease_seconds), binary=True, prepare=False)
    rows = await cur.fetchall()
    return {r[0]: ClaimedJob(*r) for r in rows}


def dlq_reason(status: str, error_code: str | None) -> str:
    """The reason a parked job's DLQ entry gives (as ``Engine._commit`` and ``park_poison`` file it)."""
    if status == JobStatus.FAILED:
        return "permanent_failure"
    return "poison" if error_code == "POISON_MESSAGE" else "max_retries_exceeded"


async def parked_errors(
    conn: psycopg.AsyncConnection[Any], ids: Sequence[str]
) -> dict[str, tuple[str, str, str | None, str | None]]:
    """(destination, status, last error code, last error) of those of ``ids`` that are parked."""
    if not ids:
        return {}
    cur = await conn.execute(_PARKED_ERRORS, (list(ids),))
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in await cur.fetchall()}


_PARKED_ERRORS = (
    "SELECT distribution_id::text, destination_name, status, last_error_code, last_error FROM distribution_jobs"
    f" WHERE distribution_id = ANY(%s::uuid[]) AND status IN {PARKED_SQL}"
)


async def job_statuses(conn: psycopg.AsyncConnection[Any], ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    cur = await conn.execute(
        "SELECT distribution_id::text, status FROM distribution_jobs"
        " WHERE distribution_id = ANY(string_to_array(%s, ',')::uuid[])",
        (id_list(ids),),
        prepare=False,
    )
    return {r[0]: r[1] for r in await cur.fetchall()}


# One statement, so one round trip in autocommit: the attempt rows and the job updates
# commit together (a data-modifying CTE is part of its statement), where BEGIN, COPY,
# UPDATE and COMMIT took four, each a wake-up of two processes. The rows travel as two
# JSON documents made by the json module in C: psycopg adapts a Python list parameter
# element by element in Python (its ListDumper), which cost ~13 us per outcome for the
# sixteen arrays this statement took before (~10 % of the engine's py-spy samples in a
# drain); the JSON costs ~2.5 us, and PostgreSQL reads it with json_to_recordset in C.
_RECORD_OUTCOMES = f"""
WITH attempts AS (
    INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, worker_id, status,
                                       response_status_code, error_code, error_message, started_at,
                                       completed_at)
    SELECT a.i, a.d, a.n, a.w, a.s, a.h, a.c, a.e, to_timestamp(a.t0 / 1e6::float8), to_timestamp(a.t1 / 1e6::float8)
      FROM json_to_recordset(%s::json)
           AS a(i uuid, d text, n int, w text, s text, h int, c text, e text, t0 int8, t1 int8)
)
UPDATE distribution_jobs AS j
   SET status = u.s,
       attempts = j.attempts + u.n,
       next_attempt_at = u.t,
       last_error_code = CASE WHEN u.s = '{JobStatus.RETRYING}' AND u.c IS NULL THEN j.last_error_code ELSE u.c END,
       last_error = CASE WHEN u.s = '{JobStatus.RETRYING}' AND u.c IS NULL THEN j.last_error ELSE u.e END,
       updated_at = now(),
       completed_at = CASE WHEN u.s IN {TERMINAL_SQL} THEN now() END
  FROM json_to_recordset(%s::json) AS u(i uuid, s text, n int, t timestamptz, c text, e text)
 WHERE j.distribution_id = u.i
"""


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _micros(when: dt.datetime) -> int:
    """Microseconds since the epoch, exact: ~0.9 us against isoformat's ~2 us, twice per
    attempt row (PostgreSQL's to_timestamp gets the same instant back: a double holds
    every microsecond of this era exactly, and it rounds to the microsecond)."""
    return (when - _EPOCH) // _MICROSECOND


def _text(value: str | None) -> str | None:
    """Error text as stored: redacted (again: whoever made it should have, and a secret
    registered since is caught too), and text PostgreSQL can store: no NUL, no lone
    surrogate. An error message quoting a destination's binary answer would otherwise
    fail the whole outcome statement."""
    if not value:
        return value
    value = logs.redact(value)
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _json(rows: list[dict[str, Any]]) -> str:
    # UTF-8 as it is (no \u escapes, which a database in another encoding refuses).
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


async def record_outcomes(conn: psycopg.AsyncConnection[Any], outcomes: Sequence[Outcome]) -> None:
    """Write many outcomes at once: attempt rows and job updates in one statement (run it in
    autocommit for one round trip, or inside the caller's transaction)."""
    if not outcomes:
        return
    attempts = _json([
        {"i": o.distribution_id, "d": o.destination, "n": a.attempt, "w": o.worker_id,
         "s": AttemptStatus.SUCCESS if a.success else AttemptStatus.FAILED, "h": a.http_status, "c": a.error_code,
         "e": _text(a.error_message), "t0": _micros(a.started_at), "t1": _micros(a.completed_at)}
        for o in outcomes for a in o.attempts
    ])
    updates = _json([
        {"i": o.distribution_id, "s": o.status, "n": len(o.attempts), "t": _iso(o.next_attempt_at),
         "c": o.error_code, "e": _text(o.error_message)}
        for o in outcomes
    ])
    await conn.execute(_RECORD_OUTCOMES, (attempts, updates), prepare=False)


_PARK = f"""
UPDATE distribution_jobs
   SET status = '{JobStatus.DEAD}', last_error_code = %s, last_error = %s,
       updated_at = now(), completed_at = now()
 WHERE distribution_id = ANY(%s::uuid[]) AND status NOT IN {TERMINAL_SQL}
RETURNING distribution_id::text
"""


async def park_jobs(
    conn: psycopg.AsyncConnection[Any], ids: Sequence[str], error_code: str, message: str
) -> list[str]:
    """Mark open jobs ``dead`` with a reason (poison, invalid). Returns the ids changed."""
    if not ids:
        return []
    cur = await conn.execute(
        _PARK,
        (error_code, _text(message), list(ids)),
        prepare=False,
    )
    return [r[0] for r in await cur.fetchall()]


_RESET_FOR_REPLAY = f"""UPDATE distribution_jobs
   SET status = '{JobStatus.QUEUED}', next_attempt_at = NULL, updated_at = now(), completed_at = NULL,
       max_attempts = attempts + COALESCE((%s::jsonb ->> destination_name)::int, %s)
 WHERE status IN {PARKED_SQL} AND distribution_id = ANY(%s::uuid[])
   AND payload_expunged_at IS NULL  -- nothing left to send (retention, expunge)
RETURNING distribution_id::text, destination_name, priority"""


async def reset_for_replay(
    conn: psycopg.AsyncConnection[Any], ids: Sequence[str], budgets: dict[str, int], budget: int
) -> list[tuple[str, str, str]]:
    """Put parked jobs back to ``queued``. They keep the attempts they used (the numbering
    continues, as in a replay by filter) with a fresh budget on top: their destination's
    ``budgets`` entry, else ``budget``. Returns (id, destination, priority) of each job
    reset, for the caller to enqueue."""
    cur = await conn.execute(_RESET_FOR_REPLAY, (json.dumps(budgets), budget, list(ids)))
    return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


# What a job looks like when shown (status, search): every column but the payload.
JOB_COLUMNS = """distribution_id::text, destination_name AS destination, correlation_id,
       status, priority, content_type, attempts AS attempt_count, max_attempts,
       next_attempt_at, last_error_code, last_error, created_at, updated_at,
       started_at, completed_at, octet_length(payload) AS payload_bytes, payload_expunged_at"""


async def get_job(conn: psycopg.AsyncConnection[Any], distribution_id: str) -> dict[str, Any] | None:
    """A job with its attempts, or None (also for a string that is no UUID at all: NUL
    bytes and such reached PostgreSQL as a DataError, a 500)."""
    try:
        distribution_id = str(uuid.UUID(distribution_id))
    except (ValueError, TypeError):
        return None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {JOB_COLUMNS} FROM distribution_jobs WHERE distribution_id = %s::uuid",
            (distribution_id,),
        )
        job = await cur.fetchone()
        if job is None:
            return None
        await cur.execute(
            """SELECT attempt, status, response_status_code, error_code, error_message,
                      worker_id, started_at, completed_at
                 FROM distribution_attempts WHERE distribution_id = %s::uuid
                ORDER BY started_at, id""",  # a timeline
            (distribution_id,),
        )
        job["attempts"] = await cur.fetchall()
    return job


async def touch_jobs(conn: psycopg.AsyncConnection[Any], ids: Iterable[str]) -> None:
    await conn.execute(
        "UPDATE distribution_jobs SET updated_at = now() WHERE distribution_id = ANY(%s::uuid[])",
        (list(ids),),
    )


async def parked_jobs(
    conn: psycopg.AsyncConnection[Any], limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT distribution_id::text, destination_name AS destination, status, attempts,
                      last_error_code, last_error, completed_at
                 FROM distribution_jobs
                WHERE status IN {PARKED_SQL}
                ORDER BY completed_at DESC NULLS LAST
                LIMIT %s OFFSET %s""",
            (limit, offset),
        )
        return list(await cur.fetchall())


async def count_by_status(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute("SELECT status, count(*) FROM distribution_jobs GROUP BY status")
    return {r[0]: r[1] for r in await cur.fetchall()}


_PURGE_ALL = f"DELETE FROM distribution_jobs WHERE status IN {PARKED_SQL} RETURNING distribution_id"
_PURGE_IDS = _PURGE_ALL.replace(" RETURNING", " AND distribution_id = ANY(%s::uuid[]) RETURNING")


async def purge_parked(conn: psycopg.AsyncConnection[Any], ids: Sequence[str] | None) -> int:
    """Forget parked jobs for good (``dlq purge``): their rows stay, marked as purged errors
    would lose history, so they are deleted with their attempts."""
    if ids is None:
        cur = await conn.execute(_PURGE_ALL)
    else:
        cur = await conn.execute(_PURGE_IDS, (list(ids),))
    gone = [r[0] for r in await cur.fetchall()]
    if gone:
        await conn.execute("DELETE FROM distribution_attempts WHERE distribution_id = ANY(%s)", (gone,))
    return len(gone)


async def ids_with_prefix(conn: psycopg.AsyncConnection[Any], hex_prefix: str, limit: int = 6) -> list[str]:
    """Distribution ids whose 32 hex digits start with ``hex_prefix`` (lowercase hex, no
    dashes), at most ``limit``: a range of the primary key, so one index probe."""
    low, high = hex_prefix.ljust(32, "0"), hex_prefix.ljust(32, "f")
    cur = await conn.execute(
        """SELECT distribution_id::text FROM distribution_jobs
            WHERE distribution_id BETWEEN %s::uuid AND %s::uuid ORDER BY distribution_id LIMIT %s""",
        (low, high, limit),
    )
    return [r[0] for r in await cur.fetchall()]


_KEEP_ALIVE = f"""UPDATE distribution_jobs SET started_at = now()
 WHERE distribution_id = ANY(%s::uuid[]) AND status = '{JobStatus.PROCESSING}'"""


async def keep_alive(conn: psycopg.AsyncConnection[Any], ids: list[str]) -> None:
    """Renew the claim lease of deliveries that run long (still ``processing``): the
    reclaimer and a second claim judge a job's lease by ``started_at``."""
    await conn.execute(_KEEP_ALIVE, (ids,))
