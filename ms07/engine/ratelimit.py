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


class RateLimiter:
    def __init__(self, redis: Any, destination: str, per_second: float, burst: int | None = None) -> None:
        self.key = keys.rate_limit(destination)
        self.interval = 1.0 / per_second
        self.burst = max(1, burst or 1)
        self._script = redis.register_script(_RESERVE)

    async def acquire(self) -> float:
        """Wait for this request's slot; returns how long it waited."""
        wait = float(await self._script(keys=[self.key], args=[self.interval, self.burst]))
        if wait > 0:
            await asyncio.sleep(wait)
        return wait
