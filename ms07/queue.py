"""The Redis Streams protocol (docs/architecture.md, "Redis protocol").

- one stream per priority, consumer group ``workers`` (recreated on ``NOGROUP``);
- enqueue = one script call per stream XADDs every entry of a submission batch (one
  command to pack and parse instead of one XADD each, and a reader blocked on the stream
  wakes to the whole batch at once, not to its first entry);
- done = XACK + XDEL in one script call (atomic as a MULTI was), so XLEN is the backlog;
- retry = ZADD to the delayed set + XACK + XDEL in one MULTI; a Lua script moves due
  entries back to the stream (atomic, so replicas never move one twice);
- reclaim = XPENDING (idle filter, with delivery counts) + XCLAIM: an entry delivered more
  than ``max_deliveries`` times is poison; an entry whose payload vanished (XDEL of a
  pending id) is reported so the caller repairs it from Postgres;
- nothing ever trims a stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ms07 import keys
from ms07.config import redact_url
from ms07.errors import DependencyUnavailable
from ms07.logs import clip

# XADD many entries to one stream. KEYS: stream. ARGV: n, the n distribution ids, then
# their n destinations. Returns the entry ids in that order.
_ENQUEUE = """
local n = tonumber(ARGV[1])
local ids = {}
for i = 2, n + 1 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'id', ARGV[i], 'destination', ARGV[i + n])
end
return ids
"""
# Done: XACK then XDEL of these entry ids. KEYS: stream. ARGV: group, the entry ids.
_ACK = """
local ids = {unpack(ARGV, 2)}
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
return #ids
"""
# Items per script call: Lua's unpack() is bounded by its C stack (LUAI_MAXCSTACK, 8000).
SCRIPT_CHUNK = 1000

# Move due retries back to their stream. KEYS: delayed, stream. ARGV: now, limit.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', member, 'retry', '1')
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


class InvalidMessage(ValueError):
    """A stream entry that cannot be a distribution; it goes to the DLQ, never crashes."""


@dataclass(frozen=True, slots=True)
class Entry:
    queue: str
    entry_id: str
    fields: dict[str, str]
    deliveries: int = 1


@dataclass
class Reclaimed:
    entries: list[Entry] = field(default_factory=list)
    poison: list[Entry] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)


def parse_entry(fields: dict[str, str]) -> str:
    """The distribution id an entry names, or InvalidMessage with the reason."""
    if not isinstance(fields, dict) or "id" not in fields:
        raise InvalidMessage("entry has no 'id' field")
    raw = fields["id"]
    try:
        return str(uuid.UUID(raw))
    except (ValueError, TypeError, AttributeError):
        raise InvalidMessage(f"entry id {clip(str(raw), 64)!r} is not a UUID") from None


def describe_redis_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


async def open_redis(url: str, *, check: bool = True, socket_timeout: float = 10.0) -> aioredis.Redis:
    """A client that retries dropped connections; BLOCK reads stay under socket_timeout.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) opens a Redis Cluster client
    from any seed node; every key one command, script or MULTI touches shares a hash
    tag (ms07/keys.py), so nothing crosses slots.

    Replies are decoded with ``errors="replace"``: anyone can XADD bytes that are not
    UTF-8, and a strict decoder raised UnicodeDecodeError out of XREADGROUP (killing the
    engine's reader task) and out of every reclaim pass after it. Replaced, such an entry
    parses as invalid and goes to the DLQ like any other malformed entry."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "encoding_errors": "replace",
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "health_check_interval": 30,
    }
    try:
        if is_cluster_url(url):
            from redis.asyncio.cluster import RedisCluster

            scheme, rest = url.split("://", 1)
            client: Any = RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **options)
        else:
            client = aioredis.Redis.from_url(
                url, retry_on_error=[RedisConnectionError, RedisTimeoutError], **options
            )
    except ValueError as exc:
        raise DependencyUnavailable(f"invalid Redis URL {redact_url(url)}: {exc}") from None
    if check:
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise DependencyUnavailable(
                f"cannot connect to Redis at {redact_url(url)}: {describe_redis_error(exc)}"
            ) from None
    return client


