"""Expunge payloads now (``ms07 jobs expunge``, ``DELETE /api/v1/distributions/{id}/payload``):
a customer's erasure request. The delivery record stays (id, destination, status,
timings, errors, attempts); the payload is emptied and ``payload_expunged_at`` set, and
the job can no longer be replayed. One ``recovery_audit`` row per payload expunged: who,
which job, how many bytes (never the payload).

An open job (queued, retrying, processing) is refused: its delivery still needs the
payload. Wait for it to finish, or let it park, then expunge.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from ms07.errors import UsageError
from ms07.store import audit
from ms07.store import retention as store

Expunged = store.Expunged


def check_ids(ids: Sequence[str]) -> list[str]:
    """The ids as UUIDs, or a UsageError naming the first that is not one."""
    if not ids:
        raise UsageError("nothing to expunge: give one or more distribution ids")
    try:
        return store.check_ids(ids)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


async def expunge(conn: psycopg.AsyncConnection[Any], ids: Sequence[str], operator: str,
                  command: str) -> Expunged:
    """Expunge the payloads of these finished jobs, audited, in one transaction. Ids not
    found or still open are reported in the result, not touched."""
    wanted = check_ids(ids)
    plan_id = f"expunge-{uuid.uuid4().hex[:12]}"
    async with conn.transaction():
        result = await store.expunge_ids(conn, wanted)
        sizes = result.sizes
        for did, outcome in result.outcome.items():
            if outcome == "expunged":
                await audit.record(conn, operator=operator, plan_id=plan_id, plan="expunge",
                                   step="expunge payload", outcome="done", command=command,
                                   detail={"distribution_id": did, "payload_bytes": sizes.get(did, 0)})
    return result
