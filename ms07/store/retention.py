"""Retention's statements: what a policy would remove, removal in bounded batches, and
the payload expunge (the run itself is ms07/ops/retention.py).

Only finished jobs (``status IN TERMINAL``) are ever removed or expunged: a job of any
other status (open, or a status added later such as ``paused``) is kept whatever its age.
A job's age is counted from ``completed_at``. Every batch locks the rows it takes
(``FOR UPDATE SKIP LOCKED``): a job a replay or an engine holds is skipped, and one whose
status changed since it was looked at fails the re-check PostgreSQL makes on the row it
locks, so it stays. Ages travel as seconds; ``None`` makes ``make_interval`` NULL and the
comparison false: that pass removes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ms07.store.status import PARKED, PARKED_SQL, TERMINAL, TERMINAL_SQL, JobStatus, sql_list

DELIVERED_SQL = sql_list(frozenset({JobStatus.DELIVERED}))
_PARKED_SQL = sql_list(PARKED)


@dataclass(frozen=True)
class Ages:
    """Seconds of each retention age; None: keep forever."""

    delivered: float | None
    parked: float | None
    attempts: float | None
    payload: float | None

    @classmethod
    def of(cls, retention: Any) -> Ages:
        def secs(days: float | None) -> float | None:
            return days * 86400.0 if days else None

        return cls(secs(retention.delivered_days), secs(retention.dead_days), secs(retention.attempts_days),
                   secs(retention.payload_days))

    def params(self) -> dict[str, float | None]:
        return {"delivered_age": self.delivered, "parked_age": self.parked, "attempts_age": self.attempts,
                "payload_age": self.payload}


# The two job passes: (name, statuses, the age parameter that applies).
JOB_PASSES: tuple[tuple[str, str, Callable[[Ages], float | None]], ...] = (
    ("delivered_jobs", DELIVERED_SQL, lambda a: a.delivered), ("parked_jobs", _PARKED_SQL, lambda a: a.parked))

# A finished job past its age (j. is distribution_jobs).
_DOOMED = f"""((j.status IN {DELIVERED_SQL} AND j.completed_at < now() - make_interval(secs => %(delivered_age)s))
            OR (j.status IN {_PARKED_SQL} AND j.completed_at < now() - make_interval(secs => %(parked_age)s)))"""


async def _one(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]) -> tuple[Any, ...]:
    cur = await conn.execute(sql.encode(), params, prepare=False)
    row = await cur.fetchone()
    return tuple(row) if row else ()


async def plan(conn: psycopg.AsyncConnection[Any], ages: Ages) -> dict[str, dict[str, int]]:
    """What a run would remove now: rows and an estimate of the bytes (heap and indexes)
    per table, and the payloads it would expunge. Reads only."""
    p = ages.params()
    jobs_n, jobs_b = await _one(conn, f"""
        SELECT count(*), coalesce(sum(pg_column_size(j.*)), 0) FROM distribution_jobs AS j
         WHERE j.completed_at IS NOT NULL AND {_DOOMED}""", p)
    att_n, att_b = await _one(conn, f"""
        SELECT count(*), coalesce(sum(pg_column_size(a.*)), 0) FROM distribution_attempts AS a
         WHERE EXISTS (SELECT 1 FROM distribution_jobs AS j
                        WHERE j.distribution_id = a.distribution_id AND {_DOOMED})
            OR (a.started_at < now() - make_interval(secs => %(attempts_age)s)
                AND NOT EXISTS (SELECT 1 FROM distribution_jobs AS j WHERE j.distribution_id = a.distribution_id
                                   AND (j.status NOT IN {TERMINAL_SQL} OR {_DOOMED})))""", p)
    pay_n, pay_b = await _one(conn, f"""
        SELECT count(*), coalesce(sum(octet_length(j.payload)), 0) FROM distribution_jobs AS j
         WHERE j.completed_at < now() - make_interval(secs => %(payload_age)s) AND j.status IN {TERMINAL_SQL}
           AND j.payload_expunged_at IS NULL AND NOT {_DOOMED}""", p)
    ratio = await _index_ratio(conn)
    return {
        "distribution_jobs": {"rows": jobs_n, "bytes": int(jobs_b * ratio["distribution_jobs"])},
        "distribution_attempts": {"rows": att_n, "bytes": int(att_b * ratio["distribution_attempts"])},
        "payloads": {"rows": pay_n, "bytes": int(pay_b)},
    }


async def _index_ratio(conn: psycopg.AsyncConnection[Any]) -> dict[str, float]:
    """(heap + TOAST + indexes) / heap of each table: a row's share of the indexes too."""
    cur = await conn.execute(
        """SELECT c.relname, pg_total_relation_size(c.oid)::float8 / greatest(pg_relation_size(c.oid), 1)
             FROM pg_class AS c
            WHERE c.relname IN ('distribution_jobs', 'distribution_attempts') AND c.relkind IN ('r', 'p')""")
    found = {name: max(1.0, min(ratio, 10.0)) for name, ratio in await cur.fetchall()}
    return {"distribution_jobs": 1.0, "distribution_attempts": 1.0} | found


