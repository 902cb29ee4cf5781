"""Deterministic crash points (ms07/engine/crash.py): a worker process exits hard at a named
point, a second one takes over, and the ledger of the run must show nothing lost.

The crashing worker runs with ``concurrency: 1, prefetch: 1`` (it holds one entry at a
time) unless a batch needs more, so the duplicates each point may cause are exact.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from ms07 import keys
from tests.faults.harness import (
    REPORT,
    attempts_by_worker,
    crash_env,
    engine_config,
    exit_code,
    ledger,
    submit_many,
    wait_settled,
)
from tests.faults.ledger import Ledger, ids_in_request
from tests.support import EngineProcess, Sink, destination, status, wait_for

pytestmark = pytest.mark.faults


async def crash_and_take_over(tmp_path: Path, config: Path, env_for: dict[str, str], database_url: str,
                              ids: list[str], point: str, skip: int = 0,
                              between: Callable[[], Awaitable[None]] | None = None) -> None:
    """A worker that crashes at ``point``; then a clean one, until every job settled."""
    first = EngineProcess(config, env_for, tmp_path / "first.log", crash_env(point, skip)).start()
    try:
        assert await exit_code(first) == 137, first.log.read_text()[-2000:]
    finally:
        first.kill()
    assert f"crash point {point} reached" in first.log.read_text()
    if between is not None:
        await between()
    second = EngineProcess(config, env_for, tmp_path / "second.log").start()
    try:
        await wait_settled(database_url, ids)
        # Settled in Postgres is not the end: an entry of a job that was already settled
        # there (recorded, then the crash) is still to be reclaimed and acked.
        await wait_for(lambda: _queue_empty(env_for["MS07_REDIS_URL"]), timeout=30, what="every entry acked")
    finally:
        second.terminate()
        rc = await exit_code(second)
        second.kill()
    assert rc == 0


async def _queue_empty(redis_url: str) -> bool:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stream = keys.stream("default")
        return await client.xlen(stream) == 0 and await client.zcard(keys.delayed("default")) == 0
    finally:
        await client.aclose()


async def _ledger(name: str, database_url: str, redis_url: str, sink: Sink, ids: list[str],
                  allowed_dlq: dict[str, int] | None = None) -> Ledger:
    lg = await ledger(name, database_url, redis_url, sink, ids, allowed_dlq=allowed_dlq)
    REPORT.append(lg)
    lg.check()
    return lg


def fail_first_try() -> Any:
    """500 to the first request of every distribution, 200 after."""
    seen: set[str] = set()

    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key", "")
        if key not in seen:
            seen.add(key)
            return web.Response(status=500, text="first try fails")
        return web.Response(text="ok")

    return respond


async def test_after_http_redelivers_exactly_the_unrecorded_delivery(tmp_path, sink: Sink, env_for, make_settings,
                                                                    database_url, redis_url) -> None:
    dests = [destination("a", sink.url("/in"))]
    config = engine_config(tmp_path, dests, concurrency=1, prefetch=1)
    ids = await submit_many(make_settings(destinations=dests), "a", [{"i": i} for i in range(10)])
    await crash_and_take_over(tmp_path, config, env_for, database_url, ids, "after_http", skip=3)
    lg = await _ledger("crash after_http (2xx received, not committed)", database_url, redis_url, sink, ids)
    # Three deliveries were recorded; the fourth got its 2xx and died unrecorded: the
    # receiver gets it again from the second worker (at-least-once), nothing else twice.
    assert lg.duplicated == 1
    [twice] = [i for i, n in lg.deliveries.items() if n > 1]
    recorded = await attempts_by_worker(database_url, "crash-a")
    assert [s for _, s in recorded] == ["success"] * 3
    assert twice not in {i for i, _ in recorded}
    assert len(lg.delivered) == 10


async def test_after_commit_never_redelivers(tmp_path, sink: Sink, env_for, make_settings, database_url,
                                            redis_url) -> None:
    dests = [destination("a", sink.url("/in"))]
    config = engine_config(tmp_path, dests, concurrency=1, prefetch=1)
    ids = await submit_many(make_settings(destinations=dests), "a", [{"i": i} for i in range(10)])

    async def unacked() -> None:
        # The crashed worker committed four outcomes and acked only three.
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            pending = await client.xpending(keys.stream("default"), keys.GROUP)
        finally:
            await client.aclose()
        assert pending["pending"] == 1

    await crash_and_take_over(tmp_path, config, env_for, database_url, ids, "after_commit", skip=3, between=unacked)
    lg = await _ledger("crash after_commit (committed, not acked)", database_url, redis_url, sink, ids)
    assert lg.duplicated == 0  # the committed outcome is the truth: the entry is only acked
    assert [s for _, s in await attempts_by_worker(database_url, "crash-a")] == ["success"] * 4


async def test_after_commit_of_a_parked_job_still_files_its_dlq_entry(tmp_path, sink: Sink, env_for, make_settings,
                                                                     database_url, redis_url) -> None:
    """The worker recorded a job as failed (a 400: permanent) and died before writing its DLQ
    entry. The next worker reclaims the entry, finds the job parked and must file the DLQ
    entry before acking: acked as a plain duplicate, the job was parked with no DLQ entry,
    invisible to ``ms07 dlq`` and to replays."""
    sink.on("/in", status(400))
    dests = [destination("a", sink.url("/in"))]
    config = engine_config(tmp_path, dests, concurrency=1, prefetch=1)
    ids = await submit_many(make_settings(destinations=dests), "a", [{"i": i} for i in range(3)])
    await crash_and_take_over(tmp_path, config, env_for, database_url, ids, "after_commit")
    lg = await _ledger("crash after_commit of a parked job (recorded, no DLQ entry yet)", database_url, redis_url,
                       sink, ids, allowed_dlq={"permanent_failure": 3})
    assert lg.in_dlq == set(ids)
    assert {f["reason"] for f in lg.dlq_stream.values()} == {"permanent_failure"}
    assert {f["error_code"] for f in lg.dlq_stream.values()} == {lg.jobs[ids[0]].code}
    assert sink.counts["/in"] == 3  # the reclaim files the entry; it does not deliver again


async def test_mid_batch_redelivers_that_batch_only(tmp_path, sink: Sink, env_for, make_settings, database_url,
                                                   redis_url) -> None:
    dests = [destination("b", sink.url("/batch"), batch={"max_items": 5, "max_wait_ms": 500, "max_concurrent": 1})]
    config = engine_config(tmp_path, dests, concurrency=5, prefetch=1)
    ids = await submit_many(make_settings(destinations=dests), "b", [{"i": i} for i in range(12)])
    await crash_and_take_over(tmp_path, config, env_for, database_url, ids, "mid_batch")
    lg = await _ledger("crash mid_batch (batch answered, nothing recorded)", database_url, redis_url, sink, ids)
    crashed_batch = ids_in_request(sink.received[0].headers, sink.received[0].body)
    assert len(crashed_batch) == 5
    assert {i for i, n in lg.deliveries.items() if n > 1} == set(crashed_batch)
    assert lg.duplicated == 5
    assert await attempts_by_worker(database_url, "crash-a") == []
    assert all(isinstance(json.loads(r.body), list) for r in sink.received)


@pytest.mark.parametrize("point", ["scheduler_move", "scheduler_moved"])
async def test_scheduler_crash_before_or_after_the_atomic_move(tmp_path, sink: Sink, env_for, make_settings,
                                                               database_url, redis_url, point: str) -> None:
    sink.on("/in", fail_first_try())
    # Five first tries failing in a row would open the circuit, and a job read while it is
    # open waits recovery_timeout (60 s) in the delayed set: not what this test is about.
    dests = [destination("a", sink.url("/in"), circuit_breaker={"failure_threshold": 50})]
    config = engine_config(tmp_path, dests, concurrency=1, prefetch=1)
    ids = await submit_many(make_settings(destinations=dests), "a", [{"i": i} for i in range(5)])

    async def where_the_retries_are() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            delayed = await client.zcard(keys.delayed("default"))
            retried = [f for _, f in await client.xrange(keys.stream("default")) if f.get("retry") == "1"]
        finally:
            await client.aclose()
        if point == "scheduler_move":
            assert delayed >= 1  # the move never ran: the retries still wait in the delayed set
        else:
            assert retried  # the move ran whole: the retry is back in the stream, owned by nobody

    await crash_and_take_over(tmp_path, config, env_for, database_url, ids, point, between=where_the_retries_are)
    lg = await _ledger(f"crash {point}", database_url, redis_url, sink, ids)
    assert lg.duplicated == 0
    assert "success" not in {s for _, s in await attempts_by_worker(database_url, "crash-a")}
