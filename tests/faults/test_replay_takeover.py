"""A replay started through ``POST /api/v1/replays`` outlives its engine: SIGKILLed
half-way (a real ``ms07 run``), or stopped, another engine's upkeep continues it, and
every selected job is put on the queue exactly once by the replay."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from tests.cli.test_jobs import insert
from tests.support import EngineProcess, Sink, destination, wait_for, write_config

# Entries a killed engine held are reclaimed after 3 s, jobs Redis never got re-enqueued after 2 s.
FAST = {"replay_resume_interval_seconds": 0.2, "reconcile_interval_seconds": 1, "reconcile_after_seconds": 2,
        "scheduler_interval_seconds": 0.05, "timeout_seconds": 2, "claim_idle_seconds": 3}


def _port(proc: EngineProcess) -> int | None:
    for r in proc.log_lines():
        if r.get("message") == "HTTP server listening":
            return int(r["metadata"]["port"])
    return None


def _replay(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT id, status, enqueued, skipped, runner, rate FROM replays").fetchone()
    return dict(zip(("id", "status", "enqueued", "skipped", "runner", "rate"), row, strict=True)) if row else {}


def _delivered(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT distribution_id::text FROM distribution_jobs WHERE status = 'delivered'").fetchall()}


def _settled(database_url: str, sink: Sink, ids: set[str]) -> bool:
    """Every job the replay enqueued so far is delivered, and nothing is on its way: a
    quiet moment between two batches (one a second at this rate)."""
    with psycopg.connect(database_url) as conn:
        enqueued, open_jobs = conn.execute(
            """SELECT (SELECT count(*) FROM replay_items WHERE state = 'enqueued'),
                      (SELECT count(*) FROM distribution_jobs WHERE status NOT IN ('dead', 'delivered'))""").fetchone()
    return enqueued >= 20 and open_jobs == 0 and len(sink.unique_keys("/in") & ids) == enqueued


async def test_api_replay_continues_on_another_engine_after_a_sigkill(
        tmp_path: Path, sink: Sink, env_for: dict[str, str], database_url: str) -> None:
    selected = set(insert(database_url, 60, status="dead", error_code="HTTP_503"))
    others = set(insert(database_url, 5, destination="b", status="dead"))
    config = write_config(tmp_path / "engine.yaml", {
        "distribution": FAST,
        "destinations": [destination("a", sink.url("/in")), destination("b", sink.url("/b"))]})
    first = EngineProcess(config, env_for, tmp_path / "first.log").start()
    second: EngineProcess | None = None
    try:
        port = await wait_for(lambda: _port(first), timeout=30, what="the first engine listening")
        async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}/api/v1/replays",
                json={"destination": "a", "status": ["dead"], "rate": 10}) as r:
            assert r.status == 202, await r.text()
            started = await r.json()
        assert started["matched"] == 60
        await wait_for(lambda: _settled(database_url, sink, selected), timeout=30, interval=0.01,
                       what="a third of the replay delivered, between two batches")
        first.kill()  # SIGKILL: no chance to mark it interrupted
        # Sent but not recorded as delivered when it died (if the kill fell inside a
        # batch after all): at least once, these may reach the sink again.
        in_flight = sink.unique_keys("/in") - _delivered(database_url)
        before = _replay(database_url)
        assert before["status"] == "running" and 20 <= before["enqueued"] < 60, before
        assert before["runner"] == "engine" and before["rate"] == 10

        second = EngineProcess(config, env_for, tmp_path / "second.log").start()
        await wait_for(lambda: _replay(database_url)["status"] == "done", timeout=60, interval=0.1,
                       what="the replay finished by the second engine")
        await wait_for(lambda: sink.unique_keys("/in") >= selected, timeout=30, what="every selected job delivered")
    finally:
        first.kill()
        if second is not None:
            second.terminate()
            second.wait(30)
    assert first.returncode == -9
    counts = Counter(sink.keys("/in"))
    assert set(counts) == selected, "a selected job was not delivered, or another one was"
    twice = {k for k, n in counts.items() if n > 1}
    assert twice <= in_flight, f"delivered twice: {sorted(twice - in_flight)[:5]}"
    # The replay's one attempt each (inserted with one used): a redelivery of the same.
    assert {r.headers["X-Distribution-Attempt"] for r in sink.received if r.path == "/in"} == {"2"}
    assert not sink.keys("/b")
    final = _replay(database_url)
    assert (final["enqueued"], final["skipped"]) == (60, 0)
    with psycopg.connect(database_url) as conn:
        items = Counter(r[0] for r in conn.execute(
            "SELECT distribution_id::text FROM replay_items WHERE state = 'enqueued'").fetchall())
        states = dict(conn.execute("SELECT status, count(*) FROM distribution_jobs GROUP BY status").fetchall())
        audit = conn.execute("SELECT outcome, detail FROM recovery_audit WHERE plan = 'replay' ORDER BY id").fetchall()
    assert set(items) == selected and set(items.values()) == {1}
    assert states == {"delivered": 60, "dead": len(others)}
    assert [a[0] for a in audit] == ["planned", "resumed", "done"]
    resumed = audit[1][1]
    assert resumed["was"] == "running" and resumed["enqueued"] == before["enqueued"]
    assert resumed["by"] in second.log.read_text() and resumed["by"] not in first.log.read_text()


async def test_api_replay_stopped_with_its_engine_is_continued_by_the_next(
        make_settings, sink: Sink, start_engine, database_url: str) -> None:
    selected = set(insert(database_url, 30, status="dead"))
    settings = make_settings(destinations=[{"name": "a", "url": sink.url("/in")}], distribution=FAST)
    first = await start_engine(settings)
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{first.http_port}/api/v1/replays", json={"rate": 5}) as r:
        assert r.status == 202
    await wait_for(lambda: _replay(database_url)["enqueued"] >= 5, what="a few jobs enqueued")
    await first.stop(grace=1)
    stopped = _replay(database_url)
    assert stopped["status"] == "interrupted" and stopped["enqueued"] < 30
    # Two engines now: one of them continues it, the other finds it taken.
    second, third = await start_engine(settings), await start_engine(settings)
    await wait_for(lambda: _replay(database_url)["status"] == "done", timeout=30, what="the replay finished")
    await wait_for(lambda: sink.unique_keys("/in") >= selected, what="every selected job delivered")
    assert Counter(sink.keys("/in")).most_common(1)[0][1] == 1
    with psycopg.connect(database_url) as conn:
        audit = conn.execute("SELECT outcome, detail->>'by' FROM recovery_audit ORDER BY id").fetchall()
    assert [a[0] for a in audit] == ["planned", "interrupted", "resumed", "done"]
    assert audit[2][1] in (second.worker_id, third.worker_id)
