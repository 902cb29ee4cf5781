"""Stopping: never past the configured grace (a real process, a real SIGTERM), and never
hung on a loop whose cancellation a library swallowed."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from ms07 import keys
from ms07.engine import upkeep
from tests.faults.harness import FAST, REPORT, engine_config, exit_code, ledger, submit_many, wait_settled
from tests.support import EngineProcess, Sink, destination, ok, wait_for, write_config

pytestmark = pytest.mark.faults


async def test_an_upkeep_loop_stops_even_if_its_cancellation_was_swallowed() -> None:
    async def swallows_cancel() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what a redis-py command caught in the wrong moment does (redis-py#2028)

    # Only what _forever reads of its Upkeep; the stopping flag stays down: the cancel alone must do.
    loops = SimpleNamespace(errors=Counter(), stopping=False)
    task = asyncio.create_task(upkeep.Upkeep._forever(loops, "scheduler", 0.01, swallows_cancel))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done and task.cancelled(), "the loop ran on after its cancellation (Engine.stop() would hang)"


GRACE = 2.0
EXIT_BOUND = 6.0  # the final commit, the loops' cancellation, closing clients: ~1 s when idle


def _stuck() -> Any:
    """A receiver that never answers (until the sink stops)."""

    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.Event().wait()
        return web.Response(text="never")

    return respond


async def test_sigterm_exits_within_the_configured_grace_and_leaves_the_unfinished_pending(
        tmp_path: Path, sink: Sink, env_for: dict[str, str], make_settings: Any, database_url: str,
        redis_url: str) -> None:
    """A real ``ms07 run`` process, deliveries hanging far past ``service.drain_grace_seconds``
    (the delivery timeout is 20 s), a real SIGTERM: the process waits out the grace for the
    deliveries in flight, then exits 0 within the grace plus a small bound; what did not
    finish is pending in Redis, recorded as nothing, and the next worker delivers it."""
    sink.on("/in", _stuck())
    dests = [destination("a", sink.url("/in"))]
    config = write_config(tmp_path / "draining.yaml", {
        "service": {"drain_grace_seconds": GRACE, "heartbeat_interval_seconds": 1, "concurrency": 2,
                    "prefetch": 1},
        "distribution": {**FAST, "timeout_seconds": 20, "claim_idle_seconds": 21},
        "destinations": dests,
    })
    ids = await submit_many(make_settings(destinations=dests), "a", [{"i": i} for i in range(2)])
    proc = EngineProcess(config, env_for, tmp_path / "engine.log").start()
    try:
        await wait_for(proc.started, timeout=30, what="engine started")
        await wait_for(lambda: len(sink.received) == 2, timeout=20, what="both deliveries hanging")
        t0 = time.monotonic()
        proc.terminate()
        code = await asyncio.to_thread(_wait_exit, proc, GRACE + EXIT_BOUND)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert code == 0, proc.log.read_text()[-2000:]
    print(f"SIGTERM to exit: {elapsed:.2f} s (grace {GRACE:g} s)")
    assert GRACE - 0.2 <= elapsed <= GRACE + EXIT_BOUND, elapsed  # the grace was given, and no more
    messages = [r.get("message") for r in proc.log_lines()]
    assert "grace period over; leaving deliveries pending for another worker" in messages

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert (await client.xpending(keys.stream("default"), keys.GROUP))["pending"] == 2
    finally:
        await client.aclose()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM distribution_attempts")
        assert (await cur.fetchone())[0] == 0  # nothing recorded for what did not finish

    sink.on("/in", ok)
    # The next worker takes the entries over once idle past its claim_idle_seconds (2 s).
    second = EngineProcess(engine_config(tmp_path, dests), env_for, tmp_path / "second.log").start()
    try:
        await wait_settled(database_url, ids)
    finally:
        second.terminate()
        rc = await exit_code(second)
        second.kill()
    assert rc == 0
    lg = await ledger("SIGTERM past the grace (deliveries hanging)", database_url, redis_url, sink, ids)
    REPORT.append(lg)
    lg.check()
    assert lg.delivered == set(ids)


def _wait_exit(proc: EngineProcess, seconds: float) -> int | None:
    """The exit code, or None if the process still runs after ``seconds``."""
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None
