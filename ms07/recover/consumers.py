"""Who is consuming: the group's consumers of every queue stream, with their heartbeats.

A consumer is *live* while its ``worker:heartbeat:<name>`` key exists (the engine sets it
with a TTL and deletes it when it stops), or while it touched the stream within the idle
threshold (a worker that just started may not have beaten yet). Everything else is dead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from ms07 import keys


@dataclass
class Consumer:
    queue: str
    name: str
    pending: int
    idle_ms: int
    heartbeat: bool
    live: bool


@dataclass
class Activity:
    consumers: list[Consumer] = field(default_factory=list)
    heartbeats: list[str] = field(default_factory=list)  # worker ids with a heartbeat key

    @property
    def live(self) -> list[Consumer]:
        return [c for c in self.consumers if c.live]

    @property
    def dead(self) -> list[Consumer]:
        return [c for c in self.consumers if not c.live]

    def live_names(self) -> set[str]:
        return {c.name for c in self.live} | set(self.heartbeats)

    def describe(self) -> str:
        live = sorted(self.live_names())
        if not live:
            return f"no active consumer ({len(self.consumers)} idle in the group)"
        shown = ", ".join(live[:5]) + (f" and {len(live) - 5} more" if len(live) > 5 else "")
        return f"{len(live)} active: {shown}"

    def as_dict(self) -> dict[str, Any]:
        return {"consumers": [asdict(c) for c in self.consumers], "heartbeats": self.heartbeats}


async def heartbeats(redis: Any) -> list[str]:
    found = []
    async for key in redis.scan_iter(match=keys.HEARTBEAT_PATTERN, count=500):
        found.append(key[len(keys.heartbeat("")) :])
    return sorted(found)


async def activity(redis: Any, priorities: list[str], idle_threshold_ms: int) -> Activity:
    beats = await heartbeats(redis)
    alive = set(beats)
    out = Activity(heartbeats=beats)
    for q in priorities:
        try:
            rows = await redis.xinfo_consumers(keys.stream(q), keys.GROUP)
        except ResponseError:  # no stream or no group: nobody consumes it
            continue
        for row in rows:
            name = row["name"]
            idle = int(row.get("idle", 0))
            has_beat = name in alive
            out.consumers.append(
                Consumer(
                    q,
                    name,
                    int(row.get("pending", 0)),
                    idle,
                    has_beat,
                    has_beat or idle < idle_threshold_ms,
                )
            )
    return out


# Delete a consumer only if it holds nothing, atomically (XGROUP DELCONSUMER on a consumer
# with pending entries makes them unclaimable). KEYS: stream. ARGV: group, consumer.
DELETE_IF_EMPTY = """
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""
