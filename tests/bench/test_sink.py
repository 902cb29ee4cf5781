"""The benchmarks' sink: what it counts is what bench/compare.py reports."""

from __future__ import annotations

import time

import aiohttp
from aiohttp.test_utils import TestServer

from bench import sink
from bench.peers import payload


async def test_latency_counts_each_key_once_and_can_leave_the_warm_up_out() -> None:
    server = TestServer(sink.build())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async def post(key: str, enqueued: float) -> None:
                async with http.post(server.make_url("/in"), data=payload.body(enqueued),
                                     headers={"Idempotency-Key": key}) as r:
                    assert r.status == 200

            await post("early", time.time() - 0.5)  # the warm-up: half a second late
            await post("early", time.time() - 0.5)  # a duplicate counts once
            first = time.monotonic()
            while time.monotonic() - first < 0.3:  # arrivals after the warm-up window
                await post(f"k{int((time.monotonic() - first) * 1e6)}", time.time() - 0.001)
            async with http.get(server.make_url("/latency")) as r:
                everything = await r.json()
            async with http.get(server.make_url("/latency"), params={"skip": "0.2"}) as r:
                steady = await r.json()
            async with http.get(server.make_url("/stats")) as r:
                stats = await r.json()
    finally:
        await server.close()
    assert stats["duplicates"] == 1 and everything["n"] == stats["unique"]
    assert everything["max"] >= 0.5 and everything["skipped"] == 0
    assert steady["skipped"] >= 1 and steady["n"] == everything["n"] - steady["skipped"]
    assert steady["max"] < 0.5
