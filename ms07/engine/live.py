"""Destinations live on every replica: the engine side of runtime destinations.

PostgreSQL holds the destinations (``destinations.spec``); a change commits with a
``NOTIFY ms07_destinations``. Each engine keeps one connection that LISTENs on that
channel and reloads the managed set on every notification (coalesced), every
``RESYNC_SECONDS`` as a safety net for a lost one, and after every reconnect (a
notification sent while it was away is gone). A destination whose spec changed gets a
new client, breaker, retry schedule, rate limiter, batcher and auth provider; deliveries
already running finish on the old client, which is closed once its last one is done.
A pause or resume changes no client: it is the ``paused`` set the delivery path reads.

Held jobs (status ``paused``) of a destination that is no longer paused are released by
:meth:`LiveDestinations.release`: set ``queued`` and enqueued, oldest first, at most
``service.resume_rate_per_second`` a second per engine; ``FOR UPDATE SKIP LOCKED`` gives
each held job to one engine only. A crash between the UPDATE and the XADD leaves a
queued job outside Redis: the reconciler enqueues it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import psycopg

from ms07 import destspec, logs
from ms07.engine import auth, batching, signing
from ms07.engine.backoff import Backoff
from ms07.engine.breaker import CircuitBreaker
from ms07.engine.delivery import DestinationClient
from ms07.engine.ratelimit import RateLimiter
from ms07.engine.retry import RetryPolicy
from ms07.errors import ConfigError
from ms07.ops import dest_admin
from ms07.resolved import ResolvedDestination
from ms07.store import db
from ms07.store import destinations as store

if TYPE_CHECKING:
    from ms07.engine.engine import Engine

log = logs.get("DistributionWorker")

RESYNC_SECONDS = 30.0



class LiveDestinations:
    """Keeps one engine's destinations in step with PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.specs: dict[str, dict[str, Any]] = {}
        self.paused: set[str] = engine.paused
        self.reloads = 0
        self.released = 0
        self.listening = asyncio.Event()  # set while LISTEN is in force (tests wait on it)
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._bad: set[str] = set()

    # ------------------------------------------------------------------ building

    async def install(self, dest: ResolvedDestination) -> None:
        """Build and put in place the client, limiter, batcher, breaker and retry
        schedule of ``dest``; the ones it replaces retire in the background."""
        e = self.engine
        assert e.queue is not None, "started"  # nosec B101 - narrows a type
        client = DestinationClient(dest, e.dist, auth=auth.provider_for(dest, e.settings.network),
                                   signer=signing.signer_for(dest), network=e.settings.network)
        if dest.rate_limit is not None:
            client.limiter = RateLimiter(e.queue.redis, dest.name, dest.rate_limit.per_second, dest.rate_limit.burst)
        await client.open()
        cb = dest.circuit_breaker
        e.policy.breakers[dest.name] = CircuitBreaker(dest.name, cb.failure_threshold, cb.recovery_timeout,
                                                      e.policy._on_circuit)
        e.policy.retry[dest.name] = RetryPolicy.for_destination(dest)
        batcher = batching.batcher_for(e.policy, client, e._is_draining)
        old_client, old_batcher = e.clients.get(dest.name), e.batchers.pop(dest.name, None)
        e.clients[dest.name] = client
        if batcher is not None:
            e.batchers[dest.name] = batcher
        if batcher is not None or client.limiter is not None:
            e._own_tasks.add(dest.name)
        else:
            e._own_tasks.discard(dest.name)
        e.metrics.circuit_state.labels(dest.name).set(0)
        if old_client is not None:
            self._retire(old_client, old_batcher)

    def uninstall(self, name: str) -> None:
        e = self.engine
        client, batcher = e.clients.pop(name, None), e.batchers.pop(name, None)
        e._own_tasks.discard(name)
        if client is not None:
            self._retire(client, batcher)

    def _retire(self, client: DestinationClient, batcher: batching.Batcher | None) -> None:
        task = asyncio.create_task(self._close_when_idle(client, batcher), name=f"retire-{client.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_idle(self, client: DestinationClient, batcher: batching.Batcher | None) -> None:
        try:
            if batcher is not None:
                await batcher.close()  # sends what it holds, on the old client
            if client.users > 0:
                client.idle = asyncio.Event()
                await client.idle.wait()
        finally:
            await client.close()

    async def close(self) -> None:
        await asyncio.gather(*self._retiring, return_exceptions=True)

    # ------------------------------------------------------------------ reloading

    async def reload(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        """Read the managed set and rebuild what changed; the names changed."""
        async with self._lock:
            rows = await dest_admin.rows(conn)
            e = self.engine
            problems = dest_admin.load_secrets(rows)
            if problems and not self.reloads:
                raise ConfigError(problems[0])  # at start: one clear line, the engine does not start
            for line in set(problems) - self._bad:
                log.error("stored secrets do not decrypt; the destination keeps its previous ones",
                          detail=logs.clip(line, 300))
            undecryptable = {line.split(":", 1)[0].removeprefix("destination ") for line in problems}
            if rows:
                settings, bad = dest_admin.in_force(e.settings, rows)
            else:  # none left (or none yet: start() seeded the config's, if it had any)
                settings, bad = destspec.with_destinations(e.settings, []), []
            for line in set(bad) - self._bad:  # once, not at every reload
                log.warning("stored destination does not validate under the current settings",
                            detail=logs.clip(line, 300))
            self._bad = set(bad) | set(problems)
            wanted = {d.name: d for d in settings.destinations}
            changed = []
            for name, dest in wanted.items():
                if name in undecryptable and name in e.clients:
                    continue
                secrets = {f: s["fingerprint"] + s["changed_at"] for f, s in (rows[name].get("secrets") or {}).items()}
                spec = {"spec": destspec.to_spec(dest), "secrets": secrets}
                if self.specs.get(name) != spec or name not in e.clients:
                    await self.install(settings.resolved(name))
                    self.specs[name] = spec
                    changed.append(name)
            for name in [n for n in list(e.clients) if n not in wanted]:
                self.uninstall(name)
                self.specs.pop(name, None)
                changed.append(name)
            e.settings = settings
            paused = {n for n, r in rows.items() if r["paused"] and n in wanted}
            for name in paused - self.paused:
                log.warning("destination paused: new deliveries are held", destination=name,
                            reason=rows[name].get("paused_reason"), console=logs.console_link("destinations", name))
            for name in self.paused - paused:
                log.info("destination resumed: held deliveries are released", destination=name)
                e.policy.failing_since.pop(name, None)  # a fresh start for auto-pause
            self.paused.clear()
            self.paused.update(paused)
            self.reloads += 1
            if changed:
                log.info("destinations reloaded", changed=sorted(changed), version=max(
                    (r["version"] for r in rows.values()), default=0))
            return changed

    async def run(self) -> None:
        """LISTEN, reload on every notification and every RESYNC_SECONDS; reconnect and
        reload after any failure. Runs until cancelled."""
        url = self.engine.runtime.database_url
        backoff = Backoff()
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await db.connect(url, autocommit=True, application_name="ms07-destination-updates")
                await conn.execute(f"LISTEN {store.CHANNEL}")
                self.listening.set()
                await self.reload(conn)  # what was sent while nobody listened
                backoff.reset()
                while True:
                    got = False
                    async for _ in conn.notifies(timeout=RESYNC_SECONDS, stop_after=1):
                        got = True
                    if got:  # a burst of changes: one reload for all of them
                        await asyncio.sleep(0.02)
                    await self.reload(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                delay = backoff.next()
                log.warning("destination updates: connection lost; reconnecting", retry_in=delay,
                            error=logs.clip(f"{type(exc).__name__}: {exc}", 200))
                await asyncio.sleep(delay)
            finally:
                if conn is not None:
                    await conn.close()

    # ------------------------------------------------------------------ releasing held jobs

    async def release(self) -> int:
        """One pass: release at most a second's worth of held jobs of the destinations
        that are not paused. Returns how many."""
        e = self.engine
        assert e.pool is not None and e.queue is not None, "started"  # nosec B101 - narrows a type
        names = [n for n in e.clients if n not in self.paused]
        if not names:
            return 0
        limit = max(1, int(e.settings.service.resume_rate_per_second))
        async with e.pool.connection() as conn, conn.transaction():
            released = await store.release_held(conn, names, limit)
        if released:
            queue = e.queue
            await queue.enqueue((p if p in queue.priorities else queue.priorities[0], did, dest)
                                for did, dest, p in released)
            self.released += len(released)
            log.info("held deliveries released", count=len(released))
        return len(released)

    async def auto_pause(self) -> list[str]:
        """Pause the destinations whose every attempt failed for their ``auto_pause_after``
        (off by default); returns the names this call paused."""
        e = self.engine
        assert e.pool is not None, "started"  # nosec B101 - narrows a type
        now, done = time.monotonic(), []
        for name, since in list(e.policy.failing_since.items()):
            client = e.clients.get(name)
            after = client.config.auto_pause_after if client is not None else None
            if after is None or name in self.paused or now - since < after:
                continue
            reason = f"auto-paused: every attempt failed for {after:g}s"
            async with e.pool.connection() as conn:
                out = await dest_admin.pause(conn, name, paused=True, operator=f"engine:{e.worker_id}",
                                             reason=reason)
            self.paused.add(name)  # at once: the NOTIFY tells the others
            e.policy.failing_since.pop(name, None)
            if out["changed"]:
                done.append(name)
                e.metrics.auto_paused.labels(name).inc()
                log.error("destination paused automatically: every attempt failed", destination=name,
                          failing_seconds=round(now - since, 1), auto_pause_after=after,
                          resume=f"ms07 destinations resume {name} --yes",
                          console=logs.console_link("destinations", name))
        return done

    async def release_loop(self) -> None:
        """Once a second: auto-pause what keeps failing, release what a resume freed."""
        backoff = Backoff()
        while True:
            started = time.monotonic()
            try:
                await self.auto_pause()
                await self.release()
                assert self.engine.pool is not None  # nosec B101 - narrows a type
                async with self.engine.pool.connection() as conn:  # rotation windows that are over
                    await dest_admin.drop_expired_previous(conn, self.engine.settings,
                                                           f"engine:{self.engine.worker_id}")
                backoff.reset()
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning("cannot release held deliveries; retrying", retry_in=delay,
                            error=logs.clip(f"{type(exc).__name__}: {exc}", 200))
                await asyncio.sleep(delay)
