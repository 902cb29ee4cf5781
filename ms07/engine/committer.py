"""The committer: outcomes group-committed, Postgres first, then Redis.

Deliveries put their outcome in the outbox; one task writes every outcome waiting there
(attempt rows and job updates in one statement, synchronous commit), then files the DLQ
entries, defers retries to the delayed sets and acks the rest, then counts and logs them
and releases their entries. An entry is never acked before its outcome is committed
(docs/architecture.md, "Delivery guarantees"; crash point ``after_commit``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from ms07 import logs
from ms07.engine import crash
from ms07.engine.backoff import Backoff, stop_swallowed_cancel, with_db
from ms07.engine.delivery import DestinationClient
from ms07.engine.held import Held, HeldEntries
from ms07.metrics import Metrics
from ms07.queue import Entry, Queue
from ms07.store import db, jobs
from ms07.store.status import PARKED, JobStatus

log = logs.get("DistributionWorker")

# At moderate rates a read or an outcome commit would otherwise carry one or two
# entries each: every read is an XREADGROUP and a claim statement, every commit a
# statement and an ack, whatever their size. Waiting this long before the next one when
# the last was small lets a few gather (bench/ab.py: see docs/benchmarks/profile.md).
# A full read or a large outbox never waits, so a backlog drains at full speed.
LINGER_SECONDS = 0.001
SMALL_BATCH = 16


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One entry of the DLQ stream: a parked job (or an entry with no job) and why."""

    distribution_id: str
    destination: str
    reason: str
    error_code: str
    last_error: str
    entry_id: str
    queue: str

    def fields(self) -> dict[str, str]:
        return {"distribution_id": self.distribution_id, "destination": self.destination, "reason": self.reason,
                "error_code": self.error_code, "last_error": self.last_error, "entry_id": self.entry_id,
                "queue": self.queue}


