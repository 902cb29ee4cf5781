"""The engine: one object with an explicit lifecycle (``start`` -> loops -> ``stop``).

Inside one process:

- the *reader* takes entries from the consumer group while fewer than ``max_held`` are
  held, claims their jobs in Postgres (one UPDATE for the whole read), and queues them
  for ``concurrency`` delivery coroutines: at most that many HTTP requests are in flight
  (jobs of batching or rate-limited destinations get a task each instead);
- each delivery asks the *delivery policy* (``policy.py``: breakers, retry schedules)
  what its result means;
- the *committer* (``committer.py``) group-commits outcomes: attempt rows and job
  updates in one transaction, **then** acks (XACK + XDEL) or defers (delayed set) in
  Redis. An entry is released (``held.py``) only once acked, so memory is bounded by
  ``max_held`` (``concurrency`` times ``service.prefetch``): the next reads and claims
  overlap the current deliveries and commits instead of waiting for them;
- upkeep loops (``ms07/engine/upkeep.py``): retry scheduler, reclaimer, reconciler,
  heartbeats, health probes, metrics, memory guard.

The engine itself is the lifecycle, the reader and the dispatch of claimed jobs.

Every loop survives its own exceptions; Postgres or Redis going away makes the engine
wait and resume by itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from ms07 import __version__, logs
from ms07.config import Settings
from ms07.engine import batching, crash
from ms07.engine.backoff import Backoff, with_db
from ms07.engine.breaker import CircuitBreaker
from ms07.engine.committer import LINGER_SECONDS, SMALL_BATCH, Committer
from ms07.engine.delivery import DestinationClient, ErrorCode
from ms07.engine.held import Held, HeldEntries
from ms07.engine.live import LiveDestinations
from ms07.engine.policy import DeliveryPolicy
from ms07.engine.replays import ReplayRunner
from ms07.engine.retry import RetryPolicy
from ms07.engine.server import Server, start_server
from ms07.engine.upkeep import Upkeep
from ms07.errors import ConfigError
from ms07.metrics import Metrics
from ms07.ops import dest_admin
from ms07.ops.submit import SubmitBatcher
from ms07.queue import Entry, InvalidMessage, Queue, parse_entry
from ms07.runtime import Runtime
from ms07.store import db, jobs
from ms07.store.status import JobStatus

log = logs.get("DistributionWorker")

EXIT_OK = 0
FINAL_COMMIT_SECONDS = 5.0


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Engine:
    """The delivery engine. ``await engine.start()`` ... ``await engine.stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        runtime: Runtime | None = None,
        worker_id: str | None = None,
        http_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.dist = settings.distribution
        logs.set_console_url(settings.service.console_url)  # the console links of its log lines
        self.runtime = runtime or Runtime(settings, pool_size=8, check_connections=False, create=True, migrate=True)
        self._owns_runtime = runtime is None
        self.worker_id = worker_id or settings.service.worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.concurrency = settings.service.concurrency
        self.max_held = max(self.concurrency, int(self.concurrency * settings.service.prefetch))
        self._http_slots = asyncio.Semaphore(self.concurrency)
        self._dispatch_slots = asyncio.Semaphore(2)
        self.http_port = settings.service.http_port if http_port is None else http_port
        # Set by ``ms07 run --workers N`` (supervisor.py): which child this is, and the
        # listening socket the supervisor bound for all of them.
        self.worker_index: int | None = None
        self.listen_socket: socket.socket | None = None
        self.metrics = Metrics()
        self.clients: dict[str, DestinationClient] = {}
        self.paused: set[str] = set()  # destinations whose new deliveries are held (live.py)
        self.batchers: dict[str, batching.Batcher] = {}
        self.policy = DeliveryPolicy(settings.effective.values(), self.worker_id, self.metrics)
        self.started_at = _utc()
        self.exit_code = EXIT_OK
        self.ready = False
        self.draining = False
        self.held = HeldEntries(self.metrics)
        self._held = self.held.by_key  # the same dict: looked up once per job
        self.committer = Committer(self.held, self.metrics, self.worker_id, self.clients)
        self._enqueue_outcome = self.committer.enqueue  # once per job: one lookup, not two
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self.upkeep: Upkeep | None = None  # from start(): it works on the pool and the queue
        self.replays = ReplayRunner(self)  # replays run through the API or taken over (upkeep)
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Claimed jobs wait here for one of ``concurrency`` delivery coroutines: a task
        # per job queued on a semaphore costs ~7 us of the event loop's time per job
        # (creation, the semaphore's waiter future, the done callback; a loop of no-op
        # jobs at 64 in flight), the queue ~1.5 us. Jobs of destinations that batch or
        # are rate limited wait there instead of here, as tasks of their own: they must
        # not hold a delivery coroutine while the batch fills or the limiter refills.
        self._ready: asyncio.Queue[tuple[Entry, jobs.ClaimedJob]] = asyncio.Queue()
        self._workers: list[asyncio.Task[Any]] = []
        self._own_tasks: set[str] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._reader: asyncio.Task[Any] | None = None
        self._commit_task: asyncio.Task[Any] | None = None
        self.server: Server | None = None
        self.live = LiveDestinations(self)
        self.submitter: SubmitBatcher | None = None
        self.queue: Queue | None = None
        self.pool: AsyncConnectionPool | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def in_flight(self) -> int:
        return len(self._held)

    def _is_draining(self) -> bool:
        return self.draining

    @property
    def loop_errors(self) -> Counter[str]:
        """Failed upkeep passes, by loop."""
        return self.upkeep.errors if self.upkeep is not None else Counter()

    @property
    def delivered(self) -> int:
        return self.committer.delivered

    @property
    def failed(self) -> int:
        return self.committer.failed

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return self.policy.breakers

    @property
    def policies(self) -> dict[str, RetryPolicy]:
        return self.policy.retry

    @property
    def handed_back(self) -> int:
        return self.policy.handed_back

    async def start(self) -> None:
        """Connect, migrate, sync destinations, open clients, start every loop."""
        if self._started:
            return
        crash.point("engine_start")
        # Refused before anything is opened: an API that would answer without a token.
        serve_http = self.http_port is not None and self.http_port >= 0
        if serve_http:
            self.settings.api_listen()
        self._started = True

        self.pool = await self.runtime.pool()
        self.queue = await self.runtime.queue()
        self.submitter = SubmitBatcher(self.pool, self.queue)
        self.committer.open(self.pool, self.queue)
        if serve_http:
            # Listen before this worker announces itself (consumer, heartbeat row) or opens
            # clients and tasks: a port taken (a second `ms07 run`) leaves nothing behind.
            await self._listen()
        await self.queue.join(self.worker_id)
        try:
            async with self.pool.connection() as conn:
                # PostgreSQL holds the destinations: the config's list is applied only when
                # asked (service.apply_config / --apply-config) or to seed an empty table.
                await dest_admin.start(conn, self.settings, apply_config=self.settings.service.apply_config,
                                       operator=f"engine:{self.worker_id}")
                await self.live.reload(conn)
        except ConfigError:  # a stored secret no key decrypts: one line, nothing left open
            closers = [*([self.server.close()] if self.server is not None else []),
                       *([self.submitter.close()] if self.submitter is not None else []),
                       *(c.close() for c in self.clients.values()), self.live.close()]
            await asyncio.gather(*closers, return_exceptions=True)
            if self._owns_runtime:
                await self.runtime.aclose()
            raise
        self.metrics.memory_threshold.set(self.settings.memory.threshold_mb * 1024 * 1024)
        self.held.capacity.set()
        self.held.idle.set()
        self._commit_task = asyncio.create_task(self.committer.run(), name="committer")
        self._workers = [asyncio.create_task(self._work(), name=f"delivery-{i}") for i in range(self.concurrency)]
        self._reader = asyncio.create_task(self._read_loop(), name="reader")
        self.upkeep = Upkeep(self, settings=self.settings, worker_id=self.worker_id, queue=self.queue, pool=self.pool,
                             metrics=self.metrics, held=self.held, max_held=self.max_held, policy=self.policy,
                             clients=self.clients, committer=self.committer)
        self._loops = self.upkeep.start()
        self._loops += [asyncio.create_task(self.live.run(), name="destination-updates"),
                        asyncio.create_task(self.live.release_loop(), name="held-release")]
        self.metrics.worker_info.labels(self.worker_id, str(os.getpid()),
                                        "" if self.worker_index is None else str(self.worker_index)).set(1)
        self.ready = True
        log.info(
            "engine started",
            worker_id=self.worker_id,
            pid=os.getpid(),
            concurrency=self.concurrency,
            destinations=len(self.clients),
            http_port=self.http_port,
            version=__version__,
        )

    async def _listen(self) -> None:
        host, port = self.settings.api_listen()[1], self.http_port
        try:
            self.server = await start_server(self, host, port, sock=self.listen_socket)
        except OSError as exc:
            if self.submitter is not None:
                await self.submitter.close()
            if self._owns_runtime:
                await self.runtime.aclose()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason += " (a second `ms07 run`?)"
            raise ConfigError(f"cannot listen on {host}:{port}: {reason}; choose another port with --http-port, "
                              "MS07_HTTP_PORT or service.http_port (0: any free port)") from None
        self.http_port = self.server.port

    def request_stop(self, reason: str = "requested", exit_code: int = EXIT_OK) -> None:
        """Ask the engine to drain and stop (signal handlers, memory guard)."""
        if not self._stop_requested.is_set():
            log.info("stop requested", reason=reason)
            self.exit_code = exit_code
            self.draining = True
            self.metrics.draining.set(1)
            self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Stop reading, finish in-flight work within the grace period, commit, ack, close.

        Idempotent. Bounded: deliveries get ``grace`` seconds (``service.drain_grace_seconds``)
        in all; what has not finished by then is cancelled and its entry stays pending for
        another worker; the outcomes already known then get at most ``FINAL_COMMIT_SECONDS``
        to be committed and acked."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.committer.stopping = True
        self.draining = True
        self.ready = False
        self.metrics.draining.set(1)
        try:
            await self._stop(self.settings.service.drain_grace_seconds if grace is None else grace)
        finally:
            # Whatever failed while closing, a second stop() must not wait forever.
            self._stopped.set()
        log.info("engine stopped", worker_id=self.worker_id, delivered=self.delivered, failed=self.failed,
                 handed_back=self.handed_back)

    async def _stop(self, grace: float) -> None:
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        self.held.capacity.set()
        if self._reader is not None:
            try:
                async with asyncio.timeout(max(left(), 1.5)):
                    await asyncio.shield(self._reader)
            except TimeoutError:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
        try:
            async with asyncio.timeout(left()):
                await self.held.idle.wait()
        except TimeoutError:
            unfinished = [t for t in [*self._tasks, *self._workers] if not t.done()]
            log.warning("grace period over; leaving deliveries pending for another worker",
                        count=sum(h.job is not None for h in self._held.values()))
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            never_started = []  # claimed, still queued for a delivery coroutine: pending for a reclaim
            while not self._ready.empty():
                entry, _ = self._ready.get_nowait()
                if (held := self._held.get((entry.queue, entry.entry_id))) is not None:
                    never_started.append(held)
            self.held.release(never_started)
        await self.committer.drain(timeout=FINAL_COMMIT_SECONDS)
        await self.replays.stop()  # each marks itself interrupted, for another engine to continue
        await self._cancel_all([*self._loops, *self._workers, *([self._commit_task] if self._commit_task else [])])
        if self.upkeep is not None:
            await self.upkeep.farewell()
        closers = [*(b.close() for b in self.batchers.values()),
                   *([self.server.close()] if self.server is not None else []),
                   *([self.submitter.close()] if self.submitter is not None else []),
                   *(c.close() for c in self.clients.values()), self.live.close()]
        for result in await asyncio.gather(*closers, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("error while closing", error=logs.clip(f"{type(result).__name__}: {result}", 200))
        if self._owns_runtime:
            await self.runtime.aclose()

    async def _cancel_all(self, tasks: list[asyncio.Task[Any]], timeout: float = 5.0) -> None:
        """Cancel background tasks and wait for them, re-cancelling a task whose
        cancellation was swallowed; never waits longer than ``timeout``."""
        if self.upkeep is not None:
            self.upkeep.stopping = True
        deadline = time.monotonic() + timeout
        pending = {t for t in tasks if not t.done()}
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(0.5, max(0.01, deadline - time.monotonic())))
        if pending:
            log.warning("background tasks did not stop", tasks=sorted(t.get_name() for t in pending))

    async def serve(self) -> int:
        """start(), wait for a stop request, stop(); the process exit code."""
        await self.start()
        await self._stop_requested.wait()
        await self.stop()
        return self.exit_code

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        backoff = Backoff()
        queue, capacity = self.queue, self.held.capacity
        assert queue is not None, "started"  # nosec B101 - narrows a type; the value is never None here
        while not self._stopping and not self._stop_requested.is_set():
            free = self.max_held - len(self._held)
            if free <= 0:
                capacity.clear()
                await capacity.wait()
                continue
            try:
                entries = await queue.read(self.worker_id, min(free, self.dist.read_batch), 1000)
            except (RedisError, OSError) as exc:
                delay = backoff.next()
                log.warning("cannot read the queue; retrying", error=logs.clip(str(exc), 200), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if entries:
                # The claim runs while the next XREADGROUP waits: the two round trips
                # overlap. At most two dispatches at once keep the claims in read order
                # close together and the pool free for the committer. The entries are
                # held before the next read, which counts them against ``max_held``.
                self.held.hold(entries)
                await self._dispatch_slots.acquire()
                self._spawn(self._dispatch_slot(entries))
                if len(entries) < SMALL_BATCH:
                    await asyncio.sleep(LINGER_SECONDS)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task the engine keeps (and cancels past the grace period) until it ends."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch_slot(self, entries: list[Entry]) -> None:
        try:
            await self._claim_and_start(entries)
        except Exception:
            log.exception("dispatch failed; the entries stay pending for a reclaim")
            self.held.release([h for e in entries if (h := self._held.get((e.queue, e.entry_id))) and h.job is None])
        finally:
            self._dispatch_slots.release()

    async def dispatch(self, entries: list[Entry]) -> None:
        """Hold these entries, claim their jobs and start their deliveries."""
        self.held.hold(entries)
        await self._claim_and_start(entries)

    async def _claim_and_start(self, entries: list[Entry]) -> None:
        valid: list[tuple[Entry, str]] = []
        for e in entries:
            try:
                valid.append((e, parse_entry(e.fields)))
            except InvalidMessage as exc:
                self.committer.finish_without_job(e, None, ErrorCode.INVALID_MESSAGE, str(exc))
        if not valid:
            return
        ids = [did for _, did in valid]
        pool = self.pool
        assert pool is not None, "started"  # nosec B101 - narrows a type; the value is never None here
        claimed = await with_db(pool, lambda c: self._claim(c, ids), self._is_stopping)
        missing = [did for did in ids if claimed is not None and did not in claimed]
        statuses = await with_db(pool, lambda c: jobs.job_statuses(c, missing), self._is_stopping) if missing else {}
        if claimed is None or statuses is None:
            # Stopping while Postgres is down: the entries stay pending for a reclaim.
            self.held.release([self._held[(e.queue, e.entry_id)] for e, _ in valid])
            return
        refile = [(e, did) for e, did in valid if e.deliveries > 1 and statuses.get(did) in jobs.PARKED_STATUSES]
        if refile:
            if not await self.committer.refile_parked(refile):
                self.held.release([self._held[(e.queue, e.entry_id)] for e, _ in refile])
                valid = [v for v in valid if v not in refile]
        taken: set[str] = set()
        for e, did in valid:
            job = claimed.get(did)
            if job is not None and did not in taken:
                taken.add(did)
                self._held[(e.queue, e.entry_id)].job = job
                if job.destination in self._own_tasks:
                    self._spawn(self._deliver(e, job))
                else:
                    self._ready.put_nowait((e, job))
            elif did not in statuses and did not in claimed:
                self.committer.finish_without_job(e, did, ErrorCode.MESSAGE_NOT_FOUND,
                                                  "no job with this id in Postgres")
            elif e.deliveries > 1 and statuses.get(did) == JobStatus.PROCESSING:
                # Reclaimed from a dead worker whose lease began after it read the entry
                # (the claim lags the read, by seconds while Postgres is slow): not a
                # duplicate. Acking it would leave the job to the reconciler; left pending,
                # it is reclaimed again once the lease has run out.
                self.held.release([self._held[(e.queue, e.entry_id)]])
            else:
                # Done already, or held by another live worker: this entry is a duplicate.
                self._enqueue_outcome(self._held[(e.queue, e.entry_id)], None)

    async def _claim(self, conn: psycopg.AsyncConnection[Any], ids: list[str]) -> dict[str, jobs.ClaimedJob]:
        """The claim is one UPDATE and sits between the read and the HTTP request: in
        autocommit it is one round trip to PostgreSQL instead of three (BEGIN, UPDATE,
        COMMIT), and each round trip is a wake-up of two processes on a busy host."""
        async with db.autocommit(conn):
            return await jobs.claim_jobs(conn, ids, self.dist.claim_idle_seconds)

    def _is_stopping(self) -> bool:
        return self._stopping

    # ------------------------------------------------------------------ delivering

    async def _work(self) -> None:
        """One of ``concurrency`` delivery coroutines: claimed jobs, one at a time."""
        while True:
            entry, job = await self._ready.get()
            try:
                await self._deliver(entry, job)
            except Exception:  # _deliver handles its own; this coroutine must outlive anything
                log.exception("delivery coroutine failed; the entry stays pending", distribution_id=job.distribution_id)

    async def _deliver(self, entry: Entry, job: jobs.ClaimedJob) -> None:
        held = self._held[(entry.queue, entry.entry_id)]
        crash.on_payload(job.payload)
        try:
            outcome = await self.deliver(job)
        except asyncio.CancelledError:
            # Shutdown past the grace period: the entry stays pending for another worker.
            breaker = self.policy.breakers.get(job.destination)
            if breaker:
                breaker.release()
            self.held.release([held])
            raise
        except Exception:
            log.exception("delivery crashed; the entry stays pending", distribution_id=job.distribution_id,
                          destination=job.destination, correlation_id=job.correlation_id)
            self.held.release([held])
            return
        self._enqueue_outcome(held, outcome)

    async def deliver(self, job: jobs.ClaimedJob) -> jobs.Outcome:
        """Make the HTTP attempt(s) for one claimed job and decide what happens next."""
        policy = self.policy
        if job.destination in self.paused:
            return self._hold(job)
        client = self.clients.get(job.destination)
        if client is None:
            return policy.outcome(job, JobStatus.FAILED, ErrorCode.UNKNOWN_DESTINATION,
                                 f"destination {job.destination!r} is not configured on this worker")
        # Counted while it runs: a client replaced meanwhile (live.py) is closed only after.
        client.users += 1
        try:
            return await self._deliver_on(client, job)
        finally:
            client.users -= 1
            if client.idle is not None and not client.users:
                client.idle.set()

    def _hold(self, job: jobs.ClaimedJob) -> jobs.Outcome:
        """A paused destination: the job waits as ``paused``, no attempt counted, until
        a resume releases it (live.py)."""
        return self.policy.outcome(job, JobStatus.PAUSED, None, "destination paused; held until resumed")

    async def _deliver_on(self, client: DestinationClient, job: jobs.ClaimedJob) -> jobs.Outcome:
        policy = self.policy
        batcher = self.batchers.get(job.destination)
        if batcher is not None:
            return await batcher.deliver(job)
        breaker = policy.breakers[job.destination]
        limiter = client.limiter
        if limiter is not None:
            await limiter.acquire()
        attempt = job.attempts + 1
        async with self._http_slots:
            if self.draining:
                return policy.hand_back(job)
            if job.destination in self.paused:  # paused while this one waited for a slot
                return self._hold(job)
            # Asked only now: while this delivery waited for a slot the circuit may have opened.
            if not breaker.allow():
                return policy.defer_for_circuit(job)
            result = await client.send(job.distribution_id, attempt, job.payload, job.content_type)
        if result.success:
            crash.point("after_http")
        rows = [policy.attempt_row(attempt, result)]
        policy.observe(job.destination, result)
        if result.auth_failure and client.auth is not None and client.auth.refreshable:
            # The token may have been revoked or rotated: refresh once and try again.
            await client.auth.invalidate(result.auth_generation)
            attempt += 1
            async with self._http_slots:
                result = await client.send(job.distribution_id, attempt, job.payload, job.content_type)
            rows.append(policy.attempt_row(attempt, result))
            policy.observe(job.destination, result)
        if result.success or not result.retryable or result.auth_failure:
            breaker.success()  # the destination answered
        else:
            breaker.failure()
        return policy.decide(job, attempt, result, rows)

    def held_entries(self) -> list[Held]:
        return self.held.entries()
