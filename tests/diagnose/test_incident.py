"""The staged incident of issue 21, replayed: three loopback destinations (healthy; failing
half the time and slow; a closed port), a few hundred distributions, ``kill -9`` of the
engine mid-load, a restart. At each stage ``diagnose all`` must put the right thing first:

1. under load: a destination is down (the closed port), named in the headline;
2. right after the kill: nothing is delivering (not the DLQ, not a dead consumer);
3. after the restart: the closed port again; the crash is history (INFO), not a WARNING.

And the half-failing destination's 5xx are explained by ``diagnose errors``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import psycopg
import redis
from aiohttp import web

from ms07 import keys
from ms07.ops.submit import submit
from ms07.runtime import Runtime
from tests.diagnose.conftest import acli
from tests.support import EngineProcess, Sink, destination, wait_for, write_config

PER_DESTINATION = 100


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _half_and_slow(request: web.Request, n: int) -> web.StreamResponse:
    await asyncio.sleep(0.25)
    if n % 2:
        return web.Response(status=503, text="upstream overloaded")
    return web.Response(status=200, text="ok")


def _port(proc: EngineProcess) -> int | None:
    for rec in proc.log_lines():
        if rec.get("message") == "engine started":
            meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
            port = rec.get("http_port") or meta.get("http_port")
            return int(port) if port else None
    return None


async def _submit(settings: Any, dest: str, n: int) -> None:
    async with Runtime(settings) as rt:
        queue = await rt.queue()
        async with rt.connection() as conn:
            for i in range(n):
                await submit(conn, queue, settings, [dest], {"i": i})


async def _headline(cli: Any, config: Path, url: str, *extra: str) -> tuple[str, dict[str, Any], int]:
    text = await acli(cli, ["diagnose", "all", "--url", url, "--since", "10m", *extra], config=config)
    data = await acli(cli, ["diagnose", "all", "--json", "--url", url, "--since", "10m", *extra], config=config)
    return text.stdout.splitlines()[0], json.loads(data.stdout), text.exit_code


def _failed_attempts(database_url: str, dest: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM distribution_attempts WHERE destination_name = %s "
                           "AND status = 'failed'", (dest,)).fetchone()
    return int(row[0]) if row else 0


def _findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for c in report["checks"] for f in c["findings"]}


async def test_staged_incident_gets_the_right_headline_at_each_stage(
    tmp_path: Path, make_settings: Any, env_for: dict[str, str], redis_url: str, database_url: str, cli: Any
) -> None:
    healthy, half = Sink(), Sink()
    await healthy.start()
    await half.start()
    half.on("/in", _half_and_slow)
    dests = [destination("healthy", healthy.url()), destination("half", half.url()),
             destination("closed", f"http://127.0.0.1:{_closed_port()}/in")]
    sections = {
        "service": {"heartbeat_interval_seconds": 1, "concurrency": 16, "drain_grace_seconds": 2},
        "distribution": {"timeout_seconds": 2, "claim_idle_seconds": 3, "retry_base_delay_seconds": 0.05,
                         "max_retry_delay": 0.2, "max_attempts": 3, "scheduler_interval_seconds": 0.05},
        "destinations": dests,
    }
    config = write_config(tmp_path / "engine.yaml", sections)
    settings = make_settings(destinations=dests)
    first = EngineProcess(config, env_for, tmp_path / "first.log").start()
    second: EngineProcess | None = None
    try:
        await wait_for(first.started, timeout=30, what="the engine started")
        url = f"http://127.0.0.1:{_port(first)}"
        for name in ("healthy", "half", "closed"):
            await _submit(settings, name, PER_DESTINATION)
        await wait_for(lambda: len(healthy.received) >= PER_DESTINATION // 2, timeout=20, what="deliveries")
        await wait_for(lambda: half.counts["/in"] >= 20, timeout=20, what="half-failing attempts")
        await wait_for(lambda: _failed_attempts(database_url, "closed") >= 3, timeout=20, what="closed-port attempts")

        # 1. Under load: a destination is down, and the headline names it.
        line, report, code = await _headline(cli, config, url)
        assert line.startswith("CRITICAL: ") and "closed" in line, line
        assert code == 2
        found = _findings(report)
        assert found["errors.destination_down"]["command"] == "ms07 destinations check closed"
        half_errors = [f for c in report["checks"] if c["check"] == "errors" for f in c["findings"]
                       if f["summary"].startswith("half: ")]
        assert half_errors and "HTTP_5XX 503" in half_errors[0]["summary"], half_errors
        assert half_errors[0]["command"] == "ms07 dlq list"  # the receiver's side; replay once fixed

        # 2. kill -9 mid-load: more work queued, deliveries in flight, then the engine dies.
        await _submit(settings, "half", PER_DESTINATION)
        await wait_for(lambda: half.counts["/in"] >= 60, timeout=20, what="the second batch in flight")
        first.kill()
        line, report, code = await _headline(cli, config, url)
        assert line.startswith("CRITICAL: "), line
        assert "no worker is alive" in line or "does not answer" in line, line
        assert "dead-letter" not in line and "without a heartbeat" not in line, line
        assert code == 2

        # 3. Restart: a live worker takes the dead one's entries over; the closed port is
        # the headline again, and the crash is history, not a warning.
        second = EngineProcess(config, env_for, tmp_path / "second.log").start()
        await wait_for(second.started, timeout=30, what="the engine restarted")
        url = f"http://127.0.0.1:{_port(second)}"
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        dead = {c["name"] for c in r.xinfo_consumers(keys.stream("default"), keys.GROUP)} - {
            rec.get("worker_id") for rec in second.log_lines() if rec.get("worker_id")}

        def taken_over() -> bool:
            held = {c["name"]: int(c["pending"]) for c in r.xinfo_consumers(keys.stream("default"), keys.GROUP)}
            return all(held.get(name, 0) == 0 for name in dead)

        await wait_for(taken_over, timeout=20, what="the dead worker's entries taken over")
        r.close()
        line, report, code = await _headline(cli, config, url, "--stale-worker", "2s")
        assert line.startswith("CRITICAL: ") and "closed" in line, line
        found = _findings(report)
        assert "queue.stale_workers" not in found and "queue.no_live_workers" not in found
        assert found["queue.crashed_workers"]["severity"] == "info"
        assert code == 2  # the closed port, not the crash
    finally:
        first.kill()
        if second is not None:
            second.kill()
        await healthy.stop()
        await half.stop()
