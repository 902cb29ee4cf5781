"""The engine, the queue commands and `diagnose queue` unchanged on a real Redis Cluster."""

from __future__ import annotations

import json
from typing import Any

from ms07 import keys
from ms07.ops.submit import submit
from tests.support import Sink, acli, fail_first, wait_for


async def _delivered(engine: Any, n: int) -> bool:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM distribution_jobs WHERE status = 'delivered'")
        return (await cur.fetchone())[0] == n


async def test_engine_delivers_and_retries_on_redis_cluster(make_settings, redis_cluster_url, sink: Sink,
                                                            start_engine, env_for, tmp_path) -> None:
    import yaml

    sink.on("/flaky", fail_first(3, 503))
    dests = [{"name": "a", "url": sink.url("/in")}, {"name": "f", "url": sink.url("/flaky")}]
    settings = make_settings(redis_url=redis_cluster_url, destinations=dests,
                             distribution={"priorities": ["high", "default"]})
    engine = await start_engine(settings)
    assert engine.queue.cluster
    ids = []
    async with engine.pool.connection() as conn:
        for i in range(20):
            r = await submit(conn, engine.queue, settings, ["a"], {"i": i}, priority="high" if i % 2 else None)
            ids.append(r.distributions[0]["distribution_id"])
        ids += [(await submit(conn, engine.queue, settings, ["f"], {})).distributions[0]["distribution_id"]]
    await wait_for(lambda: _delivered(engine, 21), timeout=30, what="21 delivered on the cluster")
    assert sink.unique_keys() == set(ids)
    stats = await engine.queue.stats()
    assert stats["total_length"] == 0 and stats["total_pending"] == 0 and stats["total_delayed"] == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": dests, "distribution": {"priorities": ["high", "default"]}}))
    env = {**env_for, "MS07_REDIS_URL": redis_cluster_url}
    result = await acli(["--config", str(cfg), "queue", "stats", "--json"], env)
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["queues"]) == {"high", "default"}
    result = await acli(["--config", str(cfg), "diagnose", "queue", "--json"], env)
    report = json.loads(result.output)
    assert report["check"] == "queue"
    assert not [f for f in report["findings"] if f["id"].endswith("redis_unavailable")], report
    # Every key of a queue shares its slot: the stream and its delayed set hash together.
    from redis.cluster import key_slot

    assert key_slot(keys.stream("high").encode()) == key_slot(keys.delayed("high").encode())
