"""The engine's upkeep loops. Each runs forever, logs what goes wrong and goes on.

- scheduler: due retries from the delayed sets back to their streams (Lua, replica-safe);
- reclaimer: entries idle past ``claim_idle_seconds`` taken from dead consumers; poison
  (delivered more than ``max_deliveries`` times) parked; long deliveries kept alive;
- reconciler: open jobs Postgres holds that Redis lost are enqueued again (one replica
  at a time, under a Redis lock);
- replays: API replays whose engine is gone are continued (one replica each, under the
  replay's PostgreSQL session lock);
- heartbeat: ``worker:heartbeat:<id>`` with a TTL and a ``worker_heartbeats`` row;
- health probes, queue metrics, the memory guard, circuit transitions.

``Upkeep`` runs them for one engine and keeps what they remember between passes. It is
given the parts it works on (queue, pool, held entries, delivery policy, clients,
committer); of the engine itself it uses only its lifecycle (draining, stop requests), the
way in for reclaimed entries (``dispatch``) and, for the reconciler, the engine as
``reconcile`` takes it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psutil
from psycopg_pool import AsyncConnectionPool

from ms07 import __version__, keys, logs
from ms07.config import Settings
from ms07.engine import crash
from ms07.engine.backoff import stop_swallowed_cancel
from ms07.engine.committer import Committer, DlqRecord, to_dlq
from ms07.engine.delivery import DestinationClient, ErrorCode
from ms07.engine.held import HeldEntries
from ms07.engine.policy import DeliveryPolicy
from ms07.metrics import CIRCUIT_VALUES, Metrics
from ms07.probe import probe_http
from ms07.queue import Entry, InvalidMessage, Queue, Reclaimed, parse_entry
from ms07.reconcile import requeue_lost
from ms07.store import destinations as dest_store
from ms07.store import heartbeats, jobs

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

log = logs.get("upkeep")
_process = psutil.Process()


def _forked() -> None:
    """A child of ``ms07 run --workers N`` measures itself, not the supervisor."""
    global _process
    _process = psutil.Process()


os.register_at_fork(after_in_child=_forked)

EXIT_MEMORY_GUARD = 75  # EX_TEMPFAIL: the orchestrator should restart this process


def rss_bytes() -> int:
    return int(_process.memory_info().rss)

def collect_cycles() -> None:
    """Free the cyclic garbage of the last few seconds, when ``ms07 run`` has tuned the GC.

    With everything alive at start frozen and a young collection only every 20,000 net
    allocations (engine/daemon.py), a quiet engine -- one destination down, its jobs
    deferred -- went for minutes to hours between collections: the reference cycles each
    failed connection (an exception, its traceback and the frames of the send, payload
    included) and each closed httpx client (httpcore's pool) leaves behind piled up, with
    the native memory they hold. A full collection here sees only what was created since
    the freeze, a few thousand objects at most on a quiet engine: a few milliseconds
    every ``memory.check_interval_seconds``."""
    if gc.get_freeze_count():
        gc.collect()



class Upkeep:
    """The upkeep loops of one engine: ``start()`` them, ``stopping = True`` before
    cancelling them, ``farewell()`` last."""

    def __init__(self, engine: Engine, *, settings: Settings, worker_id: str, queue: Queue,
                 pool: AsyncConnectionPool, metrics: Metrics, held: HeldEntries, max_held: int,
                 policy: DeliveryPolicy, clients: dict[str, DestinationClient], committer: Committer) -> None:
        self.engine = engine
        self.settings = settings
        self.dist = settings.distribution
        self.worker_id = worker_id
        self.queue = queue
        self.pool = pool
        self.metrics = metrics
        self.held = held
        self.max_held = max_held
        self.policy = policy
        self.clients = clients
        self.committer = committer
        self.errors: Counter[str] = Counter()  # failed passes, by loop
        # The flag, not only the cancel: a library that turns a CancelledError into its own
        # error (seen with connections cut mid-command) would otherwise keep a loop alive.
        self.stopping = False
        # (queue, entry id) of the suspect entry this worker is trying alone, if any
        self._suspect: tuple[str, str] | None = None
        # The first retention run one interval after start: a rollout restarting every
        # replica does not start as many runs (one would win the lock, the rest would wait).
        self._retention_due = time.monotonic() + settings.retention.interval_seconds

    def start(self) -> list[asyncio.Task[Any]]:
        s = self.settings
        d = self.dist
        loops: list[tuple[str, float, Callable[[], Awaitable[Any]]]] = [
            ("scheduler", d.scheduler_interval_seconds, self.move_due),
            ("reclaimer", self.reclaim_interval(), self.reclaim),
            ("reconciler", d.reconcile_interval_seconds, self.reconcile),
            ("replays", d.replay_resume_interval_seconds, self.resume_replays),
            ("heartbeat", s.service.heartbeat_interval_seconds, self.heartbeat),
            ("health", s.service.health_check_interval_seconds, self.probe_health),
            ("metrics", 5.0, self.refresh_metrics),
            ("memory", s.memory.check_interval_seconds, self.memory_guard),
            ("circuits", 1.0, self.publish_circuits),
            ("retention", min(s.retention.interval_seconds, 60.0), self.retention),
        ]
        return [asyncio.create_task(self._forever(*spec), name=spec[0]) for spec in loops]

    async def _forever(self, name: str, interval: float, fn: Callable[[], Awaitable[Any]]) -> None:
        component = logs.get(name)
        task = asyncio.current_task()
        while not self.stopping:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.stopping:
                    return
                self.errors[name] += 1
                component.warning(f"{name} pass failed; will retry",
                                  error=logs.clip(f"{type(exc).__name__}: {exc}", 300))
            stop_swallowed_cancel(task)
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ scheduler

    async def move_due(self) -> None:
        queue = self.queue
        for q in queue.priorities:
            while True:
                now = time.time()  # one instant for the crash point's look and the move itself
                if crash.armed("scheduler_move") and await queue.redis.zcount(keys.delayed(q), "-inf", now):
                    crash.point("scheduler_move")
                moved = await queue.move_due(q, now=now, limit=500)
                if moved:
                    crash.point("scheduler_moved")
                if moved < 500:
                    break

    # ------------------------------------------------------------------ reclaimer

    def reclaim_interval(self) -> float:
        return max(0.5, min(self.dist.claim_idle_seconds / 3, 15.0))

    async def reclaim(self) -> None:
        if self.engine.draining:
            return
        await self.keep_alive()
        for q in self.queue.priorities:
            free = self.max_held - len(self.held)
            if free <= 0:
                return
            await self._take_over(q, await self._reclaim(q, free, suspects=0))
        await self.reclaim_suspects()

    async def _reclaim(self, q: str, free: int, suspects: int) -> Reclaimed:
        d = self.dist
        return await self.queue.reclaim(q, self.worker_id, int(d.claim_idle_seconds * 1000), d.max_deliveries,
                                        count=min(free, 100), suspects=suspects)

    async def reclaim_suspects(self) -> None:
        """Entries whose holder died with them more than once may be what kills workers
        (a poison entry): take them one at a time, each to its outcome, so that a poison
        entry takes no innocent entry down with it on its way to the DLQ. Reclaimed together,
        the whole batch a poison entry was read with died with it on every try, and was
        parked as poison with it."""
        deadline = time.monotonic() + self.reclaim_interval()
        while not self.engine.draining and time.monotonic() < deadline:
            if self._suspect in self.held.by_key:
                return  # the previous one is still running
            suspect = None
            for q in self.queue.priorities:
                free = self.max_held - len(self.held)
                if free <= 0:
                    return
                result = await self._reclaim(q, free, suspects=1)
                suspect = next((e for e in result.entries if e.deliveries > 2), None)
                await self._take_over(q, result, alone=suspect)
                if suspect is not None:
                    break
            if suspect is None:
                return
            self._suspect = (suspect.queue, suspect.entry_id)
            while self._suspect in self.held.by_key and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def _take_over(self, q: str, result: Reclaimed, alone: Entry | None = None) -> None:
        if result.vanished:
            log.warning(
                "pending entries vanished from the stream; the reconciler will re-enqueue their jobs",
                count=len(result.vanished),
                queue=q,
            )
        if result.poison:
            await self.park_poison(result.poison)
        if result.entries:
            self.metrics.reclaimed.inc(len(result.entries))
            log.info("reclaimed entries from a dead consumer", count=len(result.entries), queue=q)
            others = [e for e in result.entries if e is not alone]
            if others:
                await self.engine.dispatch(others)
            if alone is not None:
                log.warning("trying alone an entry whose worker died with it before",
                            entry_id=alone.entry_id, queue=q, deliveries=alone.deliveries)
                await self.engine.dispatch([alone])

    async def park_poison(self, entries: list[Entry]) -> None:
        """Entries that killed their worker on every try: job dead, DLQ entry, ack."""
        reason = f"delivered {self.dist.max_deliveries + 1} times without an outcome (poison)"
        ids: list[str] = []
        records = []
        for e in entries:
            try:
                did = parse_entry(e.fields)
            except InvalidMessage:
                did = ""
            if did:
                ids.append(did)
            records.append(DlqRecord(did, e.fields.get("destination", ""), "poison", ErrorCode.POISON_MESSAGE,
                                     reason, e.entry_id, e.queue))
        async with self.pool.connection() as conn:
            await jobs.park_jobs(conn, ids, ErrorCode.POISON_MESSAGE, reason)
        await to_dlq(self.queue, records)
        by_queue: dict[str, list[str]] = {}
        for e in entries:
            by_queue.setdefault(e.queue, []).append(e.entry_id)
        for q, eids in by_queue.items():
            await self.queue.ack(q, eids)
        self.metrics.requests.labels("failed").inc(len(ids))
        log.error("poison entries parked in the DLQ", count=len(entries), error_code=ErrorCode.POISON_MESSAGE,
                  distribution_id=ids[0] if len(ids) == 1 else None,
                  console=logs.console_link("distributions", ids[0]) if len(ids) == 1 else logs.console_link("dlq"))

    async def keep_alive(self) -> None:
        """Deliveries running longer than half the claim idle time: reset their idle time and
        lease so no other worker takes them over while they still run."""
        horizon = time.monotonic() - self.dist.claim_idle_seconds / 2
        old = [h for h in self.held.entries() if h.since < horizon and h.job is not None]
        if not old:
            return
        by_queue: dict[str, list[str]] = {}
        for h in old:
            by_queue.setdefault(h.entry.queue, []).append(h.entry.entry_id)
            h.since = time.monotonic()
        for q, eids in by_queue.items():
            await self.queue.touch(q, self.worker_id, eids)
        async with self.pool.connection() as conn:
            await jobs.keep_alive(conn, [h.job.distribution_id for h in old if h.job])

    # ------------------------------------------------------------------ reconciler

    async def reconcile(self) -> int:
        return await reconcile(self.engine)

    # ------------------------------------------------------------------ replays

    async def resume_replays(self) -> int:
        """API replays whose engine is gone (its session lock let go): one replica
        continues each (ms07/engine/replays.py)."""
        return await self.engine.replays.adopt()

    # ------------------------------------------------------------------ heartbeat

    async def heartbeat(self, status: str | None = None) -> None:
        status = status or ("draining" if self.engine.draining else "active")
        rss = rss_bytes()
        in_flight = len(self.held)
        payload = {
            "worker_id": self.worker_id,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": status,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "in_flight": in_flight,
            "rss_bytes": rss,
            "version": __version__,
        }
        ttl = self.settings.service.heartbeat_ttl_seconds
        if status == "stopped":
            await self.queue.redis.delete(keys.heartbeat(self.worker_id))
        else:
            await self.queue.redis.set(keys.heartbeat(self.worker_id), json.dumps(payload), ex=ttl)
        if status == "active":
            # Announce the consumer again (idempotent): after Redis lost a stream, another
            # loop may recreate the group before the reader meets NOGROUP, and Redis < 7
            # adds a consumer only when a read returns entries: an idle engine then stayed
            # out of `queue stats` until work came.
            await self.queue.join(self.worker_id)
        async with self.pool.connection() as conn:
            await heartbeats.beat(
                conn,
                worker_id=self.worker_id,
                host=payload["host"],
                pid=payload["pid"],
                started_at=self.engine.started_at,
                status=status,
                in_flight=in_flight,
                rss_bytes=rss,
                version=__version__,
                delivered=self.committer.delivered,
                failed=self.committer.failed,
            )

    async def farewell(self) -> None:
        """Last heartbeat as ``stopped``; leave the group if holding nothing."""
        try:
            await self.heartbeat(status="stopped")
            for q in self.queue.priorities:
                consumers = await self.queue.redis.xinfo_consumers(keys.stream(q), keys.GROUP)
                mine = [c for c in consumers if c["name"] == self.worker_id]
                # Deleting a consumer that still has pending entries would lose them.
                if mine and int(mine[0].get("pending", 0)) == 0:
                    await self.queue.redis.xgroup_delconsumer(keys.stream(q), keys.GROUP, self.worker_id)
        except Exception as exc:
            log.warning("could not say goodbye", error=logs.clip(str(exc), 200))

    # ------------------------------------------------------------------ health probes

    async def probe_health(self) -> None:
        targets = [c for c in self.clients.values() if c.config.health_url]
        if not targets:
            return
        timeout = min(5.0, self.settings.service.probe_timeout_seconds * 2)

        # With network.deny_private the probes may not reach inside any more than deliveries.
        results = await asyncio.gather(
            *(probe_http(c.config.health_url, timeout=timeout, auth=c.auth, network=self.settings.network)  # type: ignore[arg-type]
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
            self.metrics.destination_healthy.labels(client.name).set(1 if healthy else 0)
            verdicts.append((client.name, "healthy" if healthy else "unhealthy", latency, error))
        async with self.pool.connection() as conn:
            for name, state, latency, error in verdicts:
                await dest_store.set_health(conn, name, state, latency, error)

    # ------------------------------------------------------------------ metrics, memory, circuits

    async def refresh_metrics(self) -> None:
        """The gauges nothing else sets as it happens: queue sizes, workers, RSS, token expiry.

        Local values first, so that a Redis outage leaves them current."""
        m = self.metrics
        m.track(self.clients, self.queue.priorities)
        for name, breaker in self.policy.breakers.items():
            m.circuit_state.labels(name).set(CIRCUIT_VALUES[breaker.current_state()])
        m.draining.set(1 if self.engine.draining else 0)
        m.rss.set(rss_bytes())
        m.in_flight.set(len(self.held))
        stats = await self.queue.stats()
        for q, info in stats["queues"].items():
            m.queue_depth.labels(q).set(info["length"])
            m.pending.labels(q).set(info["pending"])
            m.delayed.labels(q).set(info["delayed"])
        m.dlq_size.set(stats["dlq"])
        live = 0
        async for _ in self.queue.redis.scan_iter(match=keys.HEARTBEAT_PATTERN, count=500):
            live += 1
        m.active_workers.set(live)
        for name, client in self.clients.items():
            expiry = getattr(client.auth, "expires_in", None) if client.auth else None
            if callable(expiry):
                value = expiry()
                if value is not None:
                    m.token_expiry.labels(name).set(value)
            # The cached OAuth2 token's expiry (never the token) for `ms07 diagnose auth`.
            expires_at = getattr(client.auth, "expires_at", None) if client.auth else None
            if expires_at and getattr(client.auth, "token", None) is not None:
                key = keys.token_info(name)
                pipe = self.queue.redis.pipeline(transaction=False)
                pipe.hset(key, mapping={"expires_at": expires_at, "worker_id": self.worker_id,
                                        "updated_at": time.time()})
                pipe.expire(key, max(60, int(expires_at - time.time()) + 3600))
                await pipe.execute()

    async def memory_guard(self) -> None:
        collect_cycles()  # first: the RSS compared with the threshold is then what is really held
        rss = rss_bytes()
        limit = self.settings.memory.threshold_mb * 1024 * 1024
        if rss > limit and not self.engine.draining:
            log.warning(
                "memory threshold exceeded; draining and exiting for a restart",
                rss_mb=round(rss / 1048576, 1),
                threshold_mb=self.settings.memory.threshold_mb,
            )
            self.engine.request_stop("memory guard", EXIT_MEMORY_GUARD)

    async def retention(self) -> None:
        """Retention (ms07/ops/retention.py) when due, on one replica at a time (a
        PostgreSQL advisory lock: the others find it taken and skip); then the last
        success of any replica into the gauge, so that every replica reports it."""
        from ms07.ops import retention
        from ms07.store import retention as retention_store

        ret = self.settings.retention
        self.metrics.retention_enabled.set(0 if ret.off else 1)
        if ret.off or self.engine.draining or time.monotonic() < self._retention_due:
            return
        self._retention_due = time.monotonic() + ret.interval_seconds
        async with self.pool.connection() as conn:
            try:
                run = await retention.prune(conn, ret, redis=self.queue.redis, runner=self.worker_id,
                                            should_stop=lambda: self.stopping or self.engine.draining,
                                            on_removed=self.metrics.retention_removed)
                removed = {t: c["rows"] for t, c in run.removed.items() if c["rows"]}
                if removed or run.outcome != "done":
                    log.info("retention run", outcome=run.outcome, removed=removed, note=run.note)
            except retention.Busy:
                pass  # another replica runs it
            last = await retention_store.last_run(conn, succeeded=True)
            await conn.rollback()
        if last is not None:
            self.metrics.retention_last_success.set(last["finished_at"].timestamp())

    async def publish_circuits(self) -> None:
        """Circuit transitions to Redis (read by every process) and the destinations row."""
        policy = self.policy
        if not policy.circuit_updates:
            return
        updates, policy.circuit_updates = policy.circuit_updates, []
        latest = dict(updates)
        for name, state in latest.items():
            breaker = policy.breakers[name]
            await self.queue.redis.hset(
                keys.circuit(name),
                mapping={"state": state, "worker_id": self.worker_id, "changed_at": time.time(),
                         "failures": breaker.failures},
            )
            await self.queue.redis.expire(keys.circuit(name), 3600)
        async with self.pool.connection() as conn:
            for name, state in latest.items():
                await dest_store.set_circuit(conn, name, state)


# ---------------------------------------------------------------------- reconciler
# The repair itself, shared with ``recover requeue-from-db``: module functions of the
# engine (``Upkeep.reconcile`` calls ``reconcile``).


async def reconcile(engine: Engine, older_than: float | None = None) -> int:
    """Enqueue again the open jobs Redis no longer holds (ms07/reconcile.py, shared with
    ``recover requeue-from-db``), then the housekeeping. Returns how many."""
    redis = engine.queue.redis
    token = f"{engine.worker_id}:{time.time()}"
    # A short lease renewed while the pass runs, not one as long as the longest pass: a
    # replica killed while holding it (chaos: a SIGKILL just after a FLUSHALL) blocked
    # every other replica's repair for the whole TTL (30-120 s); now for RECONCILE_LEASE.
    if not await redis.set(keys.RECONCILER_LOCK, token, nx=True, px=int(RECONCILE_LEASE * 1000)):
        return 0
    renew = asyncio.create_task(_renew_lease(redis, token), name="reconciler-lease")
    try:
        n = await requeue_lost(engine.pool.connection, engine.queue,
                               older_than or engine.dist.reconcile_after_seconds)
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
