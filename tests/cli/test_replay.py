"""``ms07 replay`` and ``/api/v1/replays``: the window's dead jobs once more, nothing else."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.support import Sink, acli, status, submit_n, wait_for


async def _now(engine: Any) -> str:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT clock_timestamp()")
        return (await cur.fetchone())[0].isoformat()


async def _statuses(engine: Any, ids: list[str]) -> list[str]:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = ANY(%s::uuid[])",
                                 (ids,))
        return [r[0] for r in await cur.fetchall()]


async def _all(engine: Any, ids: list[str], want: str) -> bool:
    got = await _statuses(engine, ids)
    return len(got) == len(ids) and set(got) == {want}


@pytest.fixture
async def outage(make_settings, sink: Sink, start_engine) -> dict[str, Any]:
    """Destination a answers 500 (max_attempts 2) while b is healthy: dead jobs of a before,
    inside and after the window [since, until); b's jobs inside it delivered."""
    sink.on("/a", status(500))
    # A breaker that never opens: every job of the window gets its two attempts at once.
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/a"),
                                                             "circuit_breaker": {"failure_threshold": 1000}},
                                                            {"name": "b", "url": sink.url("/b")}],
                                              distribution={"max_attempts": 2}))
    before = await submit_n(engine, "a", 2)
    await wait_for(lambda: _all(engine, before, "dead"), what="a's early jobs dead")
    since = await _now(engine)
    window = await submit_n(engine, "a", 5)
    healthy = await submit_n(engine, "b", 3)
    await wait_for(lambda: _all(engine, window, "dead"), what="the window's jobs of a dead")
    await wait_for(lambda: _all(engine, healthy, "delivered"), what="b's jobs delivered")
    until = await _now(engine)
    after = await submit_n(engine, "a", 2)
    await wait_for(lambda: _all(engine, after, "dead"), what="a's late jobs dead")
    sink.on("/a", status(200))
    return {"engine": engine, "since": since, "until": until, "window": window, "healthy": healthy,
            "outside": before + after}


def _filter(o: dict[str, Any]) -> list[str]:
    return ["--destination", "a", "--status", "dead,failed", "--since", o["since"], "--until", o["until"]]


async def test_replay_delivers_the_windows_dead_jobs_once_more_and_nothing_else(
        outage: dict[str, Any], sink: Sink, env_for: dict[str, str], database_url: str) -> None:
    engine, window = outage["engine"], outage["window"]
    result = await acli(["replay", *_filter(outage), "--dry-run", "--json"], env_for)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["matched"] == 5 and {s["distribution_id"] for s in plan["sample"]} == set(window)
    with psycopg.connect(database_url) as conn:  # the dry run wrote nothing
        assert conn.execute("SELECT count(*) FROM replays").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0] == 0
    requests_before = len(sink.received)

    result = await acli(["replay", *_filter(outage), "--yes", "--json"], env_for)
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert (done["status"], done["matched"], done["enqueued"], done["skipped"]) == ("done", 5, 5, 0)
    await wait_for(lambda: _all(engine, window, "delivered"), what="the window's jobs delivered")
    assert await _all(engine, outage["outside"], "dead")
    await wait_for(lambda: len(sink.received) >= requests_before + 5, what="five deliveries")
    again = sink.received[requests_before:]
    # Each once more, with its own id as the Idempotency-Key, and nothing for b.
    assert sorted(r.headers["Idempotency-Key"] for r in again) == sorted(window)
    assert all(r.path == "/a" and r.status == 200 for r in again)
    with psycopg.connect(database_url) as conn:
        numbers = conn.execute("SELECT array_agg(attempt ORDER BY started_at, id) FROM distribution_attempts"
                               " WHERE distribution_id = %s", (window[0],)).fetchone()[0]
        assert numbers == [1, 2, 3]  # numbering continues
        audit = conn.execute("SELECT operator, outcome, detail FROM recovery_audit WHERE plan = 'replay'"
                             " ORDER BY id").fetchall()
    assert [a[1] for a in audit] == ["planned", "done"]
    assert audit[0][2]["matched"] == 5 and audit[0][2]["filter"]["destination"] == "a" and audit[0][0]

    result = await acli(["replay", *_filter(outage), "--dry-run", "--json"], env_for)
    assert json.loads(result.stdout)["matched"] == 0  # delivered now: nothing left to replay


@pytest.mark.parametrize(("args", "says"), [
    (["--since", "15:00", "--until", "14:00", "--yes"], "is not before until"),
    (["--status", "queued", "--yes"], "cannot be replayed"),
    (["--status", "delivered", "--yes"], "needs --include-delivered"),
    (["--status", "lost", "--dry-run"], "unknown status"),
    (["--since", "tomorrow", "--yes"], "is not a time"),
    (["--destination", "a"], "give --dry-run"),
    (["--dry-run", "--yes"], "give --dry-run"),
    (["--rate", "0", "--yes"], "--rate 0 must be above 0"),
])
async def test_bad_replay_input_is_one_line_and_writes_nothing(env_for: dict[str, str], database_url: str,
                                                               args: list[str], says: str) -> None:
    result = await acli(["replay", *args], env_for)
    assert result.exit_code == 2 and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM replays").fetchone()[0] == 0


async def _api(engine: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"http://127.0.0.1:{engine.http_port}{path}", json=body) as r:
            return r.status, await r.json()