async def set_timeouts(conn: psycopg.AsyncConnection[Any], lock_ms: int, statement_ms: int) -> None:
    """Bound this transaction's waits: a batch never queues behind delivery for long."""
    await conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                       (f"{int(lock_ms)}ms", f"{int(statement_ms)}ms"))


async def take_jobs(conn: psycopg.AsyncConnection[Any], statuses_sql: str, age: float | None,
                    limit: int) -> list[str]:
    """Lock (in the caller's transaction) up to ``limit`` finished jobs of these statuses
    past ``age`` seconds, oldest first; rows another transaction holds are skipped."""
    if age is None:
        return []
    cur = await conn.execute(f"""
        SELECT distribution_id::text FROM distribution_jobs
         WHERE completed_at < now() - make_interval(secs => %s) AND status IN {statuses_sql}
         ORDER BY completed_at LIMIT %s
           FOR UPDATE SKIP LOCKED""".encode(), (age, limit), prepare=False)
    return [r[0] for r in await cur.fetchall()]


async def read_jobs(conn: psycopg.AsyncConnection[Any], ids: Sequence[str]) -> list[dict[str, Any]]:
    """The whole rows of these jobs with their attempts (for the archive)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM distribution_jobs WHERE distribution_id = ANY(%s::uuid[])"
                          " ORDER BY completed_at, distribution_id", (list(ids),))
        rows = await cur.fetchall()
        await cur.execute("SELECT * FROM distribution_attempts WHERE distribution_id = ANY(%s::uuid[])"
                          " ORDER BY distribution_id, attempt, id", (list(ids),))
        attempts: dict[str, list[dict[str, Any]]] = {}
        for a in await cur.fetchall():
            attempts.setdefault(str(a["distribution_id"]), []).append(a)
    for r in rows:
        r["attempts"] = attempts.get(str(r["distribution_id"]), [])
    return rows


async def delete_jobs(conn: psycopg.AsyncConnection[Any], ids: Sequence[str]) -> tuple[int, int, int, int]:
    """Delete these (locked, finished) jobs and their attempts. Returns (jobs, job bytes,
    attempts, attempt bytes). The status is checked again: only finished rows go."""
    cur = await conn.execute(f"""
        WITH gone AS (
            DELETE FROM distribution_jobs WHERE distribution_id = ANY(%s::uuid[]) AND status IN {TERMINAL_SQL}
            RETURNING distribution_id, pg_column_size(distribution_jobs.*) AS size
        ), att AS (
            DELETE FROM distribution_attempts AS a USING gone
             WHERE a.distribution_id = gone.distribution_id
            RETURNING pg_column_size(a.*) AS size
        )
        SELECT (SELECT count(*) FROM gone), (SELECT coalesce(sum(size), 0) FROM gone),
               (SELECT count(*) FROM att), (SELECT coalesce(sum(size), 0) FROM att)""".encode(),
        (list(ids),), prepare=False)
    row = _row(await cur.fetchone())
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def take_attempts(conn: psycopg.AsyncConnection[Any], age: float | None, limit: int) -> list[int]:
    """Lock attempts older than ``age`` whose job is finished (or gone), oldest first."""
    if age is None:
        return []
    cur = await conn.execute(f"""
        SELECT a.id FROM distribution_attempts AS a
         WHERE a.started_at < now() - make_interval(secs => %s)
           AND NOT EXISTS (SELECT 1 FROM distribution_jobs AS j
                            WHERE j.distribution_id = a.distribution_id AND j.status NOT IN {TERMINAL_SQL})
         ORDER BY a.started_at LIMIT %s
           FOR UPDATE OF a SKIP LOCKED""".encode(), (age, limit), prepare=False)
    return [r[0] for r in await cur.fetchall()]


async def read_attempts(conn: psycopg.AsyncConnection[Any], ids: Sequence[int]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM distribution_attempts WHERE id = ANY(%s) ORDER BY id", (list(ids),))
        return list(await cur.fetchall())


async def delete_attempts(conn: psycopg.AsyncConnection[Any], ids: Sequence[int]) -> tuple[int, int]:
    cur = await conn.execute(
        """WITH gone AS (DELETE FROM distribution_attempts AS a WHERE a.id = ANY(%s)
                         RETURNING pg_column_size(a.*) AS size)
           SELECT count(*), coalesce(sum(size), 0) FROM gone""", (list(ids),), prepare=False)
    row = _row(await cur.fetchone())
    return int(row[0]), int(row[1])


_EXPUNGE_BATCH = f"""
WITH batch AS (
    SELECT distribution_id, completed_at, octet_length(payload) AS size FROM distribution_jobs
     WHERE completed_at < now() - make_interval(secs => %(age)s) AND completed_at >= %(after)s
       AND status IN {TERMINAL_SQL} AND payload_expunged_at IS NULL
     ORDER BY completed_at LIMIT %(n)s
       FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE distribution_jobs AS j SET payload = ''::bytea, payload_expunged_at = now()
      FROM batch AS b WHERE j.distribution_id = b.distribution_id
    RETURNING b.size, b.completed_at
)
SELECT count(*), coalesce(sum(size), 0), max(completed_at) FROM done
"""


async def expunge_old_payloads(conn: psycopg.AsyncConnection[Any], age: float | None, limit: int,
                               after: Any) -> tuple[int, int, Any]:
    """Expunge up to ``limit`` payloads of finished jobs past ``age`` seconds and finished
    at or after ``after`` (the keyset: expunged rows are not scanned again). Returns
    (rows, bytes, the newest completed_at of the batch)."""
    if age is None:
        return 0, 0, None
    cur = await conn.execute(_EXPUNGE_BATCH.encode(), {"age": age, "after": after, "n": limit}, prepare=False)
    row = _row(await cur.fetchone())
    return int(row[0]), int(row[1]), row[2]


# ---------------------------------------------------------------------- expunge by id

_EXPUNGE_IDS = f"""
WITH found AS (
    SELECT distribution_id, status, payload_expunged_at, octet_length(payload) AS size
      FROM distribution_jobs WHERE distribution_id = ANY(%s::uuid[])
       FOR UPDATE
), done AS (
    UPDATE distribution_jobs AS j SET payload = ''::bytea, payload_expunged_at = now()
      FROM found AS f
     WHERE j.distribution_id = f.distribution_id AND f.status IN {TERMINAL_SQL} AND f.payload_expunged_at IS NULL
    RETURNING j.distribution_id
)
SELECT f.distribution_id::text, f.status, f.payload_expunged_at IS NOT NULL, f.size,
       f.distribution_id IN (SELECT distribution_id FROM done)
  FROM found AS f
