"""The delivery policy: what an attempt's result means for its job.

Shared by the single path (``Engine.deliver``) and the batch path (``batching.Batcher``):
one circuit breaker and one retry schedule per destination, the metrics an attempt
observes, and the outcome (delivered, retrying at a time, failed, dead) each job gets.
It does no I/O: the committer writes what it decides (docs/architecture.md, "Delivery
guarantees", "Outcomes").
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

from ms07 import logs
from ms07.engine.breaker import CircuitBreaker
from ms07.engine.delivery import AttemptResult, ErrorCode
from ms07.engine.retry import RetryPolicy
from ms07.metrics import CIRCUIT_VALUES, Metrics
from ms07.resolved import ResolvedDestination
from ms07.store import jobs
from ms07.store.status import JobStatus

log = logs.get("DistributionWorker")

MAX_RETRY_AFTER = 3600.0


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DeliveryPolicy:
    """Breakers, retry schedules and outcomes of the destinations one worker delivers to."""

    def __init__(self, destinations: Iterable[ResolvedDestination], worker_id: str, metrics: Metrics) -> None:
        self.worker_id = worker_id
        self.metrics = metrics
        self.breakers: dict[str, CircuitBreaker] = {}
        self.retry: dict[str, RetryPolicy] = {}
        # Breaker transitions not yet published (upkeep's circuits loop takes them).
        self.circuit_updates: list[tuple[str, str]] = []
        self.recent_latency: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=1000))
        self.handed_back = 0
        # Since when every attempt to a destination has failed (monotonic), for auto-pause.
        self.failing_since: dict[str, float] = {}
        self._children: dict[str, tuple[Any, Any, Any, deque[float]]] = {}
        for dest in destinations:
            cb = dest.circuit_breaker
            self.breakers[dest.name] = CircuitBreaker(dest.name, cb.failure_threshold, cb.recovery_timeout,
                                                      self._on_circuit)
            self.retry[dest.name] = RetryPolicy.for_destination(dest)

    def _on_circuit(self, name: str, state: str) -> None:
        self.metrics.circuit_state.labels(name).set(CIRCUIT_VALUES[state])
        log.warning("circuit breaker changed state", destination=name, state=state,
                    console=logs.console_link("destinations", name))
        self.circuit_updates.append((name, state))

    def hand_back(self, job: jobs.ClaimedJob) -> jobs.Outcome:
        """Draining: a delivery that has not started yet goes back to the queue, due now and
        with no attempt counted, for the other workers (or the next start) to take at once,
        instead of holding up the drain or waiting ``claim_idle_seconds`` for a reclaim.
        The job keeps its last error."""
        self.handed_back += 1
        return self.outcome(job, JobStatus.RETRYING, None, None, next_in=0.0)

    def defer_for_circuit(self, job: jobs.ClaimedJob) -> jobs.Outcome:
        """No request while the destination's circuit is open: back to the delayed set,
        with no attempt counted, until the circuit lets a probe through."""
        self.metrics.errors.labels(job.destination, ErrorCode.CIRCUIT_OPEN).inc()
        return self.outcome(job, JobStatus.RETRYING, ErrorCode.CIRCUIT_OPEN, "circuit open; deferred",
                            next_in=self.breakers[job.destination].retry_in())

    def observe(self, destination: str, result: AttemptResult) -> None:
        children = self._children.get(destination)
        if children is None:
            # labels() hashes and locks on every call: resolve the children once per destination.
            m = self.metrics
            children = self._children[destination] = (
                m.attempts.labels("success", destination), m.attempts.labels("failed", destination),
                m.latency.labels(destination), self.recent_latency[destination])
        success, failed, latency, recent = children
        if result.success:
            success.inc()
            if destination in self.failing_since:
                del self.failing_since[destination]
        else:
            failed.inc()
            if destination not in self.failing_since:
                self.failing_since[destination] = time.monotonic()
        latency.observe(result.latency)
        recent.append(result.latency)
        if result.error_code:
            self.metrics.errors.labels(destination, result.error_code).inc()

    @staticmethod
    def attempt_row(attempt: int, r: AttemptResult) -> jobs.AttemptRow:
        return jobs.AttemptRow(attempt, r.started_at, r.completed_at, r.success, r.http_status,
                               r.error_code, r.error_message)

    def decide(self, job: jobs.ClaimedJob, attempt: int, result: AttemptResult,
               rows: list[jobs.AttemptRow]) -> jobs.Outcome:
        if result.success:
            return jobs.Outcome(job.distribution_id, job.destination, JobStatus.DELIVERED, self.worker_id, rows)
        if not result.retryable:
            return self.outcome(job, JobStatus.FAILED, result.error_code, result.error_message, rows=rows)
        if attempt >= job.max_attempts:
            return self.outcome(job, JobStatus.DEAD, result.error_code,
                                f"retries exhausted after {attempt} attempts: {result.error_message}", rows=rows)
        # Only jobs of configured destinations get here (deliver() fails the others).
        delay = self.retry[job.destination].delay(attempt)
        if result.retry_after is not None:
            delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
        return self.outcome(job, JobStatus.RETRYING, result.error_code, result.error_message, rows=rows, next_in=delay)

    def outcome(self, job: jobs.ClaimedJob, status: str, code: str | None, message: str | None, *,
                rows: list[jobs.AttemptRow] | None = None, next_in: float | None = None) -> jobs.Outcome:
        next_at = _utc() + dt.timedelta(seconds=next_in) if next_in is not None else None
        return jobs.Outcome(job.distribution_id, job.destination, status, self.worker_id, rows or [],
                            code, message, next_at)
