"""Waiting out PostgreSQL or Redis going away: exponential backoff, and a statement
retried until PostgreSQL answers (docs/architecture.md, "Delivery guarantees": reads,
claims and commits wait with backoff); and the engine's tasks' defence against a
cancellation a library swallowed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from ms07 import logs

log = logs.get("DistributionWorker")
T = TypeVar("T")


class Backoff:
    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.n = base, cap, 0

    def next(self) -> float:
        self.n += 1
        return min(self.cap, self.base * 2 ** (self.n - 1))

    def reset(self) -> None:
        self.n = 0


async def with_db(pool: AsyncConnectionPool, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
                  stopping: Callable[[], bool]) -> T | None:
    """Run ``fn(conn)`` until Postgres answers; None if ``stopping()`` turns true meanwhile."""
    backoff = Backoff()
    while True:
        try:
            async with pool.connection() as conn:
                return await fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            if stopping():
                return None
            delay = backoff.next()
            log.warning("PostgreSQL unavailable; waiting", error=logs.clip(str(exc), 200), retry_in=delay)
            await asyncio.sleep(delay)
        except Exception as exc:  # a pool timeout while Postgres restarts
            if type(exc).__name__ != "PoolTimeout" or stopping():
                raise
            await asyncio.sleep(backoff.next())


def stop_swallowed_cancel(task: asyncio.Task[Any] | None) -> None:
    """Honour a cancellation a library swallowed. A cancel that lands in redis-py at the
    wrong moment can be eaten (redis-py#2028, #2551): the loop then ran on forever and
    Engine.stop() waited for it forever. The request is still counted on the task."""
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
