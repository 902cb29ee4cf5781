"""The engine's upkeep loops. Each runs forever, logs what goes wrong and goes on.

- scheduler: due retries from the delayed sets back to their streams (Lua, replica-safe);
- reclaimer: entries idle past ``claim_idle_seconds`` taken from dead consumers; poison
  (delivered more than ``max_deliveries`` times) parked; long deliveries kept alive;
- reconciler: open jobs Postgres holds that Redis lost are enqueued again (one replica
  at a time, under a Redis lock);
- heartbeat: ``worker:heartbeat:<id>`` with a TTL and a ``worker_heartbeats`` row;
- health probes, queue metrics, the memory guard.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psutil

from ms07 import __version__, keys, logs
from ms07.engine import crash
from ms07.engine.backoff import stop_swallowed_cancel
from ms07.engine.committer import DlqRecord, to_dlq
from ms07.engine.delivery import ErrorCode
from ms07.store import destinations as dest_store
from ms07.store import heartbeats, jobs

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

log = logs.get("upkeep")
_process = psutil.Process()


def rss_bytes() -> int:
    return int(_process.memory_info().rss)


def start_loops(engine: Engine) -> list[asyncio.Task[Any]]:
    s = engine.settings
    d = s.distribution
    loops: list[tuple[str, float, Callable[[Engine], Awaitable[Any]]]] = [
        ("scheduler", d.scheduler_interval_seconds, move_due),
        ("reclaimer", reclaim_interval(engine), reclaim),
        ("reconciler", d.reconcile_interval_seconds, reconcile),
        ("heartbeat", s.service.heartbeat_interval_seconds, heartbeat),
        ("health", s.service.health_check_interval_seconds, probe_health),
        ("metrics", 5.0, refresh_metrics),
        ("memory", s.memory.check_interval_seconds, memory_guard),
        ("circuits", 1.0, publish_circuits),
    ]
    return [asyncio.create_task(_forever(engine, *spec), name=spec[0]) for spec in loops]


async def _forever(engine: Engine, name: str, interval: float, fn: Callable[[Engine], Awaitable[Any]]) -> None:
    component = logs.get(name)
    task = asyncio.current_task()
    # The flag, not only the cancel: a library that turns a CancelledError into its own
    # error (seen with connections cut mid-command) would otherwise keep the loop alive.
    while not engine.loops_stopping:
        try:
            await fn(engine)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if engine.loops_stopping:
                return
            engine.loop_errors[name] += 1
            component.warning(f"{name} pass failed; will retry", error=logs.clip(f"{type(exc).__name__}: {exc}", 300))
        stop_swallowed_cancel(task)
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------- scheduler


async def move_due(engine: Engine) -> None:
    for q in engine.queue.priorities:
        while True:
            now = time.time()  # one instant for the crash point's look and the move itself
            if crash.armed("scheduler_move") and await engine.queue.redis.zcount(keys.delayed(q), "-inf", now):
                crash.point("scheduler_move")
            moved = await engine.queue.move_due(q, now=now, limit=500)
            if moved:
                crash.point("scheduler_moved")
            if moved < 500:
                break


# ---------------------------------------------------------------------- reclaimer


def reclaim_interval(engine: Engine) -> float:
    return max(0.5, min(engine.dist.claim_idle_seconds / 3, 15.0))


# worker id -> (queue, entry id) of the suspect entry that worker is trying, if any
_suspects: dict[str, tuple[str, str]] = {}


async def reclaim(engine: Engine) -> None:
    if engine.draining:
        return
    await keep_alive(engine)
    for q in engine.queue.priorities:
        free = engine.max_held - engine.in_flight
        if free <= 0:
            return
        await _take_over(engine, q, await _reclaim(engine, q, free, suspects=0))
    await reclaim_suspects(engine)


async def _reclaim(engine: Engine, q: str, free: int, suspects: int) -> Any:
    d = engine.dist
    return await engine.queue.reclaim(q, engine.worker_id, int(d.claim_idle_seconds * 1000), d.max_deliveries,
                                      count=min(free, 100), suspects=suspects)


async def reclaim_suspects(engine: Engine) -> None:
    """Entries whose holder died with them more than once may be what kills workers
    (a poison entry): take them one at a time, each to its outcome, so that a poison
    entry takes no innocent entry down with it on its way to the DLQ. Reclaimed together,
    the whole batch a poison entry was read with died with it on every try, and was
    parked as poison with it."""
    deadline = time.monotonic() + reclaim_interval(engine)
    while not engine.draining and time.monotonic() < deadline:
        if _suspects.get(engine.worker_id) in _held_keys(engine):
            return  # the previous one is still running
        suspect = None
        for q in engine.queue.priorities:
            free = engine.max_held - engine.in_flight
            if free <= 0:
                return
            result = await _reclaim(engine, q, free, suspects=1)
            suspect = next((e for e in result.entries if e.deliveries > 2), None)
            await _take_over(engine, q, result, alone=suspect)
            if suspect is not None:
                break
        if suspect is None:
            return
        _suspects[engine.worker_id] = (suspect.queue, suspect.entry_id)
        while (suspect.queue, suspect.entry_id) in _held_keys(engine) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def _held_keys(engine: Engine) -> set[tuple[str, str]]:
    return {(h.entry.queue, h.entry.entry_id) for h in engine.held_entries()}


async def _take_over(engine: Engine, q: str, result: Any, alone: Any = None) -> None:
    if result.vanished:
        log.warning(
            "pending entries vanished from the stream; the reconciler will re-enqueue their jobs",
            count=len(result.vanished),
            queue=q,
        )
    if result.poison:
        await park_poison(engine, result.poison)
    if result.entries:
        engine.metrics.reclaimed.inc(len(result.entries))
        log.info("reclaimed entries from a dead consumer", count=len(result.entries), queue=q)
        others = [e for e in result.entries if e is not alone]
        if others:
            await engine.dispatch(others)
        if alone is not None:
            log.warning("trying alone an entry whose worker died with it before",
                        entry_id=alone.entry_id, queue=q, deliveries=alone.deliveries)
            await engine.dispatch([alone])


async def refile_parked(engine: Engine, entries: list[tuple[Any, str]]) -> bool:
    """Reclaimed entries whose jobs Postgres already holds parked: their worker died between
    recording the outcome and writing the DLQ entry (``Engine._commit`` writes Postgres
    first). Their DLQ entries are filed now, before the entries are acked as duplicates.
    A worker that died after its DLQ write but before its ack leaves the job filed twice: a
    duplicate DLQ entry, never a parked job missing from the DLQ. False if Postgres or
    Redis failed: the entries stay pending, to be filed at the next reclaim."""
    try:
        async with engine.pool.connection() as conn:
            parked = await jobs.parked_errors(conn, [did for _, did in entries])
        records = []
        for e, did in entries:
            if did in parked:
                destination, status, code, error = parked[did]
                records.append(DlqRecord(did, destination, jobs.dlq_reason(status, code), code or "",
                                         (error or "")[:500], e.entry_id, e.queue))
        await to_dlq(engine.queue, records)
    except Exception as exc:  # Postgres or Redis away: the next reclaim tries again
        log.warning("cannot file the DLQ entries of reclaimed parked jobs; they stay pending",
                    count=len(entries), error=f"{type(exc).__name__}: {exc}"[:200])
        return False
    if records:
        log.warning("filed the DLQ entries of parked jobs whose worker died before writing them",
                    count=len(records))
    return True


async def park_poison(engine: Engine, entries: list[Any]) -> None:
    """Entries that killed their worker on every try: job dead, DLQ entry, ack."""
    from ms07.queue import InvalidMessage, parse_entry

    reason = f"delivered {engine.dist.max_deliveries + 1} times without an outcome (poison)"
    ids: list[str] = []
    records = []
    for e in entries:
        try:
            did = parse_entry(e.fields)
        except InvalidMessage:
            did = ""
        if did:
            ids.append(did)
        records.append(DlqRecord(did, e.fields.get("destination", ""), "poison", ErrorCode.POISON_MESSAGE, reason,
                                 e.entry_id, e.queue))
    async with engine.pool.connection() as conn:
        await jobs.park_jobs(conn, ids, ErrorCode.POISON_MESSAGE, reason)
    await to_dlq(engine.queue, records)
    by_queue: dict[str, list[str]] = {}
    for e in entries:
        by_queue.setdefault(e.queue, []).append(e.entry_id)
    for q, eids in by_queue.items():
        await engine.queue.ack(q, eids)
    engine.metrics.requests.labels("failed").inc(len(ids))
    log.error("poison entries parked in the DLQ", count=len(entries), error_code=ErrorCode.POISON_MESSAGE)


async def keep_alive(engine: Engine) -> None:
    """Deliveries running longer than half the claim idle time: reset their idle time and
    lease so no other worker takes them over while they still run."""
    horizon = time.monotonic() - engine.dist.claim_idle_seconds / 2
    old = [h for h in engine.held_entries() if h.since < horizon and h.job is not None]
    if not old:
        return
    by_queue: dict[str, list[str]] = {}
    for h in old:
        by_queue.setdefault(h.entry.queue, []).append(h.entry.entry_id)
        h.since = time.monotonic()
    for q, eids in by_queue.items():
        await engine.queue.touch(q, engine.worker_id, eids)
    async with engine.pool.connection() as conn:
        await conn.execute(
            "UPDATE distribution_jobs SET started_at = now() WHERE distribution_id = ANY(%s::uuid[]) "
            "AND status = 'processing'",
            ([h.job.distribution_id for h in old if h.job],),
        )


# ---------------------------------------------------------------------- reconciler


async def reconcile(engine: Engine, older_than: float | None = None) -> int:
    """Enqueue again the open jobs Redis no longer holds. Returns how many."""
    redis = engine.queue.redis
    token = f"{engine.worker_id}:{time.time()}"
    # A short lease renewed while the pass runs, not one as long as the longest pass: a
    # replica killed while holding it (chaos: a SIGKILL just after a FLUSHALL) blocked
    # every other replica's repair for the whole TTL (30-120 s); now for RECONCILE_LEASE.
    if not await redis.set(keys.RECONCILER_LOCK, token, nx=True, px=int(RECONCILE_LEASE * 1000)):
        return 0
    renew = asyncio.create_task(_renew_lease(redis, token), name="reconciler-lease")
    try:
        n = await requeue_lost(engine.pool, engine.queue, older_than or engine.dist.reconcile_after_seconds)
        engine.metrics.requeued.inc(n)
        await housekeeping(engine)
        return n
    finally:
        renew.cancel()
        await asyncio.gather(renew, return_exceptions=True)
        await redis.eval(_RELEASE_IF_OURS, 1, keys.RECONCILER_LOCK, token)


RECONCILE_LEASE = 10.0  # seconds; renewed every third of it while a pass runs
_EXTEND_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0"""
_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"""


async def _renew_lease(redis: Any, token: str, lease: float = RECONCILE_LEASE) -> None:
    while True:
        await asyncio.sleep(lease / 3)
        if not await redis.eval(_EXTEND_IF_OURS, 1, keys.RECONCILER_LOCK, token, int(lease * 1000)):
            return  # lost (expired under a stall, or Redis flushed): the pass finishes; the next one re-takes it


async def requeue_lost(pool: Any, queue: Any, older_than: float, limit: int = 100_000) -> int:
    """The repair itself, shared with ``recover requeue-from-db``."""
    async with pool.connection() as conn:
        candidates = await jobs.open_jobs_older_than(conn, older_than, limit)
    if not candidates:
        return 0
    present = await queue.contains([c[0] for c in candidates])
    lost_ids = [c[0] for c in candidates if c[0] not in present]
    if not lost_ids:
        return 0
    # Claim the repair in Postgres only for jobs still untouched: a job a worker deferred
    # or finished while Redis was being scanned has a fresh updated_at and is left alone.
    async with pool.connection() as conn:
        claimed = set(await jobs.touch_stale_jobs(conn, lost_ids, older_than))
    lost = [c for c in candidates if c[0] in claimed]
    if not lost:
        return 0
    await queue.enqueue((prio if prio in queue.priorities else queue.priorities[0], did, dest)
                        for did, dest, prio, _ in lost)
    log.warning("re-enqueued jobs that Redis had lost", count=len(lost))
    return len(lost)


async def housekeeping(engine: Engine, consumer_idle_ms: int | None = None) -> None:
    """Workers silent long enough are marked dead; consumers that died holding nothing
    leave the group (one with pending entries stays: deleting it would lose them)."""
    silent = max(3 * engine.settings.service.stale_worker_minutes * 60, 3 * engine.dist.claim_idle_seconds)
    async with engine.pool.connection() as conn:
        dead = await heartbeats.mark_dead(conn, silent)
        await heartbeats.prune(conn)
    if dead:
        log.warning("workers silent too long marked dead", workers=dead)
    redis = engine.queue.redis
    idle_ms = consumer_idle_ms if consumer_idle_ms is not None else int(
        max(engine.dist.claim_idle_seconds, engine.settings.service.heartbeat_ttl_seconds) * 2000)
    for q in engine.queue.priorities:
        for c in await redis.xinfo_consumers(keys.stream(q), keys.GROUP):
            name = c["name"]
            if name == engine.worker_id or int(c.get("pending", 0)) or int(c.get("idle", 0)) < idle_ms:
                continue
            if await redis.exists(keys.heartbeat(name)):
                continue
            await redis.xgroup_delconsumer(keys.stream(q), keys.GROUP, name)


# ---------------------------------------------------------------------- heartbeat


async def heartbeat(engine: Engine, status: str | None = None) -> None:
    status = status or ("draining" if engine.draining else "active")
    rss = rss_bytes()
    payload = {
        "worker_id": engine.worker_id,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": status,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "in_flight": engine.in_flight,
        "rss_bytes": rss,
        "version": __version__,
    }
    ttl = engine.settings.service.heartbeat_ttl_seconds
    if status == "stopped":
        await engine.queue.redis.delete(keys.heartbeat(engine.worker_id))
    else:
        await engine.queue.redis.set(keys.heartbeat(engine.worker_id), json.dumps(payload), ex=ttl)
    async with engine.pool.connection() as conn:
        await heartbeats.beat(
            conn,
            worker_id=engine.worker_id,
            host=payload["host"],
            pid=payload["pid"],
            started_at=engine.started_at,
            status=status,
            in_flight=engine.in_flight,
            rss_bytes=rss,
            version=__version__,
            delivered=engine.delivered,
            failed=engine.failed,
        )


async def farewell(engine: Engine) -> None:
    """Last heartbeat as ``stopped``; leave the group if holding nothing."""
    try:
        await heartbeat(engine, status="stopped")
        for q in engine.queue.priorities:
            consumers = await engine.queue.redis.xinfo_consumers(keys.stream(q), keys.GROUP)
            mine = [c for c in consumers if c["name"] == engine.worker_id]
            # Deleting a consumer that still has pending entries would lose them.
            if mine and int(mine[0].get("pending", 0)) == 0:
                await engine.queue.redis.xgroup_delconsumer(keys.stream(q), keys.GROUP, engine.worker_id)
    except Exception as exc:
        log.warning("could not say goodbye", error=logs.clip(str(exc), 200))


# ---------------------------------------------------------------------- health probes


async def probe_health(engine: Engine) -> None:
    from ms07.probe import probe_http

    targets = [c for c in engine.clients.values() if c.config.health_url]
    if not targets:
        return
    timeout = min(5.0, engine.settings.service.probe_timeout_seconds * 2)

    # With network.deny_private the probes may not reach inside any more than deliveries.
    results = await asyncio.gather(
        *(probe_http(c.config.health_url, timeout=timeout, auth=c.auth, network=engine.settings.network)  # type: ignore[arg-type]
          for c in targets),
        return_exceptions=True,
    )
    verdicts = []
    for client, result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            healthy, latency, error = False, None, logs.clip(f"{type(result).__name__}: {result}", 300)
        else:
            healthy, latency, error = result.healthy, result.latency_ms, result.error
        # The gauge first: it must not freeze while Postgres is away.
        engine.metrics.destination_healthy.labels(client.name).set(1 if healthy else 0)
        verdicts.append((client.name, "healthy" if healthy else "unhealthy", latency, error))
    async with engine.pool.connection() as conn:
        for name, state, latency, error in verdicts:
            await dest_store.set_health(conn, name, state, latency, error)


# ---------------------------------------------------------------------- metrics, memory


async def refresh_metrics(engine: Engine) -> None:
    """The gauges nothing else sets as it happens: queue sizes, workers, RSS, token expiry.

    Local values first, so that a Redis outage leaves them current."""
    from ms07.metrics import CIRCUIT_VALUES

    m = engine.metrics
    m.track(engine.clients, engine.queue.priorities)
    for name, breaker in engine.policy.breakers.items():
        m.circuit_state.labels(name).set(CIRCUIT_VALUES[breaker.current_state()])
    m.draining.set(1 if engine.draining else 0)
    m.rss.set(rss_bytes())
    m.in_flight.set(engine.in_flight)
    stats = await engine.queue.stats()
    for q, info in stats["queues"].items():
        m.queue_depth.labels(q).set(info["length"])
        m.pending.labels(q).set(info["pending"])
        m.delayed.labels(q).set(info["delayed"])
    m.dlq_size.set(stats["dlq"])
    live = 0
    async for _ in engine.queue.redis.scan_iter(match=keys.HEARTBEAT_PATTERN, count=500):
        live += 1
    m.active_workers.set(live)
    for name, client in engine.clients.items():
        expiry = getattr(client.auth, "expires_in", None) if client.auth else None
        if callable(expiry):
            value = expiry()
            if value is not None:
                m.token_expiry.labels(name).set(value)
        # The cached OAuth2 token's expiry (never the token) for `ms07 diagnose auth`.
        expires_at = getattr(client.auth, "expires_at", None) if client.auth else None
        if expires_at and getattr(client.auth, "token", None) is not None:
            key = keys.token_info(name)
            pipe = engine.queue.redis.pipeline(transaction=False)
            pipe.hset(key, mapping={"expires_at": expires_at, "worker_id": engine.worker_id,
                                    "updated_at": time.time()})
            pipe.expire(key, max(60, int(expires_at - time.time()) + 3600))
            await pipe.execute()


async def memory_guard(engine: Engine) -> None:
    from ms07.engine.engine import EXIT_MEMORY_GUARD

    rss = rss_bytes()
    limit = engine.settings.memory.threshold_mb * 1024 * 1024
    if rss > limit and not engine.draining:
        log.warning(
            "memory threshold exceeded; draining and exiting for a restart",
            rss_mb=round(rss / 1048576, 1),
            threshold_mb=engine.settings.memory.threshold_mb,
        )
        engine.request_stop("memory guard", EXIT_MEMORY_GUARD)


async def publish_circuits(engine: Engine) -> None:
    """Circuit transitions to Redis (read by every process) and the destinations row."""
    policy = engine.policy
    if not policy.circuit_updates:
        return
    updates, policy.circuit_updates = policy.circuit_updates, []
    latest = dict(updates)
    for name, state in latest.items():
        breaker = policy.breakers[name]
        await engine.queue.redis.hset(
            keys.circuit(name),
            mapping={"state": state, "worker_id": engine.worker_id, "changed_at": time.time(),
                     "failures": breaker.failures},
        )
        await engine.queue.redis.expire(keys.circuit(name), 3600)
    async with engine.pool.connection() as conn:
        for name, state in latest.items():
            await dest_store.set_circuit(conn, name, state)
