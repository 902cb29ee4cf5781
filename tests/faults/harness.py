"""What the fault tests share: engine processes on a test's servers, submitting, waiting
for a run to settle, and the ledger of a run against a loopback sink."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis

from ms07.ops.submit import submit
from ms07.runtime import Runtime
from tests.faults.ledger import Ledger, Row, collect, deliveries_from, open_count
from tests.support import EngineProcess, Sink, wait_for, write_config

# Fast failure detection: a dead worker's entries are reclaimed 2 s after their last
# delivery. The reconciler waits 10 minutes, so what these tests see recovered was
# recovered by the reclaim path, not repaired from Postgres behind its back.
FAST = {
    "timeout_seconds": 1,
    "connect_timeout_seconds": 1,
    "claim_idle_seconds": 2,
    "retry_base_delay_seconds": 0.05,
    "max_retry_delay": 0.2,
    "scheduler_interval_seconds": 0.05,
    "max_deliveries": 3,
    "reconcile_after_seconds": 600,
}


def engine_config(tmp_path: Path, destinations: list[dict[str, Any]], *, concurrency: int = 8,
                  prefetch: float = 4, **dist: Any) -> Path:
    return write_config(tmp_path / "engine.yaml", {
        "service": {"drain_grace_seconds": 5, "heartbeat_interval_seconds": 1, "concurrency": concurrency,
                    "prefetch": prefetch},
        "distribution": {**FAST, **dist},
        "destinations": destinations,
    })


async def submit_many(settings: Any, destination: str, payloads: list[Any]) -> list[str]:
    """Submit through the library, as ``ms07 submit`` does; the ids it returned."""
    async with Runtime(settings, migrate=False) as rt:
        q = await rt.queue()
        async with rt.connection() as conn:
            return [(await submit(conn, q, settings, [destination], p)).distributions[0]["distribution_id"]
                    for p in payloads]


async def exit_code(proc: EngineProcess, seconds: float = 30) -> int:
    return await asyncio.to_thread(proc.wait, seconds)


async def settled(database_url: str, ids: list[str]) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await open_count(conn, ids) == 0


async def wait_settled(database_url: str, ids: list[str], seconds: float = 40) -> None:
    await wait_for(lambda: settled(database_url, ids), timeout=seconds, interval=0.2, what="every job settled")


async def ledger(name: str, database_url: str, redis_url: str, sink: Sink, submitted: list[str], *,
                 allowed_dlq: dict[str, int] | None = None) -> Ledger:
    """The run's ledger; ``allowed_dlq``: how many parked jobs per reason the test's faults
    explain (default none)."""
    deliveries = deliveries_from((r.headers, r.body, r.status) for r in sink.received)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await collect(conn, client, name, submitted, deliveries, allowed_dlq=allowed_dlq)
    finally:
        await client.aclose()


async def attempts_by_worker(database_url: str, worker_id: str) -> list[tuple[str, str]]:
    """(distribution id, status) of every attempt row a worker wrote."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT distribution_id::text, status FROM distribution_attempts WHERE worker_id = %s", (worker_id,))
        return [(r[0], r[1]) for r in await cur.fetchall()]


def crash_env(point: str, skip: int = 0, worker_id: str = "crash-a") -> dict[str, str]:
    return {"MS07_CRASH_AT": point, "MS07_CRASH_SKIP": str(skip), "MS07_SERVICE__WORKER_ID": worker_id}


REPORT: list[Ledger | Row] = []  # every ledger of this session, printed at the end (conftest)
