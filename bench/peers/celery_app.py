"""Celery peer: Redis broker, threads pool, one ``requests.Session`` per thread.

Worker (run by bench/compare.py in the Celery virtual environment)::

    celery -A bench.peers.celery_app worker --pool threads --concurrency C \
        --without-heartbeat --without-gossip --without-mingle -Q bench

Producer: ``python -m bench.peers.celery_app --n N [--rate R]``.
Settings (Celery's "Optimizing" guide): no result backend (``task_ignore_result``), early
ack (the default; ``task_acks_late=False``), ``worker_prefetch_multiplier`` from
``BENCH_CELERY_PREFETCH`` (default 16: the guide advises a large multiplier for many
short tasks), JSON serializer, hiredis installed.
"""

from __future__ import annotations

import os
import threading

import requests
from celery import Celery

from bench.peers import pace

URL = os.environ.get("BENCH_SINK_URL", "http://127.0.0.1:1/in")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    task_acks_late=os.environ.get("BENCH_CELERY_ACKS_LATE") == "1",
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "16")),
    task_default_queue="bench",
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_pool_limit=CONCURRENCY,
    worker_disable_rate_limits=True,
)
_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1)
        session.mount("http://", adapter)
    return session


@app.task(name="deliver")
def deliver(key: str, body: str) -> None:
    r = _session().post(
        URL,
        data=body.encode(),
        timeout=10,
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )
    r.raise_for_status()


def main() -> None:
    a = pace.args("Enqueue Celery delivery tasks")
    from bench.peers import payload

    def send(i: int) -> None:
        deliver.apply_async((f"{a.prefix}-{i}", payload.body().decode()))

    seconds = pace.run_sync(a.n, a.rate, send)
    pace.report(a.n, seconds)


if __name__ == "__main__":
    main()
