"""The engine as a process: SIGKILL mid-flight, SIGTERM under load, the memory guard,
and PostgreSQL / Redis restarts while it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis.exceptions import RedisError

from ms07 import embedded
from ms07.ops.submit import submit
from ms07.runtime import Runtime
from tests.support import EngineProcess, Sink, destination, hang, ok, wait_for, write_config


def _config(tmp_path: Path, sink: Sink, path: str = "/in", **dist: Any) -> Path:
    return write_config(tmp_path / "engine.yaml", {
        "service": {"drain_grace_seconds": 10, "heartbeat_interval_seconds": 1, "concurrency": 16},
        "distribution": {"timeout_seconds": 2, "claim_idle_seconds": 3, "retry_base_delay_seconds": 0.05,
                         "max_retry_delay": 0.2, "scheduler_interval_seconds": 0.05, **dist},
        "destinations": [destination("a", sink.url(path))],
    })


async def _submit_many(settings: Any, n: int) -> list[str]:
    async with Runtime(settings, migrate=False) as rt:
        q = await rt.queue()
        async with rt.connection() as conn:
            return [(await submit(conn, q, settings, ["a"], {"i": i})).distributions[0]["distribution_id"]
                    for i in range(n)]


async def _status_counts(database_url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT status, count(*) FROM distribution_jobs GROUP BY status")
        return dict(await cur.fetchall())


async def test_sigkill_mid_flight_second_worker_reclaims(tmp_path, sink: Sink, env_for, make_settings,
                                                         database_url) -> None:
    sink.on("/in", hang(1.5))  # deliveries are in flight when the worker dies
    config = _config(tmp_path, sink)
    settings = make_settings(destinations=[destination("a", sink.url("/in"))])
    first = EngineProcess(config, env_for, tmp_path / "first.log").start()
    try:
        await wait_for(first.started, timeout=30, what="first worker started")
        ids = await _submit_many(settings, 30)
        await wait_for(lambda: len(sink.received) >= 5, what="deliveries in flight")
        first.kill()
    finally:
        first.kill()
    sink.on("/in", ok)
    second = EngineProcess(config, env_for, tmp_path / "second.log").start()
    try:
        await wait_for(lambda: sink.unique_keys("/in") >= set(ids), timeout=40, what="every distribution delivered")
        counts = await wait_for(lambda: _all_delivered(database_url, 30), timeout=10, what="all rows delivered")
        assert counts == {"delivered": 30}
        reclaims = [r for r in second.log_lines() if r.get("message") == "reclaimed entries from a dead consumer"]
        assert reclaims, "the second worker took over the dead worker's pending entries"
    finally:
        second.terminate()
        assert second.wait(20) == 0


async def _all_delivered(database_url: str, n: int) -> dict[str, int] | None:
    counts = await _status_counts(database_url)
    return counts if counts.get("delivered") == n else None


async def test_sigterm_under_load_drains_and_exits_0(tmp_path, sink: Sink, env_for, make_settings,
                                                     database_url) -> None:
    sink.on("/in", hang(0.3))
    config = _config(tmp_path, sink)
    settings = make_settings(destinations=[destination("a", sink.url("/in"))])
    proc = EngineProcess(config, env_for, tmp_path / "engine.log").start()
    try:
        await wait_for(proc.started, timeout=30, what="worker started")
        ids = await _submit_many(settings, 200)
        await wait_for(lambda: len(sink.received) >= 20, what="under load")
        proc.terminate()
        rc = await asyncio.to_thread(proc.wait, 40)
    finally:
        proc.kill()
    assert rc == 0
    # Whatever was in flight finished and was recorded; what was claimed but had not
    # started its HTTP request was handed back to the queue (due now, no attempt counted)
    # instead of holding up the drain: nothing is left `processing` for a reclaim.
    counts = await _status_counts(database_url)
    assert counts.get("processing", 0) == 0, counts
    assert sum(counts.values()) == 200
    stopped = [r for r in proc.log_lines() if r.get("message") == "engine stopped"]
    assert stopped and stopped[0]["metadata"]["handed_back"] > 0, stopped
    assert counts.get("retrying", 0) + counts.get("queued", 0) >= stopped[0]["metadata"]["handed_back"], counts
    sink.on("/in", ok)
    proc = EngineProcess(config, env_for, tmp_path / "engine2.log").start()
    try:
        await wait_for(proc.started, timeout=30, what="second worker started")
        await wait_for(lambda: sink.unique_keys("/in") >= set(ids), timeout=40, what="the rest delivered")
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0


async def test_memory_guard_exits_with_distinct_code(tmp_path, sink: Sink, env_for) -> None:
    config = write_config(tmp_path / "engine.yaml", {
        "memory": {"threshold_mb": 1, "check_interval_seconds": 0.2},
        "destinations": [destination("a", sink.url("/in"))],
    })
    proc = EngineProcess(config, env_for, tmp_path / "engine.log").start()
    try:
        rc = await asyncio.to_thread(proc.wait, 40)
    finally:
        proc.kill()
    assert rc == 75
    messages = [r.get("message") for r in proc.log_lines()]
    assert "memory threshold exceeded; draining and exiting for a restart" in messages


@pytest.mark.loop_errors_ok
async def test_postgres_restart_while_running(servers, make_settings, sink: Sink, start_engine) -> None:
    if not servers.embedded:
        pytest.skip("needs the embedded PostgreSQL to restart it")
    from pgserver._commands import pg_ctl

    engine = await start_engine(make_settings(destinations=[destination("a", sink.url("/in"))]))
    first = await _submit_via(engine, 5)
    await wait_for(lambda: sink.unique_keys("/in") >= set(first), what="first batch")
    import os

    user = "pgserver" if os.geteuid() == 0 else None
    await asyncio.to_thread(pg_ctl, ["-w", "-m", "fast", "restart"], pgdata=servers.state_dir / "postgres", user=user)
    second = await wait_for(lambda: _try_submit(engine, 5), timeout=30, what="submit works again")
    await wait_for(lambda: sink.unique_keys("/in") >= set(second), timeout=30, what="delivered after restart")


async def _submit_via(engine: Any, n: int) -> list[str]:
    async with engine.pool.connection() as conn:
        return [(await submit(conn, engine.queue, engine.settings, ["a"], {"i": i})).distributions[0]["distribution_id"]
                for i in range(n)]


async def _try_submit(engine: Any, n: int) -> list[str] | None:
    try:
        return await _submit_via(engine, n)
    except (psycopg.Error, OSError, RedisError):
        return None


async def _redis_down(engine: Any) -> bool:
    try:
        await engine.queue.redis.ping()
    except (RedisError, OSError):
        return True
    return False


@pytest.mark.loop_errors_ok
async def test_redis_restart_while_running(servers, make_settings, sink: Sink, start_engine) -> None:
    if not servers.embedded:
        pytest.skip("needs the embedded Redis to restart it")
    engine = await start_engine(make_settings(destinations=[destination("a", sink.url("/in"))]))
    first = await _submit_via(engine, 5)
    await wait_for(lambda: sink.unique_keys("/in") >= set(first), what="first batch")
    await asyncio.to_thread(embedded.stop_redis, servers.state_dir)
    await wait_for(lambda: _redis_down(engine), what="the engine sees Redis gone")
    await asyncio.to_thread(embedded.start_redis, servers.state_dir)
    second = await wait_for(lambda: _try_submit(engine, 5), timeout=30, what="submit works again")
    await wait_for(lambda: sink.unique_keys("/in") >= set(second), timeout=30, what="delivered after restart")