"""


@dataclass(frozen=True)
class Expunged:
    """What an expunge by id found: each id as ``expunged`` (now), ``already`` (before),
    ``open`` (not finished: refused) or ``unknown``; bytes removed."""

    outcome: dict[str, str]
    sizes: dict[str, int]  # bytes removed, per id expunged now

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


async def expunge_ids(conn: psycopg.AsyncConnection[Any], ids: Sequence[str]) -> Expunged:
    """Expunge the payloads of these finished jobs (in the caller's transaction)."""
    cur = await conn.execute(_EXPUNGE_IDS.encode(), (list(ids),), prepare=False)
    outcome = {i: "unknown" for i in ids}
    sizes: dict[str, int] = {}
    for did, status, before, n, now in await cur.fetchall():
        if now:
            outcome[did], sizes[did] = "expunged", int(n)
        elif before:
            outcome[did] = "already"
        else:
            outcome[did] = "already" if status in TERMINAL else "open"
    return Expunged(outcome, sizes)


def check_ids(ids: Sequence[str]) -> list[str]:
    """Distribution ids as UUIDs, or ValueError naming the first that is not one."""
    out = []
    for i in ids:
        try:
            out.append(str(uuid.UUID(i)))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"{i!r} is not a distribution id (a UUID)") from None
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------- runs

async def record_run(conn: psycopg.AsyncConnection[Any], *, started_at: Any, runner: str, dry_run: bool,
                     outcome: str, removed: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO retention_runs (started_at, runner, dry_run, outcome, removed) VALUES (%s, %s, %s, %s, %s)",
        (started_at, runner, dry_run, outcome, Jsonb(removed)))
    await conn.execute("DELETE FROM retention_runs WHERE id < (SELECT min(id) FROM "
                       "(SELECT id FROM retention_runs ORDER BY id DESC LIMIT 1000) AS newest)")


async def last_run(conn: psycopg.AsyncConnection[Any], *, succeeded: bool = False) -> dict[str, Any] | None:
    """The newest run (``succeeded``: the newest that was not dry and ended ``done``)."""
    where = "WHERE NOT dry_run AND outcome = 'done'" if succeeded else ""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT * FROM retention_runs {where} ORDER BY id DESC LIMIT 1".encode())
        return await cur.fetchone()


def _row(row: Any) -> Any:
    """The one row an aggregate answers (a missing one is a driver fault, said plainly)."""
    if row is None:
        raise RuntimeError("PostgreSQL answered an aggregate with no row")
    return row


async def parked_within(conn: psycopg.AsyncConnection[Any], ids: list[str], age: float) -> set[str]:
    """Of these job ids, those still parked and finished less than ``age`` seconds ago:
    their DLQ entries stay."""
    cur = await conn.execute(
        f"SELECT distribution_id::text FROM distribution_jobs WHERE distribution_id = ANY(%s::uuid[])"
        f" AND status IN {PARKED_SQL}"
        " AND coalesce(completed_at >= now() - make_interval(secs => %s), true)".encode(), (ids, age),
        prepare=False)
    return {r[0] for r in await cur.fetchall()}