async def to_dlq(queue: Queue, records: list[DlqRecord]) -> None:
    if records:
        await queue.to_dlq([r.fields() for r in records])


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Committer:
    """The outbox and the task that commits it. ``open()`` once Postgres and Redis are."""

    pool: AsyncConnectionPool
    queue: Queue

    def __init__(self, held: HeldEntries, metrics: Metrics, worker_id: str,
                 clients: dict[str, DestinationClient]) -> None:
        self.held = held
        self.metrics = metrics
        self.worker_id = worker_id
        self.clients = clients  # for the destination URL the logs name
        self.outbox: list[tuple[Held, jobs.Outcome | None]] = []
        self.event = asyncio.Event()
        self.committing = False
        self.stopping = False  # set by Engine.stop: give up waiting on Postgres and Redis
        self.delivered = 0
        self.failed = 0
        self._delivered_total = metrics.requests.labels("success")

    def open(self, pool: AsyncConnectionPool, queue: Queue) -> None:
        self.pool, self.queue = pool, queue

    def _is_stopping(self) -> bool:
        return self.stopping

    def enqueue(self, held: Held, outcome: jobs.Outcome | None, record: bool = True) -> None:
        if outcome is not None and not record:
            outcome = jobs.Outcome(outcome.distribution_id, outcome.destination, outcome.status,
                                   outcome.worker_id, [], outcome.error_code, outcome.error_message, None)
            held.job = None  # no row to write
        self.outbox.append((held, outcome))
        self.event.set()

    def finish_without_job(self, entry: Entry, did: str | None, code: str, reason: str) -> None:
        """An entry with no job to deliver (invalid, unknown id): straight to the DLQ."""
        log.warning("entry parked in the DLQ", error_code=code, distribution_id=did, entry_id=entry.entry_id,
                    reason=reason, destination=entry.fields.get("destination"), queue=entry.queue,
                    console=logs.console_link("dlq"))  # no job row: the DLQ page lists the entry
        held = self.held.by_key[(entry.queue, entry.entry_id)]
        fake = jobs.Outcome(did or "", entry.fields.get("destination", ""), JobStatus.DEAD, self.worker_id, [],
                            code, reason)
        self.enqueue(held, fake, record=False)

    async def run(self) -> None:
        task = asyncio.current_task()
        while True:
            stop_swallowed_cancel(task)
            await self.event.wait()
            if len(self.outbox) < SMALL_BATCH and not self.stopping:
                await asyncio.sleep(LINGER_SECONDS)
            self.event.clear()
            if not self.outbox:
                continue
            batch, self.outbox = self.outbox, []
            self.committing = True
            try:
                await self.commit(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("commit failed unexpectedly; entries stay pending", count=len(batch))
                self.held.release([h for h, _ in batch])
            finally:
                self.committing = False

    async def drain(self, timeout: float) -> None:
        """Let the committer write and ack every outcome already known."""
        deadline = time.monotonic() + timeout
        while (self.outbox or self.committing) and time.monotonic() < deadline:
            self.event.set()
            await asyncio.sleep(0.01)

    async def commit(self, batch: list[tuple[Held, jobs.Outcome | None]]) -> None:
        """Outcome in Postgres first, then ack/defer/DLQ in Redis, then free the slots."""
        to_write = [o for h, o in batch if o is not None and h.job is not None]
        if to_write:
            done = await with_db(self.pool, lambda c: self._record(c, to_write), self._is_stopping)
            if done is None and self.stopping:
                self.held.release([h for h, _ in batch])
                return
        crash.point("after_commit")
        acks: dict[str, list[str]] = defaultdict(list)
        defers: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
        dlq: list[DlqRecord] = []
        for held, outcome in batch:
            e = held.entry
            if outcome is not None and outcome.status == JobStatus.RETRYING and outcome.next_attempt_at:
                defers[e.queue].append((e.entry_id, outcome.distribution_id, outcome.next_attempt_at.timestamp()))
                continue
            acks[e.queue].append(e.entry_id)
            if outcome is not None and outcome.status in PARKED:
                dlq.append(DlqRecord(
                    distribution_id=outcome.distribution_id,
                    destination=outcome.destination,
                    reason="permanent_failure" if outcome.status == JobStatus.FAILED else (
                        "max_retries_exceeded" if held.job is not None else "unprocessable_entry"),
                    error_code=outcome.error_code or "",
                    last_error=logs.clip(outcome.error_message or "", 500),
                    entry_id=e.entry_id,
                    queue=e.queue,
                ))
        backoff = Backoff()
        while True:
            try:
                if dlq:  # inline, not to_dlq(): no extra coroutine per commit
                    await self.queue.to_dlq([r.fields() for r in dlq])
                    dlq = []
                for q, items in defers.items():
                    await self.queue.defer(q, items)
                defers = {}
                for q, ids in acks.items():
                    await self.queue.ack(q, ids)
                break
            except (RedisError, OSError) as exc:
                if self.stopping and backoff.n > 20:
                    log.error("Redis unavailable at shutdown; entries stay pending", error=logs.clip(str(exc), 200))
                    break
                delay = backoff.next()
                log.warning("Redis unavailable; retrying ack", error=logs.clip(str(exc), 200), retry_in=delay)
                await asyncio.sleep(delay)
        self._account(batch)
        self.held.release([h for h, _ in batch])

    async def refile_parked(self, entries: list[tuple[Entry, str]]) -> bool:
        """Reclaimed entries whose jobs Postgres already holds parked: their worker died between
        recording the outcome and writing the DLQ entry (``commit`` writes Postgres first).
        Their DLQ entries are filed now, before the entries are acked as duplicates.
        A worker that died after its DLQ write but before its ack leaves the job filed twice: a
        duplicate DLQ entry, never a parked job missing from the DLQ. False if Postgres or
        Redis failed: the entries stay pending, to be filed at the next reclaim."""
        try:
            async with self.pool.connection() as conn:
                parked = await jobs.parked_errors(conn, [did for _, did in entries])
            records = []
            for e, did in entries:
                if did in parked:
                    destination, status, code, error = parked[did]
                    records.append(DlqRecord(did, destination, jobs.dlq_reason(status, code), code or "",
                                             (error or "")[:500], e.entry_id, e.queue))
            await to_dlq(self.queue, records)
        except Exception as exc:  # Postgres or Redis away: the next reclaim tries again
            log.warning("cannot file the DLQ entries of reclaimed parked jobs; they stay pending",
                        count=len(entries), error=f"{type(exc).__name__}: {exc}"[:200])
            return False
        if records:
            log.warning("filed the DLQ entries of parked jobs whose worker died before writing them",
                        count=len(records))
        return True

    @staticmethod
    async def _record(conn: psycopg.AsyncConnection[Any], outcomes: list[jobs.Outcome]) -> None:
        """Outcomes are one statement: in autocommit, one round trip (synchronous commit)."""
        async with db.autocommit(conn):
            await jobs.record_outcomes(conn, outcomes)

    def _account(self, batch: list[tuple[Held, jobs.Outcome | None]]) -> None:
        m = self.metrics
        now = _utc()
        observe = m.end_to_end.observe
        delivered = 0
        for held, outcome in batch:
            if outcome is None or held.job is None:
                continue
            if outcome.status == JobStatus.DELIVERED:
                delivered += 1
                observe((now - held.job.created_at).total_seconds())
            elif outcome.status in PARKED:
                self.failed += 1
                m.requests.labels("failed").inc()
                log.error("distribution parked in the DLQ", distribution_id=outcome.distribution_id,
                          destination=outcome.destination, error_code=outcome.error_code,
                          correlation_id=held.job.correlation_id, last_error=outcome.error_message,
                          attempt=held.job.attempts + len(outcome.attempts),
                          total_attempts=held.job.max_attempts, destination_url=self._log_url(outcome.destination),
                          outcome=outcome.status, console=logs.console_link("distributions", outcome.distribution_id))
            elif outcome.attempts:
                fields = dict(distribution_id=outcome.distribution_id, destination=outcome.destination,
                              error_code=outcome.error_code, correlation_id=held.job.correlation_id,
                              attempt=held.job.attempts + len(outcome.attempts), total_attempts=held.job.max_attempts,
                              last_error=outcome.error_message, destination_url=self._log_url(outcome.destination))
                log.warning("delivery attempt failed", **fields)
                if log.enabled(10):
                    log.debug("delivery will be retried", next_attempt_at=outcome.next_attempt_at, **fields)
            elif log.enabled(10):
                log.debug("delivery deferred", distribution_id=outcome.distribution_id,
                          destination=outcome.destination, error_code=outcome.error_code,
                          correlation_id=held.job.correlation_id, next_attempt_at=outcome.next_attempt_at)
        if delivered:  # one locked increment per commit, not one per delivery
            self.delivered += delivered
            self._delivered_total.inc(delivered)

    def _log_url(self, destination: str) -> str | None:
        client = self.clients.get(destination)
        return logs.safe_url(client.url) if client is not None else None
