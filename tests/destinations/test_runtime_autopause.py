"""Auto-pause (issue 20, step 6): a destination whose every attempt fails for
auto_pause_after is paused by the engine (log line, metric, a CRITICAL diagnose finding);
what it was sent is held, and after a resume every job is delivered exactly once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ms07.config import Settings
from ms07.ops import dest_admin
from tests.support import Sink, acli, destination, ok, status, submit_n, wait_for, write_config

N = 10


async def _statuses(url: str) -> Counter[str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE destination_name = 'down'")
        return Counter(r[0] for r in await cur.fetchall())


async def test_auto_pause_then_resume_loses_nothing_and_sends_nothing_twice(
    make_settings: Callable[..., Settings], start_engine: Callable[..., Any], sink: Sink, database_url: str,
    env_for: dict[str, str], tmp_path: Path, captured_logs: Any,
) -> None:
    sink.on("/down", status(500))
    engine = await start_engine(make_settings(
        destinations=[destination("down", sink.url("/down"), auto_pause_after=1.0, max_attempts=1000,
                                  circuit_breaker={"failure_threshold": 1000}),
                      destination("fine", sink.url("/fine"))],
        distribution={"retry_base_delay_seconds": 0.05, "max_retry_delay": 0.2}))
    ids = await submit_n(engine, "down", N)
    fine = await submit_n(engine, "fine", 3)

    async def auto_paused() -> bool:
        async with engine.pool.connection() as conn:
            row = (await dest_admin.rows(conn))["down"]
        return bool(row["paused"]) and row["paused_reason"] == "auto-paused: every attempt failed for 1s"

    await wait_for(auto_paused, timeout=15, what="auto-paused")
    await wait_for(lambda: _all_held(database_url), timeout=15, what="every job held")
    assert set(fine) <= sink.unique_keys("/fine")  # the healthy destination is not touched
    assert engine.metrics.auto_paused.labels("down")._value.get() == 1
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    [logged] = [r for r in lines if r.get("message") == "destination paused automatically: every attempt failed"]
    assert logged["destination"] == "down" and logged["level"] == "ERROR"
    assert logged["metadata"]["resume"] == "ms07 destinations resume down --yes"
    assert logged["metadata"]["console"] == "/console/destinations/down"  # no service.console_url: the path
    sent_while_paused = len(sink.keys("/down"))

    env = {**env_for, "MS07_CONFIG": str(write_config(tmp_path / "c.yaml", {}))}
    report = json.loads((await acli(["diagnose", "queue", "--json"], env)).output)
    [finding] = [f for f in report["findings"] if f["id"] == "queue.auto_paused_destination"]
    assert finding["severity"] == "critical" and finding["command"] == "ms07 destinations resume down --yes"
    assert len(sink.keys("/down")) == sent_while_paused  # paused: nothing more was sent

    sink.on("/down", ok)
    async with engine.pool.connection() as conn:
        await dest_admin.pause(conn, "down", paused=False, operator="tester")
    await wait_for(lambda: _all_delivered(database_url), timeout=20, what="every job delivered")
    answered_ok = Counter(r.headers.get("Idempotency-Key") for r in sink.received
                          if r.path == "/down" and r.status == 200)
    assert answered_ok == Counter({d: 1 for d in ids})  # each once, none lost
    async with engine.pool.connection() as conn:
        assert not (await dest_admin.rows(conn))["down"]["paused"]  # and not paused again meanwhile


async def _all_held(url: str) -> bool:
    return await _statuses(url) == Counter({"paused": N})


async def _all_delivered(url: str) -> bool:
    return await _statuses(url) == Counter({"delivered": N})
