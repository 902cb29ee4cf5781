"""Producer plumbing shared by every system (standard library only).

Every producer enqueues ``n`` jobs, each carrying a fresh :func:`payload.body` (stamped
just before its enqueue call) and a unique key the worker sends as ``Idempotency-Key``;
``rate`` > 0 paces the submissions (job i is due at t0 + i / rate), 0 means as fast as
the producer goes. The result line is JSON on stdout: {"n", "seconds", "rate", "cpu"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable


def args(description: str, config: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    if config:
        p.add_argument("--config", required=True, help="the ms07 config file")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.0, help="jobs/s; 0 = as fast as possible")
    p.add_argument("--concurrency", type=int, default=64, help="enqueue calls in flight")
    p.add_argument("--prefix", default="k", help="prefix of the Idempotency-Key of each job")
    return p.parse_args()


async def run_async(
    n: int, rate: float, concurrency: int, send: Callable[[int], Awaitable[None]]
) -> float:
    """``send(i)`` for i in range(n) from ``concurrency`` coroutines; returns seconds taken."""
    counter = iter(range(n))
    t0 = time.perf_counter()

    async def worker() -> None:
        for i in counter:
            if rate:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await send(i)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))
    return time.perf_counter() - t0


def run_sync(n: int, rate: float, send: Callable[[int], None]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        if rate:
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        send(i)
    return time.perf_counter() - t0


def report(n: int, seconds: float) -> None:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "n": n,
                "seconds": seconds,
                "rate": n / seconds if seconds else None,
                "cpu": ru.ru_utime + ru.ru_stime,
            }
        ),
        flush=True,
    )
