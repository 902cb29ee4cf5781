"""Per-destination rate limit shared by every replica through Redis (GCRA).

Each request reserves the next slot of the destination's schedule in one Lua call and
sleeps until it comes: over the limit, deliveries wait, they do not fail. Redis's own
clock is used, so replicas with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ms07 import keys

# KEYS: the limiter key. ARGV: interval seconds, burst. Returns seconds to wait.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return string.format('%.6f', wait)
"""
# Each job of a rate-limited destination waits in a task of its own (engine.py), so a
# burst of held jobs reserved all at once: past the Redis client's 100 connections
# redis-py raised MaxConnectionsError, the delivery "crashed" and its entry waited for a
# reclaim (counted as a suspect, on the way to being parked as poison). A reservation
# is one short script: a few at a time keep up with any rate.
RESERVING_AT_ONCE = 4


class RateLimiter:
    def __init__(self, redis: Any, destination: str, per_second: float, burst: int | None = None) -> None:
        self.key = keys.rate_limit(destination)
        self.interval = 1.0 / per_second
        self.burst = max(1, burst or 1)
        self._script = redis.register_script(_RESERVE)
        self._reserving = asyncio.Semaphore(RESERVING_AT_ONCE)

    async def acquire(self) -> float:
        """Wait for this request's slot; returns how long it waited."""
        async with self._reserving:
            wait = float(await self._script(keys=[self.key], args=[self.interval, self.burst]))
        if wait > 0:
            await asyncio.sleep(wait)
        return wait
