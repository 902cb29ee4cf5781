"""The guide's health report (docs/architecture.md): ``status``, ``timestamp``, ``version`` and ``checks`` for
database, redis, queue, workers and destinations, each healthy|degraded|unhealthy.

Overall status: ``unhealthy`` (HTTP 503) when PostgreSQL or Redis does not answer, or the
engine drains; otherwise the worst check, capped at ``degraded``: a destination that is
down, no live worker, a stale worker still holding pending entries, or a queue without
its group keeps the engine serving, degraded.

Every check has its own timeout (``CHECK_TIMEOUT``) and they run concurrently, so a hung
dependency makes the report slow by at most that much, never hang.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import statistics
import time
from typing import TYPE_CHECKING, Any

from ms07 import __version__, keys, logs
from ms07.engine.upkeep import rss_bytes
from ms07.store import destinations as dest_store
from ms07.store import heartbeats

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
_ORDER = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
CHECK_TIMEOUT = 2.0
FORGET_WORKERS_AFTER = 24 * 3600.0


def worst(*states: str) -> str:
    return max(states, key=lambda s: _ORDER[s]) if states else HEALTHY


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure(exc: BaseException) -> dict[str, Any]:
    # The type only: messages of driver errors can carry host names and user names.
    return {"error": "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__}


async def _timed(coro: Any) -> Any:
    async with asyncio.timeout(CHECK_TIMEOUT):
        return await coro


async def _db(engine: Engine, fn: Any) -> Any:
    async with engine.pool.connection(timeout=CHECK_TIMEOUT) as conn:
        return await fn(conn)


async def _database(engine: Engine) -> tuple[str, dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        await _timed(_db(engine, lambda conn: conn.execute("SELECT 1")))
        return HEALTHY, {"latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
    except Exception as exc:
        return UNHEALTHY, _failure(exc)


async def _redis(engine: Engine) -> tuple[str, dict[str, Any]]:
    t0 = time.perf_counter()
    try:
        await _timed(engine.queue.redis.ping())
        return HEALTHY, {"latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
    except Exception as exc:
        return UNHEALTHY, _failure(exc)


async def _queue(engine: Engine) -> tuple[str, dict[str, Any]]:
    try:
        stats = await _timed(engine.queue.stats())
    except Exception as exc:
        return UNHEALTHY, _failure(exc)
    state = HEALTHY
    claim_ms = engine.dist.claim_idle_seconds * 1000
    for q in stats["queues"].values():
        idle = q.get("oldest_pending_idle_ms")
        # No group (Redis lost it), retries the scheduler leaves behind, or entries nobody
        # reclaims: work is stuck even though Redis answers.
        if q["group"] is None or q["delayed_overdue"] or (idle is not None and idle > 2 * claim_ms):
            state = DEGRADED
    return state, stats


async def _workers(engine: Engine) -> tuple[str, list[dict[str, Any]]]:
    async def collect() -> tuple[list[dict[str, Any]], set[str]]:
        rows = await _db(engine, heartbeats.list_workers)
        live = set()
        async for key in engine.queue.redis.scan_iter(match=keys.HEARTBEAT_PATTERN, count=500):
            live.add(key.split(":", 2)[2])
        return rows, live

    try:
        rows, live = await _timed(collect())
    except Exception:
        return UNHEALTHY, []
    stale_after = engine.settings.service.stale_worker_minutes * 60
    workers = []
    for r in rows:
        since = float(r["seconds_since_update"])
        # Rows of crashed workers stay until housekeeping marks them dead; past a day
        # they are history either way.
        if r["status"] in ("stopped", "dead") or since > FORGET_WORKERS_AFTER:
            continue
        workers.append({**r, "seconds_since_update": round(since, 1), "live": r["worker_id"] in live,
                        "stale": since > stale_after})
    return HEALTHY if live else DEGRADED, workers


def _stuck_workers(workers: list[dict[str, Any]], queue_info: dict[str, Any]) -> bool:
    """Mark stale workers still holding pending entries; True if there is one. A dead
    worker matters while its deliveries wait for a reclaim, not once they are taken over."""
    holding: dict[str, int] = {}
    for q in (queue_info.get("queues") or {}).values():
        for c in q.get("consumers") or []:
            holding[c["name"]] = holding.get(c["name"], 0) + int(c.get("pending") or 0)
    stuck = False
    for w in workers:
        w["pending"] = holding.get(w["worker_id"], 0)
        stuck |= bool(w["stale"] and w["pending"])
    return stuck


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 in milliseconds of latencies given in seconds."""
    if len(values) < 2:
        v = round(values[0] * 1000, 2) if values else None
        return {"p50_ms": v, "p95_ms": v, "p99_ms": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 2), "p95_ms": round(q[94] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


async def _destinations(engine: Engine) -> tuple[str, list[dict[str, Any]]]:
    try:
        rows = {r["name"]: r for r in await _timed(_db(engine, dest_store.list_destinations))}
    except Exception:
        rows = {}  # the database check reports the outage; this worker's own view remains
    out = []
    states = []
    for name, client in engine.clients.items():
        row = rows.get(name, {})
        breaker = engine.policy.breakers[name]
        health = row.get("health_status", "unknown")
        state = DEGRADED if breaker.current_state() != "closed" or health == "unhealthy" else HEALTHY
        states.append(state)
        samples = list(engine.policy.recent_latency.get(name, ()))
        out.append({
            "name": name,
            "url": logs.safe_url(client.url),
            "health": health,
            "last_health_check": row.get("last_health_check"),
            "last_health_latency_ms": row.get("last_health_latency_ms"),
            "last_health_error": logs.redact(row["last_health_error"]) if row.get("last_health_error") else None,
            "state": state,
            "circuit_state": breaker.current_state(),
            "circuit_failures": breaker.failures,
            "pool": client.pool_usage(),
            "auth": client.config.auth.type,
            "latency_samples": len(samples),
            **percentiles(samples),
        })
    # Degraded, never unhealthy: the engine itself can still accept and park work.
    return worst(*states), out


async def readiness(engine: Engine, details: bool = False) -> dict[str, Any]:
    """The ``/health/ready`` body; with ``details`` the evidence of each check too."""
    # All at once, so a dead dependency costs one check timeout, not one per round.
    (db, db_info), (rd, rd_info), (qs, q_info), (ws, w_info), (ds, d_info) = await asyncio.gather(
        _database(engine), _redis(engine), _queue(engine), _workers(engine), _destinations(engine)
    )
    if rd != HEALTHY:
        (qs, q_info), (ws, w_info) = (UNHEALTHY, {}), (UNHEALTHY, [])
    if isinstance(q_info, dict) and _stuck_workers(w_info, q_info):
        ws = worst(ws, DEGRADED)
    if db != HEALTHY:
        ws = UNHEALTHY
    checks = {"database": db, "redis": rd, "queue": qs, "workers": ws, "destinations": ds}
    if db == UNHEALTHY or rd == UNHEALTHY or engine.draining:
        status = UNHEALTHY
    else:
        status = HEALTHY if all(c == HEALTHY for c in checks.values()) else DEGRADED
    report: dict[str, Any] = {"status": status, "timestamp": _now(), "version": __version__, "checks": checks}
    if engine.draining:
        report["draining"] = True
    if details:
        report["details"] = {"database": db_info, "redis": rd_info, "queue": q_info, "workers": w_info,
                             "destinations": d_info}
    return report


def _pg_pool(engine: Engine) -> dict[str, Any]:
    if engine.pool is None:
        return {}
    s = engine.pool.get_stats()
    size, available = s.get("pool_size", 0), s.get("pool_available", 0)
    return {"size": size, "available": available, "in_use": max(0, size - available), "min": engine.pool.min_size,
            "max": engine.pool.max_size, "waiting": s.get("requests_waiting", 0),
            "requests_waiting": s.get("requests_waiting", 0), "connections_errors": s.get("connections_errors", 0)}


def _redis_pool(engine: Engine) -> dict[str, Any]:
    pool = getattr(getattr(engine.queue, "redis", None), "connection_pool", None)
    if pool is None:
        return {}
    in_use = getattr(pool, "_in_use_connections", None)
    idle = getattr(pool, "_available_connections", None)
    return {"in_use": len(in_use) if in_use is not None else None,
            "idle": len(idle) if idle is not None else None,
            "max": getattr(pool, "max_connections", None)}


async def detailed(engine: Engine) -> dict[str, Any]:
    """The ``/health/detailed`` body: readiness plus pools, queues, destinations, workers."""
    report = await readiness(engine, details=True)
    d = report.pop("details")
    queue = d["queue"] if isinstance(d["queue"], dict) and "queues" in d["queue"] else {}
    report.update({
        "worker_id": engine.worker_id,
        "uptime_seconds": round((dt.datetime.now(dt.UTC) - engine.started_at).total_seconds(), 1),
        "process": {"pid": os.getpid(), "worker": engine.worker_index, "rss_bytes": rss_bytes(),
                    "memory_threshold_bytes": int(engine.settings.memory.threshold_mb * 1048576),
                    "in_flight": engine.in_flight, "concurrency": engine.concurrency, "max_held": engine.max_held,
                    "delivered": engine.delivered, "failed": engine.failed},
        "database": {**d["database"], "pool": _pg_pool(engine)},
        "redis": {**d["redis"], "pool": _redis_pool(engine)},
        "queues": queue.get("queues", {}),
        "dlq_size": queue.get("dlq"),
        "destinations": d["destinations"],
        "workers": d["workers"],
    })
    return report
