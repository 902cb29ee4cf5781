"""arq peer: an aiohttp session opened in ``on_startup``, ``max_jobs`` = concurrency.

Worker: ``python -m bench.peers.arq_app worker`` (uvloop installed first, as for ms07).
Producer: ``python -m bench.peers.arq_app --n N [--rate R]``.
Settings (arq's Worker docs): ``max_jobs`` = C, ``keep_result`` = 0 (no result written
back), ``poll_delay`` from ``BENCH_ARQ_POLL_DELAY`` (default 0.05 s rather than 0.5 s:
the worker sleeps that long between two reads of the queue), ``queue_read_limit`` at its
default (max(5 x max_jobs, 100)), hiredis installed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import aiohttp
from arq import create_pool
from arq.connections import RedisSettings

from bench.peers import pace

URL = os.environ.get("BENCH_SINK_URL", "http://127.0.0.1:1/in")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))
REDIS = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


async def startup(ctx: dict[str, Any]) -> None:
    ctx["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["session"].close()


async def deliver(ctx: dict[str, Any], key: str, body: bytes) -> None:
    async with ctx["session"].post(
        URL, data=body, headers={"Content-Type": "application/json", "Idempotency-Key": key}
    ) as r:
        r.raise_for_status()
        await r.read()


class WorkerSettings:
    functions = [deliver]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS
    max_jobs = CONCURRENCY
    keep_result = 0
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.05"))
    log_results = False


async def produce(a: Any) -> None:
    from bench.peers import payload

    pool = await create_pool(REDIS)

    async def send(i: int) -> None:
        await pool.enqueue_job("deliver", f"{a.prefix}-{i}", payload.body())

    seconds = await pace.run_async(a.n, a.rate, a.concurrency, send)
    await pool.aclose()
    pace.report(a.n, seconds)


def main() -> None:
    import uvloop

    if sys.argv[1:2] == ["worker"]:
        from arq.worker import run_worker

        uvloop.install()
        run_worker(WorkerSettings)  # type: ignore[arg-type]
        return
    uvloop.run(produce(pace.args("Enqueue arq delivery jobs")))


if __name__ == "__main__":
    main()
