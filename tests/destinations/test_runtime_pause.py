"""Pause and resume (issue 20, step 4), on two engines: a paused destination accepts
submissions and holds them (status paused: nothing sent, no attempt counted), diagnose
names it with the command to resume, and resume releases every held job at a bounded
rate, each delivered once."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ms07.config import Settings
from ms07.ops import dest_admin
from tests.support import Sink, acli, destination, submit_n, wait_for, write_config

HELD = 60
RATE = 10.0  # per engine and second


async def _statuses(url: str, dest: str) -> Counter[str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT status, attempts FROM distribution_jobs WHERE destination_name = %s", (dest,))
        return Counter(f"{r[0]}/{r[1]}" for r in await cur.fetchall())


async def test_pause_holds_and_resume_releases_each_once_at_a_bounded_rate(
    make_settings: Callable[..., Settings], start_engine: Callable[..., Any], sink: Sink, database_url: str,
    env_for: dict[str, str], tmp_path: Path,
) -> None:
    settings = make_settings(destinations=[destination("p", sink.url("/p"))],
                             service={"resume_rate_per_second": RATE})
    engines = [await start_engine(settings), await start_engine(settings)]
    first = await submit_n(engines[0], "p", 3)
    await wait_for(lambda: set(first) <= sink.unique_keys("/p"), what="delivered before the pause")

    async with engines[0].pool.connection() as conn:
        out = await dest_admin.pause(conn, "p", paused=True, operator="tester", reason="their maintenance")
    assert out["changed"] and out["paused"]
    await wait_for(lambda: all("p" in e.paused for e in engines), timeout=2, what="every engine knows")

    held = await submit_n(engines[1], "p", HELD)  # accepted while paused
    assert len(held) == HELD
    await wait_for(lambda: _held(database_url), timeout=15, what="every new job held")
    assert await _statuses(database_url, "p") == Counter({"delivered/1": 3, "paused/0": HELD})
    assert sink.unique_keys("/p") == set(first)  # nothing more was sent

    env = {**env_for, "MS07_CONFIG": str(write_config(tmp_path / "c.yaml", {}))}
    report = await acli(["diagnose", "queue", "--json"], env)
    findings = [f for f in json.loads(report.output)["findings"] if f["id"] == "queue.paused_destination"]
    assert len(findings) == 1, report.output
    assert findings[0]["summary"].startswith("destination p is paused since ")
    assert f"{HELD} deliveries held" in findings[0]["summary"] and "their maintenance" in findings[0]["evidence"]
    assert findings[0]["command"] == "ms07 destinations resume p --yes"

    async with engines[0].pool.connection() as conn:
        await dest_admin.pause(conn, "p", paused=False, operator="tester")
    resumed = time.monotonic()
    await wait_for(lambda: set(held) <= sink.unique_keys("/p"), timeout=30, what="every held job delivered")
    last = max(r.at for r in sink.received if r.path == "/p")
    # Two engines releasing at most RATE a second each, one pass a second: no faster than that.
    assert last - resumed >= HELD / (2 * RATE) - 1.5, last - resumed
    keys = Counter(sink.keys("/p"))
    assert all(keys[d] == 1 for d in held)  # once each
    assert await _statuses(database_url, "p") == Counter({"delivered/1": 3 + HELD})
    assert sum(e.live.released for e in engines) == HELD


async def _held(url: str) -> bool:
    counts = await _statuses(url, "p")
    return counts.get("paused/0", 0) == HELD
