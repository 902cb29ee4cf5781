"""The ``destinations`` table: the config's destinations, their health and circuit state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ms07.config import DestinationConfig
from ms07.store.status import JobStatus


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


# ------------------------------------------------------------ managed destinations (0004)
#
# Rows with a ``spec`` are the destinations in force (PostgreSQL is their source of truth;
# docs/operations.md, "Destinations at runtime"). Every change bumps ``version`` and
# notifies CHANNEL in the same transaction: the engines LISTEN and rebuild what changed.

CHANNEL = "ms07_destinations"


async def managed(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Every managed destination: name, spec, version, paused state, timestamps."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT name, spec, version, paused, paused_at, paused_reason, created_at, updated_at, changed_by,
                      secrets
                 FROM destinations WHERE spec IS NOT NULL ORDER BY name"""
        )
        return list(await cur.fetchall())


async def upsert(conn: psycopg.AsyncConnection[Any], spec: dict[str, Any], public: dict[str, Any],
                 changed_by: str) -> int | None:
    """Write one destination's spec; the new version, or None when nothing changed."""
    cur = await conn.execute(
        """INSERT INTO destinations (name, url, health_url, configuration, enabled, spec, version, changed_by)
           VALUES (%(name)s, %(url)s, %(health_url)s, %(public)s, %(enabled)s, %(spec)s, 1, %(by)s)
           ON CONFLICT (name) DO UPDATE
              SET url = EXCLUDED.url, health_url = EXCLUDED.health_url, configuration = EXCLUDED.configuration,
                  enabled = EXCLUDED.enabled, spec = EXCLUDED.spec, version = destinations.version + 1,
                  changed_by = EXCLUDED.changed_by, updated_at = now()
            WHERE destinations.spec IS DISTINCT FROM EXCLUDED.spec
           RETURNING version""",
        {"name": spec["name"], "url": spec["url"], "health_url": spec.get("health_url"), "public": Jsonb(public),
         "enabled": spec.get("enabled", True), "spec": Jsonb(spec), "by": changed_by},
    )
    row = await cur.fetchone()
    if row is None:
        return None
    await notify(conn, spec["name"])
    return int(row[0])


async def remove(conn: psycopg.AsyncConnection[Any], name: str) -> bool:
    cur = await conn.execute("DELETE FROM destinations WHERE name = %s AND spec IS NOT NULL", (name,))
    if cur.rowcount:
        await notify(conn, name)
    return bool(cur.rowcount)


async def set_paused(conn: psycopg.AsyncConnection[Any], name: str, paused: bool, reason: str | None,
                     changed_by: str) -> bool | None:
    """Pause or resume; True when the state changed, False when it already was, None when
    there is no such destination."""
    cur = await conn.execute(
        """UPDATE destinations SET paused = %s, paused_at = CASE WHEN %s THEN now() END, paused_reason = %s,
                  version = version + 1, changed_by = %s, updated_at = now()
            WHERE name = %s AND spec IS NOT NULL AND paused <> %s RETURNING name""",
        (paused, paused, reason if paused else None, changed_by, name, paused),
    )
    if cur.rowcount:
        await notify(conn, name)
        return True
    cur = await conn.execute("SELECT 1 FROM destinations WHERE name = %s AND spec IS NOT NULL", (name,))
    return False if await cur.fetchone() else None


async def notify(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    """Sent when the caller's transaction commits (PostgreSQL holds NOTIFY until then)."""
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, name))


async def lock(conn: psycopg.AsyncConnection[Any]) -> None:
    """Serialise changes of the managed set (two replicas seeding it at once, an apply
    racing an API call) until the caller's transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))


_LOCK = 0x6D733038  # "ms08": beside the migration lock "ms07"


async def paused_with_held(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Each paused destination, when and why, and how many of its jobs are held."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT d.name, d.paused_at, d.paused_reason,
                       (SELECT count(*) FROM distribution_jobs j
                         WHERE j.destination_name = d.name AND j.status = '{JobStatus.PAUSED}') AS held
                  FROM destinations d WHERE d.paused AND d.spec IS NOT NULL ORDER BY d.name"""
        )
        return list(await cur.fetchall())


async def set_secrets(conn: psycopg.AsyncConnection[Any], name: str, given: dict[str, Any], keep: list[str],
                      changed_by: str, *, bump: bool = True) -> None:
    """Merge ``given`` ({field: {"ciphertext", "fingerprint", "changed_at"}}) into the
    destination's stored secrets, dropping any field not in ``keep``; ``bump``: a new
    version and a NOTIFY (a rekey changes no value: neither)."""
    await conn.execute(
        """UPDATE destinations
              SET secrets = COALESCE((SELECT jsonb_object_agg(k, v) FROM jsonb_each(secrets || %s) AS e(k, v)
                                       WHERE k = ANY(%s)), '{}'::jsonb),
                  version = version + %s, changed_by = %s, updated_at = now()
            WHERE name = %s""",
        (Jsonb(given), keep, 1 if bump else 0, changed_by, name),
    )
    if bump:
        await notify(conn, name)


def _unfinished() -> str:
    from ms07.store.status import HELD, OPEN, sql_list

    return sql_list(OPEN | HELD)


_UNFINISHED_COUNTS = f"""SELECT status, count(*)
  FROM distribution_jobs WHERE destination_name = %s AND status IN {_unfinished()} GROUP BY status"""
_PARK_UNFINISHED = f"""UPDATE distribution_jobs
   SET status = '{JobStatus.DEAD}', last_error_code = %s, last_error = %s, updated_at = now(), completed_at = now()
 WHERE destination_name = %s AND status IN {_unfinished()} RETURNING distribution_id::text"""
_RELEASE_HELD = f"""
UPDATE distribution_jobs
   SET status = '{JobStatus.QUEUED}', next_attempt_at = NULL, updated_at = now()
 WHERE distribution_id IN (
       SELECT distribution_id
         FROM distribution_jobs
        WHERE destination_name = ANY(%s) AND status = '{JobStatus.PAUSED}'
        ORDER BY destination_name, created_at LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING distribution_id::text, destination_name, priority
"""


async def unfinished_counts(conn: psycopg.AsyncConnection[Any], name: str) -> dict[str, int]:
    """A destination's jobs still to deliver (open or held), by status."""
    cur = await conn.execute(_UNFINISHED_COUNTS, (name,))
    return {r[0]: int(r[1]) for r in await cur.fetchall()}


async def park_unfinished(conn: psycopg.AsyncConnection[Any], name: str, code: str, message: str) -> list[str]:
    """Mark a destination's unfinished jobs dead; their ids (for the DLQ)."""
    cur = await conn.execute(_PARK_UNFINISHED, (code, message, name))
    return [r[0] for r in await cur.fetchall()]


async def release_held(conn: psycopg.AsyncConnection[Any], names: list[str], limit: int) -> list[tuple[str, str, str]]:
    """Up to ``limit`` held jobs of these destinations, oldest first, set queued (each by
    one caller: SKIP LOCKED); (id, destination, priority) of each, for the XADD."""
    cur = await conn.execute(_RELEASE_HELD, (names, limit))
    return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]
