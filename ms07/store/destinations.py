"""The ``destinations`` table: the config's destinations, their health and circuit state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ms07.config import DestinationConfig


async def sync_destinations(
    conn: psycopg.AsyncConnection[Any], destinations: Sequence[DestinationConfig]
) -> None:
    """Upsert every configured destination; ones no longer configured are disabled."""
    async with conn.transaction():
        for dest in destinations:
            await conn.execute(
                """INSERT INTO destinations (name, url, health_url, configuration, enabled)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (name) DO UPDATE
                      SET url = EXCLUDED.url, health_url = EXCLUDED.health_url,
                          configuration = EXCLUDED.configuration, enabled = EXCLUDED.enabled,
                          updated_at = now()""",
                (dest.name, dest.url, dest.health_url, Jsonb(dest.public()), dest.enabled),
            )
        await conn.execute(
            "UPDATE destinations SET enabled = false, updated_at = now() "
            "WHERE NOT (name = ANY(%s)) AND enabled",
            ([d.name for d in destinations],),
        )


async def list_destinations(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT name, url, health_url, health_status, last_health_check,
                      last_health_latency_ms, last_health_error, configuration, enabled,
                      circuit_state, circuit_changed_at
                 FROM destinations ORDER BY name"""
        )
        return list(await cur.fetchall())


async def set_health(
    conn: psycopg.AsyncConnection[Any],
    name: str,
    status: str,
    latency_ms: float | None,
    error: str | None,
) -> None:
    await conn.execute(
        """UPDATE destinations
              SET health_status = %s, last_health_check = now(), last_health_latency_ms = %s,
                  last_health_error = %s
            WHERE name = %s""",
        (status, latency_ms, error, name),
    )


async def set_circuit(conn: psycopg.AsyncConnection[Any], name: str, state: str) -> None:
    await conn.execute(
        """UPDATE destinations SET circuit_state = %s, circuit_changed_at = now()
            WHERE name = %s AND circuit_state <> %s""",
        (state, name, state),
    )
