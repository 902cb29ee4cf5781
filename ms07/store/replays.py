"""``replays`` and ``replay_items``: a replay's frozen selection and its progress.

A job leaves ``pending`` in the same transaction that makes it open again (``queued``),
so a replay resumed after a crash or a Ctrl-C never picks a job twice.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ms07.store.search import where
from ms07.store.status import JobStatus

if TYPE_CHECKING:
    from ms07.ops.search import JobFilter

UNFINISHED = ("running", "interrupted")
_COLUMNS = "id, filter, operator, matched, enqueued, skipped, status, created_at, updated_at"


async def count_and_sample(
    conn: psycopg.AsyncConnection[Any], flt: JobFilter, sample: int
) -> tuple[int, list[dict[str, Any]]]:
    clause, params = where(flt)
    cur = await conn.execute(f"SELECT count(*) FROM distribution_jobs WHERE {clause}".encode(), params,
                             prepare=False)
    row = await cur.fetchone()
    async with conn.cursor(row_factory=dict_row) as dcur:
        await dcur.execute(
            f"""SELECT distribution_id::text, destination_name AS destination, status, attempts,
                       last_error_code, created_at, completed_at
                  FROM distribution_jobs WHERE {clause}
                 ORDER BY distribution_jobs.created_at DESC, distribution_jobs.distribution_id DESC
                 LIMIT %s""".encode(),
            [*params, sample], prepare=False)
        return int(row[0]) if row else 0, list(await dcur.fetchall())


async def unfinished(conn: psycopg.AsyncConnection[Any], filter_key: str) -> dict[str, Any] | None:
    """The newest replay of this filter that neither finished nor was cancelled."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT {_COLUMNS} FROM replays WHERE filter_key = %s AND status IN ('running', 'interrupted')
                ORDER BY created_at DESC LIMIT 1""", (filter_key,))
        return await cur.fetchone()


async def create(
    conn: psycopg.AsyncConnection[Any], replay_id: str, flt: JobFilter, filter_doc: dict[str, Any],
    filter_key: str, operator: str, runner: str = "cli", rate: float | None = None,
) -> int:
    """Insert the replay and freeze its selection, oldest first (call in a transaction).
    Returns how many jobs it selected."""
    clause, params = where(flt)
    await conn.execute(
        "INSERT INTO replays (id, filter, filter_key, operator, matched, runner, rate)"
        " VALUES (%s, %s, %s, %s, 0, %s, %s)",
        (replay_id, Jsonb(filter_doc), filter_key, operator, runner, rate))
    cur = await conn.execute(
        f"""INSERT INTO replay_items (replay_id, seq, distribution_id)
            SELECT %s, row_number() OVER (ORDER BY created_at, distribution_id), distribution_id
              FROM distribution_jobs WHERE {clause}""".encode(), [replay_id, *params], prepare=False)
    matched = cur.rowcount
    await conn.execute("UPDATE replays SET matched = %s WHERE id = %s", (matched, replay_id))
    return matched


async def get(conn: psycopg.AsyncConnection[Any], replay_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM replays WHERE id = %s", (replay_id,))
        return await cur.fetchone()


async def set_status(conn: psycopg.AsyncConnection[Any], replay_id: str, status: str,
                     only_from: tuple[str, ...] = UNFINISHED) -> bool:
    cur = await conn.execute(
        "UPDATE replays SET status = %s, updated_at = now() WHERE id = %s AND status = ANY(%s)",
        (status, replay_id, list(only_from)))
    return cur.rowcount == 1


async def take(conn: psycopg.AsyncConnection[Any], replay_id: str, runner: str, rate: float) -> None:
    """Whoever runs a replay now resumes it if it stops: an engine, or the command."""
    await conn.execute("UPDATE replays SET runner = %s, rate = %s WHERE id = %s", (runner, rate, replay_id))


async def engine_unfinished(conn: psycopg.AsyncConnection[Any], older_than: float) -> list[tuple[str, float | None]]:
    """(id, rate) of the unfinished replays an engine runs, planned more than
    ``older_than`` seconds ago, oldest first: those whose runner is gone are for the
    upkeep to take over. (A younger one may not be locked by the engine that planned it
    yet: taking it would be no harm, the job marks see to that, but would audit a
    takeover where there was none.)"""
    cur = await conn.execute(
        """SELECT id, rate FROM replays WHERE runner = 'engine' AND status IN ('running', 'interrupted')
              AND created_at < now() - make_interval(secs => %s)
            ORDER BY created_at""", (older_than,))
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def try_lock(conn: psycopg.AsyncConnection[Any], replay_id: str) -> bool:
    """One runner per replay: a session lock, let go when the runner's connection closes
    (also when its process is killed)."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_SPACE, _lock_key(replay_id)))
    row = await cur.fetchone()
    return bool(row and row[0])


