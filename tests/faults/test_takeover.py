"""Taking over a dead worker's entries: the lease race, and poison entries that kill every
worker that tries them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from ms07 import keys
from tests.faults.harness import (
    FAST,
    REPORT,
    engine_config,
    exit_code,
    ledger,
    submit_many,
    wait_settled,
)
from tests.support import EngineProcess, Sink, destination, wait_for

pytestmark = pytest.mark.faults


async def test_reclaimed_entry_whose_lease_started_late_is_still_delivered(make_settings, sink: Sink,
                                                                          start_engine, database_url,
                                                                          redis_url) -> None:
    """A worker read an entry, claimed its job in Postgres a moment later (Postgres was
    slow), and died. The entry has been idle past claim_idle_seconds, the job's lease
    (started at the claim) not yet. The entry must stay pending until the lease runs out,
    not be acked as a duplicate (which left the job 'processing' with no entry anywhere,
    for the reconciler to find many minutes later)."""
    dests = [destination("a", sink.url("/in"))]
    settings = make_settings(destinations=dests, distribution=FAST)
    [did] = await submit_many(settings, "a", [{"late": "lease"}])
    from ms07.queue import Queue, open_redis

    r = await open_redis(redis_url)
    try:
        await Queue(r).ensure_groups()
        [(stream, [(entry_id, _)])] = await r.xreadgroup(keys.GROUP, "dead", {keys.stream("default"): ">"}, count=1)
        await r.xclaim(stream, keys.GROUP, "dead", 0, [entry_id], idle=10_000)  # idle for 10 s
    finally:
        await r.aclose()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("UPDATE distribution_jobs SET status = 'processing', started_at = now() "
                           "WHERE distribution_id = %s", (did,))
    await start_engine(settings)
    await wait_for(lambda: did in sink.unique_keys("/in"), timeout=10, what="the job delivered after its lease")
    await wait_settled(database_url, [did], seconds=5)


def _payloads(n: int) -> list[dict[str, object]]:
    return [{"i": i} for i in range(n)]


async def test_poison_entry_parked_after_3_reclaims_others_delivered(tmp_path: Path, sink: Sink, env_for,
                                                                     make_settings, database_url,
                                                                     redis_url) -> None:
    dests = [destination("a", sink.url("/in"))]
    config = engine_config(tmp_path, dests, concurrency=8)
    settings = make_settings(destinations=dests)
    # One read takes them all, the poison in the middle.
    ids = await submit_many(settings, "a", [*_payloads(10), {"kind": "POISON-PILL"}, *_payloads(10)])
    poison = ids[10]
    crashes = 0
    deadline = asyncio.get_running_loop().time() + 60
    proc: EngineProcess | None = None
    try:
        while asyncio.get_running_loop().time() < deadline:
            proc = EngineProcess(config, env_for, tmp_path / f"engine-{crashes}.log",
                                 {"MS07_CRASH_ON_PAYLOAD": "POISON-PILL"}).start()
            await wait_for(lambda p=proc: p.returncode is not None or _settled(database_url, ids), timeout=30,
                           interval=0.1, what="the worker died or the run settled")
            if proc.returncode is None:
                break
            assert proc.returncode == 137
            crashes += 1
        else:
            pytest.fail(f"not settled after {crashes} crashes")
    finally:
        if proc is not None:
            proc.terminate()
            await exit_code(proc)
            proc.kill()
    lg = await ledger("poison entry (kills every worker that tries it)", database_url, redis_url, sink, ids,
                      allowed_dlq={"poison": 1})
    REPORT.append(lg)
    lg.check()
    assert lg.in_dlq == {poison}
    assert lg.jobs[poison][:2] == ("dead", "POISON_MESSAGE")
    assert lg.dlq_stream[poison]["reason"] == "poison"
    assert lg.dlq_stream[poison]["error_code"] == "POISON_MESSAGE"
    assert lg.delivered == set(ids) - {poison}
    # Read once, reclaimed three times, each time the worker died: parked on the next try.
    assert crashes == 1 + 3


async def _settled(database_url: str, ids: list[str]) -> bool:
    from tests.faults.harness import settled

    return await settled(database_url, ids)
