"""A fast HTTP sink for benchmarks: a separate process, records Idempotency-Keys.

    python -m bench.sink PORT [--fail-rate 0.3] [--hang-rate 0.05] [--hang-seconds 5]

GET /stats answers {"requests": n, "unique": n, "duplicates": n}; GET /keys the keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random

from aiohttp import web


def build(fail_rate: float = 0.0, hang_rate: float = 0.0, hang_seconds: float = 5.0) -> web.Application:
    seen: dict[str, int] = {}
    stats = {"requests": 0}
    rng = random.Random(7)

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        roll = rng.random()
        if roll < hang_rate:
            await asyncio.sleep(hang_seconds)
        elif roll < hang_rate + fail_rate:
            return web.Response(status=500, text="chaos")
        stats["requests"] += 1
        key = request.headers.get("Idempotency-Key", "")
        seen[key] = seen.get(key, 0) + 1
        return web.Response(text="ok")

    async def get_stats(request: web.Request) -> web.Response:
        dup = sum(n - 1 for n in seen.values())
        return web.json_response({"requests": stats["requests"], "unique": len(seen), "duplicates": dup})

    async def keys(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(seen), content_type="application/json")

    async def reset(request: web.Request) -> web.Response:
        seen.clear()
        stats["requests"] = 0
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/in", receive)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/keys", keys)
    app.router.add_post("/reset", reset)
    app.router.add_get("/health", get_stats)
    return app


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
