"""The statements behind "lost jobs" (ms07/reconcile.py): open jobs Postgres holds that
Redis may no longer hold, and the one race guard that re-checks them.

The guard: a job is still lost if it is still open and its ``updated_at`` is the one the
scan read. Anything that happened to it since (a worker claimed, deferred or finished
it; another repair re-enqueued it) bumped ``updated_at``. The read-only re-check
(``diagnose queue``) and the claim that precedes a re-enqueue (reconciler, ``recover
requeue-from-db``) apply that same predicate, so they agree on what is lost.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ms07.store.status import OPEN_SQL, TERMINAL_SQL

# distribution_jobs_open_updated_idx: open jobs untouched for ``older_than`` seconds,
# oldest first. (``IN OPEN_SQL`` so that the partial index serves it.)
SCAN = f"""
SELECT distribution_id::text, destination_name, priority, status, updated_at,
       EXTRACT(EPOCH FROM (now() - updated_at)) AS seconds_idle
  FROM distribution_jobs
 WHERE status IN {OPEN_SQL}
   AND updated_at < now() - make_interval(secs => %(older_than)s)
 ORDER BY updated_at
 LIMIT %(limit)s
"""

# Primary key, one probe per candidate (``NOT IN TERMINAL_SQL``: see status.py).
_SCANNED = "unnest(%(ids)s::uuid[], %(stamps)s::timestamptz[]) AS s(id, stamp)"
_UNCHANGED = f"j.distribution_id = s.id AND j.updated_at = s.stamp AND j.status NOT IN {TERMINAL_SQL}"

UNCHANGED = f"""
SELECT j.distribution_id::text
  FROM distribution_jobs AS j JOIN {_SCANNED} ON {_UNCHANGED}
"""

CLAIM_UNCHANGED = f"""
UPDATE distribution_jobs AS j SET updated_at = now()
  FROM {_SCANNED}
 WHERE {_UNCHANGED}
RETURNING j.distribution_id::text
"""


async def scan(conn: psycopg.AsyncConnection[Any], older_than: float, limit: int) -> list[dict[str, Any]]:
    """Open jobs untouched for ``older_than`` seconds, as rows: distribution_id,
    destination_name, priority, status, updated_at, seconds_idle."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SCAN, {"older_than": older_than, "limit": limit})
        return list(await cur.fetchall())


def _scanned(jobs: Sequence[tuple[str, dt.datetime]]) -> dict[str, Any]:
    return {"ids": [i for i, _ in jobs], "stamps": [t for _, t in jobs]}


async def unchanged(conn: psycopg.AsyncConnection[Any], jobs: Sequence[tuple[str, dt.datetime]]) -> set[str]:
    """Those of (id, updated_at as scanned) still open and untouched since (read only)."""
    if not jobs:
        return set()
    cur = await conn.execute(UNCHANGED, _scanned(jobs), prepare=False)
    return {r[0] for r in await cur.fetchall()}


async def claim_unchanged(conn: psycopg.AsyncConnection[Any], jobs: Sequence[tuple[str, dt.datetime]]) -> set[str]:
    """Bump ``updated_at`` of those of (id, updated_at as scanned) still open and untouched
    since, and return their ids: the jobs this repair, and no other, re-enqueues."""
    if not jobs:
        return set()
    cur = await conn.execute(CLAIM_UNCHANGED, _scanned(jobs), prepare=False)
    return {r[0] for r in await cur.fetchall()}