class Queue:
    """The work queue of one ms07 deployment (all its priority streams)."""

    def __init__(self, client: aioredis.Redis, priorities: Sequence[str] = ("default",)) -> None:
        self.redis = client
        self.priorities = list(priorities)
        self.cluster = type(client).__name__ == "RedisCluster"
        self._move_due = client.register_script(_MOVE_DUE)
        self._enqueue = client.register_script(_ENQUEUE)
        self._ack = client.register_script(_ACK)
        self._groups_ready: set[str] = set()

    # ------------------------------------------------------------------ group

    async def ensure_group(self, queue: str) -> None:
        try:
            await self.redis.xgroup_create(keys.stream(queue), keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(queue)

    async def ensure_groups(self) -> None:
        for queue in self.priorities:
            await self.ensure_group(queue)

    async def join(self, consumer: str) -> None:
        """Create the groups and this consumer in each: before 7.0 Redis creates a consumer
        only when a read returns entries, so an engine idle since its start was not one of
        the group's consumers (``queue stats``: 0 consumers)."""
        await self.ensure_groups()
        for queue in self.priorities:
            try:
                await self.redis.xgroup_createconsumer(keys.stream(queue), keys.GROUP, consumer)
            except ResponseError:  # Redis < 6.2: no CREATECONSUMER; the first read creates it
                pass

    # ------------------------------------------------------------------ produce

    async def enqueue(self, items: Iterable[tuple[str, str, str]]) -> list[str]:
        """XADD (queue, distribution_id, destination) items; returns the entry ids, in the
        order given. One script call per stream (and per ``SCRIPT_CHUNK`` items)."""
        by_queue: dict[str, list[tuple[int, str, str]]] = {}
        n = 0
        for queue, distribution_id, destination in items:
            by_queue.setdefault(queue, []).append((n, distribution_id, destination))
            n += 1
        out: list[str] = [""] * n
        for queue, todo in by_queue.items():
            for start in range(0, len(todo), SCRIPT_CHUNK):
                chunk = todo[start:start + SCRIPT_CHUNK]
                got = await self._enqueue(keys=[keys.stream(queue)],
                                          args=[len(chunk), *(c[1] for c in chunk), *(c[2] for c in chunk)])
                for (i, _, _), entry_id in zip(chunk, got, strict=True):
                    out[i] = str(entry_id)
        return out

    # ------------------------------------------------------------------ consume

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for this consumer across every priority stream, highest first."""
        try:
            if self.cluster and len(self.priorities) > 1:
                reply = await self._read_each(consumer, count, block_ms)
            else:
                streams = {keys.stream(q): ">" for q in self.priorities}
                reply = await self.redis.xreadgroup(keys.GROUP, consumer, streams, count=count, block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis restarted without persistence, or someone deleted the stream.
            await self.join(consumer)
            return []
        out: list[Entry] = []
        for stream_key, entries in reply or []:
            queue = keys.queue_of(stream_key)
            for entry_id, fields in entries:
                out.append(Entry(queue, entry_id, fields or {}))
        return out

    async def _read_each(self, consumer: str, count: int, block_ms: int) -> list[Any]:
        """On Redis Cluster each priority's stream lives on its own slot, so one XREADGROUP
        cannot name them all: poll them in priority order, blocking only on the last."""
        reply: list[Any] = []
        for i, q in enumerate(self.priorities):
            last = i == len(self.priorities) - 1
            got = await self.redis.xreadgroup(
                keys.GROUP, consumer, {keys.stream(q): ">"}, count=count, block=None if not last or reply else block_ms
            )
            if got:
                reply.extend(got)
                count -= sum(len(entries) for _, entries in got)
                if count <= 0:
                    break
        return reply

    async def ack(self, queue: str, entry_ids: Sequence[str]) -> None:
        """Done: XACK + XDEL together, so the entry leaves the PEL and the stream."""
        if not entry_ids:
            return
        stream = keys.stream(queue)
        for start in range(0, len(entry_ids), SCRIPT_CHUNK):
            await self._ack(keys=[stream], args=[keys.GROUP, *entry_ids[start:start + SCRIPT_CHUNK]])

    async def defer(self, queue: str, items: Sequence[tuple[str, str, float]]) -> None:
        """Retry later: (entry_id, distribution_id, due_epoch) into the delayed set and
        out of the stream, atomically."""
        if not items:
            return
        stream = keys.stream(queue)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(keys.delayed(queue), {did: due for _, did, due in items})
        ids = [eid for eid, _, _ in items]
        pipe.xack(stream, keys.GROUP, *ids)
        pipe.xdel(stream, *ids)
        await pipe.execute()

    async def schedule(self, items: Sequence[tuple[str, str, float]]) -> None:
        """(queue, distribution_id, due_epoch) into the delayed set (no stream entry)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue, did, due in items:
            pipe.zadd(keys.delayed(queue), {did: due})
        await pipe.execute()

    async def move_due(self, queue: str, now: float | None = None, limit: int = 500) -> int:
        """Move retries that are due back to the stream. Safe to run on every replica."""
        now = time.time() if now is None else now
        moved = await self._move_due(keys=[keys.delayed(queue), keys.stream(queue)], args=[now, limit])
        return int(moved)

    async def reclaim(
        self, queue: str, consumer: str, min_idle_ms: int, max_deliveries: int, count: int = 100,
        suspects: int | None = None,
    ) -> Reclaimed:
        """Take over entries idle longer than ``min_idle_ms`` (their consumer died).

        ``suspects`` caps how many *suspect* entries are taken: entries reclaimed before
        (delivered twice or more) whose holder died again. One of them may be what kills
        workers, so the caller can take them one at a time. None takes every one. Poison
        entries (delivered more than ``max_deliveries`` times) are always taken, to be parked.
        """
        stream = keys.stream(queue)
        result = Reclaimed()
        try:
            pending = await self.redis.xpending_range(
                stream, keys.GROUP, min="-", max="+", count=count, idle=min_idle_ms
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self.ensure_group(queue)
                return result
            raise
        if not pending:
            return result
        deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        ids = []
        for entry_id, times in deliveries.items():
            if 2 <= times <= max_deliveries and suspects is not None:
                if suspects <= 0:
                    continue
                suspects -= 1
            ids.append(entry_id)
        if not ids:
            return result
        claimed = await self.redis.xclaim(stream, keys.GROUP, consumer, min_idle_ms, ids)
        seen: set[str] = set()
        for item in claimed or []:
            if not item:
                continue
            entry_id, fields = item
            if fields is None:
                continue  # Redis 6.2 answers nil for an entry deleted while pending.
            seen.add(entry_id)
            entry = Entry(queue, entry_id, fields, deliveries.get(entry_id, 1) + 1)
            # Deliveries before this claim minus the first read = reclaims so far.
            if deliveries.get(entry_id, 1) > max_deliveries:
                result.poison.append(entry)
            else:
                result.entries.append(entry)
        vanished = [i for i in ids if i not in seen]
        if vanished:
            # On 6.2 these stay in the PEL until acked; on 7.x XCLAIM already dropped them,
            # but only if still idle: ack those that are no longer in the stream at all.
            still = await self._existing(stream, vanished)
            gone = [i for i in vanished if i not in still]
            if gone:
                await self.redis.xack(stream, keys.GROUP, *gone)
                result.vanished.extend(gone)
        return result

    async def _existing(self, stream: str, ids: Sequence[str]) -> set[str]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.xrange(stream, min=i, max=i, count=1)
        found = await pipe.execute()
        return {i for i, rows in zip(ids, found, strict=True) if rows}

    async def touch(self, queue: str, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries still being worked on (a long delivery)."""
        if entry_ids:
            await self.redis.xclaim(
                keys.stream(queue), keys.GROUP, consumer, 0, list(entry_ids), justid=True
            )

    # ------------------------------------------------------------------ DLQ

    async def to_dlq(self, records: Sequence[dict[str, str]]) -> None:
        """Append parked entries (with reason, error code, last error) to the DLQ stream."""
        if not records:
            return
        pipe = self.redis.pipeline(transaction=False)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for rec in records:
            pipe.xadd(keys.DLQ, {**{k: str(v) for k, v in rec.items() if v is not None}, "moved_to_dlq_at": now})
        await pipe.execute()

    async def dlq_entries(self, count: int = 1000) -> list[tuple[str, dict[str, str]]]:
        return [(i, f) for i, f in await self.redis.xrevrange(keys.DLQ, count=count)]

    async def dlq_remove(self, distribution_ids: Iterable[str] | None) -> int:
        """Remove DLQ entries naming these distributions (None: every entry)."""
        if distribution_ids is None:
            n = int(await self.redis.xlen(keys.DLQ))
            await self.redis.delete(keys.DLQ)
            return n
        wanted = set(distribution_ids)
        doomed = [i async for i, f in self.scan(keys.DLQ) if f.get("distribution_id") in wanted]
        if doomed:
            await self.redis.xdel(keys.DLQ, *doomed)
        return len(doomed)

    # ------------------------------------------------------------------ stats

    async def depth(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for q in self.priorities:
            pipe.xlen(keys.stream(q))
        return {q: int(n) for q, n in zip(self.priorities, await pipe.execute(), strict=True)}

    async def stats(self, overdue_grace_seconds: float = 60.0) -> dict[str, Any]:
        """XLEN, group, pending, consumers, delayed and DLQ sizes of every queue."""
        now = time.time()
        queues: dict[str, Any] = {}
        for q in self.priorities:
            stream = keys.stream(q)
            info: dict[str, Any] = {
                "stream": stream,
                "length": int(await self.redis.xlen(stream)),
                "delayed": int(await self.redis.zcard(keys.delayed(q))),
                "delayed_overdue": int(
                    await self.redis.zcount(keys.delayed(q), "-inf", now - overdue_grace_seconds)
                ),
                "group": None,
                "pending": 0,
                "consumers": [],
            }
            try:
                groups = await self.redis.xinfo_groups(stream)
            except ResponseError:
                groups = []
            for g in groups:
                if g.get("name") == keys.GROUP:
                    info["group"] = {
                        "name": keys.GROUP,
                        "consumers": int(g.get("consumers", 0)),
                        "pending": int(g.get("pending", 0)),
                        "last_delivered_id": g.get("last-delivered-id"),
                        "lag": g.get("lag"),
                    }
                    info["pending"] = int(g.get("pending", 0))
            if info["group"]:
                summary = await self.redis.xpending(stream, keys.GROUP)
                info["pending_min_id"] = summary.get("min")
                info["pending_max_id"] = summary.get("max")
                consumers = await self.redis.xinfo_consumers(stream, keys.GROUP)
                info["consumers"] = [
                    {
                        "name": c["name"],
                        "pending": int(c.get("pending", 0)),
                        "idle_ms": int(c.get("idle", 0)),
                        "inactive_ms": int(c["inactive"]) if c.get("inactive") is not None else None,
                    }
                    for c in consumers
                ]
                oldest = await self.redis.xpending_range(stream, keys.GROUP, min="-", max="+", count=1)
                info["oldest_pending_idle_ms"] = (
                    int(oldest[0]["time_since_delivered"]) if oldest else None
                )
            queues[q] = info
        return {
            "queues": queues,
            "dlq": int(await self.redis.xlen(keys.DLQ)),
            "total_length": sum(v["length"] for v in queues.values()),
            "total_pending": sum(v["pending"] for v in queues.values()),
            "total_delayed": sum(v["delayed"] for v in queues.values()),
        }

    async def contains(self, distribution_ids: Sequence[str]) -> set[str]:
        """Which of these distributions Redis holds anywhere (delayed set or stream).

        The delayed sets are checked first, then the streams are scanned: a scheduler
        move between the two lands in the stream, so no job is missed in transit.
        """
        wanted = set(distribution_ids)
        found: set[str] = set()
        for q in self.priorities:
            members = list(wanted - found)
            if not members:
                break
            scores = await self.redis.zmscore(keys.delayed(q), members)
            found.update(m for m, s in zip(members, scores, strict=True) if s is not None)
        for q in self.priorities:
            if not wanted - found:
                break
            async for _, fields in self.scan(keys.stream(q)):
                did = fields.get("id")
                if did in wanted:
                    found.add(did)
        return found

    async def scan(self, stream: str, batch: int = 1000) -> Any:
        """Every entry of a stream, oldest first, in pages."""
        start = "-"
        while True:
            rows = await self.redis.xrange(stream, min=start, max="+", count=batch)
            if not rows:
                return
            for row in rows:
                yield row
            start = "(" + rows[-1][0]  # exclusive range, Redis >= 6.2
