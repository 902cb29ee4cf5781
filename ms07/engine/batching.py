"""Batching for destinations that accept arrays (``batch: {max_items, max_wait_ms}``).

Deliveries for such a destination wait up to ``max_wait_ms`` (or until ``max_items``
are waiting) and go out as one request: a JSON array of ``{"distribution_id",
"payload"}`` objects, at most ``max_concurrent`` batch requests in flight. The result of
the request applies to every job of the batch, and each job gets its own attempt row.

The 4xx rule: a client error on a whole batch says nothing about which item was wrong,
so it is not applied to every item. Each item is then sent again on its own (a one-item
array); only items the destination refuses on their own fail for good (and go to the
DLQ). Auth errors, 408 and 429 are not item problems: they are retried as a batch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

from ms07.config import BatchConfig
from ms07.engine import crash
from ms07.engine.delivery import AttemptResult, DestinationClient, ErrorCode
from ms07.engine.policy import DeliveryPolicy
from ms07.store import jobs

_SPLIT_CODES = {ErrorCode.HTTP_4XX, ErrorCode.PAYLOAD_TOO_LARGE}


def batch_body(items: list[jobs.ClaimedJob]) -> bytes:
    """The array a batch destination receives. JSON payloads are embedded as they are;
    anything else travels base64-encoded in ``payload_base64``."""
    parts = []
    for job in items:
        head = b'{"distribution_id":"' + job.distribution_id.encode() + b'",'
        if job.content_type.startswith("application/json"):
            parts.append(head + b'"payload":' + job.payload + b"}")
        else:
            encoded = json.dumps({"payload_base64": base64.b64encode(job.payload).decode(),
                                  "content_type": job.content_type})[1:]
            parts.append(head + encoded.encode())
    return b"[" + b",".join(parts) + b"]"


class Batcher:
    def __init__(self, policy: DeliveryPolicy, client: DestinationClient, config: BatchConfig,
                 draining: Callable[[], bool]) -> None:
        self.policy = policy
        self.draining = draining
        self.client = client
        self.max_items = config.max_items
        self.max_wait = config.max_wait_ms / 1000
        self.slots = asyncio.Semaphore(config.max_concurrent)
        self._pending: list[tuple[jobs.ClaimedJob, asyncio.Future[jobs.Outcome]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    async def deliver(self, job: jobs.ClaimedJob) -> jobs.Outcome:
        fut: asyncio.Future[jobs.Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((job, fut))
        if len(self._pending) >= self.max_items:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            items, self._pending = self._pending[: self.max_items], self._pending[self.max_items :]
            items = [(j, f) for j, f in items if not f.cancelled()]
            if items:
                task = asyncio.create_task(self._send(items))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, items: list[tuple[jobs.ClaimedJob, asyncio.Future[jobs.Outcome]]]) -> None:
        try:
            async with self.slots:
                if self.draining():  # not sent yet: back to the queue, like single deliveries
                    outcomes = [self.policy.hand_back(j) for j, _ in items]
                else:
                    outcomes = await self.send_batch([j for j, _ in items])
        except Exception as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), outcome in zip(items, outcomes, strict=True):
            if not fut.done():
                fut.set_result(outcome)

    async def send_batch(self, batch: list[jobs.ClaimedJob]) -> list[jobs.Outcome]:
        policy, client = self.policy, self.client
        breaker = policy.breakers[client.name]
        if client.limiter is not None:
            await client.limiter.acquire()
        if not breaker.allow():
            return [policy.defer_for_circuit(job) for job in batch]
        result = await self._post(batch, 1)
        self.batches_sent += 1
        crash.point("mid_batch")
        policy.observe(client.name, result)
        rows = {j.distribution_id: [policy.attempt_row(j.attempts + 1, result)] for j in batch}
        if result.auth_failure and client.auth is not None and client.auth.refreshable:
            await client.auth.invalidate(result.auth_generation)
            result = await self._post(batch, 2)
            policy.observe(client.name, result)
            for j in batch:
                rows[j.distribution_id].append(policy.attempt_row(j.attempts + 2, result))
        if result.success or not result.retryable or result.auth_failure:
            breaker.success()
        else:
            breaker.failure()
        if result.error_code in _SPLIT_CODES and len(batch) > 1:
            return await asyncio.gather(*(self._alone(j, rows[j.distribution_id]) for j in batch))
        return [policy.decide(j, j.attempts + len(rows[j.distribution_id]), result, rows[j.distribution_id])
                for j in batch]

    async def _post(self, batch: list[jobs.ClaimedJob], attempt: int) -> AttemptResult:
        batch_id = str(uuid.uuid4())
        return await self.client.send(
            batch_id, attempt, batch_body(batch), "application/json",
            extra_headers={"X-Distribution-Batch-Size": str(len(batch))},
        )

    async def _alone(self, job: jobs.ClaimedJob, rows: list[jobs.AttemptRow]) -> jobs.Outcome:
        """A rejected batch's item, sent on its own to get its own verdict."""
        attempt = job.attempts + len(rows) + 1
        result = await self.client.send(job.distribution_id, attempt, batch_body([job]), "application/json",
                                        extra_headers={"X-Distribution-Batch-Size": "1"})
        self.policy.observe(self.client.name, result)
        rows = [*rows, self.policy.attempt_row(attempt, result)]
        return self.policy.decide(job, attempt, result, rows)

    async def close(self) -> None:
        self._flush()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def batcher_for(policy: DeliveryPolicy, client: DestinationClient, draining: Callable[[], bool]) -> Batcher | None:
    cfg = client.config.batch
    return Batcher(policy, client, cfg, draining) if cfg is not None else None


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    """What a receiver does with a batch body (used by tests and the benchmarks' sink)."""
    items = json.loads(body)
    return items if isinstance(items, list) else []
