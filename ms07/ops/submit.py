"""Accepting distributions: validate, record in Postgres, then enqueue in Redis.

Once the job rows are committed the distribution is *accepted*: if the XADD that
follows fails, the reconciler finds the job in Postgres and enqueues it. Bad input is
refused before anything is written.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from redis.exceptions import RedisError

from ms07 import logs
from ms07.config import Settings
from ms07.errors import UsageError
from ms07.queue import Queue
from ms07.store import db, jobs

log = logs.get("submit")


class PayloadTooLarge(UsageError):
    http_status = 413


class UnknownDestination(UsageError):
    http_status = 422


@dataclass
class Submitted:
    distributions: list[dict[str, str]] = field(default_factory=list)
    correlation_id: str | None = None
    replayed: bool = False
    enqueued: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"distributions": self.distributions, "correlation_id": self.correlation_id}


def encode_payload(payload: Any) -> bytes:
    """JSON payloads are compact UTF-8; raw bytes pass through unchanged."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"payload is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise UsageError("payload is nested too deeply") from None


def build_jobs(
    settings: Settings,
    destinations: Sequence[str],
    body: bytes,
    *,
    content_type: str = "application/json",
    correlation_id: str | None = None,
    priority: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[list[jobs.NewJob], str]:
    """Validate a submission and turn it into job rows (nothing is written here)."""
    if not destinations:
        raise UsageError("at least one destination is required")
    if len(set(destinations)) != len(destinations):
        raise UsageError("a destination is named twice")
    known = {d.name: d for d in settings.effective.values() if d.enabled}
    for name in destinations:
        if not isinstance(name, str) or name not in known:
            listed = ", ".join(sorted(known)) or "none configured"
            raise UnknownDestination(f"unknown destination {str(name)[:100]!r} (known: {listed})")
    prio = priority or settings.distribution.default_priority
    if not isinstance(prio, str) or prio not in settings.distribution.priorities:
        shown = repr(prio[:100]) if isinstance(prio, str) else f"of type {type(prio).__name__}"
        raise UsageError(f"unknown priority {shown} (known: {', '.join(settings.distribution.priorities)})")
    if correlation_id is not None and (not isinstance(correlation_id, str) or not 0 < len(correlation_id) <= 200):
        raise UsageError("correlation_id must be a string of 1 to 200 characters")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200):
        raise UsageError("idempotency_key must be a string of 1 to 200 characters")
    for what, value in (("correlation_id", correlation_id), ("idempotency_key", idempotency_key)):
        if value is not None:
            _storable(what, value)
    correlation = correlation_id or str(uuid.uuid4())
    out = []
    for name in destinations:
        dest = known[name]
        limit = dest.max_payload_bytes
        if len(body) > limit:
            raise PayloadTooLarge(
                f"payload is {len(body)} bytes, over the {limit}-byte limit of destination {name!r}"
            )
        out.append(
            jobs.NewJob(
                distribution_id=str(uuid.uuid4()),
                destination=name,
                payload=body,
                content_type=content_type,
                correlation_id=correlation,
                priority=prio,
                idempotency_key=idempotency_key,
                max_attempts=dest.max_attempts,
            )
        )
    return out, correlation


def _storable(what: str, value: str) -> None:
    """PostgreSQL text holds neither NUL nor lone surrogates: refused here, the INSERT
    failed on them (the API answered 500, the CLI printed a traceback)."""
    if "\x00" in value:
        raise UsageError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None


@dataclass
class Recorded:
    fresh: list[jobs.NewJob]
    existing: dict[tuple[str, str], tuple[str, str | None]]
    enqueued: bool = True


