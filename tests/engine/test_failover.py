"""PostgreSQL failover: a multi-host URL with target_session_attrs=read-write; the
primary goes away, the standby is promoted, and the engine carries on by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from ms07.ops.submit import submit
from ms07.store import db
from tests.support import Sink, acli, wait_for


@pytest.fixture
def pg_pair(servers: Any) -> Iterator[Any]:
    from tests.pg_failover import Pair

    if not servers.embedded:
        pytest.skip("needs the embedded PostgreSQL's binaries")
    pair = Pair().start()
    try:
        pair.wait_replicated()
        yield pair
    finally:
        pair.stop()


async def _try_submit(engine: Any, n: int) -> list[str] | None:
    try:
        async with engine.pool.connection(timeout=3) as conn:
            return [(await submit(conn, engine.queue, engine.settings, ["a"], {"i": i})).distributions[0]
                    ["distribution_id"] for i in range(n)]
    except Exception:  # the primary is gone and the pool is finding the new one
        return None


@pytest.mark.loop_errors_ok
async def test_engine_follows_the_promoted_standby(pg_pair: Any, make_settings, redis_url: str, sink: Sink,
                                                   start_engine, env_for) -> None:
    conn = await db.connect(pg_pair.url)
    await db.migrate(conn)
    await conn.close()
    import dataclasses

    settings = dataclasses.replace(make_settings(destinations=[{"name": "a", "url": sink.url("/in")}]),
                                   database_url=pg_pair.url)
    engine = await start_engine(settings)
    first = await _try_submit(engine, 5)
    assert first
    await wait_for(lambda: sink.unique_keys() >= set(first), what="delivered via the primary")
    result = await acli(["recover", "db-connection", "--dry-run", "--json"],
                        {**env_for, "MS07_DATABASE_URL": pg_pair.url})
    assert f"127.0.0.1:{pg_pair.ports[0]}" in result.output  # which host answered as primary
    await asyncio.to_thread(pg_pair.stop_primary)
    await asyncio.to_thread(pg_pair.promote_standby)
    second = await wait_for(lambda: _try_submit(engine, 5), timeout=40, what="submits reach the promoted standby")
    await wait_for(lambda: sink.unique_keys() >= set(second), timeout=40, what="delivered after the failover")
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT inet_server_port(), pg_is_in_recovery()")
        assert await cur.fetchone() == (pg_pair.ports[1], False)
