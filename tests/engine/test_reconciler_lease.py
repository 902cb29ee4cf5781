"""The reconciler's lock is a short lease renewed while a pass runs: a replica killed while
holding it blocks the others' repair for one lease, not for the longest pass."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from ms07 import keys
from ms07.engine import upkeep


async def _gone_within(client: aioredis.Redis, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not await client.exists(keys.RECONCILER_LOCK):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_running_pass_keeps_its_lease_and_a_dead_holders_lapses(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        lease = 0.6
        await client.set(keys.RECONCILER_LOCK, "alive", px=int(lease * 1000))
        renew = asyncio.create_task(upkeep._renew_lease(client, "alive", lease))
        # Three leases long: without the renewal the key would be gone after one.
        assert not await _gone_within(client, 3 * lease), "the lease lapsed while its pass was running"
        renew.cancel()
        await asyncio.gather(renew, return_exceptions=True)
        # The holder stops renewing (killed): the lease lapses within one lease.
        assert await _gone_within(client, lease + 0.5)

        # Another holder's lease is never extended by a renewal that lost it.
        await client.set(keys.RECONCILER_LOCK, "other", px=int(lease * 1000))
        await asyncio.wait_for(upkeep._renew_lease(client, "alive", lease), timeout=2 * lease)
        assert await _gone_within(client, lease + 0.5)
    finally:
        await client.aclose()


async def test_a_pass_holds_a_short_lease_and_releases_it(make_settings, start_engine, redis_url: str) -> None:
    engine = await start_engine(make_settings(distribution={"reconcile_interval_seconds": 3600}), http_port=None)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        # Stopped by a flag, not a cancel: a cancel landing inside a redis-py command can be
        # swallowed (see upkeep.stop_swallowed_cancel).
        while not done.is_set():
            ttl = await client.pttl(keys.RECONCILER_LOCK)
            if ttl > 0:
                seen.append(ttl)
            await asyncio.sleep(0.001)

    try:
        await client.delete(keys.RECONCILER_LOCK)
        watcher = asyncio.create_task(watch())
        try:
            for _ in range(20):
                await upkeep.reconcile(engine)
                if seen:
                    break
        finally:
            done.set()
            await watcher
        assert seen, "no pass was seen holding the lock"
        assert max(seen) <= upkeep.RECONCILE_LEASE * 1000
        # Released, not left to expire (the engine's own first pass may still be finishing).
        assert await _gone_within(client, upkeep.RECONCILE_LEASE / 3), "a finished pass left its lock behind"
    finally:
        await client.aclose()
