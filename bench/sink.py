"""A fast HTTP sink for benchmarks: a separate process, records Idempotency-Keys.

    python -m bench.sink PORT [--fail-rate 0.3] [--hang-rate 0.05] [--hang-seconds 5]

A batch request (``X-Distribution-Batch-Size``) counts once for each distribution id in
its array body. Only what the sink accepts counts: not the 500s it answers on purpose; a
request it hangs on counts when it answers, even if the client stopped waiting (the
receiver got it: a later retry is a duplicate).

GET /stats answers {"requests": n, "unique": n, "duplicates": n, "first": s, "last": s}
(``first``: monotonic time of the first request since the last reset; ``last``: of the
latest request with a new key, so (unique - 1) / (last - first) is the delivery rate seen
by the receiver); GET /keys the accepted deliveries per id; GET /first the time (epoch
seconds) each id was first accepted; GET /latency p50/p95/p99 of now - ``t`` for bodies
stamped by bench.peers.payload (enqueue -> delivered, measured here for every system);
``/latency?skip=S`` leaves out what arrived in the first S seconds after the first stamped
arrival (a producer process's warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from aiohttp import web

from bench.peers import payload


def build(fail_rate: float = 0.0, hang_rate: float = 0.0, hang_seconds: float = 5.0) -> web.Application:
    seen: dict[str, int] = {}
    first: dict[str, float] = {}
    stats: dict[str, float] = {"requests": 0, "duplicates": 0, "first": 0.0, "last": 0.0}
    latencies: list[tuple[float, float]] = []  # (arrival on the monotonic clock, enqueue -> arrival)
    rng = random.Random(7)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        roll = rng.random()
        if roll < hang_rate:
            await asyncio.sleep(hang_seconds)
        elif roll < hang_rate + fail_rate:
            return web.Response(status=500, text="chaos")
        if not stats["requests"]:
            stats["first"] = time.monotonic()
        stats["requests"] += 1
        now = time.time()
        sent = payload.stamp(body)
        for key in _ids(request, body):
            count = seen.get(key, 0)
            seen[key] = count + 1
            if count:
                stats["duplicates"] += 1
                continue
            first[key] = now
            stats["last"] = time.monotonic()
            if sent is not None:
                latencies.append((stats["last"], now - sent))
        return web.Response(text="ok")

    async def get_stats(request: web.Request) -> web.Response:
        # Polled often while a run goes on: O(1), nothing recounted.
        return web.json_response({"requests": stats["requests"], "unique": len(seen),
                                  "duplicates": stats["duplicates"],
                                  "first": stats["first"], "last": stats["last"]})

    async def latency(request: web.Request) -> web.Response:
        # ?skip=S leaves out what arrived in the first S seconds after the first stamped
        # arrival: the warm-up of a producer process started for the run.
        skip = float(request.query.get("skip", "0"))
        start = latencies[0][0] if latencies else 0.0
        values = sorted(v for at, v in latencies if at >= start + skip)

        def pct(p: float) -> float | None:
            return values[min(len(values) - 1, int(p * len(values)))] if values else None

        return web.json_response({"n": len(values), "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
                                  "max": values[-1] if values else None, "skipped": len(latencies) - len(values)})

    async def keys(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(seen), content_type="application/json")

    async def first_seen(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(first), content_type="application/json")

    async def reset(request: web.Request) -> web.Response:
        seen.clear()
        first.clear()
        latencies.clear()
        stats.update(requests=0, duplicates=0, first=0.0, last=0.0)
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/in", receive)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/keys", keys)
    app.router.add_get("/first", first_seen)
    app.router.add_get("/latency", latency)
    app.router.add_post("/reset", reset)
    app.router.add_get("/health", get_stats)
    return app


def _ids(request: web.Request, body: bytes) -> list[str]:
    if "X-Distribution-Batch-Size" in request.headers:
        try:
            items = json.loads(body)
        except ValueError:
            return []
        return [str(i.get("distribution_id")) for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    return [request.headers.get("Idempotency-Key", "")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--hang-rate", type=float, default=0.0)
    p.add_argument("--hang-seconds", type=float, default=5.0)
    a = p.parse_args()
    try:
        import uvloop  # noqa: F401 - optional, makes the sink cheaper

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build(a.fail_rate, a.hang_rate, a.hang_seconds), host="127.0.0.1", port=a.port,
                print=None, access_log=None, backlog=1024)


if __name__ == "__main__":
    main()
