"""``ms07 status``: the attempts as a timeline, the job's facts, a short id, exit codes."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.support import Sink, acli, status, submit_n, wait_for


async def _job_status(engine: Any, did: str) -> str | None:
    async with engine.pool.connection() as conn:
        cur = await conn.execute("SELECT status FROM distribution_jobs WHERE distribution_id = %s", (did,))
        row = await cur.fetchone()
    return row[0] if row else None


async def test_a_replayed_job_reads_in_time_order(make_settings, sink: Sink, start_engine,
                                                  env_for: dict[str, str]) -> None:
    sink.on("/down", status(500))
    engine = await start_engine(make_settings(destinations=[{"name": "a", "url": sink.url("/down")}],
                                              distribution={"max_attempts": 2}))
    [did] = await submit_n(engine, "a")
    await wait_for(lambda: _is(engine, did, "dead"), what="dead after two attempts")
    sink.on("/down", status(200))
    result = await acli(["dlq", "replay", did], env_for)
    assert result.exit_code == 0, result.output
    await wait_for(lambda: _is(engine, did, "delivered"), what="delivered after the replay")
    result = await acli(["status", did, "--json"], env_for)
    attempts = json.loads(result.output)["attempts"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "failed"), (3, "success")]
    assert [a["started_at"] for a in attempts] == sorted(a["started_at"] for a in attempts)
    result = await acli(["status", did], env_for)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if " failed " in line or " success " in line]
    assert [("success" if " success " in r else "failed") for r in rows] == ["failed", "failed", "success"]


async def _is(engine: Any, did: str, want: str) -> bool:
    return await _job_status(engine, did) == want


IDS = ["6d6d823d-0000-4000-8000-000000000001", "6d6d823d-0000-4000-8000-000000000002",
       "7e000000-0000-4000-8000-000000000003"]


@pytest.fixture
def jobs_with_ids(database_url: str) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for did in IDS:
            conn.execute(
                """INSERT INTO distribution_jobs (distribution_id, destination_name, status, payload, attempts,
                                                  max_attempts, next_attempt_at, created_at)
                   VALUES (%s, 'a', 'retrying', '{}', 2, 5, '2026-12-03 15:00:00+00', '2026-12-03 14:00:00+00')""",
                (did,),
            )
            conn.execute(
                """INSERT INTO distribution_attempts (distribution_id, destination_name, attempt, status,
                       response_status_code, error_code, started_at, completed_at)
                   VALUES (%s, 'a', 1, 'failed', 503, 'HTTP_5XX', now(), now())""",
                (did,),
            )
    return IDS


async def test_text_shows_created_attempts_and_next_attempt(jobs_with_ids: list[str],
                                                            env_for: dict[str, str]) -> None:
    result = await acli(["status", IDS[2]], env_for)
    assert result.exit_code == 0, result.output
    assert "created 2026-12-03T14:00:00+00:00" in result.output
    assert "attempts 2 of 5" in result.output
    assert "next attempt 2026-12-03T15:00:00+00:00" in result.output


@pytest.mark.parametrize("given, code, expect", [
    ("7e000000", 0, IDS[2]),                                     # a short id from a log
    ("7E000000-0000", 0, IDS[2]),                                # with a dash, upper case
    (IDS[2], 0, IDS[2]),
    ("6d6d823d", 2, "is the start of more than one distribution id"),
    ("0badcafe", 4, "no distribution id starts with 0badcafe"),
    ("00000000-0000-4000-8000-000000000000", 4, "no distribution 00000000-0000-4000-8000-000000000000"),
    ("not-a-uuid", 2, "is not a distribution id"),
])
async def test_status_accepts_a_unique_prefix(jobs_with_ids: list[str], env_for: dict[str, str], given: str,
                                              code: int, expect: str) -> None:
    result = await acli(["status", given, "--json"], env_for)
    assert result.exit_code == code, result.output
    if code == 0:
        assert json.loads(result.output)["distribution_id"] == expect
    else:
        assert expect in result.output and len(result.output.strip().splitlines()) == 1
        if "more than one" in expect:
            assert IDS[0] in result.output and IDS[1] in result.output
