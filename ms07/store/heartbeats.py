"""Worker heartbeats: one row per worker, plus RSS samples for the memory trend."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg.rows import dict_row


async def beat(
    conn: psycopg.AsyncConnection[Any],
    *,
    worker_id: str,
    host: str,
    pid: int,
    started_at: dt.datetime,
    status: str,
    in_flight: int,
    rss_bytes: int,
    version: str,
    delivered: int,
    failed: int,
) -> None:
    """Upsert the worker's row and append an RSS sample, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO worker_heartbeats
                   (worker_id, host, pid, started_at, updated_at, status, in_flight, rss_bytes,
                    version, delivered, failed)
               VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s, %s, %s)
               ON CONFLICT (worker_id) DO UPDATE
                  SET updated_at = now(), status = EXCLUDED.status,
                      in_flight = EXCLUDED.in_flight, rss_bytes = EXCLUDED.rss_bytes,
                      delivered = EXCLUDED.delivered, failed = EXCLUDED.failed""",
            (worker_id, host, pid, started_at, status, in_flight, rss_bytes, version, delivered, failed),
        )
        await conn.execute(
            """INSERT INTO worker_heartbeat_samples (worker_id, sampled_at, rss_bytes, in_flight)
               VALUES (%s, now(), %s, %s) ON CONFLICT DO NOTHING""",
            (worker_id, rss_bytes, in_flight),
        )


async def list_workers(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT worker_id, host, pid, started_at, updated_at, status, in_flight, rss_bytes,
                      version, delivered, failed,
                      EXTRACT(EPOCH FROM (now() - updated_at)) AS seconds_since_update
                 FROM worker_heartbeats ORDER BY worker_id"""
        )
        return list(await cur.fetchall())


async def rss_samples(
    conn: psycopg.AsyncConnection[Any], since_seconds: float
) -> list[tuple[str, dt.datetime, int]]:
    cur = await conn.execute(
        """SELECT worker_id, sampled_at, rss_bytes FROM worker_heartbeat_samples
            WHERE sampled_at >= now() - make_interval(secs => %s)
            ORDER BY worker_id, sampled_at""",
        (since_seconds,),
    )
    return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


async def mark_dead(conn: psycopg.AsyncConnection[Any], silent_seconds: float) -> list[str]:
    """Workers silent for ``silent_seconds`` (killed, OOMKilled, lost their node) are
    ``dead``: the health report stops counting them once their work has been reclaimed."""
    cur = await conn.execute(
        """UPDATE worker_heartbeats SET status = 'dead'
            WHERE status IN ('active', 'draining') AND updated_at < now() - make_interval(secs => %s)
        RETURNING worker_id""",
        (silent_seconds,),
    )
    return [r[0] for r in await cur.fetchall()]


async def prune(conn: psycopg.AsyncConnection[Any], keep_days: float = 7.0) -> None:
    await conn.execute(
        "DELETE FROM worker_heartbeat_samples WHERE sampled_at < now() - make_interval(days => %s)",
        (int(keep_days),),
    )
    await conn.execute(
        "DELETE FROM worker_heartbeats WHERE status IN ('stopped', 'dead') "
        "AND updated_at < now() - make_interval(days => %s)",
        (int(keep_days),),
    )


async def forget(conn: psycopg.AsyncConnection[Any], worker_id: str, silent_seconds: float) -> dict[str, Any] | None:
    """Delete the row of a worker silent for at least ``silent_seconds`` (an operator has
    read that it crashed) and return it; None when there is no such worker. A worker that
    beat more recently is alive: :class:`ValueError`, nothing is deleted."""
    async with conn.transaction():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """SELECT worker_id, host, pid, started_at, updated_at, status,
                          EXTRACT(EPOCH FROM (now() - updated_at)) AS seconds_since_update
                     FROM worker_heartbeats WHERE worker_id = %s FOR UPDATE""",
                (worker_id,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            if row["status"] != "stopped" and float(row["seconds_since_update"]) < silent_seconds:
                raise ValueError(
                    f"worker {worker_id} beat {float(row['seconds_since_update']):.0f}s ago: it is alive; "
                    "only a worker that stopped beating can be forgotten"
                )
            await cur.execute("DELETE FROM worker_heartbeats WHERE worker_id = %s", (worker_id,))
            return dict(row)