async def unlock(conn: psycopg.AsyncConnection[Any], replay_id: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_SPACE, _lock_key(replay_id)))


_LOCK_SPACE = 0x6D7372  # "msr": apart from the migration lock's single-key space
_STEP = f"""
WITH batch AS (
    SELECT seq, distribution_id FROM replay_items
     WHERE replay_id = %(id)s AND state = 'pending'
     ORDER BY seq LIMIT %(n)s
       FOR UPDATE
), reset AS (
    -- Open again with the attempts it used kept (numbering continues) and a fresh budget
    -- on top. Only if still what the replay picked: replayed meanwhile, it is skipped.
    UPDATE distribution_jobs AS j
       SET status = '{JobStatus.QUEUED}', next_attempt_at = NULL, completed_at = NULL, updated_at = now(),
           max_attempts = j.attempts + COALESCE((%(budgets)s::jsonb ->> j.destination_name)::int, %(budget)s)
      FROM batch AS b
     WHERE j.distribution_id = b.distribution_id AND j.status = ANY(%(statuses)s::text[])
       AND j.payload_expunged_at IS NULL  -- its payload was expunged: nothing to send
 RETURNING j.distribution_id, j.destination_name, j.priority
), marked AS (
    UPDATE replay_items AS i
       SET state = CASE WHEN r.distribution_id IS NULL THEN 'skipped' ELSE 'enqueued' END
      FROM batch AS b LEFT JOIN reset AS r ON r.distribution_id = b.distribution_id
     WHERE i.replay_id = %(id)s AND i.seq = b.seq
 RETURNING i.state
), counted AS (
    UPDATE replays
       SET enqueued = enqueued + (SELECT count(*) FROM marked WHERE state = 'enqueued'),
           skipped = skipped + (SELECT count(*) FROM marked WHERE state = 'skipped'),
           updated_at = now()
     WHERE id = %(id)s
)
SELECT (SELECT count(*) FROM batch),
       (SELECT json_agg(json_build_array(distribution_id::text, destination_name, priority)) FROM reset)
"""


async def step(
    conn: psycopg.AsyncConnection[Any], replay_id: str, n: int, statuses: tuple[str, ...],
    budgets: dict[str, int], budget: int,
) -> tuple[int, list[tuple[str, str, str]]]:
    """Take the next ``n`` pending jobs (call in a transaction): reset those still as
    selected, mark each enqueued or skipped. Returns (jobs taken, [(id, destination,
    priority)] to put on the queue once committed)."""
    cur = await conn.execute(_STEP, {"id": replay_id, "n": n, "statuses": list(statuses),
                                     "budgets": json.dumps(budgets), "budget": budget}, prepare=False)
    taken, reset = await cur.fetchone()  # type: ignore[misc]
    return int(taken), [(r[0], r[1], r[2]) for r in reset or []]


def _lock_key(replay_id: str) -> int:
    return zlib.crc32(replay_id.encode()) - 2**31


async def recent(conn: psycopg.AsyncConnection[Any], limit: int = 20) -> list[dict[str, Any]]:
    """The newest replays first (the console's list; unfinished ones among them)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM replays ORDER BY created_at DESC LIMIT %s", (limit,))
        return list(await cur.fetchall())
