"""``ms07 run --workers 2``: a supervisor and two engine processes on one port, as real
processes under real signals (ms07/engine/supervisor.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.faults.harness import REPORT, engine_config, exit_code, ledger, submit_many, wait_settled
from tests.support import EngineProcess, Sink, destination, wait_for

pytestmark = pytest.mark.faults


def _slow(seconds: float) -> Any:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text="ok")

    return respond


def _lines(proc: EngineProcess) -> list[dict[str, Any]]:
    """The log lines, each with its metadata fields at the top."""
    return [{**r, **(r.get("metadata") or {})} for r in proc.log_lines()]


def _children(proc: EngineProcess) -> dict[int, int]:
    """pid -> worker index, of every child the supervisor started so far."""
    return {r["pid"]: r["worker"] for r in _lines(proc) if r.get("message") == "worker started"}


def _engines_started(proc: EngineProcess) -> int:
    return sum(r.get("message") == "engine started" for r in _lines(proc))


def _port(proc: EngineProcess) -> int:
    return next(r["http_port"] for r in _lines(proc) if r.get("message") == "supervisor started")


async def _answered_by(port: int) -> set[tuple[int, int]]:
    """(pid, worker) of the children that answered a few /health/detailed requests, each on
    a connection of its own; and every /metrics scrape names its child."""
    seen = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(6):
            async with http.get(f"http://127.0.0.1:{port}/health/detailed") as resp:
                body = await resp.json()
                seen.add((body["process"]["pid"], body["process"]["worker"]))
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
                assert "zenia_distribution_worker_info{" in text
    return seen


async def test_two_workers_a_child_sigkilled_mid_load_is_restarted_and_nothing_is_lost(
        tmp_path: Path, sink: Sink, env_for: dict[str, str], make_settings: Any, database_url: str,
        redis_url: str) -> None:
    sink.on("/in", _slow(0.005))
    dests = [destination("a", sink.url("/in"))]
    config = engine_config(tmp_path, dests, concurrency=8, prefetch=4)
    ids = await submit_many(make_settings(destinations=dests), "a", [{"i": i} for i in range(600)])
    proc = EngineProcess(config, env_for, tmp_path / "engine.log", args=["--workers", "2"]).start()
    try:
        await wait_for(lambda: _engines_started(proc) == 2, timeout=40, what="both engines started")
        first = _children(proc)
        assert sorted(first.values()) == [0, 1] and os.getpid() not in first
        answered = await _answered_by(_port(proc))
        assert {pid for pid, _ in answered} <= set(first), answered
        assert all(first[pid] == worker for pid, worker in answered), answered
        await wait_for(lambda: len(sink.received) >= 100, timeout=30, what="the load under way")
        victim = next(pid for pid, worker in first.items() if worker == 0)
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: _engines_started(proc) == 3, timeout=30, what="the killed worker restarted")
        restarted = [r for r in _lines(proc) if r.get("message") == "worker exited; restarting it"]
        assert [(r["worker"], r["exit_code"]) for r in restarted] == [(0, 137)]
        assert len(_children(proc)) == 3 and proc.returncode is None
        await wait_settled(database_url, ids, seconds=60)
        proc.terminate()
        code = await exit_code(proc)
    finally:
        proc.kill()
    assert code == 0, proc.log.read_text()[-3000:]
    lg = await ledger("--workers 2, one child SIGKILLed mid-load", database_url, redis_url, sink, ids)
    REPORT.append(lg)
    lg.check()
    assert lg.delivered == set(ids)
    # At the SIGTERM, both workers (0 restarted) drained.
    workers = {r["worker"] for r in _lines(proc) if r.get("message") == "engine stopped"}
    assert workers == {0, 1}


async def test_sigterm_to_the_supervisor_drains_every_child_and_exits_0(
        tmp_path: Path, sink: Sink, env_for: dict[str, str], make_settings: Any, database_url: str,
        redis_url: str) -> None:
    sink.on("/in", _slow(0.05))
    dests = [destination("a", sink.url("/in"))]
    config = engine_config(tmp_path, dests, concurrency=4, prefetch=2)
    ids = await submit_many(make_settings(destinations=dests), "a", [{"i": i} for i in range(400)])
    proc = EngineProcess(config, env_for, tmp_path / "engine.log", args=["--workers", "2"]).start()
    try:
        await wait_for(lambda: _engines_started(proc) == 2, timeout=40, what="both engines started")
        await wait_for(lambda: len(sink.received) >= 40, timeout=30, what="deliveries in flight")
        t0 = time.monotonic()
        proc.terminate()
        code = await exit_code(proc, 5 + 10)  # drain_grace_seconds 5, plus closing
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    log = _lines(proc)
    assert code == 0, proc.log.read_text()[-3000:]
    print(f"SIGTERM to exit, 2 workers: {elapsed:.2f} s")
    stopped = [r for r in log if r.get("message") == "engine stopped"]
    assert sorted(r["worker"] for r in stopped) == [0, 1]
    ends = sorted((r["worker"], r["exit_code"]) for r in log if r.get("message") == "worker stopped")
    assert ends == [(0, 0), (1, 0)]
    assert not any(r.get("message") == "worker exited; restarting it" for r in log)
    assert len(sink.received) < len(ids)  # stopped mid-load, not after it

    # What the drained workers left is delivered by the next engine; nothing lost.
    sink.on("/in", _slow(0))
    second = EngineProcess(config, env_for, tmp_path / "second.log").start()
    try:
        await wait_settled(database_url, ids, seconds=60)
    finally:
        second.terminate()
        await exit_code(second)
        second.kill()
    lg = await ledger("--workers 2, SIGTERM to the supervisor mid-load", database_url, redis_url, sink, ids)
    REPORT.append(lg)
    lg.check()


async def test_a_worker_that_dies_at_once_repeatedly_makes_the_supervisor_give_up(
        tmp_path: Path, sink: Sink, env_for: dict[str, str]) -> None:
    config = engine_config(tmp_path, [destination("a", sink.url("/in"))])
    proc = EngineProcess(config, env_for, tmp_path / "engine.log", {"MS07_CRASH_AT": "engine_start"},
                         args=["--workers", "2"]).start()
    try:
        code = await exit_code(proc, 40)  # backoffs 0.5 + 1 + 2 + 4 s
    finally:
        proc.kill()
    text = proc.log.read_text()
    assert code == 137, text[-3000:]  # the children's exit code (os._exit(137) at the crash point)
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text[-3000:]
    assert "died within 10 s of its start 5 times in a row (last exit code 137); giving up" in errors[0]
    assert "Traceback" not in text
    restarts = [r for r in _lines(proc) if r.get("message") == "worker exited; restarting it"]
    assert [r["restart_in"] for r in restarts if r["worker"] == 0][:4] == [0.5, 1.0, 2.0, 4.0]
