"""Accepting distributions: validate, record in Postgres, then enqueue in Redis.

Once the job rows are committed the distribution is *accepted*: if the XADD that
follows fails, the reconciler finds the job in Postgres and enqueues it. Bad input is
refused before anything is written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from redis.exceptions import RedisError

from ms07 import logs
from ms07.config import Settings
from ms07.errors import UsageError
from ms07.queue import Queue
from ms07.store import jobs

log = logs.get("submit")


class PayloadTooLarge(UsageError):
    http_status = 413


class UnknownDestination(UsageError):
    http_status = 422


@dataclass
class Submitted:
    distributions: list[dict[str, str]] = field(default_factory=list)
    correlation_id: str | None = None
    replayed: bool = False
    enqueued: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"distributions": self.distributions, "correlation_id": self.correlation_id}


def encode_payload(payload: Any) -> bytes:
    """JSON payloads are compact UTF-8; raw bytes pass through unchanged."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"payload is not JSON-serialisable: {exc}") from None


def build_jobs(
    settings: Settings,
    destinations: Sequence[str],
    body: bytes,
    *,
    content_type: str = "application/json",
    correlation_id: str | None = None,
    priority: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[list[jobs.NewJob], str]:
    """Validate a submission and turn it into job rows (nothing is written here)."""
    if not destinations:
        raise UsageError("at least one destination is required")
    if len(set(destinations)) != len(destinations):
        raise UsageError("a destination is named twice")
    known = {d.name: d for d in settings.destinations if d.enabled}
    for name in destinations:
        if not isinstance(name, str) or name not in known:
            listed = ", ".join(sorted(known)) or "none configured"
            raise UnknownDestination(f"unknown destination {str(name)[:100]!r} (known: {listed})")
    prio = priority or settings.distribution.default_priority
    if prio not in settings.distribution.priorities:
        raise UsageError(f"unknown priority {prio!r} (known: {', '.join(settings.distribution.priorities)})")
    if correlation_id is not None and (not isinstance(correlation_id, str) or not 0 < len(correlation_id) <= 200):
        raise UsageError("correlation_id must be a string of 1 to 200 characters")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200):
        raise UsageError("idempotency_key must be a string of 1 to 200 characters")
    correlation = correlation_id or str(uuid.uuid4())
    out = []
    for name in destinations:
        dest = known[name]
        limit = dest.max_payload_bytes or settings.distribution.max_payload_bytes
        if len(body) > limit:
            raise PayloadTooLarge(
                f"payload is {len(body)} bytes, over the {limit}-byte limit of destination {name!r}"
            )
        out.append(
            jobs.NewJob(
                distribution_id=str(uuid.uuid4()),
                destination=name,
                payload=body,
                content_type=content_type,
                correlation_id=correlation,
                priority=prio,
                idempotency_key=idempotency_key,
                max_attempts=dest.max_attempts or settings.distribution.max_attempts,
            )
        )
    return out, correlation


async def record_and_enqueue(
    conn: psycopg.AsyncConnection[Any], queue: Queue, new: Sequence[jobs.NewJob]
) -> tuple[list[jobs.NewJob], dict[tuple[str, str], str], bool]:
    """Insert job rows (one transaction), then XADD the fresh ones."""
    async with conn.transaction():
        fresh, existing = await jobs.insert_jobs(conn, new)
    enqueued = True
    if fresh:
        try:
            await queue.enqueue((j.priority, j.distribution_id, j.destination) for j in fresh)
        except (RedisError, OSError) as exc:
            enqueued = False
            log.warning(
                "accepted but not enqueued; the reconciler will enqueue from Postgres",
                error=str(exc)[:200],
                count=len(fresh),
            )
    return fresh, existing, enqueued


async def submit(
    conn: psycopg.AsyncConnection[Any],
    queue: Queue,
    settings: Settings,
    destinations: Sequence[str],
    payload: Any,
    *,
    content_type: str = "application/json",
    correlation_id: str | None = None,
    priority: str | None = None,
    idempotency_key: str | None = None,
) -> Submitted:
    """Accept one distribution for one or more destinations."""
    body = encode_payload(payload)
    new, correlation = build_jobs(
        settings,
        list(destinations),
        body,
        content_type=content_type,
        correlation_id=correlation_id,
        priority=priority,
        idempotency_key=idempotency_key,
    )
    fresh, existing, enqueued = await record_and_enqueue(conn, queue, new)
    result = Submitted(correlation_id=correlation, enqueued=enqueued)
    fresh_ids = {j.destination: j.distribution_id for j in fresh}
    for job in new:
        did = fresh_ids.get(job.destination) or existing[(job.idempotency_key or "", job.destination)]
        result.distributions.append({"distribution_id": did, "destination": job.destination})
    result.replayed = bool(existing) and not fresh
    if existing:
        # A replay answers with what the first submit made, correlation included.
        row = await (
            await conn.execute(
                "SELECT correlation_id FROM distribution_jobs WHERE distribution_id = %s::uuid",
                (result.distributions[0]["distribution_id"],),
            )
        ).fetchone()
        if row and row[0]:
            result.correlation_id = row[0]
    return result