async def record_and_enqueue(
    conn: psycopg.AsyncConnection[Any], queue: Queue, new: Sequence[jobs.NewJob]
) -> Recorded:
    """Insert job rows (one transaction), then XADD the fresh ones.

    Without idempotency keys the insert is one statement: on an idle connection it runs in
    autocommit, one round trip instead of three (BEGIN, INSERT, COMMIT), committed just as
    durably before the XADD."""
    if (not any(j.idempotency_key for j in new) and not conn.autocommit
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE):
        async with db.autocommit(conn):
            fresh, existing = await jobs.insert_jobs(conn, new)
    else:
        async with conn.transaction():
            fresh, existing = await jobs.insert_jobs(conn, new)
    enqueued = True
    if fresh:
        try:
            await queue.enqueue((j.priority, j.distribution_id, j.destination) for j in fresh)
        except (RedisError, OSError) as exc:
            enqueued = False
            log.warning(
                "accepted but not enqueued; the reconciler will enqueue from Postgres",
                error=logs.clip(str(exc), 200),
                count=len(fresh),
            )
    return Recorded(fresh, existing, enqueued)


class DirectRecorder:
    """Records one submission on the caller's connection (CLI, tests)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], queue: Queue) -> None:
        self.conn, self.queue = conn, queue

    async def record(self, new: Sequence[jobs.NewJob]) -> Recorded:
        return await record_and_enqueue(self.conn, self.queue, new)


class SubmitBatcher:
    """Group-commits concurrent submissions (the HTTP API): the jobs of every request
    waiting while the previous batch was written go in one INSERT, one commit and one
    XADD pipeline, instead of a commit per request."""

    def __init__(self, pool: Any, queue: Queue, max_jobs: int = 1000) -> None:
        self.pool, self.queue, self.max_jobs = pool, queue, max_jobs
        self._pending: list[tuple[list[jobs.NewJob], asyncio.Future[Recorded]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def record(self, new: Sequence[jobs.NewJob]) -> Recorded:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="submit-batcher")
        fut: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._pending.append((list(new), fut))
        self._wake.set()
        return await fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch: list[tuple[list[jobs.NewJob], asyncio.Future[Recorded]]] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_jobs):
                    item = self._pending.pop(0)
                    batch.append(item)
                    size += len(item[0])
                await self._flush(batch)

    async def _flush(self, batch: list[tuple[list[jobs.NewJob], asyncio.Future[Recorded]]]) -> None:
        # Two requests of one batch with the same idempotency key: the first one wins.
        first: dict[tuple[str, str], jobs.NewJob] = {}
        unique: list[jobs.NewJob] = []
        for request, _ in batch:
            for job in request:
                if job.idempotency_key:
                    key = (job.idempotency_key, job.destination)
                    if key in first:
                        continue
                    first[key] = job
                unique.append(job)
        try:
            async with self.pool.connection() as conn:
                done = await record_and_enqueue(conn, self.queue, unique)
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        fresh_ids = {id(j) for j in done.fresh}
        for request, fut in batch:
            mine = [j for j in request if id(j) in fresh_ids]
            existing = dict(done.existing)
            for job in request:
                key = (job.idempotency_key or "", job.destination)
                if id(job) not in fresh_ids and key not in existing and key in first:
                    winner = first[key]
                    existing[key] = (winner.distribution_id, winner.correlation_id)
            if not fut.done():
                fut.set_result(Recorded(mine, existing, done.enqueued))


FIELDS = ("destinations", "payload", "correlation_id", "priority", "idempotency_key")


def from_json(body: Any, correlation_id: str | None = None) -> dict[str, Any]:
    """The keyword arguments of :func:`submit_with` from one submission as JSON (the API's
    body, an item of a batch, a line of ``ms07 submit --file x.jsonl``); ``correlation_id``:
    the default for a body without one. :class:`UsageError` names what is wrong."""
    if not isinstance(body, dict):
        raise UsageError("a submission must be a JSON object")
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise UsageError(f"unknown field {sorted(unknown)[0][:100]!r}")
    dests = body.get("destinations")
    if not isinstance(dests, list) or not dests or not all(isinstance(d, str) for d in dests):
        raise UsageError("destinations must be a non-empty list of destination names")
    if "payload" not in body:
        raise UsageError("payload is required")
    corr = body.get("correlation_id")
    return {"destinations": dests, "payload": body["payload"], "priority": body.get("priority"),
            "correlation_id": correlation_id if corr is None else corr,
            "idempotency_key": body.get("idempotency_key")}


class BatchTooLarge(UsageError):
    http_status = 413


def batch_from_json(body: dict[str, Any], max_items: int) -> list[Any]:
    """The items of a batch submit (``{"distributions": [...]}``), each still to be
    checked by :func:`submit_many`."""
    if set(body) != {"distributions"}:
        raise UsageError(f"unknown field {sorted(set(body) - {'distributions'})[0][:100]!r} next to distributions")
    items = body["distributions"]
    if not isinstance(items, list) or not items:
        raise UsageError("distributions must be a non-empty list of submissions")
    if len(items) > max_items:
        raise BatchTooLarge(f"batch has {len(items)} items, over the limit of {max_items} (service.max_batch_items)")
    return items


class BatchRefused(UsageError):
    """Some items of a batch are bad: nothing was written. ``items``: (index, error) of each."""

    def __init__(self, items: list[tuple[int, UsageError]]) -> None:
        self.items = items
        first, exc = items[0]
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        super().__init__(f"item {first}: {exc}{more}; nothing was submitted")
        statuses = {getattr(e, "http_status", 400) for _, e in items}
        # One status when every bad item agrees on it (all unknown destinations: 422), else 400.
        self.http_status = statuses.pop() if len(statuses) == 1 else 400


def _prepare(settings: Settings, item: dict[str, Any]) -> tuple[list[jobs.NewJob], str]:
    body = encode_payload(item["payload"])
    return build_jobs(
        settings,
        list(item["destinations"]),
        body,
        content_type=item.get("content_type", "application/json"),
        correlation_id=item.get("correlation_id"),
        priority=item.get("priority"),
        idempotency_key=item.get("idempotency_key"),
    )


def _answer(new: list[jobs.NewJob], correlation: str, done: Recorded) -> Submitted:
    result = Submitted(correlation_id=correlation, enqueued=done.enqueued)
    fresh = {id(j) for j in done.fresh}
    for job in new:
        did = job.distribution_id
        if id(job) not in fresh:
            did, corr = done.existing[(job.idempotency_key or "", job.destination)]
            # A replay answers with what the first submit made, correlation included.
            result.correlation_id = corr or result.correlation_id
        result.distributions.append({"distribution_id": did, "destination": job.destination})
    result.replayed = not any(id(j) in fresh for j in new)
    return result


async def submit_many(
    recorder: Any, settings: Settings, items: Sequence[Any], correlation_id: str | None = None
) -> list[Submitted]:
    """Accept every item (a submission as JSON, see :func:`from_json`; ``correlation_id``
    the default) in one commit, or none: :class:`BatchRefused` names each bad item, and
    nothing is written. A key used before, or by an earlier item of the batch, answers
    with what it made, as a repeated single submit would."""
    built: list[tuple[list[jobs.NewJob], str]] = []
    bad: list[tuple[int, UsageError]] = []
    for i, item in enumerate(items):
        try:
            built.append(_prepare(settings, from_json(item, correlation_id)))
        except UsageError as exc:
            bad.append((i, exc))
    if bad:
        raise BatchRefused(bad)
    everything = [j for new, _ in built for j in new]
    # Two items with one key and destination: the insert (or the batcher) keeps the first
    # and answers the later one with it, in ``existing``.
    done = await recorder.record(everything)
    return [_answer(new, corr, done) for new, corr in built]


async def submit_with(
    recorder: Any,
    settings: Settings,
    destinations: Sequence[str],
    payload: Any,
    *,
    content_type: str = "application/json",
    correlation_id: str | None = None,
    priority: str | None = None,
    idempotency_key: str | None = None,
) -> Submitted:
    """Accept one distribution for one or more destinations (one job each)."""
    item = {"destinations": destinations, "payload": payload, "content_type": content_type,
            "correlation_id": correlation_id, "priority": priority, "idempotency_key": idempotency_key}
    new, correlation = _prepare(settings, item)
    return _answer(new, correlation, await recorder.record(new))


async def submit(
    conn: psycopg.AsyncConnection[Any],
    queue: Queue,
    settings: Settings,
    destinations: Sequence[str],
    payload: Any,
    **options: Any,
) -> Submitted:
    """:func:`submit_with` on one connection."""
    return await submit_with(DirectRecorder(conn, queue), settings, destinations, payload, **options)
