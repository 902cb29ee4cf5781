"""Every Redis Streams operation of the queue, against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from ms07 import keys
from ms07.queue import InvalidMessage, Queue, open_redis, parse_entry
from tests.support import wait_for


@pytest.fixture(params=["single", "cluster"])
async def queue(request: pytest.FixtureRequest, servers: object) -> AsyncIterator[Queue]:
    """Every queue test runs on one Redis and on a real 3-master Redis Cluster."""
    url = request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_url")
    client = await open_redis(url)
    q = Queue(client, ["high", "default"])
    await q.ensure_groups()
    try:
        yield q
    finally:
        await client.aclose()


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_enqueue_read_ack_empties_stream_and_pel(queue: Queue) -> None:
    jobs = ids(5)
    await queue.enqueue(("default", j, "dest") for j in jobs)
    entries = await queue.read("w1", count=10, block_ms=100)
    assert [e.fields["id"] for e in entries] == jobs
    stats = await queue.stats()
    assert stats["queues"]["default"]["pending"] == 5
    await queue.ack("default", [e.entry_id for e in entries])
    stats = await queue.stats()
    assert stats["queues"]["default"]["length"] == 0  # XACK + XDEL: XLEN is the backlog
    assert stats["queues"]["default"]["pending"] == 0


async def test_enqueue_answers_entry_ids_in_the_order_given_across_streams_and_chunks(queue: Queue) -> None:
    from ms07.queue import SCRIPT_CHUNK

    jobs = ids(SCRIPT_CHUNK + 3)  # more than one script call for "default"
    items = [("high" if i % 7 == 0 else "default", j, f"dest-{i % 3}") for i, j in enumerate(jobs)]
    entry_ids = await queue.enqueue(items)
    assert len(entry_ids) == len(items) and len(set(entry_ids)) == len(items)
    for queue_name in ("high", "default"):
        stream = await queue.redis.xrange(keys.stream(queue_name))
        mine = [(eid, (q, did, dest)) for eid, (q, did, dest) in zip(entry_ids, items, strict=True)
                if q == queue_name]
        # Each stream holds its items in the order given, under the ids enqueue answered.
        assert [(eid, {"id": did, "destination": dest}) for eid, (_, did, dest) in mine] == stream
    entries = await queue.read("w1", count=len(items), block_ms=100)
    assert len(entries) == len(items)
    for queue_name in ("high", "default"):
        await queue.ack(queue_name, [e.entry_id for e in entries if e.queue == queue_name])
    stats = await queue.stats()
    assert all(stats["queues"][q]["length"] == 0 and stats["queues"][q]["pending"] == 0 for q in ("high", "default"))
    assert await queue.enqueue([]) == []


async def test_a_reader_blocked_on_the_stream_wakes_to_the_whole_enqueued_batch(queue: Queue) -> None:
    jobs = ids(40)
    reader = asyncio.create_task(queue.read("w1", count=100, block_ms=5000))
    # The read blocks before the XADDs, or this tests nothing.
    await wait_for(lambda: _blocked_clients(queue), timeout=5, interval=0.01, what="the read to block")
    await queue.enqueue(("default", j, "dest") for j in jobs)
    entries = await reader
    assert [e.fields["id"] for e in entries] == jobs


async def _blocked_clients(queue: Queue) -> int:
    """Clients blocked in a command, over every node (a cluster answers per node)."""
    info = await (queue.redis.info("clients", target_nodes="all") if queue.cluster else queue.redis.info("clients"))
    nodes = info.values() if queue.cluster else [info]
    return sum(int(n.get("blocked_clients", 0)) for n in nodes if isinstance(n, dict))


async def test_read_takes_every_priority_stream(queue: Queue) -> None:
    await queue.enqueue([("default", "a", "d"), ("high", "b", "d")])
    entries = await queue.read("w1", count=10, block_ms=100)
    assert {(e.queue, e.fields["id"]) for e in entries} == {("default", "a"), ("high", "b")}


async def test_nogroup_after_flush_recreates_group(queue: Queue) -> None:
    await queue.redis.delete(keys.stream("default"), keys.stream("high"))
    assert await queue.read("w1", count=1, block_ms=10) == []  # NOGROUP handled
    await queue.enqueue([("default", "x", "d")])
    entries = await queue.read("w1", count=1, block_ms=100)
    assert [e.fields["id"] for e in entries] == ["x"]


async def test_defer_then_move_due_returns_entry(queue: Queue) -> None:
    job = ids(1)[0]
    await queue.enqueue([("default", job, "d")])
    [entry] = await queue.read("w1", 1, 100)
    await queue.defer("default", [(entry.entry_id, job, time.time() + 0.2)])
    stats = await queue.stats()
    assert stats["queues"]["default"]["length"] == 0
    assert stats["queues"]["default"]["pending"] == 0
    assert stats["queues"]["default"]["delayed"] == 1
    assert await queue.move_due("default") == 0  # not due yet
    assert await queue.move_due("default", now=time.time() + 1) == 1
    [again] = await queue.read("w1", 1, 100)
    assert again.fields["id"] == job
    assert (await queue.stats())["queues"]["default"]["delayed"] == 0


async def test_move_due_is_atomic_across_callers(queue: Queue) -> None:

    await queue.schedule([("default", j, time.time() - 1) for j in ids(300)])
    moved = await asyncio.gather(*(queue.move_due("default", limit=50) for _ in range(10)))
    assert sum(moved) == 300
    assert await queue.redis.xlen(keys.stream("default")) == 300  # nothing moved twice


async def test_reclaim_after_consumer_dies(queue: Queue) -> None:
    jobs = ids(3)
    await queue.enqueue(("default", j, "d") for j in jobs)
    await queue.read("dead-worker", 10, 100)  # reads, then "dies"
    assert (await queue.reclaim("default", "w2", min_idle_ms=60_000, max_deliveries=3)).entries == []
    await asyncio.sleep(0.06)
    result = await queue.reclaim("default", "w2", min_idle_ms=50, max_deliveries=3)
    assert sorted(e.fields["id"] for e in result.entries) == sorted(jobs)
    assert all(e.deliveries == 2 for e in result.entries)
    consumers = {c["name"]: c["pending"] for c in (await queue.stats())["queues"]["default"]["consumers"]}
    assert consumers == {"dead-worker": 0, "w2": 3}


async def test_reclaim_marks_poison_after_max_deliveries(queue: Queue) -> None:
    await queue.enqueue([("default", "p", "d")])
    await queue.read("w0", 1, 100)
    for n in range(3):
        await asyncio.sleep(0.03)
        result = await queue.reclaim("default", f"w{n + 1}", min_idle_ms=20, max_deliveries=3)
        assert len(result.entries) == 1 and not result.poison
    await asyncio.sleep(0.03)
    result = await queue.reclaim("default", "w9", min_idle_ms=20, max_deliveries=3)
    assert [e.fields["id"] for e in result.poison] == ["p"]
    assert result.entries == []


async def test_reclaim_takes_suspects_one_at_a_time(queue: Queue) -> None:
    """Entries reclaimed before (a holder died with them) are taken ``suspects`` at a time;
    first-time reclaims and poison are always taken."""
    await queue.enqueue([("default", i, "d") for i in ("s1", "s2", "p")])
    entries = await queue.read("w0", 10, 100)
    poison = entries[2].entry_id
    await queue.redis.xclaim(keys.stream("default"), keys.GROUP, "w0", 0, [poison], retrycount=4)
    await asyncio.sleep(0.03)
    result = await queue.reclaim("default", "w1", min_idle_ms=20, max_deliveries=3, suspects=0)
    assert sorted(e.fields["id"] for e in result.entries) == ["s1", "s2"]
    assert [e.fields["id"] for e in result.poison] == ["p"]  # the caller parks and acks it
    await queue.ack("default", [poison])
    await queue.enqueue([("default", "fresh", "d")])
    await queue.read("w2", 10, 100)
    await asyncio.sleep(0.03)
    result = await queue.reclaim("default", "w3", min_idle_ms=20, max_deliveries=3, suspects=1)
    assert sorted(e.fields["id"] for e in result.entries) == ["fresh", "s1"]
    assert {e.fields["id"]: e.deliveries for e in result.entries} == {"fresh": 2, "s1": 3}
    await asyncio.sleep(0.03)
    result = await queue.reclaim("default", "w4", min_idle_ms=20, max_deliveries=3, suspects=0)
    assert result.entries == [] and result.poison == []  # s2 waits for its turn


async def test_reclaim_reports_entries_deleted_while_pending(queue: Queue) -> None:
    await queue.enqueue([("default", "gone", "d"), ("default", "kept", "d")])
    entries = await queue.read("w0", 10, 100)
    await queue.redis.xdel(keys.stream("default"), entries[0].entry_id)  # the PEL still holds it
    await asyncio.sleep(0.03)
    result = await queue.reclaim("default", "w1", min_idle_ms=20, max_deliveries=3)
    assert [e.fields["id"] for e in result.entries] == ["kept"]
    assert result.vanished == [entries[0].entry_id]
    assert (await queue.stats())["queues"]["default"]["pending"] == 1


async def test_touch_resets_idle_time(queue: Queue) -> None:
    await queue.enqueue([("default", "slow", "d")])
    [entry] = await queue.read("w0", 1, 100)
    await asyncio.sleep(0.05)
    await queue.touch("default", "w0", [entry.entry_id])
    assert (await queue.reclaim("default", "w1", min_idle_ms=40, max_deliveries=3)).entries == []


async def test_contains_checks_streams_and_delayed_sets(queue: Queue) -> None:
    a, b, c = ids(3)
    await queue.enqueue([("high", a, "d")])
    await queue.schedule([("default", b, time.time() + 60)])
    assert await queue.contains([a, b, c]) == {a, b}


async def test_dlq_roundtrip(queue: Queue) -> None:
    await queue.to_dlq([{"distribution_id": "x", "reason": "poison"}, {"distribution_id": "y", "reason": "r"}])
    assert [f["distribution_id"] for _, f in await queue.dlq_entries()] == ["y", "x"]
    assert await queue.dlq_remove(["x"]) == 1
    assert [f["distribution_id"] for _, f in await queue.dlq_entries()] == ["y"]


def test_parse_entry() -> None:
    did = str(uuid.uuid4())
    assert parse_entry({"id": did}) == did
    for bad in ({}, {"id": "nope"}, {"id": ""}, {"destination": "x"}):
        with pytest.raises(InvalidMessage):
            parse_entry(bad)
