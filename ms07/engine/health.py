"""The guide's health report: ``status``, ``timestamp``, ``version`` and ``checks`` for
database, redis, queue, workers and destinations, each healthy|degraded|unhealthy."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time
from typing import TYPE_CHECKING, Any

from ms07 import __version__, keys
from ms07.engine.upkeep import rss_bytes
from ms07.store import destinations as dest_store
from ms07.store import heartbeats

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
_ORDER = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
CHECK_TIMEOUT = 2.0


def worst(*states: str) -> str:
    return max(states, key=lambda s: _ORDER[s]) if states else HEALTHY


async def _timed(coro: Any) -> Any:
    return await asyncio.wait_for(coro, timeout=CHECK_TIMEOUT)


async def _database(engine: Engine) -> tuple[str, dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        async def q() -> None:
            async with engine.pool.connection(timeout=CHECK_TIMEOUT) as conn:
                await conn.execute("SELECT 1")

        await _timed(q())
        return HEALTHY, {"latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
    except Exception as exc:
        return UNHEALTHY, {"error": type(exc).__name__}


async def _redis(engine: Engine) -> tuple[str, dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        await _timed(engine.queue.redis.ping())
        return HEALTHY, {"latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
    except Exception as exc:
        return UNHEALTHY, {"error": type(exc).__name__}


async def _queue(engine: Engine) -> tuple[str, dict[str, Any]]:
    try:
        stats = await _timed(engine.queue.stats())
    except Exception as exc:
        return UNHEALTHY, {"error": type(exc).__name__}
    state = HEALTHY
    claim_ms = engine.dist.claim_idle_seconds * 1000
    for q in stats["queues"].values():
        if q["group"] is None:
            state = worst(state, DEGRADED)
        if q["delayed_overdue"]:
            state = worst(state, DEGRADED)
        idle = q.get("oldest_pending_idle_ms")
        if idle is not None and idle > 2 * claim_ms:
            state = worst(state, DEGRADED)
    return state, stats


async def _workers(engine: Engine) -> tuple[str, list[dict[str, Any]]]:
    try:
        async def q() -> list[dict[str, Any]]:
            async with engine.pool.connection(timeout=CHECK_TIMEOUT) as conn:
                return await heartbeats.list_workers(conn)

        rows = await _timed(q())
        live = set()
        async for key in engine.queue.redis.scan_iter(match=keys.HEARTBEAT_PATTERN, count=500):
            live.add(key.split(":", 2)[2])
    except Exception:
        return UNHEALTHY, []
    stale_after = engine.settings.diagnose.stale_worker_minutes * 60
    workers = []
    stale = 0
    for r in rows:
        if r["status"] in ("stopped", "dead"):
            continue
        is_stale = float(r["seconds_since_update"]) > stale_after
        stale += is_stale
        workers.append({**r, "live": r["worker_id"] in live, "stale": is_stale})
    state = HEALTHY if live else DEGRADED
    if stale:
        state = worst(state, DEGRADED)
    return state, workers


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if len(values) < 2:
        v = values[0] * 1000 if values else None
        return {"p50_ms": v, "p95_ms": v, "p99_ms": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 2), "p95_ms": round(q[94] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


async def _destinations(engine: Engine) -> tuple[str, list[dict[str, Any]]]:
    try:
        async def q() -> list[dict[str, Any]]:
            async with engine.pool.connection(timeout=CHECK_TIMEOUT) as conn:
                return await dest_store.list_destinations(conn)

        rows = {r["name"]: r for r in await _timed(q())}
    except Exception:
        rows = {}
    out = []
    states = []
    for name, client in engine.clients.items():
        row = rows.get(name, {})
        breaker = engine.breakers[name]
        health = row.get("health_status", "unknown")
        state = HEALTHY
        if breaker.state != "closed" or health == "unhealthy":
            state = DEGRADED
        states.append(state)
        out.append({
            "name": name,
            "url": client.url,
            "health": health,
            "last_health_check": row.get("last_health_check"),
            "circuit_state": breaker.state,
            "pool": client.pool_usage(),
            "auth": client.config.auth.type,
            **_percentiles(list(engine.recent_latency.get(name, ()))),
        })
    if states and all(s == DEGRADED for s in states) and len(states) > 1:
        return DEGRADED, out
    return worst(*states), out


async def readiness(engine: Engine, details: bool = False) -> dict[str, Any]:
    (db, db_info), (rd, rd_info) = await asyncio.gather(_database(engine), _redis(engine))
    if rd == HEALTHY:
        (qs, q_info), (ws, w_info), (ds, d_info) = await asyncio.gather(
            _queue(engine), _workers(engine), _destinations(engine)
        )
    else:
        (qs, q_info), (ws, w_info) = (UNHEALTHY, {}), (UNHEALTHY, [])
        ds, d_info = await _destinations(engine)
    if db != HEALTHY:
        ws = UNHEALTHY
    checks = {"database": db, "redis": rd, "queue": qs, "workers": ws, "destinations": ds}
    status = worst(*checks.values())
    if db == UNHEALTHY or rd == UNHEALTHY or engine.draining:
        status = UNHEALTHY
    elif status == UNHEALTHY:
        status = DEGRADED
    report: dict[str, Any] = {
        "status": status,
        "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "version": __version__,
        "checks": checks,
    }
    if engine.draining:
        report["draining"] = True
    if details:
        report["details"] = {
            "database": db_info,
            "redis": rd_info,
            "queue": q_info,
            "workers": w_info,
            "destinations": d_info,
        }
    return report


async def detailed(engine: Engine) -> dict[str, Any]:
    report = await readiness(engine, details=True)
    d = report.pop("details")
    pool_stats = engine.pool.get_stats() if engine.pool is not None else {}
    queue = d["queue"] if isinstance(d["queue"], dict) else {}
    report.update({
        "worker_id": engine.worker_id,
        "uptime_seconds": round((dt.datetime.now(dt.UTC) - engine.started_at).total_seconds(), 1),
        "process": {"rss_bytes": rss_bytes(), "in_flight": engine.in_flight, "concurrency": engine.concurrency,
                    "delivered": engine.delivered, "failed": engine.failed},
        "database": {**d["database"], "pool": {
            "size": pool_stats.get("pool_size"), "available": pool_stats.get("pool_available"),
            "max": engine.pool.max_size if engine.pool is not None else None,
            "waiting": pool_stats.get("requests_waiting", 0)}},
        "redis": d["redis"],
        "queues": queue.get("queues", {}),
        "dlq_size": queue.get("dlq"),
        "destinations": d["destinations"],
        "workers": d["workers"],
    })
    return report
