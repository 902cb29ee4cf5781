"""The destination registry as operators see it: config, database row, circuit state.

``ms07 destinations list|sync|check``; never shows a secret (auth is the redacted
reference: type, env var and file names).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ms07 import keys, logs
from ms07.config import Settings
from ms07.errors import NotFound
from ms07.probe import probe_full
from ms07.runtime import Runtime
from ms07.store import destinations as dest_store

log = logs.get("destinations")


async def sync(rt: Runtime) -> list[str]:
    """The config's destinations applied to the database (added and changed, none
    removed: ``ms07 destinations apply --prune`` does that)."""
    from ms07.ops import dest_admin
    from ms07.recover.audit import operator

    async with rt.connection() as conn:
        await dest_admin.apply(conn, rt.settings, rt.settings.destinations, prune=False, dry_run=False,
                               operator=operator(), command="ms07 destinations sync")
    return rt.settings.destination_names


async def listing(rt: Runtime) -> list[dict[str, Any]]:
    """Every destination in force (the database's, else the config's) with its health,
    circuit state, pool, auth type and paused state."""
    from ms07.ops import dest_admin

    async with rt.connection() as conn:
        settings = await dest_admin.settings_in_force(conn, rt.settings)
        rows = {r["name"]: r for r in await dest_store.list_destinations(conn)}
        managed = await dest_admin.rows(conn)
    redis = await rt.redis()
    out = []
    for dest in settings.effective.values():
        row = rows.get(dest.name, {})
        circuit = await redis.hgetall(keys.circuit(dest.name))
        out.append({
            "name": dest.name,
            "url": dest.url,
            "health_url": dest.health_url,
            "enabled": dest.enabled,
            "health_status": row.get("health_status", "unknown"),
            "last_health_check": row.get("last_health_check"),
            "last_health_error": row.get("last_health_error"),
            "circuit_state": circuit.get("state") or row.get("circuit_state", "closed"),
            "pool": {"max_connections": dest.pool.max_connections,
                     "max_keepalive_connections": dest.pool.max_keepalive_connections,
                     "keepalive_expiry": dest.pool.keepalive_expiry},
            "timeout_seconds": dest.timeout_seconds,
            "batch": None if dest.batch is None else {"max_items": dest.batch.max_items,
                                                      "max_wait_ms": dest.batch.max_wait_ms},
            "rate_limit_per_second": dest.rate_limit.per_second if dest.rate_limit else None,
            "auth": dest.auth.type,
            "auth_reference": dest.auth.redacted(),
            "signing": dest.signing is not None,
            "paused": bool(managed.get(dest.name, {}).get("paused")),
            "version": managed.get(dest.name, {}).get("version"),
        })
    return out


async def check_in_force(
    settings: Settings, names: list[str] | None = None, timeout: float | None = None
) -> list[dict[str, Any]]:
    """``check`` of the destinations in force: the database's when PostgreSQL answers
    (a destination added at runtime is probed too), else the config's."""
    from ms07.ops import dest_admin

    try:
        async with Runtime(settings, migrate=False) as rt, asyncio.timeout(15):
            async with rt.connection() as conn:
                settings = await dest_admin.settings_in_force(conn, settings)
    except Exception as exc:  # PostgreSQL away or a schema before runtime destinations
        log.info("destinations check: the config's list (the database's is out of reach)",
                 error=logs.clip(str(exc), 200))
    return await check(settings, names, timeout)


async def check(
    settings: Settings, names: list[str] | None = None, timeout: float | None = None
) -> list[dict[str, Any]]:
    """The live probe (DNS, TCP, HTTP GET of the health URL, or the URL) of each destination."""
    from ms07.engine.auth import provider_for

    dests = list(settings.effective.values())
    if names:
        unknown = [n for n in names if n not in settings.destination_names]
        if unknown:
            raise NotFound(f"unknown destination {unknown[0]!r} (known: {', '.join(settings.destination_names)})")
        dests = [d for d in dests if d.name in names]
    timeout = timeout or settings.service.probe_timeout_seconds
    probes = await asyncio.gather(*(
        probe_full(d.health_url or d.url, timeout=timeout, auth=provider_for(d)) for d in dests
    ))
    return [{"name": d.name, **p.as_dict()} for d, p in zip(dests, probes, strict=True)]
