"""Taking over a dead worker's entries: the lease race, and poison entries that kill every
worker that tries them."""

from __future__ import annotations

import psycopg
import pytest

from ms07 import keys
from tests.faults.harness import FAST, submit_many, wait_settled
from tests.support import Sink, destination, wait_for

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
    await wait_settled(database_url, [did], timeout=5)
