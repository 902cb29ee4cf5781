"""Recording submissions: the autocommit fast path and the transactional one."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

from ms07 import keys
from ms07.ops.submit import record_and_enqueue
from ms07.runtime import Runtime
from ms07.store import jobs


def _job(key: str | None = None) -> jobs.NewJob:
    return jobs.NewJob(str(uuid.uuid4()), "a", b'{"x": 1}', idempotency_key=key)


async def _exists(database_url: str, did: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        cur = await other.execute("SELECT count(*) FROM distribution_jobs WHERE distribution_id = %s", (did,))
        return (await cur.fetchone())[0] == 1


@pytest.mark.parametrize("key", [None, "k-1"], ids=["no key: autocommit", "key: transaction"])
async def test_recorded_committed_enqueued_and_the_connection_as_it_was(make_settings, database_url, key) -> None:
    settings = make_settings(destinations=[{"name": "a", "url": "http://127.0.0.1:9/in"}])
    async with Runtime(settings, migrate=False) as rt:
        q = await rt.queue()
        async with rt.connection() as conn:
            job = _job(key)
            done = await record_and_enqueue(conn, q, [job])
            assert [j.distribution_id for j in done.fresh] == [job.distribution_id] and done.enqueued
            assert not conn.autocommit
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert await _exists(database_url, job.distribution_id)  # committed before the XADD
            assert await q.redis.xlen(keys.stream("default")) == 1

            # A failing insert (the same id again) raises and leaves the connection usable.
            with pytest.raises(psycopg.errors.UniqueViolation):
                await record_and_enqueue(conn, q, [jobs.NewJob(job.distribution_id, "a", b"{}")])
            assert not conn.autocommit
            assert (await (await conn.execute("SELECT 1")).fetchone()) == (1,)
            await conn.rollback()


async def test_inside_the_callers_transaction_it_joins_it(make_settings, database_url) -> None:
    settings = make_settings(destinations=[{"name": "a", "url": "http://127.0.0.1:9/in"}])
    async with Runtime(settings, migrate=False) as rt:
        q = await rt.queue()
        async with rt.connection() as conn:
            job = _job()
            await conn.execute("SELECT 1")  # the caller's transaction is open
            await record_and_enqueue(conn, q, [job])
            await conn.rollback()
            assert not await _exists(database_url, job.distribution_id)


async def test_one_key_for_two_destinations_in_opposite_orders_does_not_deadlock(make_settings, database_url) -> None:
    """Two replicas insert (k, a), (k, b) and (k, b), (k, a): each would wait for the row
    the other holds, and PostgreSQL would fail one of them (with its whole group commit).
    A trigger that pauses before each row makes the interleaving certain."""
    settings = make_settings(destinations=[{"name": "a", "url": "http://127.0.0.1:9/in"},
                                           {"name": "b", "url": "http://127.0.0.1:9/in"}])
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute("""
            CREATE FUNCTION test_pause() RETURNS trigger LANGUAGE plpgsql AS
              $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$;
            CREATE TRIGGER test_pause BEFORE INSERT ON distribution_jobs
              FOR EACH ROW WHEN (NEW.idempotency_key IS NOT NULL) EXECUTE FUNCTION test_pause();""")
    async with Runtime(settings, migrate=False) as rt:
        q = await rt.queue()

        async def record(order: list[str]) -> Any:
            async with rt.connection() as conn:
                return await record_and_enqueue(conn, q, [jobs.NewJob(str(uuid.uuid4()), d, b"{}", idempotency_key="k")
                                                          for d in order])

        first, second = await asyncio.gather(record(["a", "b"]), record(["b", "a"]))
    fresh = [{j.destination for j in done.fresh} for done in (first, second)]
    assert sorted(fresh, key=len) == [set(), {"a", "b"}]  # one made both, the other replays both
    winner = first if first.fresh else second
    loser = second if first.fresh else first
    assert {d: i for (_, d), (i, _) in loser.existing.items()} == {j.destination: j.distribution_id
                                                                   for j in winner.fresh}
