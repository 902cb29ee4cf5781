"""Prometheus metrics with the guide's names (``zenia_distribution_*``) (docs/architecture.md, "Guide procedures").

Each engine owns its registry, so several engines in one test process don't collide.
The registry also carries the standard ``process_*`` metrics of the engine's process.
Labelled series of every configured destination and queue are created at zero by
:meth:`Metrics.track` so that ``rate()`` and absence alerts work from the first scrape.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Delivery latencies run from sub-millisecond (loopback) to the timeout (60 s default).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The engine's metrics; ``exposition()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.requests = Counter(
            "zenia_distribution_requests_total",
            "Distributions finished, by outcome (success: delivered; failed: parked in the DLQ).",
            ["status"],
            registry=r,
        )
        self.attempts = Counter(
            "zenia_distribution_attempts_total",
            "HTTP delivery attempts by outcome and destination.",
            ["status", "destination"],
            registry=r,
        )
        self.errors = Counter(
            "zenia_distribution_errors_total",
            "Failed attempts and deferrals by destination and error code.",
            ["destination", "error_code"],
            registry=r,
        )
        self.latency = Histogram(
            "zenia_distribution_latency_seconds",
            "HTTP delivery attempt latency by destination.",
            ["destination"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "zenia_distribution_end_to_end_seconds",
            "From submit to delivered.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.worker_info = Gauge(
            "zenia_distribution_worker_info",
            "Always 1: which engine process answered this scrape (worker: its index under ms07 run --workers N).",
            ["worker_id", "pid", "worker"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "zenia_distribution_queue_depth", "Entries in the queue stream (backlog).", ["queue"], registry=r
        )
        self.pending = Gauge(
            "zenia_distribution_pending", "Entries read by a consumer and not yet acknowledged.", ["queue"], registry=r
        )
        self.delayed = Gauge(
            "zenia_distribution_delayed", "Retries waiting in the delayed set.", ["queue"], registry=r
        )
        self.dlq_size = Gauge("zenia_distribution_dlq_size", "Entries in the dead-letter queue.", registry=r)
        self.active_workers = Gauge(
            "zenia_distribution_active_workers", "Workers with a live heartbeat.", registry=r
        )
        self.in_flight = Gauge(
            "zenia_distribution_in_flight", "Deliveries this worker holds right now.", registry=r
        )
        self.circuit_state = Gauge(
            "zenia_distribution_circuit_state",
            "Circuit breaker state per destination (0 closed, 1 half-open, 2 open).",
            ["destination"],
            registry=r,
        )
        self.destination_healthy = Gauge(
            "zenia_distribution_destination_healthy",
            "Last health probe of each destination (1 healthy, 0 unhealthy).",
            ["destination"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "zenia_distribution_token_expiry_seconds",
            "Seconds until the cached OAuth2 token of a destination expires.",
            ["destination"],
            registry=r,
        )
        self.rss = Gauge("zenia_distribution_worker_rss_bytes", "Resident memory of this worker.", registry=r)
        self.memory_threshold = Gauge(
            "zenia_distribution_memory_threshold_bytes", "RSS at which the memory guard drains.", registry=r
        )
        self.draining = Gauge(
            "zenia_distribution_draining", "1 while the worker drains (SIGTERM or memory guard).", registry=r
        )
        self.reclaimed = Counter(
            "zenia_distribution_reclaimed_total", "Entries taken over from dead consumers.", registry=r
        )
        self.requeued = Counter(
            "zenia_distribution_requeued_total", "Jobs the reconciler put back from Postgres.", registry=r
        )
        # Retention: what this process removed, and the last success of any replica.
        self.retention_rows = Counter(
            "zenia_distribution_retention_removed_rows_total",
            "Rows retention removed (payloads: expunged), by table.", ["table"], registry=r,
        )
        self.retention_bytes = Counter(
            "zenia_distribution_retention_removed_bytes_total",
            "Bytes of the rows retention removed (payloads: expunged), by table.", ["table"], registry=r,
        )
        self.retention_last_success = Gauge(
            "zenia_distribution_retention_last_success_timestamp_seconds",
            "When a retention run last succeeded (any replica; 0: never).", registry=r,
        )
        self.retention_enabled = Gauge(
            "zenia_distribution_retention_enabled", "1 when a retention age is set, 0 when retention is off.",
            registry=r,
        )
        for table in ("distribution_jobs", "distribution_attempts", "payloads", "dlq_entries"):
            self.retention_rows.labels(table)
            self.retention_bytes.labels(table)

        self.auto_paused = Counter(
            "zenia_destination_auto_paused_total",
            "Destinations this process paused after auto_pause_after of failing attempts.", ["destination"],
            registry=r,
        )

    def retention_removed(self, table: str, rows: int, size: int) -> None:
        self.retention_rows.labels(table).inc(rows)
        self.retention_bytes.labels(table).inc(size)

    def track(self, destinations: Iterable[str], queues: Iterable[str]) -> None:
        """Create the zero-valued series of these destinations and queues (idempotent)."""
        for status in ("success", "failed"):
            self.requests.labels(status)
        for name in destinations:
            for status in ("success", "failed"):
                self.attempts.labels(status, name)
            self.latency.labels(name)
            self.circuit_state.labels(name)
        for q in queues:
            self.queue_depth.labels(q)
            self.pending.labels(q)
            self.delayed.labels(q)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST
