"""Lost jobs: open jobs PostgreSQL holds that no queue stream or delayed set holds.

PostgreSQL is the system of record; Redis can lose entries (a restart without AOF, a
FLUSHALL, a failover, eviction, a submit that died between its INSERT and its XADD). One
implementation, three users:

- :func:`find_lost` (read only): ``diagnose queue`` reports what it finds;
- :func:`requeue_lost` = find, then claim and re-enqueue: the engine's reconciler
  (``upkeep.reconcile``, under its Redis lease) and ``recover requeue-from-db``.

A job counts as lost only if, after Redis was asked, it is still open with the
``updated_at`` the scan read (the race guard of ms07/store/lost.py): one a worker
deferred or finished while Redis was being asked, or one another repair re-enqueued, is
left alone. The claim applies the same guard atomically, so two repairs running at once
re-enqueue each job once. Delivery is at least once with an ``Idempotency-Key``: a job
that was in fact still in flight is deduplicated by its receiver.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ms07 import logs
from ms07.store import lost as store

log = logs.get("reconciler")

# A connection for one statement: ``pool.connection``, ``runtime.connection``, ``ctx.connection``.
Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


@dataclass(frozen=True, slots=True)
class LostJob:
    distribution_id: str
    destination_name: str
    priority: str
    status: str
    updated_at: dt.datetime
    seconds_idle: Any  # numeric, as PostgreSQL's EXTRACT returns it


@dataclass(slots=True)
class Scan:
    scanned: int  # open jobs older than the grace (at most the limit)
    limit: int
    lost: list[LostJob] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """The scan stopped at ``limit``: there may be more lost jobs than found."""
        return self.scanned >= self.limit


async def find_lost(connect: Connect, queue_of: Callable[[], Awaitable[Any]], older_than: float,
                    limit: int) -> Scan:
    """The open jobs untouched for ``older_than`` seconds (oldest first, at most
    ``limit``) that Redis does not hold and that did not move on meanwhile. Changes nothing.

    ``queue_of`` gives the queue; it is called only when there is a candidate to look up
    (with none, ``diagnose`` reports so even while Redis is out of reach)."""
    async with connect() as conn:
        candidates = await store.scan(conn, older_than, limit)
    result = Scan(len(candidates), limit)
    if not candidates:
        return result
    present = await (await queue_of()).contains([c["distribution_id"] for c in candidates])
    missing = [LostJob(**c) for c in candidates if c["distribution_id"] not in present]
    if missing:
        async with connect() as conn:
            same = await store.unchanged(conn, _stamps(missing))
        result.lost = [j for j in missing if j.distribution_id in same]
    return result


async def requeue(connect: Connect, queue: Any, lost: list[LostJob]) -> list[LostJob]:
    """Claim (same guard, atomically) and enqueue again the jobs :func:`find_lost` found.
    Returns those this call enqueued."""
    if not lost:
        return []
    async with connect() as conn:
        claimed = await store.claim_unchanged(conn, _stamps(lost))
    mine = [j for j in lost if j.distribution_id in claimed]
    if not mine:
        return []
    first = queue.priorities[0]
    await queue.enqueue((j.priority if j.priority in queue.priorities else first, j.distribution_id,
                         j.destination_name) for j in mine)
    log.warning("re-enqueued jobs that Redis had lost", count=len(mine))
    return mine


async def requeue_lost(connect: Connect, queue: Any, older_than: float, limit: int = 100_000) -> int:
    """Find the lost jobs and enqueue them again. Returns how many this call enqueued."""
    async def queue_of() -> Any:
        return queue

    scan = await find_lost(connect, queue_of, older_than, limit)
    return len(await requeue(connect, queue, scan.lost))


def _stamps(jobs: list[LostJob]) -> list[tuple[str, dt.datetime]]:
    return [(j.distribution_id, j.updated_at) for j in jobs]