async def test_api_replay_dry_run_run_and_cancel(outage: dict[str, Any], sink: Sink) -> None:
    engine, window = outage["engine"], outage["window"]
    body = {"destination": "a", "status": ["dead"], "since": outage["since"], "until": outage["until"]}
    code, dry = await _api(engine, "POST", "/api/v1/replays", {**body, "dry_run": True})
    assert code == 200 and dry["matched"] == 5 and dry["replay_id"] is None and dry["status"] == "dry_run"
    code, started = await _api(engine, "POST", "/api/v1/replays", body)
    assert code == 202 and started["matched"] == 5 and started["replay_id"], started
    rid = started["replay_id"]
    await wait_for(lambda: _replay_done(engine, rid), what="the replay done")
    await wait_for(lambda: _all(engine, window, "delivered"), what="delivered")
    code, gone = await _api(engine, "DELETE", f"/api/v1/replays/{rid}")
    assert code == 409 and "nothing to cancel" in gone["error"]
    code, missing = await _api(engine, "GET", "/api/v1/replays/nope")
    assert code == 404
    for bad, says in (({"status": ["queued"]}, "cannot be replayed"), ({"since": "x"}, "is not a time"),
                      ({"colour": 1}, "unknown field"), ({"include_delivered": "yes"}, "true or false"),
                      ([], "JSON object")):
        code, err = await _api(engine, "POST", "/api/v1/replays", bad)
        assert code == 400 and says in err["error"], err
    async with engine.pool.connection() as conn:  # the refused ones wrote nothing
        cur = await conn.execute("SELECT count(*), (SELECT count(*) FROM recovery_audit) FROM replays")
        assert await cur.fetchone() == (1, 2)


async def _replay_done(engine: Any, rid: str) -> bool:
    code, body = await _api(engine, "GET", f"/api/v1/replays/{rid}")
    return code == 200 and body["status"] == "done" and body["enqueued"] == 5 and body["progress"] == 1.0


async def test_dlq_replay_all_is_an_audited_replay_by_filter(database_url: str, env_for: dict[str, str],
                                                             rc: Any) -> None:
    from ms07 import keys
    from tests.cli.test_jobs import insert

    parked = insert(database_url, 3, status="dead") + insert(database_url, 2, status="failed")
    insert(database_url, 2, status="delivered")
    result = await acli(["dlq", "replay", "--all", "--yes", "--json"], env_for)
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["replayed"]) == sorted(parked)
    assert sorted(f["id"] for _, f in rc.xrange(keys.stream("default"))) == sorted(parked)
    with psycopg.connect(database_url) as conn:
        audit = conn.execute("SELECT outcome, detail FROM recovery_audit WHERE plan = 'replay' ORDER BY id").fetchall()
        budgets = conn.execute("SELECT DISTINCT attempts, max_attempts FROM distribution_jobs"
                               " WHERE status = 'queued'").fetchall()
    assert [a[0] for a in audit] == ["planned", "done"] and audit[0][1]["matched"] == 5
    assert budgets == [(1, 6)]  # attempt 1 used, numbering goes on from 2 with a budget of 5 more
    result = await acli(["dlq", "replay", "--all", "--yes", "--rate", "0"], env_for)
    assert result.exit_code == 2 and "--rate 0 must be above 0" in result.output


async def test_api_replay_can_be_cancelled_half_way(make_settings, sink: Sink, start_engine,
                                                    database_url: str) -> None:
    from tests.cli.test_jobs import insert

    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/a")}]))
    insert(database_url, 20, status="dead")
    code, started = await _api(engine, "POST", "/api/v1/replays", {"rate": 2})  # one job a half second
    assert code == 202 and started["matched"] == 20
    rid = started["replay_id"]
    await wait_for(lambda: _enqueued(engine, rid, 2), what="two jobs enqueued")
    code, cancelled = await _api(engine, "DELETE", f"/api/v1/replays/{rid}")
    assert code == 200 and cancelled["status"] == "cancelled"
    stopped_at = cancelled["enqueued"]
    # The runner notices before its next batch; wait until its row stops changing.
    await wait_for(lambda: _settled(engine, rid), what="the runner stopped")
    code, final = await _api(engine, "GET", f"/api/v1/replays/{rid}")
    assert final["status"] == "cancelled" and stopped_at <= final["enqueued"] <= stopped_at + 1 < 20
    with psycopg.connect(database_url) as conn:
        still_dead = conn.execute("SELECT count(*) FROM distribution_jobs WHERE status = 'dead'").fetchone()[0]
        outcomes = [r[0] for r in conn.execute("SELECT outcome FROM recovery_audit ORDER BY id").fetchall()]
    assert still_dead == 20 - final["enqueued"] and outcomes == ["planned", "cancelled"]


async def _enqueued(engine: Any, rid: str, n: int) -> bool:
    _, body = await _api(engine, "GET", f"/api/v1/replays/{rid}")
    return body["enqueued"] >= n


async def _settled(engine: Any, rid: str) -> bool:
    """The runner has let go of the replay (its session lock is free)."""
    async with engine.pool.connection() as conn:
        from ms07.store import replays

        free = await replays.try_lock(conn, rid)
        if free:
            await replays.unlock(conn, rid)
        await conn.commit()
    return free
