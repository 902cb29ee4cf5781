"""taskiq peer: taskiq-redis ``RedisStreamBroker`` (consumer group, acks), aiohttp.

Worker::

    taskiq worker bench.peers.taskiq_app:broker --workers 1 --max-async-tasks C \
        --max-prefetch C --no-parse

Producer: ``python -m bench.peers.taskiq_app --n N [--rate R]``.
Settings (taskiq's worker CLI and taskiq-redis docs): one worker process with
``--max-async-tasks`` = C (the same concurrency as the others, in one process),
``--max-prefetch`` C, ``--no-parse`` (no pydantic parsing of arguments), the stream read
with ``xread_count`` 100 (its default) and ``consumer_id`` "0" so that jobs enqueued
before the worker starts are read; the taskiq CLI runs the worker on uvloop when it is
installed (it is); no result backend.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisStreamBroker

from bench.peers import pace

URL = os.environ.get("BENCH_SINK_URL", "http://127.0.0.1:1/in")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))

broker = RedisStreamBroker(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    queue_name="bench",
    consumer_id="0",
    xread_block=1000,
)
_session: dict[str, aiohttp.ClientSession] = {}


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def startup(state: TaskiqState) -> None:
    _session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def shutdown(state: TaskiqState) -> None:
    await _session["s"].close()


@broker.task(task_name="deliver")
async def deliver(key: str, body: str) -> None:
    async with _session["s"].post(
        URL,
        data=body.encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    ) as r:
        r.raise_for_status()
        await r.read()


async def produce(a: Any) -> None:
    from bench.peers import payload

    await broker.startup()

    async def send(i: int) -> None:
        await deliver.kiq(f"{a.prefix}-{i}", payload.body().decode())

    seconds = await pace.run_async(a.n, a.rate, a.concurrency, send)
    await broker.shutdown()
    pace.report(a.n, seconds)


def main() -> None:
    import uvloop

    uvloop.run(produce(pace.args("Enqueue taskiq delivery tasks")))


if __name__ == "__main__":
    main()
