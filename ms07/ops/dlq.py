"""The dead-letter queue: parked jobs (Postgres ``failed``/``dead``) and the DLQ stream.

Postgres is the truth about parked *jobs*; the ``distribution:dlq`` stream also holds
entries that never had a job (malformed, unknown id; docs/architecture.md, "Redis protocol").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from ms07 import keys
from ms07.errors import UsageError
from ms07.queue import Queue
from ms07.store import jobs
from ms07.store.status import PARKED

if TYPE_CHECKING:
    from ms07.config import Settings


async def list_dlq(conn: psycopg.AsyncConnection[Any], queue: Queue, limit: int = 100) -> dict[str, Any]:
    parked = await jobs.parked_jobs(conn, limit=limit)
    entries = await queue.dlq_entries(count=limit * 2)
    job_ids = {p["distribution_id"] for p in parked}
    orphans = [
        {"entry_id": i, **f} for i, f in entries
        if not f.get("distribution_id") or f.get("distribution_id") not in job_ids
    ]
    reasons = {f.get("distribution_id"): f.get("reason") for _, f in entries if f.get("distribution_id")}
    for p in parked:
        p["reason"] = reasons.get(p["distribution_id"]) or jobs.dlq_reason(p["status"], p["last_error_code"])
    counts = await jobs.count_by_status(conn)
    return {
        "parked_jobs": parked,
        "parked_total": sum(counts.get(s, 0) for s in PARKED),
        "stream_length": int(await queue.redis.xlen(keys.DLQ)),
        "entries_without_job": [
            o for o in orphans if o.get("distribution_id", "") not in reasons or not o.get("distribution_id")
        ][:limit],
    }


def check_ids(ids: Sequence[str]) -> list[str]:
    import uuid

    out = []
    for i in ids:
        try:
            out.append(str(uuid.UUID(i)))
        except ValueError:
            raise UsageError(f"{i!r} is not a distribution id (a UUID)") from None
    return out


async def replay(
    conn: psycopg.AsyncConnection[Any], queue: Queue, settings: Settings, ids: Sequence[str]
) -> list[str]:
    """Reset these parked jobs to ``queued`` with a fresh attempt budget and enqueue them
    (every parked job: ``ms07 replay``, through ms07.ops.replay)."""
    from ms07.ops.dest_admin import settings_in_force
    from ms07.ops.replay import budgets

    wanted = check_ids(ids)
    settings = await settings_in_force(conn, settings)  # a destination added at runtime has its budget
    async with conn.transaction():
        reset = await jobs.reset_for_replay(conn, wanted, *budgets(settings))
    await requeue(queue, reset)
    return [r[0] for r in reset]


async def requeue(queue: Queue, reset: Sequence[tuple[str, str, str]]) -> None:
    """Put jobs made open again, (id, destination, priority), on their queue and take
    their entries out of the DLQ stream."""
    if reset:
        await queue.enqueue(
            (prio if prio in queue.priorities else queue.priorities[0], did, dest) for did, dest, prio in reset
        )
        await queue.dlq_remove([r[0] for r in reset])


async def not_replayed(
    conn: psycopg.AsyncConnection[Any], ids: Sequence[str], replayed: Sequence[str]
) -> dict[str, str | None]:
    """Each asked-for id that was not replayed -> its status (``delivered``, ``queued``...),
    or None when no distribution has that id: the answer names which is which."""
    done = set(replayed)
    missing = [i for i in check_ids(ids) if i not in done]
    statuses = await jobs.job_statuses(conn, missing)
    cur = await conn.execute("SELECT distribution_id::text FROM distribution_jobs"
                             " WHERE distribution_id = ANY(%s::uuid[]) AND payload_expunged_at IS NOT NULL", (missing,))
    for (did,) in await cur.fetchall():
        statuses[did] = EXPUNGED
    return {i: statuses.get(i) for i in dict.fromkeys(missing)}


# What ``not_replayed`` says of a job whose payload was expunged: nothing left to send.
EXPUNGED = "payload_expunged"


async def purge(conn: psycopg.AsyncConnection[Any], queue: Queue, ids: Sequence[str] | None) -> dict[str, int]:
    """Forget parked jobs (and their DLQ entries) for good."""
    wanted = None if ids is None else check_ids(ids)
    async with conn.transaction():
        removed = await jobs.purge_parked(conn, wanted)
    stream_removed = await queue.dlq_remove(wanted)
    return {"jobs": removed, "dlq_entries": stream_removed}
